"""Reading CSV, TSV, XLSX and JSONL sheets from disk."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from batchgen.errors import ConfigError
from batchgen.rows.sheet import NO_HEADER, read_headers, read_rows, sheet_problems

PANDA = "一只在竹林里的大熊猫\uff0c水墨画 🐼🎋"  # \uff0c: a full-width comma
MULTILINE = "line one\nline two, with a comma <lora:ink:0.7>"


def test_csv_rows_are_numbered_as_the_spreadsheet_shows(tmp_path: Path) -> None:
    sheet = tmp_path / "s.csv"
    sheet.write_text(
        f'prompt,steps,notes\nfox,20,\n,,\n"{MULTILINE}",28,x\n\n{PANDA},,"  "\n',
        encoding="utf-8",
    )
    assert read_headers(sheet) == ["prompt", "steps", "notes"]
    rows = list(read_rows(sheet))
    assert [r.row for r in rows] == [2, 4, 6]
    assert rows[0].cells == {"prompt": "fox", "steps": "20"}  # blank cells absent
    assert rows[1].cells == {"prompt": MULTILINE, "steps": "28", "notes": "x"}
    assert rows[2].cells == {"prompt": PANDA}  # a whitespace-only cell is blank


def test_csv_text_is_exact_and_never_a_number(tmp_path: Path) -> None:
    sheet = tmp_path / "s.csv"
    sheet.write_text("prompt,seed,flag\n  007 ,00042,NA\n", encoding="utf-8")
    (row,) = read_rows(sheet)
    assert row.cells == {"prompt": "  007 ", "seed": "00042", "flag": "NA"}


def test_csv_with_excel_bom(tmp_path: Path) -> None:
    sheet = tmp_path / "s.csv"
    sheet.write_bytes("\ufeffprompt,steps\nfox,20\n".encode())
    assert read_headers(sheet) == ["prompt", "steps"]
    assert next(read_rows(sheet)).cells == {"prompt": "fox", "steps": "20"}


def test_tsv(tmp_path: Path) -> None:
    sheet = tmp_path / "s.tsv"
    sheet.write_text(f"prompt\tnegative_prompt\n{PANDA}\ta, b\n", encoding="utf-8")
    (row,) = read_rows(sheet)
    assert row.row == 2
    assert row.cells == {"prompt": PANDA, "negative_prompt": "a, b"}


def test_xlsx_written_by_pandas(tmp_path: Path) -> None:
    sheet = tmp_path / "s.xlsx"
    frame = pd.DataFrame(
        {"prompt": ["fox", None, PANDA], "steps": [28.0, None, 30.5], "hires": [True, None, False]}
    )
    frame.to_excel(sheet, index=False)
    assert read_headers(sheet) == ["prompt", "steps", "hires"]
    rows = list(read_rows(sheet))
    assert [r.row for r in rows] == [2, 4]
    assert rows[0].cells == {"prompt": "fox", "steps": 28, "hires": True}
    assert rows[1].cells == {"prompt": PANDA, "steps": 30.5, "hires": False}


def test_xlsx_named_sheet_and_missing_sheet(tmp_path: Path) -> None:
    sheet = tmp_path / "s.xlsx"
    book = openpyxl.Workbook()
    book.active.title = "Intro"  # type: ignore[union-attr]
    prompts = book.create_sheet("Prompts")
    prompts.append(["prompt", "width", None])
    prompts.append(["a", 512, None])
    prompts.append([None, None, "stray"])
    book.save(sheet)
    assert read_headers(sheet, "Prompts") == ["prompt", "width"]
    rows = list(read_rows(sheet, "Prompts"))
    assert rows[0].cells == {"prompt": "a", "width": 512}
    assert rows[1].row == 3
    assert rows[1].cells == {NO_HEADER: "stray"}
    with pytest.raises(ConfigError) as caught:
        read_headers(sheet, "Nope")
    assert "'Intro', 'Prompts'" in str(caught.value)
    assert str(sheet) in str(caught.value)


def test_duplicate_headers_are_kept_in_headers_first_cell_wins(tmp_path: Path) -> None:
    sheet = tmp_path / "s.csv"
    sheet.write_text("prompt,steps,prompt\na,1,b\n", encoding="utf-8")
    assert read_headers(sheet) == ["prompt", "steps", "prompt"]
    assert next(read_rows(sheet)).cells == {"prompt": "a", "steps": "1"}


def test_jsonl_rows_are_line_numbers(tmp_path: Path) -> None:
    sheet = tmp_path / "s.jsonl"
    lines = [
        json.dumps({"prompt": PANDA, "steps": 20}, ensure_ascii=False),
        "",
        json.dumps({"prompt": "b", "override_settings": {"sd_vae": "None"}, "seed": None}),
        json.dumps({"notes": ""}),
    ]
    sheet.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_headers(sheet) == ["prompt", "steps", "override_settings", "seed", "notes"]
    rows = list(read_rows(sheet))
    assert [r.row for r in rows] == [1, 3]
    assert rows[0].cells == {"prompt": PANDA, "steps": 20}
    assert rows[1].cells == {"prompt": "b", "override_settings": {"sd_vae": "None"}}


def test_every_bad_jsonl_line_is_reported_with_its_number(tmp_path: Path) -> None:
    sheet = tmp_path / "s.jsonl"
    lines = ['{"prompt": "a"}', "{oops", "[1]", '{"prompt": "b"}', '{"prompt": "c",}']
    sheet.write_text("\n".join(lines) + "\n", encoding="utf-8")

    problems = [str(p) for p in sheet_problems(sheet)]

    assert len(problems) == 3
    assert "line 2: not valid JSON" in problems[0]
    assert "line 3: each line must be a JSON object" in problems[1]
    assert "line 5: not valid JSON" in problems[2]
    assert [row.row for row in read_rows(sheet)] == [1, 4]  # the good lines, numbered as shown


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        read_headers(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match=r"'\.xls'"):
        read_headers(tmp_path / "old.xls")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt\ncafé\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not utf-8 text; set encoding"):
        list(read_rows(latin, encoding="utf-8"))
    fake = tmp_path / "fake.xlsx"
    fake.write_text("not a workbook", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"fake\.xlsx.*Excel"):
        read_headers(fake)


def test_empty_csv_has_no_headers_and_no_rows(tmp_path: Path) -> None:
    sheet = tmp_path / "empty.csv"
    sheet.write_text("", encoding="utf-8")
    assert read_headers(sheet) == []
    assert list(read_rows(sheet)) == []


def test_chunk_size_does_not_change_rows(tmp_path: Path) -> None:
    sheet = tmp_path / "s.csv"
    body = "".join(f"p{i},{i}\n" if i % 5 else ",\n" for i in range(1, 40))
    sheet.write_text("prompt,steps\n" + body, encoding="utf-8")
    small = [(r.row, dict(r.cells)) for r in read_rows(sheet, chunk_rows=3)]
    large = [(r.row, dict(r.cells)) for r in read_rows(sheet, chunk_rows=1000)]
    assert small == large
    assert small[0] == (2, {"prompt": "p1", "steps": "1"})
    assert all(row == int(cells["steps"]) + 1 for row, cells in small)


@pytest.mark.slow
def test_100k_row_csv_streams_in_bounded_memory(tmp_path: Path) -> None:
    sheet = tmp_path / "big.csv"
    with sheet.open("w", encoding="utf-8") as handle:
        handle.write("prompt,steps,notes\n")
        for i in range(100_000):
            handle.write(f"a photo of thing number {i} in a field,{20 + i % 10},note {i}\n")
    assert sheet.stat().st_size > 5_000_000
    tracemalloc.start()
    try:
        count = 0
        last = 0
        for row in read_rows(sheet, chunk_rows=2000):
            count += 1
            last = row.row
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (count, last) == (100_000, 100_001)
    assert peak < 4_000_000  # the whole file as rows would be tens of MB


@pytest.mark.parametrize(
    ("data", "name"),
    [
        ("prompt;steps;note\r\ncafé, crème;20;été\r\n".encode("cp1252"), "excel-de.csv"),
        ("\ufeffprompt;steps;note\r\ncafé, crème;20;été\r\n".encode(), "excel-utf8.csv"),
        ("prompt\tsteps\tnote\ncafé, crème\t20\tété\n".encode(), "tabs.csv"),
    ],
)
def test_csv_as_european_excel_and_other_tools_save_it(
    tmp_path: Path, data: bytes, name: str
) -> None:
    sheet = tmp_path / name
    sheet.write_bytes(data)

    assert read_headers(sheet) == ["prompt", "steps", "note"]
    (row,) = read_rows(sheet)
    assert row.row == 2
    assert row.cells == {"prompt": "café, crème", "steps": "20", "note": "été"}


def test_the_job_can_name_the_separator_and_encoding(tmp_path: Path) -> None:
    sheet = tmp_path / "pipes.csv"
    sheet.write_bytes("prompt|note\nmünze;x|a\n".encode("cp1252"))

    (row,) = read_rows(sheet, delimiter="|", encoding="cp1252")

    assert row.cells == {"prompt": "münze;x", "note": "a"}
