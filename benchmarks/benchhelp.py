"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from batchgen.run import placement


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Exact:
    """What the mixed-integer program found within its time."""

    bound: float  # the solver's dual bound: no plan finishes sooner
    best: float | None  # the makespan of the best plan it found (None: none found)
    optimal: bool  # solved: best == bound, up to the solver's gap
    seconds: float


def exact_solve(
    snapshot: placement.Snapshot, seconds: float, upper: float | None = None
) -> Exact | None:
    """The fluid optimum with loads, as a mixed-integer program (None without scipy):

        minimise T over x[i,g] >= 0 (work of group g on endpoint i), y[i,g] in {0,1} (i loads g),
        sum_i x[i,g] = W_g;  x[i,g] <= M[i,g] y[i,g] unless i has g loaded;
        busy_i + sum_g x[i,g] / speed_i + switch_i sum_g y[i,g] <= T for every endpoint.

    `upper`: the makespan of a plan known to be feasible (the planner's). The optimum is no later,
    so T <= upper and M[i,g] = min(W_g, speed_i (upper - busy_i - switch_i)), the most i could do
    of g by then; the bound stays a bound and the program's relaxation gets much tighter. Groups
    nobody has loaded need a load somewhere: sum_i y[i,g] >= 1.
    """
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
    horizon = upper if upper is not None else float("inf")
    matrix = lil_matrix((2 * groups + xs + count, 2 * xs + 1))
    low: list[float] = []
    high: list[float] = []
    for g, (_, units) in enumerate(work):
        for i in range(count):
            matrix[g, i * groups + g] = 1
        low.append(units)
        high.append(units)
    row = groups
    upper_y = np.ones(xs)
    for i, worker in enumerate(workers):
        for g, (group, units) in enumerate(work):
            k = i * groups + g
            matrix[row, k] = 1
            if group in worker.loaded:
                most = min(units, worker.speed * max(horizon - worker.busy_s, 0.0))
                high.append(most)
                upper_y[k] = 0
            else:
                most = min(units, worker.speed * max(horizon - worker.busy_s - worker.switch_s, 0))
                matrix[row, xs + k] = -most
                high.append(0.0)
                if most <= 0:
                    upper_y[k] = 0
            low.append(-np.inf)
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
    for g, (group, _) in enumerate(work):
        if not any(group in worker.loaded for worker in workers):
            for i in range(count):
                matrix[row, xs + i * groups + g] = 1
        low.append(1.0 if not any(group in w.loaded for w in workers) else 0.0)
        high.append(np.inf)
        row += 1
    objective = np.zeros(2 * xs + 1)
    objective[-1] = 1
    integrality = np.zeros(2 * xs + 1)
    integrality[xs : 2 * xs] = 1
    bounds = Bounds(np.zeros(2 * xs + 1), np.concatenate([np.full(xs, np.inf), upper_y, [horizon]]))
    started = time.perf_counter()
    result = milp(
        objective,
        constraints=LinearConstraint(matrix.tocsr(), low, high),
        integrality=integrality,
        bounds=bounds,
        options={"time_limit": seconds},
    )
    elapsed = time.perf_counter() - started
    bound = getattr(result, "mip_dual_bound", None)
    if bound is None or not np.isfinite(bound):
        return None
    best = float(result.fun) if result.x is not None else None
    return Exact(float(bound), best, result.status == 0, elapsed)


def exact_bound(snapshot: placement.Snapshot, seconds: float) -> float | None:
    """The dual bound of `exact_solve` without a known plan (see there)."""
    solved = exact_solve(snapshot, seconds)
    return solved.bound if solved is not None else None
