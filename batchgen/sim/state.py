"""Server state: options, the loaded checkpoint, the FIFO lock, progress, interrupt and skip."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .config import SimConfig
from .errors import ApiError
from .models import Checkpoint, Inventory
from .options import RESTRICTED, default_options
from .stats import SimStats


@dataclass(slots=True)
class Progress:
    """`shared.state` as /sdapi/v1/progress reports it."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    sampling_steps: int = 0
    job_timestamp: str = "0"
    started: float = 0.0
    batch_started: float = 0.0
    batch_seconds: float = 0.0
    interrupted: bool = False
    skipped: bool = False


class TaskTracker:
    """`modules/progress.py`: pending, current and recently finished task ids."""

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}
        self.current: str | None = None
        self.finished: deque[str] = deque(maxlen=16)

    def add(self, task_id: str) -> None:
        self.pending[task_id] = time.monotonic()

    def start(self, task_id: str) -> None:
        self.pending.pop(task_id, None)
        self.current = task_id

    def finish(self, task_id: str) -> None:
        self.pending.pop(task_id, None)
        self.finished.append(task_id)
        if self.current == task_id:
            self.current = None


class ServerState:
    """What one simulated web UI process holds between requests."""

    def __init__(self, config: SimConfig, stats: SimStats) -> None:
        self.config = config
        self.stats = stats
        self.inv = Inventory(config)
        self.forge = config.flavor == "forge"
        first = self.inv.checkpoints[0]
        self.opts = default_options(first.title, first.sha256, self.forge)
        self.loaded: Checkpoint = first
        # asyncio.Lock wakes waiters in arrival order, like A1111's FIFOLock.
        self.lock = asyncio.Lock()
        self.progress = Progress()
        self.tasks = TaskTracker()
        self._wake = asyncio.Event()

    def progress_json(self) -> dict[str, Any]:
        """GET /sdapi/v1/progress, with the formula of `Api.progressapi`."""
        s = self.progress
        progress, eta, step = 0.0, 0.0, 0
        if s.job_count > 0:
            now = time.monotonic()
            frac = 1.0
            if s.batch_seconds > 0:
                frac = min((now - s.batch_started) / s.batch_seconds, 1.0)
            step = int(frac * s.sampling_steps)
            progress = 0.01 + s.job_no / s.job_count
            if s.sampling_steps > 0:
                progress += step / s.sampling_steps / s.job_count
            since = max(now - s.started, 1e-6)
            eta = since / progress - since
            progress = min(progress, 1.0)
        return {
            "progress": progress,
            "eta_relative": eta,
            "state": {
                "skipped": s.skipped,
                "interrupted": s.interrupted,
                "stopping_generation": False,
                "job": s.job,
                "job_count": s.job_count,
                "job_timestamp": s.job_timestamp,
                "job_no": s.job_no,
                "sampling_step": step,
                "sampling_steps": s.sampling_steps,
            },
            "current_image": None,
            "textinfo": None,
        }

    def task_progress(self, id_task: str | None) -> dict[str, Any]:
        """POST /internal/progress: where a task (e.g. one sent with force_task_id) is."""
        tasks = self.tasks
        active = id_task is not None and id_task == tasks.current
        queued = id_task in tasks.pending
        out: dict[str, Any] = {
            "active": active,
            "queued": queued,
            "completed": id_task in tasks.finished,
            "progress": None,
            "eta": None,
            "live_preview": None,
            "id_live_preview": -1,
            "textinfo": None,
        }
        if not active:
            out["textinfo"] = "Waiting..."
            if queued:
                order = sorted(tasks.pending, key=tasks.pending.__getitem__)
                out["textinfo"] = f"In queue: {order.index(str(id_task)) + 1}/{len(order)}"
            return out
        public = self.progress_json()
        out["progress"] = max(public["progress"] - 0.01, 0.0)
        out["eta"] = public["eta_relative"]
        return out

    def pending_tasks(self) -> dict[str, Any]:
        order = sorted(self.tasks.pending, key=self.tasks.pending.__getitem__)
        return {"size": len(order), "tasks": order}

    def interrupt(self) -> None:
        self.progress.interrupted = True
        self._wake.set()

    def skip(self) -> None:
        self.progress.skipped = True
        self._wake.set()

    async def sleep(self, seconds: float) -> None:
        """Sleep for a batch's work; interrupt or skip ends it early."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        self._wake.clear()
        if self.progress.interrupted or self.progress.skipped:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def refresh(self) -> None:
        """refresh-* routes take the queue lock, so they wait for the running job."""
        async with self.lock:
            await asyncio.sleep(0)

    async def set_options(self, body: dict[str, Any]) -> None:
        """POST /sdapi/v1/options: validate the checkpoint, set keys, load the model (queued)."""
        if self.forge:
            body = {k: v for k, v in body.items() if self.opts.get(k, object()) != v}
        target = body.get("sd_model_checkpoint")
        ckpt = None
        if target is not None:
            ckpt = self.inv.checkpoint(target) if isinstance(target, str) else None
            if ckpt is None:
                raise ApiError.internal("RuntimeError", f"model {target!r} not found")
        for key, value in body.items():
            self.set_opt(key, value)
        if ckpt is not None and not self.forge:  # Forge loads lazily, at the next generation
            async with self.lock:
                await self.load(ckpt)

    def set_opt(self, key: str, value: Any) -> None:
        """`Options.set(is_api=True)`: restricted keys ignored, unknown keys a KeyError."""
        if key in RESTRICTED or self.opts.get(key) == value:
            return
        if key not in self.opts:
            raise ApiError.internal("KeyError", repr(key))
        self.opts[key] = value

    def apply_overrides(self, overrides: dict[str, Any], saved: dict[str, Any]) -> Checkpoint:
        """`process_images`: drop an unknown checkpoint, set the rest, remember old values.

        Returns the checkpoint the request runs on. Caller restores `saved` afterwards.
        """
        overrides = dict(overrides)
        target = overrides.get("sd_model_checkpoint")
        if not isinstance(target, str) or self.inv.checkpoint(target) is None:
            overrides.pop("sd_model_checkpoint", None)
        for key in overrides:
            if key in self.opts and key not in saved:
                saved[key] = self.opts[key]
        for key, value in overrides.items():
            self.set_opt(key, value)
        return self.inv.checkpoint(str(self.opts["sd_model_checkpoint"])) or self.loaded

    async def load(self, ckpt: Checkpoint) -> None:
        """`reload_model_weights`: a no-op for the loaded file, else pay the switch cost."""
        if ckpt == self.loaded:
            return
        self.stats.switches += 1
        if self.config.switch_s > 0:
            await asyncio.sleep(self.config.switch_s)
        self.loaded = ckpt
        self.opts["sd_checkpoint_hash"] = ckpt.sha256

    def closest_checkpoint(self, name: str) -> Checkpoint | None:
        """`sd_models.get_closet_checkpoint_match`: alias, else the shortest title containing it."""
        exact = self.inv.checkpoint(name)
        if exact is not None:
            return exact
        found = [c for c in self.inv.checkpoints if name in c.title]
        return min(found, key=lambda c: len(c.title)) if found else None
