"""Fault plan: a reproducible verdict per generation request, from `random.Random(fault_seed)`."""

from __future__ import annotations

import random
from typing import Literal

from .config import SimConfig

Verdict = Literal["ok", "fail", "drop", "hang", "busy", "die"]


class FaultPlan:
    """The n-th generation request always draws the n-th number, whatever the rates are."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        self.count = 0

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self._rng = random.Random(seed)

    def draw(self, config: SimConfig) -> Verdict:
        self.count += 1
        r = self._rng.random()
        if config.die_after is not None and self.count > config.die_after:
            return "die"
        if r < config.fail_rate:
            return "fail"
        if r < config.fail_rate + config.drop_rate:
            return "drop"
        if r < config.fail_rate + config.drop_rate + config.hang_rate:
            return "hang"
        if r < config.fail_rate + config.drop_rate + config.hang_rate + config.busy_rate:
            return "busy"
        return "ok"
