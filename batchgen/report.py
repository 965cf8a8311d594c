"""Progress while a run goes on and the summary at its end, fed by the runner's events."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from batchgen.records import EndpointView, Result, RunPlan, RunSummary, simulator_note
from batchgen.words import counted

log = logging.getLogger(__name__)
# Lines the terminal already shows in its own way: the run log gets them, the console does not.
FILE_ONLY = {"file_only": True}


def not_file_only(record: logging.LogRecord) -> bool:
    """A logging filter for console handlers."""
    return not getattr(record, "file_only", False)


class _Tally:
    """Counts shared by both reporters."""

    def __init__(self) -> None:
        self.plan: RunPlan | None = None
        self.ok = self.failed = self.images = 0
        self.started = time.monotonic()
        self.views: list[EndpointView] = []

    def start(self, plan: RunPlan) -> None:
        self.plan = plan
        self.started = time.monotonic()

    def add(self, result: Result) -> None:
        if result.status == "ok":
            self.ok += 1
            self.images += len(result.generation.images) if result.generation else 0
        else:
            self.failed += 1

    @property
    def to_send(self) -> int:
        return (self.plan.to_go + self.plan.to_retry) if self.plan else 0

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.images / elapsed if elapsed > 0 else 0.0

    def eta(self) -> str:
        finished = self.ok + self.failed
        remaining = self.to_send - finished
        if finished == 0 or remaining <= 0:
            return "--"
        seconds = (time.monotonic() - self.started) / finished * remaining
        return duration(seconds)

    def line(self) -> str:
        return (
            f"{self.ok + self.failed:,}/{counted(self.to_send, 'row')} ({self.failed:,} failed), "
            f"{self.rate():.1f} images/s, ETA {self.eta()}"
        )


class LogReporter:
    """Plain periodic log lines, for runs whose output is not a terminal."""

    def __init__(self, every_s: float = 10.0) -> None:
        self._tally = _Tally()
        self._every = every_s
        self._last = 0.0

    def started(self, plan: RunPlan, out_dir: Path) -> None:
        self._tally.start(plan)
        log.warning("%s; output in %s", plan.describe(), out_dir)
        for note in plan.notes():
            log.warning("%s", note)

    def row_finished(self, result: Result) -> None:
        self._tally.add(result)

    def endpoints(self, views: list[EndpointView]) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            return
        self._last = now
        elapsed = now - self._tally.started
        states = "; ".join(_endpoint_text(view, elapsed) for view in views)
        waiting = _all_down(views)
        log.warning("%s; %s", self._tally.line(), f"{waiting}; {states}" if waiting else states)

    def finished(self, summary: RunSummary) -> None:
        for line in summary_lines(summary):
            log.warning("%s", line)


class RichReporter:
    """A live progress view on a terminal: rows, images per second, ETA, and each endpoint."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._tally = _Tally()
        self._live = Live(console=console, refresh_per_second=4, transient=True)

    def started(self, plan: RunPlan, out_dir: Path) -> None:
        self._tally.start(plan)
        line = f"{plan.describe()}; output in {out_dir}"
        self._console.print(line, highlight=False)
        log.info("%s", line, extra=FILE_ONLY)
        for note in plan.notes():
            self._console.print(Text(note, style="bold yellow"))
            log.warning("%s", note, extra=FILE_ONLY)
        self._live.start()
        self._refresh()

    def row_finished(self, result: Result) -> None:
        self._tally.add(result)
        self._refresh()

    def endpoints(self, views: list[EndpointView]) -> None:
        self._tally.views = views
        self._refresh()

    def finished(self, summary: RunSummary) -> None:
        self._live.stop()
        for line in summary_lines(summary):
            self._console.print(line, highlight=False)
            log.info("%s", line, extra=FILE_ONLY)

    def _refresh(self) -> None:
        tally = self._tally
        total = max(tally.to_send, 1)
        width = 30
        filled = int(width * (tally.ok + tally.failed) / total)
        bar = Text("█" * filled + "░" * (width - filled), style="green")
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        columns = ("endpoint", "state", "checkpoint", "running", "done", "failed", "images/s")
        for column in (*columns, "switches"):
            table.add_column(column)
        elapsed = max(time.monotonic() - tally.started, 1e-9)
        for view in tally.views:
            table.add_row(
                view.name,
                _state(view) if view.up else f"[red]{_state(view)}[/red]",
                _model(view),
                str(view.running),
                str(view.done),
                str(view.failed),
                f"{view.images / elapsed:.1f}",
                str(view.switches),
            )
        waiting = _all_down(tally.views)
        head = Text.assemble(bar, " ", tally.line())
        if waiting:
            self._live.update(Group(head, Text(waiting, style="bold red"), table))
        else:
            self._live.update(Group(head, table))


def summary_lines(summary: RunSummary) -> list[str]:
    """The closing lines of a run, the same on a terminal and in a log."""
    lines = []
    if summary.stopped_reason and not summary.interrupted:
        lines.append(f"stopped: {summary.stopped_reason}")
    state = "interrupted" if summary.interrupted else "finished"
    rate = summary.images / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    lines.append(
        f"{state} in {duration(summary.elapsed_s)}: {summary.ok:,} ok, {summary.failed:,} failed, "
        f"{summary.not_run:,} not run, {summary.plan.done:,} done earlier; "
        f"{counted(summary.images, 'image')} ({rate:.1f}/s)"
    )
    for view in summary.endpoints:
        lines.append(f"  {_endpoint_text(view, summary.elapsed_s)}")
    simulators = [view.name for view in summary.endpoints if view.simulator]
    if simulators:
        lines.append(simulator_note(simulators))
    if summary.failed_rows:
        lines.append("failed rows:")
        lines += [f"  row {failed.row}: {failed.error}" for failed in summary.failed_rows]
        more = summary.failed - len(summary.failed_rows)
        if more > 0:
            lines.append(f"  and {more:,} more (see manifest.jsonl)")
    if summary.failed or summary.not_run:
        lines.append("run the same command again to resume; --retry-failed sends only failed rows")
    lines.append(f"outputs: {', '.join(str(path) for path in summary.outputs)}")
    return lines


def _endpoint_text(view: EndpointView, elapsed_s: float) -> str:
    rate = view.images / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"{view.name} ({_state(view)}): {view.done:,} done, "
        f"{counted(view.failed, 'failed attempt')}, "
        f"{counted(view.images, 'image')} ({rate:.2f}/s), "
        f"{counted(view.switches, 'checkpoint switch', 'checkpoint switches')}"
    )


def _model(view: EndpointView) -> str:
    shown = view.loaded or "?"
    if view.vae and view.vae not in ("Automatic", "None"):
        shown += f" + {view.vae}"
    return shown


def _state(view: EndpointView) -> str:
    suffix = ", simulator" if view.simulator else ""
    if view.up:
        return "up" + suffix
    return ("down" if view.down_s is None else f"down {duration(view.down_s)}") + suffix


def _all_down(views: list[EndpointView]) -> str:
    """The status line while no endpoint answers: the run waits (wait_all_down), rows are kept."""
    if not views or any(view.up for view in views):
        return ""
    since = min((view.down_s for view in views if view.down_s is not None), default=0.0)
    return (
        f"waiting: every endpoint is down (for {duration(since)}); rows are kept, not failed, "
        "until one answers or wait_all_down runs out"
    )


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
