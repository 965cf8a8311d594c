"""The one pass over the sheet before anything is sent: every row read, expanded and built once.

What leaves is a `Prepared`: the plan's counts, the sheet's problems (each said once), and every
built request in sheet order, kept in a Spool. Everything later reads that instead of the sheet:
the checks against the servers, the keys of a shard, --dry-run, the sending pass and results.csv.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from batchgen.backends.comfy.checks import binding_problems
from batchgen.errors import InputError, Problem
from batchgen.job import JobSpec
from batchgen.outputs.shards import keeps
from batchgen.outputs.store import DONE, SIMULATED, ResumeState, check_template
from batchgen.records import EXPANDED_SHOWN, RowCount, RunPlan, SheetRow, Task
from batchgen.rows.columns import Target, resolve
from batchgen.rows.expand import Expander
from batchgen.rows.payload import PayloadBuilder
from batchgen.rows.sheet import (
    header_row_guess,
    read_headers,
    read_rows,
    separator_problem,
    sheet_problems,
)
from batchgen.rows.spool import Spool


@dataclass(frozen=True, slots=True)
class Built:
    """One request as the pass built it, with the row it came from (for results.csv)."""

    row: SheetRow  # as read; for an expansion, that expansion's row
    task: Task  # with problems: a draft (cells that did not build left out), never sent
    kept: bool  # in this run's shard (always, unsharded)
    valid: bool  # built without a problem


@dataclass(frozen=True)
class Prepared:
    """The sheet, read once: what the run will do, and every request it could send."""

    plan: RunPlan
    built: Spool[Built]
    problems: tuple[Problem, ...]  # the sheet's and the job's; empty when every row built
    headers: tuple[str, ...]
    metadata_columns: tuple[str, ...]  # columns that are not request fields: never sent

    def tasks(self) -> Iterator[Task]:
        """The requests of this run's shard, in sheet order."""
        return (built.task for built in self.built if built.kept and built.valid)

    def every_task(self) -> Iterator[Task]:
        """Every request that built, whichever shard it falls in."""
        return (built.task for built in self.built if built.valid)

    def require_valid(self) -> RunPlan:
        """The plan, or InputError listing every problem."""
        if self.problems:
            raise InputError(list(self.problems))
        return self.plan

    def close(self) -> None:
        self.built.close()


def prepare(
    job: JobSpec,
    state: ResumeState | None = None,
    *,
    retry_failed: bool = False,
    seen: Callable[[Task], None] | None = None,
) -> Prepared:
    """Read the whole sheet once and build every row; collect every problem instead of raising.
    `seen` gets each request of this shard (e.g. to compare the sheet with a folder's past)."""
    headers = read_headers(job.sheet, **job.sheet_options)
    builder = PayloadBuilder(job, headers)
    reading = sheet_problems(job.sheet, **job.sheet_options)
    problems: list[Problem] = [*builder.header_problems, *builder.default_problems()]
    if builder.binding is not None:
        problems.extend(binding_problems(job, builder, builder.binding))
    try:
        check_template(job.output.filename, builder.metadata_columns)
    except Exception as error:  # a ConfigError reads better beside the sheet's problems
        problems.append(Problem(file="job", message=str(error)))
    built: Spool[Built] = Spool()
    done = failed = new = rows = images = expanding = simulated = 0
    expanded: list[RowCount] = []
    past_rows = state.rows if state and state.rows else None  # a lookup per row, not a set
    expander = Expander(job, builder.target_of)
    for sheet_row in read_rows(job.sheet, **job.sheet_options):
        rows += 1
        try:
            expansion = expander.plan(sheet_row)
        except InputError as error:
            problems.extend(error.problems)
            draft, _ = builder.draft(sheet_row)  # its other cells are still checked on servers
            built.append(Built(sheet_row, draft, True, False))
            continue
        if expansion.axes:
            expanding += 1
            if len(expanded) < EXPANDED_SHOWN:
                expanded.append(RowCount(sheet_row.row, expansion.requests))
        said: set[Problem] = set()  # each expansion of a bad row has the same problem: say it once
        for row in expansion.rows():
            task, row_problems = builder.draft(row)
            if row_problems:
                problems.extend(p for p in row_problems if p not in said)
                said.update(row_problems)
                built.append(Built(row, task, True, False))
                continue
            kept = keeps(job.shard, task)  # every row is built: keys count twins over the sheet
            built.append(Built(row, task, kept, True))
            if not kept:
                continue
            if seen is not None:
                seen(task)
            images += images_of(task.body)
            past = past_rows.get(task.key) if past_rows is not None else None
            if past is None:
                new += 1
            elif past.status in DONE:
                done += 1
                simulated += past.status == SIMULATED
            else:
                failed += 1
    found: list[Problem] = []
    if problems or reading:
        found = [*reading, *_without_cascades(job, headers, problems)]
    plan = RunPlan(
        done + failed + new,
        done,
        failed,
        new,
        0,
        simulated=simulated,
        sheet_rows=rows,
        images=images,
        expanded=tuple(expanded),
        expanded_rows=expanding,
    )
    if retry_failed:
        plan = dataclasses.replace(plan, to_go=0, skipped=new)
    return Prepared(plan, built, tuple(found), tuple(headers), builder.metadata_columns)


def images_of(body: Mapping[str, Any]) -> int:
    """Images one request asks for."""
    count = 1
    for name in ("batch_size", "n_iter"):
        value = body.get(name)
        count *= value if isinstance(value, int) and value > 0 else 1
    return count


def _without_cascades(job: JobSpec, headers: list[str], problems: list[Problem]) -> list[Problem]:
    """When the header itself is not where it should be (the wrong separator, or a title row
    above it), every row's problem follows from that: say the cause once instead."""
    cause = separator_problem(job.sheet, **job.sheet_options)
    if cause is None and not any(isinstance(resolve(h), Target) for h in headers):
        guess = header_row_guess(job.sheet, **job.sheet_options)
        if guess is not None:
            cause = Problem(
                str(job.sheet),
                f"row 1 looks like a title; the header seems to be on row {guess}",
                row=1,
                hint=f"delete the rows above row {guess}, so that the header is row 1",
            )
    if cause is None:
        return problems
    return [cause, *(p for p in problems if p.file != str(job.sheet))]
