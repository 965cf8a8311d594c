"""Inventory of the simulated server: checkpoints and their aliases, VAEs, LoRAs, samplers."""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import Any

from .config import SimConfig

MODELS_DIR = "/sim/models/Stable-diffusion"

# Real sha256 of well-known files, so the simulator reports the hashes users know.
_KNOWN_SHA256 = {
    "v1-5-pruned-emaonly.safetensors": (
        "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
    ),
}


def fake_sha256(name: str) -> str:
    return _KNOWN_SHA256.get(name) or hashlib.sha256(b"batchgen-sim:" + name.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One checkpoint file and the names A1111 accepts for it (`CheckpointInfo.ids`)."""

    name: str  # "sdxl/x.safetensors"
    sha256: str

    @property
    def shorthash(self) -> str:
        return self.sha256[:10]

    @property
    def oldhash(self) -> str:
        return hashlib.sha256(b"old:" + self.sha256.encode()).hexdigest()[:8]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]"

    @property
    def short_title(self) -> str:
        """`CheckpointInfo.short_title`: name_for_extra [shorthash], as infotexts show it."""
        return f"{self.name_for_extra} [{self.shorthash}]"

    @property
    def model_name(self) -> str:
        return posixpath.splitext(self.name)[0].replace("/", "_").replace("\\", "_")

    @property
    def name_for_extra(self) -> str:
        return posixpath.splitext(posixpath.basename(self.name))[0]

    @property
    def ids(self) -> tuple[str, ...]:
        return (
            self.oldhash,
            self.model_name,
            self.title,
            self.name,
            self.name_for_extra,
            f"{self.name} [{self.oldhash}]",
            self.shorthash,
            self.sha256,
            f"{self.name} [{self.shorthash}]",
            f"{self.name_for_extra} [{self.shorthash}]",
        )

    def api_item(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.shorthash,
            "sha256": self.sha256,
            "filename": f"{MODELS_DIR}/{self.name}",
            "config": None,
        }


@dataclass(frozen=True, slots=True)
class Sampler:
    name: str
    aliases: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()


SAMPLERS = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), (("scheduler", "karras"),)),
    Sampler(
        "DPM++ SDE",
        ("k_dpmpp_sde",),
        (("scheduler", "karras"), ("second_order", True), ("brownian_noise", True)),
    ),
    Sampler(
        "DPM++ 2M SDE",
        ("k_dpmpp_2m_sde",),
        (("scheduler", "exponential"), ("brownian_noise", True)),
    ),
    Sampler(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        (("scheduler", "exponential"), ("brownian_noise", True), ("solver_type", "heun")),
    ),
    Sampler(
        "DPM++ 2S a",
        ("k_dpmpp_2s_a",),
        (("scheduler", "karras"), ("uses_ensd", True), ("second_order", True)),
    ),
    Sampler(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        (
            ("scheduler", "exponential"),
            ("discard_next_to_last_sigma", True),
            ("brownian_noise", True),
        ),
    ),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), (("uses_ensd", True),)),
    Sampler("Euler", ("k_euler",)),
    Sampler("LMS", ("k_lms",)),
    Sampler("Heun", ("k_heun",), (("second_order", True),)),
    Sampler("DPM2", ("k_dpm_2",), (("discard_next_to_last_sigma", True), ("second_order", True))),
    Sampler(
        "DPM2 a",
        ("k_dpm_2_a",),
        (("discard_next_to_last_sigma", True), ("uses_ensd", True), ("second_order", True)),
    ),
    Sampler("DPM fast", ("k_dpm_fast",), (("uses_ensd", True),)),
    Sampler("DPM adaptive", ("k_dpm_ad",), (("uses_ensd", True),)),
    Sampler("Restart", ("restart",), (("scheduler", "karras"), ("second_order", True))),
    Sampler("DDIM", ("ddim",)),
    Sampler("DDIM CFG++", ("ddim_cfgpp",)),
    Sampler("PLMS", ("plms",)),
    Sampler("UniPC", ("unipc",)),
    Sampler("LCM", ("k_lcm",)),
)
SAMPLER_NAMES = {s.name for s in SAMPLERS}

# (name, label, aliases, default_rho, need_inner_model)
SCHEDULERS: tuple[tuple[str, str, tuple[str, ...] | None, float, bool], ...] = (
    ("automatic", "Automatic", None, -1.0, False),
    ("uniform", "Uniform", None, -1.0, True),
    ("karras", "Karras", None, 7.0, False),
    ("exponential", "Exponential", None, -1.0, False),
    ("polyexponential", "Polyexponential", None, 1.0, False),
    ("sgm_uniform", "SGM Uniform", ("SGMUniform",), -1.0, True),
    ("kl_optimal", "KL Optimal", None, -1.0, False),
    ("align_your_steps", "Align Your Steps", None, -1.0, False),
    ("simple", "Simple", None, -1.0, True),
    ("normal", "Normal", None, -1.0, True),
    ("ddim", "DDIM", None, -1.0, True),
    ("beta", "Beta", None, -1.0, False),
)
_SCHEDULER_BY_KEY = {s[0]: s[1] for s in SCHEDULERS} | {s[1]: s[1] for s in SCHEDULERS}

LATENT_UPSCALE_MODES = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)


def resolve_sampler(name: str | None, scheduler: str | None) -> tuple[str, str]:
    """(sampler, schedule label) as `sd_samplers.get_sampler_and_scheduler` in 1.10 resolves them.

    Unknown samplers (aliases included) silently become DPM++ 2M; unknown schedulers Automatic.
    """
    label = _SCHEDULER_BY_KEY.get(scheduler or "", "Automatic")
    sampler = name or SAMPLERS[0].name
    for sname, slabel, aliases, _, _ in SCHEDULERS:
        options = (slabel, sname, *(aliases or ()))
        suffix = next((o for o in options if sampler.endswith(" " + o)), None)
        if suffix is not None:
            label = slabel
            sampler = sampler[: -(len(suffix) + 1)]
            break
    if sampler not in SAMPLER_NAMES:
        sampler = SAMPLERS[0].name
    return sampler, label


class Inventory:
    """Everything the simulated server has installed, with A1111's lookup rules."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.checkpoints = tuple(Checkpoint(m, fake_sha256(m)) for m in config.models)
        self._aliases: dict[str, Checkpoint] = {}
        # Later checkpoints must not steal an earlier one's alias, as with dict.setdefault order.
        for ckpt in self.checkpoints:
            for alias in ckpt.ids:
                self._aliases.setdefault(alias, ckpt)
        self.upscaler_names = ("None", "Lanczos", "Nearest", *config.upscalers)

    def checkpoint(self, name: str) -> Checkpoint | None:
        """Exact alias lookup (`sd_models.checkpoint_aliases`)."""
        return self._aliases.get(name)

    def cn_model_title(self, name: str) -> str:
        digest = hashlib.sha256(b"cn:" + name.encode()).hexdigest()[:8]
        return f"{name} [{digest}]"

    def cn_model(self, name: str) -> str | None:
        """ControlNet model lookup: exact title, case-insensitive basename, shortest substring."""
        if name in ("", "None"):
            return None
        titles = [self.cn_model_title(m) for m in self.config.cn_models]
        if name in titles:
            return name
        base = name.split(" [")[0].lower()
        for title, model in zip(titles, self.config.cn_models, strict=True):
            if model.lower() == base:
                return title
        matches = [t for t in titles if base in t.lower()]
        return min(matches, key=len) if matches else None

    def sd_models(self) -> list[dict[str, Any]]:
        return [c.api_item() for c in self.checkpoints]

    def sd_vae(self) -> list[dict[str, Any]]:
        return [
            {"model_name": posixpath.basename(v), "filename": f"/sim/models/VAE/{v}"}
            for v in self.config.vaes
        ]

    def loras(self) -> list[dict[str, Any]]:
        return [
            {
                "name": posixpath.basename(lora),
                "alias": posixpath.basename(lora),
                "path": f"/sim/models/Lora/{lora}.safetensors",
                "metadata": {},
            }
            for lora in self.config.loras
        ]

    def upscalers(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
            for n in ("None", "Lanczos", "Nearest")
        ]
        out += [
            {
                "name": n,
                "model_name": n,
                "model_path": f"/sim/models/ESRGAN/{n}.pth",
                "model_url": None,
                "scale": 4,
            }
            for n in self.config.upscalers
        ]
        return out

    def samplers(self) -> list[dict[str, Any]]:
        forge = self.config.flavor == "forge"
        return [
            {
                "name": s.name,
                "aliases": list(s.aliases),
                "options": {k: (v if forge else str(v)) for k, v in s.options},
            }
            for s in SAMPLERS
        ]

    @staticmethod
    def schedulers() -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "label": label,
                "aliases": list(a) if a else None,
                "default_rho": rho,
                "need_inner_model": inner,
            }
            for n, label, a, rho, inner in SCHEDULERS
        ]
