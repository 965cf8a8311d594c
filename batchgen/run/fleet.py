"""A run's endpoints: sim:// servers started, each one probed, its health kept (fleet_health.py),
those out of rotation watched until they answer again."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from batchgen.backends.a1111 import Endpoint, EndpointClient, open_session, resolve_endpoint
from batchgen.backends.inventory import CheckpointIndex
from batchgen.backends.kinds import make_clients
from batchgen.errors import ConfigError, EndpointError, NothingAnswersError
from batchgen.job import JobSpec
from batchgen.records import EndpointView
from batchgen.run.fleet_health import EndpointHealth
from batchgen.run.scheduler import EndpointFacts, EndpointSlot, Scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Fleet:
    """The job's endpoints as started (a sim:// one has its real address) and as first probed."""

    endpoints: tuple[Endpoint, ...]
    slots: tuple[EndpointSlot, ...]
    silent: Mapping[str, str]  # endpoint -> why no HTTP answer came (refused, timed out...)

    def answering(self) -> list[EndpointClient]:
        return [slot.client for slot in self.slots if slot.up]

    def simulators(self) -> list[str]:
        """The endpoints that said they are batchgen's simulator (sim://, or `batchgen sim`)."""
        return [slot.name for slot in self.slots if slot.state and slot.state.simulator]

    def require_an_answer(self, nothing_done: str, *, defaulted: bool = False) -> None:
        """Raise NothingAnswersError if no endpoint gave any HTTP answer to its probe.

        One that answered with an error (a 503 while it starts) is waited for instead.
        `defaulted`: the job named no endpoint, so A1111's default address was tried.
        """
        if len(self.silent) < len(self.slots):
            return
        lines = [f"no endpoint answers; {nothing_done}"]
        lines += [f"  - {name}: {reason}" for name, reason in self.silent.items()]
        if defaulted:
            lines.append(
                "No endpoint is named in the job or on the command line, so batchgen tried "
                "A1111's default address."
            )
        lines += [
            "Start A1111 with its API on: ./webui.sh --api (Windows: add --api to "
            "COMMANDLINE_ARGS in webui-user.bat); Forge serves it as is.",
            "Name your server with --endpoint http://host:7860 (or [[endpoints]] in the job), "
            "checking the address and port.",
            "To rehearse without a server: --endpoint sim:// runs batchgen's built-in simulator "
            "(placeholder images, not a model).",
        ]
        raise NothingAnswersError("\n".join(lines))


@contextlib.asynccontextmanager
async def open_fleet(job: JobSpec) -> AsyncIterator[Fleet]:
    """Start the job's sim:// endpoints, open one HTTP session for all, and probe each one."""
    endpoints = [resolve_endpoint(spec, job.in_flight) for spec in job.endpoints]
    async with started_endpoints(endpoints) as live, open_session() as session:
        clients = make_clients(job, live, session)
        silent: dict[str, str] = {}
        slots = await probe_all(clients, silent)
        yield Fleet(tuple(live), tuple(slots), silent)


@contextlib.asynccontextmanager
async def started_endpoints(endpoints: list[Endpoint]) -> AsyncIterator[list[Endpoint]]:
    """Start a simulator for each sim:// endpoint; the rest pass through."""
    async with contextlib.AsyncExitStack() as stack:
        live = []
        for endpoint in endpoints:
            if endpoint.is_sim:
                from batchgen.sim import SimConfig, SimServer

                try:
                    config = SimConfig.from_query(urlsplit(endpoint.url).query)
                except ValueError as error:
                    raise ConfigError(f"endpoint {endpoint.url}: {error}") from None
                server = SimServer(config)
                url = await server.start()
                stack.push_async_callback(server.stop)
                shown = url.replace("http", "sim", 1)
                name = endpoint.name if endpoint.name != endpoint.url else shown
                live.append(dataclasses.replace(endpoint, name=name, url=url))
            else:
                live.append(endpoint)
        yield live


async def probe_all(
    clients: list[EndpointClient], silent: dict[str, str] | None = None
) -> list[EndpointSlot]:
    """A slot per endpoint; one that does not answer starts out of rotation. `silent` gets
    those that gave no HTTP answer at all, with the reason."""

    async def probe(client: EndpointClient) -> EndpointSlot:
        slot = EndpointSlot(client, None, health=EndpointHealth())
        try:
            slot.learn(await inspect(client))
        except EndpointError as error:
            if error.status is None and silent is not None:
                silent[client.name] = str(error)
            log.warning("%s does not answer (%s); left out until it does", client.name, error)
            slot.health.unanswered(time.monotonic())
        return slot

    return list(await asyncio.gather(*(probe(client) for client in clients)))


async def inspect(client: EndpointClient) -> EndpointFacts:
    """What an endpoint is, what it has in memory, and every name of its checkpoints."""
    state = await client.probe()
    models = loaded = None
    with contextlib.suppress(EndpointError):
        listed = await client.get_json("/sdapi/v1/sd-models", attempts=1)
        models = CheckpointIndex.from_api(listed) if isinstance(listed, list) else None
    with contextlib.suppress(EndpointError):
        options = await client.get_json("/sdapi/v1/options", attempts=1)
        value = options.get("sd_checkpoint_hash") if isinstance(options, dict) else None
        loaded = value if isinstance(value, str) and value else None
    return EndpointFacts(state, models, loaded)


async def watch(scheduler: Scheduler, show: Callable[[list[EndpointView]], None]) -> None:
    """Probe endpoints that are out of rotation, with backoff, and feed the progress view."""
    while True:
        now = time.monotonic()
        for slot in scheduler.slots:
            if slot.health.probe_due(now):
                try:
                    facts = await inspect(slot.client)
                except (EndpointError, ConfigError):  # ConfigError: refused credentials
                    slot.health.probe_failed(now)
                else:
                    log.warning("%s answers again; back in rotation", slot.name)
                    slot.health.rejoin()
                    scheduler.rejoined(slot, facts)
        scheduler.tick()
        show(list(endpoint_views(scheduler.slots)))
        await asyncio.sleep(0.5)


def endpoint_views(slots: list[EndpointSlot]) -> Iterator[EndpointView]:
    """Each endpoint's figures as they are now."""
    now = time.monotonic()
    for slot in slots:
        yield EndpointView(
            slot.name,
            slot.up,
            slot.running,
            slot.done,
            slot.failed,
            slot.images,
            slot.switches,
            slot.busy_s,
            loaded=slot.loaded,
            vae=slot.vae,
            down_s=None if slot.health.down_since is None else now - slot.health.down_since,
            simulator=slot.client.simulator,
        )
