"""Scheduling over real HTTP: checkpoint affinity, rows without a checkpoint, speed, the tail.

Switch counts are read from the simulators, never from batchgen's own counters.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest
from runhelp import simulators
from schedhelp import FAST, MODELS, assert_each_row_ok_once, make_job, run

from batchgen.job import TimeoutSpec
from batchgen.sim import SimConfig, SimServer


def switches(sims: Sequence[SimServer]) -> int:
    return sum(sim.stats.switches for sim in sims)


async def test_rows_in_random_order_switch_at_most_checkpoints_plus_endpoints(
    tmp_path: Path,
) -> None:
    models = [random.Random(5).choice(MODELS)[:-12] for _ in range(90)]
    async with simulators(FAST, FAST) as sims:
        job = make_job(tmp_path, [sim.url for sim in sims], models)
        summary = await run(job)
    assert summary.ok == 90
    assert switches(sims) <= len(MODELS) + len(sims)
    lines = assert_each_row_ok_once(job, 90)
    for line in lines:  # each row ran on the checkpoint it named
        assert line["model"] == models[line["row"] - 2]
    assert sum(view.switches for view in summary.endpoints) == switches(sims)


async def test_alternating_rows_on_one_endpoint_switch_once(tmp_path: Path) -> None:
    models = ["b" if index % 2 else "a" for index in range(30)]  # the sim starts with a
    async with simulators(FAST) as sims:
        job = make_job(tmp_path, [sims[0].url], models)
        await run(job)
    assert switches(sims) == 1
    assert sims[0].stats.per_checkpoint.total() == 30


async def test_rows_without_a_checkpoint_go_where_the_default_is_loaded(tmp_path: Path) -> None:
    # A row with no override loads the server's opts checkpoint (a): it is an "a" row there,
    # and sending it after the "b" rows would cost a switch back.
    models = [None if index % 2 else "b" for index in range(30)]
    async with simulators(FAST) as sims:
        job = make_job(tmp_path, [sims[0].url], models)
        await run(job)
    assert switches(sims) == 1
    assert_each_row_ok_once(job, 30)


async def test_alias_forms_of_a_checkpoint_are_one_group(tmp_path: Path) -> None:
    # Title, file name and stem name the same checkpoint: one group, not three.
    async with simulators(FAST) as sims:
        url = sims[0].url + "/sdapi/v1/sd-models"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            listed = await response.json()
        title = next(item["title"] for item in listed if item["title"].startswith("b."))
        names = ["b", "b.safetensors", title]
        job = make_job(tmp_path, [sims[0].url], [names[i % 3] for i in range(24)])
        await run(job)
    assert switches(sims) == 1


async def test_speeds_get_work_in_proportion_and_the_slow_one_keeps_no_tail(
    tmp_path: Path,
) -> None:
    slow = SimConfig(models=MODELS, ms_per_step=2.0, switch_s=0.05)  # 40 ms a row
    fast = SimConfig(models=MODELS, ms_per_step=2.0, switch_s=0.05, speed=4.0)  # 10 ms
    async with simulators(slow, fast) as sims:
        job = make_job(tmp_path, [sim.url for sim in sims], ["a"] * 100)
        summary = await run(job)
    done = {view.name: view.done for view in summary.endpoints}
    assert done["e0"] + done["e1"] == 100
    assert done["e1"] >= 2 * done["e0"], done  # 4:1 speeds; round robin would give 1:1
    lines = assert_each_row_ok_once(job, 100)
    ends = {
        name: max(
            line["started_at"] + line["duration_s"] for line in lines if line["endpoint"] == name
        )
        for name in ("e0", "e1")
    }
    # The slow endpoint (40 ms a row) does not hold the last rows while the fast one idles.
    assert ends["e0"] <= ends["e1"] + 0.3, ends


@pytest.mark.parametrize("in_flight", [1, 3])
async def test_in_flight_caps_each_endpoint(tmp_path: Path, in_flight: int) -> None:
    async with simulators(FAST, FAST) as sims:
        job = make_job(tmp_path, [sim.url for sim in sims], ["a"] * 20, in_flight=in_flight)
        summary = await run(job)
    assert summary.ok == 20
    # As the servers saw it: never more at once than the cap, and the cap was used.
    assert [sim.stats.peak_in_flight for sim in sims] == [in_flight, in_flight]


async def test_a_row_that_hangs_at_the_tail_is_copied_to_an_idle_endpoint(tmp_path: Path) -> None:
    hangs = dataclasses.replace(FAST, hang_rate=0.1, fault_seed=4)
    async with simulators(FAST, hangs) as sims:
        job = make_job(
            tmp_path,
            [sim.url for sim in sims],
            ["a"] * 60,
            timeout=TimeoutSpec(request=600.0),  # without copies the run would wait this long
        )
        summary = await run(job, timeout=20.0)
        assert sims[1].stats.faults["hang"] >= 1
    assert summary.ok == 60 and summary.failed == 0
    lines = assert_each_row_ok_once(job, 60)
    assert sum(line["endpoint"] == "e1" for line in lines) == sims[1].stats.generations
