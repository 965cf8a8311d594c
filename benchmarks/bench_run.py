"""`batchgen run` benchmark: makespan against the ideal, throughput against a naive loop, memory.

    python benchmarks/bench_run.py [--quick] [--only makespan|throughput|memory]

Simulators run in a separate process (one event loop serving all of them), so that they do not
share the runner's core. Three parts, all printed:
  1. makespan: K = 1, 4, 16 endpoints, equal and mixed speeds, at a time model of 0.5 s per
     512x512 image at speed 1 (ms_per_step=25, 20 steps). Makespan is read from the manifest
     (first row started to last row written); the ideal is total work / total speed. Also shown:
     how far apart the endpoints finished, and a client without a scheduler that queues each
     endpoint's exact share at once.
  2. throughput: zero-delay endpoints, 512x512 images, batchgen against a naive loop (one request
     at a time to one endpoint, images decoded and written, a JSONL line per row, no fsync).
  3. memory: batchgen in a fresh process per sheet size; peak RSS (ru_maxrss) for a small and a
     large CSV (default 10,000 and 100,000 rows) on the zero-delay endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import json
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from batchgen.job import EndpointSpec, JobSpec, OutputSpec, TimeoutSpec
from batchgen.records import RunSummary
from batchgen.run.runner import RunOptions, run_batch

STEPS = 20
MS_PER_STEP = 25.0  # 0.5 s per row at speed 1
ZERO = {"ms_per_step": 0, "switch_s": 0}


# ----- simulators in another process -----


def serve_sims(configs: list[dict[str, Any]]) -> None:
    """Child process: start one simulator per config, print their URLs, serve until stdin ends."""
    from batchgen.sim import SimConfig, SimServer

    async def main() -> None:
        servers = [SimServer(SimConfig.from_mapping(config)) for config in configs]
        urls = [await server.start() for server in servers]
        print(json.dumps(urls), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for server in servers:
            await server.stop()

    asyncio.run(main())


@contextlib.contextmanager
def simulators(configs: Sequence[dict[str, Any]]) -> Iterator[list[str]]:
    command = [sys.executable, __file__, "--serve-sims", json.dumps(list(configs))]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdin is not None
    try:
        yield json.loads(process.stdout.readline())
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


# ----- helpers -----


def write_csv(path: Path, rows: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "notes"])
        for i in range(rows):
            writer.writerow([f"a lighthouse on a cliff, study {i}", f"n{i}"])
    return path


def job_for(sheet: Path, out: Path, urls: Sequence[str], in_flight: int) -> JobSpec:
    return JobSpec(
        name="bench",
        sheet=sheet,
        endpoints=tuple(EndpointSpec(url=url) for url in urls),
        in_flight=in_flight,
        defaults={"steps": STEPS, "width": 512, "height": 512},
        output=OutputSpec(dir=out),
        timeout=TimeoutSpec(connect=5.0, request=600.0),
    )


def span(out: Path) -> float:
    """First row started to last row written, from the manifest."""
    started, finished = float("inf"), 0.0
    with (out / "manifest.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            started = min(started, record["started_at"])
            finished = max(finished, record["finished_at"])
    return finished - started


def end_spread(out: Path) -> float:
    """How far apart the endpoints finished their last rows: the scheduler's balance."""
    last: dict[str, float] = {}
    with (out / "manifest.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            last[record["endpoint"]] = max(last.get(record["endpoint"], 0.0), record["finished_at"])
    return max(last.values()) - min(last.values())


async def run(job: JobSpec) -> RunSummary:
    summary = await run_batch(job, RunOptions(check=False))
    if summary.ok != summary.plan.to_go:
        raise SystemExit(f"benchmark run incomplete: {summary}")
    return summary


# ----- 1. makespan -----


async def saturated(urls: Sequence[str], shares: Sequence[int]) -> float:
    """A client without a scheduler: each endpoint's exact share of rows queued on it at once."""

    async def send(session: aiohttp.ClientSession, url: str, i: int) -> None:
        body = {"prompt": f"a lighthouse, study {i}", "steps": STEPS, "width": 512, "height": 512}
        async with session.post(f"{url}/sdapi/v1/txt2img", json=body) as response:
            await response.read()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        sends = [
            send(session, url, i) for url, n in zip(urls, shares, strict=True) for i in range(n)
        ]
        await asyncio.gather(*sends)
        return time.perf_counter() - started


def makespan(work_dir: Path, quick: bool) -> None:
    print("\n1. makespan vs ideal (0.5 s per image at speed 1; in_flight 2 per endpoint)")
    print(
        f"   {'endpoints':<22} {'rows':>5} {'ideal s':>8} {'batchgen s':>11} {'vs ideal':>9} "
        f"{'end spread s':>13} {'all-at-once s':>14}"
    )
    per_speed = 10 if quick else 20
    cases = [
        ("K=1", [1.0]),
        ("K=4 equal", [1.0] * 4),
        ("K=4 mixed 0.5/1/2/4", [0.5, 1.0, 2.0, 4.0]),
        ("K=16 equal", [1.0] * 16),
        ("K=16 mixed 0.5..2", [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 1.0] * 2),
    ]
    for case, (label, speeds) in enumerate(cases):
        rows = int(per_speed * sum(speeds))
        configs = [{"speed": s, "ms_per_step": MS_PER_STEP} for s in speeds]
        case_dir = work_dir / f"makespan-{case}"
        case_dir.mkdir()
        sheet = write_csv(case_dir / "rows.csv", rows)
        with simulators(configs) as urls:
            limit = asyncio.run(saturated(urls, [round(per_speed * s) for s in speeds]))
            asyncio.run(run(job_for(sheet, case_dir / "out", urls, in_flight=2)))
        ideal = rows * MS_PER_STEP * STEPS / 1000 / sum(speeds)
        measured = span(case_dir / "out")
        print(
            f"   {label:<22} {rows:>5} {ideal:>8.2f} {measured:>11.2f} "
            f"{(measured / ideal - 1) * 100:>+8.1f}% {end_spread(case_dir / 'out'):>13.2f} "
            f"{limit:>14.2f}"
        )


# ----- 2. throughput -----


async def naive(url: str, rows: int, out: Path) -> float:
    """What a hand-written script does: one request at a time, decode, write, log a line."""
    started = time.perf_counter()
    images = 0
    async with aiohttp.ClientSession() as session:
        with (out / "log.jsonl").open("w", encoding="utf-8") as log:
            for i in range(rows):
                body = {"prompt": f"a lighthouse, study {i}", "steps": STEPS, "seed": i}
                async with session.post(f"{url}/sdapi/v1/txt2img", json=body) as response:
                    answer = await response.json()
                info = json.loads(answer["info"])
                for index, data in enumerate(answer["images"]):
                    (out / f"{i:06d}-{index}.png").write_bytes(base64.b64decode(data))
                    images += 1
                log.write(json.dumps({"row": i, "seeds": info["all_seeds"]}) + "\n")
    return images / (time.perf_counter() - started)


def throughput(work_dir: Path, quick: bool) -> None:
    rows = 2000 if quick else 6000
    naive_rows = 500 if quick else 1500
    print(f"\n2. throughput, zero-delay endpoints, 512x512 ({rows:,} rows; naive {naive_rows:,})")
    (work_dir / "naive").mkdir()
    with simulators([ZERO, ZERO]) as urls:
        naive_rate = asyncio.run(naive(urls[0], naive_rows, work_dir / "naive"))
        sheet = write_csv(work_dir / "throughput.csv", rows)
        job = job_for(sheet, work_dir / "throughput", urls, in_flight=4)
        began = time.perf_counter()
        summary = asyncio.run(run(job))
        whole = time.perf_counter() - began
    steady = summary.images / span(job.out_dir)
    print(f"   naive loop (1 endpoint, 1 at a time)  {naive_rate:8.1f} images/s")
    print(
        f"   batchgen (2 endpoints x 4 in flight)  {steady:8.1f} images/s while sending "
        f"({steady / naive_rate:.1f}x naive); {summary.images / whole:.1f} images/s "
        "including validation and results.csv"
    )


# ----- 3. memory -----


def child_run(sheet: str, out: str, urls: str) -> None:
    """Child process: one run, then its peak RSS and timing as a JSON line."""
    job = job_for(Path(sheet), Path(out), urls.split(","), in_flight=4)
    began = time.perf_counter()
    summary = asyncio.run(run(job))
    elapsed = time.perf_counter() - began
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"rows": summary.ok, "seconds": elapsed, "peak_mb": peak_kb / 1024}
    print(json.dumps(result), flush=True)


def memory(work_dir: Path, sizes: Sequence[int]) -> None:
    print("\n3. peak memory (fresh process per run, zero-delay endpoints, 2 x 4 in flight)")
    with simulators([ZERO, ZERO]) as urls:
        for rows in sizes:
            sheet = write_csv(work_dir / f"memory-{rows}.csv", rows)
            out = work_dir / f"memory-{rows}"
            command = [
                sys.executable,
                __file__,
                "--child-run",
                str(sheet),
                str(out),
                ",".join(urls),
            ]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"   {rows:>7,} rows: peak RSS {figures['peak_mb']:6.1f} MB, "
                f"{figures['seconds']:6.1f} s ({rows / figures['seconds']:.0f} rows/s overall)"
            )
            shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows everywhere")
    parser.add_argument("--only", choices=["makespan", "throughput", "memory"])
    parser.add_argument("--memory-rows", default="", help="e.g. 10000,100000")
    parser.add_argument("--serve-sims", help=argparse.SUPPRESS)
    parser.add_argument("--child-run", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sims:
        serve_sims(json.loads(args.serve_sims))
        return
    logging.getLogger("batchgen").setLevel(logging.ERROR)
    if args.child_run:
        child_run(*args.child_run)
        return
    default_sizes = "2000,20000" if args.quick else "10000,100000"
    sizes = [int(n) for n in (args.memory_rows or default_sizes).split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        work_dir = Path(tmp)
        if args.only in (None, "makespan"):
            makespan(work_dir, args.quick)
        if args.only in (None, "throughput"):
            throughput(work_dir, args.quick)
        if args.only in (None, "memory"):
            memory(work_dir, sizes)


if __name__ == "__main__":
    main()
