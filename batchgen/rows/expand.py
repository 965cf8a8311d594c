"""Sheet rows -> expansions: prompt templates and wildcards (dynamicprompts), X/Y/Z sweeps.

Enters: SheetRows as read. Leaves: SheetRows holding one value per cell, each carrying an
Expansion that says what was written and what it became; a row with no template or sweep cell
leaves exactly as it came, so its request and its key are the same as before sweeps existed.
Rows expand one at a time, lazily: a sheet of a million requests is never held in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import random
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dynamicprompts.commands import Command, VariantOption, WildcardCommand
from dynamicprompts.enums import SamplingMethod
from dynamicprompts.parser.parse import parse
from dynamicprompts.sampling_context import SamplingContext
from dynamicprompts.wildcards import WildcardManager
from pyparsing import ParseBaseException

from batchgen.errors import InputError, Problem
from batchgen.job import JobSpec
from batchgen.records import Expansion, SheetRow
from batchgen.rows import controlnet as cn
from batchgen.rows.columns import FieldPath, Target
from batchgen.rows.fields import coerce
from batchgen.rows.sweep_syntax import SweepError, SweepKind, is_sweep, sweep_values

TEMPLATE_FIELDS: frozenset[FieldPath] = frozenset({("prompt",), ("negative_prompt",)})
CHECKPOINT = ("override_settings", "sd_model_checkpoint")
# Text fields whose cell may list names, comma-separated; other text (styles, prompts) may not.
NAME_SWEEPS: frozenset[FieldPath] = frozenset(
    {
        CHECKPOINT,
        ("override_settings", "sd_vae"),
        ("sampler_name",),
        ("scheduler",),
        ("hr_sampler_name",),
        ("hr_scheduler",),
        ("hr_upscaler",),
        ("hr_checkpoint_name",),
        ("refiner_checkpoint",),
    }
)
UNIT_NAME_SWEEPS = frozenset({"model", "module"})
MODE_COLUMN = "expand.mode"
COUNT_COLUMN = "expand.count"
EXPAND_COLUMNS = (MODE_COLUMN, COUNT_COLUMN)  # per-row settings: read here, never sent
MODES = ("combinatorial", "random")
# Braces, or a whole `__name__`: a lone `__` (`window.__name`, `a__b`) is plain text, as before.
_TEMPLATE_MARKS = re.compile(r"[{}]|__[^_\s]\S*?__")
_NESTING_LIMIT = 10  # wildcard files naming wildcard files: deeper than this is a loop


class _TemplateError(ValueError):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True, slots=True)
class _Axis:
    """One dimension a row expands along: the columns it sets and each step's values."""

    columns: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True, slots=True)
class RowExpansion:
    """A row and the axes it expands along; its rows are made one at a time when iterated."""

    row: SheetRow
    axes: tuple[_Axis, ...]

    @property
    def requests(self) -> int:
        return math.prod(len(axis.values) for axis in self.axes)

    def rows(self) -> Iterator[SheetRow]:
        if not self.axes:
            yield self.row
            return
        cells = self.row.cells
        templates = {c: cells[c] for axis in self.axes for c in axis.columns if c in cells}
        count = self.requests
        steps = itertools.product(*(axis.values for axis in self.axes))
        for index, step in enumerate(steps):
            values: dict[str, Any] = {}
            for axis, value in zip(self.axes, step, strict=True):
                values.update(zip(axis.columns, value, strict=True))
            yield SheetRow(
                self.row.row,
                {**cells, **values},
                Expansion(index=index, count=count, templates=templates, values=values),
            )


class Expander:
    """Expands rows by the job's [expand] settings; `target_of` says what field a header sets."""

    def __init__(self, job: JobSpec, target_of: Callable[[str], Target | None]) -> None:
        self._job = job
        self._settings = job.expand
        self._sheet_file = str(job.sheet)
        self._target_of = target_of
        self._folder = job.wildcard_folder
        self._wildcards = WildcardManager(self._folder if self._folder.is_dir() else None)
        self._wildcards.sort_wildcards = False  # file order: "in order" is what people ask for
        self._combinations = SamplingContext(
            wildcard_manager=self._wildcards,
            default_sampling_method=SamplingMethod.COMBINATORIAL,
        )
        self._wildcard_checked: dict[str, str | None] = {}  # name -> what is wrong, if anything
        with warnings.catch_warnings():
            # dynamicprompts 0.31 builds its (cached) parser with pyparsing names pyparsing 3.3
            # deprecates: ours to silence once, not the user's to read.
            warnings.simplefilter("ignore", DeprecationWarning)
            parse("{a|b}")

    def plan(self, row: SheetRow) -> RowExpansion:
        """How the row expands, or InputError naming every bad cell (row, column, fix)."""
        problems: list[Problem] = []
        mode, count = self._mode(row, problems)
        slowest: list[_Axis] = []
        sweeps: list[_Axis] = []
        templates: dict[str, str] = {}
        for header, raw in row.cells.items():
            target = self._target_of(header)
            if target is None:
                continue
            if target.path in TEMPLATE_FIELDS:
                if isinstance(raw, str) and _TEMPLATE_MARKS.search(raw):
                    templates[header] = raw
                continue
            kind = _sweep_kind(target)
            if kind is None or not is_sweep(raw, kind):
                continue
            try:
                values = [v if kind == "name" else coerce(kind, v) for v in sweep_values(raw, kind)]
            except SweepError as error:
                problems.append(self._problem(row, header, str(error), error.hint))
                continue
            except ValueError as error:
                problems.append(self._problem(row, header, str(error), _SWEEP_HINT))
                continue
            axis = _Axis((header,), tuple((v,) for v in values))
            # A checkpoint sweep varies slowest: each checkpoint's requests come together.
            (slowest if target.path == CHECKPOINT else sweeps).append(axis)
        parsed: dict[str, Command] = {}
        for header, template in templates.items():
            try:
                parsed[header] = self._parsed(template)
            except _TemplateError as error:
                problems.append(self._problem(row, header, str(error), error.hint))
        if problems:
            raise InputError(problems)
        if not (slowest or sweeps or parsed):
            return RowExpansion(row, ())  # a plain row, as it came
        budget = self._settings.max_images // max(1, self._images_per_request(row))
        self._check_budget(row, [*slowest, *sweeps], budget)
        budget //= math.prod(len(axis.values) for axis in [*slowest, *sweeps])
        prompts = self._prompt_axes(row, parsed, mode, count, budget)
        return RowExpansion(row, (*slowest, *prompts, *sweeps))

    # ---- settings per row ------------------------------------------------------------------

    def _mode(self, row: SheetRow, problems: list[Problem]) -> tuple[str, int]:
        mode: str = self._settings.mode
        count = self._settings.count
        raw_mode = row.cells.get(MODE_COLUMN)
        if raw_mode is not None:
            text = str(raw_mode).strip().lower()
            if text in MODES:
                mode = text
            else:
                problems.append(
                    self._problem(
                        row,
                        MODE_COLUMN,
                        f"unknown mode {raw_mode!r}",
                        "write combinatorial or random",
                    )
                )
        raw_count = row.cells.get(COUNT_COLUMN)
        if raw_count is not None:
            try:
                count = coerce("int", raw_count)
                if count < 1:
                    raise ValueError(f"{count} draws is none")
            except ValueError as error:
                problems.append(
                    self._problem(row, COUNT_COLUMN, str(error), "write a whole number like 20")
                )
        return mode, count

    def _images_per_request(self, row: SheetRow) -> int:
        images = 1
        for name in ("batch_size", "n_iter"):
            raw = next(
                (v for h, v in row.cells.items() if _path(self._target_of(h)) == (name,)),
                self._job.defaults.get(name, 1),
            )
            try:
                values = sweep_values(raw, "int") if is_sweep(raw, "int") else [raw]
                images *= max(1, *(coerce("int", value) for value in values))
            except ValueError:
                continue  # the payload or the sweep reports it
        return images

    # ---- prompts ----------------------------------------------------------------------------

    def _prompt_axes(
        self, row: SheetRow, templates: Mapping[str, Command], mode: str, count: int, budget: int
    ) -> tuple[_Axis, ...]:
        if not templates:
            return ()
        if mode == "random":
            self._check_size(row, next(iter(templates)), count, budget)
            draws = [
                self._draws(row, header, command, count) for header, command in templates.items()
            ]
            return (_Axis(tuple(templates), tuple(zip(*draws, strict=True))),)
        axes = []
        for header, command in templates.items():
            variants = list(
                itertools.islice(self._combinations.sample_prompts(command, None), budget + 1)
            )
            self._check_size(row, header, len(variants), budget)
            budget //= max(1, len(variants))
            axes.append(_Axis((header,), tuple((str(v),) for v in variants)))
        return tuple(axes)

    def _draws(self, row: SheetRow, header: str, command: Command, count: int) -> list[str]:
        """`count` random draws, seeded by the row's identity: a rerun draws the same."""
        identity = json.dumps(
            {"base": self._job.seed.base, "column": header, "cells": row.cells},
            sort_keys=True,
            default=str,
        )
        seed = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big")
        context = SamplingContext(
            wildcard_manager=self._wildcards,
            default_sampling_method=SamplingMethod.RANDOM,
            rand=random.Random(seed),
        )
        return [str(p) for p in itertools.islice(context.sample_prompts(command, count), count)]

    def _parsed(self, template: str) -> Command:
        """The template read, or _TemplateError: unbalanced braces, bad syntax, wildcard files."""
        depth = 0
        for char in template:
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth < 0:
                raise _TemplateError(
                    "the template has a '}' without its '{'", "add the '{' or remove the '}'"
                )
        if depth > 0:
            raise _TemplateError(
                "the template has a '{' without its '}'", "close each {a|b} with '}'"
            )
        try:
            command = parse(template)
        except ParseBaseException as error:
            raise _TemplateError(
                f"the template cannot be read: {error}", "write variants as {a|b|c}"
            ) from None
        for name in _wildcard_names(command):
            trouble = self._wildcard_trouble(name, 0)
            if trouble is not None:
                raise _TemplateError(
                    trouble,
                    f"add {name}.txt to {self._folder}, fix the name, "
                    "or set wildcards in [expand] to the folder that has it",
                )
        return command

    def _wildcard_trouble(self, name: str, depth: int) -> str | None:
        if name in self._wildcard_checked:
            return self._wildcard_checked[name]
        self._wildcard_checked[name] = None  # a file naming itself is not an error here
        values = self._wildcards.get_values(name)
        trouble: str | None = None
        if not values:
            trouble = f"no wildcard file __{name}__ (.txt, .yaml or .json) in {self._folder}"
            if not self._folder.is_dir():
                trouble += ", which is not a folder"
        elif depth < _NESTING_LIMIT:
            for value in values.string_values:
                if "__" not in value:
                    continue
                try:
                    nested = list(_wildcard_names(parse(value)))
                except ParseBaseException:
                    trouble = f"wildcard __{name}__ has a line that cannot be read: {value!r}"
                    break
                trouble = next(
                    (t for n in nested if (t := self._wildcard_trouble(n, depth + 1))), None
                )
                if trouble:
                    break
        self._wildcard_checked[name] = trouble
        return trouble

    # ---- checks -----------------------------------------------------------------------------

    def _check_budget(self, row: SheetRow, sweeps: list[_Axis], budget: int) -> None:
        if sweeps:
            widest = max(sweeps, key=lambda axis: len(axis.values))
            total = math.prod(len(axis.values) for axis in sweeps)
            self._check_size(row, widest.columns[0], total, budget)

    def _check_size(self, row: SheetRow, column: str, requests: int, budget: int) -> None:
        if requests > budget:
            limit = self._settings.max_images
            raise InputError(
                [
                    self._problem(
                        row,
                        column,
                        f"this row expands into more than {limit:,} images (max_images)",
                        "look for a typo (1-10000 for 1-100, a wildcard file too big); "
                        "or raise max_images in [expand]",
                    )
                ]
            )

    def _problem(self, row: SheetRow, column: str, message: str, hint: str | None) -> Problem:
        return Problem(self._sheet_file, message, row.row, column, hint)


_SWEEP_HINT = "write values like 20, 30, 40 or a range like 1-8"


def _sweep_kind(target: Target) -> SweepKind | None:
    if target.unit is not None:
        key = target.path[-1]
        kind: str | None = cn.UNIT_FIELDS.get(key)
        named = key in UNIT_NAME_SWEEPS
    else:
        kind = target.kind
        named = target.path in NAME_SWEEPS
    if named:
        return "name"
    if kind == "int":
        return "int"
    return "float" if kind == "float" else None


def _path(target: Target | None) -> FieldPath | None:
    return target.path if target is not None else None


def _wildcard_names(command: Command) -> Iterator[str]:
    """The wildcard files a parsed template names (names made from variables are left out)."""
    if isinstance(command, WildcardCommand):
        if isinstance(command.wildcard, str):
            yield command.wildcard
        return
    for item in dataclasses.fields(command):  # type: ignore[arg-type]
        value = getattr(command, item.name)
        parts = value.values() if isinstance(value, dict) else value
        for part in (
            parts if isinstance(parts, list | tuple) or isinstance(value, dict) else [value]
        ):
            inner = part.value if isinstance(part, VariantOption) else part
            if isinstance(inner, Command):
                yield from _wildcard_names(inner)
