"""The export's settings as one frozen value, and the small protocols its parts share."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from batchgen.backends.a1111 import redact_url
from batchgen.errors import ConfigError
from batchgen.outputs.export.dest import Destination
from batchgen.outputs.export.samples import ExportPlan

Format = Literal["imagefolder", "webdataset", "parquet"]
FORMATS: tuple[Format, ...] = ("imagefolder", "webdataset", "parquet")
Progress = Callable[[int], None]  # called with the number of images just finished (or kept)
Watcher = Callable[[int, int], None]  # images done so far, images in all
SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B|)", re.IGNORECASE)
UNITS = {"": 1, "B": 1, **{f"{p}B": 1000 ** (i + 1) for i, p in enumerate("KMGT")}}
UNITS.update({f"{p}IB": 1024 ** (i + 1) for i, p in enumerate("KMGT")})


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """What `batchgen export` was asked to do."""

    runs: tuple[Path, ...]
    format: Format
    to: str  # a folder or an fsspec URL
    captions: bool = False  # imagefolder: NAME.txt beside each image
    split_by: str | None = None
    max_per_shard: int = 10_000
    max_shard_bytes: int = 1_000_000_000  # the CLI's 1GB

    def __post_init__(self) -> None:
        if self.captions and self.format != "imagefolder":
            raise ConfigError(
                "--captions is for imagefolder: webdataset samples always hold KEY.txt, and "
                "parquet has the caption in its text column"
            )
        if self.max_per_shard < 1 or self.max_shard_bytes < 1:
            raise ConfigError("--max-per-shard and --max-shard-size must be above 0")

    def settings(self) -> dict[str, Any]:
        """What shapes the files (not where the runs or DEST are): part of the fingerprint."""
        data = asdict(self)
        for name in ("runs", "to"):
            data.pop(name)
        if self.format == "imagefolder":  # one file per image: shard limits change nothing
            data.pop("max_per_shard")
            data.pop("max_shard_bytes")
        return data

    @property
    def shown_to(self) -> str:
        """DEST as it may be shown: a URL's user:password part left out."""
        return redact_url(self.to)

    def command(self) -> str:
        """The command line that makes this export again."""
        words = ["batchgen", "export", *map(str, self.runs), "--format", self.format]
        words += ["--to", self.shown_to]
        if self.captions:
            words.append("--captions")
        if self.split_by:
            words += ["--split-by", self.split_by]
        if self.format != "imagefolder":
            words += ["--max-per-shard", str(self.max_per_shard)]
            words += ["--max-shard-size", str(self.max_shard_bytes)]
        return shlex.join(words)


def parse_size(text: str) -> int:
    """`500MB`, `1GiB`, `2000000` -> bytes."""
    found = SIZE.fullmatch(text.strip())
    if not found:
        raise ConfigError(f"--max-shard-size {text!r}: write a size like 500MB, 1GB or 2000000")
    number, unit = found.groups()
    return int(float(number) * UNITS[unit.upper()])


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
