"""A ComfyUI run killed with SIGKILL, again and again: no prompt is ever queued twice.

The simulator runs in its own process and outlives every killed run; its `posted` list is every
prompt id it queued, across runs.
"""

from __future__ import annotations

import collections
import random
import time
from pathlib import Path

from test_crash import SimProcess, finish, lines_of, start_run

from batchgen.outputs.manifest import latest_records


def write_job(folder: Path, url: str, rows: int) -> Path:
    lines = ["prompt,steps"] + [f'"a study of subject {i}",20' for i in range(rows)]
    (folder / "sheet.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = folder / "job.toml"
    path.write_text(
        f'name = "crash"\nsheet = "sheet.csv"\nin_flight = 2\n\n'
        f'[[endpoints]]\nurl = "{url}"\nbackend = "comfy"\n\n'
        '[timeout]\nconnect = 2\nrequest = 30\n\n[output]\ndir = "out"\n',
        encoding="utf-8",
    )
    return path


def test_kill_9_then_resume_never_queues_a_prompt_twice(tmp_path: Path) -> None:
    sim = SimProcess({"flavor": "comfy", "ms_per_step": 10})  # 0.2 s per image
    try:
        rows = 10
        job = write_job(tmp_path, sim.url, rows)
        out = tmp_path / "out"
        rng = random.Random(16)
        kills = 0
        for _ in range(3):
            before = len(sim.stats()["posted"])
            proc = start_run(job)
            # Kill once this run has queued a prompt or two: some finished, some still queued.
            deadline = time.monotonic() + 60
            while len(sim.stats()["posted"]) < before + 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                proc.kill()
                kills += 1
            finish(proc)
        code, err = finish(start_run(job))
        assert code == 0, err
        assert kills >= 2
        posted = sim.stats()["posted"]
        repeated = [pid for pid, count in collections.Counter(posted).items() if count > 1]
        assert not repeated, f"prompts queued twice: {repeated}"
        assert len(posted) == rows
        records = lines_of(out)
        ok = collections.Counter(r["key"] for r in records if r["status"] == "ok")
        assert len(ok) == rows and set(ok.values()) == {1}
        latest = latest_records(out)
        assert {record.prompt_id for record in latest.values()} == set(posted)
        collected = sim.stats()["requests"].get("/view", 0)
        assert collected >= rows
        seen = sim.stats()["posted"]
        code, err = finish(start_run(job))  # all done: nothing is sent
        assert code == 0, err
        assert sim.stats()["posted"] == seen
    finally:
        sim.stop()
