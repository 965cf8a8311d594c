"""Real `batchgen run` processes killed (SIGKILL) or interrupted (SIGINT), simulators apart.

The simulators run in their own processes, so they outlive every killed run and count what they
were sent across runs: that is how these tests see that no finished row is ever sent again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from batchgen.outputs.manifest import MANIFEST, latest_records

_URL = re.compile(r"serving at (http://\S+)")


class SimProcess:
    """`python -m batchgen.sim --port 0` in its own process; stats read over HTTP."""

    def __init__(self, settings: dict[str, Any]) -> None:
        args = [sys.executable, "-m", "batchgen.sim", "--port", "0"]
        for key, value in settings.items():
            args += ["--set", f"{key}={value}"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = _URL.search(line)
        assert match, f"the simulator did not start: {line!r}"
        self.url = match.group(1)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_sim/stats", timeout=10) as response:
            data: dict[str, Any] = json.load(response)
            return data

    def received_seeds(self) -> list[int]:
        """The seed of every generation request received, in arrival order."""
        return [int(item["seed"]) for item in self.stats()["received"]]

    def alive(self) -> bool:
        try:
            self.stats()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def sims(request: pytest.FixtureRequest) -> Iterator[list[SimProcess]]:
    started: list[SimProcess] = []
    try:
        for settings in request.param:
            started.append(SimProcess(settings))
        yield started
    finally:
        for sim in started:
            sim.stop()


def write_job(folder: Path, urls: list[str], rows: int, *, request_s: float = 3.0) -> Path:
    lines = ["prompt,steps,batch_size,notes"]
    for index in range(rows):
        batch = 2 if index % 5 == 0 else ""
        lines.append(
            f'"a study of subject {index % 17}, variant {index // 17}",20,{batch},n{index}'
        )
    lines.append(lines[1])  # an identical twin: still a row of its own
    (folder / "sheet.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    endpoints = "".join(f'[[endpoints]]\nurl = "{url}"\n\n' for url in urls)
    job = f"""name = "crash"
sheet = "sheet.csv"
check = false
in_flight = 2
wait_all_down = 30

{endpoints}[retry]
attempts = 8
backoff_initial = 0.05
backoff_max = 0.2

[timeout]
connect = 2
request = {request_s}

[output]
dir = "out"

[seed]
base = 7
"""
    path = folder / "job.toml"
    path.write_text(job, encoding="utf-8")
    return path


def start_run(job: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BATCHGEN_RAISE_ERRORS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", "run", str(job), *extra],
        cwd=job.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode("utf-8", "replace")


def ok_request_seeds(out: Path) -> set[int]:
    """The request seed of every row whose latest record is ok."""
    return {int(record.payload["seed"]) for record in latest_records(out).values() if record.ok}


def received(sims: list[SimProcess]) -> list[list[int]]:
    return [sim.received_seeds() if sim.alive() else [] for sim in sims]


@contextlib.contextmanager
def no_ok_row_sent_again(out: Path, sims: list[SimProcess]) -> Iterator[None]:
    """Assert that no row already ok when the block starts is sent again within it."""
    done_before = ok_request_seeds(out)
    seen_before = received(sims)
    yield
    for before, after in zip(seen_before, received(sims), strict=True):
        sent_again = done_before & set(after[len(before) :])
        assert not sent_again, f"rows already ok were sent again: {sorted(sent_again)}"


def lines_of(out: Path) -> list[dict[str, Any]]:
    path = out / MANIFEST
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines(keepends=True)]


def assert_exactly_once(out: Path, rows: int) -> None:
    """Each row: one ok record, its images on disk as recorded; nothing half-written or stray."""
    records = lines_of(out)
    ok_lines = collections.Counter(r["key"] for r in records if r["status"] == "ok")
    assert len(ok_lines) == rows
    assert set(ok_lines.values()) == {1}, "a row was recorded ok twice"
    latest = latest_records(out)
    assert all(record.ok for record in latest.values())
    referenced: set[str] = set()
    for record in latest.values():
        expected = int(record.payload["seed"])
        assert record.seeds == tuple(expected + i for i in range(len(record.images)))
        for path, seed, digest in zip(
            record.images, record.seeds, record.image_sha256, strict=True
        ):
            data = (out / path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest
            with Image.open(out / path) as image:
                assert f"Seed: {seed}," in str(image.info["parameters"])
            referenced.add(path)
    on_disk = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    assert on_disk == referenced, "an image file that no record owns"
    assert not list(out.rglob("*.tmp"))


# 20 steps: 0.16 s per image. Faults: 500s, dropped connections after the work, hangs (the
# client times out), and one server that dies for good part-way through.
FAULTY = [
    {"ms_per_step": 8, "fail_rate": 0.06, "hang_rate": 0.04, "fault_seed": 7},  # early ones
    {"ms_per_step": 8, "drop_rate": 0.08, "fault_seed": 3},
    {"ms_per_step": 8, "fail_rate": 0.05, "fault_seed": 3, "die_after": 25},
]


@pytest.mark.slow
@pytest.mark.parametrize("sims", [FAULTY], indirect=True)
def test_kill_9_at_random_points_then_finish_exactly_once(
    sims: list[SimProcess], tmp_path: Path
) -> None:
    rows = 120
    job = write_job(tmp_path, [sim.url for sim in sims], rows, request_s=1.5)
    out = tmp_path / "out"
    rng = random.Random(20261125)
    kills = 0
    progress: list[int] = []  # rows ok after each kill
    stale_tmp = 0
    for _ in range(14):
        with no_ok_row_sent_again(out, sims):
            proc = start_run(job)
            _kill_point(rng, out, proc)
            if proc.poll() is None:
                proc.kill()
                kills += 1
            finish(proc)
        progress.append(len(ok_request_seeds(out)))
        stale_tmp += len(list(out.rglob("*.tmp")))
    assert kills >= 10
    mid_run = [done for done in progress if 0 < done < rows + 1]
    assert len(set(mid_run)) >= 5, f"too few kills landed while rows were being sent: {progress}"
    faults = collections.Counter[str]()
    for sim in sims:
        if sim.alive():
            faults.update(sim.stats()["faults"])
    assert faults["fail"] and faults["drop"] and faults["hang"], faults
    for _ in range(3):  # a row may fail all its attempts; --retry-failed-style reruns finish it
        with no_ok_row_sent_again(out, sims):
            code, err = finish(start_run(job))
            assert code in (0, 1), err
        if code == 0:
            break
    assert code == 0, err
    assert_exactly_once(out, rows + 1)
    seen_before = received(sims)
    code, err = finish(start_run(job))  # all done: a further run sends nothing
    assert code == 0, err
    assert received(sims) == seen_before
    assert not sims[2].alive(), "the third simulator should have died part-way"
    print(f"kills={kills} ok-after-each-kill={progress} tmp-left={stale_tmp} faults={faults}")


SLOW = [{"ms_per_step": 15}, {"ms_per_step": 15}]  # 20 steps: 0.3 s per image


@pytest.mark.parametrize("sims", [SLOW], indirect=True)
def test_one_sigint_finishes_the_rows_in_flight_and_exits_130(
    sims: list[SimProcess], tmp_path: Path
) -> None:
    rows = 16
    job = write_job(tmp_path, [sim.url for sim in sims], rows, request_s=30)
    out = tmp_path / "out"
    proc = start_run(job)
    _wait_for(lambda: _manifest_lines(out) >= 2, proc)
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc, timeout=30)
    assert code == 130, err
    assert "interrupted" in err
    first = received(sims)
    sent = [seed for seeds in first for seed in seeds]
    recorded = [int(r["payload"]["seed"]) for r in lines_of(out)]
    # Every request that reached a server was let finish and was written; none was lost.
    assert sorted(sent) == sorted(recorded)
    assert 2 <= len(recorded) < rows + 1
    code, err = finish(start_run(job))
    assert code == 0, err
    assert f"{len(recorded)} done" in err.replace(",", "")
    again = [
        seed for old, new in zip(first, received(sims), strict=True) for seed in new[len(old) :]
    ]
    assert not set(recorded) & set(again), "a row written before Ctrl-C was sent again"
    assert_exactly_once(out, rows + 1)


@pytest.mark.parametrize("sims", [[{"ms_per_step": 600}]], indirect=True)
def test_a_second_run_is_refused_and_a_second_sigint_stops_at_once(
    sims: list[SimProcess], tmp_path: Path
) -> None:
    rows = 6  # 12 s per image: the first row is still running when the second Ctrl-C comes
    job = write_job(tmp_path, [sims[0].url], rows, request_s=60)
    out = tmp_path / "out"
    proc = start_run(job)
    _wait_for(lambda: len(sims[0].received_seeds()) >= 1, proc)
    code, err = finish(start_run(job))  # the same command in another terminal
    assert code == 2 and "another batchgen run is writing to this folder" in err
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    stopped = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc, timeout=30)
    assert code == 130, err
    assert time.monotonic() - stopped < 5, "the second Ctrl-C did not stop at once"
    assert not [r for r in lines_of(out) if r["status"] == "ok"]
    assert not list(out.rglob("*.tmp"))
    sims[0].proc.send_signal(signal.SIGINT)  # a fast simulator for the rest
    sims[0].proc.wait(timeout=10)
    fast = SimProcess({"ms_per_step": 1})
    sims.append(fast)
    job = write_job(tmp_path, [fast.url], rows, request_s=60)
    code, err = finish(start_run(job))
    assert code == 0, err
    assert_exactly_once(out, rows + 1)


def _kill_point(rng: random.Random, out: Path, proc: subprocess.Popen[bytes]) -> None:
    """Wait for a random moment: during start-up, or a random number of rows into the run.

    Counting rows rather than seconds keeps the kills spread over the work on a loaded machine.
    """
    if rng.random() < 0.2:
        time.sleep(rng.uniform(0.1, 1.5))
        return
    target = _manifest_lines(out) + rng.randint(1, 6)
    deadline = time.monotonic() + 60
    while _manifest_lines(out) < target and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.3))  # between rows: mid-request, mid-write


def _manifest_lines(out: Path) -> int:
    try:
        return (out / MANIFEST).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _wait_for(condition: Any, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert proc.poll() is None, f"the run ended early: {finish(proc)}"
        time.sleep(0.05)
    raise AssertionError("timed out")


# Every file the run writes is capped at 6 kB (EFBIG past that, no SIGXFSZ): a disk that fills up.
_SMALL_DISK = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (6000, hard))
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_a_full_disk_stops_the_run_and_the_folder_resumes(tmp_path: Path) -> None:
    rows = 30
    (tmp_path / "sheet.csv").write_text(
        "prompt\n" + "".join(f"row {index}\n" for index in range(rows)), encoding="utf-8"
    )

    args = [sys.executable, "-m", "batchgen", "run", "sheet.csv", "--out", "out"]
    args += ["--endpoint", "sim://"]
    full = subprocess.run(
        [sys.executable, "-c", _SMALL_DISK, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert full.returncode == 1, full.stderr
    assert "cannot write to out: [Errno 27] File too large" in full.stderr
    out = tmp_path / "out"
    written = lines_of(out)  # every line whole: the failed append was cut back
    assert 0 < len(written) < rows
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"{len(written)} done" in again.stderr
    assert_exactly_once(out, rows)


async def test_after_ctrl_c_no_late_row_is_copied_to_an_idle_endpoint(tmp_path: Path) -> None:
    """At the tail an idle endpoint may copy a late row; once stopping, nothing new is sent."""
    from batchgen.job import load_job
    from batchgen.run.runner import RunOptions, run_batch
    from batchgen.sim import SimConfig, SimServer

    sheet = tmp_path / "sheet.csv"
    rows = "".join(f"row {i},20\n" for i in range(12))
    sheet.write_text("prompt,steps\n" + rows, encoding="utf-8")
    async with (
        SimServer(SimConfig(ms_per_step=2)) as fast,
        SimServer(SimConfig(ms_per_step=50)) as slow,  # 1 s a row
    ):
        job = load_job(sheet, endpoints=[fast.url, slow.url], out=tmp_path / "out")
        run = asyncio.create_task(run_batch(job, RunOptions()))
        while len(slow.stats.history) < 2:  # noqa: ASYNC110 - a counter, not an event
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # the fast one is idle by now; the slow one's 2nd row is late
        os.kill(os.getpid(), signal.SIGINT)  # the run's own handler takes it
        summary = await run
        sent = len(fast.stats.history) + len(slow.stats.history)
    assert summary.interrupted and summary.exit_code == 130
    assert sent == len(latest_records(tmp_path / "out")) < 12
