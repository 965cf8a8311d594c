"""`batchgen report` benchmark: a run folder of 10,000 rows, the report built twice, then opened.

    python benchmarks/bench_report.py [--rows N] [--keep DIR]

The folder is made up (no run): one distinct 512x512 PNG per row (the simulator's encoder), a
manifest line per row written through ManifestRecord, 5% of the rows failed. Printed:
  1. baseline: reading the manifest (latest_records), the least any reader of the folder does;
  2. the first report (thumbnails made) and a second one (thumbnails already there), as ratios
     against the baseline, and how many thumbnails the second one made (it must be 0);
  3. the size of index.html (must stay under 200 KB: the data is in data.js) and of data.js;
  4. a real headless Chromium opening the page from file://: time from navigation until every
     thumbnail of the grid's first screen (scrolled to at load) shows, and how many row groups
     the page put in the DOM (a page, not 10,000).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from batchgen.outputs.gallery import REPORT_DIR, THUMBS_DIR, build_report
from batchgen.outputs.manifest import MANIFEST, ManifestRecord, latest_records
from batchgen.sim.images import FastPngEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
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


def make_run(out: Path, rows: int) -> None:
    """A finished run's folder: images, manifest; no report yet."""
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
                "width": 512,
                "height": 512,
                "sampler_name": samplers[index % 3],
                "seed": 1000 + index,
                "override_settings": {"sd_model_checkpoint": models[index % 3]},
            }
            names: tuple[str, ...] = ()
            digests: tuple[str, ...] = ()
            if not failed:
                data = encoder.encode(hashlib.sha256(prompt.encode()).digest(), 512, 512, None)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="make the folder here and keep it")
    args = parser.parse_args()
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
