"""`run_batch` end to end over real HTTP: sheets, faults, retries, the manifest and results."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from openpyxl import load_workbook
from runhelp import assert_exactly_once_ok, make_job, manifest, no_sleep, prompts, write_sheet

from batchgen.job import load_job
from batchgen.records import EndpointView, Result, RunPlan, RunSummary
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig, SimServer

FAST = RunOptions(sleep=no_sleep)
JOBS = Path(__file__).parent.parent / "jobs"


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".xlsx", ".jsonl"])
async def test_each_sheet_kind_runs_end_to_end(tmp_path: Path, sim: SimServer, suffix: str) -> None:
    rows = [
        {"prompt": "a red fox", "seed": 1234, "notes": "fixed seed"},
        {"prompt": "a blue whale", "batch_size": 2, "seed": 77},
        {"prompt": "一只熊猫 🐼", "steps": 5},
    ]
    sheet = write_sheet(tmp_path / f"rows{suffix}", rows)
    job = make_job(tmp_path, sheet, [sim.url], defaults={"steps": 4})

    summary = await run_batch(job, FAST)

    assert (summary.exit_code, summary.ok, summary.failed, summary.images) == (0, 3, 0, 4)
    numbers = [1, 2, 3] if suffix == ".jsonl" else [2, 3, 4]  # JSONL: line numbers
    records = {r["row"]: r for r in assert_exactly_once_ok(job.out_dir, numbers)}
    first, second, third = (records[n] for n in numbers)
    assert first["seeds"] == [1234] and second["seeds"] == [77, 78]
    assert first["images"] == ["images/" + f"{numbers[0]:06d}-00-1234.png"]
    assert first["metadata"] == {"notes": "fixed seed"} and "notes" not in first["payload"]
    assert third["payload"]["prompt"] == "一只熊猫 🐼" and third["payload"]["steps"] == 5
    assert first["endpoint"] == sim.url and first["model"] and first["model_hash"]
    assert sim.stats.generations == 3  # each row sent exactly once
    with (job.out_dir / "results.csv").open(encoding="utf-8-sig", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [t["status"] for t in table] == ["ok"] * 3
    assert table[1]["seeds"] == "77;78" and table[0]["notes"] == "fixed seed"
    assert table[1]["images"] == ";".join(second["images"])
    assert (job.out_dir / "results.xlsx").exists() == (suffix == ".xlsx")
    if suffix == ".xlsx":
        book = load_workbook(job.out_dir / "results.xlsx", read_only=True)
        header = next(book.worksheets[0].iter_rows(values_only=True))
        assert {"prompt", "status", "images", "seeds", "error"} <= set(header)
    assert (job.out_dir / "run.log").is_file() and (job.out_dir / "job.json").is_file()


async def test_faulty_endpoints_finish_every_row_ok_exactly_once(tmp_path: Path) -> None:
    configs = [
        SimConfig(fail_rate=0.3, fault_seed=1),  # 500 "CUDA out of memory"
        SimConfig(drop_rate=0.3, fault_seed=2),  # the connection is cut mid-answer
        SimConfig(die_after=6, fault_seed=3),  # the process dies after six generations
    ]
    async with SimServer(configs[0]) as a, SimServer(configs[1]) as b, SimServer(configs[2]) as c:
        sheet = write_sheet(tmp_path / "rows.csv", prompts(60))
        job = make_job(tmp_path, sheet, [a.url, b.url, c.url], attempts=10)
        summary = await run_batch(job, FAST)
        faults = a.stats.faults + b.stats.faults + c.stats.faults

    assert summary.exit_code == 0, summary
    records = assert_exactly_once_ok(job.out_dir, range(2, 62))
    assert faults["fail"] > 0 and faults["drop"] > 0 and faults["die"] > 0
    assert any(r["attempts"] > 1 for r in records)
    assert len(list((job.out_dir / "images").iterdir())) == 60
    assert not list(job.out_dir.rglob("*.tmp"))


async def test_a_retry_goes_to_another_endpoint(tmp_path: Path) -> None:
    async with SimServer(SimConfig(fail_rate=1.0)) as broken, SimServer() as good:
        sheet = write_sheet(tmp_path / "rows.csv", prompts(12))
        job = make_job(tmp_path, sheet, [broken.url, good.url], attempts=3)
        summary = await run_batch(job, FAST)
        tried = Counter(body["prompt"] for body in broken.stats.history)

    assert summary.exit_code == 0
    records = assert_exactly_once_ok(job.out_dir, range(2, 14))
    assert tried and max(tried.values()) == 1  # no row went back to the broken one
    assert {r["endpoint"] for r in records} == {good.url}
    assert {r["attempts"] for r in records if r["payload"]["prompt"] in tried} == {2}


async def test_a_4xx_fails_the_row_at_once_and_the_run_goes_on(
    tmp_path: Path, sim: SimServer
) -> None:
    rows = prompts(3)
    rows[1]["script_name"] = "no such script"  # A1111: 422 "Script 'no such script' not found"
    sheet = write_sheet(tmp_path / "rows.csv", rows)
    job = make_job(tmp_path, sheet, [sim.url])

    summary = await run_batch(job, RunOptions(sleep=no_sleep, check=False))

    assert (summary.exit_code, summary.ok, summary.failed) == (1, 2, 1)
    failed = [r for r in manifest(job.out_dir) if r["status"] == "failed"]
    assert [(r["row"], r["attempts"], r["images"]) for r in failed] == [(3, 1, [])]
    assert failed[0]["error"].startswith("HTTP 422") and "no such script" in failed[0]["error"]
    assert sim.stats.generations + len(sim.stats.history) >= 3
    assert sum(b.get("script_name") == "no such script" for b in sim.stats.history) == 1
    with (job.out_dir / "results.csv").open(encoding="utf-8-sig", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [t["status"] for t in table] == ["ok", "failed", "ok"]
    assert "no such script" in table[1]["error"]


async def test_a_row_out_of_attempts_is_recorded_failed(tmp_path: Path) -> None:
    async with SimServer(SimConfig(fail_rate=1.0)) as broken:
        sheet = write_sheet(tmp_path / "rows.csv", prompts(3))
        job = make_job(tmp_path, sheet, [broken.url], attempts=3)
        summary = await run_batch(job, FAST)
        sent = len(broken.stats.history)

    assert (summary.exit_code, summary.ok, summary.failed) == (1, 0, 3)
    records = manifest(job.out_dir)
    assert sorted(r["row"] for r in records) == [2, 3, 4]
    assert {(r["status"], r["attempts"]) for r in records} == {("failed", 3)}
    assert all("OutOfMemoryError" in r["error"] for r in records)
    assert sent == 9


class _ManifestSpy:
    """A reporter that, as each row finishes, reads the manifest from disk."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.seen: list[int] = []

    def started(self, plan: RunPlan, out_dir: Path) -> None:
        pass

    def row_finished(self, result: Result) -> None:
        (line,) = [r for r in manifest(self.out_dir) if r["row"] == result.task.row]
        if all((self.out_dir / path).is_file() for path in line["images"]):
            self.seen.append(result.task.row)

    def endpoints(self, views: list[EndpointView]) -> None:
        pass

    def finished(self, summary: RunSummary) -> None:
        pass


async def test_each_manifest_line_is_on_disk_when_its_row_finishes(
    tmp_path: Path, sim: SimServer
) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(8))
    job = make_job(tmp_path, sheet, [sim.url])
    spy = _ManifestSpy(job.out_dir)

    await run_batch(job, FAST, spy)

    assert sorted(spy.seen) == list(range(2, 10))


async def test_controlnet_maps_are_saved_apart(tmp_path: Path, sim: SimServer) -> None:
    job = load_job(JOBS / "sample-controlnet.toml", endpoints=[sim.url], out=tmp_path / "out")

    summary = await run_batch(job, RunOptions(sleep=no_sleep, check=False))

    assert summary.exit_code == 0
    (record,) = manifest(job.out_dir)
    assert len(record["images"]) == 4 and len(record["extras"]) == 2
    assert all(p.startswith("images/") for p in record["images"])
    assert all(p.startswith("controlnet/") for p in record["extras"])
    assert all((job.out_dir / p).is_file() for p in record["extras"])
