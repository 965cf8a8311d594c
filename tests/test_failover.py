"""Health over real HTTP: endpoints that die, come back, never answer, or all go down at once."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

import pytest
from runhelp import manifest, simulators
from schedhelp import FAST, assert_each_row_ok_once, make_job, run

from batchgen.job import JobSpec
from batchgen.records import EndpointView, RunSummary
from batchgen.report import LogReporter
from batchgen.sim import SimConfig, SimServer
from batchgen.sim.stats import SimStats

SLOWER = dataclasses.replace(FAST, ms_per_step=1.0)  # 20 ms a row


async def restart_when_dead(sim: SimServer, config: SimConfig, after: float) -> SimServer:
    """Wait for `sim` to die (die_after), then start a fresh one on the same port."""
    while not sim.app.dead:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    port = int(sim.url.rsplit(":", 1)[1])
    await sim.stop()
    await asyncio.sleep(after)
    fresh = SimServer(config)
    await fresh.start(port=port)
    return fresh


async def run_while_restarting(
    job: JobSpec, sim: SimServer, config: SimConfig, after: float
) -> tuple[RunSummary, SimStats]:
    """Run the job while `sim`, once dead, comes back on its port `after` seconds later;
    return the summary and the fresh simulator's stats."""
    comeback = asyncio.create_task(restart_when_dead(sim, config, after=after))
    try:
        summary = await run(job)
    finally:
        fresh = await comeback
        await fresh.stop()
    return summary, fresh.stats


async def test_an_endpoint_that_dies_loses_its_rows_to_the_others_and_rejoins(
    tmp_path: Path,
) -> None:
    dying = dataclasses.replace(SLOWER, die_after=10)
    async with simulators(SLOWER, dying) as (steady, victim):
        job = make_job(tmp_path, [steady.url, victim.url], ["a"] * 120)
        summary, fresh = await run_while_restarting(job, victim, SLOWER, after=0.2)
    assert summary.ok == 120 and summary.failed == 0
    lines = assert_each_row_ok_once(job, 120)
    assert victim.stats.faults["die"] == 1
    # It answered again and took rows; the manifest agrees with what the simulators saw.
    assert fresh.generations > 0
    by_victim = sum(1 for line in lines if line["endpoint"] == "e1")
    assert fresh.generations <= by_victim <= fresh.generations + 10
    assert sum(1 for line in lines if line["endpoint"] == "e0") == steady.stats.generations


async def test_an_endpoint_that_does_not_answer_at_the_start_joins_when_it_does(
    tmp_path: Path,
) -> None:
    late = dataclasses.replace(SLOWER, refuse_s=0.6)  # connections refused for 0.6 s
    async with simulators(SLOWER, late) as sims:
        job = make_job(tmp_path, [sim.url for sim in sims], ["a"] * 150)
        summary = await run(job)
    assert summary.ok == 150
    assert_each_row_ok_once(job, 150)
    assert sims[1].stats.generations > 0, "the late endpoint was probed again and took rows"


async def test_an_endpoint_that_answers_probes_but_fails_every_row_is_kept_out(
    tmp_path: Path,
) -> None:
    broken = dataclasses.replace(SLOWER, fail_rate=1.0)  # every generation: 500 out of memory
    async with simulators(SLOWER, broken) as (good, bad):
        job = make_job(tmp_path, [good.url, bad.url], ["a"] * 150)
        summary = await run(job)
    assert summary.ok == 150 and summary.failed == 0
    assert good.stats.generations == 150
    # Out after 3 failures, back after 1 s, out again, back after 2 s...: a few tries, no flapping.
    sent = bad.stats.requests["/sdapi/v1/txt2img"]
    assert 3 <= sent <= 25, sent


async def test_when_every_endpoint_is_down_the_run_waits_instead_of_failing_rows(
    tmp_path: Path,
) -> None:
    dying = dataclasses.replace(FAST, die_after=5)
    async with simulators(dying) as (only,):
        job = make_job(tmp_path, [only.url], ["a"] * 30, wait_all_down=20.0)
        summary, fresh = await run_while_restarting(job, only, FAST, after=1.0)
    assert summary.ok == 30 and summary.failed == 0
    assert_each_row_ok_once(job, 30)
    assert fresh.generations >= 25


async def test_an_endpoint_answering_503_at_the_start_is_waited_for(tmp_path: Path) -> None:
    late = dataclasses.replace(FAST, unavailable_s=0.5)  # it answers, but is not ready yet
    async with simulators(late) as sims:
        job = make_job(tmp_path, [sims[0].url], ["a", "b"] * 10, check=True)
        summary = await run(job)
    assert summary.ok == 20 and summary.failed == 0
    assert sims[0].stats.switches == 1


async def test_all_down_for_longer_than_wait_all_down_stops_the_run_cleanly(
    tmp_path: Path,
) -> None:
    dying = dataclasses.replace(SLOWER, die_after=4)
    async with simulators(dying) as sims:
        job = make_job(tmp_path, [sims[0].url], ["a"] * 30, wait_all_down=0.8)
        began = time.monotonic()
        summary = await run(job)
    assert time.monotonic() - began < 10
    assert 0 < summary.ok <= 4  # the row running when it died may be cut off
    assert summary.failed == 0, "rows are not failed one by one while no endpoint answers"
    assert summary.not_run == 30 - summary.ok
    assert summary.stopped_reason is not None and "no endpoint" in summary.stopped_reason
    assert summary.exit_code == 1
    assert [line["status"] for line in manifest(job.out_dir)] == ["ok"] * summary.ok
    assert [view.up for view in summary.endpoints] == [False]


def test_progress_shows_each_endpoint_and_the_all_down_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = LogReporter(every_s=0.0)
    views = [
        EndpointView("e0", False, 0, 12, 1, 12, 2, 3.0, loaded="a.safetensors", down_s=75.0),
        EndpointView("e1", False, 0, 30, 0, 60, 1, 3.0, loaded="b.safetensors", down_s=4.0),
    ]
    with caplog.at_level(logging.WARNING, logger="batchgen"):
        reporter.endpoints(views)
        reporter.endpoints([dataclasses.replace(views[0], up=True, down_s=None), views[1]])
    first, second = (record.getMessage() for record in caplog.records)
    assert "waiting: every endpoint is down (for 4s)" in first
    assert "e0 (down 1m15s): 12 done, 1 failed attempt, 12 images" in first
    assert "2 checkpoint switches" in first
    assert "waiting" not in second and "e0 (up)" in second
