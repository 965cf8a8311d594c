"""Run folders in, samples out: one frozen `Sample` per image of a row that ended ok."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from batchgen.errors import ConfigError
from batchgen.outputs.manifest import MANIFEST, ManifestRecord, latest_records

JOB_FILE = "job.json"
SAFE = re.compile(r"[^A-Za-z0-9_-]+")
PNG = b"\x89PNG\r\n\x1a\n"
MAX_NAMED = 5  # missing files named in an error before "and N more"

# The provenance columns every sample has, in the order they are written, with their types.
PROVENANCE: dict[str, str] = {
    "text": "string",
    "negative_prompt": "string",
    "seed": "int64",
    "subseed": "int64",
    "model": "string",
    "model_hash": "string",
    "vae": "string",
    "sampler": "string",
    "scheduler": "string",
    "steps": "int64",
    "cfg_scale": "float64",
    "width": "int64",
    "height": "int64",
    "server_version": "string",
    "route": "string",
    "run": "string",
    "row": "int64",
    "key": "string",
    "image_sha256": "string",
}
# Names a note column may not take as is: it is written as note_NAME instead.
RESERVED = {*PROVENANCE, "file_name", "image", "json", "txt", "__key__", "__url__"}


@dataclass(frozen=True, slots=True)
class Sample:
    """One image to export: where it is, the name it gets, and its metadata columns."""

    key: str  # unique in the export, no dots: the webdataset key and the file stem
    source: Path  # the image file in its run folder
    suffix: str  # ".png", ".jpg", ...
    size: int  # bytes
    split: str  # "" when the export has no splits
    text: str  # the caption
    metadata: Mapping[str, Any]  # provenance and note columns, every sample the same names

    @property
    def file_name(self) -> str:
        return self.key + self.suffix


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the dataset card says about one run folder."""

    path: Path
    job: Mapping[str, Any]  # job.json, {} when the run has none
    ok_rows: int
    failed_rows: int
    left_out_rows: int  # ok rows with nothing to export (no image, or no split value)


@dataclass(frozen=True, slots=True)
class ExportPlan:
    """Every sample in export order (run, row, key, image), the runs, and the note columns."""

    samples: tuple[Sample, ...]
    runs: tuple[RunInfo, ...]
    notes: tuple[str, ...]  # note column names as written (note_ prefix when reserved)
    split_by: str | None

    @property
    def columns(self) -> dict[str, str]:
        """Every metadata column and its type: provenance first, then the notes (strings)."""
        return {**PROVENANCE, **dict.fromkeys(self.notes, "string")}

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(sorted({sample.split for sample in self.samples}))

    def fingerprint(self, settings: Mapping[str, Any]) -> str:
        """Changes when any sample, its metadata, or an export setting changes."""
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for sample in self.samples:
            line = [sample.key, sample.split, sample.size, sample.text, dict(sample.metadata)]
            digest.update(json.dumps(line, sort_keys=True, default=str).encode())
        return digest.hexdigest()


def plan_export(runs: Sequence[Path], split_by: str | None = None) -> ExportPlan:
    """Read each run's manifest and check that every image it names is there; writes nothing."""
    if not runs:
        raise ConfigError("export: name at least one run folder")
    records = [(index, path, _records(path)) for index, path in enumerate(runs)]
    notes = sorted({name for _, _, found in records for r in found if r.ok for name in r.metadata})
    if split_by is not None and split_by not in notes:
        raise ConfigError(
            f"--split-by {split_by!r}: no exported row has that note column "
            f"(the runs have: {', '.join(notes) or 'no note columns'})"
        )
    samples: list[Sample] = []
    infos: list[RunInfo] = []
    missing: list[str] = []
    for index, path, found in records:
        left_out = 0
        ok = [r for r in found if r.ok]
        for record in sorted(ok, key=lambda r: (r.row, r.key)):
            split = _split(path, record, split_by)
            if (split == "" and split_by is not None) or not record.images:
                left_out += 1
                continue
            for image in range(len(record.images)):
                sample = _sample(index, path, record, image, split, notes, missing)
                if sample is not None:
                    samples.append(sample)
        failed = len(found) - len(ok)
        infos.append(RunInfo(path, _job(path), len(ok) - left_out, failed, left_out))
    if missing:
        more = f" and {len(missing) - MAX_NAMED} more" if len(missing) > MAX_NAMED else ""
        raise ConfigError(
            f"{len(missing)} image(s) named in a manifest are missing or unreadable: "
            f"{'; '.join(missing[:MAX_NAMED])}{more} (restore them, or re-run those rows into "
            "a new folder; nothing was exported)"
        )
    return ExportPlan(tuple(samples), tuple(infos), tuple(_note_name(n) for n in notes), split_by)


def _records(run: Path) -> list[ManifestRecord]:
    if not run.is_dir():
        raise ConfigError(f"{run}: no such run folder (name the --out folder of a batchgen run)")
    if not (run / MANIFEST).is_file():
        raise ConfigError(f"{run}: no {MANIFEST} here; is this the output folder of a run?")
    return list(latest_records(run).values())


def _job(run: Path) -> Mapping[str, Any]:
    try:
        data = json.loads((run / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _split(run: Path, record: ManifestRecord, split_by: str | None) -> str:
    if split_by is None:
        return ""
    value = record.metadata.get(split_by)
    text = "" if value is None else str(value).strip()
    if text and (SAFE.search(text) or text.startswith("-")):
        raise ConfigError(
            f"{run / MANIFEST}, row {record.row}, column '{split_by}': split {text!r} is not a "
            "plain name (use letters, digits, _ and -, e.g. train, validation, test)"
        )
    return text


def _sample(
    run_index: int,
    run: Path,
    record: ManifestRecord,
    image: int,
    split: str,
    notes: Iterable[str],
    missing: list[str],
) -> Sample | None:
    relative = record.images[image]
    source = run / relative
    try:
        size, width, height = _size_and_dimensions(source)
    except (OSError, UnidentifiedImageError):
        missing.append(f"{run}, row {record.row}: {relative}")
        return None
    key = f"{run_index:02d}-{record.row:06d}-{SAFE.sub('_', record.key)}-{image:02d}"
    text = str(_per_image(record.prompts, image) or record.payload.get("prompt") or "")
    metadata: dict[str, Any] = {
        **_provenance(run, record, image, text),
        "width": width,
        "height": height,
    }
    metadata = {name: metadata[name] for name in PROVENANCE}
    for name in notes:
        value = record.metadata.get(name)
        metadata[_note_name(name)] = None if value is None else str(value)
    suffix = Path(relative).suffix.lower() or ".png"
    return Sample(key, source, suffix, size, split, text, metadata)


def _size_and_dimensions(path: Path) -> tuple[int, int, int]:
    """Bytes, width and height; a PNG's from its first 24 bytes (PIL's open costs 5x more)."""
    with path.open("rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(24)
    if head[:8] == PNG and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return size, width, height
    with Image.open(path) as opened:  # reads the header only
        return size, *opened.size


def _provenance(run: Path, record: ManifestRecord, image: int, text: str) -> dict[str, Any]:
    payload = record.payload
    infotext = str(_per_image(record.infotexts, image) or "")
    negative = _per_image(record.negative_prompts, image)
    subseed = _per_image(record.subseeds, image)
    if subseed is None and _number(payload.get("subseed"), int) not in (None, -1):
        subseed = payload.get("subseed")
    return {
        "text": text,
        "negative_prompt": str(
            negative if negative is not None else payload.get("negative_prompt") or ""
        ),
        "seed": record.seeds[image] if image < len(record.seeds) else None,
        "subseed": _number(subseed, int),
        "model": record.model,
        "model_hash": record.model_hash,
        "vae": record.vae,
        "sampler": _text(payload.get("sampler_name")) or _from_infotext(infotext, "Sampler"),
        "scheduler": _text(payload.get("scheduler")) or _from_infotext(infotext, "Schedule type"),
        "steps": _number(payload.get("steps"), int),
        "cfg_scale": _number(payload.get("cfg_scale"), float),
        "server_version": record.version,
        "route": record.route,
        "run": run.name,
        "row": record.row,
        "key": record.key,
        "image_sha256": record.image_sha256[image] if image < len(record.image_sha256) else None,
    }


def _per_image(values: tuple[Any, ...], image: int) -> Any:
    """The image's entry in what the server reported per image; None for an older manifest."""
    return values[image] if image < len(values) else None


def _from_infotext(infotext: str, label: str) -> str | None:
    found = re.search(rf"(?:^|, ){re.escape(label)}: ([^,\n]+)", infotext)
    return found.group(1).strip() if found else None


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    try:
        return kind(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _note_name(name: str) -> str:
    return f"note_{name}" if name in RESERVED else name
