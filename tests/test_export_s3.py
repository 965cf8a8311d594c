"""`batchgen export --to s3://...` against a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
import s3fs
from click.testing import CliRunner
from exporthelp import make_run, ok_images
from moto.server import ThreadedMotoServer

from batchgen.cli import cli
from batchgen.outputs.export import ExportOptions, export_runs

BUCKET = "datasets"
SECRET = "fake-secret-Zq81vX"  # moto accepts any key; the tests hunt for this one


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free 127.0.0.1 port, found through the standard AWS_* variables."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "fake-key-id")
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", url)
        env.delenv("AWS_PROFILE", raising=False)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield url
    server.stop()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"), 6)


def objects(prefix: str) -> dict[str, bytes]:
    """Every object under s3://BUCKET/prefix, read back with a fresh client."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    base = f"{BUCKET}/{prefix}/"
    return {path[len(base) :]: fs.cat_file(path) for path in fs.find(base)}


def local_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("fmt", ["imagefolder", "webdataset", "parquet"])
def test_an_s3_export_holds_the_same_bytes_as_a_local_one(
    s3_endpoint: str, run_dir: Path, tmp_path: Path, fmt: Any
) -> None:
    url = f"s3://{BUCKET}/{fmt}-export"
    result = CliRunner().invoke(
        cli,
        ["export", str(run_dir), "--format", fmt, "--to", url, "--max-per-shard", "4"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    export_runs(ExportOptions((run_dir,), fmt, str(tmp_path / "ds"), max_per_shard=4))

    remote = objects(f"{fmt}-export")
    local = local_files(tmp_path / "ds")
    card = remote.pop("README.md").decode()
    local_card = local.pop("README.md").decode()
    assert remote == local
    assert card == local_card.replace(str(tmp_path / "ds"), url)
    assert SECRET not in result.output + card


def test_parquet_reads_back_from_s3_with_pyarrow(
    s3_endpoint: str, run_dir: Path, tmp_path: Path
) -> None:
    export_runs(ExportOptions((run_dir,), "parquet", f"s3://{BUCKET}/read-back"))

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    table = pq.read_table(f"{BUCKET}/read-back/000000.parquet", filesystem=fs)
    images = {item["image_sha256"]: item["image"]["bytes"] for item in table.to_pylist()}
    expected = {
        record.image_sha256[index]: (run_dir / path).read_bytes()
        for path, (record, index) in ok_images(run_dir).items()
    }
    assert images == expected


def test_an_s3_export_stopped_midway_shows_only_whole_objects_and_a_rerun_finishes(
    s3_endpoint: str, run_dir: Path
) -> None:
    url = f"s3://{BUCKET}/resumed"
    options = ExportOptions((run_dir,), "webdataset", url, max_per_shard=2)

    def stop(done: int, total: int) -> None:
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_runs(options, stop)
    stopped = objects("resumed")
    summary = export_runs(options)

    finished = objects("resumed")
    assert "README.md" not in stopped and "README.md" in finished
    assert sorted(name for name in stopped if name.endswith(".tar")) == ["000000.tar", "000001.tar"]
    assert all(finished[name] == data for name, data in stopped.items())
    assert summary.written.kept == 2


def test_a_missing_bucket_exits_2_without_the_secret(s3_endpoint: str, run_dir: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["export", str(run_dir), "--format", "parquet", "--to", "s3://no-such-bucket/x"],
        catch_exceptions=False,
    )

    assert result.exit_code == 2
    assert "--to s3://no-such-bucket/x: cannot write there" in result.output
    assert SECRET not in result.output
