"""`batchgen run`: exit codes, --dry-run, the default folder, plain log lines, secrets, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from openpyxl import Workbook
from runhelp import (
    all_text,
    batchgen_run,
    interrupt_after_first_row,
    manifest,
    prompts,
    served_sim,
    write_sheet,
)

from batchgen.cli import cli
from batchgen.sim import SimConfig


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)


def test_all_rows_ok_exits_0_and_the_default_folder_is_outputs_job_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_sheet(tmp_path / "my prompts.csv", prompts(3))

    result = invoke("my prompts.csv", "--endpoint", "sim://")

    assert result.exit_code == 0, result.output
    out = tmp_path / "outputs" / "my_prompts"
    assert sorted(r["row"] for r in manifest(out)) == [2, 3, 4]
    assert (out / "run.log").is_file() and (out / "results.csv").is_file()
    assert "finished in" in result.stderr and "outputs:" in result.stderr


def test_a_failed_row_exits_1(tmp_path: Path) -> None:
    rows = prompts(2)
    rows[0]["script_name"] = "no such script"
    sheet = write_sheet(tmp_path / "rows.csv", rows)

    result = invoke(str(sheet), "--endpoint", "sim://", "--out", str(tmp_path / "o"), "--no-check")

    assert result.exit_code == 1
    assert [r["status"] for r in manifest(tmp_path / "o")] == ["failed", "ok"]
    assert "--retry-failed" in result.stderr


def test_an_invalid_sheet_exits_2_and_sends_nothing(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", [*prompts(2), {"prompt": "x", "steps": "many"}])

    result = invoke(str(sheet), "--endpoint", "http://127.0.0.1:9", "--out", str(tmp_path / "o"))

    assert result.exit_code == 2
    assert "row 4" in result.stderr and "steps" in result.stderr
    assert not (tmp_path / "o").exists()


def test_an_invalid_job_file_exits_2(tmp_path: Path) -> None:
    write_sheet(tmp_path / "rows.csv", prompts(1))
    job = tmp_path / "job.toml"
    job.write_text('sheet = "rows.csv"\n[retry]\nattempt = 3\n', encoding="utf-8")

    result = invoke(str(job))

    assert result.exit_code == 2
    assert "retry.attempt" in result.stderr and "attempts" in result.stderr


def test_dry_run_prints_the_first_bodies_and_sends_nothing(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "rows.jsonl", prompts(5, seed=7))

    result = invoke(
        str(sheet), "--dry-run", "--endpoint", "http://127.0.0.1:9", "--set", "cfg_scale=5"
    )

    assert result.exit_code == 0
    decoder, text, shown = json.JSONDecoder(), result.stdout, []
    while text.strip():
        item, end = decoder.raw_decode(text.strip())
        shown.append(item)
        text = text.strip()[end:]
    assert [item["row"] for item in shown] == [1, 2, 3]
    assert shown[0]["body"]["prompt"] == "a lighthouse, study 0"
    assert shown[0]["body"]["cfg_scale"] == 5 and shown[0]["body"]["seed"] == 7
    assert "nothing is sent" in result.stderr
    assert not (tmp_path / "outputs").exists() and not Path("outputs/rows").exists()


async def test_credentials_in_an_endpoint_url_never_reach_the_output(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(3))
    ok, bad = tmp_path / "ok", tmp_path / "bad"
    async with served_sim(SimConfig(api_auth="alice:Hunter2-secret")) as (url, _):
        host = url.removeprefix("http://")
        code, output = await batchgen_run(
            str(sheet), "--endpoint", f"http://alice:Hunter2-secret@{host}", "--out", str(ok)
        )
        bad_code, bad_output = await batchgen_run(
            str(sheet), "--endpoint", f"http://alice:wrong-Hunter3@{host}", "--out", str(bad)
        )

    assert code == 0, output
    assert "finished in" in output and f"{url} (up, simulator): 3 done" in output  # plain log lines
    assert "Hunter2" not in output + all_text(ok)
    assert bad_code == 2 and "401" in bad_output and "Hunter3" not in bad_output


async def test_ctrl_c_finishes_rows_in_flight_and_exits_130(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(30))
    out = tmp_path / "out"
    async with served_sim(SimConfig(ms_per_step=60)) as (url, stats):  # 0.24 s per row
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "batchgen",
            "run",
            str(sheet),
            "--endpoint",
            url,
            "--out",
            str(out),
            stderr=asyncio.subprocess.PIPE,
        )
        stderr = await interrupt_after_first_row(process, out)
        sent = stats.generations

    assert process.returncode == 130, stderr.decode()
    records = manifest(out)
    assert 1 <= len(records) < 30 and {r["status"] for r in records} == {"ok"}
    assert len(records) >= sent - 1  # the rows in flight were finished and written
    assert all((out / path).is_file() for r in records for path in r["images"])


@pytest.mark.parametrize("where", ["after", "before"])
def test_verbose_works_before_and_after_the_subcommand(tmp_path: Path, where: str) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(1))
    args = [str(sheet), "--endpoint", "sim://", "--out", str(tmp_path / "o")]
    argv = ["run", *args, "-v"] if where == "after" else ["-v", "run", *args]

    result = CliRunner().invoke(cli, argv, catch_exceptions=False)

    assert result.exit_code == 0, result.stderr
    assert "simulator (a1111) at http://127.0.0.1:" in result.stderr  # an INFO line
    assert "--verbose" in CliRunner().invoke(cli, ["run", "--help"]).output


def test_endpoints_as_a_list_of_urls_in_the_job_file(tmp_path: Path) -> None:
    write_sheet(tmp_path / "rows.csv", prompts(2))
    job = tmp_path / "job.toml"
    job.write_text('sheet = "rows.csv"\nendpoints = ["sim://", "sim://?speed=2"]\n')

    result = invoke(str(job), "--out", str(tmp_path / "o"))

    assert result.exit_code == 0, result.stderr
    assert [r["status"] for r in manifest(tmp_path / "o")] == ["ok", "ok"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("endpoints = [7860]", "endpoints item 1: each endpoint must be a URL in quotes"),
        ('in_flight = "two"', "in_flight: must be a whole number, e.g. in_flight = 2"),
        ("[retry]\nattempts = 0", "retry.attempts: must be more than 0, e.g. attempts = 5"),
        ("[output]\nfilename = 5", "output.filename: must be text in quotes, e.g. filename ="),
        ("[[endpoints]]\nurl = 5", "endpoints item 1.url: must be text in quotes, e.g. url ="),
    ],
)
def test_job_file_errors_read_in_the_users_words(tmp_path: Path, body: str, expected: str) -> None:
    write_sheet(tmp_path / "rows.csv", prompts(1))
    job = tmp_path / "job.toml"
    job.write_text(f'sheet = "rows.csv"\n{body}\n', encoding="utf-8")

    result = invoke(str(job))

    assert result.exit_code == 2
    assert expected in result.stderr
    assert "Input should be" not in result.stderr and "EndpointSpec" not in result.stderr


def test_set_sheet_name_picks_the_sheet_of_a_bare_workbook(tmp_path: Path) -> None:
    book = Workbook()
    assert book.active is not None
    book.active.append(["prompt"])
    book.active.append(["not this one"])
    wanted = book.create_sheet("night")
    wanted.append(["prompt", "steps"])
    wanted.append(["a lighthouse", 4])
    book.save(tmp_path / "book.xlsx")
    out = tmp_path / "o"

    result = invoke(
        str(tmp_path / "book.xlsx"),
        "--endpoint",
        "sim://",
        "--out",
        str(out),
        "--set",
        "sheet_name=night",
        "--set",
        "cfg_scale=6.5",
        "--set",
        "clip_skip=2",
    )

    assert result.exit_code == 0, result.stderr
    (record,) = manifest(out)
    assert record["payload"]["prompt"] == "a lighthouse"
    assert "sheet_name" not in record["payload"]
    saved = json.loads((out / "job.json").read_text())
    assert saved["sheet_name"] == "night"
    assert saved["defaults"] == {"cfg_scale": 6.5, "clip_skip": 2}  # numbers, not "6.5", "2"


def test_one_of_a_thing_is_said_in_the_singular(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(1))

    result = invoke(str(sheet), "--endpoint", "sim://", "--out", str(tmp_path / "o"))

    assert result.exit_code == 0, result.stderr
    assert "1 row: 0 done" in result.stderr
    assert "1 image (" in result.stderr and "0 checkpoint switches" in result.stderr
    assert "1 images" not in result.stderr and "1 rows" not in result.stderr


@pytest.mark.parametrize("first_at", [0.2, 0.6, 1.0])
def test_ctrl_c_again_and_again_ends_with_a_line_not_a_traceback(
    tmp_path: Path, first_at: float
) -> None:
    """Ctrl-C while Python loads, while rows run, and while the run shuts down."""
    sheet = write_sheet(tmp_path / "rows.csv", prompts(30))
    command = [sys.executable, "-m", "batchgen", "run", str(sheet), "--endpoint"]
    command += ["sim://?ms_per_step=60", "--out", str(tmp_path / "out")]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    time.sleep(first_at)
    for _ in range(12):
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGINT)
        time.sleep(0.15)
    _, stderr = process.communicate(timeout=30)

    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert process.returncode in (130, -signal.SIGINT), stderr
    if process.returncode == 130:
        assert stderr.rstrip().endswith("interrupted; run the same command again to resume")
