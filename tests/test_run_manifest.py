"""The manifest records what made each image: the server's prompts, seeds, subseeds, times."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from runhelp import make_job, manifest, no_sleep, simulators, write_sheet

from batchgen.outputs.manifest import ManifestRecord
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig


async def test_the_prompt_the_server_used_is_recorded_beside_the_one_sent(
    tmp_path: Path,
) -> None:
    rows = [
        {
            "prompt": "a lighthouse",
            "styles": "cinematic",
            "negative_prompt": "blur",
            "batch_size": 2,
            "steps": 4,
            "subseed": 77,
            "subseed_strength": 0.5,
        },
        {"prompt": "a harbour", "steps": 4},
    ]
    sheet = write_sheet(tmp_path / "rows.jsonl", rows)
    config = SimConfig(styles=("cinematic={prompt}, film grain, 35mm",))
    async with simulators(config) as (server,):
        job = make_job(tmp_path, sheet, [server.url])
        summary = await run_batch(job, RunOptions(sleep=no_sleep))

    assert summary.exit_code == 0
    styled, plain = manifest(job.out_dir)
    assert styled["payload"]["prompt"] == "a lighthouse"
    assert styled["prompts"] == ["a lighthouse, film grain, 35mm"] * 2
    assert styled["negative_prompts"] == ["blur"] * 2
    assert styled["subseeds"] == [77, 78]
    assert len(styled["infotexts"]) == 2
    assert styled["infotexts"][1].startswith(
        "a lighthouse, film grain, 35mm\nNegative prompt: blur"
    )
    assert f"Seed: {styled['seeds'][1]}" in styled["infotexts"][1]
    assert plain["prompts"] == ["a harbour"]
    for record in (styled, plain):
        started = datetime.fromisoformat(record["started"].replace("Z", "+00:00"))
        finished = datetime.fromisoformat(record["finished"].replace("Z", "+00:00"))
        assert record["started"].endswith("Z")
        assert abs(started.timestamp() - record["started_at"]) < 0.002
        assert abs(finished.timestamp() - record["finished_at"]) < 0.002


def test_a_record_written_before_these_fields_still_reads() -> None:
    old = b'{"row": 2, "key": "k", "status": "ok", "seeds": [1], "started_at": 1.5}\n'

    record = ManifestRecord.from_line(old)

    assert (record.prompts, record.subseeds, record.infotexts, record.started) == ((), (), (), "")
    assert ManifestRecord.from_json(record.to_json()) == record
