"""Who gets what next: rows wait here, grouped by checkpoint, until an endpoint takes one.

Speeds and switch costs are learned from the responses. With the default policy, "plan", a plan
(placement.py) says which endpoint serves which groups, in what order and how much of each; a
freed endpoint takes its next planned row, and the plan is made again when something changes
materially. The older policy, "greedy", decides one row at a time: a freed endpoint keeps to the
checkpoint it has loaded while that pays, and when it must switch it joins the group that would
otherwise finish last. Either way an idle endpoint at the run's tail copies a late row. See the
README, "How batchgen spreads rows".
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from batchgen.backends.a1111 import EndpointClient, ServerState
from batchgen.backends.inventory import CheckpointIndex
from batchgen.errors import NoEndpointError
from batchgen.records import Generation, Task
from batchgen.run import placement
from batchgen.run.fleet_health import EndpointHealth, Outage
from batchgen.run.placement import Group
from batchgen.run.speed_memory import Remembered

log = logging.getLogger(__name__)

SPEED_ALPHA = 0.3  # weight of the newest sample in the running estimates
DEFAULT_SEC_PER_UNIT = 0.05  # a 20-step 512x512 image in 1 s, until an endpoint is measured
SWITCH_PRIOR_ROWS = 5.0  # a checkpoint switch costs this many rows until one is measured
SPECULATE_MARGIN = 2.0  # copy a late row only if the copy would be back this many times sooner
REPLAN_DRIFT = 0.2  # plan again when a speed or load time estimate moved this much since the plan
REPLAN_WORK = 0.1  # ... or when rows worth this share of the planned work came in
REPLAN_OFF = 0.02  # ... or when an endpoint runs out this share of the plan's span off its end
RATE_WINDOW = 9  # rows a plan's speed is the mean over: one answer can be late by a whole row
MEASURED_ROWS = 4  # rows each endpoint does on its own checkpoint before any is sent to switch
SETTLED_SPREAD = 0.05  # ... or fewer, from the second, if they agree within this share
LOADS_OVER_BUDGET = 10.0  # past the budget of loads, plans count each as this many
PRIOR_TRUST = 0.3  # a remembered speed this far off the endpoint's first rows is dropped
PLAN_SWITCH_PRIOR_ROWS = 20.0  # plans assume loads this dear until one is measured (see README)

Failure = Literal["endpoint", "request"]
Policy = Literal["plan", "greedy"]


def checkpoint_name(value: str | None) -> str | None:
    """The comparable core of a checkpoint alias: 'sub/x.safetensors [abc123]' -> 'x'."""
    if not value:
        return None
    name = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", value.strip())
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"\.(safetensors|ckpt|pt|pth|bin|gguf)$", "", name, flags=re.IGNORECASE)


def row_cost(body: Mapping[str, Any]) -> float:
    """Relative work of one request: sampling steps x megapixels x images (A1111's time model)."""

    def number(name: str, default: float) -> float:
        value = body.get(name)
        return float(value) if isinstance(value, int | float) and value > 0 else default

    steps = number("steps", 50.0)
    if body.get("init_images"):
        steps *= number("denoising_strength", 0.75)
    units = steps * number("width", 512) * number("height", 512) / 512**2
    if body.get("enable_hr"):
        scale = number("hr_scale", 2.0)
        units += number("hr_second_pass_steps", steps) * scale * scale
    return max(units * number("batch_size", 1) * number("n_iter", 1), 1e-3)


@dataclass(frozen=True, slots=True)
class EndpointFacts:
    """What a probe learned about an endpoint."""

    state: ServerState
    models: CheckpointIndex | None  # None if the server would not list them
    loaded_hash: str | None = None  # opts.sd_checkpoint_hash: the checkpoint really in memory


@dataclass(eq=False, slots=True)
class Lease:
    """An endpoint's promise to send one row now. `switch`: the row is expected to load a model.

    `spare` resolves to a second lease for the same row when the scheduler sends a copy to an
    idle endpoint because this one is late (the run's tail); the first answer wins.
    """

    slot: EndpointSlot
    task: Task
    started: float
    cost: float
    switch: bool
    spare: asyncio.Future[Lease] | None = None


@dataclass(eq=False)
class EndpointSlot:
    """The scheduler's live view of one endpoint."""

    client: EndpointClient
    state: ServerState | None
    models: CheckpointIndex | None = None
    loaded: Group = None  # the checkpoint in memory, as last seen
    default: Group = None  # the opts checkpoint: what a row without an override loads
    target: Group = None  # what will be in memory once the rows held are done
    vae: str | None = None  # as last seen; not a group key: A1111 restores the VAE after a row
    health: EndpointHealth = field(default_factory=EndpointHealth)  # the fleet's: in rotation?
    held: list[Lease] = field(default_factory=list)  # rows on the endpoint, in send order
    done: int = 0
    failed: int = 0
    images: int = 0
    switches: int = 0
    busy_s: float = 0.0
    sec_per_unit: float | None = None  # measured on rows that did not switch
    recent: deque[float] = field(  # seconds per unit of the last of those rows
        default_factory=lambda: deque(maxlen=RATE_WINDOW)
    )
    switch_s: float | None = None  # measured on rows that did
    last_done: float = 0.0
    prior: Remembered | None = None  # what its last run measured (speed_memory.py)

    @property
    def name(self) -> str:
        return self.client.name

    @property
    def up(self) -> bool:
        return self.health.up

    @property
    def running(self) -> int:
        return len(self.held)

    @property
    def free(self) -> bool:
        return self.up and self.running < self.client.endpoint.in_flight

    def learn(self, facts: EndpointFacts) -> None:
        self.state = facts.state
        self.models = facts.models
        self.default = self.canonical(facts.state.checkpoint)
        self.vae = facts.state.vae
        loaded = self.canonical(facts.loaded_hash) if facts.loaded_hash else None
        self.loaded = self.target = loaded or self.default

    def recall(self, prior: Remembered) -> None:
        """Start from what the endpoint's last run measured (speed_memory.py)."""
        self.prior = prior
        self.sec_per_unit = prior.sec_per_unit
        self.switch_s = prior.switch_s

    def canonical(self, name: str | None) -> Group:
        """This endpoint's canonical name for any alias of a checkpoint."""
        if not name:
            return None
        if self.models is not None:
            found = self.models.resolve(name) or self.models.resolve(name.strip())
            if found:
                return found
        return checkpoint_name(name)

    def serves(self, group: Group) -> bool:
        """Whether a row of `group` would run here without loading another checkpoint."""
        return self.target == (self.default if group is None else group)


@dataclass(eq=False)
class _Waiter:
    task: Task
    avoid: frozenset[str]
    future: asyncio.Future[Lease] = field(repr=False)
    group: Group
    cost: float


@dataclass(eq=False, slots=True)
class _Quota:
    """Work (in cost units) of one group that the plan still has one endpoint do."""

    group: Group
    left: float


@dataclass(frozen=True, slots=True)
class _Load:
    """The endpoints serving one group, summed (speeds in cost units per second)."""

    count: int
    speed: float
    held: float  # sum of speed x seconds of work held: units still to do
    supply: float  # units they can do before the projected end
    firsts: tuple[tuple[float, EndpointSlot], ...]  # the two soonest ends of its next row


@dataclass(frozen=True, slots=True)
class _Outlook:
    """The pool at one moment: speeds, seconds of work held, the projected end, group loads."""

    speed: dict[EndpointSlot, float]
    busy: dict[EndpointSlot, float]
    end: float  # seconds from now until everything waiting and held is done, if shared perfectly
    loads: dict[Group, _Load]
    measured: bool  # every endpoint's speed is measured, not assumed

    def drain(self, group: Group, without: EndpointSlot, pending: float) -> float:
        """When the group's waiting rows would all be done by its endpoints but `without`."""
        load = self.loads.get(group)
        inside = load is not None and without.serves(group)
        if load is None or load.count - inside == 0:
            return math.inf
        speed, busy = self.speed[without], self.busy[without]
        total = load.speed - (speed if inside else 0.0)
        fluid = (pending + load.held - (speed * busy if inside else 0.0)) / total
        # Rows do not split: the last one ends no sooner than the quickest endpoint could do it.
        whole = next(value for value, s in load.firsts if s is not without or not inside)
        return max(fluid, whole)

    def supply(self, group: Group, without: EndpointSlot) -> float:
        """Work the group's other endpoints can do before the projected end."""
        load = self.loads.get(group)
        if load is None:
            return 0.0
        mine = self.speed[without] * max(self.end - self.busy[without], 0.0)
        return load.supply - (mine if without.serves(group) else 0.0)


class Scheduler:
    """Pull-based, checkpoint-aware and speed-aware; rows are handed out in no sheet order."""

    def __init__(
        self,
        slots: Sequence[EndpointSlot],
        *,
        wait_all_down: float,
        clock: Callable[[], float] = time.monotonic,
        policy: Policy = "plan",
    ) -> None:
        self.slots = list(slots)
        self._clock = clock
        self._policy = policy
        self._quotas: dict[EndpointSlot, deque[_Quota]] | None = None  # None: plan again
        self._rates: dict[EndpointSlot, tuple[float, float]] = {}  # the estimates planned with
        self._planned_work = self._planned_row = 0.0
        self._ends: dict[EndpointSlot, float] = {}  # when each endpoint should run out of rows
        self._span = 0.0  # seconds from the plan to its end
        self._added = 0.0  # work that came in since the plan
        self.plans = 0  # plans made, for the tests: a plan must not flap
        self._groups: dict[Group, deque[_Waiter]] = {}
        self._seen_groups: set[Group] = set()  # for the load budget: groups + endpoints
        self._pending: dict[Group, float] = {}  # cost of the rows waiting, by group
        self._expected: set[int] = set()
        self._retries: list[_Waiter] = []  # waiters that avoid an endpoint: sent again elsewhere
        self._aliases: dict[str, Group] = {}
        self._means: dict[str, float | None] = {}
        self._handle: asyncio.Handle | None = None
        self._outage = Outage(wait_all_down, clock)

    @property
    def waiting(self) -> int:
        return sum(len(group) for group in self._groups.values())

    def expect(self, task: Task) -> None:
        """A row is on its way to `lease`: hold dispatch until it is in, so order cannot leak."""
        self._expected.add(task.row)

    def settle(self, task: Task) -> None:
        """The row's coroutine ended (or never started); stop waiting for it."""
        if task.row in self._expected:
            self._expected.discard(task.row)
            self._soon()

    async def lease(self, task: Task, avoid: Iterable[str] = ()) -> Lease:
        """Wait until an endpoint takes this row."""
        loop = asyncio.get_running_loop()
        group = self.group_of(task.checkpoint)
        waiter = _Waiter(task, frozenset(avoid), loop.create_future(), group, row_cost(task.body))
        self._groups.setdefault(group, deque()).append(waiter)
        self._seen_groups.add(group)
        if waiter.avoid:
            self._retries.append(waiter)
        self._pending[group] = self._pending.get(group, 0.0) + waiter.cost
        self._added += waiter.cost
        self._expected.discard(task.row)
        self._soon()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._forget(waiter)
            raise

    def others_up(self, names: Iterable[str]) -> bool:
        """Whether an endpoint not named is in rotation."""
        excluded = set(names)
        return any(slot.up and slot.name not in excluded for slot in self.slots)

    def group_of(self, checkpoint: str | None) -> Group:
        """A row's checkpoint group. A name no endpoint knows is ignored by A1111, as is none."""
        if not checkpoint:
            return None
        if checkpoint not in self._aliases:
            indexes = [slot.models for slot in self.slots if slot.models is not None]
            found = next(filter(None, (index.resolve(checkpoint) for index in indexes)), None)
            self._aliases[checkpoint] = found if found or indexes else checkpoint_name(checkpoint)
        return self._aliases[checkpoint]

    def release(
        self, lease: Lease, generation: Generation | None, *, failed: Failure | None = None
    ) -> None:
        """The row is back. `failed`: the attempt failed, and whether the endpoint was at fault
        ("endpoint": it counts towards leaving rotation) or only the request ("request")."""
        slot = lease.slot
        now = self._clock()
        if lease in slot.held:
            slot.held.remove(lease)
        began = max(lease.started, slot.last_done)
        slot.last_done = now
        slot.busy_s += now - began
        if failed is not None:
            slot.failed += 1  # every failed attempt, whatever becomes of the row
        if generation is not None:
            slot.done += 1
            slot.images += len(generation.images)
            slot.health.succeeded()
            self._learn_from(slot, lease, generation, now - began)
        elif failed == "endpoint" and slot.health.failed(now):
            log.warning(
                "%s: %d failures in a row; out of rotation, its rows go to the others",
                slot.name,
                slot.health.failures,
            )
            self._quotas = None
        if not slot.held:
            slot.target = slot.loaded
        self._soon()

    def rejoined(self, slot: EndpointSlot, facts: EndpointFacts) -> None:
        """The fleet put the endpoint back in rotation; `facts`: what its probe found."""
        slot.learn(facts)
        slot.held.clear()
        self._aliases.clear()
        self._quotas = None
        self._soon()

    def tick(self) -> None:
        """Called periodically: ends the all-down wait when it has lasted too long."""
        self._dispatch(force=True)

    # ----- estimates -----

    def measured(self) -> dict[str, Remembered]:
        """Each endpoint's figures from this run, by name, for the next run: only those measured
        on enough rows of their own."""
        now = time.time()
        return {
            slot.name: Remembered(statistics.fmean(slot.recent), slot.switch_s, slot.done, now)
            for slot in self.slots
            if len(slot.recent) >= MEASURED_ROWS
        }

    def _learn_from(
        self, slot: EndpointSlot, lease: Lease, generation: Generation, service: float
    ) -> None:
        self._means.clear()
        before = slot.loaded
        model = slot.canonical(generation.model_hash) if generation.model_hash else None
        now_loaded = model or slot.canonical(generation.model) or before
        slot.loaded = now_loaded
        slot.vae = generation.vae or slot.vae
        if now_loaded != before:
            slot.switches += 1
            sample = max(service - lease.cost * self._sec_per_unit(slot), 0.0)
            slot.switch_s = _blend(slot.switch_s, sample)
        elif service > 0:
            slot.sec_per_unit = _blend(slot.sec_per_unit, service / lease.cost)
            if slot.done > 1:  # the first answer also carries the connection's and server's start
                slot.recent.append(service / lease.cost)
                self._check_prior(slot)
        if self._quotas is not None and self._drifted(slot):
            self._quotas = None

    def _drifted(self, slot: EndpointSlot) -> bool:
        """Whether the estimates moved materially from those the plan was made with."""
        # Endpoints not measured yet borrow the others' mean, which moves with any of them.
        everyone = any(s.sec_per_unit is None or s.switch_s is None for s in self._rates)
        for each in self._rates if everyone else [slot]:
            sec_per_unit, switch_s = self._rates.get(each, (0.0, 0.0))
            if _moved(sec_per_unit, self._steady_sec_per_unit(each)) or _moved(
                switch_s, self._plan_switch_s(each, self._planned_row)
            ):
                return True
        return False

    def _sec_per_unit(self, slot: EndpointSlot) -> float:
        if slot.sec_per_unit is not None:
            return slot.sec_per_unit
        return self._pool_mean("sec_per_unit") or DEFAULT_SEC_PER_UNIT

    def _steady_sec_per_unit(self, slot: EndpointSlot) -> float:
        """Seconds per cost unit, the mean of the last rows: steadier than the running estimate,
        which follows each answer and would have a plan remade at every late one. Not their
        median: an endpoint kept busy answers each row when the one before ends, so a row
        answered late by some client-side delay reads as long and the next as short by as much;
        the mean cancels that out, a median of the first few rows is off by all of it.
        A remembered speed counts as MEASURED_ROWS rows until the window is full of its own:
        a run's first answers are the noisiest (connections opening, the client starting)."""
        own = slot.recent
        if slot.prior is not None and len(own) < RATE_WINDOW:
            weight = min(MEASURED_ROWS, RATE_WINDOW - len(own))
            prior = slot.prior.sec_per_unit * self._prior_scale()
            return (sum(own) + weight * prior) / (len(own) + weight)
        if not own:
            return self._sec_per_unit(slot)
        return statistics.fmean(own)

    def _check_prior(self, slot: EndpointSlot) -> None:
        """Forget a remembered speed that this run's rows belie (the box changed)."""
        if slot.prior is None or len(slot.recent) < MEASURED_ROWS - 1:
            return
        ratio = statistics.fmean(slot.recent) / slot.prior.sec_per_unit
        # Off both as remembered and as scaled with the others (which a few can skew).
        if min(abs(ratio - 1), abs(ratio / self._prior_scale() - 1)) > PRIOR_TRUST:
            log.info("%s is not as fast as remembered; measured anew", slot.name)
            slot.prior = None
            self._means.clear()

    def _prior_scale(self) -> float:
        """How this run's rows compare with the remembered speeds, over the endpoints measured
        so far: a heavier checkpoint than last time slows every box alike, and the endpoints not
        measured yet are expected to be as much slower."""
        if "prior scale" not in self._means:
            ratios = [
                statistics.fmean(s.recent) / s.prior.sec_per_unit
                for s in self.slots
                if s.prior is not None and len(s.recent) >= 2
            ]
            self._means["prior scale"] = statistics.median(ratios) if ratios else 1.0
        return self._means["prior scale"] or 1.0

    def _plan_switch_s(self, slot: EndpointSlot, cost: float) -> float:
        if slot.switch_s is None and self._pool_mean("switch_s") is None:
            mean = statistics.fmean(self._steady_sec_per_unit(s) for s in self.slots if s.up)
            return PLAN_SWITCH_PRIOR_ROWS * cost * mean
        return self._switch_s(slot, cost)

    def _switch_s(self, slot: EndpointSlot, cost: float) -> float:
        if slot.switch_s is not None:
            return slot.switch_s
        return self._pool_mean("switch_s") or SWITCH_PRIOR_ROWS * cost * self._sec_per_unit(slot)

    def _pool_mean(self, name: str) -> float | None:
        """The mean of one estimate over the endpoints that have it; for those that do not."""
        if name not in self._means:
            known = [v for s in self.slots if (v := getattr(s, name)) is not None]
            self._means[name] = statistics.fmean(known) if known else None
        return self._means[name]

    def _estimate(self, lease: Lease) -> float:
        slot = lease.slot
        extra = self._switch_s(slot, lease.cost) if lease.switch else 0.0
        return lease.cost * self._sec_per_unit(slot) + extra

    def free_in(self, slot: EndpointSlot, now: float) -> float:
        """Seconds until the endpoint has done every row it holds."""
        if not slot.held:
            return 0.0
        head, *rest = slot.held
        elapsed = now - max(head.started, slot.last_done)
        return max(self._estimate(head) - elapsed, 0.0) + sum(self._estimate(r) for r in rest)

    # ----- dispatch -----

    def _soon(self) -> None:
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self, force: bool = False) -> None:
        self._handle = None
        if self._expected and not force:
            return
        up = [slot for slot in self.slots if slot.up]
        if not up:
            self._all_down()
            return
        self._outage.over()
        now = self._clock()
        if not self.waiting:
            self._speculate(up, now)
        planned = self._policy == "plan"
        while self.waiting:
            free = [slot for slot in up if slot.free]
            if not free:
                return
            picked = self._follow(up, free, now) if planned else self._greedy(up, free, now)
            if picked is None and (force or planned) and not any(slot.held for slot in up):
                picked = self._fallback(up)
            if picked is None:
                return
            self._assign(*picked, now)

    # ----- the plan -----

    def _follow(
        self, up: list[EndpointSlot], free: list[EndpointSlot], now: float
    ) -> tuple[EndpointSlot, _Waiter] | None:
        """The next planned row for a free endpoint; plan again first if the plan is stale."""
        retried = next(((s, w) for s in free if (w := self._retry_for(s)) is not None), None)
        if retried is not None:
            return retried
        if self._stale(up, free, now):
            self._replan(up, now)
        return next(((s, w) for s in free if (w := self._next_planned(s)) is not None), None)

    def _stale(self, up: list[EndpointSlot], free: list[EndpointSlot], now: float) -> bool:
        """Whether something changed materially since the plan (and only then: no flapping)."""
        quotas = self._quotas
        if quotas is None or set(up) != set(self._rates) or not any(quotas.values()):
            return True
        if self._added > REPLAN_WORK * self._planned_work:  # new rows, or rows to retry
            return True
        # Estimates are never exact: an endpoint ran out of planned rows well before the plan
        # said it would, or the plan's end is well past and rows still wait.
        off = REPLAN_OFF * self._span
        late = now > max(self._ends.values()) + off
        return any(
            not slot.held and not quotas.get(slot) and (late or now < self._ends[slot] - off)
            for slot in free
        )

    def _replan(self, up: list[EndpointSlot], now: float) -> None:
        row = self._row()
        snapshot = placement.Snapshot(
            work=tuple((group, units) for group, units in self._pending.items() if units > 0),
            workers=tuple(
                placement.Worker(
                    speed=1.0 / self._steady_sec_per_unit(slot),
                    switch_s=self._plan_switch_s(slot, row),
                    loaded=frozenset({slot.target, *([None] if slot.serves(None) else [])}),
                    busy_s=self.free_in(slot, now),
                )
                for slot in up
            ),
            row=row,
            clock=now,
        )
        made = placement.plan(snapshot)
        loads = sum(s.switches for s in self.slots) + sum(
            lease.switch for s in self.slots for lease in s.held
        )
        if loads + made.switches > len(self._seen_groups) + len(self.slots):
            # Estimates that keep moving (a client short of CPU reads every endpoint wrong by
            # turns) would have each plan load something else; past the budget of one load per
            # group and per endpoint, only a load that pays many times over is planned.
            dear = tuple(
                replace(w, switch_s=w.switch_s * LOADS_OVER_BUDGET) for w in snapshot.workers
            )
            made = placement.plan(replace(snapshot, workers=dear))
        self._quotas = {
            slot: deque(_Quota(share.group, work) for share, work in shares)
            for slot, shares in zip(up, self._whole_rows(made.shares), strict=True)
        }
        self._rates = {
            slot: (self._steady_sec_per_unit(slot), self._plan_switch_s(slot, row)) for slot in up
        }
        self._planned_work, self._planned_row = snapshot.total, row
        self._added = 0.0
        self._ends = {
            slot: now + end
            for slot, end in zip(up, placement.ends(snapshot, made.shares), strict=True)
        }
        self._span = made.makespan
        self.plans += 1
        log.debug(
            "plan %d: %.0f units over %d endpoints, %d switches, all done in %.2f s: %s",
            self.plans,
            snapshot.total,
            len(up),
            made.switches,
            made.makespan,
            "; ".join(
                f"{slot.name} ({worker.speed:.0f}/s, {worker.busy_s:.2f} s held) "
                + ", ".join(f"{'*' * share.switch}{share.group} {share.work:.0f}" for share in mine)
                for slot, worker, mine in zip(up, snapshot.workers, made.shares, strict=True)
            ),
        )

    def _whole_rows(
        self, shares: Sequence[Sequence[placement.Share]]
    ) -> list[list[tuple[placement.Share, float]]]:
        """Each share rounded to whole rows so that a group's shares add up to its rows: rounded
        one by one, a row could be left over after every endpoint has moved on, and one would
        load the checkpoint again for it. The rows left by rounding down go to the largest
        remainders."""
        rounded = [[(share, 0.0) for share in mine] for mine in shares]
        for group, queue in self._groups.items():
            row = self._pending.get(group, 0.0) / max(len(queue), 1)
            where = [(i, k) for i, mine in enumerate(shares) for k, s in enumerate(mine)]
            where = [(i, k) for i, k in where if shares[i][k].group == group]
            exact = [shares[i][k].work / row for i, k in where]
            whole = [math.floor(value + 1e-9) for value in exact]
            by_remainder = sorted(range(len(where)), key=lambda n: whole[n] - exact[n])
            for n in by_remainder[: len(queue) - sum(whole)]:
                whole[n] += 1
            for (i, k), count in zip(where, whole, strict=True):
                rounded[i][k] = (shares[i][k], count * row)
        return rounded

    def _next_planned(self, slot: EndpointSlot) -> _Waiter | None:
        quotas = self._quotas.get(slot) if self._quotas is not None else None
        while quotas:
            quota = quotas[0]
            waiter = self._first_for(quota.group, slot)
            if waiter is None or quota.left < waiter.cost / 2:
                quotas.popleft()
                continue
            if not slot.serves(quota.group) and not self._ready_to_switch():
                # A plan from guessed speeds may switch the wrong endpoints: until they are
                # measured, rows of what each has loaded come first, if there are any.
                own = self._own_row(slot)
                if own is not None:
                    return own
            quota.left -= waiter.cost
            return waiter
        return None

    def _ready_to_switch(self) -> bool:
        """Every endpoint that has rows to do is measured or remembered (load times are assumed
        dear until one is); one with nothing of its own waits for the plan to send it some."""
        return not any(
            slot.up
            and slot.prior is None
            and not _settled(slot.recent)
            and (slot.held or self._own_row(slot) is not None)
            for slot in self.slots
        )

    def _own_row(self, slot: EndpointSlot) -> _Waiter | None:
        """A waiting row the endpoint can run without loading a checkpoint."""
        own = self._first_for(slot.target, slot)
        if own is None and slot.serves(None):
            own = self._first_for(None, slot)
        return own

    def _row(self) -> float:
        """The cost of a typical waiting row."""
        return sum(self._pending.values()) / max(self.waiting, 1)

    # ----- one row at a time (the "greedy" policy) -----

    def _greedy(
        self, up: list[EndpointSlot], free: list[EndpointSlot], now: float
    ) -> tuple[EndpointSlot, _Waiter] | None:
        outlook = self._outlook(up, now)
        free.sort(key=lambda s: (not self._has_own(s), -outlook.speed[s]))
        return next(((s, w) for s in free if (w := self._choose(s, outlook)) is not None), None)

    def _retry_for(self, slot: EndpointSlot) -> _Waiter | None:
        """A row that failed elsewhere goes to the first free endpoint it does not avoid: the
        estimates and the plan would often leave it to the endpoint it must not go back to."""
        return next((w for w in self._retries if slot.name not in w.avoid), None)

    def _has_own(self, slot: EndpointSlot) -> bool:
        return bool(self._groups.get(slot.target)) or (
            slot.target == slot.default and bool(self._groups.get(None))
        )

    def _choose(self, slot: EndpointSlot, outlook: _Outlook) -> _Waiter | None:
        retry = self._retry_for(slot)
        if retry is not None:
            return retry
        mine = outlook.busy[slot]
        speed = outlook.speed[slot]
        own: list[Group] = [slot.target] + ([None] if slot.target == slot.default else [])
        for group in own:
            waiter = self._first_for(group, slot)
            pending = self._pending.get(group, 0.0)
            if waiter is None or mine + waiter.cost / speed > outlook.drain(group, slot, pending):
                continue
            if outlook.measured and outlook.supply(group, slot) >= pending:
                # The others finish this group anyway: leave now for one that is short, if this
                # endpoint alone can fill it; it would have to switch later regardless.
                rank, other = self._switch_for(slot, own, outlook)
                if other is not None and rank[0] == 2:
                    return other
            return waiter
        return self._switch_for(slot, own, outlook)[1]

    def _outlook(self, up: list[EndpointSlot], now: float) -> _Outlook:
        speed = {s: 1.0 / self._sec_per_unit(s) for s in up}
        busy = {s: self.free_in(s, now) for s in up}
        work = sum(self._pending.values()) + sum(speed[s] * busy[s] for s in up)
        end = work / sum(speed.values())
        members: dict[Group, list[EndpointSlot]] = {}
        for slot in up:
            if slot.target is not None:
                members.setdefault(slot.target, []).append(slot)
            if slot.target == slot.default:
                members.setdefault(None, []).append(slot)
        loads = {}
        for group, slots in members.items():
            queue = self._groups.get(group)
            head = queue[0].cost if queue else 0.0
            ends = sorted(((busy[s] + head / speed[s], s) for s in slots), key=lambda e: e[0])[:2]
            loads[group] = _Load(
                count=len(slots),
                speed=sum(speed[s] for s in slots),
                held=sum(speed[s] * busy[s] for s in slots),
                supply=sum(speed[s] * max(end - busy[s], 0.0) for s in slots),
                firsts=tuple(ends),
            )
        measured = all(s.sec_per_unit is not None for s in up)
        return _Outlook(speed, busy, end, loads, measured)

    def _switch_for(
        self, slot: EndpointSlot, own: list[Group], outlook: _Outlook
    ) -> tuple[tuple[int, float], _Waiter | None]:
        """The group that most needs another endpoint, for one that has to load a checkpoint.

        A group's deficit is the work its endpoints cannot do by the projected end of the run;
        the endpoint joins the largest (rank 2 if it can keep busy there to the end, 1 if not).
        Once no group is short it helps the one that would finish last (rank 0). Never a group
        whose endpoints would finish the row sooner than this one could, switch included.
        """
        speed, busy = outlook.speed[slot], outlook.busy[slot]
        best: tuple[int, float] = (-1, 0.0)
        chosen = None
        for group, queue in self._groups.items():
            waiter = self._first_for(group, slot) if group not in own and queue else None
            if waiter is None:
                continue
            switch = self._switch_s(slot, waiter.cost)
            drain = outlook.drain(group, slot, self._pending.get(group, 0.0))
            if busy + switch + waiter.cost / speed >= drain:
                continue
            room = speed * max(outlook.end - busy - switch, 0.0)
            deficit = self._pending.get(group, 0.0) - outlook.supply(group, slot)
            rank = (2 if deficit >= room > 0 else 1, deficit) if deficit > 0 else (0, drain)
            if rank > best:
                best, chosen = rank, waiter
        return best, chosen

    def _fallback(self, up: list[EndpointSlot]) -> tuple[EndpointSlot, _Waiter] | None:
        """Nobody takes a row while every endpoint is idle: the estimates are off; send anyway."""
        fastest = sorted(up, key=self._sec_per_unit)
        for queue in self._groups.values():
            waiter = next(iter(queue), None)
            if waiter is not None:
                allowed = [slot for slot in fastest if slot.name not in waiter.avoid]
                return (allowed or fastest)[0], waiter
        return None

    def _speculate(self, up: list[EndpointSlot], now: float) -> None:
        """No row waits: an idle endpoint copies a late row if it would clearly finish it first."""
        for slot in sorted((s for s in up if not s.held), key=self._sec_per_unit):
            best: tuple[float, Lease] | None = None
            for other in up:
                for lease in other.held if other is not slot else ():
                    if lease.spare is None or lease.spare.done():
                        continue
                    group = self.group_of(lease.task.checkpoint)
                    wants = slot.default if group is None else group
                    extra = self._switch_s(slot, lease.cost) if wants != slot.target else 0.0
                    mine = extra + lease.cost * self._sec_per_unit(slot)
                    left = self._left(lease, now)
                    if left > SPECULATE_MARGIN * mine and (best is None or left > best[0]):
                        best = (left, lease)
            if best is None:
                return
            original = best[1]
            assert original.spare is not None
            group = self.group_of(original.task.checkpoint)
            wants = slot.default if group is None else group
            copy = Lease(slot, original.task, now, original.cost, switch=wants != slot.target)
            slot.target = wants
            slot.held.append(copy)
            log.info(
                "row %d is late on %s; %s sends it too (first answer wins)",
                original.task.row,
                original.slot.name,
                slot.name,
            )
            original.spare.set_result(copy)

    def _left(self, lease: Lease, now: float) -> float:
        """Seconds until a held row is back. A late one is guessed as late again as it is now."""
        slot = lease.slot
        total = 0.0
        for index, held in enumerate(slot.held):
            estimate = self._estimate(held)
            if index == 0:
                elapsed = now - max(held.started, slot.last_done)
                estimate = estimate - elapsed if elapsed <= estimate else elapsed - estimate
            total += estimate
            if held is lease:
                return total
        return 0.0

    def _first_for(self, group: Group, slot: EndpointSlot) -> _Waiter | None:
        queue = self._groups.get(group)
        if not queue:
            return None
        others_up = any(s.up for s in self.slots if s is not slot)
        for waiter in queue:
            if not (others_up and slot.name in waiter.avoid):
                return waiter
        return None

    def _assign(self, slot: EndpointSlot, waiter: _Waiter, now: float) -> None:
        self._forget(waiter)
        wants = slot.default if waiter.group is None else waiter.group
        spare = asyncio.get_running_loop().create_future()
        lease = Lease(slot, waiter.task, now, waiter.cost, wants != slot.target, spare)
        slot.target = wants
        slot.held.append(lease)
        if not waiter.future.done():
            waiter.future.set_result(lease)
        else:  # cancelled while it waited
            slot.held.remove(lease)

    def _forget(self, waiter: _Waiter) -> None:
        if waiter.avoid and waiter in self._retries:
            self._retries.remove(waiter)
        queue = self._groups.get(waiter.group)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self._pending[waiter.group] = max(self._pending[waiter.group] - waiter.cost, 0.0)
            if not queue:
                del self._groups[waiter.group]
                self._pending.pop(waiter.group, None)

    def _all_down(self) -> None:
        if not self._outage.lasted() or not self.waiting:
            return
        error = NoEndpointError(
            f"no endpoint has answered for {self._outage.wait_s:g} s; "
            "run the same command again to resume"
        )
        for queue in self._groups.values():
            for waiter in queue:
                if not waiter.future.done():
                    waiter.future.set_exception(error)
        self._groups.clear()
        self._pending.clear()
        self._retries.clear()


def _settled(samples: Sequence[float]) -> bool:
    """Whether an endpoint's first rows tell its speed: MEASURED_ROWS of them, or fewer that
    agree (rows long next to the client's hiccups read alike from the second one)."""
    if len(samples) >= MEASURED_ROWS:
        return True
    return len(samples) >= 2 and max(samples) <= min(samples) * (1 + SETTLED_SPREAD)


def _moved(planned: float, now: float) -> bool:
    return abs(now - planned) > REPLAN_DRIFT * planned


def _blend(old: float | None, sample: float) -> float:
    return sample if old is None else (1 - SPEED_ALPHA) * old + SPEED_ALPHA * sample
