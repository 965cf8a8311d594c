"""What changed in the sheet and the job since the output folder's last run, said at the start."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchgen.outputs.manifest import ManifestRecord
from batchgen.outputs.rowindex import RowIndex
from batchgen.outputs.run_files import read_job_file
from batchgen.records import Task
from batchgen.words import counted

_BATCH = 4096  # manifest records put into the index at a time
# Entries (three per past request) held in memory before the index moves to a scratch file:
# about 18 MB; a folder past that is compared on disk, more slowly but in flat memory.
_IN_MEMORY = 200_000
DIGEST = "rows_digest"  # in job.json: a hash of the sheet's row keys in order, as last run
# The job keys that decide what a row's request is; a change makes rows differ from the folder's.
# (Paths are left out: the same sheet given from another folder is no change.)
SETTINGS = (
    "sheet_name",
    "delimiter",
    "encoding",
    "defaults",
    "columns",
    "controlnet",
    "seed",
    "expand",
)


class ChangeTracker:
    """Fed the folder's manifest records (by the scan that reads its past), then every row's task
    while the sheet is validated; says what differs.

    The past keys, each row's latest key and the keys seen are kept in a row index, which moves
    to a scratch file once it grows: a million-request sweep resumes without holding them."""

    def __init__(self, out_dir: Path) -> None:
        self._out_dir = out_dir
        self._index = RowIndex(spill=_IN_MEMORY)
        self._past: list[tuple[str, str, int]] = []  # remembered, not yet in the index
        self._rows: list[tuple[int, str]] = []
        self._has_past: bool | None = None  # known once the first task is seen
        self._digest = hashlib.sha256()
        self.changed = self.new = 0

    def remember(self, record: ManifestRecord) -> None:
        """One of the folder's manifest records, in file order; all come before the first task."""
        self._past.append((record.key, "", 0))
        self._rows.append((record.row, record.key))
        if len(self._rows) >= _BATCH:
            self._put_remembered()

    def _put_remembered(self) -> None:
        self._index.put_past(self._past)
        self._index.put_by_row(self._rows)
        self._past, self._rows = [], []

    @property
    def has_past(self) -> bool:
        if self._has_past is None:
            self._put_remembered()
            self._has_past = self._index.past_count() > 0
        return self._has_past

    @property
    def digest(self) -> str:
        return self._digest.hexdigest()

    def see(self, task: Task) -> None:
        self._digest.update(f"{task.row}:{task.key}\n".encode())
        if not self.has_past:
            return
        self._index.mark_seen(task.key)
        if self._index.past(task.key) is not None:
            return  # the same row, maybe moved: its images are reused
        if task.expansion is None and self._index.has_row(task.row):
            self.changed += 1  # (an expansion not sent before is a new request of its row)
        else:
            self.new += 1

    @property
    def gone(self) -> int:
        """Past rows whose content is nowhere in the sheet, less those changed in place."""
        latest = self._index.rows_latest_keys()
        unseen = sum(not self._index.was_seen(key) for key in latest)
        return max(0, unseen - self.changed)

    def close(self) -> None:
        self._index.close()

    def describe(self, job_now: Mapping[str, Any]) -> str | None:
        """One line, or None when the folder is new or nothing changed."""
        if not self.has_past:
            return None
        before = read_job_file(self._out_dir)
        settings = changed_settings(before, job_now)
        parts: list[str] = []
        # The same rows as last time: rows missing from the manifest were just not run yet.
        if before.get(DIGEST) != self.digest:
            if self.changed:
                parts.append(f"{counted(self.changed, 'row')} changed")
            if self.new:
                parts.append(f"{self.new:,} new")
            gone = self.gone
            if gone:
                parts.append(f"{counted(gone, 'row')} gone from the sheet")
        if settings:
            parts.append(f"settings changed: {', '.join(settings)}")
        if not parts:
            return None
        return (
            f"{self._out_dir} holds an earlier run of a different sheet or job: "
            f"{'; '.join(parts)}. Its images stay; changed and new rows are sent now "
            "(--fresh starts an empty folder instead)"
        )


def changed_settings(before: Mapping[str, Any], job_now: Mapping[str, Any]) -> list[str]:
    """The job keys whose value differs from the folder's job.json (dotted, one level deep)."""
    if not before:
        return []
    changed: list[str] = []
    for key in (*SETTINGS, "output.filename"):
        old, new = _at(before, key), _at(job_now, key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            inner = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
            changed.extend(f"{key}.{name}" for name in inner)
        else:
            changed.append(key)
    return changed


def _at(data: Mapping[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value
