"""Replay: send the requests an output folder recorded again, and compare the images they give."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
from PIL import Image
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from batchgen.client import EndpointClient, resolve_endpoint, row_backoff
from batchgen.errors import ConfigError, EndpointError, NoEndpointError, RetryableEndpointError
from batchgen.job import DEFAULT_FILENAME, EndpointSpec, RetrySpec, TimeoutSpec
from batchgen.manifest import MANIFEST, ManifestRecord, latest_records
from batchgen.payload import manifest_body
from batchgen.records import Generation, ImageRef, Result, Route, Task
from batchgen.store import OutputStore
from batchgen.words import counted

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
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

    @property
    def identical(self) -> int:
        return sum(row.verdict == "identical" for row in self.rows)

    @property
    def exit_code(self) -> int:
        return 0 if self.rows and self.identical == len(self.rows) else 1

    def describe(self) -> str:
        return (
            f"{self.identical:,} of {counted(len(self.rows), 'row')} identical; "
            f"new images in {self.out_dir}"
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
) -> ReplaySummary:
    """Send the ok rows recorded in `source` again, write them to `out_dir`, compare the images."""
    setup = _set_up(source, out_dir, rows, endpoints)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchgen-replay")
    try:
        sender = _Sender(setup.job, setup.specs, setup.store, writer)
        errors = await sender.send_all(list(setup.to_send))
    finally:
        writer.shutdown(wait=True)
        setup.store.close()
    return _judge(setup, source, out_dir, errors)


@dataclass(frozen=True, slots=True)
class _Setup:
    job: Mapping[str, Any]
    planned: tuple[_Planned, ...]
    specs: list[EndpointSpec]
    store: OutputStore
    to_send: tuple[Task, ...]  # rows not already ok in out_dir (a replay resumes too)


def _set_up(
    source: Path, out_dir: Path, rows: frozenset[int] | None, endpoints: Sequence[str]
) -> _Setup:
    if source.resolve() == out_dir.resolve():
        raise ConfigError("replay writes into a new folder: give --out a different folder")
    if not (source / MANIFEST).exists():
        raise ConfigError(f"{source}: no {MANIFEST} here; is it a batchgen output folder?")
    job = _read_job(source)
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
    payload_base = Path(job.get("payload_base") or source)
    planned = tuple(_plan(record, payload_base) for record in ok)
    specs = _endpoint_specs(job, endpoints)
    store = OutputStore(
        out_dir,
        str(job.get("name") or "replay"),
        str((job.get("output") or {}).get("filename") or DEFAULT_FILENAME),
        payload_base,
    )
    state = store.open()
    copied = {**job, "replay_of": str(source.resolve())}
    if endpoints:
        copied["endpoints"] = [{"url": resolve_endpoint(spec, 1).url} for spec in specs]
    store.write_json(JOB_FILE, copied)
    done = state.done  # once, not per row
    to_send = tuple(p.task for p in planned if p.task is not None and p.task.key not in done)
    return _Setup(job, planned, specs, store, to_send)


def _judge(setup: _Setup, source: Path, out_dir: Path, errors: Mapping[str, str]) -> ReplaySummary:
    done_now = latest_records(out_dir)
    outcome = []
    for plan in setup.planned:
        key, row = plan.record.key, plan.record.row
        if plan.problem is not None:
            outcome.append(ReplayRow(row, key, "not replayable", plan.problem))
            continue
        new = done_now.get(key)
        if new is None or not new.ok:
            error = errors.get(key) or (new.error if new else None) or "not sent"
            outcome.append(ReplayRow(row, key, "failed", str(error)))
            continue
        outcome.append(_compare(row, key, plan.record, source, new, out_dir))
    outcome = [
        dataclasses.replace(one, expansion=plan.record.expansion)
        for one, plan in zip(outcome, setup.planned, strict=True)
    ]
    outcome.sort(key=lambda row: (row.row, -1 if row.expansion is None else row.expansion))
    return ReplaySummary(source, out_dir, tuple(outcome))


class _Sender:
    """A small pool: each endpoint takes its in_flight share of the rows, with retries."""

    def __init__(
        self,
        job: Mapping[str, Any],
        specs: list[EndpointSpec],
        store: OutputStore,
        writer: ThreadPoolExecutor,
    ) -> None:
        self._in_flight = int(job.get("in_flight") or 2)
        self._retry = RetrySpec.model_validate(job.get("retry") or {})
        self._timeout = TimeoutSpec.model_validate(job.get("timeout") or {})
        self._specs = specs
        self._store = store
        self._writer = writer
        self._errors: dict[str, str] = {}

    async def send_all(self, tasks: list[Task]) -> dict[str, str]:
        """Send every task; return the error of each row that failed."""
        if not tasks:
            return self._errors
        from batchgen.fleet import started_endpoints  # starts sim:// endpoints like a run

        endpoints = [resolve_endpoint(spec, self._in_flight) for spec in self._specs]
        queue: asyncio.Queue[Task] = asyncio.Queue()
        for task in tasks:
            queue.put_nowait(task)
        async with started_endpoints(endpoints) as live, aiohttp.ClientSession() as session:
            clients = [EndpointClient(endpoint, session, self._timeout) for endpoint in live]
            up = []
            for client in clients:
                try:
                    await client.probe()  # learns the flavor, as a run does
                except EndpointError as error:
                    log.warning("%s does not answer (%s); left out", client.name, error)
                    continue
                up.append(client)
            if not up:
                raise NoEndpointError("no endpoint answers; nothing was replayed")
            workers = [
                self._work(client, queue) for client in up for _ in range(client.endpoint.in_flight)
            ]
            await asyncio.gather(*workers)
        return self._errors

    async def _work(self, client: EndpointClient, queue: asyncio.Queue[Task]) -> None:
        while not queue.empty():
            task = queue.get_nowait()
            started, clock, attempts = time.time(), time.monotonic(), 0
            generation: Generation | None = None
            error: str | None = None
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self._retry.attempts),
                wait=row_backoff(self._retry),
                retry=retry_if_exception_type(RetryableEndpointError),
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        attempts += 1
                        generation = await client.generate(task)
            except EndpointError as failure:
                error = str(failure)
                self._errors[task.key] = error
            result = Result(
                task,
                "ok" if generation is not None else "failed",
                client.name,
                attempts,
                error,
                generation,
                started,
                time.monotonic() - clock,
                simulated=client.simulator,
            )
            payload = manifest_body(task.body, self._store.payload_base)
            loop = asyncio.get_running_loop()
            await asyncio.shield(
                loop.run_in_executor(self._writer, self._store.record, result, payload)
            )


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
