"""What a run publishes while it goes: the report rewritten mid-run, status.json replaced whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from runhelp import make_job, prompts, write_sheet

from batchgen.outputs import publish
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
