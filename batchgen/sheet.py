"""Reads a CSV, TSV, XLSX or JSONL sheet as a stream of SheetRows, numbered as the sheet shows."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd

from batchgen.errors import ConfigError
from batchgen.records import SheetRow

SUFFIXES = (".csv", ".tsv", ".xlsx", ".jsonl")
NO_HEADER = ""  # cells under a column without a header are kept under this key


def read_headers(path: Path, sheet_name: str | None = None) -> list[str]:
    """The column headers in sheet order (duplicates kept; JSONL: keys in order of first use)."""
    kind = _kind(path)
    if kind == "jsonl":
        seen: dict[str, None] = {}
        for _, obj in _jsonl_objects(path):
            seen.update(dict.fromkeys(obj))
        return list(seen)
    if kind == "xlsx":
        with _Workbook(path, sheet_name) as rows:
            first = next(rows, ())
        return [h for h in (_header_text(v) for v in first) if h]
    for chunk in _csv_chunks(path, kind, chunk_rows=1):
        return [h for h in (_header_text(v) for v in chunk[0]) if h]
    return []


def read_rows(
    path: Path, sheet_name: str | None = None, *, chunk_rows: int = 2000
) -> Iterator[SheetRow]:
    """Non-blank rows, lazily. CSV/TSV/XLSX: the header is row 1. JSONL: row = line number."""
    kind = _kind(path)
    if kind == "jsonl":
        for line_no, obj in _jsonl_objects(path):
            cells = {str(k): v for k, v in obj.items() if not _blank(v)}
            if cells:
                yield SheetRow(row=line_no, cells=cells)
        return
    if kind == "xlsx":
        with _Workbook(path, sheet_name) as rows:
            yield from _table_rows(rows)
        return
    yield from _table_rows(
        values for chunk in _csv_chunks(path, kind, chunk_rows) for values in chunk
    )


def _table_rows(records: Iterator[tuple[Any, ...]]) -> Iterator[SheetRow]:
    headers: list[str] = []
    for number, values in enumerate(records, start=1):
        if number == 1:
            headers = [_header_text(v) for v in values]
            continue
        cells: dict[str, Any] = {}
        for index, value in enumerate(values):
            if _blank(value):
                continue
            header = headers[index] if index < len(headers) else NO_HEADER
            cells.setdefault(header, value)  # a duplicate header: the first column wins
        if cells:
            yield SheetRow(row=number, cells=cells)


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"{path}: cannot read a '{suffix}' sheet; use {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    return suffix[1:]


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return not value.strip()
    return False


def _header_text(value: Any) -> str:
    if _blank(value):
        return NO_HEADER
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _csv_chunks(path: Path, kind: str, chunk_rows: int) -> Iterator[list[tuple[Any, ...]]]:
    try:
        reader = pd.read_csv(
            path,
            sep="\t" if kind == "tsv" else ",",
            header=None,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,  # keeps row numbers equal to what the spreadsheet shows
            chunksize=chunk_rows,
            encoding="utf-8-sig",
        )
        with reader:
            for frame in reader:
                yield list(frame.itertuples(index=False, name=None))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as 'CSV UTF-8'") from None
    except pd.errors.EmptyDataError:
        return
    except (pd.errors.ParserError, OSError) as error:
        raise ConfigError(f"{path}: cannot read it: {error}") from None


class _Workbook:
    """An openpyxl read-only workbook as a context manager yielding the rows of one sheet."""

    def __init__(self, path: Path, sheet_name: str | None) -> None:
        self._path = path
        self._sheet_name = sheet_name
        self._book: Any = None

    def __enter__(self) -> Iterator[tuple[Any, ...]]:
        try:
            self._book = openpyxl.load_workbook(self._path, read_only=True, data_only=True)
        except Exception as error:  # openpyxl raises many types for a damaged or non-xlsx file
            raise ConfigError(
                f"{self._path}: cannot read it as an Excel workbook: {error}"
            ) from None
        names: list[str] = self._book.sheetnames
        if self._sheet_name is None:
            sheet = self._book.worksheets[0]
        elif self._sheet_name in names:
            sheet = self._book[self._sheet_name]
        else:
            self._book.close()
            raise ConfigError(
                f"{self._path}: no sheet named '{self._sheet_name}'; "
                f"the sheets are {', '.join(repr(n) for n in names)}"
            )
        rows: Iterator[tuple[Any, ...]] = sheet.iter_rows(min_row=1, values_only=True)
        return rows

    def __exit__(self, *exc: object) -> None:
        if self._book is not None:
            self._book.close()


def _jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ConfigError(f"{path}, line {line_no}: not valid JSON: {error}") from None
                if not isinstance(obj, dict):
                    raise ConfigError(
                        f"{path}, line {line_no}: each line must be a JSON object like "
                        '{"prompt": "..."}'
                    )
                yield line_no, obj
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it: {error}") from None
