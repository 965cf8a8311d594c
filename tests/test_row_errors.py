"""A 500 raised while a server processes one request fails that row, not the server's health."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pytest
from runhelp import manifest, simulators
from schedhelp import FAST, make_job, run

from batchgen.backends.a1111 import EndpointClient, open_session, resolve_endpoint
from batchgen.errors import RetryableEndpointError, RowError
from batchgen.job import EndpointSpec, TimeoutSpec
from batchgen.records import Task
from batchgen.rows.wire import a1111_request
from batchgen.sim import SimServer

MARK = "cursed"
NANS = dataclasses.replace(FAST, nan_marker=MARK)  # a prompt with MARK: 500 NansException


def sent(sim: SimServer, text: str) -> int:
    return sum(1 for body in sim.stats.history if text in str(body.get("prompt")))


def mark_prompts(sheet: Path, marked: set[int]) -> None:
    """Put MARK into the prompts of the given sheet rows (header = row 1)."""
    lines = sheet.read_text().splitlines()
    for row in marked:
        lines[row - 1] = lines[row - 1].replace("row ", f"{MARK} row ", 1)
    sheet.write_text("\n".join(lines) + "\n")


async def test_a_nans_500_is_a_row_error_with_a_hint() -> None:
    async with simulators(NANS) as (sim,), open_session() as session:
        client = EndpointClient(
            resolve_endpoint(EndpointSpec(url=sim.url), 1), session, TimeoutSpec()
        )
        body = {"prompt": f"a {MARK} lighthouse", "steps": 2}
        with pytest.raises(RowError) as raised:
            await client.generate(a1111_request(Task(2, "k", "txt2img", body, None), "a1111"))
        assert raised.value.status == 500
        assert "NansException: A tensor with NaNs was produced in Unet" in str(raised.value)
        assert "--no-half-vae" in str(raised.value) and "--disable-nan-check" in str(raised.value)
        # The same server stays fine for other requests.
        await client.generate(
            a1111_request(Task(3, "k2", "txt2img", {"prompt": "fine", "steps": 2}, None), "a1111")
        )


async def test_out_of_memory_stays_retryable_not_a_row_error() -> None:
    oom = dataclasses.replace(FAST, fail_rate=1.0)
    async with simulators(oom) as (sim,), open_session() as session:
        client = EndpointClient(
            resolve_endpoint(EndpointSpec(url=sim.url), 1), session, TimeoutSpec()
        )
        with pytest.raises(RetryableEndpointError, match="OutOfMemoryError"):
            await client.generate(
                a1111_request(Task(2, "k", "txt2img", {"prompt": "x"}, None), "a1111")
            )


async def test_a_row_that_always_errors_fails_alone_and_the_server_stays_in_rotation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with simulators(NANS) as (only,):
        job = make_job(tmp_path, [only.url], [None] * 40)
        mark_prompts(job.sheet, {7})
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="batchgen"):
            summary = await run(job)
    assert time.monotonic() - began < 10, "the run did not wait for an endpoint"
    assert summary.ok == 39 and summary.failed == 1 and summary.not_run == 0
    assert sent(only, MARK) == 1, "not sent again to the server that raised it"
    assert only.stats.faults["nan"] == 1
    (failed,) = [line for line in manifest(job.out_dir) if line["status"] == "failed"]
    assert failed["row"] == 7 and failed["attempts"] == 1
    assert "NansException" in failed["error"] and "--no-half-vae" in failed["error"]
    assert [view.up for view in summary.endpoints] == [True]
    assert "out of rotation" not in caplog.text and "every endpoint is down" not in caplog.text


async def test_a_row_error_is_tried_once_on_another_endpoint(tmp_path: Path) -> None:
    async with simulators(NANS, NANS) as sims:
        job = make_job(tmp_path, [sim.url for sim in sims], [None] * 30)
        mark_prompts(job.sheet, {5})
        summary = await run(job)
    assert summary.ok == 29 and summary.failed == 1
    assert [sent(sim, MARK) for sim in sims] == [1, 1], "once on each endpoint, no more"
    (failed,) = [line for line in manifest(job.out_dir) if line["status"] == "failed"]
    assert failed["attempts"] == 2 and "NansException" in failed["error"]
    assert all(view.up for view in summary.endpoints)


async def test_a_row_error_on_one_server_can_succeed_on_another(tmp_path: Path) -> None:
    marked = set(range(2, 42, 2))  # half the rows: some land on the server that raises
    async with simulators(NANS, FAST) as (picky, plain):
        job = make_job(tmp_path, [picky.url, plain.url], [None] * 40)
        mark_prompts(job.sheet, marked)
        summary = await run(job)
    assert summary.ok == 40 and summary.failed == 0
    lines = {line["row"]: line for line in manifest(job.out_dir)}
    moved = [row for row in marked if lines[row]["attempts"] == 2]
    assert picky.stats.faults["nan"] == len(moved) > 0
    assert all(lines[row]["endpoint"] == "e1" for row in moved)
    assert sent(picky, MARK) == len(moved), "the picky server never got a row twice"
    assert all(view.up for view in summary.endpoints)
