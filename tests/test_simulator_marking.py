"""No silent simulator: never used unless named, always said, never counted by a real run."""

from __future__ import annotations

import dataclasses
import logging
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from runhelp import make_job, manifest, prompts, simulators, write_sheet

from batchgen import job as job_module
from batchgen.cli import cli
from batchgen.job import JobSpec
from batchgen.records import RunSummary
from batchgen.report import summary_lines
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig

REAL = SimConfig(marked=False)  # stands in for a real A1111: no simulator header


def test_with_no_endpoint_named_the_default_is_a1111s_address(tmp_path: Path) -> None:
    job = JobSpec(name="t", sheet=tmp_path / "s.csv")
    assert [spec.url for spec in job.endpoints] == ["http://127.0.0.1:7860"]
    assert job.endpoints_defaulted


def test_with_nothing_at_the_default_address_the_run_stops_and_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as unused:  # nothing listens here: A1111 not started
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setattr(job_module, "DEFAULT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("BATCHGEN_RAISE_ERRORS", raising=False)
    sheet = write_sheet(tmp_path / "rows.csv", prompts(2))
    result = CliRunner().invoke(cli, ["run", str(sheet), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    error = result.stderr
    assert "no endpoint answers; nothing was sent" in error
    assert f"127.0.0.1:{port}" in error and "No endpoint is named" in error
    assert "--api" in error and "--endpoint http://host:7860" in error and "sim://" in error
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


async def run_on(tmp_path: Path, url: str, rows: int = 4) -> RunSummary:
    sheet = tmp_path / "rows.csv"
    if not sheet.exists():
        write_sheet(sheet, prompts(rows))
    return await run_batch(make_job(tmp_path, sheet, [url]), RunOptions())


async def test_a_run_on_the_simulator_says_so_and_records_it_per_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="batchgen"):
        summary = await run_on(tmp_path, "sim://")
    assert summary.ok == 4
    assert all(line["simulator"] is True for line in manifest(tmp_path / "out"))
    assert [view.simulator for view in summary.endpoints] == [True]
    assert "SIMULATOR" in caplog.text, "said when the run starts"
    assert any(line.startswith("SIMULATOR") for line in summary_lines(summary))
    assert "SIMULATOR" in (tmp_path / "out" / "run.log").read_text()


async def test_a_simulator_started_apart_and_reached_by_http_is_known_too(tmp_path: Path) -> None:
    async with simulators(SimConfig()) as (sim,):  # like `batchgen sim --port 7860`
        summary = await run_on(tmp_path, sim.url)
    assert [view.simulator for view in summary.endpoints] == [True]
    assert all(line["simulator"] is True for line in manifest(tmp_path / "out"))


async def test_rows_a_simulator_made_are_sent_again_to_real_servers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rehearsal = await run_on(tmp_path, "sim://")
    assert rehearsal.ok == 4
    async with simulators(REAL) as (real,):
        with caplog.at_level(logging.WARNING, logger="batchgen"):
            night = await run_on(tmp_path, real.url)
        assert real.stats.generations == 4, "every simulator-made row sent to the real server"
        assert night.plan.remade == 4 and night.plan.done == 0 and night.ok == 4
        assert "4 rows in this folder were made by a simulator" in caplog.text
        again = await run_on(tmp_path, real.url)
        assert real.stats.generations == 4 and again.plan.done == 4, "real rows are done"
    latest = {line["row"]: line for line in manifest(tmp_path / "out")}
    assert all(line["simulator"] is False for line in latest.values())
    assert [view.simulator for view in night.endpoints] == [False]
    assert not any(line.startswith("SIMULATOR") for line in summary_lines(night))


async def test_another_rehearsal_on_a_simulator_keeps_the_simulator_rows(tmp_path: Path) -> None:
    await run_on(tmp_path, "sim://")
    async with simulators(dataclasses.replace(SimConfig(), speed=2.0)) as (sim,):
        again = await run_on(tmp_path, sim.url)
        assert sim.stats.generations == 0 and again.plan.done == 4
