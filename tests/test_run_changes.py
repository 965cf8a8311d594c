"""A changed sheet or job run into an existing output folder: said at the start, not mixed in."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from runhelp import make_job, no_sleep, prompts, write_sheet

from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimServer


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "holds an earlier run" in r.getMessage()]


async def test_changed_new_and_gone_rows_and_settings_are_said_at_the_start(
    tmp_path: Path, sim: SimServer, caplog: pytest.LogCaptureFixture
) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(4))
    await run_batch(make_job(tmp_path, sheet, [sim.url]), RunOptions(sleep=no_sleep))
    rows = prompts(3)
    rows[1]["prompt"] = "a lighthouse, edited"  # row 3 changed; row 5 gone
    write_sheet(sheet, [*rows, {"prompt": "brand new", "steps": 4}, {"prompt": "x", "steps": 4}])
    job = make_job(tmp_path, sheet, [sim.url], defaults={"cfg_scale": 5})

    with caplog.at_level(logging.WARNING, logger="batchgen"):
        await run_batch(job, RunOptions(sleep=no_sleep))

    (line,) = said(caplog)
    assert str(job.out_dir) in line
    assert "settings changed: defaults.cfg_scale" in line
    # the new default changes every row's request: all five rows differ from the folder's
    assert "rows changed" in line and "--fresh" in line


def edited(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    rows[1] = {**rows[1], "prompt": "a lighthouse, edited"}  # sheet row 3
    return rows


@pytest.mark.parametrize(
    ("new_rows", "expected"),
    [
        (edited(prompts(5)), "1 row changed; 1 new."),  # row 6 added
        (edited(prompts(3)), "1 row changed; 1 row gone from the sheet."),  # row 5 deleted
        (prompts(4)[1:], "1 row gone from the sheet."),  # row 2 deleted, the rest move up
    ],
)
async def test_rows_changed_new_and_gone_are_counted(
    tmp_path: Path,
    sim: SimServer,
    caplog: pytest.LogCaptureFixture,
    new_rows: list[dict[str, object]],
    expected: str,
) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(4))
    await run_batch(make_job(tmp_path, sheet, [sim.url]), RunOptions(sleep=no_sleep))
    write_sheet(sheet, new_rows)

    with caplog.at_level(logging.WARNING, logger="batchgen"):
        await run_batch(make_job(tmp_path, sheet, [sim.url]), RunOptions(sleep=no_sleep))

    (line,) = said(caplog)
    assert f"different sheet or job: {expected} Its images stay" in line


async def test_resuming_the_same_sheet_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from runhelp import simulators

    from batchgen.sim import SimConfig

    sheet = write_sheet(tmp_path / "rows.csv", prompts(4))
    async with simulators(SimConfig(die_after=2)) as (dying,):
        await run_batch(
            make_job(tmp_path, sheet, [dying.url], wait_all_down=0.0), RunOptions(sleep=no_sleep)
        )
    async with simulators(SimConfig()) as (server,):
        with caplog.at_level(logging.WARNING, logger="batchgen"):
            summary = await run_batch(
                make_job(tmp_path, sheet, [server.url]), RunOptions(sleep=no_sleep)
            )

    assert summary.plan.done >= 1 and summary.ok >= 1  # some rows were left for this run
    assert said(caplog) == []
