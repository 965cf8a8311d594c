"""A sheet row plus job defaults -> the exact request body (a Task); wire and manifest forms."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from batchgen.backends.comfy.workflow import Binding, bind_job
from batchgen.errors import InputError, Problem
from batchgen.job import JobSpec
from batchgen.outputs.rowindex import RowIndex, digest_int
from batchgen.records import ImageRef, Route, SheetRow, Task
from batchgen.rows import controlnet as cn
from batchgen.rows.columns import (
    LOWER_OVERRIDES,
    FieldPath,
    Target,
    Unresolved,
    coerce_auto,
    resolve,
)
from batchgen.rows.fields import FIELDS, KIND_HINTS, coerce, normalize_name
from batchgen.rows.images import ImageError, ImageResolver, decode_inline, encode_file
from batchgen.rows.sheet import NO_HEADER
from batchgen.rows.traps import HIRES_DENOISE, fix_sampler, value_issue

SEED_SPAN = 4294967294  # A1111 draws random seeds from range(4294967294): 0..4294967293
_OPAQUE = ("alwayson_scripts", "script_args")  # job tables kept whole, not flattened to dotted keys


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    target: Target | None  # None: a metadata column


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class PayloadBuilder:
    """Plans the sheet's columns once, then builds one Task per row. Build rows in sheet order."""

    def __init__(self, job: JobSpec, headers: Sequence[str]) -> None:
        self._job = job
        self._sheet_file = str(job.sheet)
        self._job_file = str(job.source) if job.source is not None else "job defaults"
        self._images = ImageResolver(job.sheet.parent)
        self._twins = RowIndex()  # distinct row contents: moves to disk once there are many
        self._columns: dict[str, _Column] = {}
        self._bad_headers: set[str] = set()
        self._meant: set[str] = set()  # fields a misspelt header was probably meant to set
        # A ComfyUI job: `Title.input` headers set node inputs; the template's hash joins the key.
        self.binding: Binding | None = bind_job(job) if job.backend == "comfy" else None
        header_problems: list[Problem] = []
        self._plan_columns(headers, header_problems)
        self.header_problems: tuple[Problem, ...] = tuple(header_problems)
        self.metadata_columns: tuple[str, ...] = tuple(
            h for h, c in self._columns.items() if c.target is None
        )
        self._defaults: dict[FieldPath, Any] = {}
        self._default_units: dict[int, dict[str, Any]] = {}
        default_problems: list[Problem] = []
        self._plan_defaults(default_problems)
        self._default_problems = tuple(default_problems)

    # ---- planning -------------------------------------------------------------------------

    def _plan_columns(self, headers: Sequence[str], problems: list[Problem]) -> None:
        mapped = {normalize_name(k): (k, v) for k, v in self._job.columns.items()}
        used_mappings: set[str] = set()
        by_path: dict[FieldPath, str] = {}
        for header in headers:
            if header == NO_HEADER:
                continue
            if header in self._columns:
                problems.append(
                    Problem(self._sheet_file, "the header appears twice", 1, header, "rename one")
                )
                continue
            explicit = self._job.columns.get(header)
            if explicit is None and normalize_name(header) in mapped:
                key, explicit = mapped[normalize_name(header)]
                used_mappings.add(key)
            elif explicit is not None:
                used_mappings.add(header)
            column = self._plan_one(header, explicit, problems)
            if column is None:
                self._bad_headers.add(header)
                continue
            self._columns[header] = column
            if column.target is not None:
                other = by_path.setdefault(column.target.path, header)
                if other != header:
                    problems.append(
                        Problem(
                            self._sheet_file,
                            f"columns '{other}' and '{header}' both set '{column.target.dotted}'",
                            1,
                            header,
                            "keep one of them",
                        )
                    )
        for key in self._job.columns:
            if key not in used_mappings:
                problems.append(
                    Problem(
                        self._job_file,
                        f"columns maps '{key}', but {self._sheet_file} has no such header",
                        column=key,
                        hint="fix the header name in [columns] or in the sheet",
                    )
                )

    def _plan_one(
        self, header: str, explicit: str | None, problems: list[Problem]
    ) -> _Column | None:
        if explicit is not None:
            if not explicit.strip():
                return _Column(header, None)  # mapped to "" = a metadata column on purpose
            target = resolve(explicit)
            if isinstance(target, Unresolved):
                problems.append(
                    Problem(self._job_file, target.message, column=header, hint=target.hint)
                )
                return None
            return _Column(header, target)
        node = self.binding.column_target(header) if self.binding is not None else None
        target = node or resolve(header)
        if isinstance(target, Target):
            return _Column(header, target)
        if target.misspelled:
            if target.suggestion:
                self._meant.add(target.suggestion)
            hint = target.hint
            if "." not in header:
                note = f'to keep it as a note, map it in the job: [columns] "{header}" = ""'
                hint = f"{hint} ({note})" if hint else note
            problems.append(Problem(self._sheet_file, target.message, 1, header, hint))
            return None
        return _Column(header, None)

    def _plan_defaults(self, problems: list[Problem]) -> None:
        # [[controlnet]] units first: a --set controlnet.N.key (in defaults) overrides them.
        for index, unit in enumerate(self._job.controlnet):
            self._merge_unit(
                index, unit, f"controlnet[{index}]", None, self._default_units, problems
            )
        for key, raw in _flatten(self._job.defaults):
            target = resolve(key)
            if isinstance(target, Unresolved):
                problems.append(
                    Problem(self._job_file, target.message, column=key, hint=target.hint)
                )
                continue
            self._apply(target, raw, key, None, self._defaults, self._default_units, problems)
        for path, value in self._defaults.items():
            issue = value_issue(path, value)
            if issue is not None:
                problems.append(
                    Problem(self._job_file, issue.message, column=".".join(path), hint=issue.hint)
                )

    # ---- values ---------------------------------------------------------------------------

    def _problem(self, row: int | None, column: str, message: str, hint: str | None) -> Problem:
        file = self._sheet_file if row is not None else self._job_file
        return Problem(file, message, row, column, hint)

    def _apply(
        self,
        target: Target,
        raw: Any,
        column: str,
        row: int | None,
        values: dict[FieldPath, Any],
        units: dict[int, dict[str, Any]],
        problems: list[Problem],
    ) -> None:
        """Coerce one cell or default and store it in `values` or `units`."""
        try:
            if target.kind == "units":
                items = coerce("list", raw)
                for index, unit in enumerate(items):
                    if not isinstance(unit, Mapping):
                        raise ValueError(f"ControlNet unit {index} is not an object")
                    self._merge_unit(index, unit, column, row, units, problems)
                return
            if target.unit is not None:
                key = target.path[-1]
                units.setdefault(target.unit, {})[key] = self._unit_value(key, raw)
                return
            value = self._value(target, raw)
        except ValueError as error:
            # The raw value stands in, so that later checks (no prompt, no image) stay quiet.
            kind: str = target.kind
            if target.unit is not None:
                kind = cn.UNIT_FIELDS[target.path[-1]]
                units.setdefault(target.unit, {})[target.path[-1]] = raw
            elif target.kind not in ("units", "dict"):
                values[target.path] = raw
            hint = None if isinstance(error, ImageError) else KIND_HINTS.get(kind)
            problems.append(self._problem(row, column, str(error), hint))
            return
        if target.path == ("alwayson_scripts",):
            value = self._fold_controlnet(value, column, row, units, problems)
        elif target.path in (("override_settings",), ("comments",)):
            # Key by key, so a row's dict overrides a default's keys instead of losing to them.
            known = LOWER_OVERRIDES if target.path[0] == "override_settings" else {}
            for name, item in value.items():
                values[(target.path[0], known.get(str(name).lower(), str(name)))] = item
            return
        values[target.path] = value

    def _value(self, target: Target, raw: Any) -> Any:
        if target.kind == "auto":
            return coerce_auto(raw)
        if target.kind == "units":  # pragma: no cover - handled by _apply
            raise ValueError("units")
        value = coerce(target.kind, raw)
        if target.kind == "image":
            return self._images.resolve(value)
        if target.kind == "image_list":
            return [self._images.resolve(item) for item in value]
        return value

    def _unit_value(self, key: str, raw: Any) -> Any:
        value = cn.coerce_unit(key, raw)
        if cn.UNIT_FIELDS[key] == "image":
            return self._images.resolve(value)
        return value

    def _merge_unit(
        self,
        index: int,
        raw: Mapping[str, Any],
        column: str,
        row: int | None,
        units: dict[int, dict[str, Any]],
        problems: list[Problem],
    ) -> None:
        unit = units.setdefault(index, {})
        for name, value in raw.items():
            key = cn.canonical_key(str(name))
            where = f"{column}.{name}"
            if key is None:
                near = cn.suggest_key(str(name))
                hint = f"did you mean '{near}'?" if near else None
                message = f"'{name}' is not a ControlNet unit field (the server would ignore it)"
                problems.append(self._problem(row, where, message, hint))
                continue
            if key != normalize_name(str(name)) and normalize_name(key) in map(normalize_name, raw):
                message = f"both '{name}' and its new name '{key}' are given"
                problems.append(self._problem(row, where, message, f"keep only '{key}'"))
                continue
            if _blank(value):
                continue
            try:
                unit[key] = self._unit_value(key, value)
            except ValueError as error:
                unit[key] = value
                hint = (
                    None if isinstance(error, ImageError) else KIND_HINTS.get(cn.UNIT_FIELDS[key])
                )
                problems.append(self._problem(row, where, str(error), hint))

    def _fold_controlnet(
        self,
        scripts: dict[str, Any],
        column: str,
        row: int | None,
        units: dict[int, dict[str, Any]],
        problems: list[Problem],
    ) -> dict[str, Any]:
        """ControlNet units given inside alwayson_scripts are normalized like any other unit."""
        rest: dict[str, Any] = {}
        for title, script in scripts.items():
            if str(title).lower() != cn.SCRIPT_TITLE:
                rest[title] = script
                continue
            args = script.get("args") if isinstance(script, Mapping) else None
            if not isinstance(args, list):
                problems.append(
                    self._problem(
                        row, column, f"alwayson_scripts.{title} needs an 'args' list", None
                    )
                )
                continue
            for index, unit in enumerate(args):
                if isinstance(unit, Mapping):
                    self._merge_unit(
                        index, unit, f"{column}.{title}.args[{index}]", row, units, problems
                    )
        return rest

    # ---- build ----------------------------------------------------------------------------

    def target_of(self, header: str) -> Target | None:
        """The field a header sets; None for a note column or a header already reported."""
        column = self._columns.get(header)
        return column.target if column is not None else None

    @property
    def sent_fields(self) -> dict[str, str]:
        """Each field a column or default sets (dotted) -> the header (or "defaults") setting it."""
        found = {".".join(path): "defaults" for path in self._defaults}
        for header, column in self._columns.items():
            if column.target is not None:
                found[column.target.dotted] = header
        return found

    def default_problems(self) -> tuple[Problem, ...]:
        """Problems in the job's defaults, [[controlnet]] units and --set values (checked once)."""
        return self._default_problems

    def build(self, row: SheetRow) -> Task:
        """The Task for one row, or InputError listing every problem of this row."""
        task, problems = self.draft(row)
        if problems:
            raise InputError(problems)
        return task

    def draft(self, row: SheetRow) -> tuple[Task, list[Problem]]:
        """The row's Task as far as it builds (cells with problems left out), and its problems:
        the names it uses can be checked against the servers in the same round."""
        problems: list[Problem] = []
        values = dict(self._defaults)
        units = copy.deepcopy(self._default_units)
        # field path -> the header that set it; a path set by a default is absent
        sources: dict[FieldPath, str] = {}
        unit_sources: dict[int, str] = {}
        metadata: dict[str, Any] = {}
        for header, raw in row.cells.items():
            if header == NO_HEADER:
                problems.append(
                    Problem(
                        self._sheet_file,
                        "a value sits in a column without a header",
                        row.row,
                        hint="add a header to that column or clear it",
                    )
                )
                continue
            column = self._columns.get(header)
            if column is None:
                if header in self._bad_headers:
                    continue  # reported once in header_problems
                column = self._plan_one(header, None, problems)
                if column is None:
                    continue
            target = column.target
            if target is None:
                metadata[header] = raw
                continue
            if _blank(raw):
                continue
            before = len(problems)
            self._apply(target, raw, header, row.row, values, units, problems)
            if target.unit is not None:
                unit_sources.setdefault(target.unit, header)
            elif target.kind == "units":
                for index in units:
                    unit_sources.setdefault(index, header)
            else:
                sources[target.path] = header
                issue = value_issue(target.path, values.get(target.path))
                if issue is not None and len(problems) == before:
                    problems.append(
                        Problem(self._sheet_file, issue.message, row.row, header, issue.hint)
                    )
        body = _assemble(values)
        route: Route = "img2img" if body.get("init_images") else "txt2img"
        self._check_route(body, route, sources, row.row, problems)
        self._check_body(body, sources, row.row, problems)
        args = self._finish_units(units, route, unit_sources, row.row, problems)
        if args:
            scripts = dict(body.get("alwayson_scripts") or {})
            scripts[cn.SCRIPT_TITLE] = {"args": args}
            body["alwayson_scripts"] = scripts
        for name in ("seed", "subseed"):
            if body.get(name) == -1:
                del body[name]  # -1 and an empty cell ask for the same thing: a new seed
        key = self._key(body)
        if not problems:
            self._fix_seeds(body, key)
        settings = body.get("override_settings")
        checkpoint = settings.get("sd_model_checkpoint") if isinstance(settings, dict) else None
        task = Task(
            row=row.row,
            key=key,
            route=route,
            body=body,
            checkpoint=checkpoint if isinstance(checkpoint, str) else None,
            metadata=metadata,
            expansion=row.expansion,
        )
        return task, problems

    def _check_route(
        self,
        body: dict[str, Any],
        route: Route,
        sources: Mapping[FieldPath, str],
        row: int,
        problems: list[Problem],
    ) -> None:
        for name in list(body):
            spec = FIELDS.get(name)
            if spec is None or route in spec.routes:
                continue
            header = sources.get((name,))
            if header is None:
                del body[name]  # a job-wide default for the other route: not this row's business
                continue
            if route == "txt2img":
                message = f"'{name}' is an img2img field, but this row has no init image (txt2img)"
                hint = "add an init_images cell or clear this one"
            else:
                message = f"'{name}' is a txt2img field, but this row has init images (img2img)"
                hint = "clear this cell for img2img rows"
            problems.append(Problem(self._sheet_file, message, row, header, hint))

    def _check_body(
        self,
        body: dict[str, Any],
        sources: Mapping[FieldPath, str],
        row: int,
        problems: list[Problem],
    ) -> None:
        prompt = body.get("prompt")
        # A misspelt prompt header is reported once, with a did-you-mean; not again per row.
        if (not isinstance(prompt, str) or not prompt.strip()) and "prompt" not in self._meant:
            problems.append(
                Problem(
                    self._sheet_file,
                    "this row has no prompt",
                    row,
                    None,
                    "fill the prompt column, or give a default prompt in the job",
                )
            )
        if "mask" in body and not body.get("init_images"):
            problems.append(
                Problem(
                    self._sheet_file,
                    "a mask needs an init image",
                    row,
                    sources.get(("mask",)),
                    "add an init_images cell",
                )
            )
        conflict = fix_sampler(body)
        if conflict is not None:
            column = sources.get(("sampler_name",), sources.get(("scheduler",)))
            problems.append(
                Problem(
                    self._sheet_file, conflict, row, column, "drop the schedule from the sampler"
                )
            )
        if body.get("enable_hr") and body.get("denoising_strength") is None:
            body["denoising_strength"] = HIRES_DENOISE

    def _finish_units(
        self,
        units: Mapping[int, dict[str, Any]],
        route: Route,
        unit_sources: Mapping[int, str],
        row: int,
        problems: list[Problem],
    ) -> list[dict[str, Any]]:
        finished: dict[int, dict[str, Any]] = {}
        for index, unit in units.items():
            full = cn.finish_unit(unit)
            finished[index] = full
            for issue in cn.unit_issues(index, full, route):
                header = unit_sources.get(index)
                column = f"controlnet.{index}.{issue.key}" if issue.key else header or ""
                problems.append(Problem(self._sheet_file, issue.message, row, column, issue.hint))
        return cn.controlnet_args(finished)

    def _key(self, body: Mapping[str, Any]) -> str:
        """Hash of the content (images by sha256) and seed policy, plus a count of earlier twins."""
        seed = self._job.seed
        policy = (
            {"mode": seed.mode, "base": seed.base} if seed.mode == "derived" else {"mode": "random"}
        )
        workflow = self.binding.workflow.sha256 if self.binding is not None else None
        canonical = json.dumps(
            {
                "body": _hashable(body),
                "seed": policy,
                **({"workflow": workflow} if workflow else {}),
            },
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
        return f"{digest}-{self._twins.next_twin(digest_int(digest))}"

    def _fix_seeds(self, body: dict[str, Any], key: str) -> None:
        """Derived mode: a concrete seed per row. Random mode: -1, A1111's own random seed."""
        derived = self._job.seed.mode == "derived"
        if "seed" not in body:
            body["seed"] = derive_seed(self._job.seed.base, key) if derived else -1
        if derived and body.get("subseed_strength") and "subseed" not in body:
            body["subseed"] = derive_seed(self._job.seed.base, key + ":subseed")


def derive_seed(base: int, key: str) -> int:
    """A seed in A1111's own range, fixed by the job's base seed and the row's key."""
    digest = hashlib.sha256(f"{base}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_SPAN


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """TOML tables (override_settings = {...}) become dotted keys, as --set gives them."""
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and normalize_name(dotted) not in _OPAQUE:
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _assemble(values: Mapping[FieldPath, Any]) -> dict[str, Any]:
    """Nested body from field paths: whole dict fields first, then their keys merged in."""
    body: dict[str, Any] = {}
    for path, value in sorted(values.items(), key=lambda item: len(item[0])):
        value = copy.deepcopy(value) if isinstance(value, (dict, list)) else value
        if len(path) == 1:
            body[path[0]] = value
        else:
            inner = body.get(path[0])
            if not isinstance(inner, dict):
                inner = body[path[0]] = {}
            inner[path[1]] = value
    return body


def _hashable(value: Any) -> Any:
    if isinstance(value, ImageRef):
        return {"sha256": value.sha256}
    if isinstance(value, Mapping):
        return {str(k): _hashable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_hashable(v) for v in value]
    return value


def _walk(value: Any, leaf: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _walk(v, leaf) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_walk(v, leaf) for v in value]
    return leaf(value)


def encode_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as sent: each ImageRef read now and replaced by bare base64."""
    encoded: dict[str, Any] = _walk(
        body, lambda v: encode_file(v) if isinstance(v, ImageRef) else v
    )
    return encoded


def manifest_body(body: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """The body for the manifest: files as {path, sha256}, inline images as {sha256, bytes}."""

    def leaf(value: Any) -> Any:
        if isinstance(value, ImageRef):
            return value.manifest_form(base)
        if isinstance(value, str) and len(value) >= 256:
            data = decode_inline(value)
            if data is not None:
                return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        return value

    shown: dict[str, Any] = _walk(body, leaf)
    return shown


def adapt_for(body: Mapping[str, Any], flavor: Literal["a1111", "forge"]) -> dict[str, Any]:
    """Per-server tweaks at send time. Forge's hires fix needs hr_additional_modules and hr_cfg."""
    adapted = dict(body)
    if flavor == "forge" and adapted.get("enable_hr"):
        adapted.setdefault("hr_additional_modules", ["Use same choices"])
        adapted.setdefault("hr_cfg", adapted.get("cfg_scale", FIELDS["cfg_scale"].default))
    return adapted
