"""The kinds of server a job can use, picked by name: each makes its clients, its requests and
checks rows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from batchgen.backends.a1111 import Endpoint, EndpointClient
from batchgen.backends.comfy.checks import check_comfy_job
from batchgen.backends.comfy.client import ComfyClient
from batchgen.errors import Problem
from batchgen.job import JobSpec
from batchgen.records import Flavor, Request, Task
from batchgen.rows.prepare import Prepared
from batchgen.rows.wire import MakeRequest, a1111_request, comfy_request
from batchgen.rows.workflow import bind_job

ClientMaker = Callable[[JobSpec, Sequence[Endpoint], aiohttp.ClientSession], list[EndpointClient]]
RowChecker = Callable[[JobSpec, Prepared, list[EndpointClient]], Awaitable[list[Problem]]]


def _a1111(
    job: JobSpec, endpoints: Sequence[Endpoint], session: aiohttp.ClientSession
) -> list[EndpointClient]:
    return [EndpointClient(endpoint, session, job.timeout) for endpoint in endpoints]


def _comfy(
    job: JobSpec, endpoints: Sequence[Endpoint], session: aiohttp.ClientSession
) -> list[EndpointClient]:
    binding = bind_job(job)
    default = binding.checkpoint_in(binding.workflow.graph)
    return [ComfyClient(endpoint, session, job.timeout, default) for endpoint in endpoints]


def _a1111_requests(job: JobSpec) -> MakeRequest:
    return a1111_request


def _comfy_requests(job: JobSpec) -> MakeRequest:
    binding = bind_job(job)  # read once, used for every row

    def make(task: Task, flavor: Flavor) -> Request:
        return comfy_request(task, binding)

    return make


async def _check_a1111(
    job: JobSpec, prepared: Prepared, clients: list[EndpointClient]
) -> list[Problem]:
    # The A1111 inventory checks are large: loaded on use.
    from batchgen.backends.check import check_job

    return await check_job(job, prepared, clients)


@dataclass(frozen=True, slots=True)
class Backend:
    """What differs per kind of server: how its clients and requests are made, rows checked."""

    make_clients: ClientMaker
    make_requests: Callable[[JobSpec], MakeRequest]
    check_rows: RowChecker


BACKENDS: dict[str, Backend] = {
    "a1111": Backend(_a1111, _a1111_requests, _check_a1111),
    "comfy": Backend(_comfy, _comfy_requests, check_comfy_job),
}


def make_clients(
    job: JobSpec, endpoints: Sequence[Endpoint], session: aiohttp.ClientSession
) -> list[EndpointClient]:
    """One client per endpoint, of the job's backend kind (one kind per job)."""
    return BACKENDS[job.backend].make_clients(job, endpoints, session)


def request_maker(job: JobSpec) -> MakeRequest:
    """How a row becomes the request an endpoint of a given flavor is sent, the backend's way."""
    return BACKENDS[job.backend].make_requests(job)


async def check_rows(
    job: JobSpec, prepared: Prepared, clients: list[EndpointClient]
) -> list[Problem]:
    """Every row the pass built against every endpoint's models and options, the backend's way."""
    return await BACKENDS[job.backend].check_rows(job, prepared, clients)
