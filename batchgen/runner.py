"""The asyncio worker pool: the only module that composes the stages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from batchgen.client import Endpoint, EndpointClient, open_session, resolve_endpoint
from batchgen.errors import (
    ConfigError,
    EndpointError,
    FatalEndpointError,
    InputError,
    NoEndpointError,
    Problem,
    RetryableEndpointError,
)
from batchgen.inventory import CheckpointIndex
from batchgen.job import JobSpec
from batchgen.payload import PayloadBuilder, manifest_body
from batchgen.records import Generation, Result, Task
from batchgen.scheduler import EndpointFacts, EndpointSlot, Lease, Scheduler
from batchgen.sheet import read_headers, read_rows
from batchgen.store import OutputStore, ResumeState, check_template, folder_in_use, peek_state
from batchgen.writer import GroupWriter

log = logging.getLogger(__name__)

RUN_LOG = "run.log"
PROBE_BACKOFF_MAX = 30.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run a job, beyond the job itself."""

    fresh: bool = False  # move an existing output folder aside and start again
    retry_failed: bool = False  # send only the rows that failed last time
    check: bool = True  # check rows against the endpoints before sending
    window: int = 4096  # rows the scheduler may look ahead over (bounds memory)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # retry waits; tests inject


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What the run will do, said before it starts."""

    total: int
    done: int  # already ok in the output folder
    to_retry: int  # failed last time, sent again
    to_go: int  # never finished
    skipped: int  # not sent this time (--retry-failed leaves new rows for later)

    def describe(self) -> str:
        return (
            f"{self.total:,} rows: {self.done:,} done, {self.to_retry:,} failed to retry, "
            f"{self.to_go:,} to go" + (f", {self.skipped:,} left for later" if self.skipped else "")
        )


@dataclass(frozen=True, slots=True)
class EndpointView:
    """One endpoint's figures, for progress and the summary."""

    name: str
    up: bool
    running: int
    done: int
    failed: int
    images: int
    switches: int
    busy_s: float
    loaded: str | None = None  # the checkpoint in memory, as last seen
    vae: str | None = None
    down_s: float | None = None  # how long it has been out of rotation


@dataclass(frozen=True, slots=True)
class RunSummary:
    """How a run ended."""

    out_dir: Path
    plan: RunPlan
    ok: int
    failed: int
    images: int
    elapsed_s: float
    interrupted: bool
    endpoints: tuple[EndpointView, ...]
    outputs: tuple[Path, ...]
    stopped_reason: str | None = None

    @property
    def not_run(self) -> int:
        return self.plan.to_go + self.plan.to_retry - self.ok - self.failed

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.failed == 0 and self.not_run == 0 else 1


class Reporter(Protocol):
    """What the runner tells the outside while it works."""

    def started(self, plan: RunPlan, out_dir: Path) -> None: ...
    def row_finished(self, result: Result) -> None: ...
    def endpoints(self, views: list[EndpointView]) -> None: ...
    def finished(self, summary: RunSummary) -> None: ...


class _Quiet:
    def started(self, plan: RunPlan, out_dir: Path) -> None:
        log.info("%s; output in %s", plan.describe(), out_dir)

    def row_finished(self, result: Result) -> None:
        pass

    def endpoints(self, views: list[EndpointView]) -> None:
        pass

    def finished(self, summary: RunSummary) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Answer:
    lease: Lease
    generation: Generation


class _Stop(Exception):
    """The run is stopping: a row that has not been sent is left for the next run."""


def validate(
    job: JobSpec, state: ResumeState | None = None, *, retry_failed: bool = False
) -> RunPlan:
    """Read the whole sheet and build every row once; raise InputError listing every problem."""
    headers = read_headers(job.sheet, job.sheet_name)
    builder = PayloadBuilder(job, headers)
    problems: list[Problem] = [*builder.header_problems, *builder.default_problems()]
    try:
        check_template(job.output.filename, builder.metadata_columns)
    except Exception as error:  # a ConfigError reads better beside the sheet's problems
        problems.append(Problem(file="job", message=str(error)))
    done = failed = new = 0
    done_keys = state.done if state else frozenset()
    failed_keys = state.failed if state else frozenset()
    for row in read_rows(job.sheet, job.sheet_name):
        try:
            task = builder.build(row)
        except InputError as error:
            problems.extend(error.problems)
            continue
        if task.key in done_keys:
            done += 1
        elif task.key in failed_keys:
            failed += 1
        else:
            new += 1
    if problems:
        raise InputError(problems)
    total = done + failed + new
    if retry_failed:
        return RunPlan(total, done, failed, 0, skipped=new)
    return RunPlan(total, done, failed, new, skipped=0)


def first_tasks(job: JobSpec, count: int) -> Iterator[Task]:
    """The first rows' requests, for --dry-run (after validate)."""
    builder = PayloadBuilder(job, read_headers(job.sheet, job.sheet_name))
    for index, row in enumerate(read_rows(job.sheet, job.sheet_name)):
        if index >= count:
            return
        yield builder.build(row)


async def run_batch(
    job: JobSpec, options: RunOptions | None = None, reporter: Reporter | None = None
) -> RunSummary:
    """Run a job to the end (or to an interrupt) and return how it ended."""
    return await _Run(job, options or RunOptions(), reporter or _Quiet()).run()


async def check_only(job: JobSpec) -> list[str]:
    """`batchgen check`: the sheet, then every endpoint that may get a row; nothing is generated."""
    sheet_problems: list[Problem] = []
    try:
        lines = [f"{job.sheet}: {validate(job).total:,} rows, all valid"]
    except InputError as error:  # go on: the endpoints' problems belong in the same list
        sheet_problems, lines = list(error.problems), []
    endpoints = [resolve_endpoint(spec, job.in_flight) for spec in job.endpoints]
    async with _started_endpoints(endpoints) as live, open_session() as session:
        clients = [EndpointClient(endpoint, session, job.timeout) for endpoint in live]
        slots = await _probe_all(clients)
        up = [slot.client for slot in slots if slot.up]
        for slot in slots:
            state = slot.state
            lines.append(
                f"{slot.name}: {state.flavor}, checkpoint {state.checkpoint}"
                if state
                else f"{slot.name}: does not answer"
            )
        if not up:
            if sheet_problems:
                raise InputError(sheet_problems)
            raise NoEndpointError("no endpoint answers; nothing was checked against a server")
        from batchgen.check import check_job

        problems = [*sheet_problems, *await check_job(job, up)]
        if problems:
            summary = "" if sheet_problems else "the endpoints cannot serve every row"
            raise InputError(problems, summary and f"{summary}; nothing was sent")
    lines.append("all checks passed")
    return lines


class _Run:
    def __init__(self, job: JobSpec, options: RunOptions, reporter: Reporter) -> None:
        self.job = job
        self.options = options
        self.reporter = reporter
        self.store = OutputStore(
            job.out_dir, job.name, job.output.filename, payload_base=job.sheet.parent
        )
        self.ok = self.failed = self.images = 0
        self.stopping = False
        self.interrupted = False
        self.stopped_reason: str | None = None
        self.sending: set[asyncio.Task[None]] = set()  # rows on an endpoint right now
        self.rows: set[asyncio.Task[None]] = set()
        self.row_keys: dict[int, str] = {}
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchgen-store")
        self.group = GroupWriter(self.store, self.writer)

    async def run(self) -> RunSummary:
        past = None if self.options.fresh else peek_state(self.job.out_dir)
        plan = validate(self.job, past, retry_failed=self.options.retry_failed)
        started = time.monotonic()
        endpoints = [resolve_endpoint(spec, self.job.in_flight) for spec in self.job.endpoints]
        async with _started_endpoints(endpoints) as live, open_session() as session:
            clients = [EndpointClient(endpoint, session, self.job.timeout) for endpoint in live]
            slots = await _probe_all(clients)
            scheduler = Scheduler(slots, wait_all_down=self.job.wait_all_down)
            if self.options.check and self.job.check:
                await self._check([slot.client for slot in slots if slot.up])
            if self.options.fresh:  # only now: an invalid job leaves the folder as it was
                _move_aside(self.job.out_dir)
            state = self.store.open()
            handler = _run_log(self.job.out_dir / RUN_LOG)
            try:
                self.store.write_json("job.json", _public_job(self.job, live))
                self.reporter.started(plan, self.job.out_dir)
                with self._interrupts():
                    await self._send_all(scheduler, state)
            except BaseException:
                self.writer.shutdown(wait=True)  # a row being written is finished first
                self.store.close()  # and the folder is free for the next run at once
                _close_log(handler)
                raise
            finally:
                self.writer.shutdown(wait=True)
        try:  # the run log keeps the summary too
            return self._finish(plan, started, scheduler)
        finally:
            _close_log(handler)

    def _finish(self, plan: RunPlan, started: float, scheduler: Scheduler) -> RunSummary:
        outputs = self._write_results()
        self.store.close()
        summary = RunSummary(
            out_dir=self.job.out_dir,
            plan=plan,
            ok=self.ok,
            failed=self.failed,
            images=self.images,
            elapsed_s=time.monotonic() - started,
            interrupted=self.interrupted,
            endpoints=tuple(_views(scheduler.slots)),
            outputs=outputs,
            stopped_reason=self.stopped_reason,
        )
        self.reporter.finished(summary)
        return summary

    async def _check(self, clients: list[EndpointClient]) -> None:
        from batchgen.check import check_job

        problems = await check_job(self.job, clients)
        if problems:
            raise InputError(problems, "the endpoints cannot serve every row; nothing was sent")

    async def _send_all(self, scheduler: Scheduler, state: ResumeState) -> None:
        window = asyncio.Semaphore(self.options.window)
        watcher = asyncio.create_task(self._watch(scheduler))
        builder = PayloadBuilder(self.job, read_headers(self.job.sheet, self.job.sheet_name))
        try:
            for row in read_rows(self.job.sheet, self.job.sheet_name):
                task = builder.build(row)
                self.row_keys[task.row] = task.key
                if not self._wanted(task, state):
                    continue
                await window.acquire()  # backpressure before a row coroutine exists
                if self.stopping:
                    window.release()
                    break
                scheduler.expect(task)  # no row is handed out until the window is in
                row_task = asyncio.create_task(self._send_row(task, scheduler))
                self.rows.add(row_task)
                row_task.add_done_callback(self._row_done_callback(window))
                row_task.add_done_callback(_settle(scheduler, task))
            while self.rows:
                await asyncio.wait(set(self.rows))
        finally:
            watcher.cancel()
            for row_task in self.rows:
                row_task.cancel()
            await asyncio.gather(watcher, *self.rows, return_exceptions=True)

    def _row_done_callback(self, window: asyncio.Semaphore) -> Callable[[asyncio.Task[None]], None]:
        def done(row_task: asyncio.Task[None]) -> None:
            self.rows.discard(row_task)
            window.release()

        return done

    def _wanted(self, task: Task, state: ResumeState) -> bool:
        past = state.rows.get(task.key)
        if past is None:
            return not self.options.retry_failed
        return past.status != "ok"

    async def _send_row(self, task: Task, scheduler: Scheduler) -> None:
        started = time.time()
        clock = time.monotonic()
        attempts = 0
        avoid: set[str] = set()
        endpoint = ""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.job.retry.attempts),
            wait=_retry_wait(self.job),
            retry=retry_if_exception_type(RetryableEndpointError),
            reraise=True,
            sleep=self.options.sleep,
        )
        current = asyncio.current_task()
        try:
            async for attempt in retrying:
                with attempt:
                    if self.stopping:
                        raise _Stop
                    lease = await scheduler.lease(task, avoid)
                    endpoint = lease.slot.name
                    attempts += 1
                    if current is not None:
                        self.sending.add(current)
                    try:
                        answer = await self._attempt(lease, scheduler)
                    except BaseException as error:
                        self.sending.discard(current)
                        if isinstance(error, RetryableEndpointError):
                            # Only the last one: avoiding all that failed could leave no taker.
                            avoid = {endpoint}
                        raise
                    generation, endpoint = answer.generation, answer.lease.slot.name
            result = Result(
                task, "ok", endpoint, attempts, None, generation, started, time.monotonic() - clock
            )
        except _Stop:
            return
        except NoEndpointError as error:
            self._stop(str(error))
            return
        except EndpointError as error:
            result = Result(
                task,
                "failed",
                endpoint,
                attempts,
                str(error),
                None,
                started,
                time.monotonic() - clock,
            )
        if current is not None:  # a stop must not cancel a row being written
            self.sending.add(current)
        try:
            await self._record(result)
        finally:
            self.sending.discard(current)

    async def _attempt(self, lease: Lease, scheduler: Scheduler) -> _Answer:
        """Send the row once. If the scheduler copies it to an idle endpoint meanwhile (it is
        late at the run's tail), both are sent: the first answer wins, the other is dropped."""
        legs = {asyncio.ensure_future(self._leg(lease, scheduler))}
        spare = lease.spare
        error: BaseException | None = None
        try:
            while legs:
                waiting: set[asyncio.Future[Any]] = {*legs, *([spare] if spare else [])}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if spare is not None and spare in done:
                    copy = spare.result()
                    if self.stopping:  # after Ctrl-C nothing new is sent, not even a copy
                        scheduler.release(copy, None)
                    else:
                        legs.add(asyncio.ensure_future(self._leg(copy, scheduler)))
                    spare = None
                for leg in [leg for leg in legs if leg in done]:
                    legs.discard(leg)
                    if leg.exception() is None:
                        return leg.result()
                    error = leg.exception()
        finally:
            for leg in legs:
                leg.cancel()
            if spare is not None:
                spare.cancel()
            if legs:
                await asyncio.wait(legs)
        assert error is not None
        raise error

    async def _leg(self, lease: Lease, scheduler: Scheduler) -> _Answer:
        """Send the row to one endpoint; give up at once if it leaves rotation meanwhile."""
        slot = lease.slot
        sending = asyncio.ensure_future(slot.client.generate(lease.task))
        lost = asyncio.ensure_future(slot.lost.wait())
        try:
            await asyncio.wait({sending, lost}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            sending.cancel()
            lost.cancel()
            scheduler.release(lease, None)
            raise
        lost.cancel()
        if not sending.done():
            sending.cancel()
            scheduler.release(lease, None)
            raise RetryableEndpointError(f"{slot.name} is out of rotation")
        try:
            generation = sending.result()
        except RetryableEndpointError as error:
            scheduler.release(lease, None, endpoint_failed=True)
            log.info("row %d on %s: %s (will retry)", lease.task.row, slot.name, error)
            raise
        except FatalEndpointError:
            scheduler.release(lease, None)
            slot.failed += 1
            raise
        except BaseException:
            scheduler.release(lease, None)
            raise
        scheduler.release(lease, generation)
        return _Answer(lease, generation)

    async def _record(self, result: Result) -> None:
        payload = manifest_body(result.task.body, self.job.sheet.parent)
        # Shielded: once the images are being written, the manifest line follows them.
        try:
            await asyncio.shield(self.group.write(result, payload))
        except OSError as error:  # a full disk: the row is not done; stop rather than fail them all
            self._stop(f"cannot write to {self.job.out_dir}: {error}; the row is sent next run")
            return
        if result.status == "ok":
            self.ok += 1
            self.images += len(result.generation.images) if result.generation else 0
        else:
            self.failed += 1
            log.warning(
                "row %d failed after %d attempt(s): %s",
                result.task.row,
                result.attempts,
                result.error,
            )
        self.reporter.row_finished(result)

    async def _watch(self, scheduler: Scheduler) -> None:
        """Probe endpoints that are out of rotation, with backoff, and feed the progress view."""
        next_probe: dict[str, tuple[float, float]] = {}
        while True:
            now = time.monotonic()
            for slot in scheduler.slots:
                if slot.up:
                    next_probe.pop(slot.name, None)
                    continue
                if slot.name not in next_probe:
                    # The more often it has left rotation, the longer before it may rejoin: an
                    # endpoint that answers probes but fails every row must not flap.
                    wait = min(2.0 ** max(slot.downs - 1, 0), PROBE_BACKOFF_MAX)
                    next_probe[slot.name] = (now + wait, wait * 2)
                due, delay = next_probe[slot.name]
                if now >= due:
                    try:
                        facts = await _inspect(slot.client)
                    except (EndpointError, ConfigError):  # ConfigError: refused credentials
                        next_probe[slot.name] = (now + delay, min(delay * 2, PROBE_BACKOFF_MAX))
                    else:
                        log.warning("%s answers again; back in rotation", slot.name)
                        scheduler.mark_up(slot, facts)
            scheduler.tick()
            self.reporter.endpoints(list(_views(scheduler.slots)))
            await asyncio.sleep(0.5)

    def _stop(self, reason: str) -> None:
        """Hand out no new rows; rows on an endpoint finish and are written."""
        if self.stopping:
            return
        self.stopping = True
        self.stopped_reason = reason
        log.warning("%s", reason)
        for row_task in self.rows:
            if row_task not in self.sending:
                row_task.cancel()

    @contextlib.contextmanager
    def _interrupts(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()

        def on_interrupt() -> None:
            if not self.interrupted:
                self.interrupted = True
                self._stop("interrupted: finishing the rows in flight (again to stop now)")
            elif main is not None:
                log.warning("interrupted again: stopping now")
                main.cancel()

        try:
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
            loop.add_signal_handler(signal.SIGTERM, on_interrupt)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            yield
            return
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)

    def _write_results(self) -> tuple[Path, ...]:
        headers = read_headers(self.job.sheet, self.job.sheet_name)
        rows = read_rows(self.job.sheet, self.job.sheet_name)
        xlsx = self.job.sheet.suffix.lower() == ".xlsx"
        return (
            self.store.manifest_path,
            *self.store.write_results(rows, headers, self.row_keys, xlsx),
        )


@contextlib.asynccontextmanager
async def _started_endpoints(endpoints: list[Endpoint]) -> AsyncIterator[list[Endpoint]]:
    """Start a simulator for each sim:// endpoint; the rest pass through."""
    async with contextlib.AsyncExitStack() as stack:
        live = []
        for endpoint in endpoints:
            if endpoint.is_sim:
                from batchgen.sim import SimConfig, SimServer

                try:
                    config = SimConfig.from_query(urlsplit(endpoint.url).query)
                except ValueError as error:
                    raise ConfigError(f"endpoint {endpoint.url}: {error}") from None
                server = SimServer(config)
                url = await server.start()
                stack.push_async_callback(server.stop)
                shown = url.replace("http", "sim", 1)
                name = endpoint.name if endpoint.name != endpoint.url else shown
                live.append(Endpoint(name, url, endpoint.in_flight, endpoint.headers))
            else:
                live.append(endpoint)
        yield live


async def _probe_all(clients: list[EndpointClient]) -> list[EndpointSlot]:
    async def probe(client: EndpointClient) -> EndpointSlot:
        slot = EndpointSlot(client, None)
        try:
            slot.learn(await _inspect(client))
        except EndpointError as error:
            log.warning("%s does not answer (%s); left out until it does", client.name, error)
            slot.up = False
            slot.down_since = time.monotonic()
        return slot

    return list(await asyncio.gather(*(probe(client) for client in clients)))


async def _inspect(client: EndpointClient) -> EndpointFacts:
    """What an endpoint is, what it has in memory, and every name of its checkpoints."""
    state = await client.probe()
    models = loaded = None
    with contextlib.suppress(EndpointError):
        listed = await client.get_json("/sdapi/v1/sd-models", attempts=1)
        models = CheckpointIndex.from_api(listed) if isinstance(listed, list) else None
    with contextlib.suppress(EndpointError):
        options = await client.get_json("/sdapi/v1/options", attempts=1)
        value = options.get("sd_checkpoint_hash") if isinstance(options, dict) else None
        loaded = value if isinstance(value, str) and value else None
    return EndpointFacts(state, models, loaded)


def _settle(scheduler: Scheduler, task: Task) -> Callable[[asyncio.Task[None]], None]:
    return lambda _: scheduler.settle(task)


def _retry_wait(job: JobSpec) -> Callable[[RetryCallState], float]:
    backoff = wait_exponential_jitter(
        multiplier=job.retry.backoff_initial,
        max=job.retry.backoff_max,
        jitter=job.retry.backoff_initial,
    )

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, EndpointError) and error.status is None:
            return 0.0  # the endpoint failed, not the row: another endpoint takes it at once
        return backoff(state)

    return wait


def _views(slots: list[EndpointSlot]) -> Iterator[EndpointView]:
    now = time.monotonic()
    for slot in slots:
        yield EndpointView(
            slot.name,
            slot.up,
            slot.running,
            slot.done,
            slot.failed,
            slot.images,
            slot.switches,
            slot.busy_s,
            loaded=slot.loaded,
            vae=slot.vae,
            down_s=None if slot.down_since is None else now - slot.down_since,
        )


def _public_job(job: JobSpec, live: list[Endpoint]) -> dict[str, Any]:
    """The resolved job, with every secret left out (header values, URL credentials)."""
    data = job.model_dump(mode="json")
    data["endpoints"] = [
        {
            "name": endpoint.name,
            "url": resolve_endpoint(spec, job.in_flight).url,  # credentials split off
            "auth_env": spec.auth_env,
            "headers": sorted(spec.headers) + sorted(spec.headers_env),
            "headers_env": dict(spec.headers_env),  # header -> variable name, not its value
        }
        for endpoint, spec in zip(live, job.endpoints, strict=True)
    ]
    data["payload_base"] = str(job.sheet.parent.resolve())  # where the payload's paths start
    return data


def _move_aside(out_dir: Path) -> None:
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if folder_in_use(out_dir):
        raise ConfigError(f"{out_dir}: another batchgen run is writing here; --fresh left it")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = out_dir.with_name(f"{out_dir.name}.{stamp}")
    counter = 1
    while target.exists():  # never into (or over) an earlier copy
        target = out_dir.with_name(f"{out_dir.name}.{stamp}-{counter}")
        counter += 1
    shutil.move(str(out_dir), str(target))
    log.warning("--fresh: moved the earlier output folder to %s", target)


def _close_log(handler: logging.Handler) -> None:
    logging.getLogger("batchgen").removeHandler(handler)
    handler.close()


def _run_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("batchgen")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler
