"""Resuming a folder: which rows are sent again, seeds, --retry-failed, --fresh, provenance."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

import pytest
from runhelp import no_sleep

from batchgen.job import load_job
from batchgen.outputs.manifest import MANIFEST, latest_records
from batchgen.records import RunSummary
from batchgen.rows.payload import derive_seed
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig, SimServer

CONTRACT = {"row", "status", "images", "seeds", "endpoint", "attempts", "error", "model"}
CONTRACT |= {"model_hash", "payload", "vae", "version", "started_at", "duration_s", "key"}


def write_sheet(folder: Path, rows: list[dict[str, object]]) -> Path:
    path = folder / "sheet.csv"
    headers = ["prompt", "seed", "batch_size", "notes"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, headers)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def write_job(folder: Path, url: str, *, attempts: int = 5, seed: str = "") -> Path:
    path = folder / "job.toml"
    path.write_text(
        f'name = "t"\nsheet = "sheet.csv"\n\n[[endpoints]]\nurl = "{url}"\n\n'
        f'[retry]\nattempts = {attempts}\n\n[output]\ndir = "out"\n\n[seed]\n{seed}\n',
        encoding="utf-8",
    )
    return path


async def run(job: Path, **options: bool) -> RunSummary:
    return await run_batch(load_job(job), RunOptions(sleep=no_sleep, **options))


def sent_prompts(sim: SimServer, since: int = 0) -> list[str]:
    return [str(body["prompt"]) for body in sim.stats.history[since:]]


def folders(parent: Path, prefix: str) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.name.startswith(prefix))


def rows_of(*prompts: str) -> list[dict[str, object]]:
    return [{"prompt": prompt} for prompt in prompts]


async def test_a_rerun_sends_nothing_that_is_done(sim: SimServer, tmp_path: Path) -> None:
    write_sheet(tmp_path, rows_of("a", "b", "c"))
    job = write_job(tmp_path, sim.url)
    first = await run(job)
    assert first.exit_code == 0 and first.ok == 3
    assert first.plan.describe() == "3 rows: 0 done, 0 failed to retry, 3 to go"
    second = await run(job)
    assert second.plan.describe() == "3 rows: 3 done, 0 failed to retry, 0 to go"
    assert second.exit_code == 0 and second.ok == 0
    assert len(sim.stats.history) == 3


async def test_edited_inserted_and_reordered_rows(sim: SimServer, tmp_path: Path) -> None:
    write_sheet(tmp_path, rows_of("a", "b", "c", "d"))
    job = write_job(tmp_path, sim.url)
    await run(job)
    seeds = {r.payload["prompt"]: r.seeds for r in latest_records(tmp_path / "out").values()}
    write_sheet(tmp_path, rows_of("d", "new", "b", "a, edited", "c"))
    summary = await run(job)
    assert summary.plan.describe() == "5 rows: 3 done, 0 failed to retry, 2 to go"
    assert sorted(sent_prompts(sim, 4)) == ["a, edited", "new"]
    latest = {r.payload["prompt"]: r for r in latest_records(tmp_path / "out").values()}
    assert latest["b"].seeds == seeds["b"], "a moved row keeps its seed and its images"
    assert latest["new"].row == 3 and latest["a, edited"].row == 5
    results = (tmp_path / "out" / "results.csv").read_text(encoding="utf-8-sig")
    assert results.count(",ok,") == 5


async def test_identical_rows_stay_distinct(sim: SimServer, tmp_path: Path) -> None:
    write_sheet(tmp_path, rows_of("twin", "twin", "twin"))
    job = write_job(tmp_path, sim.url)
    await run(job)
    records = list(latest_records(tmp_path / "out").values())
    assert len({r.key for r in records}) == 3
    assert len({r.payload["seed"] for r in records}) == 3
    assert len({image for r in records for image in r.images}) == 3
    write_sheet(tmp_path, rows_of("twin", "twin"))  # one twin gone: the others are done
    summary = await run(job)
    assert summary.plan.describe() == "2 rows: 2 done, 0 failed to retry, 0 to go"
    assert len(sim.stats.history) == 3


async def test_retry_failed_sends_only_the_failed_rows(sim: SimServer, tmp_path: Path) -> None:
    await sim.set_config(dataclasses.replace(sim.config, fail_rate=0.5, fault_seed=4))
    write_sheet(tmp_path, rows_of(*"abcdefgh"))
    job = write_job(tmp_path, sim.url, attempts=1)
    first = await run(job)
    failed = sorted(
        r.payload["prompt"]
        for r in latest_records(tmp_path / "out").values()
        if r.status == "failed"
    )
    assert failed and first.failed == len(failed) and first.exit_code == 1
    await sim.set_config(dataclasses.replace(sim.config, fail_rate=0.0))
    write_sheet(tmp_path, rows_of(*"abcdefgh", "new"))
    before = len(sim.stats.history)
    again = await run(job, retry_failed=True)
    assert sorted(sent_prompts(sim, before)) == failed
    assert again.plan.describe() == (
        f"9 rows: {8 - len(failed)} done, {len(failed)} failed to retry, 0 to go, 1 left for later"
    )
    assert again.ok == len(failed)
    before = len(sim.stats.history)
    last = await run(job)
    assert sent_prompts(sim, before) == ["new"] and last.exit_code == 0


async def test_fresh_moves_the_old_folder_aside(
    sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_sheet(tmp_path, rows_of("a", "b"))
    job = write_job(tmp_path, sim.url)
    await run(job)
    old_images = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    with caplog.at_level(logging.WARNING, logger="batchgen"):
        summary = await run(job, fresh=True)
    assert summary.plan.describe() == "2 rows: 0 done, 0 failed to retry, 2 to go"
    assert len(sim.stats.history) == 4
    aside = folders(tmp_path, "out.")
    assert len(aside) == 1
    assert sorted(p.name for p in (aside[0] / "images").iterdir()) == old_images
    assert len(latest_records(aside[0])) == 2
    assert f"moved the earlier output folder to {aside[0]}" in caplog.text
    await run(job, fresh=True)  # twice in the same second: a second copy, not nested
    assert len(folders(tmp_path, "out.")) == 2


async def test_fresh_with_an_invalid_sheet_leaves_the_folder(
    sim: SimServer, tmp_path: Path
) -> None:
    write_sheet(tmp_path, rows_of("a"))
    job = write_job(tmp_path, sim.url)
    await run(job)
    write_sheet(tmp_path, [{"prompt": "a", "seed": "not a number"}])
    from batchgen.errors import InputError

    with pytest.raises(InputError):
        await run(job, fresh=True)
    assert [p.name for p in folders(tmp_path, "out")] == ["out"]
    assert len(latest_records(tmp_path / "out")) == 1


async def test_seeds_derived_from_the_base_and_the_row(sim: SimServer, tmp_path: Path) -> None:
    write_sheet(
        tmp_path,
        [
            {"prompt": "blank"},
            {"prompt": "minus one", "seed": -1},
            {"prompt": "fixed", "seed": 1234},
            {"prompt": "batch", "batch_size": 2},
        ],
    )
    job = write_job(tmp_path, sim.url, seed="base = 99")
    await run(job)
    records = {r.payload["prompt"]: r for r in latest_records(tmp_path / "out").values()}
    for prompt in ("blank", "minus one", "batch"):
        record = records[prompt]
        assert record.payload["seed"] == derive_seed(99, record.key)
    assert records["fixed"].payload["seed"] == 1234
    base = records["batch"].payload["seed"]
    assert records["batch"].seeds == (base, base + 1), "the real seeds, from info.all_seeds"
    sent = {body["prompt"]: body["seed"] for body in sim.stats.history}
    assert sent == {p: r.payload["seed"] for p, r in records.items()}


async def test_random_mode_sends_minus_one_and_records_the_real_seed(
    sim: SimServer, tmp_path: Path
) -> None:
    write_sheet(tmp_path, rows_of("a", "b"))
    job = write_job(tmp_path, sim.url, seed='mode = "random"')
    await run(job)
    assert [body["seed"] for body in sim.stats.history] == [-1, -1]
    for record in latest_records(tmp_path / "out").values():
        assert record.payload["seed"] == -1
        assert record.seeds and record.seeds[0] >= 0


async def test_manifest_fields_and_no_credentials_anywhere(tmp_path: Path) -> None:
    secret = "s3cret-pw"
    async with SimServer(SimConfig(api_auth=f"alice:{secret}", version="v1.10.1")) as server:
        url = server.url.replace("http://", f"http://alice:{secret}@")
        write_sheet(tmp_path, rows_of("a", "b"))
        job = write_job(tmp_path, url)
        with_header = job.read_text(encoding="utf-8").replace(
            f'url = "{url}"', f'url = "{url}"\nheaders = {{ "X-Api-Key" = "{secret}-key" }}'
        )
        job.write_text(with_header, encoding="utf-8")
        summary = await run(job)
    assert summary.exit_code == 0
    out = tmp_path / "out"
    for line in (out / MANIFEST).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert set(record) >= CONTRACT
        assert record["status"] == "ok" and record["error"] is None and record["attempts"] == 1
        assert record["endpoint"] == server.url
        assert record["model"] and record["model_hash"] and record["version"] == "v1.10.1"
        assert record["duration_s"] >= 0 and record["started_at"] > 0
    saved = json.loads((out / "job.json").read_text(encoding="utf-8"))
    assert saved["seed"] == {"mode": "derived", "base": 0}
    assert saved["retry"]["attempts"] == 5, "defaults are filled in"
    assert saved["endpoints"][0]["url"] == server.url
    assert saved["endpoints"][0]["headers"] == ["X-Api-Key"], "the header's name, not its value"
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_fresh_and_retry_failed_together_are_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from batchgen.cli import cli

    write_sheet(tmp_path, rows_of("a"))
    result = CliRunner().invoke(
        cli, ["run", str(tmp_path / "sheet.csv"), "--fresh", "--retry-failed"]
    )
    assert result.exit_code == 2
    assert "--fresh starts an empty folder" in result.output
    assert not (tmp_path / "out").exists()


async def test_a_crashed_folder_resumes_torn_line_tmp_and_orphan(
    sim: SimServer, tmp_path: Path
) -> None:
    write_sheet(tmp_path, rows_of("a", "b", "c"))
    job = write_job(tmp_path, sim.url)
    await run(job)
    out = tmp_path / "out"
    manifest = out / MANIFEST
    lines = manifest.read_bytes().splitlines(keepends=True)
    last = json.loads(lines[-1])
    # What a kill during the last row's write leaves: its image (now an orphan), half its
    # line, and another image's temporary file.
    manifest.write_bytes(b"".join(lines[:-1]) + lines[-1][:50])
    (out / "images" / "000009-00-1.png.tmp").write_bytes(b"\x89PNG half")
    summary = await run(job)
    assert summary.plan.describe() == "3 rows: 2 done, 0 failed to retry, 1 to go"
    assert sent_prompts(sim, 3) == [last["payload"]["prompt"]]
    records = latest_records(out)
    assert len(records) == 3 and all(r.ok for r in records.values())
    assert records[last["key"]].images == tuple(last["images"]), "the orphan's name is reused"
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        Path(image).name for r in records.values() for image in r.images
    )
    assert all(line.endswith(b"\n") for line in manifest.read_bytes().splitlines(keepends=True))
