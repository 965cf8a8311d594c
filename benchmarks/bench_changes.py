"""Comparing a sheet with a big output folder's past: peak memory and time, before and after.

    python benchmarks/bench_changes.py [--requests 1000000] [--before before-one-pass]

A folder whose manifest holds N records (a sweep's expansions: ten per sheet row), and a sheet of
the same requests with a tenth of them new: the folder's past is read (the resume state and the
ChangeTracker), the tracker is fed every request, as a resumed run does, and says what changed.
Both versions run in a fresh process each (the `--before` revision unpacked with `git archive`;
the current tree), on the same manifest; memory is the process's resident set once the tracker
has said its line, less before the past was read (what is held while the run goes on).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_first_request import unpack

REPO = Path(__file__).resolve().parents[1]
PER_ROW = 10  # expansions per sheet row

CHILD = """
import json, os, sys, time
from pathlib import Path
from batchgen.records import Expansion, Task
out, requests, per_row = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
try:  # the current tree: one scan of the manifest feeds the tracker
    from batchgen.outputs.changes import ChangeTracker
    from batchgen.outputs.store import peek_state
    def read_past():
        tracker = ChangeTracker(out)
        return peek_state(out, each=tracker.remember), tracker
except ImportError:  # before: the resume state and the tracker each scanned it
    from batchgen.changes import ChangeTracker
    from batchgen.store import peek_state
    def read_past():
        return peek_state(out), ChangeTracker(out)
def rss_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
start = rss_mb()
began = time.perf_counter()
state, tracker = read_past()
for number in range(requests):
    row, index = 2 + number // per_row, number % per_row
    key = f"{number:016x}-0" if number % 10 else f"new{number:013x}-0"
    expansion = Expansion(index, per_row, {}, {})
    tracker.see(Task(row, key, "txt2img", {}, None, expansion=expansion))
said = tracker.describe({})
elapsed = time.perf_counter() - began
print(json.dumps({"s": elapsed, "mb": rss_mb() - start, "said": said}))
"""


def write_manifest(out: Path, requests: int) -> None:
    out.mkdir(parents=True)
    with (out / "manifest.jsonl").open("w", encoding="utf-8") as handle:
        for number in range(requests):
            record = {
                "row": 2 + number // PER_ROW,
                "key": f"{number:016x}-0",
                "status": "ok",
                "images": [f"images/{number:08d}.png"],
                "seeds": [number],
                "expansion": number % PER_ROW,
                "expansions": PER_ROW,
            }
            handle.write(json.dumps(record) + "\n")


def measure(tree: Path, out: Path, requests: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-c", CHILD, str(out), str(requests), str(PER_ROW)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--before", default="before-one-pass")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-changes-") as scratch:
        root = Path(scratch)
        before = unpack(args.before, root / "before")
        write_manifest(root / "out", args.requests)
        print(f"{args.requests:,} past requests ({PER_ROW} per row), a tenth of the sheet new")
        figures = {}
        for name, tree in (("before", before), ("after", REPO)):
            figures[name] = measure(tree, root / "out", args.requests)
            seconds, held = figures[name]["s"], figures[name]["mb"]
            print(f"  {name:<6} {seconds:7.2f} s, memory held +{held:.1f} MB")
        assert figures["before"]["said"] == figures["after"]["said"], figures
        print(f"  the same line said by both: {figures['after']['said']}")


if __name__ == "__main__":
    main()
