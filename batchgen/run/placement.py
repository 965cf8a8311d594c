"""Placement: which endpoint serves which checkpoint groups, in what order, and how much of each.

Pure functions over a frozen snapshot (work waiting per group; each endpoint's speed, load time,
loaded checkpoints and the work it already holds). Nothing here knows queues, HTTP or health.

The plan is McNaughton's wrap-around rule with load times. At a trial makespan T each endpoint
first does the rows of the checkpoints it has loaded (fastest endpoints first, so the slow ones are
the ones that switch); what is left is poured group by group into the endpoints' remaining time,
each piece paying the endpoint's load time. A binary search finds the smallest T at which it all
fits. A group is cut only where one endpoint's time runs out, so a plan switches at most once per
group plus once per endpoint. The wrap-around cuts groups without regard to their size, so packings
are tried too: each group whole into the endpoint whose room it fills best (cut only where it fits
nowhere), with endpoints that hold the same group sharing it by speed; the shortest plan wins.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Group = str | None  # canonical checkpoint name; None: rows that name none (the server's default)

_PRECISION = 1e-4  # relative: the binary searches stop when T is known this closely
_EPSILON = 1e-9
_SHUFFLES_PER_SIZE = 300  # orders tried beyond the eight above, spread over endpoints + groups


@dataclass(frozen=True, slots=True)
class Worker:
    """One endpoint as the planner sees it."""

    speed: float  # units of work per second (units: see scheduler.row_cost)
    switch_s: float  # seconds to load another checkpoint
    loaded: frozenset[Group]  # groups it serves without loading anything
    busy_s: float = 0.0  # seconds until the rows it already holds are done


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a plan depends on, at one moment."""

    work: tuple[tuple[Group, float], ...]  # units waiting, per group
    workers: tuple[Worker, ...]
    row: float = 1.0  # units of a typical row: no endpoint loads a checkpoint for less
    clock: float = 0.0

    @property
    def total(self) -> float:
        return sum(units for _, units in self.work)


@dataclass(frozen=True, slots=True)
class Share:
    """Work of one group for one endpoint; `switch`: it loads the checkpoint first."""

    group: Group
    work: float
    switch: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """Per worker (in snapshot order) the shares to do, in order; makespan in seconds from then."""

    shares: tuple[tuple[Share, ...], ...]
    makespan: float
    made_at: float

    @property
    def switches(self) -> int:
        return sum(share.switch for shares in self.shares for share in shares)


_Fill = list[list[Share]]


def plan(snapshot: Snapshot) -> Plan:
    """The plan with the shortest makespan the wrap-around rule finds (see the module doc).

    Each order of endpoints and groups is a different wrap-around; an order is searched only if
    it beats the best so far, so trying many costs little more than trying one.
    """
    workers = snapshot.workers
    if not workers or snapshot.total <= _EPSILON:
        return Plan(tuple(() for _ in workers), max_busy(snapshot), snapshot.clock)
    floor = lower_bound(snapshot)
    best, shares = math.inf, None
    for orders in _orders(snapshot):
        fill = _filler(snapshot, orders)
        high = best * (1 - _PRECISION) if shares is not None else max(floor, _EPSILON) * 1.25
        low = floor
        found = fill(high)
        while found is None and shares is None:
            low, high = high, high * 2
            found = fill(high)
        if found is None:
            continue
        while high - low > _PRECISION * high:
            middle = (low + high) / 2
            attempt = fill(middle)
            if attempt is None:
                low = middle
            else:
                high, found = middle, attempt
        best, shares = high, found
    assert shares is not None
    return Plan(
        tuple(tuple(mine) for mine in shares), max(best, max_busy(snapshot)), snapshot.clock
    )


def lower_bound(snapshot: Snapshot) -> float:
    """The fluid optimum with the switches that cannot be avoided: no plan finishes sooner.

    An endpoint either stays on what it has loaded (only that work) or pays one load and may do
    any work. Choosing who stays is relaxed to fractions (a fractional knapsack per set of groups
    linked by endpoints), which can only overestimate capacity, so the bound stays a bound. Each
    group that no endpoint has loaded costs one load at least, at the cheapest endpoint's price.
    """
    total = snapshot.total
    if total <= _EPSILON or not snapshot.workers:
        return max_busy(snapshot)
    linked = _linked(snapshot)
    loaded = set().union(*(w.loaded for w in snapshot.workers))
    unloaded = sum(1 for group in linked if group not in loaded)

    def capacity(makespan: float) -> float:
        rooms = [(w, max(makespan - w.busy_s, 0.0)) for w in snapshot.workers]
        cheapest = min(w.speed * min(w.switch_s, room) for w, room in rooms)
        flexible = 0.0
        kept: dict[int, list[tuple[float, float]]] = {}
        for worker in snapshot.workers:
            whole = worker.speed * max(makespan - worker.busy_s, 0.0)
            lost = worker.speed * min(worker.switch_s, max(makespan - worker.busy_s, 0.0))
            flexible += whole - lost
            component = next((linked[g] for g in worker.loaded if g in linked), None)
            if component is not None and whole > 0:
                kept.setdefault(component, []).append((lost, whole))
        work = _component_work(snapshot, linked)
        for component, items in kept.items():
            room = work[component]
            for lost, whole in sorted(items, key=lambda item: item[0] / item[1], reverse=True):
                part = min(whole, room)
                flexible += lost * part / whole
                room -= part
                if room <= 0:
                    break
        return min(flexible, sum(w.speed * room for w, room in rooms) - unloaded * cheapest)

    total -= _PRECISION * total  # capacity can equal the work exactly: rounding must not matter
    low = max_busy(snapshot)
    high = low + total / sum(w.speed for w in snapshot.workers) + max_switch(snapshot)
    while capacity(high) < total:
        high *= 2
    while high - low > _PRECISION * high:
        middle = (low + high) / 2
        if capacity(middle) >= total:
            high = middle
        else:
            low = middle
    return low


def max_busy(snapshot: Snapshot) -> float:
    return max((w.busy_s for w in snapshot.workers), default=0.0)


def max_switch(snapshot: Snapshot) -> float:
    return max((w.switch_s for w in snapshot.workers), default=0.0)


def _linked(snapshot: Snapshot) -> dict[Group, int]:
    """Groups with work, numbered by the set they form when an endpoint has several loaded."""
    waiting = {group for group, units in snapshot.work if units > _EPSILON}
    number: dict[Group, int] = {}
    for next_id, group in enumerate(waiting):
        number[group] = next_id
    for worker in snapshot.workers:
        mine = [number[g] for g in worker.loaded if g in number]
        if len(mine) > 1:
            keep = min(mine)
            for group, value in number.items():
                if value in mine:
                    number[group] = keep
    return number


def _component_work(snapshot: Snapshot, linked: dict[Group, int]) -> dict[int, float]:
    work: dict[int, float] = {}
    for group, units in snapshot.work:
        if group in linked:
            work[linked[group]] = work.get(linked[group], 0.0) + units
    return work


@dataclass(frozen=True, slots=True)
class _Order:
    """One way to fill a trial makespan (see `_filler`)."""

    natives_first: bool  # endpoints do what they have loaded before the rest is poured
    natives: Sequence[int]  # who takes its loaded work first
    order: Sequence[int]  # who takes poured work first
    groups: Sequence[Group]  # which group is poured first
    fit: bool = False  # each group whole into the tightest room it fits, not wrapped around
    even: bool = False  # endpoints holding one group share it by speed, not one after another


def _orders(snapshot: Snapshot) -> list[_Order]:
    """Orders to try. Besides the wrap-around in a few orders of endpoints and groups, packings
    of whole groups: the wrap-around cuts a group wherever an endpoint's room runs out, so a
    slow endpoint may pay loads for several small pieces where one whole small group would do,
    and the first of two endpoints holding a group may take all of it while the other, with
    nothing left of its own, pays a load. The best that fits wins."""
    indexes = range(len(snapshot.workers))
    slow_first = sorted(indexes, key=lambda i: snapshot.workers[i].speed)
    fast_first = slow_first[::-1]
    big_first = [g for g, _ in sorted(snapshot.work, key=lambda item: -item[1])]
    orders = [
        _Order(first, natives, order, groups)
        for first, natives, order, groups in itertools.product(
            (True, False),
            (fast_first, slow_first),
            (slow_first, fast_first),
            (big_first, big_first[::-1]),
        )
    ]
    orders += [
        _Order(first, natives, fast_first, big_first, fit=True, even=even)
        for first, natives, even in itertools.product(
            (True, False), (fast_first, slow_first), (False, True)
        )
    ]
    shuffle = random.Random(len(indexes) * 1009 + len(big_first))  # the same plan every time
    for _ in range(max(_SHUFFLES_PER_SIZE // (len(indexes) + len(big_first)), 0)):
        workers, groups = list(indexes), list(big_first)
        shuffle.shuffle(workers)
        shuffle.shuffle(groups)
        first = shuffle.random() < 0.5
        orders.append(_Order(first, shuffle.choice((fast_first, slow_first)), workers, groups))
    return orders


def _filler(snapshot: Snapshot, how: _Order) -> Callable[[float], _Fill | None]:
    workers = snapshot.workers
    work = dict(snapshot.work)
    unloaded = [g for g in how.groups if not any(g in w.loaded for w in workers)]
    holders = {g: sum(w.speed for w in workers if g in w.loaded) for g in work}

    def fill(makespan: float) -> _Fill | None:
        shares: _Fill = [[] for _ in workers]
        room = [max(makespan - w.busy_s, 0.0) for w in workers]
        left = dict(work)

        def usable(i: int) -> float:
            worker = workers[i]
            return (room[i] - worker.switch_s) * worker.speed

        def give(i: int, group: Group, take: float) -> None:
            worker = workers[i]
            shares[i].append(Share(group, take, True))
            room[i] -= worker.switch_s + take / worker.speed
            left[group] -= take

        def wrap(pending: Sequence[Group]) -> bool:
            """Wrap-around: each group in turn, into each endpoint's room in turn."""
            queue = [g for g in pending if left[g] > _EPSILON]
            for i in how.order:
                while queue:
                    group = queue[0]
                    if usable(i) < min(left[group], snapshot.row) - _EPSILON:
                        break
                    give(i, group, min(left[group], usable(i)))
                    if left[group] > _EPSILON:
                        break
                    queue.pop(0)
            return not queue

        def pack(pending: Sequence[Group]) -> bool:
            """Each group whole into the endpoint whose room it fills most; one that fits
            nowhere fills the largest room and the rest goes on the same way."""
            rooms = sorted((usable(i), i) for i in how.order)  # a bisect finds the tightest
            for group in pending:
                while left[group] > _EPSILON:
                    at = bisect.bisect_left(rooms, (left[group] - _EPSILON, -1))
                    most, i = rooms.pop(at if at < len(rooms) else -1)
                    if most < min(left[group], snapshot.row) - _EPSILON:
                        return False
                    give(i, group, min(left[group], most))
                    bisect.insort(rooms, (usable(i), i))
            return True

        pour = pack if how.fit else wrap
        if not how.natives_first and not pour(unloaded):
            return None
        for i in how.natives:
            worker = workers[i]
            for group in sorted(worker.loaded, key=str):
                if group not in work:
                    continue
                fair = work[group] * worker.speed / holders[group] if how.even else math.inf
                take = min(left[group], room[i] * worker.speed, fair)
                if take > _EPSILON:
                    shares[i].insert(0, Share(group, take, False))  # before any switch
                    left[group] -= take
                    room[i] -= take / worker.speed
        if how.even:  # what the holders could not share evenly: whoever of them has room
            for i in how.natives:
                worker = workers[i]
                for k, share in enumerate(shares[i]):
                    take = min(left[share.group], room[i] * worker.speed)
                    if not share.switch and take > _EPSILON:
                        shares[i][k] = Share(share.group, share.work + take, False)
                        left[share.group] -= take
                        room[i] -= take / worker.speed
        return shares if pour(how.groups) else None

    return fill


def ends(snapshot: Snapshot, shares: Sequence[Sequence[Share]]) -> list[float]:
    """When each worker ends if its shares are done exactly (no rounding to rows)."""
    return [
        worker.busy_s
        + sum(s.work / worker.speed + (worker.switch_s if s.switch else 0.0) for s in mine)
        for worker, mine in zip(snapshot.workers, shares, strict=True)
    ]


def fluid_makespan(snapshot: Snapshot, shares: Sequence[Sequence[Share]]) -> float:
    """When the last worker ends if the shares are done exactly."""
    return max(ends(snapshot, shares), default=0.0)
