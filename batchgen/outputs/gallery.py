"""The HTML report of a run folder: RUN_DIR/report/index.html, its data file and thumbnails.

The page is static and opens from disk: the data sits in report/data.js (a script assigning a
global, which file:// allows where fetch() of JSON does not), thumbnails in report/thumbs/ are made
once per image content, and the page's own script builds every element from that data as text.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shlex
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from batchgen.outputs.manifest import MANIFEST, ManifestRecord, scan
from batchgen.outputs.run_files import read_job_file
from batchgen.outputs.status import read_status, write_atomic

log = logging.getLogger(__name__)

REPORT_DIR = "report"
THUMBS_DIR = "thumbs"
THUMB_SIZE = 256
THUMB_CHUNK = 256  # rows whose thumbnails are made together (in parallel) before they are written
NOTE_CHOICES_MAX = 50  # a note column with more distinct values is filtered by free text
_ASSETS = {"report.html": "index.html", "report.js": "report.js", "report.css": "report.css"}


def build_report(out_dir: Path) -> Path:
    """Write (or refresh) the report of a run folder; returns the page's path.

    Streams: one pass over the manifest finds each key's latest line, then the rows are read back
    one at a time in (row, key) order and written into data.js as they come, while the summary is
    tallied; memory stays flat however many rows the run has.
    """
    report = out_dir / REPORT_DIR
    (report / THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    status = read_status(out_dir)
    published = status.published if status else {}
    tally = Tally(published)
    with _replaced(report / "data.js") as data, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        data.write('window.BATCHGEN_REPORT = {"rows": [')
        for count, row in enumerate(_rows(out_dir, tally, pool)):
            data.write(("," if count else "") + _json(row))
        data.write("]")
        summary = tally.report(out_dir, status.state if status else "unknown")
        for name, value in summary.items():
            data.write(f", {_json(name)}: {_json(value)}")
        data.write("};\n")
    assets = resources.files("batchgen.outputs") / "assets"
    for source, target in _ASSETS.items():
        write_atomic(report / target, (assets / source).read_bytes())
    return report / "index.html"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


@contextmanager
def _replaced(path: Path) -> Iterator[TextIO]:
    """A text file written aside and renamed over `path` when whole (readers never see half)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            yield handle
    except BaseException:  # a full disk, or a failed read: leave no half file behind
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def _latest_lines(manifest: Path) -> list[tuple[int, str, int]]:
    """(row, key, byte offset) of each key's latest complete line, in (row, key) order."""
    latest: dict[str, tuple[int, int]] = {}
    for offset, _, record in scan(manifest):
        if record is not None:
            latest[record.key] = (record.row, offset)
    return sorted((row, key, offset) for key, (row, offset) in latest.items())


def _records(manifest: Path) -> Iterator[ManifestRecord]:
    """The latest record of each key, in (row, key) order, read back one at a time."""
    wanted = _latest_lines(manifest)
    if not wanted:
        return
    changed = 0
    with manifest.open("rb") as handle:
        for _, key, offset in wanted:
            handle.seek(offset)
            try:
                record = ManifestRecord.from_line(handle.readline())
            except (ValueError, KeyError, TypeError):
                record = None
            if record is None or record.key != key:  # the file was replaced since the first pass
                changed += 1
                continue
            yield record
    if changed:
        log.warning("report: %s changed while it was read; %d rows left out", manifest, changed)


Thumbnails = dict[str, tuple[Path, Future[bool] | None]]  # image -> thumbnail, job making it


def _rows(out_dir: Path, tally: Tally, pool: ThreadPoolExecutor) -> Iterator[dict[str, Any]]:
    """Each latest record as the page's row object; the thumbnails of the next chunk of rows are
    made (in the pool) while this chunk's rows are written."""
    ahead: tuple[list[ManifestRecord], Thumbnails] | None = None
    records = _records(out_dir / MANIFEST)
    while chunk := list(itertools.islice(records, THUMB_CHUNK)):
        started = start_thumbnails(out_dir, chunk, pool)
        if ahead is not None:
            yield from _chunk_rows(*ahead, tally)
        ahead = (chunk, started)
    if ahead is not None:
        yield from _chunk_rows(*ahead, tally)


def _chunk_rows(
    chunk: list[ManifestRecord], started: Thumbnails, tally: Tally
) -> Iterator[dict[str, Any]]:
    thumbs = thumbnail_paths(started)
    for record in chunk:
        row = _row(record, thumbs)
        tally.add(record, row)
        yield row


def start_thumbnails(
    out_dir: Path, records: Iterable[ManifestRecord], pool: ThreadPoolExecutor
) -> Thumbnails:
    """Each image's thumbnail, and the pool's job making it when it is not there (made once)."""
    folder = out_dir / REPORT_DIR / THUMBS_DIR
    wanted: dict[str, Path] = {}
    for record in records:
        for index, image in enumerate(record.images):
            digest = record.image_sha256[index] if index < len(record.image_sha256) else ""
            name = (digest or hashlib.sha256(image.encode()).hexdigest())[:24] + ".jpg"
            wanted[image] = folder / name
    return {
        image: (thumb, None if thumb.exists() else pool.submit(_thumbnail, out_dir, image, thumb))
        for image, thumb in wanted.items()
    }


def thumbnail_paths(started: Thumbnails) -> dict[str, str | None]:
    """Image path -> thumbnail path relative to the report (None: unreadable), once made."""
    return {
        image: f"{THUMBS_DIR}/{thumb.name}" if job is None or job.result() else None
        for image, (thumb, job) in started.items()
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


class Tally:
    """What the page shows beside its rows, gathered one row at a time (small: no row is kept)."""

    def __init__(self, published: Mapping[str, Any]) -> None:
        self._published = published
        self.ok = self.failed = self.images = self.simulated = self.sheet_rows = 0
        self._last_row: int | None = None
        self._span: tuple[float, float] | None = None  # the first start, the last finish
        self._notes: dict[str, set[str] | None] = {}  # None: past NOTE_CHOICES_MAX values
        self._models: Counter[str] = Counter()
        self._model_names: set[str] = set()
        self._samplers: set[str] = set()
        self._endpoints: dict[str, dict[str, Any]] = {}

    def add(self, record: ManifestRecord, row: Mapping[str, Any]) -> None:
        """One latest record and its row object; records come in (row, key) order."""
        made = len(record.images) if record.ok else 0
        self.ok += record.ok
        self.failed += not record.ok
        self.images += made
        self.simulated += made if record.simulator else 0
        self.sheet_rows += record.row != self._last_row
        self._last_row = record.row
        began, ended = self._span or (record.started_at, record.finished_at)
        self._span = (min(began, record.started_at), max(ended, record.finished_at))
        for column, value in record.metadata.items():
            values = self._notes.setdefault(column, set())
            if values is not None:
                values.add(str(value))
                if len(values) > NOTE_CHOICES_MAX:
                    self._notes[column] = None
        self._models[row["model"] or "?"] += 1
        if row["model"]:
            self._model_names.add(row["model"])
        if row["sampler"]:
            self._samplers.add(row["sampler"])
        name = record.endpoint or "(none)"
        view = self._endpoints.setdefault(
            name,
            {"name": name, "rows": 0, "images": 0, "failed": 0, "busy_s": 0.0, "simulator": False},
        )
        view["simulator"] = view["simulator"] or record.simulator
        view["busy_s"] += record.duration_s
        view["rows"] += 1
        view["images"] += made
        view["failed"] += 0 if record.ok else 1

    def report(self, out_dir: Path, state: str) -> dict[str, Any]:
        """Everything the page shows but its rows, as one JSON-able object."""
        job = read_job_file(out_dir)
        published = self._published
        rows = self.ok + self.failed
        total = published.get("total")
        span = self._span[1] - self._span[0] if self._span else None
        duration = published.get("elapsed_s", span)  # the last run's, when it published
        rate = published.get("images_per_s") or (self.images / duration if duration else None)
        return {
            "job": job.get("name") or out_dir.name,
            "out_dir": str(out_dir),
            "generated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "summary": {
                "state": state,
                "ok": self.ok,
                "failed": self.failed,
                "not_run": max(int(total) - rows, 0) if total else None,
                "images": self.images,
                "simulator_images": self.simulated,  # placeholders by the simulator, not a model
                "duration_s": duration,
                "images_per_s": rate,
            },
            "endpoints": self._endpoint_views(),
            "models": self._models.most_common(),
            "retry_command": retry_command(out_dir, job),
            "sheet_rows": self.sheet_rows,
            "filters": {
                "models": sorted(self._model_names),
                "samplers": sorted(self._samplers),
                "notes": {
                    column: sorted(values) if values is not None else None
                    for column, values in sorted(self._notes.items())
                },
            },
        }

    def _endpoint_views(self) -> list[dict[str, Any]]:
        live = {str(view.get("name")): view for view in self._published.get("endpoints") or ()}
        views = []
        for name, figures in self._endpoints.items():
            view = dict(figures)
            busy = view.pop("busy_s")  # no status file (merged shards, an older run): per busy s
            fallback = view["images"] / busy if busy > 0 else None
            view["images_per_s"] = live.get(name, {}).get("images_per_s", fallback)
            view["switches"] = live.get(name, {}).get("switches")
            views.append(view)
        return sorted(views, key=lambda view: str(view["name"]))


def _row(record: ManifestRecord, thumbs: Mapping[str, str | None]) -> dict[str, Any]:
    payload = record.payload
    seeds = list(record.seeds) + [None] * (len(record.images) - len(record.seeds))
    row = {
        "row": record.row,
        "key": record.key,
        "status": record.status,
        "error": record.error,
        "endpoint": record.endpoint,
        "simulator": record.simulator,
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
_NOT_REPEATED |= {"endpoint", "simulator", "attempts", "model", "model_hash", "version"}


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
