"""The HTML report of a run folder: RUN_DIR/report/index.html, its data file and thumbnails.

The page is static and opens from disk: the data sits in report/data.js (a script assigning a
global, which file:// allows where fetch() of JSON does not), thumbnails in report/thumbs/ are made
once per image content, and the page's own script builds every element from that data as text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from batchgen.outputs.manifest import ManifestRecord, latest_records
from batchgen.outputs.status import read_status, write_atomic
from batchgen.records import EndpointView, Result, RunPlan, RunSummary

log = logging.getLogger(__name__)

REPORT_DIR = "report"
THUMBS_DIR = "thumbs"
THUMB_SIZE = 256
REFRESH_EVERY_S = 30.0
NOTE_CHOICES_MAX = 50  # a note column with more distinct values is filtered by free text
_ASSETS = {"report.html": "index.html", "report.js": "report.js", "report.css": "report.css"}


def build_report(out_dir: Path) -> Path:
    """Write (or refresh) the report of a run folder; returns the page's path."""
    records = list(latest_records(out_dir).values())
    report = out_dir / REPORT_DIR
    (report / THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    thumbs = make_thumbnails(out_dir, records)
    status = read_status(out_dir)
    state = status.state if status else "unknown"
    data = report_data(out_dir, records, status.published if status else {}, state, thumbs)
    script = "window.BATCHGEN_REPORT = " + json.dumps(data, ensure_ascii=False, default=str) + ";\n"
    write_atomic(report / "data.js", script.encode())
    assets = resources.files("batchgen.outputs") / "assets"
    for source, target in _ASSETS.items():
        write_atomic(report / target, (assets / source).read_bytes())
    return report / "index.html"


def make_thumbnails(out_dir: Path, records: Iterable[ManifestRecord]) -> dict[str, str | None]:
    """Image path -> thumbnail path relative to the report (None: unreadable); made once each."""
    folder = out_dir / REPORT_DIR / THUMBS_DIR
    wanted: dict[str, Path] = {}
    for record in records:
        for index, image in enumerate(record.images):
            digest = record.image_sha256[index] if index < len(record.image_sha256) else ""
            name = (digest or hashlib.sha256(image.encode()).hexdigest())[:24] + ".jpg"
            wanted[image] = folder / name
    todo = [(image, thumb) for image, thumb in wanted.items() if not thumb.exists()]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        made = dict(zip(todo, pool.map(lambda job: _thumbnail(out_dir, *job), todo), strict=True))
    return {
        image: f"{THUMBS_DIR}/{thumb.name}" if made.get((image, thumb), True) else None
        for image, thumb in wanted.items()
    }


def _thumbnail(out_dir: Path, image: str, thumb: Path) -> bool:
    source = (out_dir / image).resolve()
    if not source.is_relative_to(out_dir.resolve()):  # a manifest is data: it names no outside file
        log.warning("report: %s is outside %s; no thumbnail", image, out_dir)
        return False
    try:
        with Image.open(source) as picture:
            picture.draft("RGB", (THUMB_SIZE, THUMB_SIZE))  # JPEG sources decode at a smaller scale
            # An integer box reduction first, then bicubic: a fifth of the default's time.
            picture.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BICUBIC, reducing_gap=1.0)
            small = picture.convert("RGB")
        temporary = thumb.with_name(f".{thumb.name}.{threading.get_ident()}.tmp")
        try:
            small.save(temporary, "JPEG", quality=80)
        except OSError:  # a full disk: leave no half file behind
            temporary.unlink(missing_ok=True)
            raise
        os.replace(temporary, thumb)
    except OSError as error:  # PIL's UnidentifiedImageError is an OSError too
        log.warning("report: no thumbnail for %s: %s", image, error)
        return False
    return True


def report_data(
    out_dir: Path,
    records: list[ManifestRecord],
    status: Mapping[str, Any],
    state: str,
    thumbs: Mapping[str, str | None],
) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able object."""
    job = _read_json(out_dir / "job.json")
    rows = [_row(record, thumbs) for record in sorted(records, key=lambda r: (r.row, r.key))]
    ok = sum(1 for record in records if record.ok)
    images = sum(len(record.images) for record in records if record.ok)
    total = status.get("total")
    duration = status.get("elapsed_s", _span(records))  # the last run's, when it published
    rate = status.get("images_per_s") or (images / duration if duration else None)
    note_values: dict[str, set[str]] = {}
    for record in records:
        for column, value in record.metadata.items():
            note_values.setdefault(column, set()).add(str(value))
    return {
        "job": job.get("name") or out_dir.name,
        "out_dir": str(out_dir),
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "summary": {
            "state": state,
            "ok": ok,
            "failed": len(records) - ok,
            "not_run": max(int(total) - len(records), 0) if total else None,
            "images": images,
            "duration_s": duration,
            "images_per_s": rate,
        },
        "endpoints": _endpoints(records, status.get("endpoints") or ()),
        "models": Counter(row["model"] or "?" for row in rows).most_common(),
        "retry_command": retry_command(out_dir, job),
        "sheet_rows": len({record.row for record in records}),
        "filters": {
            "models": sorted({row["model"] for row in rows if row["model"]}),
            "samplers": sorted({row["sampler"] for row in rows if row["sampler"]}),
            "notes": {
                column: sorted(values) if len(values) <= NOTE_CHOICES_MAX else None
                for column, values in sorted(note_values.items())
            },
        },
        "rows": rows,
    }


def _row(record: ManifestRecord, thumbs: Mapping[str, str | None]) -> dict[str, Any]:
    payload = record.payload
    seeds = list(record.seeds) + [None] * (len(record.images) - len(record.seeds))
    row = {
        "row": record.row,
        "key": record.key,
        "status": record.status,
        "error": record.error,
        "endpoint": record.endpoint,
        "attempts": record.attempts,
        "model": record.model or _asked_model(payload),
        "model_hash": record.model_hash,
        "version": record.version,
        "sampler": payload.get("sampler_name"),
        "prompt": payload.get("prompt", ""),
        "notes": dict(record.metadata),
        "images": [
            {"src": f"../{image}", "thumb": thumbs.get(image), "seed": seed}
            for image, seed in zip(record.images, seeds, strict=False)
        ],
        "infotexts": _infotexts(record),
        "request": dict(payload),
    }
    # The rest of the manifest line, for the detail view (what the row already says is not repeated)
    row["record"] = {
        name: value for name, value in record.to_json().items() if name not in _NOT_REPEATED
    }
    return row


_NOT_REPEATED = {"payload", "metadata", "images", "image_sha256", "row", "key", "status", "error"}
_NOT_REPEATED |= {"endpoint", "attempts", "model", "model_hash", "version"}


def _asked_model(payload: Mapping[str, Any]) -> str | None:
    """The checkpoint a row asked for: what a failed row (no server answer) is filed under."""
    settings = payload.get("override_settings")
    asked = settings.get("sd_model_checkpoint") if isinstance(settings, Mapping) else None
    return str(asked) if asked else None


def _infotexts(record: ManifestRecord) -> list[str] | None:
    """The server's infotext per image, when the manifest carries it (a newer writer's field)."""
    for name in ("infotexts", "infotext"):
        value = getattr(record, name, None) or record.unknown.get(name)
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [str(item) for item in value]
    return None


def _endpoints(
    records: list[ManifestRecord], published: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    live = {str(view.get("name")): view for view in published}
    figures: dict[str, dict[str, Any]] = {}
    for record in records:
        name = record.endpoint or "(none)"
        view = figures.setdefault(
            name, {"name": name, "rows": 0, "images": 0, "failed": 0, "busy_s": 0.0}
        )
        view["busy_s"] += record.duration_s
        view["rows"] += 1
        view["images"] += len(record.images) if record.ok else 0
        view["failed"] += 0 if record.ok else 1
    for name, view in figures.items():
        busy = view.pop("busy_s")  # no status file (merged shards, an older run): per busy second
        fallback = view["images"] / busy if busy > 0 else None
        view["images_per_s"] = live.get(name, {}).get("images_per_s", fallback)
        view["switches"] = live.get(name, {}).get("switches")
    return sorted(figures.values(), key=lambda view: str(view["name"]))


def retry_command(out_dir: Path, job: Mapping[str, Any]) -> str:
    """The command that sends the failed rows again, into the same folder."""
    source = job.get("source")
    words = ["batchgen", "run", str(source or job.get("sheet") or "SOURCE")]
    words += ["--out", str(out_dir), "--retry-failed"]
    if not source:  # a bare sheet: endpoints and defaults came from the command line
        for endpoint in job.get("endpoints") or ():
            words += ["--endpoint", str(endpoint.get("url"))]
        for name, value in (job.get("defaults") or {}).items():
            shown = value if isinstance(value, str) else json.dumps(value)
            words += ["--set", f"{name}={shown}"]
    return shlex.join(words)


def _span(records: list[ManifestRecord]) -> float | None:
    if not records:
        return None
    return max(r.finished_at for r in records) - min(r.started_at for r in records)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class ReportRefresher:
    """A Reporter that rewrites the report every `every_s` seconds (in a thread) and at the end."""

    def __init__(self, out_dir: Path, every_s: float | None = None) -> None:
        self._out_dir = out_dir
        self._every = REFRESH_EVERY_S if every_s is None else every_s
        self._last = time.monotonic()
        self._building: threading.Thread | None = None

    def started(self, plan: RunPlan, out_dir: Path) -> None:
        self._last = time.monotonic()

    def row_finished(self, result: Result) -> None:
        self._maybe_refresh()

    def endpoints(self, views: list[EndpointView]) -> None:
        self._maybe_refresh()

    def finished(self, summary: RunSummary) -> None:
        if self._building is not None:
            self._building.join()
        self._build()

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._last < self._every or (self._building and self._building.is_alive()):
            return
        self._last = now
        self._building = threading.Thread(target=self._build, name="batchgen-report", daemon=True)
        self._building.start()

    def _build(self) -> None:
        try:
            build_report(self._out_dir)
        except OSError as error:  # a report must never stop the run
            log.warning("cannot write the report in %s: %s", self._out_dir, error)
