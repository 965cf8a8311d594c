"""A1111's X/Y/Z plot value syntax in a cell: `20, 30`, `1-8`, `1-10 (+2)`, `1-10 [5]`, floats too.

The grammar is the one of A1111's scripts/xyz_grid.py (comma-separated, csv-quoted items; an item
is a value or a range); unlike A1111, a range that yields nothing or a zero step is an error rather
than an empty axis, and float steps are added in decimal so `5.5-7.5 (+0.5)` ends on 7.5 exactly.
"""

from __future__ import annotations

import csv
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

SweepKind = Literal["int", "float", "name"]

_NUMBER = r"[+-]?\s*\d+(?:\.\d*)?|[+-]?\s*\.\d+"
_RANGE = re.compile(
    rf"\s*(?P<start>{_NUMBER})\s*-\s*(?P<end>{_NUMBER})"
    rf"(?:\s*\(\s*(?P<step>[+-]\s*(?:\d+(?:\.\d*)?|\.\d+))\s*\)|\s*\[\s*(?P<count>\d+)\s*\])?\s*"
)
HINT = "write values like 20, 30, 40 or ranges like 1-8, 1-10 (+2), 1-10 [5], 5.5-7.5 (+0.5)"


class SweepError(ValueError):
    """A cell that reads as a sweep but cannot be one (a backwards range, a zero step)."""

    def __init__(self, message: str, hint: str = HINT) -> None:
        super().__init__(message)
        self.hint = hint


def is_sweep(raw: Any, kind: SweepKind) -> bool:
    """Whether a cell holds more than one value in the X/Y/Z syntax (else it is a plain value)."""
    if isinstance(raw, list):
        return True
    if not isinstance(raw, str):
        return False
    if "," in raw:
        return True
    return kind != "name" and _RANGE.fullmatch(raw) is not None


def sweep_values(raw: Any, kind: SweepKind) -> list[Any]:
    """The values a sweep cell stands for, in the order written. Raises SweepError."""
    items = list(raw) if isinstance(raw, list) else _split(str(raw))
    if not items:
        raise SweepError("the list is empty")
    values: list[Any] = []
    for item in items:
        if kind == "name":
            text = str(item).strip()
            if not text:
                raise SweepError(
                    "the list has an empty item", "remove the extra comma between names"
                )
            values.append(text)
            continue
        values.extend(_numbers(item, kind))
    return values


def _split(text: str) -> list[str]:
    rows = list(csv.reader([text], skipinitialspace=True))
    return [item.strip() for item in rows[0]] if rows else []


def _numbers(item: Any, kind: SweepKind) -> list[Any]:
    if not isinstance(item, str):
        return [item]  # a JSON number stays as it is; the field's coercion judges it
    match = _RANGE.fullmatch(item)
    if match is None:
        if not item.strip():
            raise SweepError("the list has an empty item", "remove the extra comma")
        return [item.strip()]  # one value: the field's coercion reads (or rejects) it
    start, end = _decimal(match["start"]), _decimal(match["end"])
    if kind == "int" and not all(d == d.to_integral_value() for d in (start, end)):
        raise SweepError(f"'{item.strip()}' is a range of whole numbers with decimals")
    if match["count"] is not None:
        return _counted(item, start, end, int(match["count"]), kind)
    step = _decimal(match["step"]) if match["step"] is not None else Decimal(1)
    if step == 0:
        raise SweepError(f"'{item.strip()}' has a zero step", "use a step like (+2) or (-0.5)")
    if kind == "int" and step != step.to_integral_value():
        raise SweepError(f"'{item.strip()}' steps by {step} in a whole-number field")
    if (end - start) * step < 0:
        shown = item.strip()
        if step > 0:
            raise SweepError(
                f"'{shown}' runs backwards: counting up from {start} never reaches {end}",
                f"write it as {end}-{start}, or count down with {start}-{end} (-{step})",
            )
        raise SweepError(
            f"'{shown}' runs backwards: counting down from {start} never reaches {end}",
            f"count up with {start}-{end} (+{-step}), or write it as {end}-{start} ({step})",
        )
    count = int((end - start) / step) + 1
    return [_typed(start + step * i, kind) for i in range(count)]


def _counted(item: str, start: Decimal, end: Decimal, count: int, kind: SweepKind) -> list[Any]:
    """`a-b [n]`: n evenly spaced values from a to b (numpy.linspace, as A1111 uses)."""
    if count < 1:
        raise SweepError(f"'{item.strip()}' asks for no values", "write a count of 1 or more")
    if count == 1:
        return [_typed(start, kind)]
    span = (end - start) / (count - 1)
    values = [start + span * i for i in range(count)]
    values[-1] = end
    if kind == "int":
        return [int(v) for v in values]  # A1111 truncates linspace's values: .astype(int)
    return [_typed(v, kind) for v in values]


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text.replace(" ", ""))
    except InvalidOperation:  # pragma: no cover - the pattern only lets numbers through
        raise SweepError(f"'{text}' is not a number") from None


def _typed(value: Decimal, kind: SweepKind) -> int | float:
    if kind == "int":
        return int(value)
    return float(value.normalize()) if value != value.to_integral_value() else float(int(value))
