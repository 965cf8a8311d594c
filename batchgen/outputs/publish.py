"""What a run publishes beside its outputs while it goes: status.json and the HTML report."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from batchgen.outputs.gallery import build_report
from batchgen.outputs.status import StatusFile
from batchgen.records import EndpointView, Reporter, Result, RunPlan, RunSummary

log = logging.getLogger(__name__)

REFRESH_EVERY_S = 30.0
BUILD_COST_FACTOR = 10.0  # a refresh waits this many times the last build's time: <= ~10% of a core


def published(reporter: Reporter, out_dir: Path) -> Reporter:
    """The run's reporter, plus the status file and the report (in that order: the report at the
    end reads the final status)."""
    return Fanout((reporter, StatusFile(out_dir), ReportRefresher(out_dir)))


class Fanout:
    """One Reporter that tells several."""

    def __init__(self, reporters: tuple[Reporter, ...]) -> None:
        self._reporters = reporters

    def started(self, plan: RunPlan, out_dir: Path) -> None:
        for reporter in self._reporters:
            reporter.started(plan, out_dir)

    def row_finished(self, result: Result) -> None:
        for reporter in self._reporters:
            reporter.row_finished(result)

    def endpoints(self, views: list[EndpointView]) -> None:
        for reporter in self._reporters:
            reporter.endpoints(views)

    def finished(self, summary: RunSummary) -> None:
        for reporter in self._reporters:
            reporter.finished(summary)


class RefreshPacer:
    """When the next refresh may start: `every_s` after the last one started, and no sooner than
    `factor` times its build time after it (a report of many rows takes long to build)."""

    def __init__(self, every_s: float, factor: float, now: float) -> None:
        self._every = every_s
        self._factor = factor
        self._next = now + every_s

    def due(self, now: float) -> bool:
        return now >= self._next

    def built(self, began: float, ended: float) -> None:
        self._next = began + max(self._every, self._factor * (ended - began))


class ReportRefresher:
    """A Reporter that rewrites the report now and then during a run (in a thread), paced by
    RefreshPacer, and always at the end."""

    def __init__(
        self,
        out_dir: Path,
        every_s: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        builder: Callable[[Path], object] = build_report,
    ) -> None:
        self._out_dir = out_dir
        self._clock = clock
        self._builder = builder
        self._every = REFRESH_EVERY_S if every_s is None else every_s
        self._pacer = RefreshPacer(self._every, BUILD_COST_FACTOR, clock())
        self._building: threading.Thread | None = None

    def started(self, plan: RunPlan, out_dir: Path) -> None:
        self._pacer = RefreshPacer(self._every, BUILD_COST_FACTOR, self._clock())

    def row_finished(self, result: Result) -> None:
        self._maybe_refresh()

    def endpoints(self, views: list[EndpointView]) -> None:
        self._maybe_refresh()

    def finished(self, summary: RunSummary) -> None:
        self.wait()
        self._build()

    def wait(self) -> None:
        """Return when the refresh in progress, if any, has ended."""
        if self._building is not None:
            self._building.join()

    def _maybe_refresh(self) -> None:
        if (self._building and self._building.is_alive()) or not self._pacer.due(self._clock()):
            return
        self._building = threading.Thread(target=self._build, name="batchgen-report", daemon=True)
        self._building.start()

    def _build(self) -> None:
        began = self._clock()
        try:
            self._builder(self._out_dir)
        except OSError as error:  # a report must never stop the run
            log.warning("cannot write the report in %s: %s", self._out_dir, error)
        self._pacer.built(began, self._clock())
