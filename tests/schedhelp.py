"""Helpers for the scheduling and failover tests: checkpoint sheets, fast simulators, timed runs."""

from __future__ import annotations

import asyncio
import collections
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runhelp import manifest

from batchgen.job import EndpointSpec, JobSpec, OutputSpec, RetrySpec
from batchgen.records import RunSummary
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig

MODELS = ("a.safetensors", "b.safetensors", "c.safetensors")
FAST = SimConfig(models=MODELS, ms_per_step=0.5, switch_s=0.05)  # 10 ms a row, switch 50 ms


def make_job(
    folder: Path, urls: Sequence[str], models: Sequence[str | None], **extra: Any
) -> JobSpec:
    sheet = folder / "sheet.csv"
    with sheet.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "model", "steps", "seed"])
        for index, model in enumerate(models):
            writer.writerow([f"row {index}", model or "", 20, index])
    return JobSpec(
        name="sched",
        sheet=sheet,
        endpoints=tuple(EndpointSpec(url=url, name=f"e{i}") for i, url in enumerate(urls)),
        output=OutputSpec(dir=folder / "out"),
        retry=RetrySpec(attempts=8, backoff_initial=0.01, backoff_max=0.05),
        **{"check": False, **extra},
    )


async def run(job: JobSpec, timeout: float = 30.0) -> RunSummary:
    return await asyncio.wait_for(run_batch(job, RunOptions()), timeout)


def assert_each_row_ok_once(job: JobSpec, rows: int) -> list[dict[str, Any]]:
    lines = manifest(job.out_dir)
    ok = collections.Counter(line["row"] for line in lines if line["status"] == "ok")
    assert sorted(ok) == list(range(2, rows + 2)), "every row ok"
    assert set(ok.values()) == {1}, "no row recorded ok twice"
    return lines
