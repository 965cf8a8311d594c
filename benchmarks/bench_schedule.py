"""Scheduling benchmark: makespan and checkpoint switches on simulators of different speeds.

    python benchmarks/bench_schedule.py [--rows 800] [--seed 1] [--scale 1]

Four simulator endpoints (speeds 1, 1, 2, 4; a switch costs 20 rows at speed 1), a sheet whose
rows name 4 checkpoints in random order; --scale 5 makes every time 5x longer. Runs, each on
freshly started simulators:
  1. batchgen with the planner (policy "plan", the default) and with the one-row-at-a-time
     scheduler it replaced (policy "greedy"), --repeat times each, alternately; each time a
     first run (nothing remembered: speeds are measured as it goes) and a second one that starts
     from the speeds the first remembered (speed_memory.py), on the same addresses;
  2. a naive baseline in the same process: rows in sheet order, round robin, 2 in flight each;
  3. batchgen again, with the fastest endpoint killed mid-run and restarted later.
Makespan is measured from the manifest (first row sent to last row back); switches are read from
the simulators. The ideal is a lower bound: (total work + the switches that cannot be avoided,
each costing at least switch_s on the slowest endpoint) / total speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from benchhelp import Exact, exact_solve, free_port

from batchgen.backends.a1111 import EndpointClient, resolve_endpoint
from batchgen.job import EndpointSpec, JobSpec, OutputSpec, RetrySpec
from batchgen.records import Task
from batchgen.rows.payload import PayloadBuilder
from batchgen.rows.sheet import read_headers, read_rows
from batchgen.rows.wire import a1111_request
from batchgen.run import placement
from batchgen.run.runner import RunOptions, run_batch
from batchgen.run.scheduler import MEASURED_ROWS, Policy

MODELS = ("alpha.safetensors", "beta.safetensors", "gamma.safetensors", "delta.safetensors")
SPEEDS = (1.0, 1.0, 2.0, 4.0)
STEPS = 20


@dataclass(frozen=True, slots=True)
class Figures:
    makespan: float
    switches: int
    ok: int
    breakdown: str = ""


class Sim:
    """One simulator in its own process, so that its clock does not share our event loop."""

    def __init__(self, args: argparse.Namespace, speed: float, port: int = 0) -> None:
        self.options = {
            "models": ",".join(MODELS),
            "ms_per_step": args.ms_per_step,
            "switch_s": args.switch_s,
            "speed": speed,
        }
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        sets = [arg for key, value in self.options.items() for arg in ("--set", f"{key}={value}")]
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "batchgen.sim",
            "--port",
            str(self.port),
            *sets,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with aiohttp.ClientSession() as session:
            for _ in range(500):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.url + "/sdapi/v1/options") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.02)
        raise RuntimeError(f"simulator at {self.url} did not start")

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.url + "/_sim/stats") as r:
            result: dict[str, Any] = await r.json()
            return result

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@contextlib.asynccontextmanager
async def simulators(args: argparse.Namespace) -> AsyncIterator[list[Sim]]:
    """The same addresses every time, as the same GPU boxes night after night."""
    sims = [Sim(args, speed, port) for speed, port in zip(SPEEDS, args.ports, strict=True)]
    try:
        await asyncio.gather(*(sim.start() for sim in sims))
        yield sims
    finally:
        for sim in sims:
            await sim.kill()


async def switches(sims: Sequence[Sim]) -> int:
    counts = [int((await sim.stats())["switches"]) for sim in sims]
    return sum(counts)


def write_sheet(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "model", "steps", "seed"])
        for index in range(rows):
            writer.writerow([f"row {index}", rng.choice(MODELS)[:-12], STEPS, index])


def job_for(sheet: Path, out: Path, urls: Sequence[str]) -> JobSpec:
    return JobSpec(
        name="bench",
        sheet=sheet,
        endpoints=tuple(EndpointSpec(url=url, name=f"e{i}") for i, url in enumerate(urls)),
        output=OutputSpec(dir=out),
        retry=RetrySpec(attempts=8, backoff_initial=0.05, backoff_max=0.5),
        check=False,
        wait_all_down=30.0,
    )


def manifest_figures(out: Path) -> tuple[float, int]:
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ok = [line for line in lines if line["status"] == "ok"]
    first = min(line["started_at"] for line in lines)
    last = max(line["started_at"] + line["duration_s"] for line in lines)
    rows = {line["row"] for line in ok}
    assert len(rows) == len(ok), "a row was recorded ok twice"
    return last - first, len(ok)


def tasks_of(job: JobSpec) -> list[Task]:
    """Every row's request, built the way the runner builds them."""
    builder = PayloadBuilder(job, read_headers(job.sheet, None))
    return [builder.build(row) for row in read_rows(job.sheet, None)]


def clients_for(
    sims: Sequence[Sim], session: aiohttp.ClientSession, job: JobSpec
) -> list[EndpointClient]:
    """A bare client per simulator, for the comparisons that bypass the runner."""
    return [
        EndpointClient(resolve_endpoint(EndpointSpec(url=sim.url), 2), session, job.timeout)
        for sim in sims
    ]


async def run_batchgen(
    args: argparse.Namespace,
    sheet: Path,
    out: Path,
    policy: Policy,
    rates: Sequence[float],
    memory: Path,
) -> Figures:
    """One run; `memory`: the folder of the speeds it remembers (speed_memory.py)."""
    os.environ["BATCHGEN_CACHE_DIR"] = str(memory)
    async with simulators(args) as sims:
        job = job_for(sheet, out, [sim.url for sim in sims])
        await run_batch(job, RunOptions(policy=policy))
        makespan, ok = manifest_figures(out)
        parts = breakdown(out, rates, args.switch_s)
        return Figures(makespan, await switches(sims), ok, parts)


async def run_naive(args: argparse.Namespace, sheet: Path) -> Figures:
    """Rows in sheet order, dealt round robin; each endpoint keeps two requests in flight."""
    job = job_for(sheet, Path(tempfile.mkdtemp()), ["http://127.0.0.1:1"])
    tasks = tasks_of(job)
    async with simulators(args) as sims, aiohttp.ClientSession() as session:
        clients = clients_for(sims, session, job)
        for client in clients:
            await client.probe()
        done = 0

        async def lane(client: EndpointClient, rows: list[Task]) -> None:
            nonlocal done
            for task in rows:
                await client.generate(a1111_request(task, client.flavor))
                done += 1

        count = len(clients)
        started = time.monotonic()
        await asyncio.gather(
            *(
                lane(client, tasks[index::count][lane_no::2])
                for index, client in enumerate(clients)
                for lane_no in range(2)
            )
        )
        return Figures(time.monotonic() - started, await switches(sims), done)


async def run_with_kill(args: argparse.Namespace, sheet: Path, out: Path) -> Figures:
    """The fastest endpoint is killed after 1/8 of the rows and restarted `--down-s` later."""
    async with simulators(args) as sims:
        victim = sims[-1]
        fresh = Sim(args, SPEEDS[-1], victim.port)
        before = 0

        async def kill_and_restart() -> None:
            nonlocal before
            while (await victim.stats())["generations"] < args.rows // 8:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            before = int((await victim.stats())["switches"])
            await victim.kill()
            await asyncio.sleep(args.down_s)
            await fresh.start()
            print(f"  killed the fastest endpoint; restarted it {args.down_s:g} s later")

        chaos = asyncio.create_task(kill_and_restart())
        try:
            await run_batch(job_for(sheet, out, [sim.url for sim in sims]), RunOptions())
            await chaos
            makespan, ok = manifest_figures(out)
            total = await switches(sims[:-1]) + before + await switches([fresh])
            return Figures(makespan, total, ok)
        finally:
            chaos.cancel()
            await fresh.kill()


async def calibrate(args: argparse.Namespace, rows: int = 40) -> list[float]:
    """Each endpoint's real rate (rows/s) on its loaded checkpoint, all four busy at once: the
    time model plus the simulator's own per-request work, measured, not assumed."""
    sheet = Path(tempfile.mkdtemp()) / "calibrate.csv"
    with sheet.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "steps", "seed"])
        writer.writerows([f"c{i}", STEPS, i] for i in range(rows))
    job = job_for(sheet, sheet.parent / "out", ["http://127.0.0.1:1"])
    tasks = tasks_of(job)
    async with simulators(args) as sims, aiohttp.ClientSession() as session:
        clients = clients_for(sims, session, job)

        async def rate(client: EndpointClient) -> float:
            await client.probe()
            started = time.monotonic()
            lanes = (tasks[0::2], tasks[1::2])
            await asyncio.gather(*(_send_each(client, lane) for lane in lanes))
            return rows / (time.monotonic() - started)

        return list(await asyncio.gather(*(rate(client) for client in clients)))


async def _send_each(client: EndpointClient, tasks: Sequence[Task]) -> None:
    for task in tasks:
        await client.generate(a1111_request(task, client.flavor))


def lower_bound(rows: int, loaded_rows: int, rates: Sequence[float], switch_s: float) -> float:
    """The shortest possible makespan with perfect knowledge.

    Every endpoint starts with the first checkpoint loaded. An endpoint that never switches can
    only do those `loaded_rows`; every other one loses switch_s x its rate to one switch at least.
    Try every set of endpoints that stay; the best is the bound.
    """
    total = sum(rates)
    best = math.inf
    for size in range(len(rates) + 1):
        for stay in itertools.combinations(range(len(rates)), size):
            staying = sum(rates[i] for i in stay)
            lost = switch_s * (total - staying)
            makespan = (rows + lost) / total
            if staying * makespan > loaded_rows:  # they run out of rows: the rest must do more
                if total - staying <= 0:
                    continue
                makespan = (rows - loaded_rows + lost) / (total - staying)
            best = min(best, makespan)
    return best


def exact_optimum(
    sheet: Path, rates: Sequence[float], switch_s: float, measuring: int = 0
) -> Exact | None:
    """The best makespan if every row took exactly its endpoint's measured time (or None
    without scipy): the same lower bound as `lower_bound`, without letting work split freely.
    Told the planner's own plan is feasible (which tightens it); 30 s at most.

    `measuring`: the best once every endpoint has done the rows of its loaded checkpoint that
    it does while speeds are measured: nobody switches before the slowest has answered this many
    rows after its first (2 if they take alike, else MEASURED_ROWS), one more queued behind; the
    others as many as they do meanwhile."""
    counts: dict[str, float] = {}
    for row in read_rows(sheet, None):
        counts[row.cells["model"]] = counts.get(row.cells["model"], 0.0) + 1
    first = MODELS[0][:-12]
    measured = [(measuring + 2) * rate / min(rates) if measuring else 0.0 for rate in rates]
    counts[first] -= sum(measured)
    workers = tuple(
        placement.Worker(rate, switch_s, frozenset({first}), busy_s=rows / rate)
        for rate, rows in zip(rates, measured, strict=True)
    )
    snapshot = placement.Snapshot(tuple(counts.items()), workers)
    upper = placement.plan(snapshot).makespan * (1 + 1e-6)
    return exact_solve(snapshot, 30.0, upper)


def breakdown(out: Path, rates: Sequence[float], switch_s: float) -> str:
    """What the makespan is made of, from the manifest, each part in seconds of the makespan
    (an endpoint's seconds weighted by its share of the total rate, so the parts add up):
    rows at the measured rates, checkpoint loads, time before an endpoint's first row, idle
    at the end (endpoints done before the last), and the rest (gaps between rows, rows slower
    than measured)."""
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    start = min(line["started_at"] for line in lines)
    makespan = max(line["finished_at"] for line in lines) - start
    total = sum(rates)
    parts = dict.fromkeys(("rows", "loads", "start", "end idle", "rest"), 0.0)
    ends = []
    for index, rate in enumerate(rates):
        mine = sorted((x for x in lines if x["endpoint"] == f"e{index}"), key=finished)
        models = [MODELS[0][:-12]] + [line["model"] for line in mine]
        loads = switch_s * sum(a != b for a, b in itertools.pairwise(models))
        lead = min(line["started_at"] for line in mine) - start
        end = mine[-1]["finished_at"] - start
        ends.append(end)
        work = len(mine) / rate
        share = rate / total
        parts["rows"] += share * work
        parts["loads"] += share * loads
        parts["start"] += share * lead
        parts["end idle"] += share * (makespan - end)
        parts["rest"] += share * (end - lead - work - loads)
    text = " + ".join(f"{name} {value:.2f}" for name, value in parts.items())
    return f"{makespan:.2f} s = {text}; ends " + ", ".join(f"{end:.2f}" for end in ends)


def finished(line: dict[str, Any]) -> float:
    value: float = line["finished_at"]
    return value


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ms-per-step", type=float, default=2.0)  # 40 ms a row at speed 1
    parser.add_argument("--switch-rows", type=float, default=20.0)  # a load, in rows at speed 1
    parser.add_argument("--scale", type=float, default=1.0, help="every time this many x longer")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each policy")
    parser.add_argument("--down-s", type=float, default=1.5)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-kill", action="store_true")
    parser.add_argument("--keep", help="write the outputs here instead of a temporary folder")
    parser.add_argument("--plans", help="write the scheduler's plans (its debug log) to this file")
    parser.add_argument("--policy", choices=("both", "plan", "greedy"), default="both")
    args = parser.parse_args()
    args.ms_per_step *= args.scale
    args.switch_s = args.switch_rows * STEPS * args.ms_per_step / 1000
    args.down_s *= args.scale
    args.ports = [free_port() for _ in SPEEDS]
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().handlers[0].setLevel(logging.ERROR)
    if args.plans:
        plans = logging.FileHandler(args.plans, mode="w")
        plans.setFormatter(logging.Formatter("%(relativeCreated)d ms %(message)s"))
        logging.getLogger("batchgen.run.scheduler").addHandler(plans)
        logging.getLogger("batchgen.run.scheduler").setLevel(logging.DEBUG)
    bound = len(MODELS) + len(SPEEDS)
    row_ms = STEPS * args.ms_per_step
    print(
        f"{args.rows} rows over {len(MODELS)} checkpoints in random order; endpoint speeds "
        f"{', '.join(f'{s:g}' for s in SPEEDS)} (a row: {row_ms:g} ms at speed 1), "
        f"a switch {args.switch_s * 1000:g} ms; every endpoint starts on {MODELS[0]}"
    )
    rates = await calibrate(args)
    nominal = [speed * 1000 / row_ms for speed in SPEEDS]
    print(
        "measured rates (rows/s): "
        + ", ".join(f"{r:.1f} (time model {n:.0f})" for r, n in zip(rates, nominal, strict=True))
    )
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        sheet = base / "sheet.csv"
        write_sheet(sheet, args.rows, args.seed)
        loaded = sum(1 for row in read_rows(sheet, None) if row.cells["model"] == "alpha")
        best = lower_bound(args.rows, loaded, rates, args.switch_s)
        naive_best = lower_bound(args.rows, loaded, nominal, args.switch_s)
        exact = exact_optimum(sheet, rates, args.switch_s)
        print(
            f"ideal makespan: {best:.2f} s at the measured rates ({naive_best:.2f} s at the "
            f"time model's); switch bound: {len(MODELS)} checkpoints + {len(SPEEDS)} endpoints "
            f"= {bound}"
        )
        if exact is not None:
            found = f"best plan found {exact.best or math.inf:.2f} s"
            solved = "solved" if exact.optimal else found
            print(
                f"exact ideal: {exact.bound:.2f} s at the measured rates: the fluid optimum when "
                f"an endpoint must load a checkpoint before its rows (a mixed-integer program, "
                f"{solved}); rows alone at the measured rates: {args.rows / sum(rates):.2f} s"
            )
            best = max(best, exact.bound)
            for rows in (2, MEASURED_ROWS):
                after = exact_optimum(sheet, rates, args.switch_s, measuring=rows)
                if after is not None:
                    print(
                        f"exact ideal once speeds are measured on {rows} rows: {after.bound:.2f} s "
                        f"(each endpoint first does rows of {MODELS[0]} while the slowest does "
                        f"{rows + 2})"
                    )
        policies: list[Policy] = ["greedy", "plan"] if args.policy == "both" else [args.policy]
        figures: dict[tuple[Policy, bool], list[Figures]] = {}
        for attempt in range(args.repeat):
            for policy in policies:
                memory = base / f"speeds-{policy}-{attempt}"  # empty: the first run remembers
                for warm in (False, True):
                    out = base / f"{policy}-{attempt}{'-remembered' if warm else ''}"
                    run = await run_batchgen(args, sheet, out, policy, rates, memory)
                    figures.setdefault((policy, warm), []).append(run)
        for (policy, warm), runs in figures.items():
            name = "before (greedy)" if policy == "greedy" else "after (plan)"
            name += ", speeds remembered" if warm else ", first run"
            for run in runs:
                print(
                    f"batchgen {name:<36} makespan {run.makespan:.2f} s "
                    f"({run.makespan / best:.3f} x ideal), {run.switches} switches "
                    f"(bound {bound}), {run.ok} rows ok"
                )
                print(f"  {run.breakdown}")
        ours = figures[policies[-1], False][0]
        if not args.skip_naive:
            naive = await run_naive(args, sheet)
            print(
                f"naive:    makespan {naive.makespan:.2f} s ({naive.makespan / best:.3f} x ideal), "
                f"{naive.switches} switches, {naive.ok} rows ok"
            )
            print(
                f"batchgen vs naive: makespan {naive.makespan / ours.makespan:.1f}x shorter, "
                f"{naive.switches / max(ours.switches, 1):.0f}x fewer switches"
            )
        if args.skip_kill:
            return
        os.environ["BATCHGEN_CACHE_DIR"] = str(base / "speeds-killed")  # a first run too
        killed = await run_with_kill(args, sheet, base / "killed")
        print(
            f"fastest endpoint killed after 1/8 of the rows, back {args.down_s:g} s later: "
            f"makespan {killed.makespan:.2f} s ({killed.makespan / best:.3f} x the ideal without "
            f"the outage, {killed.makespan / ours.makespan:.3f} x the run without it), "
            f"{killed.switches} switches, {killed.ok}/{args.rows} rows ok"
        )


if __name__ == "__main__":
    asyncio.run(main())
