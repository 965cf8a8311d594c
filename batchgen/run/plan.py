"""Before anything is sent: the plan said, the endpoints checked against every row."""

from __future__ import annotations

import asyncio
import itertools

from batchgen.backends.a1111 import EndpointClient
from batchgen.backends.kinds import check_rows
from batchgen.errors import InputError, NoEndpointError
from batchgen.job import JobSpec
from batchgen.records import RunPlan, Task
from batchgen.rows.prepare import Prepared, prepare
from batchgen.run.fleet import open_fleet


def validate(job: JobSpec) -> RunPlan:
    """The plan of a job whose sheet is read and built once; InputError listing every problem."""
    prepared = prepare(job)
    try:
        return prepared.require_valid()
    finally:
        prepared.close()


def first_tasks(prepared: Prepared, count: int) -> list[Task]:
    """The first requests of this run's shard, for --dry-run."""
    return list(itertools.islice(prepared.tasks(), count))


def _counted(plan: RunPlan) -> str:
    if not plan.expanded_rows:
        return f"{plan.total:,} rows"
    return f"{plan.sheet_rows:,} rows expand into {plan.total:,} requests ({plan.images:,} images)"


async def check_endpoints(job: JobSpec, prepared: Prepared, clients: list[EndpointClient]) -> None:
    """Raise InputError if the endpoints cannot serve every row; the sheet's problems lead."""
    problems = [*prepared.problems, *await check_rows(job, prepared, clients)]
    if problems:
        summary = (
            "" if prepared.problems else "the endpoints cannot serve every row; nothing was sent"
        )
        raise InputError(problems, summary)


async def check_only(job: JobSpec) -> list[str]:
    """`batchgen check`: the sheet, then every endpoint that may get a row; nothing is generated."""
    prepared = await asyncio.to_thread(prepare, job)
    try:
        return await _check_prepared(job, prepared)
    finally:
        prepared.close()


async def _check_prepared(job: JobSpec, prepared: Prepared) -> list[str]:
    lines: list[str] = []
    if not prepared.problems:  # else go on: the endpoints' problems belong in the same list
        plan = prepared.plan
        share = f" in shard {job.shard}" if job.shard else ""
        lines = [f"{job.sheet}: {_counted(plan)}{share}, all valid", *plan.expansion_lines()]
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
            if prepared.problems:
                raise InputError(list(prepared.problems))
            fleet.require_an_answer(
                "nothing was checked against a server", defaulted=job.endpoints_defaulted
            )
            raise NoEndpointError("no endpoint answers; nothing was checked against a server")
        await check_endpoints(job, prepared, up)
    lines.append("all checks passed")
    return lines
