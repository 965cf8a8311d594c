"""`--shard i/N`: the key filter, defaults from Slurm and Kubernetes, the errors, seeds kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from runhelp import manifest, prompts, write_sheet

from batchgen.cli import cli
from batchgen.errors import ConfigError
from batchgen.job import load_job
from batchgen.outputs.shards import Shard, resolve_shard, shard_of
from batchgen.rows.prepare import prepare


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_the_shard_hash_is_the_same_in_another_python_process() -> None:
    keys = [f"{index:016x}-0" for index in range(200)]
    here = [shard_of(key, 7) for key in keys]
    code = (
        "import json, sys; from batchgen.outputs.shards import shard_of; "
        "print(json.dumps([shard_of(k, 7) for k in json.load(sys.stdin)]))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(keys),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert json.loads(there.stdout) == here
    assert set(here) == set(range(7))  # every shard gets some of 200 keys


def test_shards_split_the_rows_with_the_same_keys_and_seeds_as_unsharded(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "s.csv", [*prompts(30), prompts(1)[0]])  # a twin too
    whole = {task.key: task for task in prepare(load_job(sheet)).every_task()}
    seen: dict[str, int] = {}
    for index in range(3):
        job = load_job(sheet).model_copy(update={"shard": Shard(index, 3)})
        result = invoke(
            "run", str(sheet), "--shard", f"{index}/3", "--dry-run", "--endpoint", "sim://"
        )
        assert result.exit_code == 0, result.output
        assert f"# shard {index}/3:" in result.stderr
        for task in (t for t in prepare(job).every_task() if job.shard and job.shard.keeps(t.key)):
            assert task.body["seed"] == whole[task.key].body["seed"]
            seen[task.key] = seen.get(task.key, 0) + 1
    assert seen == dict.fromkeys(whole, 1)


def test_a_shard_writes_its_own_folder_with_only_its_rows(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "s.csv", prompts(12))
    out = tmp_path / "out"

    result = invoke("run", str(sheet), "--endpoint", "sim://", "--out", str(out), "--shard", "1/3")

    assert result.exit_code == 0, result.output
    folder = out / "shard-1-of-3"
    assert [path.name for path in out.iterdir()] == ["shard-1-of-3"]
    keys = {record["key"] for record in manifest(folder)}
    assert keys and all(shard_of(key, 3) == 1 for key in keys)
    plan = json.loads((folder / "shard.json").read_text())
    assert set(plan["keys"]) == keys and sum(plan["per_shard"]) == 12
    assert json.loads((folder / "job.json").read_text())["shard"] == {"index": 1, "count": 3}


@pytest.mark.parametrize(
    ("env", "count", "expected"),
    [
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, None, Shard(2, 4)),
        (  # --array=1-3: task ids 1..3 are shards 0..2
            {
                "SLURM_ARRAY_TASK_ID": "1",
                "SLURM_ARRAY_TASK_COUNT": "3",
                "SLURM_ARRAY_TASK_MIN": "1",
            },
            None,
            Shard(0, 3),
        ),
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, 4, Shard(3, 4)),
        ({"JOB_COMPLETION_INDEX": "2"}, 5, Shard(2, 5)),
        ({}, None, None),
    ],
)
def test_the_shard_defaults_from_the_scheduler(
    env: dict[str, str], count: int | None, expected: Shard | None
) -> None:
    assert resolve_shard(None, count, env) == expected


def test_a_slurm_array_task_runs_its_shard_into_its_folder(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "s.csv", prompts(9))
    out = tmp_path / "out"
    slurm = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"}

    result = invoke("run", str(sheet), "--endpoint", "sim://", "--out", str(out), env=slurm)

    assert result.exit_code == 0, result.output
    assert all(shard_of(r["key"], 3) == 2 for r in manifest(out / "shard-2-of-3"))


def test_a_kubernetes_index_takes_the_count_from_the_job_file(tmp_path: Path) -> None:
    write_sheet(tmp_path / "s.csv", prompts(9))
    job = tmp_path / "job.toml"
    job.write_text('sheet = "s.csv"\nshards = 3\n[output]\ndir = "out"\n', encoding="utf-8")

    result = invoke("check", str(job), "--endpoint", "sim://", env={"JOB_COMPLETION_INDEX": "1"})

    assert result.exit_code == 0, result.output
    assert "in shard 1/3, all valid" in result.output


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--shard", "3/3"], {}, "shard indexes run from 0 to 2"),
        (["--shard", "0/0"], {}, "the shard count must be 1 or more"),
        (["--shard", "1of3"], {}, "write it as INDEX/COUNT"),
        (
            ["--shard", "0/3"],
            {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"},
            "disagrees with the environment",
        ),
        (
            ["--shards", "4"],
            {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"},
            "the Slurm array has 3 tasks",
        ),
        (["--shard", "1/3", "--shards", "4"], {}, "make them agree"),
        (["--shards", "4"], {}, "not which one this is"),
        ([], {"JOB_COMPLETION_INDEX": "0"}, "give --shards N"),
        (["--shards", "2"], {"JOB_COMPLETION_INDEX": "2"}, "shard indexes run from 0 to 1"),
    ],
)
def test_bad_shard_specs_exit_2_and_send_nothing(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    sheet = write_sheet(tmp_path / "s.csv", prompts(3))
    out = tmp_path / "out"

    result = invoke("run", str(sheet), "--endpoint", "sim://", "--out", str(out), *args, env=env)

    assert result.exit_code == 2
    assert message in result.stderr
    assert not out.exists()


def test_resolve_shard_raises_config_error_for_a_non_number() -> None:
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID='x'"):
        resolve_shard(None, None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"})


def test_a_job_file_names_the_count_but_not_the_shard(tmp_path: Path) -> None:
    write_sheet(tmp_path / "s.csv", prompts(2))
    job = tmp_path / "job.toml"
    job.write_text('sheet = "s.csv"\nshard = {index = 0, count = 2}\n', encoding="utf-8")

    result = invoke("run", str(job), "--endpoint", "sim://")

    assert result.exit_code == 2
    assert "'shard' is not a job key" in result.stderr and "shards = N" in result.stderr
