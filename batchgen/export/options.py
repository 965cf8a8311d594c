"""The export's settings as one frozen value, and the small protocols its parts share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from batchgen.export.dest import Destination
from batchgen.export.samples import ExportPlan

Format = Literal["imagefolder", "webdataset", "parquet"]
FORMATS: tuple[Format, ...] = ("imagefolder", "webdataset", "parquet")
Progress = Callable[[int], None]  # called with the number of images just finished (or kept)


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """What `batchgen export` was asked to do."""

    runs: tuple[Path, ...]
    format: Format
    to: str  # a folder or an fsspec URL
    captions: bool = False  # imagefolder: NAME.txt beside each image
    split_by: str | None = None
    max_per_shard: int = 10_000
    max_shard_bytes: int = 1 << 30
    command: str = ""  # the command line that re-creates the export, for the card

    def settings(self) -> dict[str, Any]:
        """What shapes the files (not where the runs or DEST are): part of the fingerprint."""
        data = asdict(self)
        for name in ("runs", "to", "command"):
            data.pop(name)
        return data


@dataclass(frozen=True, slots=True)
class Written:
    """Files a format writer wrote now and files it found whole from an earlier attempt."""

    written: int
    kept: int


class FormatWriter(Protocol):
    """Writes every sample of the plan to DEST in one format; skips files already whole."""

    def __call__(
        self, plan: ExportPlan, dest: Destination, options: ExportOptions, progress: Progress
    ) -> Written: ...
