"""Replay: send the requests an output folder recorded again, and compare the images they give."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import ValidationError

from batchgen.backends.a1111 import resolve_endpoint
from batchgen.errors import ConfigError
from batchgen.job import DEFAULT_FILENAME, EndpointSpec, JobSpec
from batchgen.outputs.manifest import MANIFEST, ManifestRecord, latest_records
from batchgen.outputs.store import peek_state
from batchgen.records import ImageRef, Route, RunPlan, Task
from batchgen.run.runner import RunOptions, run_tasks
from batchgen.words import counted

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
# What a replay takes over from the recorded job: how to send, not what (the manifest says that).
_SENDING_SETTINGS = ("in_flight", "retry", "timeout", "wait_all_down", "comfy")
Verdict = Literal["identical", "different", "failed", "not replayable"]


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """How one recorded row came out when sent again."""

    row: int
    key: str
    verdict: Verdict
    detail: str
    expansion: int | None = None  # which of the row's expansions (sweeps); None: a plain row

    def describe(self) -> str:
        which = f"row {self.row}" + (
            f", expansion {self.expansion}" if self.expansion is not None else ""
        )
        return f"{which}: {self.verdict} ({self.detail})"


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """Every replayed row, by row number."""

    source: Path
    out_dir: Path
    rows: tuple[ReplayRow, ...]
    interrupted: bool = False  # Ctrl-C: rows not sent yet are "failed (not sent)"

    @property
    def identical(self) -> int:
        return sum(row.verdict == "identical" for row in self.rows)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.rows and self.identical == len(self.rows) else 1

    def describe(self) -> str:
        said = (
            f"{self.identical:,} of {counted(len(self.rows), 'row')} identical; "
            f"new images in {self.out_dir}"
        )
        return said + (
            "; interrupted: run the same command again to finish" if self.interrupted else ""
        )


@dataclass(frozen=True, slots=True)
class _Planned:
    """A recorded row ready to send again, or the reason it cannot be."""

    record: ManifestRecord
    task: Task | None
    problem: str | None


def parse_rows(text: str) -> frozenset[int]:
    """`2,5-9` -> {2, 5, 6, 7, 8, 9}: spreadsheet row numbers as the manifest records them."""
    rows: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            start = int(first)
            end = int(last) if dash else start
        except ValueError:
            raise ConfigError(f"--rows {text!r}: write row numbers like 2,5-9") from None
        if start < 1 or end < start:
            raise ConfigError(f"--rows {text!r}: {part.strip()!r} is not a row range")
        rows.update(range(start, end + 1))
    return frozenset(rows)


async def replay(
    source: Path,
    out_dir: Path,
    *,
    rows: frozenset[int] | None = None,
    endpoints: Sequence[str] = (),
    options: RunOptions | None = None,
) -> ReplaySummary:
    """Send the ok rows recorded in `source` again, write them to `out_dir`, compare the images.

    The rows go through the runner as a run's do (health checks, failover, Ctrl-C); a replay
    into a folder that holds some of them already sends only the rest."""
    setup = _set_up(source, out_dir, rows, endpoints)
    interrupted = False
    if setup.plan.to_go:  # else every row is there already: judged without asking an endpoint
        summary = await run_tasks(
            setup.job,
            setup.tasks,
            setup.plan,
            setup.job_file,
            payload_base=setup.payload_base,
            options=options,
        )
        interrupted = summary.interrupted
    return _judge(setup.planned, source, out_dir, interrupted)


@dataclass(frozen=True, slots=True)
class _Setup:
    planned: tuple[_Planned, ...]
    tasks: tuple[Task, ...]  # the replayable ones
    job: JobSpec
    job_file: Mapping[str, Any]  # the new folder's job.json
    payload_base: Path
    plan: RunPlan


def _set_up(
    source: Path, out_dir: Path, rows: frozenset[int] | None, endpoints: Sequence[str]
) -> _Setup:
    if source.resolve() == out_dir.resolve():
        raise ConfigError("replay writes into a new folder: give --out a different folder")
    if not (source / MANIFEST).exists():
        raise ConfigError(f"{source}: no {MANIFEST} here; is it a batchgen output folder?")
    recorded = _read_job(source)
    payload_base = Path(recorded.get("payload_base") or source)
    planned = _planned_rows(source, rows, payload_base)
    job = _replay_job(recorded, out_dir, endpoints)
    tasks = tuple(p.task for p in planned if p.task is not None)
    done = peek_state(out_dir).done  # a replay resumes too
    waiting = sum(task.key not in done for task in tasks)
    plan = RunPlan(len(tasks), len(tasks) - waiting, to_retry=0, to_go=waiting, skipped=0)
    job_file = {**recorded, "replay_of": str(source.resolve())}
    if endpoints:
        job_file["endpoints"] = [{"url": resolve_endpoint(e, 1).url} for e in job.endpoints]
    return _Setup(planned, tasks, job, job_file, payload_base, plan)


def _planned_rows(
    source: Path, rows: frozenset[int] | None, payload_base: Path
) -> tuple[_Planned, ...]:
    records = [r for r in latest_records(source).values() if rows is None or r.row in rows]
    ok = [record for record in records if record.ok]
    if len(ok) < len(records):
        log.info(
            "%s failed in %s; nothing to compare them with",
            counted(len(records) - len(ok), "selected row"),
            source,
        )
    if not ok:
        raise ConfigError(f"{source}: no finished row matches; nothing to replay")
    return tuple(_plan(record, payload_base) for record in ok)


def _replay_job(recorded: Mapping[str, Any], out_dir: Path, urls: Sequence[str]) -> JobSpec:
    """The recorded job's sending settings, into `out_dir`: no sheet is read, no shard taken."""
    kept = {key: recorded[key] for key in _SENDING_SETTINGS if recorded.get(key) is not None}
    filename = (recorded.get("output") or {}).get("filename") or DEFAULT_FILENAME
    try:
        return JobSpec.model_validate(
            {
                **kept,
                "name": recorded.get("name") or "replay",
                "sheet": out_dir / "replay",  # never read: the tasks come from the manifest
                "endpoints": _endpoint_specs(recorded, urls),
                "output": {"dir": out_dir, "filename": filename},
                "check": False,
            }
        )
    except ValidationError as error:
        raise ConfigError(f"{JOB_FILE} of the replayed folder: {error}") from None


def _judge(
    planned: Sequence[_Planned], source: Path, out_dir: Path, interrupted: bool
) -> ReplaySummary:
    done_now = latest_records(out_dir)
    outcome = []
    for plan in planned:
        key, row = plan.record.key, plan.record.row
        if plan.problem is not None:
            outcome.append(ReplayRow(row, key, "not replayable", plan.problem))
            continue
        new = done_now.get(key)
        if new is None or not new.ok:
            error = (new.error if new else None) or "not sent"
            outcome.append(ReplayRow(row, key, "failed", str(error)))
            continue
        outcome.append(_compare(row, key, plan.record, source, new, out_dir))
    outcome = [
        dataclasses.replace(one, expansion=plan.record.expansion)
        for one, plan in zip(outcome, planned, strict=True)
    ]
    outcome.sort(key=lambda row: (row.row, -1 if row.expansion is None else row.expansion))
    return ReplaySummary(source, out_dir, tuple(outcome), interrupted)


def _read_job(source: Path) -> dict[str, Any]:
    path = source / JOB_FILE
    if not path.exists():
        log.warning("%s: no %s; give the endpoints with --endpoint", source, JOB_FILE)
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ConfigError(f"{path}: not readable JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a job")
    return data


def _endpoint_specs(job: Mapping[str, Any], urls: Sequence[str]) -> list[EndpointSpec]:
    if urls:
        return [EndpointSpec(url=url) for url in urls]
    specs = []
    for item in job.get("endpoints") or []:
        url = item.get("url") if isinstance(item, dict) else None
        if not url:
            continue
        specs.append(
            EndpointSpec(
                url=url,
                name=None if str(item.get("name", "")).startswith("sim://") else item.get("name"),
                auth_env=item.get("auth_env"),
                headers_env=item.get("headers_env") or {},
                backend=item.get("backend"),
            )
        )
    if not specs:
        raise ConfigError("the output folder does not name its endpoints; give --endpoint URL")
    return specs


def _plan(record: ManifestRecord, base: Path) -> _Planned:
    """The recorded request as a Task, image files checked against their recorded sha256."""
    problems: list[str] = []

    def restore(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"path", "sha256"}:
                return _image_ref(value, base, problems)
            if set(value) == {"sha256", "bytes"}:
                problems.append("the request held an inline image, which was not kept")
                return value
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return [restore(v) for v in value]
        return value

    body: dict[str, Any] = restore(dict(record.payload))
    if body.get("seed", -1) == -1 and record.seeds:
        body["seed"] = record.seeds[0]  # random mode: send the seed the server drew
    if problems:
        return _Planned(record, None, "; ".join(problems))
    settings = body.get("override_settings")
    checkpoint = settings.get("sd_model_checkpoint") if isinstance(settings, dict) else None
    route: Route = "img2img" if record.route == "img2img" else "txt2img"
    task = Task(
        row=record.row,
        key=record.key,
        route=route,
        body=body,
        checkpoint=checkpoint if isinstance(checkpoint, str) else None,
        metadata=dict(record.metadata),
        expansion=record.expansion_of(),
    )
    return _Planned(record, task, None)


def _image_ref(value: Mapping[str, Any], base: Path, problems: list[str]) -> ImageRef | Any:
    path = Path(str(value["path"]))
    if not path.is_absolute():
        path = base / path
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        problems.append(f"input image {path} is gone")
        return dict(value)
    if digest != value["sha256"]:
        problems.append(f"input image {path} changed since the run (sha256 differs)")
        return dict(value)
    return ImageRef(path=path, sha256=digest)


def _compare(
    row: int,
    key: str,
    old: ManifestRecord,
    old_dir: Path,
    new: ManifestRecord,
    new_dir: Path,
) -> ReplayRow:
    """Bytes first (against the sha256 recorded at the time, else the file); then pixels."""
    old_paths, new_paths = old.images, new.images
    if len(old_paths) != len(new_paths):
        detail = f"{counted(len(old_paths), 'image')} then, {len(new_paths)} now"
        return ReplayRow(row, key, "different", detail)
    if old.seeds != new.seeds:
        detail = f"seeds {list(old.seeds)} then, {list(new.seeds)} now"
        return ReplayRow(row, key, "different", detail)
    notes = []
    if old.model_hash != new.model_hash:
        notes.append(f"model {old.model} then, {new.model} now")
    recorded = old.image_sha256
    how = "same bytes"
    for index, (before, after) in enumerate(zip(old_paths, new_paths, strict=True)):
        new_data = (new_dir / after).read_bytes()
        if index < len(recorded) and hashlib.sha256(new_data).hexdigest() == recorded[index]:
            continue
        try:
            old_data = (old_dir / before).read_bytes()
        except OSError:
            return ReplayRow(row, key, "different", f"recorded image {before} is gone")
        if old_data == new_data:
            continue
        if not _same_pixels(old_data, new_data):
            return ReplayRow(row, key, "different", "; ".join([f"image {index} differs", *notes]))
        how = "same pixels, other metadata"
    return ReplayRow(
        row, key, "identical", "; ".join([f"{counted(len(old_paths), 'image')}, {how}", *notes])
    )


def _same_pixels(first: bytes, second: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(first)) as a, Image.open(io.BytesIO(second)) as b:
            same: bool = a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()
            return same
    except (OSError, ValueError):
        return False
