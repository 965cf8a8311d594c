"""`batchgen export` stopped midway: no half file under a final name, and a rerun finishes it."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from exporthelp import make_run

from batchgen.outputs.export import ExportOptions, export_runs


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"), 12)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def wipe(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.unlink()


class Stop(Exception):
    """Stands for whatever ends an export midway (Ctrl-C, a full disk, a lost connection)."""


def stop_after(images: int) -> object:
    def watch(done: int, total: int) -> None:
        if done >= images:
            raise Stop

    return watch


@pytest.mark.parametrize("fmt", ["imagefolder", "webdataset", "parquet"])
def test_an_export_stopped_midway_leaves_only_whole_files_and_a_rerun_finishes(
    run_dir: Path, tmp_path: Path, fmt: str
) -> None:
    dest = tmp_path / "ds"
    options = ExportOptions((run_dir,), fmt, str(dest), max_per_shard=3)  # type: ignore[arg-type]
    export_runs(options)
    whole = files(dest)
    wipe(dest)

    with pytest.raises(Stop):
        export_runs(options, stop_after(7))  # type: ignore[arg-type]

    stopped = files(dest)
    assert "README.md" not in stopped  # the card comes last: its absence says "not finished"
    assert "metadata.jsonl" not in stopped  # imagefolder: loaders see no images before it
    assert all(whole[name] == data for name, data in stopped.items() if not name.startswith("."))
    assert not [name for name in stopped if ".partial-" in name]
    assert 1 < len([n for n in stopped if not n.startswith(".")]) < len(whole) - 1

    summary = export_runs(options)

    assert files(dest) == whole
    assert summary.written.kept > 0


def test_a_shard_half_written_by_a_killed_export_is_hidden_and_replaced(
    run_dir: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "ds"
    options = ExportOptions((run_dir,), "webdataset", str(dest), max_per_shard=3)
    export_runs(options)
    whole = files(dest)
    # What kill -9 while writing shard 2 leaves: shards 0-1 whole, shard 2 half, under its
    # partial name (a dot name, which dataset loaders skip), nothing after it, no card.
    (dest / "000002.tar").rename(dest / ".partial-000002.tar")
    with (dest / ".partial-000002.tar").open("r+b") as half:
        half.truncate(1500)
    for path in [*dest.glob("00000[3-9].tar"), dest / "README.md"]:
        path.unlink()
    assert sorted(p.name for p in dest.glob("0*.tar")) == ["000000.tar", "000001.tar"]

    summary = export_runs(options)

    assert files(dest) == whole
    assert summary.written.kept == 2
    with tarfile.open(dest / "000002.tar") as tar:
        assert len(tar.getnames()) == 9  # 3 samples, image + json + txt each


def test_exporting_a_finished_export_again_rewrites_only_the_card(
    run_dir: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "ds"
    options = ExportOptions((run_dir,), "parquet", str(dest), max_per_shard=5)
    first = export_runs(options)
    before = files(dest)

    again = export_runs(options)

    assert files(dest) == before
    assert (again.written.written, again.written.kept) == (1, first.written.written - 1)


@pytest.mark.parametrize(
    ("fmt", "victim"), [("webdataset", "000001.tar"), ("parquet", "000001.parquet")]
)
def test_a_shard_cut_short_by_a_power_cut_is_written_again(
    run_dir: Path, tmp_path: Path, fmt: str, victim: str
) -> None:
    dest = tmp_path / "ds"
    options = ExportOptions((run_dir,), fmt, str(dest), max_per_shard=3)  # type: ignore[arg-type]
    export_runs(options)
    whole = files(dest)
    # Nothing is fsynced: after a power cut a renamed shard may be shorter than it was written.
    with (dest / victim).open("r+b") as shard:
        shard.truncate(len(whole[victim]) // 2)
    (dest / "README.md").unlink()

    summary = export_runs(options)

    assert files(dest) == whole
    assert summary.written.written == 2  # the shard and the card


def test_an_image_cut_short_is_copied_again(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    options = ExportOptions((run_dir,), "imagefolder", str(dest))
    export_runs(options)
    whole = files(dest)
    victim = sorted(dest.glob("*.png"))[3]
    victim.write_bytes(victim.read_bytes()[:100])

    export_runs(options)

    assert files(dest) == whole
