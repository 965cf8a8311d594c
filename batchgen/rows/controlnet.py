"""ControlNet units: the unit field table and the fixes real servers need (a1111-api.md §9, §11)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from batchgen.records import Route
from batchgen.rows.fields import Kind, coerce, normalize_name

UNIT_FIELDS: Mapping[str, Kind] = MappingProxyType(
    {
        "enabled": "bool",
        "module": "str",
        "model": "str",
        "weight": "float",
        "image": "image",
        "mask_image": "image",
        "resize_mode": "str",
        "control_mode": "str",
        "processor_res": "int",
        "threshold_a": "float",
        "threshold_b": "float",
        "guidance_start": "float",
        "guidance_end": "float",
        "pixel_perfect": "bool",
        "low_vram": "bool",
        "hr_option": "str",
        "save_detected_map": "bool",
        "advanced_weighting": "list",
        "effective_region_mask": "image",
        "pulid_mode": "str",
        "union_control_type": "str",
    }
)
# Old names servers still see in the wild. `mask_image` is the one name both Mikubill's
# ControlNet (alias of `mask`) and Forge's built-in one (which ignores `mask`) accept.
LEGACY_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "input_image": "image",
        "lowvram": "low_vram",
        "guidance": "guidance_end",
        "mask": "mask_image",
    }
)
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
HR_OPTIONS = ("Both", "Low res only", "High res only")
_OLD_RESIZE_NAMES = (
    "Inner Fit (Scale to Fit)",
    "Outer Fit (Shrink to Fit)",
    "Scale to Fit (Inner Fit)",
    "Envelope (Outer Fit)",
)
_ENUMS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = MappingProxyType(
    {  # key -> (names by legacy integer, every accepted name)
        "resize_mode": ((*RESIZE_MODES, "Just Resize"), RESIZE_MODES + _OLD_RESIZE_NAMES),
        "control_mode": (CONTROL_MODES, CONTROL_MODES),
        "hr_option": ((), HR_OPTIONS),
    }
)
SCRIPT_TITLE = "controlnet"


@dataclass(frozen=True, slots=True)
class UnitIssue:
    """Something wrong with one unit field; the payload builder locates it in the sheet or job."""

    key: str | None
    message: str
    hint: str | None = None


def canonical_key(name: str) -> str | None:
    """The unit field a header part or job key names (case-insensitive, legacy names mapped)."""
    norm = normalize_name(name)
    norm = LEGACY_KEYS.get(norm, norm)
    return norm if norm in UNIT_FIELDS else None


def suggest_key(name: str) -> str | None:
    close = difflib.get_close_matches(normalize_name(name), list(UNIT_FIELDS), n=1, cutoff=0.7)
    return close[0] if close else None


def coerce_unit(key: str, value: Any) -> Any:
    """Coerce one unit value; integer modes become the names ControlNet >= 1.1.448 needs."""
    if key in _ENUMS:
        by_int, names = _ENUMS[key]
        if by_int and not isinstance(value, bool):
            try:
                index = coerce("int", value)
            except ValueError:
                pass
            else:
                if 0 <= index < len(by_int):
                    return by_int[index]
                raise ValueError(f"{value!r} is not a {key}; use 0..{len(by_int) - 1} or a name")
        text = coerce("str", value).strip()
        for name in names:
            if text.lower() == name.lower():
                return name
        raise ValueError(f"{text!r} is not a {key}; use one of: {', '.join(names)}")
    coerced = coerce(UNIT_FIELDS[key], value)
    if key == "module" and coerced.strip().lower() == "none":
        return "none"  # ControlNet accepts only lower-case "none"
    return coerced


def finish_unit(unit: Mapping[str, Any]) -> dict[str, Any]:
    """Fill what servers disagree on: `enabled` defaults to false since ControlNet 1.1.448."""
    return {"enabled": True, **unit}


def unit_issues(index: int, unit: Mapping[str, Any], route: Route) -> list[UnitIssue]:
    """Problems a server would not report, or would report only as a bare 500."""
    issues: list[UnitIssue] = []
    if not unit.get("enabled", True):
        return issues
    if route == "txt2img" and "image" not in unit:
        issues.append(
            UnitIssue(
                "image",
                f"ControlNet unit {index} is enabled but has no image "
                "(the server would skip it silently)",
                f"add a controlnet.{index}.image column or set controlnet.{index}.enabled to false",
            )
        )
    start, end = unit.get("guidance_start", 0.0), unit.get("guidance_end", 1.0)
    for key, value in (("guidance_start", start), ("guidance_end", end)):
        if not 0.0 <= value <= 1.0:
            issues.append(UnitIssue(key, f"{key} must be between 0 and 1, not {value}"))
    if start > end:
        issues.append(
            UnitIssue("guidance_start", f"guidance_start {start} is after guidance_end {end}")
        )
    weight = unit.get("weight")
    if weight is not None and weight < 0:
        issues.append(UnitIssue("weight", f"weight must not be negative, not {weight}"))
    return issues


def controlnet_args(units: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Units in index order; a gap gets a disabled unit so indexes match 'ControlNet N'."""
    if not units:
        return []
    return [dict(units[i]) if i in units else {"enabled": False} for i in range(max(units) + 1)]
