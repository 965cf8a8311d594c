"""Planner benchmark: makespan against a lower bound over random scenarios, planner vs greedy.

    python benchmarks/bench_planner.py [--scenarios 200] [--seed 1] [--exact-s 1.0]

Scenarios: 2-16 endpoints of speeds 0.5-4, 1-8 checkpoints, a load costing 1-30 rows, 200-5,000
rows over the checkpoints in uneven shares, each endpoint starting on a random checkpoint. Each
scenario is played by the real Scheduler on the discrete-event harness (tests/eventsim.py, a fake
clock), once with each policy, with the true speeds known and with them learned from the answers.

The bound is the better of two lower bounds on the fluid optimum with the loads that cannot be
avoided: placement.lower_bound (instant) and, if scipy is installed, the dual bound of a
mixed-integer program solved for at most --exact-s seconds (endpoint i loads group g or not).
Last, the time to plan 100,000 waiting rows over 64 endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchhelp import exact_bound
from eventsim import Scenario, play, random_scenario

from batchgen.run import placement


def summary(name: str, ratios: Sequence[float]) -> str:
    ordered = sorted(ratios)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return (
        f"  {name:<34} median {statistics.median(ordered):.3f}  p90 {p90:.3f}  "
        f"worst {ordered[-1]:.3f}"
    )


async def play_all(scenarios: list[Scenario], bounds: list[float]) -> None:
    for known in (True, False):
        label = "speeds known" if known else "speeds learned from the answers"
        print(f"the real Scheduler on the fake clock, {label}: makespan / bound")
        results: dict[str, list[float]] = {}
        switches: dict[str, list[float]] = {}
        for policy in ("greedy", "plan"):
            started = time.perf_counter()
            ratios, loads = [], []
            for scenario, bound in zip(scenarios, bounds, strict=True):
                outcome = await play(scenario, policy, known=known)
                assert outcome.rows == len(scenario.rows)
                ratios.append(outcome.makespan / bound)
                limit = len(set(scenario.rows)) + len(scenario.speeds)
                loads.append(outcome.switches / limit)
            results[policy], switches[policy] = ratios, loads
            name = "before (greedy)" if policy == "greedy" else "after (plan)"
            print(summary(name, ratios) + f"  ({time.perf_counter() - started:.0f} s)")
        for policy, loads in switches.items():
            over = sum(value > 1 for value in loads)
            print(
                f"  {policy}: loads / (checkpoints + endpoints): median "
                f"{statistics.median(loads):.2f}, worst {max(loads):.2f}; over in {over} scenarios"
            )
        better = sum(a < b - 1e-9 for a, b in zip(results["plan"], results["greedy"], strict=True))
        worse = sum(a > b + 1e-9 for a, b in zip(results["plan"], results["greedy"], strict=True))
        print(f"  plan shorter than greedy in {better} scenarios, longer in {worse}")


def time_to_plan(repeats: int = 5) -> float:
    rng = random.Random(64)
    groups = [f"c{i}" for i in range(8)]
    weights = [rng.random() ** 2 + 0.02 for _ in groups]
    rows = rng.choices(groups, weights, k=100_000)
    snapshot = placement.Snapshot(
        work=tuple((g, 20.0 * rows.count(g)) for g in groups),
        workers=tuple(
            placement.Worker(
                speed=rng.uniform(0.5, 4) * 20,
                switch_s=15.0,
                loaded=frozenset({rng.choice(groups)}),
                busy_s=rng.uniform(0, 2),
            )
            for _ in range(64)
        ),
        row=20.0,
    )
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        placement.plan(snapshot)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--exact-s", type=float, default=1.0, help="time for the exact bound")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    scenarios = [random_scenario(rng) for _ in range(args.scenarios)]
    print(
        f"{len(scenarios)} scenarios: 2-16 endpoints, speeds 0.5-4, 1-8 checkpoints, a load "
        "1-30 rows, 200-5,000 rows"
    )
    bounds, plans, exact = [], [], 0
    for scenario in scenarios:
        snapshot = scenario.snapshot()
        bound = placement.lower_bound(snapshot)
        better = exact_bound(snapshot, args.exact_s) if args.exact_s > 0 else None
        if better is not None and better > bound:
            bound, exact = better, exact + 1
        bounds.append(bound)
        plans.append(placement.plan(snapshot).makespan / bound)
    print(f"bound: the exact program's was the better one in {exact} of {len(scenarios)}")
    print("the plan alone (fluid, true speeds): planned makespan / bound")
    print(summary("plan", plans))
    asyncio.run(play_all(scenarios, bounds))
    print(f"time to plan 100,000 waiting rows over 64 endpoints: {time_to_plan() * 1000:.1f} ms")


if __name__ == "__main__":
    main()
