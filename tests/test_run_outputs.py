"""Output names: the template, its fields, and containment in the output folder."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from openpyxl import load_workbook
from runhelp import (
    assert_exactly_once_ok,
    make_job,
    manifest,
    names_in,
    no_sleep,
    prompts,
    write_sheet,
)

from batchgen.errors import InputError
from batchgen.run.plan import validate
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimServer

HOSTILE = [
    "../../escape",
    "/etc/passwd",
    "..\\..\\windows",
    "C:\\temp\\x",
    "a/b/c",
    " .. ",
    "~",
    "名前 with spaces",
]


async def test_no_template_or_cell_value_writes_outside_the_folder(
    tmp_path: Path, sim: SimServer
) -> None:
    rows = [{**row, "tag": tag} for row, tag in zip(prompts(len(HOSTILE)), HOSTILE, strict=True)]
    sheet = write_sheet(tmp_path / "rows.csv", rows)
    template = "../../{tag}/..\\{job}-{row}-{index}-{seed}"
    job = make_job(tmp_path, sheet, [sim.url], output={"filename": template})

    summary = await run_batch(job, RunOptions(sleep=no_sleep))

    assert summary.exit_code == 0
    records = assert_exactly_once_ok(job.out_dir, range(2, 2 + len(HOSTILE)))
    root = job.out_dir.resolve()
    for record in records:
        (relative,) = record["images"]
        assert relative.startswith("images/") and ".." not in relative.split("/")
        path = (job.out_dir / relative).resolve()
        assert path.is_relative_to(root / "images")
        assert len(Path(relative).parts) <= 3  # images/<tag>/<name>: a cell adds no folder
    assert names_in(tmp_path) == ["out", "rows.csv"]
    names = {r["metadata"]["tag"]: r["images"][0] for r in records}
    assert names["a/b/c"] == f"images/a_b_c/t-6-0-{records[4]['seeds'][0]}.png"
    assert names["名前 with spaces"].startswith("images/名前_with_spaces/")


async def test_a_template_without_row_or_index_still_names_each_image_once(
    tmp_path: Path, sim: SimServer
) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(3, batch_size=2))
    job = make_job(tmp_path, sheet, [sim.url], output={"filename": "same"})

    await run_batch(job, RunOptions(sleep=no_sleep))

    records = assert_exactly_once_ok(job.out_dir, [2, 3, 4])
    paths = [p for r in records for p in r["images"]]
    assert len(set(paths)) == 6
    assert len(list((job.out_dir / "images").iterdir())) == 6


@pytest.mark.parametrize(
    "template",
    ["{row.__class__}", "{tag[0]}", "{0}", "{}", "{row:{tag}}", "{prompt}", "{row"],
)
def test_templates_that_reach_into_objects_are_rejected(tmp_path: Path, template: str) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(1, tag="x"))
    job = make_job(tmp_path, sheet, ["http://127.0.0.1:9"], output={"filename": template})

    with pytest.raises(InputError, match=r"output\.filename"):
        validate(job)


async def test_long_cjk_titles_and_reserved_names_give_names_every_file_system_takes(
    tmp_path: Path, sim: SimServer
) -> None:
    long_title = "長い題名の物語" * 30  # 210 characters, 630 bytes in UTF-8
    titles = [long_title, long_title + "二", "CON", "nul.txt", "com1", 'a<b>c:"d|e?f*', "end. . "]
    rows = [{**row, "title": t} for row, t in zip(prompts(len(titles)), titles, strict=True)]
    sheet = write_sheet(tmp_path / "rows.csv", rows)
    job = make_job(tmp_path, sheet, [sim.url], output={"filename": "{title}"})

    summary = await run_batch(job, RunOptions(sleep=no_sleep))

    assert summary.exit_code == 0, summary.stopped_reason
    records = assert_exactly_once_ok(job.out_dir, range(2, 2 + len(titles)))
    names = [Path(r["images"][0]).name for r in records]
    assert len(set(names)) == len(names)  # the two long titles cut to the same start stay apart
    for name in names:
        assert len((name + ".tmp").encode()) <= 255
        stem = name.split(".")[0]
        assert stem.upper() not in {"CON", "NUL", "COM1"}
        assert not any(char in name for char in '<>:"|?*')
        assert not name.rsplit(".", 1)[0].endswith((".", " "))
    assert names[0].startswith("長い題名")


async def test_a_write_error_that_is_not_a_full_disk_fails_only_that_row(
    tmp_path: Path, sim: SimServer
) -> None:
    rows = [
        {**row, "shelf": shelf} for row, shelf in zip(prompts(3), ["a", "taken", "b"], strict=True)
    ]
    sheet = write_sheet(tmp_path / "rows.csv", rows)
    job = make_job(tmp_path, sheet, [sim.url], output={"filename": "{shelf}/{row}"})
    (job.out_dir / "images").mkdir(parents=True)
    (job.out_dir / "images" / "taken").write_text("a file where the row wants a folder")

    summary = await run_batch(job, RunOptions(sleep=no_sleep))

    assert summary.stopped_reason is None
    assert (summary.ok, summary.failed) == (2, 1)
    by_row = {r["row"]: r for r in manifest(job.out_dir)}
    assert by_row[3]["status"] == "failed"
    assert by_row[3]["images"] == []
    assert "cannot write images/taken/3.png" in by_row[3]["error"]
    assert by_row[2]["status"] == by_row[4]["status"] == "ok"


async def test_cells_that_look_like_formulas_stay_text_in_results(
    tmp_path: Path, sim: SimServer
) -> None:
    hostile = ['=HYPERLINK("http://evil","click")', "+1+2", "-3", "@SUM(A1)"]
    sheet = write_sheet(tmp_path / "rows.xlsx", prompts(4, note="x"))
    book = load_workbook(sheet)
    assert book.active is not None
    for row, text in enumerate(hostile, start=2):  # text cells, as Excel stores a quoted '=
        book.active.cell(row=row, column=3).value = text
        book.active.cell(row=row, column=3).data_type = "s"
    book.save(sheet)
    job = make_job(tmp_path, sheet, [sim.url])

    await run_batch(job, RunOptions(sleep=no_sleep))

    book = load_workbook(job.out_dir / "results.xlsx")
    sheet_out = book.active
    assert sheet_out is not None
    column = [cell.value for cell in sheet_out[1]].index("note") + 1
    cells = [sheet_out.cell(row=row, column=column) for row in range(2, 6)]
    assert [cell.value for cell in cells] == hostile
    assert {cell.data_type for cell in cells} == {"s"}, "a cell became a formula"
    with (job.out_dir / "results.csv").open(encoding="utf-8-sig", newline="") as handle:
        assert [row["note"] for row in csv.DictReader(handle)] == hostile


async def test_only_batchgens_own_tmp_files_are_cleaned(tmp_path: Path, sim: SimServer) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", prompts(1))
    job = make_job(tmp_path, sheet, [sim.url])
    user_files = [job.out_dir / "notes.tmp", job.out_dir / "drafts" / "scene.tmp"]
    own_leftovers = [job.out_dir / "images" / "000002-00-1.png.tmp", job.out_dir / "job.json.tmp"]
    for path in [*user_files, *own_leftovers]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")

    await run_batch(job, RunOptions(sleep=no_sleep))

    assert all(path.read_text() == "half" for path in user_files)
    assert not any(path.exists() for path in own_leftovers)


async def test_names_that_are_one_file_on_macos_or_windows_are_kept_apart(
    tmp_path: Path, sim: SimServer
) -> None:
    titles = ["Cat", "cat", "caf\u00e9", "cafe\u0301"]  # case; composed and decomposed é
    rows = [{**row, "title": t} for row, t in zip(prompts(4), titles, strict=True)]
    sheet = write_sheet(tmp_path / "rows.csv", rows)
    job = make_job(tmp_path, sheet, [sim.url], output={"filename": "{title}"})

    await run_batch(job, RunOptions(sleep=no_sleep))

    names = [r["images"][0] for r in assert_exactly_once_ok(job.out_dir, range(2, 6))]
    assert names == ["images/Cat.png", "images/cat~1.png", "images/café.png", "images/café~1.png"]
