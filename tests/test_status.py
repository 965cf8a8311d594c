"""batchgen status: a live run in another process, a killed one, a finished one, a hung one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from runhelp import make_job, prompts, write_sheet

from batchgen.cli import cli
from batchgen.outputs.status import STATUS_FILE, read_status
from batchgen.outputs.store import OutputStore
from batchgen.run.runner import run_batch


def status_json(out: Path) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "batchgen", "status", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    return done.returncode, json.loads(done.stdout)


def test_status_of_a_live_run_then_of_the_same_run_killed(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(40))
    out = tmp_path / "out"
    run = subprocess.Popen(
        [
            *(sys.executable, "-m", "batchgen", "run", str(sheet), "--out", str(out)),
            *("--endpoint", "sim://?ms_per_step=125"),  # 4 steps: 0.5 s a row, 20 s in all
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "the run never published two finished rows"
            assert run.poll() is None, "the run ended before status could look at it"
            if (out / STATUS_FILE).exists():
                code, shown = status_json(out)
                if shown["ok"] >= 2:
                    break
            time.sleep(0.3)
        assert code == 0
        assert shown["state"] == "running"
        assert shown["total"] == 40 and 0 < shown["to_go"] <= 38
        assert shown["images_per_s"] > 0 and shown["eta_s"] > 0
        (endpoint,) = shown["endpoints"]
        assert endpoint["state"] == "up"
        assert endpoint["checkpoint"] == "v1-5-pruned-emaonly.safetensors"
        assert endpoint["name"].startswith("sim://127.0.0.1:")
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    code, shown = status_json(out)
    assert code == 1
    assert shown["state"] == "dead" and "died or was killed" in shown["note"]
    assert shown["eta_s"] is None
    watched = CliRunner().invoke(cli, ["status", str(out), "--watch"])  # returns: nothing live
    assert watched.exit_code == 1
    assert "dead (the run's lock is free" in watched.output


async def test_status_after_a_finished_run(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(5))
    job = make_job(tmp_path, sheet, ["sim://"])
    await run_batch(job)
    shown = read_status(job.out_dir)
    assert shown is not None
    assert (shown.state, shown.ok, shown.failed, shown.to_go, shown.total) == (
        "finished",
        5,
        0,
        0,
        5,
    )
    assert shown.endpoints[0]["done"] == 5
    result = CliRunner().invoke(cli, ["status", str(job.out_dir)])
    assert result.exit_code == 0
    assert "finished" in result.output and "rows: 5 done, 0 failed, 0 to go" in result.output


def test_a_running_status_that_stopped_changing_is_stale(tmp_path: Path) -> None:
    store = OutputStore(tmp_path, "t", "{row}", tmp_path)
    store.open()  # holds the run's lock, as a hung run would
    try:
        published = {"state": "running", "updated_at": time.time() - 120, "ok": 3, "to_go": 7}
        (tmp_path / STATUS_FILE).write_text(json.dumps(published), encoding="utf-8")
        shown = read_status(tmp_path, stale_after_s=30)
        assert shown is not None and shown.state == "stale"
        assert "no update for 2m" in shown.note
        assert read_status(tmp_path, stale_after_s=600).state == "running"  # type: ignore[union-attr]
    finally:
        store.close()


def test_status_of_a_folder_that_is_no_run_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["status", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a run folder" in result.output
