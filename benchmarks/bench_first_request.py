"""Time from `batchgen run` to its first request, and peak memory, before and after one pass.

    python benchmarks/bench_first_request.py [--rows 100000] [--before before-one-pass]
                                             [--rounds 2] [--full]

Both versions run in the same benchmark: the current tree, and the `--before` revision of this
repository (default: the tag before the pre-run pass was made one pass), unpacked into a temporary
folder with `git archive`. Each runs `python -m batchgen run SHEET --endpoint URL` in a fresh
process against a fresh simulator in another process, on the same CSV (prompt, negative prompt,
seed, steps, CFG, sampler, size, a note column; every row different). Rounds alternate the order.

  first request: seconds from starting the process to the simulator receiving its first
    generation request (the simulator is polled every 10 ms), and the process's peak RSS up to
    then (it is killed at that point: this is the pre-run pass's memory).
  --full: the whole run to the end on a zero-delay simulator with 64x64 images: wall time and
    peak RSS of the process (the sending pass and results.csv included).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_run import simulators

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = ("Euler a", "DPM++ 2M", "DPM++ SDE", "UniPC")
HEADERS = ("prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler_name")
HEADERS += ("width", "height", "notes")


def write_sheet(path: Path, rows: int, size: int) -> Path:
    draw = random.Random(7)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADERS)
        for i in range(rows):
            writer.writerow(
                [
                    f"a lighthouse on a cliff at dusk, oil painting, study {i}",
                    "blurry, lowres, watermark",
                    draw.randrange(2**32 - 2),
                    draw.choice((4, 8, 12)),
                    draw.choice((5, 6.5, 7)),
                    draw.choice(SAMPLERS),
                    size,
                    size,
                    f"batch {i // 1000}",
                ]
            )
    return path


def unpack(revision: str, into: Path) -> Path:
    """The tree of `revision`, as `git archive` gives it."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def received(url: str) -> int:
    with urllib.request.urlopen(f"{url}/_sim/stats", timeout=5) as answer:
        return len(json.loads(answer.read())["received"])


def start(tree: Path, sheet: Path, url: str, out: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "batchgen", "run", str(sheet), "--endpoint", url]
    command += ["--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tree
    )


def peak_mb(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Wait for the process; its exit status and peak RSS (Linux: ru_maxrss is in KiB)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024


def first_request(tree: Path, sheet: Path, out: Path) -> tuple[float, float]:
    with simulators([{"ms_per_step": 50}]) as (url,):
        began = time.monotonic()
        process = start(tree, sheet, url, out)
        while received(url) == 0:
            if process.poll() is not None:
                raise SystemExit(
                    f"{tree}: batchgen ended before sending (exit {process.returncode})"
                )
            time.sleep(0.01)
        elapsed = time.monotonic() - began
        process.send_signal(signal.SIGKILL)
        _, peak = peak_mb(process)
    return elapsed, peak


def full_run(tree: Path, sheet: Path, out: Path) -> tuple[float, float]:
    with simulators([{"ms_per_step": 0, "switch_s": 0}]) as (url,):
        began = time.monotonic()
        process = start(tree, sheet, url, out)
        code, peak = peak_mb(process)
        elapsed = time.monotonic() - began
    if code != 0:
        raise SystemExit(f"{tree}: batchgen exited {code}")
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--before", default="before-one-pass")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-first-") as scratch:
        root = Path(scratch)
        trees = {"before": unpack(args.before, root / "before"), "after": REPO}
        sheet = write_sheet(root / "sheet.csv", args.rows, 512)
        print(f"{args.rows:,} rows; before = {args.before}, after = the current tree")
        times: dict[str, list[float]] = {name: [] for name in trees}
        peaks: dict[str, list[float]] = {name: [] for name in trees}
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for name in order:
                elapsed, peak = first_request(trees[name], sheet, root / f"out-{name}-{round_}")
                times[name].append(elapsed)
                peaks[name].append(peak)
                print(
                    f"  round {round_ + 1} {name:<6} first request after {elapsed:6.2f} s, "
                    f"peak RSS {peak:6.1f} MB",
                    flush=True,
                )
        before, after = statistics.median(times["before"]), statistics.median(times["after"])
        print(
            f"time to first request, median: before {before:.2f} s, after {after:.2f} s "
            f"= {after / before:.2f}x"
        )
        print(
            f"peak RSS to then, median: before {statistics.median(peaks['before']):.1f} MB, "
            f"after {statistics.median(peaks['after']):.1f} MB"
        )
        if args.full:
            small = write_sheet(root / "small.csv", args.rows, 64)
            print(f"whole run, {args.rows:,} rows of 64x64 images on a zero-delay simulator:")
            for name, tree in trees.items():
                elapsed, peak = full_run(tree, small, root / f"full-{name}")
                print(f"  {name:<6} {elapsed:7.1f} s, peak RSS {peak:6.1f} MB", flush=True)


if __name__ == "__main__":
    main()
