"""Reads a CSV, TSV, XLSX or JSONL sheet as a stream of SheetRows, numbered as the sheet shows."""

from __future__ import annotations

import json
import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
from openpyxl.utils import get_column_letter

from batchgen.errors import ConfigError, Problem
from batchgen.records import SheetRow
from batchgen.rows.csvformat import SEPARATORS, csv_format, first_line, width

SUFFIXES = (".csv", ".tsv", ".xlsx", ".jsonl")
NO_HEADER = ""  # cells under a column without a header are kept under this key


def read_headers(
    path: Path,
    sheet_name: str | None = None,
    *,
    delimiter: str | None = None,
    encoding: str | None = None,
) -> list[str]:
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
    for chunk in _csv_chunks(path, kind, 1, delimiter, encoding):
        return [h for h in (_header_text(v) for v in chunk[0]) if h]
    return []


def read_rows(
    path: Path,
    sheet_name: str | None = None,
    *,
    delimiter: str | None = None,
    encoding: str | None = None,
    chunk_rows: int = 2000,
) -> Iterator[SheetRow]:
    """Non-blank rows, lazily. CSV/TSV/XLSX: the header is row 1. JSONL: row = line number;
    a line that is not a JSON object is left out here and reported by `sheet_problems`."""
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
    chunks = _csv_chunks(path, kind, chunk_rows, delimiter, encoding)
    yield from _table_rows(values for chunk in chunks for values in chunk)


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


def _csv_chunks(
    path: Path, kind: str, chunk_rows: int, delimiter: str | None, encoding: str | None
) -> Iterator[list[tuple[Any, ...]]]:
    found = csv_format(path, kind, delimiter, encoding)
    try:
        reader = pd.read_csv(
            path,
            sep=found.delimiter,
            header=None,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,  # keeps row numbers equal to what the spreadsheet shows
            chunksize=chunk_rows,
            encoding=found.encoding,
        )
        with reader:
            for frame in reader:
                yield list(frame.itertuples(index=False, name=None))
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path}: not {found.encoding} text; set encoding in the job "
            '(e.g. encoding = "cp1252"), or save it as "CSV UTF-8"'
        ) from None
    except LookupError:
        raise ConfigError(f'{path}: unknown encoding {found.encoding!r}; e.g. "cp1252"') from None
    except pd.errors.EmptyDataError:
        return
    except (pd.errors.ParserError, OSError) as error:
        raise ConfigError(f"{path}: cannot read it: {error}") from None


class _Workbook:
    """An openpyxl read-only workbook as a context manager yielding the rows of one sheet."""

    def __init__(self, path: Path, sheet_name: str | None, *, formulas: bool = False) -> None:
        self._path = path
        self._sheet_name = sheet_name
        self._formulas = formulas  # True: a formula cell reads as its text ("=A1*2")
        self._book: Any = None

    def __enter__(self) -> Iterator[tuple[Any, ...]]:
        try:
            self._book = openpyxl.load_workbook(
                self._path, read_only=True, data_only=not self._formulas
            )
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
    for line_no, obj, _ in _jsonl_lines(path):
        if obj is not None:
            yield line_no, obj


def _jsonl_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, the object or None, what is wrong with the line) for each non-blank line."""
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as error:
                    yield line_no, None, f"not valid JSON: {error}"
                    continue
                if not isinstance(obj, dict):
                    yield line_no, None, 'each line must be a JSON object like {"prompt": "..."}'
                    continue
                yield line_no, obj, ""
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it: {error}") from None


def sheet_problems(path: Path, sheet_name: str | None = None, **_: Any) -> list[Problem]:
    """What reading the rows leaves out: JSONL lines that are not JSON objects, and XLSX
    formulas Excel never computed (they read as empty cells)."""
    kind = _kind(path)
    if kind == "jsonl":
        return [
            Problem(str(path), f"line {line_no}: {message}", hint="fix or delete the line")
            for line_no, obj, message in _jsonl_lines(path)
            if obj is None
        ]
    if kind == "xlsx":
        return _formulas_without_values(path, sheet_name)
    return []


def separator_problem(
    path: Path, *, delimiter: str | None = None, encoding: str | None = None, **_: Any
) -> Problem | None:
    """A CSV whose header reads as one column with its separator, but not with another one."""
    kind = _kind(path)
    if kind not in ("csv", "tsv"):
        return None
    found = csv_format(path, kind, delimiter, encoding)
    header = first_line(path, found.encoding)
    if width(header, found.delimiter) > 1:
        return None
    widest = max(SEPARATORS, key=lambda sep: width(header, sep))
    if width(header, widest) <= 1:
        return None
    shown = "a tab" if widest == "\t" else f"'{widest}'"
    setting = "\\t" if widest == "\t" else widest
    return Problem(
        str(path),
        f"the header reads as one column ({header.strip()!r}) with the separator "
        f"{found.delimiter!r}; the separator seems to be {shown}",
        row=1,
        hint=f'set delimiter = "{setting}" in the job, or leave delimiter out to detect it',
    )


def header_row_guess(path: Path, sheet_name: str | None = None, **csv_options: Any) -> int | None:
    """The row that looks like the header when row 1 looks like a title above it (one cell)."""
    kind = _kind(path)
    if kind == "jsonl":
        return None
    if kind == "xlsx":
        with _Workbook(path, sheet_name) as rows:
            first = [values for _, values in zip(range(6), rows, strict=False)]
    else:
        chunks = _csv_chunks(
            path, kind, 6, csv_options.get("delimiter"), csv_options.get("encoding")
        )
        first = next(chunks, [])
    filled = [sum(not _blank(v) for v in values) for values in first]
    if not filled or filled[0] > 1:
        return None
    for number, count in enumerate(filled[1:], start=2):
        if count > 1:
            return number
    return None


def _formulas_without_values(path: Path, sheet_name: str | None) -> list[Problem]:
    """Cells holding a formula but no stored result (a file written by a script, never opened
    in Excel): openpyxl reads them as empty, and the row would run without them."""
    problems: list[Problem] = []
    if not _has_formulas(path):  # the usual case, seen without parsing the cells twice
        return problems
    with _Workbook(path, sheet_name) as values, _Workbook(path, sheet_name, formulas=True) as raw:
        headers: list[str] = []
        for number, (cached, written) in enumerate(zip(values, raw, strict=False), start=1):
            if number == 1:
                headers = [_header_text(v) for v in written]
            for index, (value, formula) in enumerate(zip(cached, written, strict=False)):
                if value is None and isinstance(formula, str) and formula.startswith("="):
                    problems.append(
                        Problem(
                            str(path),
                            f"cell {get_column_letter(index + 1)}{number} holds the formula "
                            f"{formula!r} with no stored result, so it reads as empty",
                            row=number,
                            column=headers[index] if index < len(headers) else None,
                            hint="open the file in Excel and save it, or write the value "
                            "instead of the formula",
                        )
                    )
    return problems


_FORMULA_TAG = re.compile(rb"<(?:\w+:)?f[\s>/]")


def _has_formulas(path: Path) -> bool:
    """Whether any worksheet of the workbook holds a formula (<f> element), read as raw XML."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not (name.startswith("xl/worksheets/") and name.endswith(".xml")):
                    continue
                with archive.open(name) as member:
                    tail = b""
                    while block := member.read(1 << 20):
                        if _FORMULA_TAG.search(tail + block):
                            return True
                        tail = block[-16:]
    except (OSError, zipfile.BadZipFile):
        return True  # let the cell-by-cell reading say what is wrong
    return False
