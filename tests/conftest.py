"""Shared pytest fixtures."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from batchgen.sim import SimConfig, SimServer


@pytest.fixture(autouse=True)
def _own_log_handlers() -> Iterator[None]:
    """Each CLI call adds a console handler; drop them so the next call starts clean."""
    logger = logging.getLogger("batchgen")
    before = list(logger.handlers)
    yield
    for handler in logger.handlers[len(before) :]:
        logger.removeHandler(handler)


def pytest_configure(config: pytest.Config) -> None:
    """Endpoint speeds go to a folder of the session's, never the user's cache, from before the
    first fixture: processes started by session fixtures (the Slurm cluster's jobs) inherit it."""
    os.environ["BATCHGEN_CACHE_DIR"] = tempfile.mkdtemp(prefix="batchgen-test-speeds-")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ.pop("BATCHGEN_CACHE_DIR", ""), ignore_errors=True)


@pytest.fixture(autouse=True)
def _own_speed_memory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test remembers endpoint speeds in its own folder, never the user's cache, so that
    no test plans from another's (simulator ports are reused)."""
    monkeypatch.setenv("BATCHGEN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


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
