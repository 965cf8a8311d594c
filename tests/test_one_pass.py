"""The sheet is read and built once before anything is sent; everything later reads that pass."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from runhelp import assert_exactly_once_ok, make_job, no_sleep, prompts, simulators, write_sheet

from batchgen.records import Result, RunPlan
from batchgen.rows import spool
from batchgen.rows.spool import Spool
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig


def test_a_spool_reads_back_in_order_from_memory_and_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "BATCH", 4)
    items: Spool[tuple[int, str]] = Spool(spill=5)
    for number in range(23):
        items.append((number, f"row {number}"))
    assert items.on_disk and len(items) == 23
    assert list(items) == [(n, f"row {n}") for n in range(23)]
    first, second = iter(items), iter(items)  # two readers of one file do not disturb each other
    pairs = [(next(first), next(second)) for _ in range(23)]
    assert all(a == b for a, b in pairs) and pairs[-1][0] == (22, "row 22")
    items.append((23, "row 23"))  # appended after a read: still in order
    assert [n for n, _ in items] == list(range(24))
    items.close()
    assert list(items) == [] and not items.on_disk


class _EditsTheSheet:
    """Rewrites the sheet as soon as the first row is written, as a user might mid-run."""

    def __init__(self, sheet: Path) -> None:
        self.sheet = sheet

    def started(self, plan: RunPlan, out_dir: Path) -> None:
        pass

    def row_finished(self, result: Result) -> None:
        write_sheet(self.sheet, [{"prompt": "edited", "steps": "many"}] * 40)

    def endpoints(self, views: object) -> None:
        pass

    def finished(self, summary: object) -> None:
        pass


async def test_a_sheet_edited_during_a_run_changes_nothing_the_run_sends_or_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool, "SPILL", 4)  # most rows come back from the spool's file
    monkeypatch.setattr(spool, "BATCH", 3)
    rows = prompts(30)
    sheet = write_sheet(tmp_path / "sheet.csv", rows)
    async with simulators(SimConfig(ms_per_step=5)) as (sim,):
        job = make_job(tmp_path, sheet, [sim.url], in_flight=1)
        summary = await run_batch(job, RunOptions(sleep=no_sleep), _EditsTheSheet(sheet))
    assert summary.ok == 30 and summary.failed == 0
    records = assert_exactly_once_ok(job.out_dir, list(range(2, 32)))
    assert sorted(r["payload"]["prompt"] for r in records) == sorted(r["prompt"] for r in rows)
    with (job.out_dir / "results.csv").open(encoding="utf-8-sig", newline="") as handle:
        results = list(csv.DictReader(handle))
    assert [r["prompt"] for r in results] == [r["prompt"] for r in rows], "the sheet as it was run"
    assert [r["row"] for r in results] == [str(n) for n in range(2, 32)]
    assert {r["status"] for r in results} == {"ok"}


async def test_a_folder_written_by_the_previous_version_resumes(tmp_path: Path) -> None:
    data = Path(__file__).parent / "data" / "previous-version"
    shutil.copytree(data / "folder", tmp_path / "out")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        (data / "sheet.csv").read_text(encoding="utf-8") + "a pier at noon,14,4,64,64,new\n",
        encoding="utf-8",
    )
    before = (tmp_path / "out" / "manifest.jsonl").read_bytes()
    async with simulators(SimConfig()) as (sim,):
        job = make_job(tmp_path, sheet, [sim.url])
        summary = await run_batch(job, RunOptions(sleep=no_sleep))
        sent = [body["prompt"] for body in sim.stats.history]
    assert sent == ["a pier at noon"], "only the new row is sent"
    assert summary.plan.done == 4 and summary.ok == 1
    after = (job.out_dir / "manifest.jsonl").read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 5
    with (job.out_dir / "results.csv").open(encoding="utf-8-sig", newline="") as handle:
        results = list(csv.DictReader(handle))
    assert [(r["row"], r["expansion"], r["status"]) for r in results] == [
        ("2", "", "ok"),
        ("3", "", "ok"),
        ("4", "0", "ok"),
        ("4", "1", "ok"),
        ("5", "", "ok"),
    ]
    assert results[3]["images"] == "images/000004-00-13~1.png", "the old run's image is listed"
    assert all((job.out_dir / r["images"]).is_file() for r in results)
