"""Sheets as people save them: every problem said in one round, in their words, no cascades."""

from __future__ import annotations

from pathlib import Path

import pytest
from openpyxl import Workbook
from runhelp import make_job, manifest, no_sleep, prompts, write_sheet

from batchgen.errors import InputError
from batchgen.job import JobSpec
from batchgen.run.plan import validate
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimServer


def problems_of(job: JobSpec) -> list[str]:
    with pytest.raises(InputError) as caught:
        validate(job)
    return [str(problem) for problem in caught.value.problems]


async def test_a_semicolon_csv_from_excel_runs_with_every_column(
    tmp_path: Path, sim: SimServer
) -> None:
    sheet = tmp_path / "prompts.csv"
    sheet.write_bytes("prompt;steps;seed\r\nfeu, forêt;3;11\r\nmer;4;12\r\n".encode("cp1252"))
    job = make_job(tmp_path, sheet, [sim.url])

    summary = await run_batch(job, RunOptions(sleep=no_sleep))

    assert summary.exit_code == 0
    first, second = manifest(job.out_dir)
    assert first["payload"]["prompt"] == "feu, forêt" and first["payload"]["steps"] == 3
    assert first["seeds"] == [11] and second["seeds"] == [12]


def test_a_wrong_separator_is_said_once_not_as_a_missing_prompt_per_row(tmp_path: Path) -> None:
    sheet = tmp_path / "prompts.csv"
    sheet.write_text("prompt;steps\na;3\nb;4\n", encoding="utf-8")
    job = make_job(tmp_path, sheet, ["http://127.0.0.1:9"], delimiter=",")

    (problem,) = problems_of(job)

    assert "row 1: the header reads as one column ('prompt;steps')" in problem
    assert "the separator seems to be ';'" in problem and 'delimiter = ";"' in problem


def test_a_formula_without_a_stored_result_names_its_cell(tmp_path: Path) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["prompt", "steps"])
    sheet.append(["a lighthouse", 4])
    sheet.append(["a harbour", "=B2*2"])  # openpyxl stores no result: Excel never ran it
    book.save(tmp_path / "rows.xlsx")
    job = make_job(tmp_path, tmp_path / "rows.xlsx", ["http://127.0.0.1:9"])

    (problem,) = problems_of(job)

    assert "row 3, column 'steps'" in problem
    assert "cell B3 holds the formula '=B2*2' with no stored result" in problem
    assert "open the file in Excel and save it, or write the value" in problem


def test_a_title_row_above_the_header_is_recognised(tmp_path: Path) -> None:
    sheet = tmp_path / "rows.csv"
    sheet.write_text('"Night shoot, March",\nprompt,steps\na,3\nb,4\n', encoding="utf-8")
    job = make_job(tmp_path, sheet, ["http://127.0.0.1:9"])

    problems = problems_of(job)

    assert problems == [
        f"{sheet}, row 1: row 1 looks like a title; the header seems to be on row 2 "
        "(delete the rows above row 2, so that the header is row 1)"
    ]


def test_a_misspelt_prompt_header_is_one_problem_not_one_per_row(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "rows.csv", [{"Promt": f"p{i}", "steps": 3} for i in range(5)])
    job = make_job(tmp_path, sheet, ["http://127.0.0.1:9"])

    (problem,) = problems_of(job)

    assert "column 'Promt'" in problem and "did you mean 'prompt'?" in problem


async def test_sheet_values_and_names_on_the_servers_are_reported_in_one_round(
    tmp_path: Path, sim: SimServer
) -> None:
    rows = prompts(4)
    rows[0]["steps"] = "many"  # a value
    rows[1]["sampler_name"] = "Eulr a"  # a name only the server knows
    rows[2]["override_settings.sd_model_checkpoint"] = "no-such-model"
    rows[3]["cfg_scale"] = "high"
    rows[3]["override_settings.sd_model_checkpoint"] = "also-missing"  # same row as a bad value
    sheet = write_sheet(tmp_path / "rows.csv", rows)
    job = make_job(tmp_path, sheet, [sim.url])

    with pytest.raises(InputError) as caught:
        await run_batch(job, RunOptions(sleep=no_sleep))

    text = str(caught.value)
    assert "row 2, column 'steps'" in text and "row 5, column 'cfg_scale'" in text
    assert "Eulr a" in text and "no-such-model" in text and "also-missing" in text
    assert not (job.out_dir / "manifest.jsonl").exists()
