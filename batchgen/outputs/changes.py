"""What changed in the sheet and the job since the output folder's last run, said at the start."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchgen.outputs.manifest import MANIFEST, scan
from batchgen.records import Task
from batchgen.words import counted

JOB_FILE = "job.json"
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
    """Fed every row's task while the sheet is validated; compares with the folder's manifest."""

    def __init__(self, out_dir: Path) -> None:
        self._out_dir = out_dir
        self._past_by_row: dict[int, str] = {}  # row number -> the latest key recorded for it
        self._past_keys: set[str] = set()
        for _, _, record in scan(out_dir / MANIFEST):
            if record is not None:
                self._past_by_row[record.row] = record.key
                self._past_keys.add(record.key)
        self._seen_keys: set[str] = set()
        self._digest = hashlib.sha256()
        self.changed = self.new = 0

    @property
    def has_past(self) -> bool:
        return bool(self._past_keys)

    @property
    def digest(self) -> str:
        return self._digest.hexdigest()

    def see(self, task: Task) -> None:
        self._digest.update(f"{task.row}:{task.key}\n".encode())
        self._seen_keys.add(task.key)
        if task.key in self._past_keys:
            return  # the same row, maybe moved: its images are reused
        if task.row in self._past_by_row and task.expansion is None:
            self.changed += 1  # (an expansion not sent before is a new request of its row)
        else:
            self.new += 1

    @property
    def gone(self) -> int:
        """Past rows whose content is nowhere in the sheet, less those changed in place."""
        unseen = len(set(self._past_by_row.values()) - self._seen_keys)
        return max(0, unseen - self.changed)

    def describe(self, job_now: Mapping[str, Any]) -> str | None:
        """One line, or None when the folder is new or nothing changed."""
        if not self.has_past:
            return None
        before = _last_job(self._out_dir)
        settings = changed_settings(before, job_now)
        parts: list[str] = []
        # The same rows as last time: rows missing from the manifest were just not run yet.
        if before.get(DIGEST) != self.digest:
            if self.changed:
                parts.append(f"{counted(self.changed, 'row')} changed")
            if self.new:
                parts.append(f"{self.new:,} new")
            if self.gone:
                parts.append(f"{counted(self.gone, 'row')} gone from the sheet")
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


def _last_job(out_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((out_dir / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
