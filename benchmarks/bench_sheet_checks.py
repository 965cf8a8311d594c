"""What the sheet checks cost beside reading the sheet once, measured in the same run.

Run: python benchmarks/bench_sheet_checks.py [--rows 20000]
XLSX: the check for formulas without a stored result (a raw-XML look for <f>, then, only when
there is one, a second cell-by-cell pass). CSV: detecting the encoding and separator (one pass of
UTF-8 decoding, cached per file version). Each is printed as a ratio to one full read_rows.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from openpyxl import Workbook

from batchgen.rows.csvformat import _detect, csv_format
from batchgen.rows.sheet import read_rows, sheet_problems


def seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def write_xlsx(path: Path, rows: int, formula: bool) -> None:
    book = Workbook(write_only=True)
    sheet = book.create_sheet()
    sheet.append(["prompt", "steps", "seed", "notes"])
    for i in range(rows):
        sheet.append([f"a lighthouse, study {i}", 20, i, "note"])
    if formula:
        sheet.append(["one formula", "=B2*2", 1, "note"])
    book.save(path)


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["prompt", "steps", "seed", "notes"])
        for i in range(rows):
            writer.writerow([f"a lighthouse, study {i}", 20, i, "note"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    rows = parser.parse_args().rows
    with tempfile.TemporaryDirectory() as folder:
        for formula in (False, True):
            path = Path(folder) / f"sheet-{formula}.xlsx"
            write_xlsx(path, rows, formula)
            read = seconds(lambda p=path: sum(1 for _ in read_rows(p)))
            check = seconds(lambda p=path: sheet_problems(p))
            what = "with a formula" if formula else "no formulas"
            print(f"xlsx, {rows:,} rows, {what}: check / read = {check / read:.3f}")
        path = Path(folder) / "sheet.csv"
        write_csv(path, rows)
        _detect.cache_clear()
        detect = seconds(lambda: csv_format(path, "csv"))
        read = seconds(lambda: sum(1 for _ in read_rows(path)))  # detection cached by now
        print(f"csv, {rows:,} rows: format detection / read = {detect / read:.3f}")


if __name__ == "__main__":
    main()
