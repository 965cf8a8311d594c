"""`batchgen export` benchmark: images/s per format against `tar cf` of the same files, and memory.

    python benchmarks/bench_export.py [--images 4000] [--small 1000]

A synthetic run folder of N 512x512 PNGs that barely compress (~0.5 MB each: low-amplitude
noise; 64 distinct images under N names, content does not change the cost of copying) and a
manifest written through ManifestRecord, as a run writes it. Then, each in a fresh process:
  1. the baseline: `tar cf` of the images and the manifest, page cache warmed first (and, for
     reference, `tar cf` followed by an fsync of the archive);
  2. each format exported from the same run folder (timed inside the child, imports excluded),
     in rounds with tar (`--repeat`); images/s from the best round, the ratio to tar the median
     of the rounds' ratios;
  3. peak RSS (ru_maxrss) of each format's export for a small run (its manifest names the first
     `--small` images) and the full run: flat memory means the two are about the same.
Outputs are written beside the run (same disk) and deleted after each measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORMATS = ("imagefolder", "webdataset", "parquet")
DISTINCT = 64
FIVE_BITS = bytes(value & 0x1F for value in range(256))  # 5 random bits a channel: ~0.6 MB a PNG


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000, help="images in the large run")
    parser.add_argument("--small", type=int, default=1000, help="images in the small run")
    parser.add_argument("--repeat", type=int, default=3, help="timings per format (best kept)")
    parser.add_argument(
        "--child", nargs=3, metavar=("FORMAT", "RUN", "DEST"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    with tempfile.TemporaryDirectory(
        prefix="bench-export-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        root = Path(tmp)
        large = _make_run(root / "large", args.images)
        small = _small_run(root / "small", large, args.small)
        megabytes = sum(p.stat().st_size for p in (large / "images").iterdir()) / 1e6
        each = megabytes / args.images
        print(f"run: {args.images:,} images, {megabytes:,.0f} MB ({each:.2f} MB each)")
        _tar(large, root / "warm.tar")  # warm the page cache, as the exports will find it
        # Load from other work on the machine drifts: each round times tar and every format
        # back to back, and a format's ratio is the median of its per-round ratios.
        rounds = []
        for _ in range(args.repeat):
            timings = {"tar": _tar(large, root / "baseline.tar")}
            timings["tar+fsync"] = _tar(large, root / "baseline.tar", sync=True)
            for fmt in FORMATS:
                timings[fmt] = _export(fmt, large, root / f"out-{fmt}")["seconds"]
            rounds.append(timings)
        tar_s = min(timings["tar"] for timings in rounds)
        synced_s = min(timings["tar+fsync"] for timings in rounds)
        print(f"baseline tar cf: {tar_s:.2f}s, {args.images / tar_s:,.0f} images/s (best round)")
        print(f"tar cf then fsync: {synced_s:.2f}s, {args.images / synced_s:,.0f} images/s")
        print(
            f"{'format':<12} {'seconds':>8} {'images/s':>9} {'vs tar':>7} "
            f"{'RSS small':>10} {'RSS large':>10} {'large/small':>11}"
        )
        for fmt in FORMATS:
            seconds = min(timings[fmt] for timings in rounds)
            ratio = statistics.median(timings["tar"] / timings[fmt] for timings in rounds)
            little = _export(fmt, small, root / f"out-{fmt}-small")
            big = _export(fmt, large, root / f"out-{fmt}")
            print(
                f"{fmt:<12} {seconds:>8.2f} {args.images / seconds:>9,.0f} {ratio:>6.2f}x "
                f"{little['rss_mb']:>8.0f}MB {big['rss_mb']:>8.0f}MB "
                f"{big['rss_mb'] / little['rss_mb']:>10.2f}x"
            )


def _make_run(run: Path, count: int) -> Path:
    from PIL import Image

    from batchgen.outputs.manifest import MANIFEST, ManifestRecord

    images = run / "images"
    images.mkdir(parents=True)
    distinct = []
    for index in range(DISTINCT):
        noise = os.urandom(512 * 512 * 3).translate(FIVE_BITS)  # barely compresses
        buffer = io.BytesIO()
        Image.frombytes("RGB", (512, 512), noise).save(buffer, "PNG", compress_level=1)
        data = buffer.getvalue()
        distinct.append((data, hashlib.sha256(data).hexdigest()))
        assert index or 400_000 < len(data) < 650_000, len(data)
    with (run / MANIFEST).open("wb") as manifest:
        for row in range(2, count + 2):
            data, sha = distinct[row % DISTINCT]
            name = f"images/{row:06d}-00-{row}.png"
            (run / name).write_bytes(data)
            record = ManifestRecord(
                row=row,
                key=f"{row:016x}-0",
                status="ok",
                images=(name,),
                image_sha256=(sha,),
                seeds=(row,),
                endpoint="http://gpu-1:7860",
                attempts=1,
                model="v1-5-pruned-emaonly",
                model_hash="6ce0161689",
                version="v1.10.1",
                metadata={"split": "train" if row % 10 else "validation", "tag": f"t{row % 7}"},
                payload={"prompt": f"a lighthouse, study {row}", "steps": 20, "seed": row},
            )
            manifest.write(record.to_line())
    (run / "job.json").write_text(json.dumps({"name": "bench", "seed": {"mode": "derived"}}))
    return run


def _small_run(run: Path, large: Path, count: int) -> Path:
    """The first `count` rows of the large run, its images shared (a symlinked folder)."""
    run.mkdir()
    (run / "images").symlink_to(large / "images")
    shutil.copy(large / "job.json", run / "job.json")
    with (
        (large / "manifest.jsonl").open("rb") as source,
        (run / "manifest.jsonl").open("wb") as out,
    ):
        for _ in range(count):
            out.write(source.readline())
    return run


def _tar(run: Path, target: Path, *, sync: bool = False) -> float:
    """Seconds for `tar cf` of the run (and an fsync of the archive, as export does its shards)."""
    started = time.perf_counter()
    subprocess.run(
        ["tar", "cf", str(target), "-C", str(run), "images", "manifest.jsonl"], check=True
    )
    if sync:
        with target.open("rb") as archive:
            os.fsync(archive.fileno())
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def _export(fmt: str, run: Path, dest: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", fmt, str(run), str(dest)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    shutil.rmtree(dest)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _child(fmt: str, run: str, dest: str) -> None:
    import batchgen.cli  # noqa: F401 - what `batchgen export` has loaded (pandas...) before it starts
    from batchgen.outputs.export import ExportOptions, export_runs

    options = ExportOptions((Path(run),), fmt, dest, split_by="split")  # type: ignore[arg-type]
    started = time.perf_counter()
    export_runs(options)
    seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": rss_mb}))


if __name__ == "__main__":
    main()
