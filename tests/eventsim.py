"""A discrete-event harness: the real Scheduler against endpoints played on a fake clock.

No HTTP and no sleeping. Each endpoint works through the rows it was sent one at a time, as A1111
does; a row takes `row_s / speed` seconds, plus `switch_s` when it needs another checkpoint, and
the clock jumps from one answer to the next. Thousands of scenarios run in seconds, each one's
makespan next to the lower bound from placement.py.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from collections import Counter
from dataclasses import dataclass, field

from batchgen.records import Generation, Task
from batchgen.run import placement
from batchgen.run.scheduler import MEASURED_ROWS, EndpointSlot, Lease, Policy, Scheduler, row_cost
from batchgen.run.speed_memory import Remembered

BODY = {"prompt": "p", "steps": 20, "width": 512, "height": 512}
UNITS = row_cost(BODY)  # the cost of every row in the scenarios


@dataclass(frozen=True, slots=True)
class Scenario:
    speeds: tuple[float, ...]  # per endpoint, relative to 1
    loaded: tuple[str, ...]  # the checkpoint each endpoint starts with
    rows: tuple[str, ...]  # each row's checkpoint, in sheet order
    switch_s: float  # seconds to load a checkpoint, on any endpoint
    row_s: float = 1.0  # seconds a row takes at speed 1
    in_flight: int = 2
    jitter: float = 0.0  # an answer reaches the scheduler up to this many seconds late (the
    # client busy elsewhere, the network); the server goes on with its next row meanwhile

    def snapshot(self) -> placement.Snapshot:
        """The scenario as the planner would see it with perfect estimates."""
        work = Counter(self.rows)
        return placement.Snapshot(
            work=tuple((group, count * UNITS) for group, count in sorted(work.items())),
            workers=tuple(
                placement.Worker(speed * UNITS / self.row_s, self.switch_s, frozenset({loaded}))
                for speed, loaded in zip(self.speeds, self.loaded, strict=True)
            ),
            row=UNITS,
        )

    def bound(self) -> float:
        return placement.lower_bound(self.snapshot())


@dataclass(frozen=True, slots=True)
class Outcome:
    makespan: float
    switches: int  # checkpoint loads the endpoints made
    bound: float
    plans: int
    rows: int  # answers recorded: every row once
    recalled: tuple[bool, ...] = ()  # per endpoint: still planned with its remembered speed

    @property
    def ratio(self) -> float:
        return self.makespan / self.bound


def random_scenario(
    rng: random.Random,
    endpoints: tuple[int, int] = (2, 16),
    checkpoints: tuple[int, int] = (1, 8),
    rows: tuple[int, int] = (200, 5000),
    switch_rows: tuple[float, float] = (1.0, 30.0),
    speeds: tuple[float, float] = (0.5, 4.0),
) -> Scenario:
    """Endpoints of random speeds with random checkpoints loaded; groups of uneven size."""
    names = [f"c{i}" for i in range(rng.randint(*checkpoints))]
    weights = [rng.random() ** 2 + 0.02 for _ in names]
    count = rng.randint(*endpoints)
    return Scenario(
        speeds=tuple(round(rng.uniform(*speeds), 2) for _ in range(count)),
        loaded=tuple(rng.choice([*names, "other"]) for _ in range(count)),
        rows=tuple(rng.choices(names, weights, k=rng.randint(*rows))),
        switch_s=rng.uniform(*switch_rows),
    )


@dataclass
class _Endpoint:
    """What EndpointSlot reads from a client: a name and the in-flight cap."""

    name: str
    in_flight: int

    @property
    def endpoint(self) -> _Endpoint:
        return self


@dataclass
class _Server:
    speed: float
    loaded: str
    free_at: float = 0.0
    switches: int = 0
    seen: set[int] = field(default_factory=set)  # ids of the leases it was sent


async def play(
    scenario: Scenario,
    policy: Policy = "plan",
    *,
    known: bool = False,
    remembered: tuple[float, ...] | None = None,
) -> Outcome:
    """Run the scenario through the real Scheduler; every lease is answered on the fake clock.

    `known`: the scheduler starts with the true speeds and load times, as if measured; otherwise
    it learns them from the answers, as in a real run. `remembered`: it starts from speeds an
    earlier run measured (speed_memory.py), each endpoint's this many times its true speed.
    """
    now = [0.0]
    slots = []
    for index, (speed, loaded) in enumerate(zip(scenario.speeds, scenario.loaded, strict=True)):
        client = _Endpoint(f"e{index}", scenario.in_flight)
        slot = EndpointSlot(client, None)  # type: ignore[arg-type]
        slot.loaded = slot.default = slot.target = loaded
        if known:
            slot.sec_per_unit = scenario.row_s / speed / UNITS
            slot.recent.extend([slot.sec_per_unit] * MEASURED_ROWS)
            slot.switch_s = scenario.switch_s
        elif remembered is not None:
            true = scenario.row_s / speed / UNITS
            slot.recall(Remembered(true / remembered[index], scenario.switch_s, 100, 0.0))
        slots.append(slot)
    servers = [
        _Server(speed, loaded)
        for speed, loaded in zip(scenario.speeds, scenario.loaded, strict=True)
    ]
    scheduler = Scheduler(slots, wait_all_down=1.0, clock=lambda: now[0], policy=policy)
    tasks = [
        Task(row, f"k{row}", "txt2img", BODY, checkpoint)
        for row, checkpoint in enumerate(scenario.rows, start=2)
    ]
    leases = [asyncio.ensure_future(scheduler.lease(task)) for task in tasks]
    answers: list[tuple[float, int, Lease]] = []
    done: set[int] = set()
    legs: dict[int, list[Lease]] = {}
    order = 0
    late_by = random.Random(len(scenario.rows))  # the same delays every time

    def send_new() -> None:
        nonlocal order
        for slot, server in zip(slots, servers, strict=True):
            for lease in slot.held:
                if id(lease) in server.seen:
                    continue
                server.seen.add(id(lease))
                group = lease.task.checkpoint or server.loaded
                seconds = scenario.row_s / server.speed
                if group != server.loaded:
                    seconds += scenario.switch_s
                    server.loaded = group
                    server.switches += 1
                server.free_at = max(server.free_at, now[0]) + seconds
                order += 1
                late = scenario.jitter * late_by.random()
                heapq.heappush(answers, (server.free_at + late, order, lease))
                legs.setdefault(lease.task.row, []).append(lease)

    await asyncio.sleep(0)
    await asyncio.sleep(0)
    send_new()
    end = 0.0
    while answers:
        at, _, lease = heapq.heappop(answers)
        now[0] = at
        row = lease.task.row
        if row in done or lease not in lease.slot.held:
            continue  # the copy that lost: dropped when the other answered
        done.add(row)
        end = at
        group = lease.task.checkpoint
        scheduler.release(lease, Generation((b"",), (), (0,), group, None, None, None, {}))
        for other in legs.pop(row, []):
            if other is not lease and other in other.slot.held:
                scheduler.release(other, None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        send_new()
    await asyncio.gather(*leases)
    return Outcome(
        makespan=end,
        switches=sum(server.switches for server in servers),
        bound=scenario.bound(),
        plans=scheduler.plans,
        rows=len(done),
        recalled=tuple(slot.prior is not None for slot in slots),
    )
