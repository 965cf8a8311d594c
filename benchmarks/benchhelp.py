"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import socket

from batchgen.run import placement


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
