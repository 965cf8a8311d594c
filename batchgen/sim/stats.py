"""SimStats: what the simulator was sent and did, for tests in this or another process."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class SimStats:
    """Counters plus `history`: every generation body received, in arrival order."""

    requests: Counter[str] = field(default_factory=Counter)
    generations: int = 0
    images: int = 0
    switches: int = 0
    per_checkpoint: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    history: list[dict[str, Any]] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    in_flight: int = 0  # generation requests received and not yet answered
    peak_in_flight: int = 0  # the most there ever were at once

    def request_started(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def request_ended(self) -> None:
        self.in_flight -= 1

    def record_body(self, route: str, body: Any) -> None:
        self.history.append(body if isinstance(body, dict) else {"_raw": body})
        self.routes.append(route)

    def as_json(self) -> dict[str, Any]:
        received = []
        for route, body in zip(self.routes, self.history, strict=True):
            blob = json.dumps(body, sort_keys=True, default=str).encode()
            received.append(
                {
                    "route": route,
                    "prompt": body.get("prompt"),
                    "seed": body.get("seed"),
                    "digest": hashlib.sha256(blob).hexdigest()[:16],
                }
            )
        return {
            "requests": dict(self.requests),
            "generations": self.generations,
            "images": self.images,
            "switches": self.switches,
            "per_checkpoint": dict(self.per_checkpoint),
            "faults": dict(self.faults),
            "peak_in_flight": self.peak_in_flight,
            "received": received,
        }
