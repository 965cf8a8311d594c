"""Who gets what next: rows wait here until an endpoint with a free slot takes one."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from batchgen.client import EndpointClient, ServerState
from batchgen.errors import NoEndpointError
from batchgen.records import Generation, Task

log = logging.getLogger(__name__)

DOWN_AFTER_FAILURES = 3


def checkpoint_name(value: str | None) -> str | None:
    """The comparable core of a checkpoint alias: 'sub/x.safetensors [abc123]' -> 'x'."""
    if not value:
        return None
    name = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", value.strip())
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"\.(safetensors|ckpt|pt|pth|bin|gguf)$", "", name, flags=re.IGNORECASE)


@dataclass(eq=False)
class EndpointSlot:
    """The scheduler's live view of one endpoint."""

    client: EndpointClient
    state: ServerState | None
    running: int = 0
    loaded: str | None = None  # comparable name of the checkpoint in memory
    up: bool = True
    failures: int = 0  # consecutive
    done: int = 0
    failed: int = 0
    images: int = 0
    switches: int = 0
    busy_s: float = 0.0

    @property
    def name(self) -> str:
        return self.client.name

    @property
    def free(self) -> bool:
        return self.up and self.running < self.client.endpoint.in_flight


@dataclass(frozen=True, slots=True)
class Lease:
    """An endpoint's promise to send one row now."""

    slot: EndpointSlot
    task: Task
    started: float


@dataclass(eq=False)
class _Waiter:
    task: Task
    avoid: frozenset[str]
    future: asyncio.Future[Lease] = field(repr=False)
    group: str | None = None


class Scheduler:
    """Pull-based: a freed slot takes the waiting row for the checkpoint it already has, if any."""

    def __init__(self, slots: Sequence[EndpointSlot], *, wait_all_down: float) -> None:
        self.slots = list(slots)
        self._wait_all_down = wait_all_down
        self._groups: dict[str | None, deque[_Waiter]] = {}
        self._all_down_since: float | None = None
        for slot in self.slots:
            if slot.state is not None:
                slot.loaded = checkpoint_name(slot.state.checkpoint)

    @property
    def waiting(self) -> int:
        return sum(len(group) for group in self._groups.values())

    async def lease(self, task: Task, avoid: Iterable[str] = ()) -> Lease:
        """Wait until an endpoint takes this row."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            task, frozenset(avoid), loop.create_future(), checkpoint_name(task.checkpoint)
        )
        self._groups.setdefault(waiter.group, deque()).append(waiter)
        self._dispatch()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._forget(waiter)
            raise

    def release(self, lease: Lease, generation: Generation | None, *, reachable: bool) -> None:
        """The row is back from its endpoint; `reachable` is False for connection-level failures."""
        slot = lease.slot
        slot.running -= 1
        slot.busy_s += time.monotonic() - lease.started
        if generation is not None:
            slot.done += 1
            slot.images += len(generation.images)
            slot.failures = 0
            slot.loaded = checkpoint_name(generation.model) or slot.loaded
        elif not reachable:
            slot.failures += 1
            if slot.failures >= DOWN_AFTER_FAILURES and slot.up:
                log.warning(
                    "%s: %d failures in a row; taking it out of rotation", slot.name, slot.failures
                )
                slot.up = False
        self._dispatch()

    def mark_up(self, slot: EndpointSlot, state: ServerState) -> None:
        slot.up = True
        slot.failures = 0
        slot.state = state
        slot.loaded = checkpoint_name(state.checkpoint)
        self._dispatch()

    def tick(self) -> None:
        """Called periodically: ends the all-down wait when it has lasted too long."""
        self._dispatch()

    def _dispatch(self) -> None:
        if not any(slot.up for slot in self.slots):
            self._all_down()
            return
        self._all_down_since = None
        for slot in sorted(self.slots, key=lambda s: s.running):
            while slot.free:
                waiter = self._pick(slot)
                if waiter is None:
                    break
                slot.running += 1
                if waiter.group is not None and waiter.group != slot.loaded:
                    slot.switches += 1
                    slot.loaded = waiter.group
                waiter.future.set_result(Lease(slot, waiter.task, time.monotonic()))

    def _pick(self, slot: EndpointSlot) -> _Waiter | None:
        others_up = any(s.up for s in self.slots if s is not slot)
        preferred = [slot.loaded, None] + [g for g in self._groups if g not in (slot.loaded, None)]
        for group in preferred:
            queue = self._groups.get(group)
            if not queue:
                continue
            for waiter in queue:
                if slot.name in waiter.avoid and others_up:
                    continue
                queue.remove(waiter)
                return waiter
        return None

    def _forget(self, waiter: _Waiter) -> None:
        queue = self._groups.get(waiter.group)
        if queue is not None and waiter in queue:
            queue.remove(waiter)

    def _all_down(self) -> None:
        now = time.monotonic()
        if self._all_down_since is None:
            self._all_down_since = now
        if now - self._all_down_since < self._wait_all_down:
            return
        error = NoEndpointError(
            f"no endpoint has answered for {self._wait_all_down:g} s; "
            "run the same command again to resume"
        )
        for queue in self._groups.values():
            for waiter in queue:
                if not waiter.future.done():
                    waiter.future.set_exception(error)
            queue.clear()
