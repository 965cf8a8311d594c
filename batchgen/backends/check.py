"""Checks what every row uses against what every endpoint has, before anything is sent.

A real A1111 server hides mistakes instead of rejecting them (a1111-api.md §3, §7, §9): an unknown
checkpoint override is ignored, an unknown sampler becomes "DPM++ 2M", a missing LoRA or ControlNet
model is skipped. This module notes compactly which names each request of the pre-run pass uses,
reads each endpoint's inventory once and reports every name an endpoint lacks, grouped by name
with the rows that use it. Sheet-only checks belong to payload.py; this is what needs a server.
"""

from __future__ import annotations

import asyncio
import bisect
import difflib
import logging
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from batchgen.backends.inventory import (
    Inventory,
    InventoryError,
    InventorySource,
    Need,
    fetch_inventory,
    resolve_checkpoint,
)
from batchgen.errors import Problem
from batchgen.job import JobSpec
from batchgen.records import Task
from batchgen.rows.expand import EXPAND_COLUMNS
from batchgen.rows.fields import normalize_name
from batchgen.rows.prepare import Prepared
from batchgen.words import counted

__all__ = [
    "Finding",
    "RowSet",
    "Usage",
    "Use",
    "check_job",
    "check_usage",
    "collect_uses",
    "resolve_checkpoint",
]

log = logging.getLogger(__name__)

Kind = Literal[
    "checkpoint",
    "vae",
    "sampler",
    "scheduler",
    "upscaler",
    "lora",
    "cn_model",
    "cn_module",
    "cn_units",
]
NEEDS: Mapping[Kind, Need] = {
    "checkpoint": "checkpoints",
    "vae": "vaes",
    "sampler": "samplers",
    "scheduler": "schedulers",
    "upscaler": "upscalers",
    "lora": "loras",
    "cn_model": "controlnet",
    "cn_module": "controlnet",
    "cn_units": "controlnet",
}
# A1111 extra-network syntax (modules/extra_networks.py): <type:name[:weight...]>.
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_LORA_TYPES = ("lora", "lyco")
_NO_CHECKPOINT = ("", "None", "none", "Use same checkpoint")
_PROMPT_FIELDS = ("prompt", "negative_prompt")
_HR_PROMPT_FIELDS = ("hr_prompt", "hr_negative_prompt")
_RANGES_SHOWN = 12
_ENDPOINTS_SHOWN = 3


@dataclass(frozen=True, slots=True)
class Use:
    """One name a row uses: its kind, the request field it sits in, and the name as written."""

    kind: Kind
    field: str
    name: str


class RowSet:
    """Sorted row numbers kept as ranges in two arrays: 100,000 rows with one name cost 16 bytes."""

    __slots__ = ("_ends", "_starts", "count")

    def __init__(self) -> None:
        self._starts = array("q")
        self._ends = array("q")
        self.count = 0

    def add(self, row: int) -> None:
        """Add a row. Rows come in sheet order, so this is nearly always an append."""
        starts, ends = self._starts, self._ends
        if not ends or row > ends[-1]:
            self.count += 1
            if ends and row == ends[-1] + 1:
                ends[-1] = row
            else:
                starts.append(row)
                ends.append(row)
            return
        at = bisect.bisect_right(starts, row) - 1
        if at >= 0 and row <= ends[at]:
            return
        self.count += 1
        if at >= 0 and row == ends[at] + 1:
            ends[at] = row
        else:
            at += 1
            starts.insert(at, row)
            ends.insert(at, row)
        if at + 1 < len(starts) and ends[at] + 1 == starts[at + 1]:
            ends[at] = ends[at + 1]
            del starts[at + 1], ends[at + 1]

    @property
    def first(self) -> int:
        return self._starts[0]

    def rows(self) -> Iterator[int]:
        for start, end in zip(self._starts, self._ends, strict=True):
            yield from range(start, end + 1)

    def describe(self) -> str:
        """'row 7', 'rows 4-19, 33', or the first ranges and how many rows more."""
        if self.count == 1:
            return f"row {self.first}"
        parts: list[str] = []
        shown = 0
        for start, end in zip(self._starts, self._ends, strict=True):
            if len(parts) == _RANGES_SHOWN:
                parts.append(f"and {self.count - shown:,} more")
                break
            parts.append(str(start) if start == end else f"{start}-{end}")
            shown += end - start + 1
        return "rows " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Usage:
    """Every name the sheet's rows use, with the rows that use it."""

    uses: Mapping[Use, RowSet]
    rows: int  # rows that built into a request
    metadata_columns: tuple[str, ...]  # columns that are not request fields: never sent


@dataclass(frozen=True, slots=True)
class Finding:
    """Why one endpoint cannot serve one Use."""

    text: str  # "checkpoint 'x' unknown"
    hint: str | None


def collect_uses(prepared: Prepared) -> Usage:
    """Which names each request of the pass uses; a row with other problems (payload's to
    report) is checked as far as it built, so that every problem is said in one round."""
    uses: dict[Use, RowSet] = {}
    count = 0
    for built in prepared.built:
        if built.valid and not built.kept:
            continue
        count += built.valid
        for use in uses_of(built.task):
            rowset = uses.get(use)
            if rowset is None:
                rowset = uses[use] = RowSet()
            rowset.add(built.task.row)
    return Usage(uses, count, prepared.metadata_columns)


def uses_of(task: Task) -> Iterator[Use]:
    """The server-side names one request uses (what the server would resolve at run time)."""
    body = task.body
    hires = bool(body.get("enable_hr")) and task.route == "txt2img"
    settings = body.get("override_settings")
    if isinstance(settings, Mapping):
        yield from _named("checkpoint", "override_settings.sd_model_checkpoint", settings, ())
        yield from _named("vae", "override_settings.sd_vae", settings, ("Automatic", "None"))
    yield from _named("checkpoint", "refiner_checkpoint", body, _NO_CHECKPOINT)
    yield from _named("sampler", "sampler_name", body, ())
    yield from _named("scheduler", "scheduler", body, ())
    if hires:
        yield from _named("checkpoint", "hr_checkpoint_name", body, _NO_CHECKPOINT)
        yield from _named("sampler", "hr_sampler_name", body, ())
        yield from _named("scheduler", "hr_scheduler", body, ())
        yield from _named("upscaler", "hr_upscaler", body, ())
    if not body.get("disable_extra_networks"):
        for field in _PROMPT_FIELDS + (_HR_PROMPT_FIELDS if hires else ()):
            text = body.get(field)
            if isinstance(text, str):
                for name in lora_names(text):
                    yield Use("lora", "prompt", name)
    yield from _controlnet_uses(body.get("alwayson_scripts"))


def lora_names(prompt: str) -> Iterator[str]:
    """The names in <lora:name:weight> and <lyco:...> tags, as A1111's Lora extension reads them."""
    for match in _EXTRA_NETWORK.finditer(prompt):
        if match.group(1) in _LORA_TYPES:
            yield match.group(2).split(":", 1)[0]


def _named(kind: Kind, field: str, values: Mapping[str, Any], fine: Iterable[str]) -> Iterator[Use]:
    value = values.get(field.rsplit(".", 1)[-1])
    if isinstance(value, str) and value and value not in fine:
        yield Use(kind, field, value)


def _controlnet_uses(scripts: Any) -> Iterator[Use]:
    if not isinstance(scripts, Mapping):
        return
    for title, script in scripts.items():
        if str(title).lower() != "controlnet" or not isinstance(script, Mapping):
            continue
        args = script.get("args")
        if not isinstance(args, list):
            continue
        last = 0
        for index, unit in enumerate(args, start=1):
            if not isinstance(unit, Mapping) or not unit.get("enabled", True):
                continue
            last = index
            module, model = unit.get("module"), unit.get("model")
            if isinstance(module, str) and module.lower() != "none":
                yield Use("cn_module", "controlnet.module", module)
            if isinstance(model, str) and model not in ("", "None"):
                yield Use("cn_model", "controlnet.model", model)
        if last:
            yield Use("cn_units", "controlnet", str(last))


# ---- comparing one Use with one inventory ------------------------------------------------------


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate a typo most likely meant; earlier candidates win a case-insensitive tie."""
    options = list(dict.fromkeys(candidates))
    lowered: dict[str, str] = {}
    for option in options:
        lowered.setdefault(option.lower(), option)
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if close:
        return close[0]
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _hint(suggestion: str | None, consequence: str) -> str:
    return f"did you mean '{suggestion}'? {consequence}" if suggestion else consequence


def _no_route(what: str, route: str) -> Finding:
    return Finding(f"{what} cannot be checked", f"the server has no {route}")


def _find_checkpoint(use: Use, inv: Inventory) -> Finding | None:
    index = inv.checkpoints
    if index is None:  # pragma: no cover - /sd-models is core A1111
        return _no_route(f"checkpoint '{use.name}'", "/sdapi/v1/sd-models")
    found = index.lookup(use.name)
    if len(found) == 1:
        return None
    if len(found) > 1:
        return Finding(
            f"checkpoint '{use.name}' is ambiguous",
            f"it names {len(found)} files ({', '.join(found)}); the server picks one of them. "
            f"Write the full name, e.g. '{found[0]}'",
        )
    consequence = (
        "A1111 ignores an unknown checkpoint and uses whatever model is loaded"
        if use.field.startswith("override_settings")
        else "the server would fail these rows"
    )
    bare = re.sub(r" \[[0-9a-fA-F]{8,64}\]$", "", use.name)
    same_file = index.resolve(bare) if bare != use.name else None
    if same_file is not None:
        return Finding(
            f"checkpoint '{use.name}' unknown",
            f"the server's file is '{index.title(same_file)}', a different hash; write '{bare}' "
            f"to accept any version. {consequence}",
        )
    candidates = [a for a in index.aliases if not re.fullmatch(r"[0-9a-f]{10}|[0-9a-f]{64}", a)]
    return Finding(
        f"checkpoint '{use.name}' unknown", _hint(_closest(use.name, candidates), consequence)
    )


def _find_vae(use: Use, inv: Inventory) -> Finding | None:
    if inv.vaes is None:
        return _no_route(f"VAE '{use.name}'", "/sdapi/v1/sd-vae or /sdapi/v1/sd-modules")
    if use.name in inv.vaes:
        return None
    consequence = "the server would not use it; 'Automatic' and 'None' are always accepted"
    return Finding(f"VAE '{use.name}' unknown", _hint(_closest(use.name, inv.vaes), consequence))


def split_scheduler(name: str, inv: Inventory) -> str:
    """'DPM++ 2M Karras' -> 'DPM++ 2M': the scheduler suffix A1111 >= 1.9 splits off (§3)."""
    for scheduler in inv.schedulers or ():
        for option in (scheduler.label, scheduler.name, *scheduler.aliases):
            if name.endswith(" " + option):
                return name[: -len(option) - 1]
    return name


def _find_sampler(use: Use, inv: Inventory) -> Finding | None:
    if inv.samplers is None:  # pragma: no cover - /samplers is core A1111
        return _no_route(f"sampler '{use.name}'", "/sdapi/v1/samplers")
    if use.name in inv.samplers or split_scheduler(use.name, inv) in inv.samplers:
        return None
    consequence = (
        "A1111 1.10 silently uses DPM++ 2M for an unknown sampler"
        if use.field == "sampler_name"
        else "the server would not use it"
    )
    alias = inv.sampler_aliases.get(use.name)
    if alias is not None:
        return Finding(
            f"sampler alias '{use.name}' not accepted",
            f"write '{alias}': A1111 1.10 does not accept aliases and silently uses DPM++ 2M",
        )
    suggestion = _closest(use.name, inv.samplers)
    return Finding(f"sampler '{use.name}' unknown", _hint(suggestion, consequence))


def _find_scheduler(use: Use, inv: Inventory) -> Finding | None:
    if inv.schedulers is None:
        return Finding(
            f"scheduler '{use.name}' cannot be used",
            "the server has no /sdapi/v1/schedulers (A1111 < 1.9) and ignores the field",
        )
    # schedulers_map in modules/sd_schedulers.py: exact name or label; aliases only as suffixes.
    labels = [s.label for s in inv.schedulers]
    if use.name in labels or any(use.name == s.name for s in inv.schedulers):
        return None
    by_alias = {alias: s.label for s in inv.schedulers for alias in s.aliases}
    names = [s.name for s in inv.schedulers]
    suggestion = by_alias.get(use.name) or _closest(use.name, labels + names)
    consequence = "A1111 silently uses Automatic for an unknown scheduler"
    return Finding(f"scheduler '{use.name}' unknown", _hint(suggestion, consequence))


def _find_upscaler(use: Use, inv: Inventory) -> Finding | None:
    if inv.upscalers is None:  # pragma: no cover - /upscalers is core A1111
        return _no_route(f"upscaler '{use.name}'", "/sdapi/v1/upscalers")
    if use.name in inv.upscalers:
        return None
    consequence = "the server would fail these rows ('could not find upscaler')"
    suggestion = _closest(use.name, inv.upscalers)
    return Finding(f"hires upscaler '{use.name}' unknown", _hint(suggestion, consequence))


def _find_lora(use: Use, inv: Inventory) -> Finding | None:
    if inv.loras is None:
        return Finding(
            f"LoRA '{use.name}' cannot be used",
            "the server has no /sdapi/v1/loras (is its Lora extension disabled?)",
        )
    if use.name in inv.loras:
        return None
    consequence = "A1111 makes the image without a LoRA it cannot find"
    return Finding(f"LoRA '{use.name}' unknown", _hint(_closest(use.name, inv.loras), consequence))


def _find_cn_model(use: Use, inv: Inventory) -> Finding | None:
    models = inv.cn_models
    if models is None:
        return None  # reported once per row by _find_cn_units
    if use.name in models:
        return None
    # ControlNet's find_closest_lora_model_name: exact title, then the whole text compared
    # case-insensitively with each file's stem, then the shortest stem containing the text.
    stems = {title.split(" [")[0].lower(): title for title in models}
    wanted = use.name.lower()
    if wanted in stems:
        return None
    consequence = "ControlNet would skip the unit and make the image without it"
    bare = use.name.split(" [")[0]
    if bare.lower() in stems:
        return Finding(
            f"ControlNet model '{use.name}' unknown",
            f"the server's file is '{stems[bare.lower()]}', a different hash; write '{bare}' "
            f"to accept any version. {consequence}",
        )
    guesses = sorted((s for s in stems if wanted in s), key=len)
    if guesses:
        return Finding(
            f"ControlNet model '{use.name}' is not a full name",
            f"the server would guess '{stems[guesses[0]]}'; write that to be sure",
        )
    suggestion = _closest(bare, [title.split(" [")[0] for title in models])
    return Finding(f"ControlNet model '{use.name}' unknown", _hint(suggestion, consequence))


def _find_cn_module(use: Use, inv: Inventory) -> Finding | None:
    if inv.cn_modules is None or use.name in inv.cn_modules:
        return None
    consequence = "the server would fail these rows ('module not found', case matters)"
    suggestion = _closest(use.name, inv.cn_modules)
    return Finding(f"ControlNet module '{use.name}' unknown", _hint(suggestion, consequence))


def _find_cn_units(use: Use, inv: Inventory) -> Finding | None:
    if inv.cn_models is None:
        return Finding(
            "ControlNet units are given, but the server has no ControlNet",
            "install the sd-webui-controlnet extension there, or leave the units out",
        )
    count = int(use.name)
    if count <= inv.cn_units:
        return None
    return Finding(
        f"{count} ControlNet units exceed the server's {inv.cn_units} unit slots",
        "the server silently drops the extra units; raise its ControlNet unit count "
        "(setting control_net_unit_count) or use fewer units",
    )


_FINDERS: Mapping[Kind, Callable[[Use, Inventory], Finding | None]] = {
    "checkpoint": _find_checkpoint,
    "vae": _find_vae,
    "sampler": _find_sampler,
    "scheduler": _find_scheduler,
    "upscaler": _find_upscaler,
    "lora": _find_lora,
    "cn_model": _find_cn_model,
    "cn_module": _find_cn_module,
    "cn_units": _find_cn_units,
}


def find(use: Use, inv: Inventory) -> Finding | None:
    """Why `inv`'s endpoint cannot serve `use`, or None if it can."""
    return _FINDERS[use.kind](use, inv)


# ---- the whole check ---------------------------------------------------------------------------


async def check_job(
    job: JobSpec, prepared: Prepared, clients: Sequence[InventorySource]
) -> list[Problem]:
    """Every name any row uses, checked on every endpoint; problems grouped by name, rows listed.

    An endpoint whose inventory cannot be read is left out with a warning: the runner already
    treats it as down. Sends no generation request.
    """
    usage = await asyncio.to_thread(collect_uses, prepared)
    _warn_sheet(job, usage)
    return await check_usage(job, usage, clients)


async def check_usage(
    job: JobSpec, usage: Usage, clients: Sequence[InventorySource]
) -> list[Problem]:
    """The endpoint half of check_job, for a Usage already collected (e.g. an endpoint that
    comes back up during a run can be checked without reading the sheet again)."""
    needs = {NEEDS[use.kind] for use in usage.uses}
    if not needs or not clients:
        return []
    answers = await asyncio.gather(*(_read(client, needs) for client in clients))
    inventories = [inv for inv in answers if inv is not None]
    grouped: dict[tuple[Use, Finding], list[str]] = {}
    for use in usage.uses:
        for inv in inventories:
            finding = find(use, inv)
            if finding is not None:
                grouped.setdefault((use, finding), []).append(inv.endpoint)
    log.info(
        "checked %s used by %s on %s",
        counted(len(usage.uses), "name"),
        counted(usage.rows, "row"),
        counted(len(inventories), "endpoint"),
    )
    everyone = len(inventories) if len(inventories) == len(clients) else -1
    problems = [
        _problem(job, use, finding, endpoints, usage.uses[use], everyone)
        for (use, finding), endpoints in grouped.items()
    ]
    problems.sort(key=lambda p: (p.row or 0, p.message))
    return problems


async def _read(client: InventorySource, needs: set[Need]) -> Inventory | None:
    try:
        return await fetch_inventory(client, needs)
    except InventoryError as error:
        log.warning("%s: cannot read what it has installed (%s); not checked", client.name, error)
        return None


def _problem(
    job: JobSpec, use: Use, finding: Finding, endpoints: list[str], rows: RowSet, everyone: int
) -> Problem:
    if len(endpoints) > 1 and len(endpoints) == everyone:
        where = f"every endpoint ({len(endpoints)})"
    elif len(endpoints) > _ENDPOINTS_SHOWN + 1:
        shown = ", ".join(endpoints[:_ENDPOINTS_SHOWN])
        where = f"{shown} and {len(endpoints) - _ENDPOINTS_SHOWN} more endpoints"
    else:
        where = ", ".join(endpoints)
    message = f"{finding.text} on {where}: {rows.describe()}"
    return Problem(file=str(job.sheet), message=message, row=rows.first, hint=finding.hint)


def _warn_sheet(job: JobSpec, usage: Usage) -> None:
    """Columns that are never sent, unless the job maps them to "" (a note column on purpose)."""
    chosen = {normalize_name(header) for header, field in job.columns.items() if not field.strip()}
    chosen |= {normalize_name(name) for name in EXPAND_COLUMNS}  # read by the expansion
    unsent = [name for name in usage.metadata_columns if normalize_name(name) not in chosen]
    if unsent:
        names = ", ".join(f"'{name}'" for name in unsent)
        what = (
            f"column {names} is not a request field; it is"
            if len(unsent) == 1
            else f"columns {names} are not request fields; they are"
        )
        log.warning(
            '%s: %s kept in the results, not sent (to say so in the job: [columns] "%s" = "")',
            job.sheet,
            what,
            unsent[0],
        )
