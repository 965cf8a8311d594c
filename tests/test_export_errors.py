"""`batchgen export` refuses bad input with a clear message, exit 2, and nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from exporthelp import make_run, rows

from batchgen.cli import cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"), 4)


def export(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["export", *map(str, args)], catch_exceptions=False)


def test_a_good_export_exits_0_with_a_summary(run_dir: Path, tmp_path: Path) -> None:
    result = export(run_dir, "--format", "webdataset", "--to", tmp_path / "ds")

    assert result.exit_code == 0, result.output
    assert "exported 6 images from 1 run(s) as webdataset" in result.output
    assert "rows: 4 exported, 0 failed, 0 left out" in result.output


def test_a_missing_run_folder_exits_2(run_dir: Path, tmp_path: Path) -> None:
    result = export(run_dir, tmp_path / "nope", "--format", "parquet", "--to", tmp_path / "ds")

    assert result.exit_code == 2
    assert f"{tmp_path / 'nope'}: no such run folder" in result.output
    assert not (tmp_path / "ds").exists()


def test_a_manifest_whose_images_are_gone_exits_2_naming_them(
    run_dir: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(run_dir, tmp_path / "copy"))
    gone = sorted((copy / "images").iterdir())[1]
    gone.unlink()

    result = export(copy, "--format", "imagefolder", "--to", tmp_path / "ds")

    assert result.exit_code == 2
    assert "1 image(s) named in a manifest are missing" in result.output
    assert f"{copy}, row 3: images/{gone.name}" in result.output
    assert not (tmp_path / "ds").exists()


def test_an_unwritable_dest_exits_2(run_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    result = export(run_dir, "--format", "parquet", "--to", blocker / "ds")

    assert result.exit_code == 2
    assert f"--to {blocker / 'ds'}: cannot write there" in result.output
    assert blocker.read_text() == "not a folder"


def test_a_dest_holding_other_files_exits_2_and_is_left_alone(
    run_dir: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "ds"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")

    result = export(run_dir, "--format", "webdataset", "--to", dest)

    assert result.exit_code == 2
    assert "already holds 1 file(s) of something else" in result.output
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]


def test_other_settings_into_an_earlier_export_exit_2(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    assert export(run_dir, "--format", "parquet", "--to", dest).exit_code == 0
    before = sorted(p.name for p in dest.iterdir())

    result = export(run_dir, "--format", "parquet", "--to", dest, "--max-per-shard", "2")

    assert result.exit_code == 2
    assert sorted(p.name for p in dest.iterdir()) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split-by", "nope"], "--split-by 'nope': no exported row has that note column"),
        (["--format", "parquet", "--captions"], "--captions is for imagefolder"),
        (["--max-shard-size", "lots"], "--max-shard-size 'lots': write a size like 500MB"),
    ],
)
def test_bad_options_exit_2(run_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    fmt = [] if "--format" in args else ["--format", "webdataset"]
    result = export(run_dir, *fmt, *args, "--to", tmp_path / "ds")

    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "ds").exists()


def test_a_split_value_that_is_a_path_exits_2_naming_row_and_column(tmp_path: Path) -> None:
    hostile = rows(3)
    hostile[1]["split"] = "../../escape"
    run = make_run(tmp_path / "run", 3, sheet_rows=hostile)

    result = export(run, "--format", "imagefolder", "--split-by", "split", "--to", tmp_path / "ds")

    assert result.exit_code == 2
    assert "row 3, column 'split': split '../../escape' is not a plain name" in result.output
    assert not (tmp_path / "ds").exists() and not (tmp_path / "escape").exists()


def test_a_password_in_the_dest_url_is_never_shown(run_dir: Path) -> None:
    result = export(run_dir, "--format", "parquet", "--to", "http://user:hunter2@127.0.0.1:9/ds")

    assert result.exit_code == 2
    assert "--to http://127.0.0.1:9/ds: cannot write there" in result.output
    assert "hunter2" not in result.output


def test_runs_without_an_ok_row_exit_2(tmp_path: Path) -> None:
    from batchgen.sim import SimConfig

    run = make_run(tmp_path / "run", 2, SimConfig(fail_rate=1.0))

    result = export(run, "--format", "webdataset", "--to", tmp_path / "ds")

    assert result.exit_code == 2
    assert "nothing to export: no row of" in result.output
    assert not (tmp_path / "ds").exists()
