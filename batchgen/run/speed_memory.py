"""Speeds remembered between runs: each endpoint's seconds per unit of work and load time.

Users send sheets to the same GPU boxes night after night. A run that starts knowing each box's
speed plans its checkpoint loads at once; one that does not first has every endpoint measured on
a few rows of what it has loaded, while the fast ones eat rows the plan would have left to the
slow ones. The figures are kept per endpoint address (scheme, host, port and path: never the user,
password or query) in one small JSON file in the user's cache folder; BATCHGEN_CACHE_DIR moves
it. A remembered figure only seeds the estimates: the endpoint's own answers outweigh it within a
few rows, and a plan made from one that proves wrong is made again (scheduler.REPLAN_DRIFT).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

FILE_NAME = "speeds.json"
VERSION = 1
KEPT = 500  # endpoints kept, most recently seen first: the file stays small
STALE_S = 60 * 24 * 3600  # a figure not refreshed for 60 days is forgotten (the box changed)


@dataclass(frozen=True, slots=True)
class Remembered:
    """What an endpoint's last run measured."""

    sec_per_unit: float  # the mean over its last rows (units: scheduler.row_cost)
    switch_s: float | None  # seconds a checkpoint load added; None if it loaded none
    rows: int  # rows those figures were measured on
    at: float  # when (Unix time)


def cache_dir() -> Path:
    """BATCHGEN_CACHE_DIR, else the platform's cache folder for batchgen."""
    override = os.environ.get("BATCHGEN_CACHE_DIR")
    if override:
        return Path(override)
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "batchgen"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "batchgen"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "batchgen"


def address(url: str) -> str | None:
    """The key an endpoint is remembered by; None for a sim:// one (a new port every run)."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https", "comfy"} or not parts.hostname:
        return None
    host = parts.netloc.rpartition("@")[2].lower()
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def recall(
    addresses: Mapping[str, str | None], folder: Path | None = None
) -> dict[str, Remembered]:
    """What is remembered of each endpoint, by name; `addresses`: each one's address by name."""
    known = _read(_file(folder))
    return {name: known[key] for name, key in addresses.items() if key in known}


def remember(
    figures: Mapping[str, Remembered],
    addresses: Mapping[str, str | None],
    folder: Path | None = None,
) -> None:
    """Keep these figures (by endpoint name) for the next run; never fails the run."""
    mine = {key: value for name, value in figures.items() if (key := addresses.get(name))}
    if not mine:
        return
    path = _file(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        known = _read(path)
        known.update(mine)
        newest = sorted(known.items(), key=lambda item: -item[1].at)[:KEPT]
        document = {"version": VERSION, "endpoints": {key: asdict(value) for key, value in newest}}
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".speeds-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(document, file, indent=1)
            os.replace(temporary, path)  # two runs ending at once: one complete file wins
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    except OSError as error:
        log.info("could not keep the endpoints' speeds for the next run in %s: %s", path, error)


def _file(folder: Path | None) -> Path:
    return (folder or cache_dir()) / FILE_NAME


def _read(path: Path) -> dict[str, Remembered]:
    """The file's figures; a missing, unreadable or foreign file is an empty memory."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        entries = document["endpoints"] if document.get("version") == VERSION else {}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}
    known = {}
    oldest = time.time() - STALE_S
    for key, entry in entries.items() if isinstance(entries, dict) else ():
        with contextlib.suppress(KeyError, TypeError, ValueError):
            value = Remembered(
                sec_per_unit=float(entry["sec_per_unit"]),
                switch_s=None if entry["switch_s"] is None else float(entry["switch_s"]),
                rows=int(entry["rows"]),
                at=float(entry["at"]),
            )
            sane = math.isfinite(value.sec_per_unit) and value.sec_per_unit > 0
            if sane and value.at >= oldest and (value.switch_s is None or value.switch_s >= 0):
                known[key] = value
    return known
