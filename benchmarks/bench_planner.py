"""Planner benchmark: makespan against a lower bound over random scenarios, planner vs greedy.

    python benchmarks/bench_planner.py [--scenarios 200] [--seed 1] [--exact-s 1] [--recheck-s 30]

Scenarios: 2-16 endpoints of speeds 0.5-4, 1-8 checkpoints, a load costing 1-30 rows, 200-5,000
rows over the checkpoints in uneven shares, each endpoint starting on a random checkpoint. Each
scenario is played by the real Scheduler on the discrete-event harness (tests/eventsim.py, a fake
clock), once with each policy: with the true speeds known, learned from the answers, remembered
from an earlier run (speed_memory.py), and remembered but each 10% off.

The bound, per scenario, is the better of two lower bounds on the fluid optimum with the loads
that cannot be avoided: placement.lower_bound (instant) and, with scipy, the dual bound of the
mixed-integer program in benchhelp.exact_solve (endpoint i loads group g or not), told that the
planner's own makespan is feasible (which tightens it) and solved for --exact-s seconds; again for
--recheck-s where the plan (alone, or played with speeds known) ends more than --recheck above
the bound, so that a poor ratio is not merely a weak bound. Both are recomputed on every run;
nothing is cached. For the worst scenarios the output puts each ratio next to the best plan the
solver found (optimal if it finished): plan / best is the planner's own gap, best / bound what
the bound may still be short by.
Last, the time to plan 100,000 waiting rows over 64 endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchhelp import Exact, exact_solve
from eventsim import Outcome, Scenario, play, random_scenario

from batchgen.run import placement


def summary(name: str, ratios: Sequence[float]) -> str:
    ordered = sorted(ratios)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return (
        f"  {name:<34} median {statistics.median(ordered):.3f}  p90 {p90:.3f}  "
        f"worst {ordered[-1]:.3f}"
    )


Played = dict[tuple[str, str], list[Outcome]]  # (policy, what it knows): one per scenario
MODES = {
    "known": "speeds known",
    "learned": "speeds learned from the answers",
    "remembered": "speeds remembered from an earlier run (speed_memory.py)",
    "remembered 10% off": "speeds remembered, each 10% off (x 0.9 or 1.1 at random)",
}


async def play_all(scenarios: list[Scenario]) -> Played:
    played: Played = {}
    for mode in MODES:
        for policy in ("greedy", "plan"):
            outcomes = []
            off = random.Random(7)  # the same errors for both policies
            for scenario in scenarios:
                factors = tuple(off.choice((0.9, 1.1)) for _ in scenario.speeds)
                exact = (1.0,) * len(scenario.speeds)
                remembered = {"remembered": exact, "remembered 10% off": factors}.get(mode)
                outcome = await play(scenario, policy, known=mode == "known", remembered=remembered)
                assert outcome.rows == len(scenario.rows)
                outcomes.append(outcome)
            played[policy, mode] = outcomes
    return played


def report_played(scenarios: list[Scenario], played: Played, bounds: Sequence[float]) -> None:
    for mode, label in MODES.items():
        print(f"the real Scheduler on the fake clock, {label}: makespan / bound")
        results = {}
        for policy in ("greedy", "plan"):
            spans = [outcome.makespan for outcome in played[policy, mode]]
            ratios = [span / bound for span, bound in zip(spans, bounds, strict=True)]
            results[policy] = ratios
            name = "before (greedy)" if policy == "greedy" else "after (plan)"
            print(summary(name, ratios))
        for policy in ("greedy", "plan"):
            loads = [
                outcome.switches / (len(set(scenario.rows)) + len(scenario.speeds))
                for scenario, outcome in zip(scenarios, played[policy, mode], strict=True)
            ]
            over = sum(value > 1 for value in loads)
            print(
                f"  {policy}: loads / (checkpoints + endpoints): median "
                f"{statistics.median(loads):.2f}, worst {max(loads):.2f}; over in {over} scenarios"
            )
        better = sum(a < b - 1e-9 for a, b in zip(results["plan"], results["greedy"], strict=True))
        worse = sum(a > b + 1e-9 for a, b in zip(results["plan"], results["greedy"], strict=True))
        print(f"  plan shorter than greedy in {better} scenarios, longer in {worse}")


def report_worst(
    scenarios: list[Scenario],
    planned: list[float],
    played: Played,
    bounds: list[float],
    exact: list[Exact | None],
    count: int,
) -> None:
    """The scenarios where the plan is furthest from the bound, and how much of it is bound."""
    print(f"the {count} scenarios where the plan is furthest from the bound:")
    print(
        "    #  ends grps  rows  load | plan/bound  played/bound (known, learned) |"
        " best/bound  plan/best  (best: the solver's best plan)"
    )
    worst = sorted(range(len(scenarios)), key=lambda k: -planned[k] / bounds[k])[:count]
    for k in worst:
        scenario, bound, solved = scenarios[k], bounds[k], exact[k]
        best = solved.best if solved is not None and solved.best is not None else math.inf
        state = "optimal" if solved is not None and solved.optimal else "time out"
        known, learned = played["plan", "known"][k], played["plan", "learned"][k]
        print(
            f"  {k:3d}  {len(scenario.speeds):4d} {len(set(scenario.rows)):4d} "
            f"{len(scenario.rows):5d} {scenario.switch_s:5.1f} | {planned[k] / bound:10.3f}  "
            f"{known.makespan / bound:12.3f} {learned.makespan / bound:8.3f}"
            f"          | {best / bound:10.3f} {planned[k] / best:10.3f}  ({state})"
        )


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
    parser.add_argument("--recheck", type=float, default=1.04, help="plan / bound to solve longer")
    parser.add_argument("--recheck-s", type=float, default=30.0, help="time for those")
    parser.add_argument("--worst", type=int, default=8, help="scenarios shown one by one")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    scenarios = [random_scenario(rng) for _ in range(args.scenarios)]
    print(
        f"{len(scenarios)} scenarios: 2-16 endpoints, speeds 0.5-4, 1-8 checkpoints, a load "
        "1-30 rows, 200-5,000 rows"
    )
    snapshots = [scenario.snapshot() for scenario in scenarios]
    started = time.perf_counter()
    planned = [placement.plan(snapshot).makespan for snapshot in snapshots]
    print(f"planned all {len(scenarios)} in {time.perf_counter() - started:.2f} s")
    played = asyncio.run(play_all(scenarios))
    bounds: list[float] = []
    exact: list[Exact | None] = []
    for k, snapshot in enumerate(snapshots):
        quick = placement.lower_bound(snapshot)
        upper = planned[k] * (1 + 1e-6)  # the plan is feasible: the optimum ends no later
        solved = exact_solve(snapshot, args.exact_s, upper) if args.exact_s > 0 else None
        bound = max(quick, solved.bound) if solved is not None else quick
        furthest = max(
            planned[k], played["plan", "known"][k].makespan
        )  # learning is not the bound's
        if solved is not None and not solved.optimal and furthest > args.recheck * bound:
            solved = exact_solve(snapshot, args.recheck_s, upper) or solved
            bound = max(quick, solved.bound)
        bounds.append(bound)
        exact.append(solved)
    solved_count = sum(1 for e in exact if e is not None and e.optimal)
    stronger = sum(
        1 for e, s in zip(exact, snapshots, strict=True) if e and e.bound > placement.lower_bound(s)
    )
    print(
        f"bound: the program's dual bound was the stronger one in {stronger} of {len(scenarios)} "
        f"scenarios; the program was solved to optimality in {solved_count}"
    )
    print("the plan alone (fluid, true speeds): planned makespan / bound")
    print(summary("plan", [span / bound for span, bound in zip(planned, bounds, strict=True)]))
    report_played(scenarios, played, bounds)
    report_worst(scenarios, planned, played, bounds, exact, args.worst)
    print(f"time to plan 100,000 waiting rows over 64 endpoints: {time_to_plan() * 1000:.1f} ms")


if __name__ == "__main__":
    main()
