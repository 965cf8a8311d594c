"""How a CSV file is written: its separator and encoding, from the job or from the file itself."""

from __future__ import annotations

import codecs
import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from batchgen.errors import ConfigError

SEPARATORS = (",", ";", "\t", "|")  # what a CSV file may be separated by, in order of preference


@dataclass(frozen=True, slots=True)
class CsvFormat:
    """How a CSV/TSV file is written: its separator and text encoding."""

    delimiter: str
    encoding: str


def csv_format(
    path: Path, kind: str, delimiter: str | None = None, encoding: str | None = None
) -> CsvFormat:
    """The job's delimiter and encoding, or what the file looks like: European Excel writes ';'
    and cp1252, and some tools write tabs into a .csv."""
    stat = path.stat()
    return _detect(path, stat.st_mtime_ns, stat.st_size, kind, delimiter, encoding)


@lru_cache(maxsize=16)
def _detect(
    path: Path, _mtime: int, _size: int, kind: str, delimiter: str | None, encoding: str | None
) -> CsvFormat:
    encoding = encoding or ("utf-8-sig" if _is_utf8(path) else "cp1252")
    if delimiter is not None:
        return CsvFormat(delimiter, encoding)
    if kind == "tsv":
        return CsvFormat("\t", encoding)
    header = first_line(path, encoding)
    widths = {sep: width(header, sep) for sep in SEPARATORS}
    best = max(SEPARATORS, key=lambda sep: widths[sep])  # a tie keeps the first: ','
    return CsvFormat(best, encoding)


def _is_utf8(path: Path) -> bool:
    """The whole file decodes as UTF-8, read in blocks (a big sheet is never held in memory)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                decoder.decode(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it: {error}") from None
    return True


def first_line(path: Path, encoding: str) -> str:
    try:
        with path.open(encoding=encoding, newline="") as handle:
            return handle.readline()
    except (OSError, LookupError, UnicodeDecodeError):
        return ""  # reading the file itself says what is wrong


def width(line: str, sep: str) -> int:
    return max((len(fields) for fields in csv.reader([line], delimiter=sep)), default=0)
