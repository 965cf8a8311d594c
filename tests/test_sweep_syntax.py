"""The X/Y/Z plot value grammar: what each cell stands for, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from batchgen.rows.sweep_syntax import SweepError, SweepKind, is_sweep, sweep_values


@pytest.mark.parametrize(
    ("cell", "kind", "values"),
    [
        ("20, 30, 40", "int", [20, 30, 40]),
        ("1-8", "int", [1, 2, 3, 4, 5, 6, 7, 8]),
        ("1-10 (+2)", "int", [1, 3, 5, 7, 9]),
        ("10-1 (-3)", "int", [10, 7, 4, 1]),
        ("1-10 [5]", "int", [1, 3, 5, 7, 10]),  # linspace, truncated like A1111's astype(int)
        ("5.5-7.5 (+0.5)", "float", [5.5, 6.0, 6.5, 7.0, 7.5]),
        ("0.1-0.3 (+0.1)", "float", [0.1, 0.2, 0.3]),  # decimal steps: no 0.30000000000000004
        ("0-1 [3]", "float", [0.0, 0.5, 1.0]),
        ("3, 1-2, 7", "int", [3, 1, 2, 7]),
        ("512 - 768 (+128)", "int", [512, 640, 768]),
        ("Euler a, DPM++ 2M", "name", ["Euler a", "DPM++ 2M"]),
        ('"name, with comma", other', "name", ["name, with comma", "other"]),
        ([20, 30], "int", [20, 30]),  # a JSONL list
    ],
)
def test_each_form_stands_for_its_values(cell: Any, kind: SweepKind, values: list[Any]) -> None:
    assert is_sweep(cell, kind)
    assert [_typed(v, kind) for v in sweep_values(cell, kind)] == values


def _typed(value: Any, kind: SweepKind) -> Any:
    if kind == "int" and isinstance(value, str):
        return int(value)
    if kind == "float" and isinstance(value, str):
        return float(value)
    return value


@pytest.mark.parametrize(
    ("cell", "kind"),
    [
        ("20", "int"),
        ("-1", "int"),
        ("7.5", "float"),
        ("1e-5", "float"),
        ("v1-5-pruned-emaonly", "name"),  # names take lists, not ranges
        ("DPM++ 2M", "name"),
        (20, "int"),
    ],
)
def test_one_plain_value_is_not_a_sweep(cell: Any, kind: SweepKind) -> None:
    assert not is_sweep(cell, kind)


@pytest.mark.parametrize(
    ("cell", "kind", "message", "hint"),
    [
        ("8-1", "int", "runs backwards", "8-1 (-1)"),
        ("7.5-5.5 (+0.5)", "float", "runs backwards", "5.5-7.5"),
        ("1-8 (-1)", "int", "runs backwards", "1-8 (+1)"),
        ("1-10 (+0)", "int", "zero step", "(+2)"),
        ("1-10 (+0.5)", "int", "steps by 0.5", None),
        ("1-10 [0]", "int", "no values", None),
        ("a, , b", "name", "empty item", None),
    ],
)
def test_a_range_that_cannot_run_is_an_error_with_a_fix(
    cell: str, kind: SweepKind, message: str, hint: str | None
) -> None:
    with pytest.raises(SweepError, match=message) as caught:
        sweep_values(cell, kind)
    if hint is not None:
        assert hint in caught.value.hint
