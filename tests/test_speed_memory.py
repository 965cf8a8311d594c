"""Endpoint speeds remembered between runs: the file, and runs over HTTP that plan from it."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from runhelp import batchgen_run, make_job, manifest, prompts, simulators, write_sheet

from batchgen.job import JobSpec, OutputSpec
from batchgen.run.runner import RunOptions, run_batch
from batchgen.run.scheduler import MEASURED_ROWS
from batchgen.run.speed_memory import (
    FILE_NAME,
    KEPT,
    STALE_S,
    Remembered,
    address,
    cache_dir,
    recall,
    remember,
)
from batchgen.sim import SimConfig, SimServer


def test_an_endpoint_is_remembered_by_its_address_without_credentials_or_query() -> None:
    assert address("http://alice:pw@GPU-1.lan:7860/?token=abc") == "http://gpu-1.lan:7860"
    assert address("https://boxes.example/sd/") == "https://boxes.example/sd"
    assert address("comfy://127.0.0.1:8188") == "comfy://127.0.0.1:8188"
    assert address("sim://?ms_per_step=1") is None  # a new port every run


def test_the_cache_folder_is_the_users_unless_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHGEN_CACHE_DIR", "/somewhere/else")
    assert cache_dir() == Path("/somewhere/else")
    monkeypatch.delenv("BATCHGEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert cache_dir() == Path("/xdg/batchgen")


def test_figures_are_kept_by_address_and_recalled_by_name(tmp_path: Path) -> None:
    now = time.time()
    fast, slow = Remembered(0.01, 2.5, 40, now), Remembered(0.04, None, 12, now)
    addresses = {"fast": "http://a:7860", "slow": "http://b:7860", "sim": None}
    remember({"fast": fast, "slow": slow, "sim": fast}, addresses, tmp_path)

    assert recall({"one": "http://a:7860", "two": "http://b:7860"}, tmp_path) == {
        "one": fast,
        "two": slow,
    }
    kept = json.loads((tmp_path / FILE_NAME).read_text())["endpoints"]
    assert set(kept) == {"http://a:7860", "http://b:7860"}
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temporary file left


def test_a_new_figure_replaces_the_old_and_the_others_stay(tmp_path: Path) -> None:
    now = time.time()
    remember({"a": Remembered(0.01, 1.0, 9, now)}, {"a": "http://a:1"}, tmp_path)
    remember({"b": Remembered(0.02, 1.0, 9, now)}, {"b": "http://b:1"}, tmp_path)
    remember({"a": Remembered(0.03, 2.0, 9, now + 1)}, {"a": "http://a:1"}, tmp_path)

    found = recall({"a": "http://a:1", "b": "http://b:1"}, tmp_path)
    assert found["a"].sec_per_unit == 0.03 and found["b"].sec_per_unit == 0.02


def test_old_figures_are_forgotten_and_the_file_stays_small(tmp_path: Path) -> None:
    now = time.time()
    stale = {"old": Remembered(0.01, 1.0, 9, now - STALE_S - 60)}
    remember(stale, {"old": "http://old:1"}, tmp_path)
    assert recall({"old": "http://old:1"}, tmp_path) == {}

    many = {f"e{i}": Remembered(0.01, 1.0, 9, now + i) for i in range(KEPT + 20)}
    remember(many, {name: f"http://{name}:1" for name in many}, tmp_path)
    kept = json.loads((tmp_path / FILE_NAME).read_text())["endpoints"]
    assert len(kept) == KEPT and "http://e0:1" not in kept and f"http://e{KEPT + 19}:1" in kept


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps({"version": 99, "endpoints": {"http://a:1": {}}}),
        json.dumps({"version": 1, "endpoints": {"http://a:1": {"sec_per_unit": -1}}}),
        json.dumps({"version": 1, "endpoints": {"http://a:1": [1, 2]}}),
        json.dumps([1, 2, 3]),
    ],
)
def test_a_damaged_or_foreign_file_is_an_empty_memory_and_is_rewritten(
    tmp_path: Path, text: str
) -> None:
    (tmp_path / FILE_NAME).write_text(text)
    assert recall({"a": "http://a:1"}, tmp_path) == {}

    remember({"a": Remembered(0.01, None, 9, time.time())}, {"a": "http://a:1"}, tmp_path)
    assert recall({"a": "http://a:1"}, tmp_path)["a"].sec_per_unit == 0.01


def test_a_folder_that_cannot_be_written_is_said_and_does_not_fail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.INFO):
        remember({"a": Remembered(0.01, None, 9, time.time())}, {"a": "http://a:1"}, blocked)
    assert "could not keep the endpoints' speeds" in caplog.text


# ----- runs over HTTP -----

# Two equal endpoints, both with x loaded; half the rows need y. The plan has one of them load y.
# Without speeds nobody loads anything until each has answered MEASURED_ROWS rows after its
# first; with remembered speeds one loads y at once.
SIM = SimConfig(models=("x.safetensors", "y.safetensors"), ms_per_step=1.0, switch_s=0.1)
ROWS = 48


def _sheet(tmp_path: Path) -> Path:
    rows = [{"prompt": f"p{i}", "model": "xy"[i % 2], "steps": 20, "seed": i} for i in range(ROWS)]
    return write_sheet(tmp_path / "rows.csv", rows)


async def _load_x(sims: list[SimServer]) -> None:
    """Both endpoints back on x, as at the start of the first run."""
    async with aiohttp.ClientSession() as session:
        for sim in sims:
            body = {"sd_model_checkpoint": "x.safetensors"}
            async with session.post(sim.url + "/sdapi/v1/options", json=body) as response:
                assert response.status == 200


def _x_rows_before_the_first_y(out: Path) -> int:
    """Rows of x answered before the first row of y (a load of 0.1 s and a row of 20 ms)."""
    lines = manifest(out)
    first_y = min(line["finished_at"] for line in lines if line["model"].startswith("y"))
    return sum(line["finished_at"] < first_y for line in lines if line["model"].startswith("x"))


def _into(job: JobSpec, folder: Path) -> JobSpec:
    return job.model_copy(update={"output": OutputSpec(dir=folder)})


async def test_a_run_remembers_its_endpoints_and_the_next_plans_from_them_at_once(
    tmp_path: Path,
) -> None:
    async with simulators(SIM, SIM) as sims:
        urls = [sims[0].url.replace("http://", "http://alice:Hunter2@"), sims[1].url]
        job = make_job(tmp_path, _sheet(tmp_path), urls)
        runs = {}
        for name, options in [
            ("first", RunOptions()),
            ("second", RunOptions()),
            ("relearned", RunOptions(recall_speeds=False)),
        ]:
            await _load_x(sims)
            runs[name] = await run_batch(_into(job, tmp_path / name), options)
            assert runs[name].ok == ROWS

    text = (Path(os.environ["BATCHGEN_CACHE_DIR"]) / FILE_NAME).read_text()
    kept: dict[str, Any] = json.loads(text)["endpoints"]
    assert set(kept) == {sim.url for sim in sims} and "Hunter2" not in text
    for figures in kept.values():  # a row: 20 steps at 1 ms, 20 units
        assert 0.0008 < figures["sec_per_unit"] < 0.003
        assert figures["rows"] >= MEASURED_ROWS + 1
    loads = [figures["switch_s"] for figures in kept.values() if figures["switch_s"] is not None]
    assert loads and all(0.05 < seconds < 0.3 for seconds in loads)  # the simulator's 0.1 s

    # Measuring first: each endpoint answers MEASURED_ROWS + 1 rows of x before anyone loads y,
    # and the other goes on with x while y loads.
    counts = {name: _x_rows_before_the_first_y(tmp_path / name) for name in runs}
    assert counts["first"] >= 2 * (MEASURED_ROWS + 1), counts
    assert counts["relearned"] >= 2 * (MEASURED_ROWS + 1), counts
    # Remembered: one loads y from the start; only the other's rows of x come first.
    assert counts["second"] <= MEASURED_ROWS + 3, counts
    assert "speeds remembered from earlier runs" in (tmp_path / "second" / "run.log").read_text()
    assert "speeds remembered" not in (tmp_path / "relearned" / "run.log").read_text()


async def test_the_command_line_remembers_and_relearn_speeds_starts_afresh(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(3 * MEASURED_ROWS))
    runs = [("one", ()), ("two", ()), ("three", ("--relearn-speeds",))]
    async with simulators(SimConfig()) as sims:
        for name, extra in runs:
            out = str(tmp_path / name)
            code, output = await batchgen_run(
                str(sheet), "--endpoint", sims[0].url, "--out", out, *extra
            )
            assert code == 0, output
    said = {
        name: "speeds remembered" in (tmp_path / name / "run.log").read_text() for name, _ in runs
    }
    assert said == {"one": False, "two": True, "three": False}
