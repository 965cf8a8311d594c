"""Export test helpers: a real run folder made by the simulator, and what its manifest says."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from runhelp import make_job, no_sleep, write_sheet

from batchgen.outputs.manifest import ManifestRecord, latest_records
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig, SimServer

SPLITS = ("train", "train", "validation", "test")


def rows(count: int) -> list[dict[str, Any]]:
    """Prompts with two note columns: the split and a tag (a name batchgen also writes: 'run')."""
    return [
        {
            "prompt": f"a lighthouse, study {i}",
            "negative_prompt": "blurry" if i % 2 else "",
            "steps": 3 + i % 3,
            "cfg_scale": 6.5,
            "sampler_name": "Euler a",
            "batch_size": 1 + i % 2,
            "split": SPLITS[i % len(SPLITS)],
            "run": f"tag {i}",
        }
        for i in range(count)
    ]


def make_run(
    folder: Path,
    count: int,
    config: SimConfig | None = None,
    sheet_rows: list[dict[str, Any]] | None = None,
) -> Path:
    """A run folder made by a real run against an in-process simulator; its output folder."""
    folder.mkdir(parents=True, exist_ok=True)
    sheet = write_sheet(folder / "rows.csv", sheet_rows or rows(count))

    async def run() -> None:
        async with SimServer(config or SimConfig()) as sim:
            job = make_job(folder, sheet, [sim.url], attempts=1, columns={"run": ""})
            await run_batch(job, RunOptions(sleep=no_sleep, check=False))

    asyncio.run(run())
    return folder / "out"


def ok_images(out_dir: Path) -> dict[str, tuple[ManifestRecord, int]]:
    """Each image of a row whose last record is ok, by path (relative): its record and index."""
    return {
        path: (record, index)
        for record in latest_records(out_dir).values()
        if record.ok
        for index, path in enumerate(record.images)
    }
