"""Reproducible rows: a rerun in a new folder, and `batchgen replay` of a recorded folder."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from runhelp import interrupt_after_first_row, manifest, no_sleep, served_sim, simulators
from schedhelp import FAST, run
from schedhelp import make_job as make_sched_job

from batchgen.cli import cli
from batchgen.errors import ConfigError
from batchgen.job import load_job
from batchgen.outputs.manifest import latest_records
from batchgen.run.replay import parse_rows, replay
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig, SimServer


def make_job(folder: Path, url: str, *, seed: str = "base = 5") -> Path:
    image = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image, "PNG")
    (folder / "in.png").write_bytes(image.getvalue())
    (folder / "sheet.csv").write_text(
        "prompt,seed,batch_size,init_images,denoising_strength,steps\n"
        "a red fox,,,,,\n"
        "a lighthouse,-1,2,,,12\n"
        "a bowl of ramen,1234,,,,\n"
        "a red fox,,,,,\n"
        "the fox repainted,,,in.png,0.5,\n",
        encoding="utf-8",
    )
    job = folder / "job.toml"
    job.write_text(
        f'name = "rep"\nsheet = "sheet.csv"\n\n[[endpoints]]\nurl = "{url}"\n\n'
        f'[defaults]\nsampler = "Euler a"\n\n[output]\ndir = "out"\n\n[seed]\n{seed}\n',
        encoding="utf-8",
    )
    return job


async def run_into(job: Path, out: Path, url: str) -> None:
    spec = load_job(job, endpoints=[url], out=out)
    summary = await run_batch(spec, RunOptions(sleep=no_sleep))
    assert summary.exit_code == 0


def canonical(bodies: list[dict[str, Any]]) -> list[str]:
    """The bodies as JSON text in the order their keys arrived: equal text, equal bytes sent."""
    return sorted(json.dumps(body) for body in bodies)


def image_digests(out: Path) -> dict[str, list[str]]:
    return {
        key: [hashlib.sha256((out / path).read_bytes()).hexdigest() for path in record.images]
        for key, record in latest_records(out).items()
    }


async def test_a_rerun_in_a_new_folder_sends_byte_identical_requests(tmp_path: Path) -> None:
    job = make_job(tmp_path, "sim://")
    async with SimServer() as first, SimServer() as second:
        await run_into(job, tmp_path / "one", first.url)
        await run_into(job, tmp_path / "two", second.url)
        sent = [first.stats.history, second.stats.history]
    assert len(sent[0]) == 5
    assert canonical(sent[0]) == canonical(sent[1])
    assert len({body["seed"] for body in sent[0]}) == 5, "twins get seeds of their own"
    one, two = image_digests(tmp_path / "one"), image_digests(tmp_path / "two")
    assert one == two and len(one) == 5
    records = latest_records(tmp_path / "one")
    assert [r.payload.get("init_images") for r in records.values()][-1] == [
        {"path": "in.png", "sha256": hashlib.sha256((tmp_path / "in.png").read_bytes()).hexdigest()}
    ]


async def test_replay_says_identical_and_resumes_itself(tmp_path: Path) -> None:
    job = make_job(tmp_path, "sim://")
    async with SimServer() as server:
        await run_into(job, tmp_path / "out", server.url)
        sent = len(server.stats.history)
        summary = await replay(tmp_path / "out", tmp_path / "again", endpoints=[server.url])
        assert [row.verdict for row in summary.rows] == ["identical"] * 5
        assert summary.exit_code == 0
        assert "same bytes" in summary.rows[0].detail
        assert all(line.simulator for line in latest_records(tmp_path / "again").values())
        replayed = server.stats.history[sent:]
        assert canonical(replayed) == canonical(server.stats.history[:sent])
        # The new folder has its own manifest: replaying into it again sends nothing.
        again = await replay(tmp_path / "out", tmp_path / "again", endpoints=[server.url])
        assert again.exit_code == 0 and len(server.stats.history) == 2 * sent
        # ...and is itself replayable.
        third = await replay(tmp_path / "again", tmp_path / "third", endpoints=[server.url])
        assert third.exit_code == 0 and len(third.rows) == 5


def test_replay_command_with_the_recorded_sim_endpoint(tmp_path: Path) -> None:
    job = make_job(tmp_path, "sim://")
    summary = asyncio.run(run_batch(load_job(job), RunOptions(sleep=no_sleep)))
    assert summary.exit_code == 0
    runner = CliRunner()
    result = runner.invoke(cli, ["replay", str(tmp_path / "out"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert result.stdout.count(": identical (") == 5
    rows = runner.invoke(
        cli, ["replay", str(tmp_path / "out"), "--out", str(tmp_path / "r2"), "--rows", "3-4"]
    )
    assert rows.exit_code == 0
    assert rows.stdout.splitlines() == [
        "row 3: identical (2 images, same bytes)",
        "row 4: identical (1 image, same bytes)",
    ]
    saved = json.loads((tmp_path / "r" / "job.json").read_text(encoding="utf-8"))
    assert saved["replay_of"] == str((tmp_path / "out").resolve())


async def test_replay_against_another_model_says_different(tmp_path: Path) -> None:
    job = make_job(tmp_path, "sim://")
    other = SimConfig(models=("some-other-model.safetensors",))
    async with SimServer() as server, SimServer(other) as elsewhere:
        await run_into(job, tmp_path / "out", server.url)
        summary = await replay(
            tmp_path / "out", tmp_path / "r", rows=frozenset({2}), endpoints=[elsewhere.url]
        )
    assert [row.verdict for row in summary.rows] == ["different"]
    assert "image 0 differs" in summary.rows[0].detail
    assert "some-other-model" in summary.rows[0].detail
    assert summary.exit_code == 1


async def test_a_changed_input_image_is_not_replayed(tmp_path: Path) -> None:
    job = make_job(tmp_path, "sim://")
    async with SimServer() as server:
        await run_into(job, tmp_path / "out", server.url)
        (tmp_path / "in.png").write_bytes((tmp_path / "in.png").read_bytes() + b"\0")
        sent = len(server.stats.history)
        summary = await replay(
            tmp_path / "out", tmp_path / "r", rows=frozenset({6}), endpoints=[server.url]
        )
        assert len(server.stats.history) == sent
    assert summary.rows[0].verdict == "not replayable"
    assert "changed since the run" in summary.rows[0].detail
    assert summary.exit_code == 1


async def test_random_seeds_replay_with_the_seed_the_server_drew(tmp_path: Path) -> None:
    job = make_job(tmp_path, "sim://", seed='mode = "random"')
    async with SimServer(SimConfig(fault_seed=1)) as server:
        await run_into(job, tmp_path / "out", server.url)
        await server.set_config(dataclasses.replace(server.config, fault_seed=2))
        summary = await replay(tmp_path / "out", tmp_path / "r", endpoints=[server.url])
    assert summary.exit_code == 0, summary.rows
    assert all(body["seed"] != -1 for body in server.stats.history[5:])


def test_parse_rows() -> None:
    assert parse_rows("2,5-7, 9") == {2, 5, 6, 7, 9}
    for bad in ("x", "5-2", "0"):
        with pytest.raises(ConfigError):
            parse_rows(bad)


async def test_replay_needs_a_manifest_and_a_new_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no manifest"):
        await replay(tmp_path, tmp_path / "r")
    with pytest.raises(ConfigError, match="new folder"):
        await replay(tmp_path, tmp_path)


async def recorded_run(tmp_path: Path, rows: int) -> Path:
    """A finished run of `rows` rows on a fast simulator; its output folder."""
    async with simulators(FAST) as (sim,):
        job = make_sched_job(tmp_path, [sim.url], [None] * rows)
        assert (await run(job)).exit_code == 0
    return job.out_dir


async def test_replay_survives_an_endpoint_dying_midway(tmp_path: Path) -> None:
    source = await recorded_run(tmp_path, 40)
    slower = dataclasses.replace(FAST, ms_per_step=1.0)
    dying = dataclasses.replace(slower, die_after=5)
    async with simulators(slower, dying) as (steady, victim):
        summary = await asyncio.wait_for(
            replay(source, tmp_path / "again", endpoints=[steady.url, victim.url]), 60
        )
    assert victim.stats.faults["die"] == 1
    assert [row.verdict for row in summary.rows] == ["identical"] * 40, summary.rows
    assert summary.exit_code == 0
    lines = manifest(tmp_path / "again")
    assert sorted(line["row"] for line in lines) == list(range(2, 42)), "each row once"
    assert steady.stats.generations >= 40 - 5


async def replay_process(source: Path, out: Path, url: str) -> asyncio.subprocess.Process:
    command = ["-m", "batchgen", "replay", str(source), "--out", str(out), "--endpoint", url]
    return await asyncio.create_subprocess_exec(
        sys.executable, *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def test_ctrl_c_during_replay_exits_130_and_running_it_again_finishes(
    tmp_path: Path,
) -> None:
    source = await recorded_run(tmp_path, 20)
    out = tmp_path / "again"
    slow = dataclasses.replace(FAST, ms_per_step=15.0)  # 0.3 s a row
    async with served_sim(slow) as (url, stats):
        process = await replay_process(source, out, url)
        stderr = await interrupt_after_first_row(process, out)
        assert process.returncode == 130, stderr.decode()
        assert "interrupted" in stderr.decode() and "Traceback" not in stderr.decode()
        first, sent = manifest(out), stats.requests["/sdapi/v1/txt2img"]
        assert 1 <= len(first) < 20 and {line["status"] for line in first} == {"ok"}
        assert len(first) == sent, "every row sent was finished and written, none dropped"

        again = await replay_process(source, out, url)
        stdout, stderr = await asyncio.wait_for(again.communicate(), 60)
    assert again.returncode == 0, stderr.decode()
    assert stdout.decode().count(": identical (") == 20
    assert sorted(line["row"] for line in manifest(out)) == list(range(2, 22)), "each row once"
    assert stats.requests["/sdapi/v1/txt2img"] == 20, "the second run sent only the rest"
