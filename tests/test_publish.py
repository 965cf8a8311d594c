"""What a run publishes while it goes: the report rewritten mid-run, status.json replaced whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from runhelp import make_job, prompts, write_sheet

from batchgen.outputs import publish
from batchgen.outputs.publish import RefreshPacer, ReportRefresher
from batchgen.outputs.status import STATUS_FILE
from batchgen.records import EndpointView, Result, RunPlan, RunSummary
from batchgen.run.runner import run_batch


def report_rows(data_js: Path) -> list[dict[str, Any]]:
    text = data_js.read_text(encoding="utf-8")
    prefix = "window.BATCHGEN_REPORT = "
    assert text.startswith(prefix)
    rows: list[dict[str, Any]] = json.loads(text[len(prefix) :].rstrip().rstrip(";"))["rows"]
    return rows


async def test_the_report_is_refreshed_while_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish, "REFRESH_EVERY_S", 0.2)
    seen: list[int] = []  # rows in data.js as each row finishes

    class Watcher:
        def started(self, plan: RunPlan, out_dir: Path) -> None: ...
        def endpoints(self, views: list[EndpointView]) -> None: ...
        def finished(self, summary: RunSummary) -> None: ...
        def row_finished(self, result: Result) -> None:
            data = tmp_path / "out" / "report" / "data.js"
            seen.append(len(report_rows(data)) if data.exists() else 0)

    sheet = write_sheet(tmp_path / "rows.csv", prompts(12))
    job = make_job(tmp_path, sheet, ["sim://?ms_per_step=10"], defaults={"steps": 10})
    await run_batch(job, reporter=Watcher())
    assert any(0 < count < 12 for count in seen), seen  # a report with part of the rows, mid-run
    assert len(report_rows(job.out_dir / "report" / "data.js")) == 12


async def test_status_json_is_always_whole_while_the_run_writes_it(tmp_path: Path) -> None:
    seen: list[str] = []

    class Reader:
        def started(self, plan: RunPlan, out_dir: Path) -> None: ...
        def finished(self, summary: RunSummary) -> None: ...
        def row_finished(self, result: Result) -> None: ...
        def endpoints(self, views: list[EndpointView]) -> None:
            path = tmp_path / "out" / STATUS_FILE
            seen.append(json.loads(path.read_text(encoding="utf-8"))["state"])

    sheet = write_sheet(tmp_path / "rows.csv", prompts(6))
    job = make_job(tmp_path, sheet, ["sim://?ms_per_step=100"])
    await run_batch(job, reporter=Reader())
    assert seen and set(seen) == {"running"}
    assert not list((tmp_path / "out").glob(".status.json*"))  # no temporary file left
    final = json.loads((tmp_path / "out" / STATUS_FILE).read_text(encoding="utf-8"))
    assert (final["state"], final["ok"], final["to_go"]) == ("finished", 6, 0)


def test_a_refresh_waits_ten_times_the_last_builds_time_when_that_is_longer() -> None:
    pacer = RefreshPacer(every_s=30, factor=10, now=0)
    assert not pacer.due(29.9) and pacer.due(30)
    pacer.built(30, 35)  # a 5 s build: the next one 50 s after it began, not 30
    assert not pacer.due(79.9) and pacer.due(80)
    pacer.built(80, 81)  # a 1 s build: every 30 s again
    assert not pacer.due(109.9) and pacer.due(110)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_refresher_paces_its_builds_by_their_time_and_always_builds_at_the_end(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    durations = iter([5.0, 1.0, 12.0, 1.0, 1.0, 1.0])
    began: list[float] = []

    def builder(out_dir: Path) -> None:  # a build that takes the clock's time
        assert out_dir == tmp_path
        began.append(clock.now)
        clock.now += next(durations)

    refresher = ReportRefresher(tmp_path, 30, clock=clock, builder=builder)
    plan = RunPlan(total=300, done=0, to_retry=0, to_go=300, skipped=0)
    refresher.started(plan, tmp_path)
    while clock.now < 285:  # an event each second (a row ended), each refresh waited for
        clock.now += 1
        refresher.endpoints([])
        refresher.wait()
    # 30; +max(30, 50) = 80; +30 = 110; +max(30, 120) = 230; +30 = 260
    assert began == [30, 80, 110, 230, 260]
    clock.now += 1
    summary = RunSummary(tmp_path, plan, 285, 0, 285, clock.now, False, (), ())
    refresher.finished(summary)  # not due yet, but the end always builds
    assert began == [30, 80, 110, 230, 260, 286]
