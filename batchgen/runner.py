"""The asyncio worker pool: the only module that composes the stages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from batchgen.client import row_backoff
from batchgen.errors import (
    EndpointError,
    FatalEndpointError,
    NoEndpointError,
    RetryableEndpointError,
)
from batchgen.fleet import endpoint_views, open_fleet, watch
from batchgen.interrupts import catch_interrupts
from batchgen.job import JobSpec
from batchgen.payload import PayloadBuilder, manifest_body
from batchgen.plan import check_endpoints, validate
from batchgen.records import EndpointView, Generation, Reporter, Result, RunPlan, RunSummary, Task
from batchgen.rowindex import RowKeys
from batchgen.run_files import close_run_log, move_aside, open_run_log, public_job
from batchgen.scheduler import Lease, Policy, Scheduler
from batchgen.sheet import read_headers, read_rows
from batchgen.store import OutputStore, ResumeState, peek_state
from batchgen.writer import GroupWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run a job, beyond the job itself."""

    fresh: bool = False  # move an existing output folder aside and start again
    retry_failed: bool = False  # send only the rows that failed last time
    check: bool = True  # check rows against the endpoints before sending
    window: int = 4096  # rows the scheduler may look ahead over (bounds memory)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # retry waits; tests inject
    policy: Policy = "plan"  # how rows are spread: see scheduler.py ("greedy": the old way)


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


async def run_batch(
    job: JobSpec, options: RunOptions | None = None, reporter: Reporter | None = None
) -> RunSummary:
    """Run a job to the end (or to an interrupt) and return how it ended."""
    return await _Run(job, options or RunOptions(), reporter or _Quiet()).run()


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
        self.row_keys = RowKeys()  # row -> key for results.csv; on disk once there are many
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchgen-store")
        self.group = GroupWriter(self.store, self.writer)

    async def run(self) -> RunSummary:
        past = None if self.options.fresh else peek_state(self.job.out_dir)
        plan = validate(self.job, past, retry_failed=self.options.retry_failed)
        started = time.monotonic()
        async with open_fleet(self.job) as fleet:
            scheduler = Scheduler(
                fleet.slots, wait_all_down=self.job.wait_all_down, policy=self.options.policy
            )
            if self.options.check and self.job.check:
                await check_endpoints(self.job, fleet.answering())
            if self.options.fresh:  # only now: an invalid job leaves the folder as it was
                move_aside(self.job.out_dir)
            state = self.store.open()
            handler = open_run_log(self.job.out_dir)
            try:
                self.store.write_json("job.json", public_job(self.job, fleet.endpoints))
                self.reporter.started(plan, self.job.out_dir)
                with catch_interrupts(self._interrupted):
                    await self._send_all(scheduler, state)
            except BaseException:
                self.writer.shutdown(wait=True)  # a row being written is finished first
                self.store.close()  # and the folder is free for the next run at once
                close_run_log(handler)
                raise
            finally:
                self.writer.shutdown(wait=True)
        try:  # the run log keeps the summary too
            return self._finish(plan, started, scheduler)
        finally:
            close_run_log(handler)

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
            endpoints=tuple(endpoint_views(scheduler.slots)),
            outputs=outputs,
            stopped_reason=self.stopped_reason,
        )
        self.reporter.finished(summary)
        return summary

    async def _send_all(self, scheduler: Scheduler, state: ResumeState) -> None:
        window = asyncio.Semaphore(self.options.window)
        watcher = asyncio.create_task(watch(scheduler, self.reporter.endpoints))
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
            elapsed = time.monotonic() - clock
            result = Result(task, "failed", endpoint, attempts, str(error), None, started, elapsed)
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

    def _write_results(self) -> tuple[Path, ...]:
        headers = read_headers(self.job.sheet, self.job.sheet_name)
        rows = read_rows(self.job.sheet, self.job.sheet_name)
        xlsx = self.job.sheet.suffix.lower() == ".xlsx"
        try:
            return (
                self.store.manifest_path,
                *self.store.write_results(rows, headers, self.row_keys, xlsx),
            )
        finally:
            self.row_keys.close()


def _settle(scheduler: Scheduler, task: Task) -> Callable[[asyncio.Task[None]], None]:
    return lambda _: scheduler.settle(task)


def _retry_wait(job: JobSpec) -> Callable[[RetryCallState], float]:
    backoff = row_backoff(job.retry)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, EndpointError) and error.status is None:
            return 0.0  # the endpoint failed, not the row: another endpoint takes it at once
        return backoff(state)

    return wait
