"""One export: plan the samples, check DEST, write the format, then the card (written last)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from batchgen.errors import BatchgenError, ConfigError
from batchgen.outputs.export.card import dataset_card
from batchgen.outputs.export.dest import PARTIAL, STATE_FILE, Destination
from batchgen.outputs.export.imagefolder import write_imagefolder
from batchgen.outputs.export.options import ExportOptions, FormatWriter, Progress, Watcher, Written
from batchgen.outputs.export.parquet import write_parquet
from batchgen.outputs.export.samples import ExportPlan, plan_export
from batchgen.outputs.export.webdataset import write_webdataset

log = logging.getLogger(__name__)

CARD = "README.md"
WRITERS: dict[str, FormatWriter] = {
    "imagefolder": write_imagefolder,
    "webdataset": write_webdataset,
    "parquet": write_parquet,
}
SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")


def _dest_errors() -> tuple[type[BaseException], ...]:
    """What a DEST backend raises: OSError, NotImplementedError (a backend that cannot write, such
    as http://), and botocore's own errors (no credentials...)."""
    found: tuple[type[BaseException], ...] = (OSError, NotImplementedError)
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return found
    return (*found, BotoCoreError)


DEST_ERRORS = _dest_errors()


class ExportWriteError(BatchgenError):
    """Writing to DEST failed midway; what is there is whole, and a rerun finishes it."""


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """How an export went."""

    dest: str
    format: str
    plan: ExportPlan
    written: Written
    seconds: float

    def describe(self) -> str:
        images = len(self.plan.samples)
        runs = self.plan.runs
        kept = f", {self.written.kept:,} kept from an earlier attempt" if self.written.kept else ""
        rate = images / self.seconds if self.seconds > 0 else 0.0
        return (
            f"exported {images:,} images from {len(runs)} run(s) as {self.format} to {self.dest} "
            f"in {self.seconds:.1f}s ({rate:,.0f} images/s; {self.written.written:,} files "
            f"written{kept}); rows: {sum(r.ok_rows for r in runs):,} exported, "
            f"{sum(r.failed_rows for r in runs):,} failed, "
            f"{sum(r.left_out_rows for r in runs):,} left out"
        )


def export_runs(options: ExportOptions, watch: Watcher | None = None) -> ExportSummary:
    """Export the ok images of the runs to DEST; every problem found before writing raises."""
    started = time.monotonic()
    plan = plan_export(options.runs, options.split_by)
    if not plan.samples:
        raise ConfigError(
            f"nothing to export: no row of {', '.join(map(str, options.runs))} ended ok with images"
        )
    dest = Destination(options.to)
    fingerprint = plan.fingerprint(options.settings())
    _claim(dest, options, fingerprint)
    log.info("exporting %d images to %s as %s", len(plan.samples), options.shown_to, options.format)
    try:
        dest.remove_partials()
        progress = _counter(len(plan.samples), watch) if watch else _no_progress
        written = WRITERS[options.format](plan, dest, options, progress)
        dest.put_bytes(CARD, dataset_card(plan, options, fingerprint).encode())
    except DEST_ERRORS as error:
        raise ExportWriteError(
            f"{_failed(options, 'writing failed', error)}; the files there are whole, run the "
            "same command again to finish"
        ) from None
    return ExportSummary(
        options.shown_to,
        options.format,
        plan,
        Written(written.written + 1, written.kept),
        time.monotonic() - started,
    )


def _claim(dest: Destination, options: ExportOptions, fingerprint: str) -> None:
    """DEST is empty or holds this very export (then it resumes); mark it, or say why not."""
    try:
        names = [n for n in dest.names() if not os.path.basename(n).startswith(PARTIAL)]
        state = dest.read_state()
        if names and (state is None or state.get("fingerprint") != fingerprint):
            raise ConfigError(
                f"--to {options.shown_to}: it already holds {len(names):,} file(s) of something "
                "else (another export, or other settings); choose an empty folder or prefix, or "
                "remove it first"
            )
        if state is None:
            data = {"fingerprint": fingerprint, "format": options.format}
            dest.put_bytes(STATE_FILE, json.dumps(data, sort_keys=True).encode() + b"\n")
    except DEST_ERRORS as error:
        raise ConfigError(
            f"{_failed(options, 'cannot write there', error)}; check that the folder or bucket "
            "exists and that you may write to it; nothing was exported"
        ) from None


def _failed(options: ExportOptions, what: str, error: BaseException) -> str:
    """`--to DEST: what (why)`, without a credential from the environment or DEST's URL."""
    text = str(error) or type(error).__name__
    secrets = [os.environ.get(name) for name in SECRETS] + [urlsplit(options.to).password]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return f"--to {options.shown_to}: {what} ({text})"


def _counter(total: int, watch: Watcher) -> Progress:
    done = 0

    def progress(count: int) -> None:
        nonlocal done
        done += count
        watch(done, total)

    return progress


def _no_progress(_: int) -> None:
    """No progress shown."""
