"""429/503 with Retry-After: rows wait as the server asks; its health is untouched."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from runhelp import simulators
from schedhelp import FAST, assert_each_row_ok_once, make_job

from batchgen.backends.a1111 import RETRY_AFTER_MAX, EndpointClient, open_session, resolve_endpoint
from batchgen.errors import RetryableEndpointError
from batchgen.job import EndpointSpec, RetrySpec, TimeoutSpec
from batchgen.records import Task
from batchgen.rows.wire import a1111_request
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig, SimServer


class SleepSpy:
    """Tenacity's sleep: records each wait the runner asks for, and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def first_error(config: SimConfig) -> RetryableEndpointError:
    async with simulators(config) as (sim,), open_session() as session:
        client = EndpointClient(
            resolve_endpoint(EndpointSpec(url=sim.url), 1), session, TimeoutSpec()
        )
        with pytest.raises(RetryableEndpointError) as raised:
            await client.generate(
                a1111_request(Task(2, "k", "txt2img", {"prompt": "x", "steps": 2}, None), "a1111")
            )
        return raised.value


async def test_a_429_with_retry_after_says_how_long_to_wait() -> None:
    error = await first_error(dataclasses.replace(FAST, busy_rate=1.0, retry_after=7))
    assert error.status == 429 and error.retry_after == 7.0


async def test_a_503_with_retry_after_says_how_long_and_a_long_wait_is_capped() -> None:
    error = await first_error(dataclasses.replace(FAST, unavailable_s=30, retry_after=3600))
    assert error.status == 503 and error.retry_after == RETRY_AFTER_MAX


async def test_a_429_without_retry_after_is_plain_retryable() -> None:
    error = await first_error(dataclasses.replace(FAST, busy_rate=1.0))
    assert error.status == 429 and error.retry_after is None


async def run_paced(tmp_path: Path, sim: SimServer, rows: int, spy: SleepSpy) -> None:
    job = make_job(tmp_path, [sim.url], [None] * rows)
    job = job.model_copy(update={"retry": RetrySpec(attempts=20, backoff_max=0.05)})
    summary = await run_batch(job, RunOptions(sleep=spy))
    assert summary.ok == rows and summary.failed == 0
    assert_each_row_ok_once(job, rows)
    assert [view.up for view in summary.endpoints] == [True]


async def test_rows_wait_as_the_server_asks_and_it_stays_in_rotation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spy = SleepSpy()
    # Most answers are 429 "come back in 2 s": many in a row, which failures would not survive.
    busy = dataclasses.replace(FAST, busy_rate=0.6, retry_after=2, fault_seed=3)
    async with simulators(busy) as (sim,):
        with caplog.at_level(logging.WARNING, logger="batchgen"):
            await run_paced(tmp_path, sim, 30, spy)
        assert sim.stats.faults["busy"] >= 10
        assert spy.waits.count(2.0) == sim.stats.faults["busy"], spy.waits
    assert "out of rotation" not in caplog.text and "every endpoint is down" not in caplog.text
