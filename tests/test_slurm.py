"""The Slurm example end to end under a real one-node Slurm: array of shards, dependent merge.

Simulators stand in for each task's A1111 (`A1111_CMD`); everything else is the example as shipped.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from runhelp import assert_exactly_once_ok, prompts, write_sheet
from slurmhelp import Slurm, one_node_slurm

from batchgen.job import load_job
from batchgen.rows.prepare import prepare

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "slurm"
SHARDS = 3


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    with one_node_slurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def free_port_base(count: int) -> int:
    """A port p with p..p+count-1 free on 127.0.0.1 (one simulator per array task), below the
    kernel's ephemeral range: there, any outgoing connection could take one before a task binds."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    lowest = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768
    draw = random.Random()
    for _ in range(200):
        base = draw.randrange(20000, lowest - count)
        if all(_free(base + k) for k in range(count)):
            return base
    raise AssertionError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_slurm_example_runs_shards_then_merges_each_row_once(
    tmp_path: Path, slurm: Slurm
) -> None:
    sheet = write_sheet(tmp_path / "sheet.csv", [*prompts(20), prompts(1)[0]])
    job = tmp_path / "job.toml"
    job.write_text('name = "cluster"\nsheet = "sheet.csv"\n[seed]\nbase = 3\n', encoding="utf-8")
    base = free_port_base(SHARDS)
    env = {
        **slurm.env,
        "BATCHGEN": f"{sys.executable} -m batchgen",
        "PYTHON": sys.executable,
        "A1111_CMD": f"exec {sys.executable} -m batchgen sim --port $PORT",
        "A1111_PORT": str(base),
        "A1111_PORT_PER_TASK": "1",  # the tasks share this one node
        "A1111_WAIT": "60",
    }
    env.pop("BATCHGEN_RAISE_ERRORS", None)

    submitted = subprocess.run(
        [str(EXAMPLES / "submit.sh"), str(job), str(SHARDS), "out", "merged"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    array, merge = submitted.stdout.split()
    try:
        slurm.wait_done(array, timeout=180)
        slurm.wait_done(merge, timeout=120)
    except AssertionError:
        subprocess.run(["scancel", array, merge], env=slurm.env, check=False)
        raise AssertionError(_outputs(tmp_path)) from None

    state = slurm.show(merge)
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, _outputs(tmp_path)
    expected = {task.key: task.row for task in prepare(load_job(job)).every_task()}
    records = assert_exactly_once_ok(tmp_path / "merged", sorted(expected.values()))
    assert {record["key"]: record["row"] for record in records} == expected
    for index in range(SHARDS):
        assert (tmp_path / "out" / f"shard-{index}-of-{SHARDS}" / "manifest.jsonl").is_file()
    assert not any(_answers(base + k) for k in range(SHARDS)), "a task left its A1111 running"
    assert sheet.is_file()


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def _outputs(folder: Path) -> str:
    return "\n".join(
        f"== {path.name}\n{path.read_text(errors='replace')[-3000:]}"
        for path in sorted(folder.glob("*.out")) + sorted(folder.glob("a1111-*.log"))
    )
