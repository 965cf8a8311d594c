"""Before anything is sent: every row built once, the plan said, the endpoints checked."""

from __future__ import annotations

from collections.abc import Iterator

from batchgen.backends import check_rows
from batchgen.client import EndpointClient
from batchgen.comfy.checks import binding_problems
from batchgen.errors import InputError, NoEndpointError, Problem
from batchgen.fleet import open_fleet
from batchgen.job import JobSpec
from batchgen.payload import PayloadBuilder
from batchgen.records import RunPlan, Task
from batchgen.sheet import read_headers, read_rows
from batchgen.store import ResumeState, check_template


def validate(
    job: JobSpec, state: ResumeState | None = None, *, retry_failed: bool = False
) -> RunPlan:
    """Read the whole sheet and build every row once; raise InputError listing every problem."""
    headers = read_headers(job.sheet, job.sheet_name)
    builder = PayloadBuilder(job, headers)
    problems: list[Problem] = [*builder.header_problems, *builder.default_problems()]
    if builder.binding is not None:
        problems.extend(binding_problems(job, builder, builder.binding))
    try:
        check_template(job.output.filename, builder.metadata_columns)
    except Exception as error:  # a ConfigError reads better beside the sheet's problems
        problems.append(Problem(file="job", message=str(error)))
    done = failed = new = 0
    past_rows = state.rows if state and state.rows else None  # a lookup per row, not a set
    for row in read_rows(job.sheet, job.sheet_name):
        try:
            task = builder.build(row)
        except InputError as error:
            problems.extend(error.problems)
            continue
        past = past_rows.get(task.key) if past_rows is not None else None
        if past is None:
            new += 1
        elif past.status == "ok":
            done += 1
        else:
            failed += 1
    if problems:
        raise InputError(problems)
    total = done + failed + new
    if retry_failed:
        return RunPlan(total, done, failed, 0, skipped=new)
    return RunPlan(total, done, failed, new, skipped=0)


def first_tasks(job: JobSpec, count: int) -> Iterator[Task]:
    """The first rows' requests, for --dry-run (after validate)."""
    builder = PayloadBuilder(job, read_headers(job.sheet, job.sheet_name))
    for index, row in enumerate(read_rows(job.sheet, job.sheet_name)):
        if index >= count:
            return
        yield builder.build(row)


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
        lines = [f"{job.sheet}: {validate(job).total:,} rows, all valid"]
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
            raise NoEndpointError("no endpoint answers; nothing was checked against a server")
        await check_endpoints(job, up, sheet_problems)
    lines.append("all checks passed")
    return lines
