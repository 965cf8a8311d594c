"""`batchgen report` benchmark: a run folder of 10,000 rows, the report built twice, then opened.

    python benchmarks/bench_report.py [--rows N] [--keep DIR]
    python benchmarks/bench_report.py --scale [--before REVISION] [--run-rows 20000]

The folder is made up (no run): one distinct 512x512 PNG per row (the simulator's encoder), a
manifest line per row written through ManifestRecord, 5% of the rows failed. Printed:
  1. baseline: reading the manifest (latest_records), the least any reader of the folder does;
  2. the first report (thumbnails made) and a second one (thumbnails already there), as ratios
     against the baseline, and how many thumbnails the second one made (it must be 0);
  3. the size of index.html (must stay under 200 KB: the data is in data.js) and of data.js;
  4. a real headless Chromium opening the page from file://: time from navigation until every
     thumbnail of the grid's first screen (scrolled to at load) shows, and how many row groups
     the page put in the DOM (a page, not 10,000).

--scale: the current tree against `--before` (default: branch simflag, the last report built in
memory), unpacked with `git archive`, in the same run. Every figure is of a fresh process: wall
time, and CPU time and peak RSS from wait4 (on a busy machine CPU time says more than wall time):
  1. `batchgen report` on made-up folders of --scale-rows rows (default 10,000 with 512x512 images
     and 100,000 with 64x64 images: past 10,000 rows the images are 64x64): time and peak RSS
     of the first report (thumbnails made) and of a second one (thumbnails kept: what each
     refresh during a run costs), and whether both trees wrote the same data (generated_at aside);
  2. a whole `batchgen run` of --run-rows rows on a zero-delay simulator with 64x64 images, which
     refreshes the report as it goes: wall and CPU time, peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from batchgen.outputs.gallery import REPORT_DIR, THUMBS_DIR, build_report
from batchgen.outputs.manifest import MANIFEST, ManifestRecord, latest_records
from batchgen.sim.images import FastPngEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_first_request import REPO, unpack, write_sheet
from bench_run import simulators
from browserhelp import chromium

# The thumbnails in the first screen (lazy loading leaves the rest for scrolling).
VISIBLE_THUMBS = (
    "[...document.querySelectorAll('#grid img')]"
    ".filter(i => i.getBoundingClientRect().top < innerHeight).length"
)
VISIBLE_THUMBS_SHOWN = (
    "(() => { const seen = [...document.querySelectorAll('#grid img')]"
    ".filter(i => i.getBoundingClientRect().top < innerHeight);"
    " return seen.length > 0 && seen.every(i => i.complete && i.naturalWidth > 0); })()"
)


def make_run(out: Path, rows: int, size: int = 512) -> None:
    """A finished run's folder: images (size x size), manifest; no report yet."""
    images = out / "images"
    images.mkdir(parents=True)
    encoder = FastPngEncoder()
    models = ("v1-5-pruned-emaonly", "dreamshaper_8", "sd_xl_base_1.0")
    samplers = ("Euler a", "DPM++ 2M", "DDIM")
    with (out / MANIFEST).open("wb") as manifest:
        for index in range(rows):
            row = index + 2
            failed = index % 20 == 7
            prompt = f"a lighthouse on a cliff at dusk, study {index}, oil painting, dramatic sky"
            payload = {
                "prompt": prompt,
                "negative_prompt": "lowres, blurry, watermark",
                "steps": 20,
                "cfg_scale": 7.0,
                "width": size,
                "height": size,
                "sampler_name": samplers[index % 3],
                "seed": 1000 + index,
                "override_settings": {"sd_model_checkpoint": models[index % 3]},
            }
            names: tuple[str, ...] = ()
            digests: tuple[str, ...] = ()
            if not failed:
                data = encoder.encode(hashlib.sha256(prompt.encode()).digest(), size, size, None)
                name = f"images/{row:06d}-00-{1000 + index}.png"
                (out / name).write_bytes(data)
                names, digests = (name,), (hashlib.sha256(data).hexdigest(),)
            record = ManifestRecord(
                row=row,
                key=f"{index:016x}-0",
                status="failed" if failed else "ok",
                images=names,
                image_sha256=digests,
                seeds=() if failed else (1000 + index,),
                endpoint=f"gpu{index % 4}",
                attempts=3 if failed else 1,
                error="HTTP 500: OutOfMemoryError: CUDA out of memory" if failed else None,
                model=None if failed else models[index % 3],
                started_at=1.7e9 + index,
                duration_s=1.0,
                finished_at=1.7e9 + index + 1,
                metadata={"notes": f"batch {index % 7}"},
                payload=payload,
            )
            manifest.write(record.to_line())


def timed(call: object) -> float:
    assert callable(call)
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def first_thumbnails(page_path: Path) -> tuple[float, int, int]:
    """Seconds from navigation until the first screen's thumbnails show; how many; DOM groups."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        started = time.perf_counter()
        page.goto(page_path.as_uri())
        page.locator("#browse").scroll_into_view_if_needed()  # past the summary and failed rows
        page.wait_for_function(VISIBLE_THUMBS_SHOWN, timeout=120_000)
        seconds = time.perf_counter() - started
        shown = page.evaluate(VISIBLE_THUMBS)
        groups = page.locator("#grid article").count()
        page.close()
    return seconds, shown, groups


# Starts the command and prints its exit code, peak RSS (KiB) and CPU seconds. The benchmark starts
# it through this small process because a child it started itself would report the benchmark's own
# peak: on Linux, ru_maxrss carries the high-water mark of the memory a process had before its exec.
_MEASURE = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL,"
    " stderr=subprocess.DEVNULL); _, s, r = os.wait4(p.pid, 0);"
    " print(os.waitstatus_to_exitcode(s), r.ru_maxrss, r.ru_utime + r.ru_stime)"
)


@dataclass(frozen=True, slots=True)
class Cost:
    """What one fresh process took: wall and CPU seconds, peak RSS in MB."""

    wall_s: float
    cpu_s: float
    peak_mb: float

    def against(self, before: Cost) -> str:
        return (
            f"wall {before.wall_s:6.1f} s -> {self.wall_s:6.1f} s "
            f"({ratio(before.wall_s, self.wall_s)}), "
            f"CPU {before.cpu_s:6.1f} s -> {self.cpu_s:6.1f} s "
            f"({ratio(before.cpu_s, self.cpu_s)}), "
            f"peak RSS {before.peak_mb:6.1f} MB -> {self.peak_mb:6.1f} MB "
            f"({ratio(before.peak_mb, self.peak_mb)})"
        )


def batchgen(tree: Path, *args: str) -> Cost:
    """`batchgen ARGS` in a fresh process of `tree`."""
    command = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "batchgen", *args]
    began = time.perf_counter()
    answer = subprocess.run(
        command,
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - began
    code, peak_kib, cpu = answer.stdout.split()
    if code != "0":
        raise SystemExit(f"{tree}: batchgen {' '.join(args)} exited {code}")
    return Cost(elapsed, float(cpu), int(peak_kib) / 1024)


def whole_run(tree: Path, sheet: Path, out: Path) -> Cost:
    with simulators([{"ms_per_step": 0, "switch_s": 0}]) as (url,):
        return batchgen(tree, "run", str(sheet), "--endpoint", url, "--out", str(out))


def data_digest(out: Path) -> str:
    """The data.js object, generated_at aside, in one canonical form (key order ignored)."""
    text = (out / REPORT_DIR / "data.js").read_text(encoding="utf-8")
    data = json.loads(text[len("window.BATCHGEN_REPORT = ") :].rstrip().rstrip(";"))
    data.pop("generated_at")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def ratio(before: float, after: float) -> str:
    return f"{after / before:.2f}x" if before else "-"


def scale(before_revision: str, folders: list[int], run_rows: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-report-scale-") as scratch:
        root = Path(scratch)
        trees = {"before": unpack(before_revision, root / "before"), "after": REPO}
        print(f"before = {before_revision}, after = the current tree; fresh processes")
        for rows in folders:
            size = 512 if rows <= 10_000 else 64
            out = root / f"run-{rows}"
            make_run(out, rows, size)
            figures: dict[str, list[Cost]] = {}
            digests = set()
            for name, tree in trees.items():
                shutil.rmtree(out / REPORT_DIR, ignore_errors=True)
                figures[name] = [batchgen(tree, "report", str(out)) for _ in range(2)]
                digests.add(data_digest(out))
            print(f"batchgen report, {rows:,} rows of {size}x{size} images:")
            for index, label in enumerate(("first (thumbnails made)", "second (thumbnails kept)")):
                print(f"  {label:<25} {figures['after'][index].against(figures['before'][index])}")
            same = "yes" if len(digests) == 1 else "NO"
            print(f"  the same data.js before and after (generated_at aside): {same}")
            shutil.rmtree(out)
        sheet = write_sheet(root / "small.csv", run_rows, 64)
        print(f"whole run, {run_rows:,} rows of 64x64 images on a zero-delay simulator:")
        runs = {name: whole_run(tree, sheet, root / f"full-{name}") for name, tree in trees.items()}
        print(f"  {runs['after'].against(runs['before'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="make the folder here and keep it")
    parser.add_argument("--scale", action="store_true", help="before/after in fresh processes")
    parser.add_argument("--before", default="simflag", help="the revision to compare with")
    parser.add_argument(
        "--scale-rows", type=int, nargs="+", default=[10_000, 100_000], help="rows of the folders"
    )
    parser.add_argument("--run-rows", type=int, default=20_000, help="rows of the whole run")
    args = parser.parse_args()
    if args.scale:
        scale(args.before, args.scale_rows, args.run_rows)
        return
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    out = base / "run"
    shutil.rmtree(out, ignore_errors=True)
    try:
        print(f"making a run folder of {args.rows:,} rows in {out} ...", flush=True)
        make_run(out, args.rows)
        baseline = min(timed(lambda: latest_records(out)) for _ in range(3))
        first = timed(lambda: build_report(out))
        thumbs = out / REPORT_DIR / THUMBS_DIR
        before = {path.name: path.stat().st_mtime_ns for path in thumbs.iterdir()}
        second = timed(lambda: build_report(out))
        after = {path.name: path.stat().st_mtime_ns for path in thumbs.iterdir()}
        remade = sum(1 for name, stamp in after.items() if before.get(name) != stamp)
        html = (out / REPORT_DIR / "index.html").stat().st_size
        data = (out / REPORT_DIR / "data.js").stat().st_size
        shown_s, shown, groups = first_thumbnails(out / REPORT_DIR / "index.html")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"rows: {args.rows:,}; thumbnails: {len(before):,}")
    print(f"baseline, reading the manifest:    {baseline:8.3f} s  (1.0x)")
    print(f"first report (thumbnails made):    {first:8.3f} s  ({first / baseline:.1f}x baseline)")
    print(
        f"second report (thumbnails kept):   {second:8.3f} s  ({second / baseline:.1f}x baseline, "
        f"{second / first:.2f}x the first); thumbnails made again: {remade}"
    )
    verdict = "under" if html < 200_000 else "OVER"
    print(f"index.html: {html / 1000:.1f} KB ({verdict} 200 KB); data.js: {data / 1e6:.2f} MB")
    print(
        f"Chromium, file://: the grid's first screen of {shown} thumbnails shown {shown_s:.2f} s "
        "after navigation started "
        f"({shown_s / baseline:.1f}x baseline); {groups} row groups in the DOM"
    )


if __name__ == "__main__":
    main()
