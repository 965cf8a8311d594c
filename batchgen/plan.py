"""Before anything is sent: every row built once, the plan said, the endpoints checked."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from batchgen.backends import check_rows
from batchgen.client import EndpointClient
from batchgen.columns import Target, resolve
from batchgen.comfy.checks import binding_problems
from batchgen.errors import InputError, NoEndpointError, Problem
from batchgen.expand import Expander, expanded_rows
from batchgen.fleet import open_fleet
from batchgen.job import JobSpec
from batchgen.payload import PayloadBuilder
from batchgen.records import EXPANDED_SHOWN, RowCount, RunPlan, Task
from batchgen.shards import keeps
from batchgen.sheet import (
    header_row_guess,
    read_headers,
    read_rows,
    separator_problem,
    sheet_problems,
)
from batchgen.store import DONE, SIMULATED, ResumeState, check_template


def validate(
    job: JobSpec,
    state: ResumeState | None = None,
    *,
    retry_failed: bool = False,
    seen: Callable[[Task], None] | None = None,
) -> RunPlan:
    """Read the whole sheet and build every row once; raise InputError listing every problem.
    `seen` gets each row's task (e.g. to compare the sheet with an output folder's past)."""
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
    done = failed = new = rows = images = expanding = simulated = 0
    expanded: list[RowCount] = []
    past_rows = state.rows if state and state.rows else None  # a lookup per row, not a set
    expander = Expander(job, builder.target_of)
    for row in read_rows(job.sheet, **job.sheet_options):
        rows += 1
        try:
            expansion = expander.plan(row)
        except InputError as error:
            problems.extend(error.problems)
            continue
        if expansion.axes:
            expanding += 1
            if len(expanded) < EXPANDED_SHOWN:
                expanded.append(RowCount(row.row, expansion.requests))
        said: set[Problem] = set()  # each expansion of a bad row has the same problem: say it once
        for one in expansion.rows():
            try:
                task = builder.build(one)
            except InputError as error:
                problems.extend(p for p in error.problems if p not in said)
                said.update(error.problems)
                continue
            if not keeps(job.shard, task):  # every row is built: keys count twins over the sheet
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
    if problems or reading:
        raise InputError([*reading, *_without_cascades(job, headers, problems)])
    total = done + failed + new
    counts = RunPlan(
        total,
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
        return dataclasses.replace(counts, to_go=0, skipped=new)
    return counts


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


def first_tasks(job: JobSpec, count: int) -> Iterator[Task]:
    """The first rows' requests of this run's shard, for --dry-run (after validate)."""
    shown = 0
    for task in all_tasks(job):
        if shown >= count:
            return
        if keeps(job.shard, task):
            shown += 1
            yield task


def all_tasks(job: JobSpec) -> Iterator[Task]:
    """Every request (expansions too), whichever shard it falls in (after validate: all build)."""
    builder = PayloadBuilder(job, read_headers(job.sheet, **job.sheet_options))
    for row in expanded_rows(job, builder.target_of):
        yield builder.build(row)


def _counted(plan: RunPlan) -> str:
    if not plan.expanded_rows:
        return f"{plan.total:,} rows"
    return f"{plan.sheet_rows:,} rows expand into {plan.total:,} requests ({plan.images:,} images)"


async def check_endpoints(
    job: JobSpec, clients: list[EndpointClient], sheet_problems: list[Problem] | None = None
) -> None:
    """Raise InputError if the endpoints cannot serve every row; the sheet's problems lead."""
    problems = [*(sheet_problems or []), *await check_rows(job, clients)]
    if problems:
        summary = "" if sheet_problems else "the endpoints cannot serve every row; nothing was sent"
        raise InputError(problems, summary)


async def check_only(job: JobSpec) -> list[str]:
    """`batchgen check`: the sheet, then every endpoint that may get a row; nothing is generated."""
    sheet_problems: list[Problem] = []
    try:
        plan = validate(job)
        share = f" in shard {job.shard}" if job.shard else ""
        lines = [f"{job.sheet}: {_counted(plan)}{share}, all valid", *plan.expansion_lines()]
    except InputError as error:  # go on: the endpoints' problems belong in the same list
        sheet_problems, lines = list(error.problems), []
    async with open_fleet(job) as fleet:
        for slot in fleet.slots:
            state = slot.state
            lines.append(
                f"{slot.name}: {state.flavor}, checkpoint {state.checkpoint}"
                if state
                else f"{slot.name}: does not answer"
            )
        up = fleet.answering()
        if not up:
            if sheet_problems:
                raise InputError(sheet_problems)
            fleet.require_an_answer(
                "nothing was checked against a server", defaulted=job.endpoints_defaulted
            )
            raise NoEndpointError("no endpoint answers; nothing was checked against a server")
        await check_endpoints(job, up, sheet_problems)
    lines.append("all checks passed")
    return lines
