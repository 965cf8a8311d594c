"""The A1111 v1.10.1 request field table (plus Forge extras), header aliases and coercion."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from batchgen.records import Route

Kind = Literal["str", "int", "float", "bool", "list_str", "dict", "list", "image", "image_list"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One request field: its JSON kind, the routes that accept it, the server's default."""

    name: str
    kind: Kind
    routes: frozenset[Route]
    default: Any


_BOTH: frozenset[Route] = frozenset({"txt2img", "img2img"})
_TXT: frozenset[Route] = frozenset({"txt2img"})
_IMG: frozenset[Route] = frozenset({"img2img"})

# (name, kind, default) per route group; a1111-api.md §3 and §11 (Forge).
_COMMON: tuple[tuple[str, Kind, Any], ...] = (
    ("prompt", "str", ""),
    ("negative_prompt", "str", ""),
    ("styles", "list_str", None),
    ("seed", "int", -1),
    ("subseed", "int", -1),
    ("subseed_strength", "float", 0.0),
    ("seed_resize_from_h", "int", -1),
    ("seed_resize_from_w", "int", -1),
    ("sampler_name", "str", None),
    ("sampler_index", "str", "Euler"),
    ("scheduler", "str", None),
    ("batch_size", "int", 1),
    ("n_iter", "int", 1),
    ("steps", "int", 50),
    ("cfg_scale", "float", 7.0),
    ("width", "int", 512),
    ("height", "int", 512),
    ("restore_faces", "bool", None),
    ("tiling", "bool", None),
    ("do_not_save_samples", "bool", False),
    ("do_not_save_grid", "bool", False),
    ("eta", "float", None),
    ("s_min_uncond", "float", None),
    ("s_churn", "float", None),
    ("s_tmax", "float", None),
    ("s_tmin", "float", None),
    ("s_noise", "float", None),
    ("denoising_strength", "float", None),
    ("override_settings", "dict", None),
    ("override_settings_restore_afterwards", "bool", True),
    ("refiner_checkpoint", "str", None),
    ("refiner_switch_at", "float", None),
    ("disable_extra_networks", "bool", False),
    ("comments", "dict", None),
    ("force_task_id", "str", None),
    ("infotext", "str", None),
    ("script_name", "str", None),
    ("script_args", "list", []),
    ("alwayson_scripts", "dict", {}),
    ("send_images", "bool", True),
    ("save_images", "bool", False),
    ("distilled_cfg_scale", "float", 3.5),  # Forge (Flux); A1111 ignores it
)
_TXT2IMG: tuple[tuple[str, Kind, Any], ...] = (
    ("enable_hr", "bool", False),
    ("hr_scale", "float", 2.0),
    ("hr_upscaler", "str", None),
    ("hr_second_pass_steps", "int", 0),
    ("hr_resize_x", "int", 0),
    ("hr_resize_y", "int", 0),
    ("hr_checkpoint_name", "str", None),
    ("hr_sampler_name", "str", None),
    ("hr_scheduler", "str", None),
    ("hr_prompt", "str", ""),
    ("hr_negative_prompt", "str", ""),
    ("firstphase_width", "int", 0),
    ("firstphase_height", "int", 0),
    ("hr_cfg", "float", 1.0),  # Forge
    ("hr_distilled_cfg", "float", 3.5),  # Forge
    ("hr_additional_modules", "list_str", None),  # Forge
)
_IMG2IMG: tuple[tuple[str, Kind, Any], ...] = (
    ("init_images", "image_list", None),
    ("resize_mode", "int", 0),
    ("mask", "image", None),
    ("mask_blur", "int", None),
    ("mask_blur_x", "int", 4),
    ("mask_blur_y", "int", 4),
    ("mask_round", "bool", True),
    ("inpainting_fill", "int", 0),
    ("inpaint_full_res", "bool", True),
    ("inpaint_full_res_padding", "int", 0),
    ("inpainting_mask_invert", "int", 0),
    ("image_cfg_scale", "float", None),
    ("initial_noise_multiplier", "float", None),
    ("include_init_images", "bool", False),
)


def _table() -> dict[str, FieldSpec]:
    table: dict[str, FieldSpec] = {}
    for rows, routes in ((_COMMON, _BOTH), (_TXT2IMG, _TXT), (_IMG2IMG, _IMG)):
        for name, kind, default in rows:
            table[name] = FieldSpec(name, kind, routes, default)
    return table


FIELDS: Mapping[str, FieldSpec] = MappingProxyType(_table())

# override_settings keys we know the type of (a1111-api.md §7); other keys pass through untyped.
OVERRIDE_KINDS: Mapping[str, Kind] = MappingProxyType(
    {
        "sd_model_checkpoint": "str",
        "sd_vae": "str",
        "CLIP_stop_at_last_layers": "int",
        "eta_noise_seed_delta": "int",
        "randn_source": "str",
        "enable_pnginfo": "bool",
        "samples_format": "str",
        "sd_checkpoints_limit": "int",
        "forge_additional_modules": "list_str",
    }
)

ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "model": "override_settings.sd_model_checkpoint",
        "checkpoint": "override_settings.sd_model_checkpoint",
        "sd_model_checkpoint": "override_settings.sd_model_checkpoint",
        "vae": "override_settings.sd_vae",
        "sd_vae": "override_settings.sd_vae",
        "clip_skip": "override_settings.CLIP_stop_at_last_layers",
        "sampler": "sampler_name",
        "schedule": "scheduler",
        "schedule_type": "scheduler",
        "negative": "negative_prompt",
        "neg": "negative_prompt",
        "batch_count": "n_iter",
        "cfg": "cfg_scale",
        "denoise": "denoising_strength",
        "denoising": "denoising_strength",
        "style": "styles",
        "init_image": "init_images",
        "mask_image": "mask",
        "hires_fix": "enable_hr",
        "hires": "enable_hr",
        "hr_steps": "hr_second_pass_steps",
        "ensd": "override_settings.eta_noise_seed_delta",
        "refiner": "refiner_checkpoint",
    }
)

KIND_HINTS: Mapping[str, str] = MappingProxyType(
    {
        "str": "write text",
        "int": "write a whole number such as 20",
        "float": "write a number such as 7.5 (with a dot)",
        "bool": "write true or false (yes/no and 1/0 also work)",
        "list_str": "write names separated by ';', or a JSON list",
        "dict": 'write a JSON object such as {"key": "value"}',
        "list": "write a JSON list such as [1, 2]",
        "image": "write an image file path relative to the sheet, an http(s) URL or base64 data",
        "image_list": "write image paths separated by ';' or new lines",
    }
)

_TRUE = frozenset({"true", "yes", "y", "on", "1", "1.0", "t"})
_FALSE = frozenset({"false", "no", "n", "off", "0", "0.0", "f"})
# Splits image lists on ';' or newlines, but not the ';' inside "data:image/png;base64,".
_IMAGE_SPLIT = re.compile(r";(?!base64,)|\r?\n")


def normalize_name(text: str) -> str:
    """Header matching form: trimmed, case-folded, spaces and hyphens read as underscores."""
    return re.sub(r"[\s\-]+", "_", text.strip()).lower()


def coerce(kind: Kind, value: Any) -> Any:
    """Read a cell or default as `kind`; raise ValueError with a message a user understands."""
    if kind == "str":
        return _to_str(value)
    if kind == "int":
        return _to_int(value)
    if kind == "float":
        return _to_float(value)
    if kind == "bool":
        return _to_bool(value)
    if kind == "list_str":
        return _to_list_str(value)
    if kind == "dict":
        return _to_json(value, dict, "a JSON object")
    if kind == "list":
        return _to_json(value, list, "a JSON list")
    if kind == "image":
        if isinstance(value, str) and value.strip():
            return value.strip()
        raise ValueError(f"cannot read {_show(value)} as an image")
    if kind == "image_list":
        return _to_image_list(value)
    raise ValueError(f"unknown kind {kind!r}")  # pragma: no cover


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    raise ValueError(f"cannot read {_show(value)} as text")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"cannot read {_show(value)} as a whole number")
    if isinstance(value, int):
        return value
    number: float
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"cannot read {_show(value)} as a whole number") from None
    else:
        raise ValueError(f"cannot read {_show(value)} as a whole number")
    if math.isfinite(number) and number.is_integer():
        return int(number)
    raise ValueError(f"cannot read {_show(value)} as a whole number (it has a fraction)")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"cannot read {_show(value)} as a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"cannot read {_show(value)} as a number") from None
    else:
        raise ValueError(f"cannot read {_show(value)} as a number")
    if not math.isfinite(number):
        raise ValueError(f"cannot read {_show(value)} as a number")
    return number


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"cannot read {_show(value)} as true or false")


def _to_list_str(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [_to_str(item) for item in value]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            items = _to_json(text, list, "a JSON list")
            return [_to_str(item) for item in items]
        return [part.strip() for part in re.split(r"[;\n]", text) if part.strip()]
    raise ValueError(f"cannot read {_show(value)} as a list of names")


def _to_json(value: Any, kind: type, what: str) -> Any:
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"cannot read {_show(value)} as {what}") from None
        if isinstance(parsed, kind):
            return parsed
    raise ValueError(f"cannot read {_show(value)} as {what}")


def _to_image_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        items = [str(item).strip() for item in value if isinstance(item, str)]
        if len(items) != len(value):
            raise ValueError(f"cannot read {_show(value)} as a list of images")
    elif isinstance(value, str):
        items = [part.strip() for part in _IMAGE_SPLIT.split(value)]
    else:
        raise ValueError(f"cannot read {_show(value)} as a list of images")
    items = [item for item in items if item]
    if not items:
        raise ValueError(f"cannot read {_show(value)} as a list of images")
    return items
