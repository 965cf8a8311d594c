"""The asyncio worker pool: the only module that composes the stages."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from batchgen.backends.a1111 import EndpointClient, row_backoff
from batchgen.backends.kinds import request_maker
from batchgen.errors import (
    EndpointError,
    FatalEndpointError,
    InputError,
    NoEndpointError,
    RetryableEndpointError,
    RowError,
)
from batchgen.job import JobSpec
from batchgen.outputs.changes import DIGEST, ChangeTracker
from batchgen.outputs.publish import published
from batchgen.outputs.run_files import JOB_FILE, close_run_log, move_aside, open_run_log, public_job
from batchgen.outputs.shards import write_shard_plan
from batchgen.outputs.store import DONE, SIMULATED, OutputStore, ResumeState, peek_state
from batchgen.outputs.writer import GroupWriter
from batchgen.records import (
    EndpointView,
    FailedRow,
    Generation,
    Reporter,
    Result,
    RunPlan,
    RunSummary,
    Task,
)
from batchgen.rows.payload import manifest_body
from batchgen.rows.prepare import Prepared, prepare
from batchgen.rows.wire import RowRequests
from batchgen.run.fleet import Fleet, endpoint_views, open_fleet, watch
from batchgen.run.interrupts import catch_interrupts
from batchgen.run.plan import check_endpoints
from batchgen.run.scheduler import Lease, Policy, Scheduler
from batchgen.run.speed_memory import address, recall, remember
from batchgen.words import counted

log = logging.getLogger(__name__)

FAILED_ROWS_SHOWN = 20  # failed rows the summary lists (a screenful), then "and N more"
ROW_ERROR_ENDPOINTS = 2  # endpoints a request that raises an error on a server is tried on


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run a job, beyond the job itself."""

    fresh: bool = False  # move an existing output folder aside and start again
    retry_failed: bool = False  # send only the rows that failed last time
    check: bool = True  # check rows against the endpoints before sending
    window: int = 4096  # rows the scheduler may look ahead over (bounds memory)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # retry waits; tests inject
    policy: Policy = "plan"  # how rows are spread: see scheduler.py ("greedy": the old way)
    recall_speeds: bool = True  # start from the speeds earlier runs measured (speed_memory.py)


class _Quiet:
    def started(self, plan: RunPlan, out_dir: Path) -> None:
        log.info("%s; output in %s", plan.describe(), out_dir)
        for note in plan.notes():
            log.warning("%s", note)

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


async def run_batch(
    job: JobSpec, options: RunOptions | None = None, reporter: Reporter | None = None
) -> RunSummary:
    """Run a job to the end (or to an interrupt) and return how it ended."""
    return await _Run(job, options or RunOptions(), reporter or _Quiet(), job.sheet.parent).run()


async def run_tasks(
    job: JobSpec,
    tasks: Iterable[Task],
    plan: RunPlan,
    job_file: Mapping[str, Any],
    *,
    payload_base: Path,
    options: RunOptions | None = None,
    reporter: Reporter | None = None,
) -> RunSummary:
    """Send tasks made elsewhere (a manifest's, for replay) into job.out_dir as a run sends its
    sheet's: same fleet, health checks, failover, tail copies, resume and Ctrl-C. No sheet is
    read; `job_file` becomes the folder's job.json, and no results.csv is written."""
    run = _Run(job, options or RunOptions(), reporter or _Quiet(), payload_base)
    return await run.run_given(tasks, plan, job_file)


class _Run:
    def __init__(
        self, job: JobSpec, options: RunOptions, reporter: Reporter, payload_base: Path
    ) -> None:
        self.job = job
        self.options = options
        self.reporter = published(reporter, job.out_dir)  # + status.json and the HTML report
        self.payload_base = payload_base  # where the manifest's relative image paths start
        self.store = OutputStore(job.out_dir, job.name, job.output.filename, payload_base)
        self.ok = self.failed = self.images = 0
        self.failed_rows: list[FailedRow] = []
        self.stopping = False
        self.interrupted = False
        self.stopped_reason: str | None = None
        self.sending: set[asyncio.Task[None]] = set()  # rows on an endpoint right now
        self.rows: set[asyncio.Task[None]] = set()
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchgen-store")
        self.group = GroupWriter(self.store, self.writer)
        self.make_request = request_maker(job)

    async def run(self) -> RunSummary:
        past, changes = None, None
        if not self.options.fresh:  # one scan of the folder's manifest serves both
            changes = ChangeTracker(self.job.out_dir)
            past = peek_state(self.job.out_dir, each=changes.remember)
        prepared = prepare(
            self.job,
            past,
            retry_failed=self.options.retry_failed,
            seen=changes.see if changes else None,
        )
        try:
            return await self._run_prepared(prepared, changes)
        finally:
            prepared.close()
            if changes is not None:
                changes.close()

    async def _run_prepared(self, prepared: Prepared, changes: ChangeTracker | None) -> RunSummary:
        checking = self.options.check and self.job.check
        if prepared.problems and not checking:
            raise InputError(list(prepared.problems))
        started = time.monotonic()
        async with open_fleet(self.job) as fleet:
            if prepared.problems and not fleet.answering():
                raise InputError(list(prepared.problems))  # they stand without a server
            fleet.require_an_answer("nothing was sent", defaulted=self.job.endpoints_defaulted)
            if checking:  # raises with the sheet's problems, if any, beside the servers'
                await check_endpoints(self.job, prepared, fleet.answering())
            plan = prepared.plan.on(fleet.simulators(), retry_failed=self.options.retry_failed)
            if self.options.fresh:  # only now: an invalid job leaves the folder as it was
                move_aside(self.job.out_dir)

            def job_file() -> dict[str, Any]:
                said = changes.describe(self.job.model_dump(mode="json")) if changes else None
                if said:  # before job.json is replaced: it is what the folder's last run used
                    log.warning("%s", said)
                written = public_job(self.job, fleet.endpoints)
                if changes is not None:
                    written[DIGEST] = changes.digest
                if self.job.shard is not None:
                    write_shard_plan(self.job, self.job.shard, prepared.every_task())
                return written

            scheduler, handler = await self._send(fleet, plan, prepared.tasks(), job_file)
        try:  # the run log keeps the summary too
            return self._finish(plan, started, scheduler, prepared)
        finally:
            close_run_log(handler)

    async def run_given(
        self, tasks: Iterable[Task], plan: RunPlan, job_file: Mapping[str, Any]
    ) -> RunSummary:
        started = time.monotonic()
        async with open_fleet(self.job) as fleet:
            fleet.require_an_answer("nothing was sent")
            plan = plan.on(fleet.simulators(), retry_failed=False)
            scheduler, handler = await self._send(fleet, plan, tasks, lambda: dict(job_file))
        try:
            return self._finish(plan, started, scheduler, None)
        finally:
            close_run_log(handler)

    async def _send(
        self,
        fleet: Fleet,
        plan: RunPlan,
        tasks: Iterable[Task],
        job_file: Callable[[], dict[str, Any]],
    ) -> tuple[Scheduler, logging.Handler]:
        """Open the folder and its run log, write job.json (`job_file()`, called with the log
        on), and send every task not done yet; the log handler is the caller's to close."""
        addresses = {
            slot.name: address(spec.url)
            for spec, slot in zip(self.job.endpoints, fleet.slots, strict=True)
        }
        remembered = recall(addresses) if self.options.recall_speeds else {}
        for slot in fleet.slots:
            if slot.name in remembered:
                slot.recall(remembered[slot.name])
        scheduler = Scheduler(
            fleet.slots, wait_all_down=self.job.wait_all_down, policy=self.options.policy
        )
        state = self.store.open()
        handler = open_run_log(self.job.out_dir)
        try:
            self.store.write_json(JOB_FILE, job_file())
            self.reporter.started(plan, self.job.out_dir)
            if remembered:
                log.info("speeds remembered from earlier runs: %s", ", ".join(remembered))
            with catch_interrupts(self._interrupted):
                await self._send_all(scheduler, state, plan, tasks)
        except BaseException:
            self.writer.shutdown(wait=True)  # a row being written is finished first
            self.store.close()  # and the folder is free for the next run at once
            close_run_log(handler)
            raise
        finally:
            self.writer.shutdown(wait=True)
            remember(scheduler.measured(), addresses)
        return scheduler, handler

    def _finish(
        self, plan: RunPlan, started: float, scheduler: Scheduler, sheet: Prepared | None
    ) -> RunSummary:
        """`sheet`: the pass over the sheet the tasks came from, for results.csv (None: replay)."""
        outputs: tuple[Path, ...] = (self.store.manifest_path,)
        if sheet is not None:
            outputs += self._write_results(sheet)
        self.store.close()
        summary = RunSummary(
            out_dir=self.job.out_dir,
            plan=plan,
            ok=self.ok,
            failed=self.failed,
            images=self.images,
            elapsed_s=time.monotonic() - started,
            interrupted=self.interrupted,
            endpoints=tuple(endpoint_views(scheduler.slots)),
            outputs=outputs,
            stopped_reason=self.stopped_reason,
            failed_rows=tuple(self.failed_rows),
        )
        self.reporter.finished(summary)
        return summary

    async def _send_all(
        self, scheduler: Scheduler, state: ResumeState, plan: RunPlan, tasks: Iterable[Task]
    ) -> None:
        window = asyncio.Semaphore(self.options.window)
        watcher = asyncio.create_task(watch(scheduler, self.reporter.endpoints))
        try:
            for task in tasks:
                if not self._wanted(task, state, plan):
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

    def _wanted(self, task: Task, state: ResumeState, plan: RunPlan) -> bool:
        past = state.rows.get(task.key)
        if past is None or (past.status == SIMULATED and plan.remade):
            return not self.options.retry_failed  # as if never sent
        return past.status not in DONE

    async def _send_row(self, task: Task, scheduler: Scheduler) -> None:
        started = time.time()
        clock = time.monotonic()
        attempts = 0
        avoid: set[str] = set()
        simulated = False
        row_failed: dict[str, RowError] = {}  # endpoint -> the error this request raised there
        endpoint = ""

        def worth_another(error: BaseException) -> bool:
            if isinstance(error, RowError):  # once more, on another endpoint
                return len(row_failed) < ROW_ERROR_ENDPOINTS and scheduler.others_up(row_failed)
            return isinstance(error, RetryableEndpointError)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.job.retry.attempts),
            wait=_retry_wait(self.job),
            retry=retry_if_exception(worth_another),
            reraise=True,
            sleep=self.options.sleep,
        )
        current = asyncio.current_task()
        try:
            async for attempt in retrying:
                with attempt:
                    if self.stopping:
                        raise _Stop
                    lease = await scheduler.lease(task, avoid | row_failed.keys())
                    endpoint = lease.slot.name
                    simulated = lease.slot.client.simulator
                    if endpoint in row_failed:  # no other endpoint took it: not sent again here
                        scheduler.release(lease, None)
                        raise row_failed[endpoint]
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
                        elif isinstance(error, RowError):
                            row_failed[endpoint] = error
                        raise
                    generation, endpoint = answer.generation, answer.lease.slot.name
            elapsed = time.monotonic() - clock
            result = Result(
                task,
                "ok",
                endpoint,
                attempts,
                None,
                generation,
                started,
                elapsed,
                generation.simulated,
            )
        except _Stop:
            return
        except NoEndpointError as error:
            self._stop(str(error))
            return
        except EndpointError as error:
            elapsed = time.monotonic() - clock
            result = Result(
                task, "failed", endpoint, attempts, str(error), None, started, elapsed, simulated
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
        requests = RowRequests(lease.task, self.make_request)  # shared with a tail copy
        legs = {asyncio.ensure_future(self._leg(lease, scheduler, requests))}
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
                        legs.add(asyncio.ensure_future(self._leg(copy, scheduler, requests)))
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

    async def _leg(self, lease: Lease, scheduler: Scheduler, requests: RowRequests) -> _Answer:
        """Send the row to one endpoint; give up at once if it leaves rotation meanwhile."""
        slot = lease.slot
        sending = asyncio.ensure_future(_generate(slot.client, requests))
        lost = asyncio.ensure_future(slot.health.lost.wait())
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
            scheduler.release(lease, None, failed="request")
            raise RetryableEndpointError(f"{slot.name} is out of rotation")
        try:
            generation = sending.result()
        except RetryableEndpointError as error:
            # A server that asks to be called later (Retry-After) is pacing, not failing.
            paced = error.retry_after is not None
            scheduler.release(lease, None, failed="request" if paced else "endpoint")
            log.info("row %d on %s: %s (will retry)", lease.task.row, slot.name, error)
            raise
        except FatalEndpointError as error:
            scheduler.release(lease, None, failed="request")
            if isinstance(error, RowError):
                log.info(
                    "row %d on %s: %s (not sent there again)", lease.task.row, slot.name, error
                )
            raise
        except BaseException:
            scheduler.release(lease, None)
            raise
        scheduler.release(lease, generation)
        return _Answer(lease, generation)

    async def _record(self, result: Result) -> None:
        payload = manifest_body(result.task.body, self.payload_base)
        # Shielded: once the images are being written, the manifest line follows them.
        try:
            line = await asyncio.shield(self.group.write(result, payload))
        except OSError as error:  # a full disk: the row is not done; stop rather than fail them all
            self._stop(f"cannot write to {self.job.out_dir}: {error}; the row is sent next run")
            return
        if line.status != result.status:  # the file system refused this row's file names
            result = dataclasses.replace(result, status="failed", error=line.error, generation=None)
        if result.status == "ok":
            self.ok += 1
            self.images += len(result.generation.images) if result.generation else 0
        else:
            self.failed += 1
            if len(self.failed_rows) < FAILED_ROWS_SHOWN:
                self.failed_rows.append(FailedRow(result.task.row, result.error or "failed"))
            log.warning(
                "row %d failed after %s: %s",
                result.task.row,
                counted(result.attempts, "attempt"),
                result.error,
            )
        self.reporter.row_finished(result)

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

    def _interrupted(self) -> None:
        self.interrupted = True
        self._stop("interrupted: finishing the rows in flight (again to stop now)")

    def _write_results(self, sheet: Prepared) -> tuple[Path, ...]:
        rows = ((built.row, built.task.key if built.kept else None) for built in sheet.built)
        xlsx = self.job.sheet.suffix.lower() == ".xlsx"
        expanding = sheet.plan.expanded_rows > 0
        return tuple(self.store.write_results(rows, list(sheet.headers), xlsx, expanding=expanding))


async def _generate(client: EndpointClient, requests: RowRequests) -> Generation:
    """Make the row's request for this endpoint's flavor, then send it. Made inside the sending
    task, so an image that cannot be read fails the leg like any error, releasing its lease."""
    return await client.generate(requests.to(client.flavor))


def _settle(scheduler: Scheduler, task: Task) -> Callable[[asyncio.Task[None]], None]:
    return lambda _: scheduler.settle(task)


def _retry_wait(job: JobSpec) -> Callable[[RetryCallState], float]:
    backoff = row_backoff(job.retry)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, RetryableEndpointError) and error.retry_after is not None:
            return error.retry_after  # as the server asked (capped by the client)
        if isinstance(error, RowError) or (isinstance(error, EndpointError) and not error.status):
            return 0.0  # the endpoint failed, or the row did there: another one takes it at once
        return backoff(state)

    return wait
