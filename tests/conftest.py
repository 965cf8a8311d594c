"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from batchgen.sim import SimConfig, SimServer


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A started simulator with the default, fast config; `sim.url` is its base URL."""
    async with SimServer(SimConfig()) as server:
        yield server
