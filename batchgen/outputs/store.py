"""The output folder: atomic image writes, the manifest, resume state and the results sheet."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import string
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from batchgen.errors import ConfigError
from batchgen.outputs.manifest import MANIFEST, ManifestRecord, iso_utc, scan
from batchgen.outputs.rowindex import RowIndex
from batchgen.records import Generation, Result, SheetRow, Task
from batchgen.rows.fields import FIELDS
from batchgen.words import counted

log = logging.getLogger(__name__)

INDEX = ".batchgen/index.sqlite"  # per-key lookups on disk; refilled from the manifest at open
LOCK = ".batchgen.lock"  # held (flock) while a run writes here; the OS drops it if the run dies
IMAGES_DIR = "images"
EXTRAS_DIR = "controlnet"
TMP_SUFFIX = ".tmp"
IMAGE_WRITERS = 8  # threads writing one batch's images
RESULT_COLUMNS = ("row", "status", "images", "seeds", "error")
EXPANSION_COLUMN = ("expansion",)  # after "row", when rows expand
FORMULA_STARTS = ("=", "+", "-", "@")  # what Excel reads as the start of a formula
SIDE_FILES = ("results.csv", "results.xlsx", "job.json")  # written atomically beside the manifest
_TEMPLATE_FIELDS = {"row", "index", "seed", "key", "job"}
# Values a sweep may vary, by field name, for file names: {cfg_scale}, {checkpoint}, {expansion}.
SWEPT_NAME_FIELDS = (
    "steps",
    "cfg_scale",
    "sampler_name",
    "scheduler",
    "width",
    "height",
    "denoising_strength",
)
_INDEX_BATCH = 4096  # manifest lines read per insert into the index
_UNSAFE = re.compile(r"[^\w.\-+=@]+")  # also drops Windows' <>:"|?* and control characters
# File systems count bytes per name (255 on most): room is left for "~123456", ".webp" and ".tmp".
NAME_BYTES = 255 - len("~123456") - len(".webp") - len(TMP_SUFFIX)
# Windows refuses these as a name, with any extension: CON, NUL.png, com1.txt.
_RESERVED = re.compile(r"(?i)(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?")
# Only these stop a run: every later row would fail the same way. Any other write error is
# that row's alone (a name the file system refuses, a file where a folder should be).
DISK_FULL = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if code
)


MISSING = "missing"  # a PastRow status: the record says ok, but an image file is gone
SIMULATED = "simulated"  # a PastRow status: ok, but made by the simulator (placeholder images)
DONE = frozenset({"ok", SIMULATED})  # a run on real servers sends SIMULATED rows again


@dataclass(frozen=True, slots=True)
class PastRow:
    """The latest manifest record of a row key, as found when the folder was opened."""

    status: str  # "ok", "failed", MISSING (sent again, like a failed row), or SIMULATED
    offset: int  # byte offset of the record in the manifest


class PastRows(Mapping[str, PastRow]):
    """The latest record per key, looked up in the store's index instead of held in memory."""

    def __init__(self, index: RowIndex) -> None:
        self._index = index

    def get(self, key: str, default: Any = None) -> Any:  # the runner's per-row lookup
        found = self._index.past(key)
        return default if found is None else PastRow(status=found[0], offset=found[1])

    def __getitem__(self, key: str) -> PastRow:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        return self._index.past_keys()

    def __len__(self) -> int:
        return self._index.past_count()


@dataclass(frozen=True, slots=True)
class ResumeState:
    """What an earlier run on this folder left: the latest record per row key."""

    rows: Mapping[str, PastRow]

    @property
    def done(self) -> frozenset[str]:
        return frozenset(key for key, past in self.rows.items() if past.status in DONE)

    @property
    def failed(self) -> frozenset[str]:
        return frozenset(key for key, past in self.rows.items() if past.status not in DONE)


def check_template(template: str, metadata_columns: Iterable[str]) -> None:
    """Reject a file-name template that names an unknown field or reaches into objects."""
    allowed = _TEMPLATE_FIELDS | {*SWEPT_NAME_FIELDS, "checkpoint", "expansion"}
    allowed |= set(metadata_columns)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ConfigError(f"output.filename {template!r}: {error}") from None
    for _, name, spec, _ in parsed:
        if name is not None and name not in allowed:
            raise ConfigError(
                f"output.filename {template!r}: unknown field {{{name}}}; "
                f"known: {', '.join(sorted(allowed))}"
            )
        if spec and "{" in spec:
            raise ConfigError(f"output.filename {template!r}: a format spec cannot hold a field")


class OutputStore:
    """Owns one output folder. Images are on disk before their manifest line; lines are flushed."""

    def __init__(self, out_dir: Path, job_name: str, template: str, payload_base: Path) -> None:
        self.out_dir = out_dir
        self.payload_base = payload_base
        self._job_name = job_name
        self._template = template
        self._manifest: IO[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._index: RowIndex | None = None  # past records, offsets, image paths taken

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST

    def open(self) -> ResumeState:
        """Create the folder, drop what a crash left half-written, and read what is done."""
        (self.out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        self._lock = _take_lock(self.out_dir)
        self._remove_temporary_files()
        if self._index is not None:
            self._index.close()
        self._index = RowIndex(self.out_dir / INDEX)
        rows = self._read_manifest(opening=True)
        self._manifest = self.manifest_path.open("ab")
        _fsync_dir(self.out_dir)  # a new manifest's name must survive a power cut too
        return ResumeState(rows)

    def close(self) -> None:
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._index is not None:
            self._index.close()
            self._index = None
            with contextlib.suppress(OSError):  # the folder as it was, if nothing else is there
                (self.out_dir / INDEX).parent.rmdir()

    def write_json(self, name: str, data: Any) -> None:
        """A small side file (resolved job, stats), replaced atomically."""
        target = self.out_dir / name
        _write_atomic(target, (json.dumps(data, indent=2, default=str) + "\n").encode())

    def record(self, result: Result, manifest_payload: Mapping[str, Any]) -> ManifestRecord:
        """Write a row's images, then its manifest line; return the line."""
        return self.record_many([(result, manifest_payload)])[0]

    def record_many(
        self, finished: Sequence[tuple[Result, Mapping[str, Any]]]
    ) -> list[ManifestRecord]:
        """Rows' images, then their manifest lines: one folder and manifest fsync per batch."""
        if self._manifest is None:
            raise RuntimeError("open the store first")
        lines = []
        files: list[tuple[int, Path, bytes]] = []  # (line index, target, data)
        for number, (result, manifest_payload) in enumerate(finished):
            named: list[tuple[Path, bytes]] = []
            images, extras = self._name_files(result, named)
            lines.append(self._line(result, manifest_payload, images, extras))
            files.extend((number, target, data) for target, data in named)
        refused = self._write_files(files)
        for number, message in refused.items():
            lines[number] = dataclasses.replace(
                lines[number],
                status="failed",
                images=(),
                image_sha256=(),
                extras=(),
                error=message,
            )
        offset = self._manifest.tell()
        chunks = [line.to_line() for line in lines]
        try:
            self._manifest.write(b"".join(chunks))
            self._manifest.flush()
            os.fsync(self._manifest.fileno())
        except OSError:
            self._rewind(offset)
            raise
        self._opened().put_outcomes(_outcome(line) for line in lines)
        return lines

    def _write_files(self, files: list[tuple[int, Path, bytes]]) -> dict[int, str]:
        """Write every file; a line whose file the system refuses gets a message, not a stop.

        A full disk or quota raises: no later row could be written either.
        """
        refused: dict[int, str] = {}
        folders: dict[Path, OSError | None] = {}
        for _, target, _ in files:
            if target.parent not in folders:
                folders[target.parent] = _make_folder(target.parent)
        writable = []
        for number, target, data in files:
            error = folders[target.parent]
            if error is None:
                writable.append((number, target, data))
            else:
                refused.setdefault(number, self._refusal(target, error))
        if len(writable) > 1:  # fsyncs in parallel share the file system's journal commits
            outcomes = list(self._image_pool().map(_try_write, writable))
        else:
            outcomes = [_try_write(file) for file in writable]
        for (number, target, _), error in zip(writable, outcomes, strict=True):
            if error is not None:
                refused.setdefault(number, self._refusal(target, error))
        # The renames must be on disk before the line that says they are done (power cuts).
        for folder, error in folders.items():
            if error is None:
                _fsync_dir(folder)
        return refused

    def _refusal(self, target: Path, error: OSError) -> str:
        shown = target.relative_to(self.out_dir).as_posix()
        reason = error.strerror or str(error)
        return (
            f"cannot write {shown}: {reason} (errno {error.errno}); the row is not done; "
            "change output.filename or the cells it uses, then run again"
        )

    def _opened(self) -> RowIndex:
        if self._index is None:
            raise RuntimeError("open the store first")
        return self._index

    def _rewind(self, offset: int) -> None:
        """After a failed append (disk full), cut the half line so no later line follows it."""
        if self._manifest is not None:
            with contextlib.suppress(OSError):  # the buffered rest fails again; the file closes
                self._manifest.close()
        os.truncate(self.manifest_path, offset)
        self._manifest = self.manifest_path.open("ab")

    def _name_files(
        self, result: Result, files: list[tuple[Path, bytes]]
    ) -> tuple[list[str], list[str]]:
        """Each image's path relative to the folder; (target, data) pairs go into `files`."""
        generation = result.generation
        images: list[str] = []
        extras: list[str] = []
        if generation is not None:
            for index, data in enumerate(generation.images):
                seed = generation.seeds[index] if index < len(generation.seeds) else ""
                images.append(self._name_image(IMAGES_DIR, result, index, seed, data))
            for index, data in enumerate(generation.extras):
                extras.append(self._name_image(EXTRAS_DIR, result, index, "map", data))
        files.extend(
            (self.out_dir / path, data)
            for path, data in zip(
                [*images, *extras],
                [*generation.images, *generation.extras] if generation else [],
                strict=True,
            )
        )
        return images, extras

    def _image_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(IMAGE_WRITERS, thread_name_prefix="batchgen-image")
        return self._pool

    def _line(
        self,
        result: Result,
        manifest_payload: Mapping[str, Any],
        images: list[str],
        extras: list[str],
    ) -> ManifestRecord:
        task = result.task
        generation = result.generation
        finished_at = time.time()
        return ManifestRecord(
            row=task.row,
            key=task.key,
            status=result.status,
            images=tuple(images),
            image_sha256=tuple(hashlib.sha256(data).hexdigest() for data in generation.images)
            if generation
            else (),
            extras=tuple(extras),
            seeds=generation.seeds if generation else (),
            endpoint=result.endpoint,
            simulator=result.simulated,
            attempts=result.attempts,
            error=result.error,
            route=task.route,
            model=generation.model if generation else None,
            model_hash=generation.model_hash if generation else None,
            vae=generation.vae if generation else None,
            version=generation.version if generation else None,
            started_at=round(result.started_at, 3),
            duration_s=round(result.duration_s, 3),
            finished_at=round(finished_at, 3),
            metadata=dict(task.metadata),
            payload=dict(manifest_payload),
            **_as_used(generation),
            started=iso_utc(result.started_at),
            finished=iso_utc(finished_at),
            **_expansion_fields(task),
            **(dict(generation.provenance) if generation else {}),
        )

    def write_results(
        self,
        rows: Iterable[tuple[SheetRow, str | None]],
        headers: list[str],
        xlsx: bool,
        *,
        expanding: bool = False,
    ) -> list[Path]:
        """The input sheet plus each request's outcome: results.csv, and results.xlsx for XLSX
        input. `rows`: each request's row (a row per expansion) and its key (None: not this
        run's). `expanding`: rows expand, and an `expansion` column says which one a line is."""
        outcome_columns = [
            *RESULT_COLUMNS[:1],
            *(EXPANSION_COLUMN if expanding else ()),
            *RESULT_COLUMNS[1:],
        ]
        outcome_columns = [c for c in outcome_columns if c not in headers]
        columns = [*headers, *outcome_columns]
        csv_path = self.out_dir / "results.csv"
        written = [csv_path]
        tmp = csv_path.with_name(csv_path.name + TMP_SUFFIX)
        sheet = _XlsxWriter(self.out_dir / "results.xlsx", columns) if xlsx else None
        with tmp.open("w", newline="", encoding="utf-8-sig") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row, key in rows:
                values = [row.cells.get(header, "") for header in headers]
                values += self._outcome(row, key, outcome_columns)
                writer.writerow(values)
                if sheet is not None:
                    sheet.append(values)
        os.replace(tmp, csv_path)
        if sheet is not None:
            written.append(sheet.close())
        return written

    def _outcome(self, sheet_row: SheetRow, key: str | None, columns: list[str]) -> list[Any]:
        found = self._opened().outcome(key) if key else None
        status, images, seeds, error = found or ("not run", "", "", "")
        outcome = {
            "row": sheet_row.row,
            "expansion": sheet_row.expansion.index if sheet_row.expansion else "",
            "status": status,
            "images": images,
            "seeds": seeds,
            "error": error,
        }
        return [outcome.get(column, "") for column in columns]

    def _name_image(
        self, folder: str, result: Result, index: int, seed: int | str, data: bytes
    ) -> str:
        fields = {
            # A cell value is one name part: its separators must not make folders.
            **{key: _no_separators(value) for key, value in result.task.metadata.items()},
            "row": result.task.row,
            "index": index,
            "seed": seed,
            "key": result.task.key,
            "job": self._job_name,
            **_swept_fields(result.task),
        }
        try:
            rendered = self._template.format_map(fields)
        except (ValueError, KeyError, TypeError):
            try:
                rendered = string.Formatter().vformat(self._template, (), _Stringly(fields))
            except (ValueError, KeyError, TypeError):  # e.g. {row:zz}: a name, not a crash
                rendered = f"{result.task.row:06d}-{index:02d}"
        return self._unique(folder, _safe_relative(rendered) + _extension(data))

    def _unique(self, folder: str, name: str) -> str:
        """A path no earlier record owns; an unowned file there is a crash's orphan: replaced."""
        stem, dot, suffix = name.rpartition(".")
        candidate = f"{folder}/{name}"
        counter = 1
        index = self._opened()
        while not index.take(_name_key(candidate)):
            candidate = f"{folder}/{stem}~{counter}{dot}{suffix}"
            counter += 1
        return candidate

    def _remove_temporary_files(self) -> None:
        """Half-written files of batchgen's own, and nothing else a user keeps under --out."""
        own_folders = [self.out_dir / IMAGES_DIR, self.out_dir / EXTRAS_DIR]
        leftovers = [path for folder in own_folders for path in folder.rglob(f"*{TMP_SUFFIX}")]
        leftovers += [self.out_dir / f"{name}{TMP_SUFFIX}" for name in SIDE_FILES]
        for path in leftovers:
            if path.is_file():
                log.info("removing %s, left half-written by an earlier run", path)
                path.unlink()

    def _read_manifest(
        self, *, opening: bool, each: Callable[[ManifestRecord], None] | None = None
    ) -> PastRows:
        """The latest record per key into the index. `opening`: the store's own open, which cuts
        a torn last line off and keeps each key's outcome for results.csv. `each` gets every
        readable record in file order (one scan serves another reader of the folder's past)."""
        index = self._opened()
        rows = PastRows(index)
        if not self.manifest_path.exists():
            return rows
        past: list[tuple[str, str, int]] = []
        outcomes: list[tuple[str, str, str, str, str]] = []
        taken: list[str] = []
        good_end = 0
        for offset, line, record in scan(self.manifest_path):
            good_end = offset + len(line)
            if record is None:
                log.warning("%s: skipping an unreadable line at byte %d", MANIFEST, offset)
                continue
            status = record.status
            files = [*record.images, *record.extras]
            present = [path for path in files if (self.out_dir / path).is_file()]
            if status == "ok" and len(present) < len(files):
                log.warning(
                    "row %s: recorded as done, but %s gone; sending it again",
                    record.row,
                    counted(len(files) - len(present), "image file is", "image files are"),
                )
                status = MISSING
            elif status == "ok" and record.simulator:
                status = SIMULATED
            past.append((record.key, status, offset))  # in file order: the latest one wins
            if opening:
                outcomes.append(_outcome(record))
            if each is not None:
                each(record)
            taken.extend(_name_key(path) for path in present)
            if len(past) >= _INDEX_BATCH:
                index.put_past(past)
                index.put_outcomes(outcomes)
                index.take_all(taken)
                past, outcomes, taken = [], [], []
        index.put_past(past)
        index.put_outcomes(outcomes)
        index.take_all(taken)
        if opening and good_end < self.manifest_path.stat().st_size:
            log.warning("%s: dropping a torn last line left by an interrupted run", MANIFEST)
            with self.manifest_path.open("r+b") as handle:
                handle.truncate(good_end)
        return rows


def _outcome(record: ManifestRecord) -> tuple[str, str, str, str, str]:
    """A record as the results sheet shows it: key, status, images, seeds, error."""
    seeds = ";".join(str(seed) for seed in record.seeds)
    return (record.key, record.status, ";".join(record.images), seeds, record.error or "")


def folder_in_use(out_dir: Path) -> bool:
    """True while a run (in any process) has this folder open for writing."""
    if not (out_dir / LOCK).exists():
        return False
    try:
        handle = _take_lock(out_dir)
    except ConfigError:
        return True
    if handle is not None:
        handle.close()
    return False


def _take_lock(out_dir: Path) -> IO[bytes] | None:
    """Two runs appending to one manifest could both send a row: the second one stops here."""
    if sys.platform == "win32":  # no flock; one run per folder is then the user's to keep
        return None
    import fcntl

    handle = (out_dir / LOCK).open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(
            f"{out_dir}: another batchgen run is writing to this folder; "
            "wait for it to finish, or give another output folder"
        ) from None
    return handle


def peek_state(out_dir: Path, each: Callable[[ManifestRecord], None] | None = None) -> ResumeState:
    """What an output folder holds, read without changing anything in it; `each` gets every
    readable manifest record on the way."""
    store = OutputStore(out_dir, "", "", out_dir)
    store._index = RowIndex()  # a temporary file: the folder itself is left as it is
    return ResumeState(store._read_manifest(opening=False, each=each))


class _Stringly(dict[str, Any]):
    """Template fields for values whose format spec does not fit their type (e.g. {seed:05d})."""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        return value if isinstance(value, int) else _FormatAnything(value)


class _FormatAnything:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __format__(self, spec: str) -> str:
        try:
            return format(self.value, spec)
        except (ValueError, TypeError):
            return str(self.value)


def _swept_fields(task: Task) -> dict[str, Any]:
    """File-name fields for the values a sweep varies; one the request leaves out: the server's
    default, or '' if it has none."""
    fields: dict[str, Any] = {}
    for name in SWEPT_NAME_FIELDS:
        value = task.body.get(name, FIELDS[name].default)
        fields[name] = "" if value is None else _no_separators(value)
    fields["checkpoint"] = _no_separators(task.checkpoint or "")
    fields["expansion"] = task.expansion.index if task.expansion else 0
    return fields


def _expansion_fields(task: Task) -> dict[str, Any]:
    expansion = task.expansion
    if expansion is None:
        return {}
    return {
        "expansion": expansion.index,
        "expansions": expansion.count,
        "templates": dict(expansion.templates),
        "resolved": dict(expansion.values),
    }


def _no_separators(value: Any) -> Any:
    return value.replace("/", "_").replace("\\", "_") if isinstance(value, str) else value


def _safe_relative(rendered: str) -> str:
    """Each part of the rendered name made harmless: no '..', no separators from cell values,
    no name Windows or macOS refuses, and short enough in bytes for any file system."""
    parts = []
    for part in rendered.replace("\\", "/").split("/"):
        part = unicodedata.normalize("NFC", part)  # as macOS would store it, and shorter
        cleaned = _fit_bytes(_UNSAFE.sub("_", part).strip("._"), NAME_BYTES).rstrip("._")
        if _RESERVED.fullmatch(cleaned):
            cleaned = f"_{cleaned}"
        if cleaned:
            parts.append(cleaned)
    return "/".join(parts) or "image"


def _name_key(relative: str) -> str:
    """Two names that are one file on macOS or Windows (case, Unicode forms) are one name."""
    return unicodedata.normalize("NFC", relative).casefold()


def _fit_bytes(text: str, limit: int) -> str:
    """The longest start of `text` whose UTF-8 form fits `limit` bytes (whole characters)."""
    return text.encode()[:limit].decode("utf-8", errors="ignore")


def _as_used(generation: Generation | None) -> dict[str, Any]:
    """Per generated image, what the server's info says it used (a grid's infotext dropped)."""
    if generation is None:
        return {}
    info = generation.info
    first = info.get("index_of_first_image")
    first = first if isinstance(first, int) else 0
    count = len(generation.images)

    def per_image(name: str, start: int = 0) -> list[Any]:
        values = info.get(name)
        return values[start : start + count] if isinstance(values, list) else []

    subseeds = []
    for value in per_image("all_subseeds"):
        with contextlib.suppress(TypeError, ValueError):
            subseeds.append(int(value))
    return {
        "prompts": tuple(str(v) for v in per_image("all_prompts")),
        "negative_prompts": tuple(str(v) for v in per_image("all_negative_prompts")),
        "subseeds": tuple(subseeds),
        "infotexts": tuple(str(v) for v in per_image("infotexts", first)),
    }


def _extension(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".bin"


def _make_folder(folder: Path) -> OSError | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if error.errno in DISK_FULL:
            raise
        return error
    return None


def _try_write(file: tuple[int, Path, bytes]) -> OSError | None:
    """Write one file; return the error the system gave unless the disk is full (raised)."""
    _, target, data = file
    try:
        _write_atomic(target, data)
    except OSError as error:
        if error.errno in DISK_FULL:
            raise
        return error
    return None


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(target.name + TMP_SUFFIX)
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible everywhere (Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _XlsxWriter:
    """Streams rows into an XLSX file without holding the workbook in memory."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        from openpyxl import Workbook

        self._path = path
        self._book = Workbook(write_only=True)
        self._sheet = self._book.create_sheet("results")
        self._sheet.append(columns)

    def append(self, values: list[Any]) -> None:
        self._sheet.append([self._text_stays_text(value) for value in values])

    def _text_stays_text(self, value: Any) -> Any:
        """A cell like '=HYPERLINK(...)' is a prompt, not a formula for whoever opens the file."""
        if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
            return value
        from openpyxl.cell import WriteOnlyCell

        cell = WriteOnlyCell(self._sheet, value=value)
        cell.data_type = "s"
        return cell

    def close(self) -> Path:
        tmp = self._path.with_name(self._path.name + TMP_SUFFIX)
        self._book.save(tmp)
        os.replace(tmp, self._path)
        return self._path
