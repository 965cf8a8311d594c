"""`batchgen merge`: the shard folders of one job in, one run folder out (each row exactly once).

Everything is checked before anything is written: the folders are shards of one job (same
fingerprint in job.json, one folder per index), every key a shard was given has a record, and no
key is in two shards. Then images are hard-linked (or copied), the manifest is written (images
first, the manifest last, as a run does), and results.csv is rebuilt from the merged records.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from batchgen.errors import BatchgenError, ConfigError
from batchgen.outputs.manifest import MANIFEST, ManifestRecord, latest_records
from batchgen.outputs.shards import read_shard_plan
from batchgen.outputs.store import RESULT_COLUMNS, folder_in_use

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
RESULTS = "results.csv"
_SHOWN_ROWS = 10  # rows named per incomplete shard; the count says the rest


class IncompleteMergeError(BatchgenError):
    """Some shard is missing or did not finish: nothing was merged; rerun those tasks."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class ShardFolder:
    """One shard's folder, read: its place in the job and its latest records."""

    path: Path
    index: int
    count: int
    fingerprint: str
    keys: Mapping[str, int]  # key -> row: what this shard was given
    per_shard: tuple[int, ...]  # the job's keys per shard index
    records: Mapping[str, ManifestRecord]
    job: Mapping[str, Any]  # job.json as written by the run


@dataclass(frozen=True, slots=True)
class MergeSummary:
    out_dir: Path
    shards: int
    ok: int
    failed: int
    images: int

    def describe(self) -> str:
        failed = f", {self.failed:,} failed (batchgen run --retry-failed on their shard)"
        return (
            f"merged {self.shards} shards into {self.out_dir}: {self.ok:,} rows ok"
            + (failed if self.failed else "")
            + f", {self.images:,} images"
        )

    @property
    def exit_code(self) -> int:
        return 0 if self.failed == 0 else 1


def merge_shards(folders: Sequence[Path], out_dir: Path, *, copy: bool = False) -> MergeSummary:
    """Check the shards, then write one run folder; raise before writing if anything is off."""
    absent = [folder for folder in folders if not folder.exists()]  # a task that never started
    shards = [read_shard(folder) for folder in folders if folder.exists()]
    if not shards:
        raise ConfigError(f"none of the shard folders exists: {', '.join(map(str, folders))}")
    _check_same_job(shards)
    _check_complete(shards, absent)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: not empty; merge writes a new (or empty) folder only")
    records = sorted(
        (record for shard in shards for record in shard.records.values()),
        key=lambda record: (record.row, record.key),
    )
    sources = {key: shard.path for shard in shards for key in shard.records}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_place_files(record, sources[record.key], out_dir, copy) for record in records]
    tmp = out_dir / (MANIFEST + ".tmp")
    with tmp.open("wb") as handle:
        for record in written:
            handle.write(record.to_line())
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(out_dir / MANIFEST)
    _write_job(shards, out_dir)
    _write_results(shards, written, out_dir)
    return MergeSummary(
        out_dir=out_dir,
        shards=len(shards),
        ok=sum(record.ok for record in written),
        failed=sum(not record.ok for record in written),
        images=sum(len(record.images) for record in written),
    )


def read_shard(folder: Path) -> ShardFolder:
    """A shard folder's job.json, shard.json and latest records; ConfigError if it is not one."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder")
    if folder_in_use(folder):
        raise ConfigError(f"{folder}: a batchgen run is still writing here; merge when it ends")
    try:
        job = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"{folder}: no readable {JOB_FILE}; not a batchgen run folder") from None
    plan = read_shard_plan(folder)
    return ShardFolder(
        path=folder,
        index=int(plan["index"]),
        count=int(plan["count"]),
        fingerprint=str(job.get("fingerprint")),
        keys={str(key): int(row) for key, row in plan["keys"].items()},
        per_shard=tuple(int(n) for n in plan["per_shard"]),
        records=latest_records(folder),
        job=job,
    )


def _check_same_job(shards: Sequence[ShardFolder]) -> None:
    first = shards[0]
    for shard in shards[1:]:
        if shard.fingerprint != first.fingerprint:
            raise ConfigError(
                f"{first.path} and {shard.path} are runs of different jobs or sheets "
                f"(fingerprints {first.fingerprint[:12]} and {shard.fingerprint[:12]} in "
                f"{JOB_FILE}); merge only the shard folders of one job; nothing was written"
            )
        if shard.count != first.count or shard.per_shard != first.per_shard:
            raise ConfigError(
                f"{first.path} is a shard of {first.count}, {shard.path} of {shard.count}: "
                "merge the shards of one split (one --shard count); nothing was written"
            )
    seen: dict[int, Path] = {}
    for shard in shards:
        if shard.index in seen:
            raise ConfigError(
                f"shard {shard.index}/{shard.count} given twice ({seen[shard.index]} and "
                f"{shard.path}); give each shard's folder once; nothing was written"
            )
        seen[shard.index] = shard.path
    owner: dict[str, Path] = {}
    for shard in shards:
        strays = [key for key in shard.records if key not in shard.keys]
        if strays:
            raise ConfigError(
                f"{shard.path}: its manifest holds {len(strays)} row(s) that are not shard "
                f"{shard.index}/{shard.count}'s (e.g. key {strays[0]}); was another run written "
                "into this folder? nothing was written"
            )
        for key in shard.records:
            if key in owner:  # unreachable for true shards: their key sets are disjoint
                raise ConfigError(f"key {key} is in {owner[key]} and {shard.path}")
            owner[key] = shard.path


def _check_complete(shards: Sequence[ShardFolder], absent: Sequence[Path]) -> None:
    count = shards[0].count
    given = {shard.index: shard for shard in shards}
    lines = [f"{folder}: no such folder" for folder in absent]
    for index in range(count):
        shard = given.get(index)
        if shard is None:
            lines.append(
                f"shard {index}/{count}: no folder of it was given "
                f"({shards[0].per_shard[index]:,} rows); {_rerun(index, count)}"
            )
            continue
        missing = sorted(row for key, row in shard.keys.items() if key not in shard.records)
        if missing:
            shown = ", ".join(str(row) for row in missing[:_SHOWN_ROWS])
            more = f" and {len(missing) - _SHOWN_ROWS:,} more" if len(missing) > _SHOWN_ROWS else ""
            lines.append(
                f"shard {index}/{count} ({shard.path}): {len(missing):,} rows never finished "
                f"(rows {shown}{more}); {_rerun(index, count)}, it resumes"
            )
    if lines:
        head = "the shards are incomplete; nothing was merged"
        raise IncompleteMergeError("\n".join([head, *(f"  - {line}" for line in lines)]))


def _rerun(index: int, count: int) -> str:
    return (
        f"run it again: `batchgen run ... --shard {index}/{count}` (Slurm: array task "
        f"{index} of --array=0-{count - 1}; Kubernetes: completion index {index})"
    )


def _place_files(record: ManifestRecord, source: Path, out_dir: Path, copy: bool) -> ManifestRecord:
    """The record's files in out_dir (never over an existing file), paths updated if moved."""
    images = tuple(_place(source, name, out_dir, copy) for name in record.images)
    extras = tuple(_place(source, name, out_dir, copy) for name in record.extras)
    if images == record.images and extras == record.extras:
        return record
    return replace(record, images=images, extras=extras)


def _place(source: Path, relative: str, out_dir: Path, copy: bool) -> str:
    stem, dot, suffix = relative.rpartition(".")
    candidate, counter = relative, 1
    while (out_dir / candidate).exists():  # a custom file name template made twins across shards
        candidate = f"{stem}~{counter}{dot}{suffix}"
        counter += 1
    target = out_dir / candidate
    target.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(source / relative, target)
            return candidate
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copy2(source / relative, target)
    return candidate


def _write_job(shards: Sequence[ShardFolder], out_dir: Path) -> None:
    job = dict(sorted(shards, key=lambda shard: shard.index)[0].job)
    job["shard"] = None
    job["merged_from"] = [str(shard.path) for shard in sorted(shards, key=lambda s: s.index)]
    (out_dir / JOB_FILE).write_text(json.dumps(job, indent=2) + "\n", encoding="utf-8")


def _write_results(
    shards: Sequence[ShardFolder], records: Iterable[ManifestRecord], out_dir: Path
) -> None:
    """results.csv: a shard's copy of the input sheet, every row's outcome from the merge."""
    template = next(
        (shard.path / RESULTS for shard in shards if (shard.path / RESULTS).is_file()), None
    )
    if template is None:
        log.warning("no shard has a %s; the merged folder has none either", RESULTS)
        return
    by_row = {record.row: record for record in records}
    with template.open(newline="", encoding="utf-8-sig") as source:
        reader = csv.reader(source)
        header = next(reader)
        outcome_columns = _trailing_result_columns(header)
        with (out_dir / RESULTS).open("w", newline="", encoding="utf-8-sig") as target:
            writer = csv.writer(target)
            writer.writerow(header)
            for values in reader:
                line = dict(zip(header, values, strict=False))
                record = by_row.get(int(line.get("row") or 0))
                if record is not None:
                    line.update(_outcome(record, outcome_columns))
                writer.writerow([line.get(column, "") for column in header])


def _trailing_result_columns(header: list[str]) -> set[str]:
    """The result columns the run added after the sheet's own (a sheet may have a 'status')."""
    added: set[str] = set()
    for column in reversed(header):
        if column not in RESULT_COLUMNS or column in added:
            break
        added.add(column)
    return added


def _outcome(record: ManifestRecord, columns: set[str]) -> dict[str, str]:
    values = {
        "row": str(record.row),
        "status": record.status,
        "images": ";".join(record.images),
        "seeds": ";".join(str(seed) for seed in record.seeds),
        "error": record.error or "",
    }
    return {name: value for name, value in values.items() if name in columns}
