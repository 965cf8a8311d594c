"""The kinds of server a job can use, picked by name: each makes its clients and checks rows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from batchgen.backends.a1111 import Endpoint, EndpointClient
from batchgen.backends.comfy.checks import check_comfy_job
from batchgen.backends.comfy.client import ComfyClient
from batchgen.backends.comfy.workflow import bind_job
from batchgen.errors import Problem
from batchgen.job import JobSpec
from batchgen.rows.prepare import Prepared

ClientMaker = Callable[[JobSpec, Sequence[Endpoint], aiohttp.ClientSession], list[EndpointClient]]
RowChecker = Callable[[JobSpec, Prepared, list[EndpointClient]], Awaitable[list[Problem]]]


def _a1111(
    job: JobSpec, endpoints: Sequence[Endpoint], session: aiohttp.ClientSession
) -> list[EndpointClient]:
    return [EndpointClient(endpoint, session, job.timeout) for endpoint in endpoints]


def _comfy(
    job: JobSpec, endpoints: Sequence[Endpoint], session: aiohttp.ClientSession
) -> list[EndpointClient]:
    binding = bind_job(job)  # read once, shared by every endpoint
    return [ComfyClient(endpoint, session, job.timeout, binding) for endpoint in endpoints]


async def _check_a1111(
    job: JobSpec, prepared: Prepared, clients: list[EndpointClient]
) -> list[Problem]:
    from batchgen.backends.check import (
        check_job,  # the A1111 inventory checks are large: load on use
    )

    return await check_job(job, prepared, clients)


@dataclass(frozen=True, slots=True)
class Backend:
    """What differs per kind of server: how its clients are made and how rows are checked."""

    make_clients: ClientMaker
    check_rows: RowChecker


BACKENDS: dict[str, Backend] = {
    "a1111": Backend(_a1111, _check_a1111),
    "comfy": Backend(_comfy, check_comfy_job),
}


def make_clients(
    job: JobSpec, endpoints: Sequence[Endpoint], session: aiohttp.ClientSession
) -> list[EndpointClient]:
    """One client per endpoint, of the job's backend kind (one kind per job)."""
    return BACKENDS[job.backend].make_clients(job, endpoints, session)


async def check_rows(
    job: JobSpec, prepared: Prepared, clients: list[EndpointClient]
) -> list[Problem]:
    """Every row the pass built against every endpoint's models and options, the backend's way."""
    return await BACKENDS[job.backend].check_rows(job, prepared, clients)
