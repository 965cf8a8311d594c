"""Request-body validation with pydantic v1 coercion (A1111) or v2 (Forge), FastAPI 422 bodies.

The field tables follow a1111-api.md section 3; every field is optional, unknown keys are ignored.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any

from .errors import RequestInvalid

Field = tuple[str, str, Any]  # (name, kind, default)

_COMMON_HEAD: tuple[Field, ...] = (
    ("prompt", "str", ""),
    ("negative_prompt", "str", ""),
    ("styles", "list_str", None),
    ("seed", "int", -1),
    ("subseed", "int", -1),
    ("subseed_strength", "float", 0.0),
    ("seed_resize_from_h", "int", -1),
    ("seed_resize_from_w", "int", -1),
    ("sampler_name", "str", None),
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
    ("denoising_strength", "float", None),
    ("s_min_uncond", "float", None),
    ("s_churn", "float", None),
    ("s_tmax", "float", None),
    ("s_tmin", "float", None),
    ("s_noise", "float", None),
    ("override_settings", "dict", None),
    ("override_settings_restore_afterwards", "bool", True),
    ("refiner_checkpoint", "str", None),
    ("refiner_switch_at", "float", None),
    ("disable_extra_networks", "bool", False),
    ("firstpass_image", "str", None),
    ("comments", "dict", None),
)
_TXT2IMG_ONLY: tuple[Field, ...] = (
    ("enable_hr", "bool", False),
    ("firstphase_width", "int", 0),
    ("firstphase_height", "int", 0),
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
)
_IMG2IMG_ONLY: tuple[Field, ...] = (
    ("init_images", "list_str", None),
    ("resize_mode", "int", 0),
    ("image_cfg_scale", "float", None),
    ("mask", "str", None),
    ("mask_blur_x", "int", 4),
    ("mask_blur_y", "int", 4),
    ("mask_blur", "int", None),
    ("mask_round", "bool", True),
    ("inpainting_fill", "int", 0),
    ("inpaint_full_res", "bool", True),
    ("inpaint_full_res_padding", "int", 0),
    ("inpainting_mask_invert", "int", 0),
    ("initial_noise_multiplier", "float", None),
    ("latent_mask", "str", None),
)
_API_TAIL: tuple[Field, ...] = (
    ("force_task_id", "str", None),
    ("sampler_index", "str", "Euler"),
    ("script_name", "str", None),
    ("script_args", "list", []),
    ("send_images", "bool", True),
    ("save_images", "bool", False),
    ("alwayson_scripts", "dict", {}),
    ("infotext", "str", None),
)
_FORGE_COMMON: tuple[Field, ...] = (("distilled_cfg_scale", "float", 3.5),)
_FORGE_TXT2IMG: tuple[Field, ...] = (
    ("hr_cfg", "float", 1.0),
    ("hr_distilled_cfg", "float", 3.5),
    ("hr_additional_modules", "list", None),
)


@functools.lru_cache(maxsize=8)
def fields_for(route: str, flavor: str) -> tuple[Field, ...]:
    """The request model of `route` ("txt2img" or "img2img") for a flavor, in field order."""
    forge = flavor == "forge"
    if route == "txt2img":
        extra = _FORGE_COMMON + _FORGE_TXT2IMG if forge else ()
        return _COMMON_HEAD + _TXT2IMG_ONLY + extra + _API_TAIL
    common = tuple((n, k, 0.75 if n == "denoising_strength" else d) for n, k, d in _COMMON_HEAD)
    extra = _FORGE_COMMON if forge else ()
    return common + _IMG2IMG_ONLY + extra + _API_TAIL + (("include_init_images", "bool", False),)


class _Bad(Exception):
    def __init__(self, type_: str, msg: str, ctx: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.type = type_
        self.msg = msg
        self.ctx = ctx


_V1_TRUE = {1, "1", "on", "t", "true", "y", "yes"}
_V1_FALSE = {0, "0", "off", "f", "false", "n", "no"}


def _v1_str(v: Any) -> Any:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)):  # pydantic v1 str_validator: str(number); bool is an int
        return str(v)
    raise _Bad("type_error.str", "str type expected")


def _v1_int(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    try:
        if isinstance(v, (list, dict)):
            raise TypeError
        return int(v)
    except (TypeError, ValueError, OverflowError):
        raise _Bad("type_error.integer", "value is not a valid integer") from None


def _v1_float(v: Any) -> Any:
    if isinstance(v, float):
        return v
    try:
        if isinstance(v, (list, dict)):
            raise TypeError
        return float(v)
    except (TypeError, ValueError):
        raise _Bad("type_error.float", "value is not a valid float") from None


def _v1_bool(v: Any) -> Any:
    if v is True or v is False:
        return v
    if isinstance(v, str):
        v = v.lower()
    try:
        if v in _V1_TRUE:
            return True
        if v in _V1_FALSE:
            return False
    except TypeError:
        pass
    raise _Bad("type_error.bool", "value could not be parsed to a boolean")


def _v1_list(v: Any) -> Any:
    if isinstance(v, list):
        return v
    if isinstance(v, (tuple, set)):
        return list(v)
    raise _Bad("type_error.list", "value is not a valid list")


def _v1_dict(v: Any) -> Any:
    if isinstance(v, dict):
        return v
    raise _Bad("type_error.dict", "value is not a valid dict")


def _v2_str(v: Any) -> Any:
    if isinstance(v, str):
        return v
    raise _Bad("string_type", "Input should be a valid string")


def _v2_int(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _Bad("finite_number", "Input should be a finite number")
        if v != int(v):
            raise _Bad(
                "int_from_float",
                "Input should be a valid integer, got a number with a fractional part",
            )
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            raise _Bad(
                "int_parsing",
                "Input should be a valid integer, unable to parse string as an integer",
            ) from None
    raise _Bad("int_type", "Input should be a valid integer")


def _v2_float(v: Any) -> Any:
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            raise _Bad(
                "float_parsing",
                "Input should be a valid number, unable to parse string as a number",
            ) from None
    raise _Bad("float_type", "Input should be a valid number")


def _v2_bool(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, float) and v in (0.0, 1.0):
        return bool(v)
    if isinstance(v, str):
        text = v.strip().lower()
        if text in ("1", "on", "t", "true", "y", "yes"):
            return True
        if text in ("0", "off", "f", "false", "n", "no"):
            return False
        raise _Bad("bool_parsing", "Input should be a valid boolean, unable to interpret input")
    raise _Bad("bool_type", "Input should be a valid boolean")


def _v2_list(v: Any) -> Any:
    if isinstance(v, list):
        return v
    raise _Bad("list_type", "Input should be a valid list")


def _v2_dict(v: Any) -> Any:
    if isinstance(v, dict):
        return v
    raise _Bad("dict_type", "Input should be a valid dictionary")


_Check = Callable[[Any], Any]
_V1: dict[str, _Check] = {
    "str": _v1_str,
    "int": _v1_int,
    "float": _v1_float,
    "bool": _v1_bool,
    "list": _v1_list,
    "dict": _v1_dict,
}
_V2: dict[str, _Check] = {
    "str": _v2_str,
    "int": _v2_int,
    "float": _v2_float,
    "bool": _v2_bool,
    "list": _v2_list,
    "dict": _v2_dict,
}


class Validator:
    """Turns a raw body into the request dict (every field, defaults filled) or RequestInvalid."""

    def __init__(self, flavor: str) -> None:
        self.v2 = flavor == "forge"
        self._checks = _V2 if self.v2 else _V1

    def _error(self, loc: list[Any], bad: _Bad, value: Any) -> dict[str, Any]:
        if not self.v2:
            out: dict[str, Any] = {"loc": loc, "msg": bad.msg, "type": bad.type}
            if bad.ctx:
                out["ctx"] = bad.ctx
            return out
        out = {"type": bad.type, "loc": loc, "msg": bad.msg, "input": value}
        if bad.ctx:
            out["ctx"] = bad.ctx
        out["url"] = f"https://errors.pydantic.dev/2.8/v/{bad.type}"
        return out

    def parse_json(self, raw: bytes, content_type: str | None) -> Any:
        """FastAPI's body handling: empty is missing, a non-JSON content type gives bytes."""
        if not raw:
            if self.v2:
                bad = _Bad("missing", "Field required")
                raise RequestInvalid([self._error(["body"], bad, None)])
            raise RequestInvalid(
                [{"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]
            )
        if content_type is not None:
            mime = content_type.split(";", 1)[0].strip().lower()
            main, _, sub = mime.partition("/")
            if main != "application" or not (sub == "json" or sub.endswith("+json")):
                return raw
        try:
            return json.loads(raw)
        except ValueError as exc:
            doc = raw.decode("utf-8", "replace")
            err = (
                exc
                if isinstance(exc, json.JSONDecodeError)
                else json.JSONDecodeError(str(exc), doc, 0)
            )
            if self.v2:
                raise RequestInvalid(
                    [
                        {
                            "type": "json_invalid",
                            "loc": ["body", err.pos],
                            "msg": "JSON decode error",
                            "input": {},
                            "ctx": {"error": err.msg},
                        }
                    ]
                ) from None
            ctx = {
                "msg": err.msg,
                "doc": err.doc,
                "pos": err.pos,
                "lineno": err.lineno,
                "colno": err.colno,
            }
            raise RequestInvalid(
                [
                    {
                        "loc": ["body", err.pos],
                        "msg": str(err),
                        "type": "value_error.jsondecode",
                        "ctx": ctx,
                    }
                ]
            ) from None

    def validate(self, body: Any, spec: tuple[Field, ...]) -> dict[str, Any]:
        if not isinstance(body, dict):
            bad = (
                _Bad(
                    "model_attributes_type",
                    "Input should be a valid dictionary or object to extract fields from",
                )
                if self.v2
                else _Bad("type_error.dict", "value is not a valid dict")
            )
            if isinstance(body, bytes):
                body = body.decode("utf-8", "replace")
            raise RequestInvalid([self._error(["body"], bad, body)])
        errors: list[dict[str, Any]] = []
        out: dict[str, Any] = {}
        for name, kind, default in spec:
            if name not in body:
                out[name] = (
                    list(default)
                    if isinstance(default, list)
                    else (dict(default) if isinstance(default, dict) else default)
                )
                continue
            value = body[name]
            if value is None:
                out[name] = None
                continue
            out[name] = self._check(kind, value, ["body", name], errors)
        if errors:
            raise RequestInvalid(errors)
        return out

    def _check(self, kind: str, value: Any, loc: list[Any], errors: list[dict[str, Any]]) -> Any:
        if kind == "list_str":
            items = self._check("list", value, loc, errors)
            if not isinstance(items, list):
                return None
            return [self._check("str", item, [*loc, i], errors) for i, item in enumerate(items)]
        try:
            return self._checks[kind](value)
        except _Bad as bad:
            errors.append(self._error(loc, bad, value))
            return None
