"""What `batchgen export` shows: a progress bar on a terminal, periodic lines otherwise."""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from batchgen.outputs.export.options import ExportOptions, Watcher
from batchgen.outputs.export.run import ExportSummary, export_runs

log = logging.getLogger(__name__)


def export_with_progress(options: ExportOptions, console: Console) -> ExportSummary:
    """Run the export, showing how far it is; the summary is the caller's to print."""
    if console.is_terminal:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(f"exporting {options.format}", total=None)
            return export_runs(
                options, lambda done, total: bar.update(task, completed=done, total=total)
            )
    return export_runs(options, _every(10.0, options.format))


def _every(seconds: float, name: str) -> Watcher:
    last = time.monotonic()

    def watch(done: int, total: int) -> None:
        nonlocal last
        if time.monotonic() - last >= seconds:
            last = time.monotonic()
            log.warning("%s: %s of %s images", name, f"{done:,}", f"{total:,}")

    return watch
