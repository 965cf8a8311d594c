"""`batchgen merge`: shard processes (one killed and run again) merge to one unsharded-equal run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from runhelp import assert_exactly_once_ok, manifest, prompts, write_sheet
from test_crash import SimProcess, _manifest_lines, _wait_for, finish

from batchgen.cli import cli

SHARDS = 3
ROWS = 36


@pytest.fixture
def slow_sims() -> Iterator[list[SimProcess]]:
    started: list[SimProcess] = []
    try:
        for _ in range(SHARDS):
            started.append(SimProcess({"ms_per_step": 8}))  # 20 steps: 0.16 s a row
        yield started
    finally:
        for sim in started:
            sim.stop()


def write_job(folder: Path, rows: int) -> Path:
    sheet = [{"prompt": f"a harbour at dusk, study {i}", "steps": 20} for i in range(rows)]
    sheet[5]["batch_size"] = 2
    write_sheet(folder / "sheet.csv", [*sheet, sheet[0]])  # the last row is a twin of the first
    job = folder / "job.toml"
    job.write_text(
        'name = "harbour"\nsheet = "sheet.csv"\ncheck = false\n[seed]\nbase = 11\n',
        encoding="utf-8",
    )
    return job


def batchgen(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BATCHGEN_RAISE_ERRORS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", *args],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def identity(out: Path) -> dict[str, Any]:
    """Per key: row, seeds, and the sha256 of every image's bytes."""
    return {
        record["key"]: (
            record["row"],
            record["seeds"],
            [hashlib.sha256((out / name).read_bytes()).hexdigest() for name in record["images"]],
        )
        for record in manifest(out)
    }


def test_killed_shard_rerun_then_merge_equals_one_unsharded_run(
    tmp_path: Path, slow_sims: list[SimProcess]
) -> None:
    job = write_job(tmp_path, ROWS)
    shard_root = tmp_path / "shards"
    runs = [
        batchgen(
            tmp_path,
            "run",
            str(job),
            "--out",
            "shards",
            "--shard",
            f"{index}/{SHARDS}",
            "--endpoint",
            sim.url,
        )
        for index, sim in enumerate(slow_sims)
    ]
    killed = shard_root / f"shard-1-of-{SHARDS}"
    _wait_for(lambda: _manifest_lines(killed) >= 2, runs[1])
    runs[1].send_signal(signal.SIGKILL)
    runs[1].wait()
    for index in (0, 2):
        code, err = finish(runs[index])
        assert code == 0, err
    folders = [str(shard_root / f"shard-{index}-of-{SHARDS}") for index in range(SHARDS)]

    code, err = finish(batchgen(tmp_path, "merge", *folders, "--out", "merged"))

    assert code == 1, err
    assert f"shard 1/{SHARDS}" in err and f"--shard 1/{SHARDS}" in err and "rows never" in err
    assert not (tmp_path / "merged").exists()

    code, err = finish(
        batchgen(
            tmp_path,
            "run",
            str(job),
            "--out",
            "shards",
            "--shard",
            f"1/{SHARDS}",
            "--endpoint",
            slow_sims[1].url,
        )
    )
    assert code == 0, err
    code, err = finish(batchgen(tmp_path, "merge", *folders, "--out", "merged"))
    assert code == 0, err
    assert f"merged {SHARDS} shards" in err

    whole_args = ["run", str(job), "--out", "whole"]
    for sim in slow_sims:
        whole_args += ["--endpoint", sim.url]
    code, err = finish(batchgen(tmp_path, *whole_args))
    assert code == 0, err
    merged, whole = tmp_path / "merged", tmp_path / "whole"
    assert_exactly_once_ok(merged, range(2, ROWS + 3))
    assert identity(merged) == identity(whole)
    assert (merged / "results.csv").read_text() == (whole / "results.csv").read_text()
    first_image = manifest(merged)[0]["images"][0]
    assert (merged / first_image).stat().st_nlink == 2  # hard-linked, not copied


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_shards(tmp_path: Path, sheet: Path, out: str, count: int) -> list[str]:
    for index in range(count):
        result = invoke(
            "run",
            str(sheet),
            "--endpoint",
            "sim://",
            "--out",
            str(tmp_path / out),
            "--shard",
            f"{index}/{count}",
        )
        assert result.exit_code == 0, result.output
    return [str(tmp_path / out / f"shard-{index}-of-{count}") for index in range(count)]


def test_merge_refuses_shards_of_another_sheet_and_writes_nothing(tmp_path: Path) -> None:
    first = run_shards(tmp_path, write_sheet(tmp_path / "a.csv", prompts(6)), "a", 2)
    other = write_sheet(tmp_path / "b.csv", prompts(6, cfg_scale=5))
    second = run_shards(tmp_path, other, "b", 2)

    result = invoke("merge", first[0], second[1], "--out", str(tmp_path / "m"))

    assert result.exit_code == 2
    assert "different jobs or sheets" in result.stderr and first[0] in result.stderr
    assert not (tmp_path / "m").exists()


def test_merge_names_a_missing_shard_and_refuses_duplicates(tmp_path: Path) -> None:
    folders = run_shards(tmp_path, write_sheet(tmp_path / "a.csv", prompts(9)), "a", 3)
    out = str(tmp_path / "m")

    missing = invoke("merge", folders[0], folders[2], "--out", out)
    twice = invoke("merge", folders[0], folders[0], folders[1], folders[2], "--out", out)

    assert missing.exit_code == 1
    assert "shard 1/3: no folder of it was given" in missing.stderr
    assert "--shard 1/3" in missing.stderr
    assert twice.exit_code == 2 and "given twice" in twice.stderr
    Path(folders[2]).rename(tmp_path / "elsewhere")  # as if task 2 never started
    never_ran = invoke("merge", *folders, "--out", out)
    assert never_ran.exit_code == 1 and "shard-2-of-3: no such folder" in never_ran.stderr
    assert "shard 2/3: no folder of it was given" in never_ran.stderr
    assert not (tmp_path / "m").exists()


def test_merge_never_writes_into_a_folder_that_holds_something(tmp_path: Path) -> None:
    folders = run_shards(tmp_path, write_sheet(tmp_path / "a.csv", prompts(4)), "a", 2)
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    result = invoke("merge", *folders, "--out", str(out))

    assert result.exit_code == 2 and "not empty" in result.stderr
    assert [path.name for path in out.iterdir()] == ["keep.txt"]

    fresh = invoke("merge", *folders, "--out", str(tmp_path / "m2"))
    assert fresh.exit_code == 0, fresh.output
    assert_exactly_once_ok(tmp_path / "m2", range(2, 6))


def test_merge_of_a_folder_that_is_not_a_shard_says_so(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "a.csv", prompts(2))
    assert (
        invoke("run", str(sheet), "--endpoint", "sim://", "--out", str(tmp_path / "u")).exit_code
        == 0
    )

    result = invoke("merge", str(tmp_path / "u"), "--out", str(tmp_path / "m"))

    assert result.exit_code == 2 and "not a shard folder" in result.stderr
