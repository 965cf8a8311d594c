"""The dataset card: README.md in DEST, saying what is in the export and how to make it again."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchgen.outputs.export.options import ExportOptions
from batchgen.outputs.export.samples import ExportPlan, RunInfo

# job.json keys that say where or how fast a run went, not which images it made.
NOT_IN_JOB_FINGERPRINT = {
    "name",
    "sheet",
    "endpoints",
    "in_flight",
    "retry",
    "timeout",
    "output",
    "check",
    "wait_all_down",
    "payload_base",
}
LOADS = {
    "imagefolder": 'load_dataset("imagefolder", data_dir="DEST")',
    "webdataset": 'load_dataset("webdataset", data_dir="DEST")',
    "parquet": 'load_dataset("parquet", data_dir="DEST")',
}


def job_fingerprint(job: Mapping[str, Any]) -> str:
    """What in job.json decides the images (defaults, columns, seeds...), hashed; '' without one."""
    if not job:
        return ""
    kept = {name: value for name, value in job.items() if name not in NOT_IN_JOB_FINGERPRINT}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def sheet_fingerprint(job: Mapping[str, Any]) -> str:
    """The sheet file's sha256 (first 16 hex), if it is still where the run read it."""
    sheet, base = job.get("sheet"), job.get("payload_base")
    if not sheet or not base:
        return "unknown (no job.json)"
    path = Path(str(base)) / Path(str(sheet)).name
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return f"unknown ({Path(str(sheet)).name} is no longer beside the run's payload paths)"


def dataset_card(plan: ExportPlan, options: ExportOptions, fingerprint: str) -> str:
    samples = plan.samples
    lines = [
        f"# {_title(plan)}",
        "",
        f"Images made with Stable Diffusion web UI servers by batchgen, exported as "
        f"`{options.format}` from {len(plan.runs)} run folder(s). Only rows whose last manifest "
        "record is ok are here; every image carries its provenance in its metadata.",
        "",
        "## Counts",
        "",
        "| | count |",
        "|---|---:|",
        f"| images exported | {len(samples):,} |",
        f"| rows exported | {sum(run.ok_rows for run in plan.runs):,} |",
        f"| rows failed (not exported) | {sum(run.failed_rows for run in plan.runs):,} |",
        f"| rows left out (ok, but no image{' or no split' if plan.split_by else ''}) | "
        f"{sum(run.left_out_rows for run in plan.runs):,} |",
    ]
    if plan.split_by:
        lines += ["", f"## Splits (from the note column `{plan.split_by}`)", ""]
        lines += _table(("split", "images"), Counter(s.split for s in samples))
    models = Counter((s.metadata["model"], s.metadata["model_hash"]) for s in samples)
    lines += ["", "## Models", "", "| model | hash | images |", "|---|---|---:|"]
    lines += [
        f"| {m or '?'} | {h or '?'} | {n:,} |" for (m, h), n in sorted(models.items(), key=str)
    ]
    lines += ["", "## Server versions", ""]
    lines += _table(("version", "images"), Counter(s.metadata["server_version"] for s in samples))
    lines += ["", "## Seeds", "", *_seed_lines(plan.runs)]
    lines += ["", "## Runs", "", "| run | job fingerprint | sheet fingerprint | ok | failed |"]
    lines += ["|---|---|---|---:|---:|"]
    lines += [
        f"| {run.path.name} | {job_fingerprint(run.job) or '?'} | {sheet_fingerprint(run.job)} "
        f"| {run.ok_rows:,} | {run.failed_rows:,} |"
        for run in plan.runs
    ]
    lines += [
        "",
        f"Export fingerprint (samples, metadata and export settings): `{fingerprint}`",
        "",
        "## Columns",
        "",
        ", ".join(f"`{name}`" for name in plan.columns),
        "",
        "## Load it",
        "",
        "```python",
        "from datasets import load_dataset",
        LOADS[options.format].replace("DEST", options.shown_to),
        "```",
        "",
        "## Make it again",
        "",
        "```",
        options.command(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _title(plan: ExportPlan) -> str:
    names = sorted({str(run.job.get("name") or run.path.name) for run in plan.runs})
    return ", ".join(names)


def _seed_lines(runs: tuple[RunInfo, ...]) -> list[str]:
    lines = ["The `seed` column holds each image's real seed, as the server reported it."]
    for run in runs:
        seed = run.job.get("seed")
        if not isinstance(seed, Mapping):
            lines.append(f"- {run.path.name}: seed policy unknown (no job.json)")
        elif seed.get("mode") == "random":
            lines.append(f"- {run.path.name}: random (-1 sent; the server chose each seed)")
        else:
            lines.append(
                f"- {run.path.name}: derived (a row without a seed got one fixed from base "
                f"{seed.get('base', 0)} and its row)"
            )
    return lines


def _table(head: tuple[str, str], counts: Counter[Any]) -> list[str]:
    rows = [f"| {head[0]} | {head[1]} |", "|---|---:|"]
    return rows + [f"| {value or '?'} | {n:,} |" for value, n in sorted(counts.items(), key=str)]
