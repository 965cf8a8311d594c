"""Shards: `--shard i/N` parsed or taken from the scheduler's environment, and the key filter.

A task belongs to shard `i` of `N` when its stable key hashes to `i` modulo `N` (sha256, so every
machine and Python agrees; Python's `hash()` is salted per process). Keys and seeds are made from
the whole sheet before the filter, so a shard's rows get the keys and seeds of an unsharded run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchgen.errors import ConfigError

if TYPE_CHECKING:
    from batchgen.job import JobSpec
    from batchgen.records import Task

SHARD_PLAN = "shard.json"  # the keys a shard was given and the job's size per shard, for merge


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count` (index from 0)."""

    index: int
    count: int

    @property
    def folder(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def keeps(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(key: str, count: int) -> int:
    """The shard a key falls in: the first 8 bytes of its sha256, modulo the shard count."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count


def keeps(shard: Shard | None, task: Task) -> bool:
    """Whether this run sends the task (no shard: every task)."""
    return shard is None or shard.keeps(task.key)


def parse_shard(text: str) -> Shard:
    """`i/N` from the command line; ConfigError with the fix when it is not one."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"--shard {text!r}: write it as INDEX/COUNT, e.g. --shard 0/4")
    index, count = int(match[1]), int(match[2])
    return _checked(index, count, f"--shard {text}")


def _checked(index: int, count: int, where: str) -> Shard:
    if count < 1:
        raise ConfigError(f"{where}: the shard count must be 1 or more")
    if not 0 <= index < count:
        raise ConfigError(
            f"{where}: shard indexes run from 0 to {count - 1} (shard {index} of {count} "
            f"does not exist); e.g. --shard 0/{count}"
        )
    return Shard(index, count)


def resolve_shard(
    spec: str | None,
    count: int | None,
    env: Mapping[str, str],
) -> Shard | None:
    """The shard this process runs: `--shard i/N`, else the Slurm array or Kubernetes index.

    `count` is `--shards N` or the job file's `shards`. A spec that disagrees with the
    environment or the count is a ConfigError: a task must never quietly run another's rows.
    """
    from_env = _from_environment(env, count)
    if spec is not None:
        shard = parse_shard(spec)
        if count is not None and count != shard.count:
            raise ConfigError(
                f"--shard {spec} says {shard.count} shards, but the job asks for {count} "
                "(--shards or `shards` in the job file); make them agree"
            )
        if from_env is not None and from_env[0] != shard:
            raise ConfigError(
                f"--shard {spec} disagrees with the environment ({from_env[1]} gives shard "
                f"{from_env[0]}); drop --shard to follow the scheduler, or fix the array/index"
            )
        return shard
    if from_env is not None:
        return from_env[0]
    if count is not None:
        raise ConfigError(
            f"{count} shards asked for, but not which one this is: give --shard i/{count}, or run "
            "as a Slurm array task or a Kubernetes Indexed Job pod"
        )
    return None


def _from_environment(env: Mapping[str, str], count: int | None) -> tuple[Shard, str] | None:
    if "SLURM_ARRAY_TASK_ID" in env:
        task = _int(env, "SLURM_ARRAY_TASK_ID")
        first = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        tasks = _int(env, "SLURM_ARRAY_TASK_COUNT") if "SLURM_ARRAY_TASK_COUNT" in env else None
        total = tasks if tasks is not None else count
        if total is None:
            raise ConfigError(
                "SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT: give --shards N"
            )
        if count is not None and tasks is not None and count != tasks:
            raise ConfigError(
                f"the Slurm array has {tasks} tasks (SLURM_ARRAY_TASK_COUNT) but the job asks for "
                f"{count} shards; submit --array=0-{count - 1} or change --shards"
            )
        where = f"SLURM_ARRAY_TASK_ID={task}, SLURM_ARRAY_TASK_MIN={first}"
        if not 0 <= task - first < total:
            raise ConfigError(
                f"{where}, {total} tasks: not a shard index; submit a contiguous array "
                f"(--array=0-{total - 1}, no step)"
            )
        return Shard(task - first, total), where
    if "JOB_COMPLETION_INDEX" in env:
        index = _int(env, "JOB_COMPLETION_INDEX")
        where = f"JOB_COMPLETION_INDEX={index}"
        if count is None:
            raise ConfigError(
                f"{where} (a Kubernetes Indexed Job) but no shard count: give --shards N with N "
                "the Job's completions, or `shards = N` in the job file"
            )
        return _checked(index, count, where), where
    return None


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"{name}={env[name]!r}: not a whole number") from None


def fingerprint(job: JobSpec) -> str:
    """What makes two runs the same job: the sheet's bytes and every setting a request uses."""
    digest = hashlib.sha256()
    with job.sheet.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    settings = job.model_dump(
        mode="json",
        include={"sheet_name", "defaults", "columns", "controlnet", "seed"},
    )
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def write_shard_plan(job: JobSpec, shard: Shard, tasks: Iterable[Task]) -> None:
    """Record the shard's keys (key -> row) and the job's size per shard, for merge to check."""
    keys: dict[str, int] = {}
    per_shard = [0] * shard.count
    for task in tasks:
        owner = shard_of(task.key, shard.count)
        per_shard[owner] += 1
        if owner == shard.index:
            keys[task.key] = task.row
    plan: dict[str, Any] = {
        "index": shard.index,
        "count": shard.count,
        "per_shard": per_shard,
        "keys": keys,
    }
    target = job.out_dir / SHARD_PLAN
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(plan) + "\n", encoding="utf-8")
    tmp.replace(target)


def read_shard_plan(folder: Path) -> dict[str, Any]:
    """A shard folder's plan; ConfigError naming the folder if it is not a shard's."""
    path = folder / SHARD_PLAN
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{folder}: not a shard folder (no {SHARD_PLAN}); give the folders that "
            "`batchgen run --shard i/N` wrote"
        ) from None
    except ValueError as error:
        raise ConfigError(f"{path}: unreadable ({error})") from None
    return data
