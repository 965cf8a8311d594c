"""batchgen: a spreadsheet of prompts to images over Stable Diffusion web UI servers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchgen.job import JobSpec, load_job
    from batchgen.records import RunSummary
    from batchgen.run.runner import RunOptions, run_batch

__all__ = ["JobSpec", "RunOptions", "RunSummary", "load_job", "run_batch"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `batchgen.sim` starts without loading pandas and the client side.
    if name in ("JobSpec", "load_job"):
        from batchgen import job

        return getattr(job, name)
    if name == "RunSummary":
        from batchgen import records

        return records.RunSummary
    if name in ("RunOptions", "run_batch"):
        from batchgen.run import runner

        return getattr(runner, name)
    raise AttributeError(name)
