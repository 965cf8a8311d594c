"""`batchgen export`: each format loaded by the real libraries and checked against the manifest."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import webdataset
from exporthelp import make_run, ok_images
from PIL import Image

from batchgen.outputs.export import ExportOptions, export_runs
from batchgen.sim import SimConfig

ROWS = 16


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run: 16 rows, 1 or 2 images each, some rows failed (fault knob, one attempt)."""
    return make_run(tmp_path_factory.mktemp("run"), ROWS, SimConfig(fail_rate=0.25, fault_seed=5))


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def load(builder: str, data_dir: Path, tmp_path: Path) -> Any:
    from datasets import load_dataset

    return load_dataset(builder, data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"))


def expected_metadata(run_dir: Path) -> dict[str, dict[str, Any]]:
    """What each ok image's metadata must say, by its sha256, straight from the manifest."""
    expected = {}
    for path, (record, index) in ok_images(run_dir).items():
        data = (run_dir / path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        expected[record.image_sha256[index]] = {
            "text": record.payload["prompt"],
            "negative_prompt": record.payload.get("negative_prompt", ""),
            "seed": record.seeds[index],
            "model": record.model,
            "model_hash": record.model_hash,
            "sampler": record.payload["sampler_name"],
            "steps": record.payload["steps"],
            "cfg_scale": record.payload["cfg_scale"],
            "width": width,
            "height": height,
            "server_version": record.version,
            "row": record.row,
            "key": record.key,
            "split": record.metadata["split"],
            "note_run": record.metadata["run"],  # "run" is batchgen's own column: prefixed
            "run": run_dir.name,
            "image_sha256": hashlib.sha256(data).hexdigest(),
        }
    return expected


def assert_matches(run_dir: Path, found: list[tuple[bytes, dict[str, Any]]]) -> None:
    """Every ok image exactly once, its bytes as recorded, every metadata column as recorded."""
    expected = expected_metadata(run_dir)
    shas = Counter(hashlib.sha256(data).hexdigest() for data, _ in found)
    assert shas == Counter(list(expected)), "each ok image once, failed rows' images not at all"
    for data, metadata in found:
        want = expected[hashlib.sha256(data).hexdigest()]
        assert {name: metadata[name] for name in want} == want


def test_the_fixture_run_has_failed_rows_and_multi_image_rows(run_dir: Path) -> None:
    from batchgen.outputs.manifest import latest_records

    records = list(latest_records(run_dir).values())
    assert 0 < sum(not r.ok for r in records) < len(records)
    assert any(len(r.images) == 2 for r in records if r.ok)


def test_imagefolder_loads_with_datasets_splits_and_captions(run_dir: Path, tmp_path: Path) -> None:
    from datasets import Image as ImageFeature

    dest = tmp_path / "ds"
    export_runs(
        ExportOptions((run_dir,), "imagefolder", str(dest), captions=True, split_by="split")
    )

    loaded = load("imagefolder", dest, tmp_path)
    assert sorted(loaded) == ["test", "train", "validation"]
    found = []
    for split, table in loaded.items():
        assert isinstance(table[0]["image"], Image.Image)  # decoded by datasets
        for item in table.cast_column("image", ImageFeature(decode=False)):
            path = Path(item["image"]["path"])
            assert path.parent == dest / split and item["split"] == split
            caption = path.with_suffix(".txt").read_text(encoding="utf-8")
            assert caption == item["text"]
            found.append((path.read_bytes(), item))
    assert_matches(run_dir, found)


def test_webdataset_shards_load_with_webdataset_and_datasets(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    export_runs(ExportOptions((run_dir,), "webdataset", str(dest), max_per_shard=4))

    shards = sorted(dest.glob("*.tar"))
    images = len(ok_images(run_dir))
    assert [p.name for p in shards] == [f"{n:06d}.tar" for n in range(-(-images // 4))]
    found = []
    urls = [str(path) for path in shards]
    for sample in webdataset.WebDataset(urls, shardshuffle=False, empty_check=False):
        assert "." not in sample["__key__"]
        metadata = json.loads(sample["json"])
        assert sample["txt"].decode() == metadata["text"]
        found.append((sample["png"], metadata))
    assert_matches(run_dir, found)

    loaded = load("webdataset", dest, tmp_path)["train"]
    assert len(loaded) == images
    assert all(isinstance(item["png"], Image.Image) for item in loaded)
    assert sorted(item["json"]["image_sha256"] for item in loaded) == sorted(
        metadata["image_sha256"] for _, metadata in found
    )


def test_parquet_shards_load_with_pyarrow_and_datasets(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    export_runs(ExportOptions((run_dir,), "parquet", str(dest), max_shard_bytes=10_000))

    shards = sorted(dest.glob("*.parquet"))
    assert len(shards) > 1  # cut by size
    found = []
    for shard in shards:
        for item in pq.read_table(shard).to_pylist():
            image = item.pop("image")
            assert image["path"].endswith(".png")
            found.append((image["bytes"], item))
    assert_matches(run_dir, found)

    loaded = load("parquet", dest, tmp_path)["train"]
    assert len(loaded) == len(found)
    for item, (data, _) in zip(loaded, found, strict=True):
        assert isinstance(item["image"], Image.Image)
        assert item["image"].tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_the_card_counts_models_fingerprints_and_the_command(run_dir: Path, tmp_path: Path) -> None:
    from batchgen.outputs.manifest import latest_records

    dest = tmp_path / "ds"
    export_runs(ExportOptions((run_dir,), "parquet", str(dest)))

    card = (dest / "README.md").read_text(encoding="utf-8")
    records = list(latest_records(run_dir).values())
    failed = sum(not r.ok for r in records)
    assert f"| images exported | {len(ok_images(run_dir))} |" in card
    assert f"| rows exported | {len(records) - failed} |" in card
    assert f"| rows failed (not exported) | {failed} |" in card
    assert "| v1-5-pruned-emaonly | 6ce0161689 |" in card
    assert "| v1.10.1 |" in card
    assert "derived (a row without a seed got one fixed from base 0" in card
    job = json.loads((run_dir / "job.json").read_text())
    sheet = Path(job["payload_base"]) / "rows.csv"
    assert hashlib.sha256(sheet.read_bytes()).hexdigest()[:16] in card
    command = f"batchgen export {run_dir} --format parquet --to {dest} --max-per-shard 10000"
    assert command in card


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("fmt", ["imagefolder", "webdataset", "parquet"])
def test_exporting_twice_gives_byte_identical_files(
    run_dir: Path, tmp_path: Path, fmt: Any
) -> None:
    dest = tmp_path / "ds"
    options = ExportOptions((run_dir,), fmt, str(dest), split_by="split", max_per_shard=3)
    export_runs(options)
    first = files(dest)
    for path in dest.rglob("*"):
        if path.is_file():
            path.unlink()

    export_runs(options)

    assert files(dest) == first
    assert len(first) > 4


def test_prompts_seeds_and_schedule_the_server_reported_win_over_the_request(
    run_dir: Path, tmp_path: Path
) -> None:
    """The manifest records what the server used per image; export prefers it to the request."""
    import dataclasses
    import shutil

    from batchgen.outputs.manifest import MANIFEST, latest_records

    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    lines = []
    for record in latest_records(copy).values():
        count = len(record.images)
        used = dataclasses.replace(
            record,
            prompts=tuple(f"{record.payload['prompt']}, styled {i}" for i in range(count)),
            negative_prompts=tuple(f"bad hands {i}" for i in range(count)),
            subseeds=tuple(1000 + i for i in range(count)),
            infotexts=("x\nSteps: 3, Sampler: Euler a, Schedule type: Karras",) * count,
        )
        lines.append(used.to_line())
    (copy / MANIFEST).write_bytes(b"".join(lines))

    export_runs(ExportOptions((copy,), "parquet", str(tmp_path / "ds")))

    table = pq.read_table(tmp_path / "ds" / "000000.parquet").to_pylist()
    assert len(table) == len(ok_images(run_dir))
    for item in table:
        index = int(item["text"].rsplit(" ", 1)[1])
        assert item["text"].endswith(f", styled {index}")
        assert item["negative_prompt"] == f"bad hands {index}"
        assert item["subseed"] == 1000 + index
        assert item["scheduler"] == "Karras"


@pytest.mark.parametrize("row_group_bytes", [1_000, 32 << 20])
def test_parquet_images_mapped_or_read_give_the_same_file(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, row_group_bytes: int
) -> None:
    """Large images are mapped from their files, small ones read: the same bytes either way."""
    from batchgen.outputs.export import parquet

    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", row_group_bytes)
    written = {}
    for way, threshold in (("mapped", 0), ("read", 1 << 40)):
        monkeypatch.setattr(parquet, "MAPPED_IMAGE_BYTES", threshold)
        export_runs(ExportOptions((run_dir,), "parquet", str(tmp_path / way)))
        written[way] = {
            name: data for name, data in files(tmp_path / way).items() if ".parquet" in name
        }

    assert list(written["mapped"]) == ["000000.parquet"]
    assert written["mapped"] == written["read"]
    shard = tmp_path / "mapped" / "000000.parquet"
    groups = pq.ParquetFile(shard).metadata.num_row_groups
    assert (groups > 1) == (row_group_bytes == 1_000)
    exported = [item["image"]["bytes"] for item in pq.read_table(shard).to_pylist()]
    assert sorted(exported) == sorted((run_dir / path).read_bytes() for path in ok_images(run_dir))
