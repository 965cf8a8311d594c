"""Shards benchmark: N shard processes, one simulator each, against one process over the same N.

    python benchmarks/bench_shards.py [--rows 1000] [--shards 4] [--ms-per-step 2.5]

Each simulator runs in its own process (`python -m batchgen.sim --port 0`), with a time model of
20 steps at --ms-per-step per row (default 50 ms a row). Both layouts run the same sheet, one after
the other, against the same simulators:
  - baseline: one `batchgen run` process with all N endpoints;
  - sharded:  N `batchgen run --shard i/N` processes at once, process i on simulator i, then
              `batchgen merge` of their folders (timed apart).
Printed: wall times (process start to exit) and their ratio to the baseline; the ideal (total work
spread evenly); the balance of rows per shard (largest / mean, from each shard's shard.json).
Every process here shares the machine's cores: on a cluster each shard has a node of its own.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = 20
_URL = re.compile(r"serving at (http://\S+)")


def start_sim(ms_per_step: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchgen.sim",
            "--port",
            "0",
            "--set",
            f"ms_per_step={ms_per_step}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    match = _URL.search(proc.stdout.readline())
    assert match, "the simulator did not start"
    return proc, match.group(1)


def write_job(folder: Path, rows: int) -> Path:
    lines = ["prompt,steps"] + [f'"a city at night, study {i}",{STEPS}' for i in range(rows)]
    (folder / "sheet.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = folder / "job.toml"
    job.write_text('name = "bench"\nsheet = "sheet.csv"\ncheck = false\n', encoding="utf-8")
    return job


def batchgen(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", *args],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"batchgen exited {proc.returncode}: {err.decode()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--ms-per-step", type=float, default=2.5)
    args = parser.parse_args()
    count = args.shards
    folder = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    sims = [start_sim(args.ms_per_step) for _ in range(count)]
    urls = [url for _, url in sims]
    try:
        job = write_job(folder, args.rows)
        endpoints = [part for url in urls for part in ("--endpoint", url)]

        started = time.monotonic()
        wait_all([batchgen(folder, "run", str(job), "--out", "one", *endpoints)])
        one = time.monotonic() - started

        started = time.monotonic()
        wait_all(
            [
                batchgen(
                    folder,
                    "run",
                    str(job),
                    "--out",
                    "shards",
                    "--shard",
                    f"{i}/{count}",
                    "--endpoint",
                    url,
                )
                for i, url in enumerate(urls)
            ]
        )
        sharded = time.monotonic() - started
        shard_dirs = [str(folder / "shards" / f"shard-{i}-of-{count}") for i in range(count)]
        started = time.monotonic()
        wait_all([batchgen(folder, "merge", *shard_dirs, "--out", "merged")])
        merge = time.monotonic() - started

        per_shard = json.loads(Path(shard_dirs[0], "shard.json").read_text())["per_shard"]
        ideal = args.rows * STEPS * args.ms_per_step / 1000 / count
        mean = sum(per_shard) / len(per_shard)
        print(f"{args.rows:,} rows, {count} simulators, {STEPS * args.ms_per_step:.0f} ms a row")
        print(f"  ideal (work / {count} endpoints):     {ideal:7.2f} s")
        print(f"  baseline: 1 process, {count} endpoints:  {one:7.2f} s  (1.00)")
        print(f"  sharded: {count} processes x 1 endpoint: {sharded:7.2f} s  ({sharded / one:.2f})")
        print(f"  merge of the {count} shard folders:     {merge:7.2f} s  ({merge / one:.2f})")
        print(
            f"  sharded + merge:                    {sharded + merge:7.2f} s  "
            f"({(sharded + merge) / one:.2f})"
        )
        print(f"  rows per shard: {per_shard}; largest / mean = {max(per_shard) / mean:.3f}")
    finally:
        for proc, _ in sims:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
