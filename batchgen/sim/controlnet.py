"""ControlNet units in `alwayson_scripts`: Mikubill 1.1.455 validation, or Forge's dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ApiError

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
_LEGACY_RESIZE = (
    "Inner Fit (Scale to Fit)",
    "Outer Fit (Shrink to Fit)",
    "Scale to Fit (Inner Fit)",
    "Envelope (Outer Fit)",
)
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
_CONTROL_ENUM = ("BALANCED", "PROMPT", "CONTROL")
HR_OPTIONS = ("Both", "Low res only", "High res only")
MODEL_FREE = frozenset({"reference_only", "reference_adain", "reference_adain+attn", "invert"})
# (processor_res, threshold_a, threshold_b) slider defaults and (min, max) of each slider.
_SLIDERS: dict[str, tuple[tuple[Any, float, float], ...]] = {
    "canny": ((512, 64, 2048), (100, 1, 255), (200, 1, 255)),
    "mlsd": ((512, 64, 2048), (0.1, 0.01, 2.0), (0.1, 0.01, 20.0)),
}
_HIDDEN = ((512, 64, 2048), (0.5, 0.0, 1.0), (0.5, 0.0, 1.0))
_ALIASES = (("input_image", "image"), ("lowvram", "low_vram"), ("guidance", "guidance_end"))


@dataclass(frozen=True, slots=True)
class Unit:
    """One enabled unit after validation, with the values its infotext shows."""

    index: int
    module: str
    model: str
    weight: float
    resize_mode: str
    processor_res: Any
    threshold_a: Any
    threshold_b: Any
    guidance_start: float
    guidance_end: float
    pixel_perfect: bool
    control_mode: str
    image: Any
    save_detected_map: bool
    hr_option: str

    def infotext(self) -> str:
        return (
            f"Module: {self.module}, Model: {self.model}, Weight: {self.weight}, "
            f"Resize Mode: {self.resize_mode}, Processor Res: {self.processor_res}, "
            f"Threshold A: {self.threshold_a}, Threshold B: {self.threshold_b}, "
            f"Guidance Start: {self.guidance_start}, Guidance End: {self.guidance_end}, "
            f"Pixel Perfect: {self.pixel_perfect}, Control Mode: {self.control_mode}"
        )


class _UnitErrors:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, loc: str, msg: str, type_: str, ctx: str = "") -> None:
        self.lines.append(f"{loc}\n  {msg} (type={type_}{ctx})")

    def raise_if_any(self) -> None:
        if self.lines:
            n = len(self.lines)
            head = f"{n} validation error{'' if n == 1 else 's'} for ControlNetUnit"
            raise ApiError.internal("ValidationError", "\n".join([head, *self.lines]))


def _enum_ctx(name: str, members: tuple[str, ...], values: tuple[str, ...]) -> str:
    reprs = ", ".join(f"<{name}.{m}: {v!r}>" for m, v in zip(members, values, strict=True))
    return f"; enum_values=[{reprs}]"


def _permitted(values: tuple[str, ...]) -> str:
    return "value is not a valid enumeration member; permitted: " + ", ".join(map(repr, values))


def _v1_float(v: Any) -> float | None:
    try:
        return float(v) if not isinstance(v, (list, dict, type(None))) else None
    except (TypeError, ValueError):
        return None


def _v1_int(v: Any) -> int | None:
    try:
        return int(v) if not isinstance(v, (list, dict, type(None))) else None
    except (TypeError, ValueError, OverflowError):
        return None


def _v1_bool(v: Any) -> bool | None:
    if isinstance(v, str):
        v = v.lower()
    if v in (True, 1, "1", "on", "t", "true", "y", "yes"):
        return True
    if v in (False, 0, "0", "off", "f", "false", "n", "no"):
        return False
    return None


def parse_units(value: Any, *, forge: bool, modules: tuple[str, ...], slots: int) -> list[Unit]:
    """Validated enabled units; a bad field raises the 500 ValidationError (Mikubill hijack)."""
    args = value.get("args") if isinstance(value, dict) else None
    if not isinstance(args, list):
        return []
    units: list[Unit] = []
    for index, raw in enumerate(args[:slots]):
        if not isinstance(raw, dict):
            continue
        unit = _forge_unit(index, raw) if forge else _a1111_unit(index, raw, modules)
        if unit is not None:
            units.append(unit)
    return units


def _a1111_unit(index: int, raw: dict[str, Any], modules: tuple[str, ...]) -> Unit | None:
    d = dict(raw)
    for old, new in (*_ALIASES, ("mask_image", "mask")):
        if old in d:
            if new in d:
                raise ApiError.internal("AssertionError", f"Cannot specify both {old} and {new}")
            d[new] = d.pop(old)
    errs = _UnitErrors()
    enabled = _v1_bool(d.get("enabled", False))
    if enabled is None:
        errs.add("enabled", "value could not be parsed to a boolean", "type_error.bool")
    module = d.get("module", "none")
    if not isinstance(module, str) or module not in modules:
        errs.add("module", f"module({module}) not found in supported modules.", "value_error")
    model = d.get("model", "None")
    if not isinstance(model, str):
        errs.add("model", "str type expected", "type_error.str")
    weight = _v1_float(d.get("weight", 1.0))
    if weight is None:
        errs.add("weight", "value is not a valid float", "type_error.float")
    elif not 0.0 <= weight <= 2.0:
        bound = (
            ("greater than or equal to", "ge", 0.0)
            if weight < 0
            else ("less than or equal to", "le", 2.0)
        )
        errs.add(
            "weight",
            f"ensure this value is {bound[0]} {bound[2]}",
            f"value_error.number.not_{bound[1]}",
            f"; limit_value={bound[2]}",
        )
    resize = d.get("resize_mode", "Crop and Resize")
    if not isinstance(resize, str):
        errs.add("resize_mode", "", "assertion_error")
    elif resize not in RESIZE_MODES + _LEGACY_RESIZE:
        errs.add(
            "resize_mode",
            _permitted(RESIZE_MODES),
            "type_error.enum",
            _enum_ctx("ResizeMode", ("RESIZE", "INNER_FIT", "OUTER_FIT"), RESIZE_MODES),
        )
    res = _v1_int(d.get("processor_res", -1))
    if res is None:
        errs.add("processor_res", "value is not a valid integer", "type_error.integer")
    ta, tb = _v1_float(d.get("threshold_a", -1)), _v1_float(d.get("threshold_b", -1))
    for name, val in (("threshold_a", ta), ("threshold_b", tb)):
        if val is None:
            errs.add(name, "value is not a valid float", "type_error.float")
    gs, ge = _v1_float(d.get("guidance_start", 0.0)), _v1_float(d.get("guidance_end", 1.0))
    for name, val in (("guidance_start", gs), ("guidance_end", ge)):
        if val is None:
            errs.add(name, "value is not a valid float", "type_error.float")
    pixel_perfect = _v1_bool(d.get("pixel_perfect", False))
    if pixel_perfect is None:
        errs.add("pixel_perfect", "value could not be parsed to a boolean", "type_error.bool")
    control = d.get("control_mode", "Balanced")
    if control not in CONTROL_MODES:
        errs.add(
            "control_mode",
            _permitted(CONTROL_MODES),
            "type_error.enum",
            _enum_ctx("ControlMode", _CONTROL_ENUM, CONTROL_MODES),
        )
    hr_option = d.get("hr_option", "Both")
    if hr_option not in HR_OPTIONS:
        errs.add(
            "hr_option",
            _permitted(HR_OPTIONS),
            "type_error.enum",
            _enum_ctx("HiResFixOption", ("BOTH", "LOW_RES_ONLY", "HIGH_RES_ONLY"), HR_OPTIONS),
        )
    save_map = _v1_bool(d.get("save_detected_map", True))
    if save_map is None:
        errs.add("save_detected_map", "value could not be parsed to a boolean", "type_error.bool")
    if gs is not None and ge is not None and gs > ge:
        errs.add("__root__", "guidance_start must be <= guidance_end", "assertion_error")
    errs.raise_if_any()
    if not enabled:
        return None
    sliders = _SLIDERS.get(str(module), _HIDDEN)
    values: list[Any] = [res, ta, tb]
    for i, (default, low, high) in enumerate(sliders):
        if not low <= values[i] <= high:
            values[i] = default
    return Unit(
        index=index,
        module=str(module),
        model=str(model),
        weight=float(weight or 0.0),
        resize_mode=str(resize),
        processor_res=values[0],
        threshold_a=values[1],
        threshold_b=values[2],
        guidance_start=float(gs or 0.0),
        guidance_end=float(ge if ge is not None else 1.0),
        pixel_perfect=bool(pixel_perfect),
        control_mode=str(control),
        image=d.get("image"),
        save_detected_map=bool(save_map),
        hr_option=str(hr_option),
    )


def _forge_unit(index: int, raw: dict[str, Any]) -> Unit | None:
    """Forge's dataclass keeps only its own keys: `input_image` is ignored, ints are accepted."""
    if not raw.get("enabled", True):
        return None
    resize = raw.get("resize_mode", "Crop and Resize")
    if isinstance(resize, int) and 0 <= resize < len(RESIZE_MODES):
        resize = RESIZE_MODES[resize]
    control = raw.get("control_mode", "Balanced")
    if isinstance(control, int) and 0 <= control < len(CONTROL_MODES):
        control = CONTROL_MODES[control]
    return Unit(
        index=index,
        module=str(raw.get("module", "None")),
        model=str(raw.get("model", "None")),
        weight=float(raw.get("weight", 1.0)),
        resize_mode=str(resize),
        processor_res=raw.get("processor_res", 512),
        threshold_a=raw.get("threshold_a", 0.5),
        threshold_b=raw.get("threshold_b", 0.5),
        guidance_start=float(raw.get("guidance_start", 0.0)),
        guidance_end=float(raw.get("guidance_end", 1.0)),
        pixel_perfect=bool(raw.get("pixel_perfect", False)),
        control_mode=str(control),
        image=raw.get("image"),
        save_detected_map=bool(raw.get("save_detected_map", True)),
        hr_option=str(raw.get("hr_option", "Both")),
    )
