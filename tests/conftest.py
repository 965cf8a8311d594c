"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from batchgen.sim import SimConfig, SimServer


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A started simulator with the default, fast config; `sim.url` is its base URL."""
    async with SimServer(SimConfig()) as server:
        yield server


@pytest.fixture
async def sim_http(sim: SimServer) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session whose relative URLs go to the `sim` fixture's server."""
    async with aiohttp.ClientSession(base_url=sim.url) as session:
        yield session
