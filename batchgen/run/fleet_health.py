"""Endpoint health, owned by the fleet: when an endpoint leaves rotation, when it may come back,
and how long every endpoint may be out before the run stops. The scheduler only asks and tells."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

DOWN_AFTER_FAILURES = 3  # consecutive retryable failures that take an endpoint out of rotation
PROBE_BACKOFF_MAX = 30.0


class EndpointHealth:
    """Whether one endpoint is in rotation: out after consecutive failures, back when a probe
    answers; `lost` is set the moment it leaves, so its rows in flight go elsewhere."""

    def __init__(self) -> None:
        self.up = True
        self.down_since: float | None = None
        self.failures = 0  # consecutive
        self.downs = 0  # times taken out of rotation
        self.lost = asyncio.Event()
        self._probe: tuple[float, float] | None = None  # (when, the wait after that one)

    def unanswered(self, now: float) -> None:
        """Its first probe got no answer: out until one comes (not counted as leaving)."""
        self.up = False
        self.down_since = now

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self, now: float) -> bool:
        """A failure the endpoint is to blame for; True if it takes it out of rotation now."""
        self.failures += 1
        if self.failures < DOWN_AFTER_FAILURES or not self.up:
            return False
        self.up = False
        self.downs += 1
        self.down_since = now
        self.lost.set()
        return True

    def probe_due(self, now: float) -> bool:
        """Whether to probe it now: never while up; out of rotation, with a backoff."""
        if self.up:
            self._probe = None
            return False
        if self._probe is None:
            # The more often it has left rotation, the longer before it may rejoin: an
            # endpoint that answers probes but fails every row must not flap.
            wait = min(2.0 ** max(self.downs - 1, 0), PROBE_BACKOFF_MAX)
            self._probe = (now + wait, wait * 2)
        return now >= self._probe[0]

    def probe_failed(self, now: float) -> None:
        assert self._probe is not None
        delay = self._probe[1]
        self._probe = (now + delay, min(delay * 2, PROBE_BACKOFF_MAX))

    def rejoin(self) -> None:
        """A probe answered: back in rotation, with a fresh `lost` for its next rows."""
        self.up = True
        self.down_since = None
        self.failures = 0
        self.lost = asyncio.Event()


class Outage:
    """Every endpoint out of rotation at once: how long the run waits for one to come back."""

    def __init__(self, wait_s: float, clock: Callable[[], float]) -> None:
        self.wait_s = wait_s
        self.since: float | None = None
        self._clock = clock

    def lasted(self) -> bool:
        """Every endpoint is out now; True once that has lasted `wait_s`."""
        now = self._clock()
        if self.since is None:
            self.since = now
            log.warning(
                "every endpoint is down; waiting up to %g s for one to answer (wait_all_down)",
                self.wait_s,
            )
        return now - self.since >= self.wait_s

    def over(self) -> None:
        """An endpoint is in rotation."""
        if self.since is not None:
            log.warning("an endpoint answers again; sending rows")
            self.since = None
