"""The command line: parses arguments, calls one async entry point, turns errors into exit codes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler

from batchgen.errors import BatchgenError

if TYPE_CHECKING:
    from batchgen.job import JobSpec
    from batchgen.outputs.export.options import Format
    from batchgen.records import Reporter

# The stages (pandas, pydantic, aiohttp) are imported inside the commands, where a Ctrl-C
# while they load is caught like any other.

EXIT_INTERRUPTED = 130
T = TypeVar("T")


VERBOSE_HELP = "Log each retry and endpoint change."


def _verbose_option(func: Any) -> Any:
    """-v after the subcommand too (`batchgen run SOURCE -v`), as the README shows it."""

    def turn_on(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value and _console_handler is not None:  # set up by the group, which runs first
            _console_handler.setLevel(logging.INFO)

    return click.option(
        "-v", "--verbose", is_flag=True, expose_value=False, callback=turn_on, help=VERBOSE_HELP
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchgen")
@click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
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
    func = click.option(
        "--shards",
        "shard_count",
        type=int,
        metavar="N",
        help="Shard count when the index comes from the scheduler (Kubernetes: completions).",
    )(func)
    func = click.option(
        "--shard",
        "shard_spec",
        metavar="I/N",
        help="Run only shard I of N (default: from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX).",
    )(func)
    func = _verbose_option(func)
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
@click.option(
    "--relearn-speeds",
    is_flag=True,
    help="Measure the endpoints' speeds anew instead of starting from those earlier runs "
    "measured (after a GPU or driver change).",
)
def run(
    source: Path,
    endpoints: Sequence[str],
    set_fields: Sequence[str],
    shard_spec: str | None,
    shard_count: int | None,
    out: Path | None,
    dry_run: bool,
    fresh: bool,
    retry_failed: bool,
    no_check: bool,
    relearn_speeds: bool,
) -> None:
    """Send every row of SOURCE (a .toml job or a sheet) and write images and a manifest."""
    if fresh and retry_failed:
        raise click.UsageError("--fresh starts an empty folder, where no row has failed yet")
    from batchgen.run.runner import RunOptions, run_batch

    job = _load(source, endpoints, set_fields, out, shard_spec, shard_count)
    if dry_run:
        _guarded(lambda: _dry_run(job))
        return
    options = RunOptions(
        fresh=fresh,
        retry_failed=retry_failed,
        check=not no_check,
        recall_speeds=not relearn_speeds,
    )
    summary = _guarded(lambda: asyncio.run(run_batch(job, options, _reporter())))
    sys.exit(summary.exit_code)


@cli.command()
@_source_options
def check(
    source: Path,
    endpoints: Sequence[str],
    set_fields: Sequence[str],
    shard_spec: str | None,
    shard_count: int | None,
) -> None:
    """Check the sheet and every endpoint that may get a row; send no generation request."""
    from batchgen.run.plan import check_only

    job = _load(source, endpoints, set_fields, None, shard_spec, shard_count)
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
@_verbose_option
def replay(out_dir: Path, out: Path, rows_text: str | None, endpoints: Sequence[str]) -> None:
    """Send the requests recorded in OUT_DIR again and say, per row, if the images are identical."""
    from batchgen.run.replay import parse_rows
    from batchgen.run.replay import replay as replay_folder

    rows = _guarded(lambda: parse_rows(rows_text)) if rows_text else None
    summary = _guarded(
        lambda: asyncio.run(replay_folder(out_dir, out, rows=rows, endpoints=endpoints))
    )
    for row in summary.rows:
        click.echo(row.describe())
    click.echo(summary.describe(), err=True)
    sys.exit(summary.exit_code)


@cli.command()
@click.argument(
    "shard_dirs", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False)
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="New folder for the whole run."
)
@click.option("--copy", is_flag=True, help="Copy images instead of hard-linking them.")
def merge(shard_dirs: Sequence[Path], out: Path, copy: bool) -> None:
    """Combine the shard folders of one job into one run folder, each row exactly once."""
    from batchgen.outputs.merge import merge_shards

    summary = _guarded(lambda: merge_shards(shard_dirs, out, copy=copy))
    click.echo(summary.describe(), err=True)
    sys.exit(summary.exit_code)


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format", "fmt", required=True, type=click.Choice(["imagefolder", "webdataset", "parquet"])
)
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
        from batchgen.outputs.export import ExportOptions, parse_size
        from batchgen.outputs.export.view import export_with_progress

        options = ExportOptions(
            tuple(runs), fmt, dest, captions, split_by, max_per_shard, parse_size(max_shard_size)
        )
        return export_with_progress(options, _console).describe()

    click.echo(_guarded(export_all), err=True)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
def report(run_dir: Path) -> None:
    """Write RUN_DIR/report/index.html: summary, failed rows, thumbnails, filters (from disk)."""
    from batchgen.outputs.gallery import build_report

    if not (run_dir / "manifest.jsonl").is_file():
        raise click.UsageError(f"{run_dir}: no manifest.jsonl here; give a run's output folder")
    click.echo(build_report(run_dir))


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--watch", is_flag=True, help="Refresh every 2 s until the run ends (Ctrl-C stops).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
def status(run_dir: Path, watch: bool, as_json: bool) -> None:
    """Rows done, failed and to go, images/s, ETA and each endpoint, during a run or after."""
    import time

    from batchgen.outputs.status import read_status

    while True:
        shown = read_status(run_dir)
        if shown is None:
            raise click.UsageError(f"{run_dir}: no status.json or manifest.jsonl; not a run folder")
        if as_json:
            click.echo(json.dumps(shown.to_json(), ensure_ascii=False))
        else:
            if watch and _console.is_terminal:
                click.clear()
            click.echo("\n".join(shown.lines()))
        if not (watch and shown.live):
            break
        time.sleep(2.0)
    sys.exit(1 if shown.state in ("dead", "stale") else 0)


def _knob_options(func: Any) -> Any:
    """One --option per simulator knob (what a sim:// query or a [sim] table can set)."""
    from batchgen.sim.config import knobs

    for name, default, text in reversed(knobs()):
        flag = "--" + name.replace("_", "-")
        func = click.option(flag, name, metavar="VALUE", help=f"{text} [default: {default}]")(func)
    return func


@cli.command(context_settings={"max_content_width": 100})
@click.option("--port", default=7860, show_default=True, help="Port on 127.0.0.1 (0: any free).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A TOML file of simulator settings (the options below override it).",
)
@_knob_options
def sim(port: int, host: str, config_file: Path | None, **knob_values: str | None) -> None:
    """Serve the built-in web UI simulator until interrupted (placeholder images, not a model)."""
    from batchgen.sim import SimConfig, serve

    given = {name: value for name, value in knob_values.items() if value is not None}
    try:
        config = SimConfig.from_file(config_file) if config_file else SimConfig()
        config = config.replace(given)
    except ValueError as error:  # a bad value or key, or TOML that does not parse
        where = f"{config_file}: " if config_file else ""
        click.echo(f"error: {where}{error}", err=True)
        sys.exit(2)
    try:
        serve(port, config, host=host)
    except OSError as error:
        click.echo(f"error: {error.strerror or error}", err=True)
        sys.exit(2)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):  # Ctrl-C outside a run, e.g. at start
        _say_interrupted()
        _exit_quietly_on_ctrl_c()
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as error:
        error.show()
        sys.exit(2)
    except SystemExit as ending:
        if ending.code == EXIT_INTERRUPTED:
            _exit_quietly_on_ctrl_c()
        raise


def _say_interrupted() -> None:
    click.echo("interrupted; run the same command again to resume", err=True)


def _exit_quietly_on_ctrl_c() -> None:
    """Another Ctrl-C while Python shuts down (threads joining) ends it without a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _load(
    source: Path,
    endpoints: Sequence[str],
    set_fields: Sequence[str],
    out: Path | None,
    shard_spec: str | None = None,
    shard_count: int | None = None,
) -> JobSpec:
    from batchgen.job import load_job, parse_set
    from batchgen.outputs.shards import resolve_shard

    def load() -> JobSpec:
        job = load_job(source, endpoints=endpoints, out=out, set_fields=parse_set(set_fields))
        shard = resolve_shard(shard_spec, shard_count or job.shards, os.environ)
        return job.model_copy(update={"shard": shard})

    return _guarded(load)


def _dry_run(job: JobSpec) -> None:
    from batchgen.outputs.store import peek_state
    from batchgen.rows.payload import manifest_body
    from batchgen.rows.prepare import prepare
    from batchgen.rows.workflow import bind_job
    from batchgen.run.plan import first_tasks

    prepared = prepare(job, peek_state(job.out_dir))
    try:
        plan = prepared.require_valid()
        first = first_tasks(prepared, 3)
    finally:
        prepared.close()
    share = f"shard {job.shard}: " if job.shard else ""
    click.echo(f"# {share}{plan.describe()}; nothing is sent (--dry-run)", err=True)
    for line in plan.expansion_lines():
        click.echo(f"# {line}", err=True)
    binding = bind_job(job) if job.backend == "comfy" else None
    for task in first:
        shown: dict[str, Any] = {
            "row": task.row,
            "route": task.route,
            "body": manifest_body(task.body, job.sheet.parent),
        }
        if binding is not None:  # what ComfyUI would get: images by the path they are read from
            shown["graph"] = binding.fill(task.body, lambda ref: str(ref.path)).graph
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
        _say_interrupted()
        sys.exit(EXIT_INTERRUPTED)


_console = Console(stderr=True)


def _reporter() -> Reporter:
    from batchgen.report import LogReporter, RichReporter

    return RichReporter(_console) if _console.is_terminal else LogReporter()


_console_handler: logging.Handler | None = None


def _setup_logging(verbose: bool) -> None:
    """The console handler; a -v after the subcommand lowers its level later."""
    global _console_handler
    logger = logging.getLogger("batchgen")
    handler: logging.Handler
    if _console.is_terminal:
        handler = RichHandler(console=_console, show_path=False, show_time=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    from batchgen.report import not_file_only

    handler.addFilter(not_file_only)
    logger.addHandler(handler)
    _console_handler = handler
    logger.setLevel(logging.INFO)
