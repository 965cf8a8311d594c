"""ComfyUI benchmark: rows/s against the A1111 path, and makespan against the fluid optimum.

    python benchmarks/bench_comfy.py [--rows 400] [--sched-rows 400] [--seed 1]

1. Throughput: one zero-delay simulator in its own process, A1111 flavor, then ComfyUI flavor
   (taking turns over several rounds); the same sheet through `run_batch` on each. A ComfyUI row
   costs two requests (POST /prompt, GET /view) and a websocket burst against A1111's one POST;
   the goal is >= 0.8x. CPU per row (client + simulator) is shown too: on a shared machine it
   moves less than wall time. Then the same with 50 ms a row.
2. Scheduling: four ComfyUI simulators of speeds 1, 1, 2, 4, rows naming 4 checkpoints in random
   order, a switch costing several rows. The optimum is bench_schedule's lower bound at each
   endpoint's measured rate (measured alone, on one checkpoint, in this run); it lets every
   endpoint start with the first checkpoint loaded, which ComfyUI does not, so it is low.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from bench_schedule import lower_bound
from benchhelp import free_port

from batchgen.job import EndpointSpec, JobSpec, OutputSpec, RetrySpec
from batchgen.run.runner import RunOptions, run_batch

MODELS = ("alpha.safetensors", "beta.safetensors", "gamma.safetensors", "delta.safetensors")
SPEEDS = (1.0, 1.0, 2.0, 4.0)
STEPS = 20


@contextlib.asynccontextmanager
async def sim_processes(
    options: Sequence[dict[str, Any]],
) -> AsyncIterator[tuple[list[str], list[int]]]:
    """`python -m batchgen.sim` per option set, each on its own port; their URLs and pids."""
    procs, urls = [], []
    try:
        for settings in options:
            port = free_port()
            sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "batchgen.sim",
                    "--port",
                    str(port),
                    *sets,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as session:
            for url in urls:
                for _ in range(500):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(url + "/_sim/stats") as response:
                            if response.status == 200:
                                break
                    await asyncio.sleep(0.02)
        yield urls, [proc.pid for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def job_for(sheet: Path, out: Path, urls: Sequence[str], backend: str) -> JobSpec:
    return JobSpec(
        name="bench",
        sheet=sheet,
        endpoints=tuple(
            EndpointSpec(url=url, name=f"e{i}", backend=backend)  # type: ignore[arg-type]
            for i, url in enumerate(urls)
        ),
        output=OutputSpec(dir=out),
        retry=RetrySpec(attempts=8, backoff_initial=0.05, backoff_max=0.5),
        check=False,
        wait_all_down=30.0,
    )


def write_sheet(path: Path, rows: int, models: Sequence[str] | None, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "steps", "seed", *(["checkpoint"] if models else [])])
        for index in range(rows):
            writer.writerow(
                [f"row {index}", STEPS, index, *([rng.choice(models)] if models else [])]
            )
    return path


def makespan(out: Path) -> tuple[float, int]:
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    first = min(line["started_at"] for line in lines)
    last = max(line["started_at"] + line["duration_s"] for line in lines)
    return last - first, sum(line["status"] == "ok" for line in lines)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_rate(out: Path) -> float:
    """Rows per second after the first row is back: ComfyUI starts with no checkpoint loaded,
    and that first load is not the endpoint's speed."""
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ends = sorted(line["started_at"] + line["duration_s"] for line in lines)
    return (len(ends) - 1) / (ends[-1] - ends[0])


async def throughput(base: Path, label: str, rows: int, rounds: int, ms_per_step: float) -> None:
    sheet = write_sheet(base / f"plain-{ms_per_step}.csv", rows, None, 0)
    row_ms = STEPS * ms_per_step
    print(
        f"{label} throughput: {rows} rows, one simulator in its own process, {row_ms:g} ms a row; "
        f"{rounds} rounds, the flavors taking turns (the machine's load varies)"
    )
    rates: dict[str, list[float]] = {"a1111": [], "comfy": []}
    cpu: dict[str, list[float]] = {"a1111": [], "comfy": []}
    for round_no in range(rounds):
        for flavor in ("a1111", "comfy") if round_no % 2 == 0 else ("comfy", "a1111"):
            settings = {"flavor": flavor, "ms_per_step": ms_per_step, "switch_s": 0}
            async with sim_processes([settings]) as (urls, pids):
                out = base / f"tp-{flavor}-{ms_per_step}-{round_no}"
                before = os.times(), _cpu_s(pids[0])
                started = time.monotonic()
                summary = await run_batch(job_for(sheet, out, urls, flavor), RunOptions())
                elapsed = time.monotonic() - started
                after = os.times(), _cpu_s(pids[0])
            assert summary.ok == rows, summary
            rates[flavor].append(rows / elapsed)
            used = sum(after[0][:2]) - sum(before[0][:2]) + after[1] - before[1]
            cpu[flavor].append(used / rows * 1000)
    for flavor, found in rates.items():
        shown = ", ".join(f"{rate:.0f}" for rate in found)
        print(
            f"   {flavor:6} median {statistics.median(found):6.1f} rows/s ({shown}); "
            f"CPU {statistics.median(cpu[flavor]):.2f} ms a row (client + simulator)"
        )
    ratio = statistics.median(rates["comfy"]) / statistics.median(rates["a1111"])
    best = max(rates["comfy"]) / max(rates["a1111"])  # the least disturbed round of each
    print(
        f"   ComfyUI / A1111: {ratio:.2f}x of the medians, {best:.2f}x of the best (goal >= 0.8x)"
    )


async def scheduling(base: Path, rows: int, seed: int, ms_per_step: float, switch_s: float) -> None:
    settings = [
        {
            "flavor": "comfy",
            "models": ",".join(MODELS),
            "ms_per_step": ms_per_step,
            "switch_s": switch_s,
            "speed": speed,
        }
        for speed in SPEEDS
    ]
    row_ms = STEPS * ms_per_step
    print(
        f"2. scheduling: {rows} rows over {len(MODELS)} checkpoints in random order, ComfyUI "
        f"endpoints of speeds {', '.join(f'{s:g}' for s in SPEEDS)} (a row {row_ms:g} ms at "
        f"speed 1, a switch {switch_s * 1000:g} ms)"
    )
    calibration = write_sheet(base / "one.csv", 40, MODELS[:1], 0)
    async with sim_processes(settings) as (urls, _):
        measured = await asyncio.gather(
            *(
                run_batch(job_for(calibration, base / f"cal{i}", [url], "comfy"), RunOptions())
                for i, url in enumerate(urls)
            )
        )
    assert all(s.ok == 40 for s in measured)
    rates = [steady_rate(base / f"cal{i}") for i in range(len(urls))]
    print("   measured rates (rows/s): " + ", ".join(f"{r:.1f}" for r in rates))
    sheet = write_sheet(base / "sched.csv", rows, MODELS, seed)
    with sheet.open() as handle:
        first = sum(1 for row in csv.DictReader(handle) if row["checkpoint"] == MODELS[0])
    best = lower_bound(rows, first, rates, switch_s)
    async with sim_processes(settings) as (urls, _):
        summary = await run_batch(job_for(sheet, base / "sched", urls, "comfy"), RunOptions())
        async with aiohttp.ClientSession() as session:
            switches = 0
            for url in urls:
                async with session.get(url + "/_sim/stats") as response:
                    switches += int((await response.json())["switches"])
    span, ok = makespan(base / "sched")
    print(
        f"   makespan {span:.2f} s vs fluid optimum {best:.2f} s: {span / best:.3f}x; "
        f"{switches} checkpoint loads (bound {len(MODELS) + len(SPEEDS)}), {ok}/{rows} rows ok"
    )
    assert summary.ok == rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--sched-rows", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ms-per-step", type=float, default=2.0)
    parser.add_argument("--switch-s", type=float, default=0.2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        await throughput(Path(tmp), "1a.", args.rows, args.rounds, 0.0)
        # With a generation that takes any time at all, the extra round trip stops mattering.
        await throughput(Path(tmp), "1b.", args.rows // 4, 3, 2.5)
        await scheduling(Path(tmp), args.sched_rows, args.seed, args.ms_per_step, args.switch_s)


if __name__ == "__main__":
    asyncio.run(main())
