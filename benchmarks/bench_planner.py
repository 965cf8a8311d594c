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

from eventsim import Scenario, play, random_scenario

from batchgen import placement


def exact_bound(snapshot: placement.Snapshot, seconds: float) -> float | None:
    """The dual bound of: minimise T over x[i,g] >= 0 (work), y[i,g] in {0,1} (a load), with
    sum_i x[i,g] = W_g, x[i,g] <= W_g y[i,g] unless i has g loaded, and for every endpoint
    busy_i + sum_g x[i,g] / speed_i + switch_i sum_g y[i,g] <= T."""
    try:
        import numpy as np
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import lil_matrix
    except ImportError:
        return None
    work = [(group, units) for group, units in snapshot.work if units > 0]
    workers = snapshot.workers
    count, groups = len(workers), len(work)
    xs = count * groups
    matrix = lil_matrix((groups + xs + count, 2 * xs + 1))
    low: list[float] = []
    high: list[float] = []
    for g, (_, units) in enumerate(work):
        for i in range(count):
            matrix[g, i * groups + g] = 1
        low.append(units)
        high.append(units)
    row = groups
    for i, worker in enumerate(workers):
        for g, (group, units) in enumerate(work):
            matrix[row, i * groups + g] = 1
            if group not in worker.loaded:
                matrix[row, xs + i * groups + g] = -units
            low.append(-np.inf)
            high.append(units if group in worker.loaded else 0.0)
            row += 1
    for i, worker in enumerate(workers):
        for g, (group, _) in enumerate(work):
            matrix[row, i * groups + g] = 1 / worker.speed
            if group not in worker.loaded:
                matrix[row, xs + i * groups + g] = worker.switch_s
        matrix[row, -1] = -1
        low.append(-np.inf)
        high.append(-worker.busy_s)
        row += 1
    objective = np.zeros(2 * xs + 1)
    objective[-1] = 1
    integrality = np.zeros(2 * xs + 1)
    integrality[xs : 2 * xs] = 1
    upper = np.concatenate([np.full(xs, np.inf), np.ones(xs), [np.inf]])
    result = milp(
        objective,
        constraints=LinearConstraint(matrix.tocsr(), low, high),
        integrality=integrality,
        bounds=Bounds(np.zeros(2 * xs + 1), upper),
        options={"time_limit": seconds},
    )
    bound = getattr(result, "mip_dual_bound", None)
    return float(bound) if bound is not None else None


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
