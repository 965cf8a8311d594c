"""The manifest record: one line of manifest.jsonl as a typed, frozen value, and its JSON form.

Every reader of a run folder (resume, results.csv, replay, export, report, status, merge) goes
through `ManifestRecord`; the manifest stays the only truth and everything else is derived from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from batchgen.records import Expansion

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """How one row ended, as written to the manifest (failures included)."""

    row: int  # the spreadsheet row number; the header is row 1
    key: str
    status: str  # "ok" or "failed"
    images: tuple[str, ...] = ()  # paths relative to the output folder
    image_sha256: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()  # ControlNet detected maps: images past the generated ones
    seeds: tuple[int, ...] = ()  # the real seed of each image, from the server's info
    endpoint: str = ""
    simulator: bool = False  # made by batchgen's simulator: placeholder images, not a real server's
    attempts: int = 0
    error: str | None = None
    route: str = "txt2img"
    model: str | None = None
    model_hash: str | None = None
    vae: str | None = None
    version: str | None = None
    started_at: float = 0.0
    duration_s: float = 0.0
    finished_at: float = 0.0
    metadata: Mapping[str, Any] = field(default_factory=dict)  # the row's note columns
    payload: Mapping[str, Any] = field(default_factory=dict)  # the body as sent, blobs by path+sha
    # What the server made of the request, per image (styles and wildcards change the prompt).
    prompts: tuple[str, ...] = ()  # info.all_prompts
    negative_prompts: tuple[str, ...] = ()  # info.all_negative_prompts
    subseeds: tuple[int, ...] = ()  # info.all_subseeds
    infotexts: tuple[str, ...] = ()  # info.infotexts, the grid's left out
    started: str = ""  # started_at and finished_at in ISO 8601, UTC
    finished: str = ""
    # A row that expands (templates, sweeps): which expansion this is, of how many, the cells as
    # written and the values this one got. Left out of the line for a plain row.
    expansion: int | None = None
    expansions: int | None = None
    templates: Mapping[str, Any] = field(default_factory=dict)
    resolved: Mapping[str, Any] = field(default_factory=dict)
    # ComfyUI rows only (left out of A1111 lines): the backend, the workflow template's sha256,
    # the values bound into it ("prompt", "KSampler.denoise", ...) and the server's prompt id.
    backend: str | None = None
    workflow_sha256: str | None = None
    bound: Mapping[str, Any] = field(default_factory=dict)
    prompt_id: str | None = None
    # Fields this version does not know (a newer writer's): kept so that a rewrite loses nothing.
    unknown: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def expansion_of(self) -> Expansion | None:
        """Which expansion of its row the record is (None: a plain row), as the Task had it."""
        if self.expansion is None:
            return None
        count = self.expansions if self.expansions is not None else self.expansion + 1
        return Expansion(self.expansion, count, dict(self.templates), dict(self.resolved))

    def to_json(self) -> dict[str, Any]:
        """The line's JSON object, keys in the order the manifest has always had them."""
        line: dict[str, Any] = {
            name: _plain(getattr(self, name))
            for name in _FIELDS
            if name != "unknown"
            and (self.expansion is not None or name not in _EXPANSION)
            and (name not in _BACKEND_ONLY or getattr(self, name))
        }
        line.update(self.unknown)
        return line

    def to_line(self) -> bytes:
        return (json.dumps(self.to_json(), ensure_ascii=False, default=str) + "\n").encode()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManifestRecord:
        """A record from a parsed line; a line without `key` or `status` raises KeyError."""
        known = {name: data[name] for name in _FIELDS if name in data and name != "unknown"}
        for name in ("images", "image_sha256", "extras"):
            known[name] = tuple(str(item) for item in known.get(name) or ())
        for name in ("prompts", "negative_prompts", "infotexts"):
            known[name] = tuple(str(item) for item in known.get(name) or ())
        for name in ("seeds", "subseeds"):
            known[name] = tuple(int(seed) for seed in known.get(name) or ())
        known["row"] = int(data["row"]) if data.get("row") is not None else 0
        known["key"] = str(data["key"])
        known["status"] = str(data["status"])
        known["metadata"] = dict(known.get("metadata") or {})
        known["payload"] = dict(known.get("payload") or {})
        known["templates"] = dict(known.get("templates") or {})
        known["resolved"] = dict(known.get("resolved") or {})
        known["bound"] = dict(known.get("bound") or {})
        unknown = {name: value for name, value in data.items() if name not in _FIELDS}
        return cls(**known, unknown=unknown)

    @classmethod
    def from_line(cls, line: bytes) -> ManifestRecord:
        """Raises ValueError (not JSON), KeyError (no key/status) or TypeError (not an object)."""
        data = json.loads(line)
        if not isinstance(data, dict):
            raise TypeError("a manifest line must be a JSON object")
        return cls.from_json(data)


_FIELDS = tuple(ManifestRecord.__dataclass_fields__)
_EXPANSION = frozenset({"expansion", "expansions", "templates", "resolved"})
_BACKEND_ONLY = frozenset({"backend", "workflow_sha256", "bound", "prompt_id"})


def iso_utc(epoch: float) -> str:
    """An epoch time as ISO 8601 in UTC, to the millisecond: 2026-01-31T23:59:59.123Z."""
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def scan(path: Path) -> Iterator[tuple[int, bytes, ManifestRecord | None]]:
    """(byte offset, raw line, record or None if unreadable) for each complete line, in file order.

    Stops at a torn last line (a line without its newline: the run died while writing it).
    """
    if not path.exists():
        return
    with path.open("rb") as handle:
        while True:
            offset = handle.tell()
            line = handle.readline()
            if not line.endswith(b"\n"):
                return
            try:
                yield offset, line, ManifestRecord.from_line(line)
            except (ValueError, KeyError, TypeError):
                yield offset, line, None


def latest_records(out_dir: Path) -> dict[str, ManifestRecord]:
    """The latest complete record of each row key, in manifest order; changes nothing on disk."""
    records: dict[str, ManifestRecord] = {}
    for _, _, record in scan(out_dir / MANIFEST):
        if record is not None:
            records.pop(record.key, None)  # keep the latest last
            records[record.key] = record
    return records
