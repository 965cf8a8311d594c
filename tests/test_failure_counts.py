"""Each endpoint counts every attempt that failed on it; the summary lists the failed rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from runhelp import manifest, simulators
from schedhelp import FAST, make_job, run

from batchgen.report import summary_lines
from batchgen.run.runner import FAILED_ROWS_SHOWN

SICK = dataclasses.replace(FAST, fail_rate=0.7, fault_seed=1)  # 7 in 10 answers: 500 OOM


async def test_a_sick_endpoint_shows_its_failures_although_every_row_ends_ok(
    tmp_path: Path,
) -> None:
    async with simulators(FAST, SICK) as (good, sick):
        job = make_job(tmp_path, [good.url, sick.url], [None] * 80)
        summary = await run(job)
    assert summary.ok == 80 and summary.failed == 0
    views = {view.name: view for view in summary.endpoints}
    assert sick.stats.faults["fail"] > 0
    assert views["e1"].failed == sick.stats.faults["fail"], "every failed attempt counted"
    assert views["e0"].failed == 0
    retried = sum(line["attempts"] - 1 for line in manifest(job.out_dir))
    assert retried == views["e1"].failed
    shown = next(line for line in summary_lines(summary) if line.startswith("  e1 ("))
    assert f"{views['e1'].failed} failed attempts" in shown


async def test_the_summary_ends_with_the_failed_rows_and_their_reasons(tmp_path: Path) -> None:
    marked = set(range(3, 3 + FAILED_ROWS_SHOWN + 5))  # 25 rows fail on every server
    nans = dataclasses.replace(FAST, nan_marker="cursed")
    async with simulators(nans) as (only,):
        job = make_job(tmp_path, [only.url], [None] * 40)
        lines = job.sheet.read_text().splitlines()
        for row in marked:
            lines[row - 1] = lines[row - 1].replace("row ", "cursed row ", 1)
        job.sheet.write_text("\n".join(lines) + "\n")
        summary = await run(job)
    assert summary.failed == len(marked)
    text = summary_lines(summary)
    start = text.index("failed rows:")
    shown = text[start + 1 : start + 1 + FAILED_ROWS_SHOWN]
    assert all(line.startswith("  row ") and "NansException" in line for line in shown)
    assert {int(line.split()[1].rstrip(":")) for line in shown} <= marked
    assert text[start + 1 + FAILED_ROWS_SHOWN] == "  and 5 more (see manifest.jsonl)"
