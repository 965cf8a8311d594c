"""What a run publishes beside its outputs while it goes: status.json and the HTML report."""

from __future__ import annotations

from pathlib import Path

from batchgen.outputs.gallery import ReportRefresher
from batchgen.outputs.status import StatusFile
from batchgen.records import EndpointView, Reporter, Result, RunPlan, RunSummary


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
