"""Output names: the template, its fields, and containment in the output folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from runhelp import (
    assert_exactly_once_ok,
    make_job,
    names_in,
    no_sleep,
    prompts,
    write_sheet,
)

from batchgen.errors import InputError
from batchgen.plan import validate
from batchgen.runner import RunOptions, run_batch
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
