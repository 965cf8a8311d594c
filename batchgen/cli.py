"""The command line: parses arguments, calls one async entry point, turns errors into exit codes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler

from batchgen.errors import BatchgenError
from batchgen.export import FORMATS, ExportOptions, parse_size
from batchgen.export.options import Format
from batchgen.export.view import export_with_progress
from batchgen.job import JobSpec, load_job, parse_set
from batchgen.payload import manifest_body
from batchgen.plan import check_only, first_tasks, validate
from batchgen.records import Reporter
from batchgen.report import LogReporter, RichReporter, not_file_only
from batchgen.runner import RunOptions, run_batch
from batchgen.store import peek_state

EXIT_INTERRUPTED = 130
T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchgen")
@click.option("-v", "--verbose", is_flag=True, help="Log each retry and endpoint change.")
def cli(verbose: bool) -> None:
    """Turn a spreadsheet of prompts into images on Stable Diffusion web UI servers."""
    _setup_logging(verbose)


def _source_options(func: Any) -> Any:
    func = click.option(
        "--set",
        "set_fields",
        multiple=True,
        metavar="FIELD=VALUE",
        help="A default for every row (repeatable), e.g. --set steps=20.",
    )(func)
    func = click.option(
        "--endpoint",
        "endpoints",
        multiple=True,
        metavar="URL",
        help="A web UI server (repeatable; replaces the job's): http://host:7860 or sim://.",
    )(func)
    return click.argument("source", type=click.Path(path_type=Path))(func)


@cli.command()
@_source_options
@click.option("--out", type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--dry-run", is_flag=True, help="Check the sheet, print the first requests, send nothing."
)
@click.option("--fresh", is_flag=True, help="Move an existing output folder aside and start again.")
@click.option("--retry-failed", is_flag=True, help="Send only the rows that failed last time.")
@click.option("--no-check", is_flag=True, help="Skip checking rows against the endpoints.")
def run(
    source: Path,
    endpoints: Sequence[str],
    set_fields: Sequence[str],
    out: Path | None,
    dry_run: bool,
    fresh: bool,
    retry_failed: bool,
    no_check: bool,
) -> None:
    """Send every row of SOURCE (a .toml job or a sheet) and write images and a manifest."""
    if fresh and retry_failed:
        raise click.UsageError("--fresh starts an empty folder, where no row has failed yet")
    job = _load(source, endpoints, set_fields, out)
    if dry_run:
        _guarded(lambda: _dry_run(job))
        return
    options = RunOptions(fresh=fresh, retry_failed=retry_failed, check=not no_check)
    summary = _guarded(lambda: asyncio.run(run_batch(job, options, _reporter())))
    sys.exit(summary.exit_code)


@cli.command()
@_source_options
def check(source: Path, endpoints: Sequence[str], set_fields: Sequence[str]) -> None:
    """Check the sheet and every endpoint that may get a row; send no generation request."""
    job = _load(source, endpoints, set_fields, None)
    lines = _guarded(lambda: asyncio.run(check_only(job)))
    for line in lines:
        click.echo(line)


@cli.command()
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="New folder for the replay."
)
@click.option("--rows", "rows_text", metavar="ROWS", help="Only these rows, e.g. 2,5-9.")
@click.option(
    "--endpoint",
    "endpoints",
    multiple=True,
    metavar="URL",
    help="Send to this server instead of the recorded ones (repeatable).",
)
def replay(out_dir: Path, out: Path, rows_text: str | None, endpoints: Sequence[str]) -> None:
    """Send the requests recorded in OUT_DIR again and say, per row, if the images are identical."""
    from batchgen.replay import parse_rows
    from batchgen.replay import replay as replay_folder

    rows = _guarded(lambda: parse_rows(rows_text)) if rows_text else None
    summary = _guarded(
        lambda: asyncio.run(replay_folder(out_dir, out, rows=rows, endpoints=endpoints))
    )
    for row in summary.rows:
        click.echo(row.describe())
    click.echo(summary.describe(), err=True)
    sys.exit(summary.exit_code)


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS))
@click.option("--to", "dest", required=True, metavar="DEST", help="A folder or s3://bucket/prefix.")
@click.option("--captions", is_flag=True, help="imagefolder: NAME.txt beside each image.")
@click.option("--split-by", metavar="COLUMN", help="A note column naming each row's split.")
@click.option("--max-per-shard", default=10_000, show_default=True, help="Images per shard.")
@click.option("--max-shard-size", default="1GB", show_default=True, help="Bytes per shard.")
def export(
    runs: Sequence[Path],
    fmt: Format,
    dest: str,
    captions: bool,
    split_by: str | None,
    max_per_shard: int,
    max_shard_size: str,
) -> None:
    """Export the ok images of run folders RUNS as a dataset (with a card) in DEST."""

    def export_all() -> str:
        options = ExportOptions(
            tuple(runs), fmt, dest, captions, split_by, max_per_shard, parse_size(max_shard_size)
        )
        return export_with_progress(options, _console).describe()

    click.echo(_guarded(export_all), err=True)


@cli.command()
@click.option("--port", default=7860, show_default=True, help="Port on 127.0.0.1 (0: any free).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, exists=True),
    help="A TOML file of simulator settings.",
)
def sim(port: int, host: str, config_file: Path | None) -> None:
    """Serve the built-in web UI simulator until interrupted (placeholder images, not a model)."""
    from batchgen.sim import SimConfig, serve

    config = SimConfig.from_file(config_file) if config_file else SimConfig()
    serve(port, config, host=host)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as error:
        error.show()
        sys.exit(2)


def _load(
    source: Path, endpoints: Sequence[str], set_fields: Sequence[str], out: Path | None
) -> JobSpec:
    return _guarded(
        lambda: load_job(source, endpoints=endpoints, out=out, set_fields=parse_set(set_fields))
    )


def _dry_run(job: JobSpec) -> None:
    plan = validate(job, peek_state(job.out_dir))
    click.echo(f"# {plan.describe()}; nothing is sent (--dry-run)", err=True)
    for task in first_tasks(job, 3):
        shown = {
            "row": task.row,
            "route": task.route,
            "body": manifest_body(task.body, job.sheet.parent),
        }
        click.echo(json.dumps(shown, ensure_ascii=False, indent=2))


def _guarded(call: Callable[[], T]) -> T:
    """Run a step; user errors become a message and an exit code, not a traceback."""
    try:
        return call()
    except BatchgenError as error:
        if os.environ.get("BATCHGEN_RAISE_ERRORS"):
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)


_console = Console(stderr=True)


def _reporter() -> Reporter:
    return RichReporter(_console) if _console.is_terminal else LogReporter()


def _setup_logging(verbose: bool) -> None:
    handler: logging.Handler
    if _console.is_terminal:
        handler = RichHandler(console=_console, show_path=False, show_time=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    handler.addFilter(not_file_only)
    logger = logging.getLogger("batchgen")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
