"""Request values real servers trip on: checks with hints, and fixes made before sending."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HIRES_DENOISE = 0.7  # txt2img denoising_strength defaults to null, and hires fix 500s on null


@dataclass(frozen=True, slots=True)
class Issue:
    """A value a server would error on or silently change."""

    message: str
    hint: str


# (label, name, aliases) of A1111 1.10's schedules (modules/sd_schedulers.py); any may end a
# sampler name ("DPM++ 2M Karras"), and the server then splits it off.
SCHEDULERS = (
    ("Automatic", "automatic", ()),
    ("Uniform", "uniform", ()),
    ("Karras", "karras", ()),
    ("Exponential", "exponential", ()),
    ("Polyexponential", "polyexponential", ()),
    ("SGM Uniform", "sgm_uniform", ("SGMUniform",)),
    ("KL Optimal", "kl_optimal", ()),
    ("Align Your Steps", "align_your_steps", ()),
    ("Simple", "simple", ()),
    ("Normal", "normal", ()),
    ("DDIM", "ddim", ()),
    ("Beta", "beta", ()),
)
# Longest first: A1111 tries "Uniform" before "SGM Uniform" and would leave "DPM++ 2M SGM".
_SUFFIXES = sorted(
    ((option, label) for label, name, aliases in SCHEDULERS for option in (label, name, *aliases)),
    key=lambda pair: len(pair[0]),
    reverse=True,
)
_SCHEDULER_LABEL = {
    option.lower(): label
    for label, name, aliases in SCHEDULERS
    for option in (label, name, *aliases)
}


def value_issue(path: tuple[str, ...], value: Any) -> Issue | None:
    """A value a real server errors on or silently changes (checked where the reference says)."""
    name = path[-1]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if name == "save_images" and value is True:
            return Issue(
                "save_images would make the server save files too and put a grid first",
                "remove it; batchgen saves the images itself",
            )
        if name == "send_images" and value is False:
            return Issue("send_images false would return no images", "remove it")
        return None
    if name in ("steps", "batch_size", "n_iter") and value < 1:
        return Issue(f"{name} must be at least 1, not {value}", "write a whole number such as 20")
    if name in ("width", "height"):
        if value <= 0:
            return Issue(f"{name} must be positive, not {value}", "write a size such as 512")
        if value % 8:
            lower = max(8, int(value) - int(value) % 8)
            return Issue(
                f"{name} {value} is not a multiple of 8 (the server would make it {lower})",
                f"write {lower} or {lower + 8}",
            )
    if name in ("denoising_strength", "subseed_strength", "refiner_switch_at") and not (
        0.0 <= value <= 1.0
    ):
        return Issue(f"{name} must be between 0 and 1, not {value}", "write a number such as 0.7")
    if name in ("seed", "subseed") and not -1 <= value < 2**32:
        return Issue(
            f"{name} {value} is out of range",
            "write -1 (or leave it empty) for a new seed, or a number from 0 to 4294967295",
        )
    return None


def fix_sampler(body: dict[str, Any]) -> str | None:
    """`sampler_index: "DPM++ SDE Karras"`, no sampler_name -> "DPM++ SDE" + scheduler "Karras".

    Returns a message when the name's schedule contradicts the scheduler field (the server
    would silently take the name's).
    """
    index = body.pop("sampler_index", None)
    name = body.get("sampler_name")
    if not name and isinstance(index, str) and index.strip():
        name = index
    if not isinstance(name, str) or not name.strip():
        body.pop("sampler_name", None)
        return None
    name = name.strip()
    conflict = None
    for option, label in _SUFFIXES:
        if name.endswith(" " + option):
            name = name[: -len(option) - 1]
            given = body.get("scheduler")
            if isinstance(given, str) and given.strip():
                if _SCHEDULER_LABEL.get(given.strip().lower(), given) != label:
                    conflict = (
                        f"sampler '{name} {option}' names schedule {label}, "
                        f"but scheduler is '{given}'"
                    )
            else:
                body["scheduler"] = label
            break
    body["sampler_name"] = name
    return conflict
