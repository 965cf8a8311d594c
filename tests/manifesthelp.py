"""Rewriting a run folder's manifest through ManifestRecord: a folder as a real server made it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from batchgen.outputs.manifest import MANIFEST, ManifestRecord, scan


def as_real_server(out_dir: Path, real: Callable[[ManifestRecord], bool] = lambda _: True) -> None:
    """Every record `real` picks says `simulator: false` (all test endpoints are simulators)."""
    lines = []
    for _, line, record in scan(out_dir / MANIFEST):
        if record is not None and real(record):
            line = dataclasses.replace(record, simulator=False).to_line()
        lines.append(line)
    (out_dir / MANIFEST).write_bytes(b"".join(lines))
