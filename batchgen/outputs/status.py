"""The run's status file (status.json, replaced atomically every few seconds) and reading it back.

The run publishes it through a Reporter; `batchgen status` reads it from any terminal and says when
it is stale: the run's lock is free (the run died) or the file stopped changing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.outputs.manifest import MANIFEST, scan
from batchgen.outputs.store import folder_in_use
from batchgen.records import EndpointView, Result, RunPlan, RunSummary, simulator_note
from batchgen.report import duration
from batchgen.words import counted

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
PUBLISH_EVERY_S = 2.0
STALE_AFTER_S = 30.0  # no update for this long while "running": the run is hung or gone


class StatusFile:
    """A Reporter that keeps RUN_DIR/status.json current (at most every `every_s` seconds)."""

    def __init__(self, out_dir: Path, every_s: float = PUBLISH_EVERY_S) -> None:
        self._path = out_dir / STATUS_FILE
        self._every = every_s
        self._last = 0.0
        self._plan: RunPlan | None = None
        self._started_wall = time.time()
        self._started = time.monotonic()
        self._ok = self._failed = self._images = 0
        self._views: list[EndpointView] = []

    def started(self, plan: RunPlan, out_dir: Path) -> None:
        self._plan = plan
        self._started_wall = time.time()
        self._started = time.monotonic()
        self._publish("running", force=True)

    def row_finished(self, result: Result) -> None:
        if result.status == "ok":
            self._ok += 1
            self._images += len(result.generation.images) if result.generation else 0
        else:
            self._failed += 1
        self._publish("running")

    def endpoints(self, views: list[EndpointView]) -> None:
        self._views = views
        self._publish("running")

    def finished(self, summary: RunSummary) -> None:
        self._ok, self._failed, self._images = summary.ok, summary.failed, summary.images
        self._views = list(summary.endpoints)
        state = (
            "interrupted"
            if summary.interrupted
            else "stopped"
            if summary.stopped_reason
            else "finished"
        )
        self._publish(state, force=True, reason=summary.stopped_reason)

    def _publish(self, state: str, *, force: bool = False, reason: str | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._every:
            return
        self._last = now
        try:
            snapshot = self._snapshot(state, now - self._started, reason)
            write_atomic(self._path, json.dumps(snapshot, ensure_ascii=False, indent=1).encode())
        except OSError as error:  # a status file must never stop the run
            log.warning("cannot write %s: %s", self._path, error)

    def _snapshot(self, state: str, elapsed: float, reason: str | None) -> dict[str, Any]:
        plan = self._plan
        to_send = (plan.to_go + plan.to_retry) if plan else 0
        finished = self._ok + self._failed
        to_go = max(to_send - finished, 0)
        eta = elapsed / finished * to_go if finished and to_go and state == "running" else None
        return {
            "state": state,
            "reason": reason,
            "pid": os.getpid(),
            "started_at": self._started_wall,
            "updated_at": time.time(),
            "elapsed_s": round(elapsed, 3),
            "total": plan.total if plan else 0,
            "done_before": plan.done if plan else 0,
            "to_send": to_send,
            "ok": self._ok,
            "failed": self._failed,
            "images": self._images,
            "to_go": to_go,
            "images_per_s": round(self._images / elapsed, 3) if elapsed > 0 else 0.0,
            "eta_s": None if eta is None else round(eta, 1),
            "endpoints": [_endpoint(view, elapsed) for view in self._views],
            "simulators": sorted(
                {*(plan.simulators if plan else ()), *(v.name for v in self._views if v.simulator)}
            ),
        }


def _endpoint(view: EndpointView, elapsed: float) -> dict[str, Any]:
    return {
        "name": view.name,
        "state": "up" if view.up else "down",
        "down_s": None if view.down_s is None else round(view.down_s, 1),
        "checkpoint": view.loaded,
        "vae": view.vae,
        "running": view.running,
        "done": view.done,
        "failed": view.failed,
        "images": view.images,
        "images_per_s": round(view.images / elapsed, 3) if elapsed > 0 else 0.0,
        "switches": view.switches,
        "simulator": view.simulator,
    }


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one (no fsync: derived files)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
    except OSError:  # a full disk: leave no half file behind
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


@dataclass(frozen=True, slots=True)
class RunStatus:
    """What `batchgen status` shows: the status file as published, plus whether it is stale."""

    out_dir: Path
    state: str  # running, finished, interrupted, stopped, dead, stale, unknown
    note: str  # one line saying what the state means
    ok: int
    failed: int
    to_go: int | None
    total: int | None
    images: int
    images_per_s: float | None
    eta_s: float | None
    age_s: float | None  # seconds since the run last published
    endpoints: tuple[Mapping[str, Any], ...] = ()
    simulators: tuple[str, ...] = ()  # the run's endpoints that are batchgen's simulator
    published: Mapping[str, Any] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.state == "running"

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "state": self.state,
            "note": self.note,
            "ok": self.ok,
            "failed": self.failed,
            "to_go": self.to_go,
            "total": self.total,
            "images": self.images,
            "images_per_s": self.images_per_s,
            "eta_s": self.eta_s,
            "age_s": None if self.age_s is None else round(self.age_s, 1),
            "endpoints": [dict(view) for view in self.endpoints],
            "simulator": bool(self.simulators),
            "simulators": list(self.simulators),
        }

    def lines(self) -> list[str]:
        """The human form, a few lines."""
        head = f"{self.out_dir}: {self.state}"
        lines = [f"{head} ({self.note})" if self.note else head]
        if self.simulators:
            lines.append(simulator_note(self.simulators))
        to_go = "?" if self.to_go is None else f"{self.to_go:,}"
        rate = "?" if self.images_per_s is None else f"{self.images_per_s:.2f}"
        eta = "--" if self.eta_s is None else duration(self.eta_s)
        lines.append(
            f"rows: {self.ok:,} done, {self.failed:,} failed, {to_go} to go; "
            f"{self.images:,} images ({rate}/s); ETA {eta}"
        )
        for view in self.endpoints:
            state = view.get("state", "?")
            if view.get("down_s") is not None:
                state += f" {duration(float(view['down_s']))}"
            lines.append(
                f"  {view.get('name')}: {state}, checkpoint {view.get('checkpoint') or '?'}, "
                f"{view.get('running', 0)} running, {view.get('done', 0):,} done, "
                f"{view.get('failed', 0):,} failed, {float(view.get('images_per_s') or 0):.2f} "
                f"images/s, {counted(int(view.get('switches', 0)), 'switch', 'switches')}"
            )
        return lines


def read_status(out_dir: Path, stale_after_s: float = STALE_AFTER_S) -> RunStatus | None:
    """The folder's status, or None when it holds neither a status file nor a manifest."""
    path = out_dir / STATUS_FILE
    try:
        published = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        published = None
    if not isinstance(published, dict):
        return _from_manifest(out_dir)
    state = str(published.get("state", "unknown"))
    age = max(time.time() - float(published.get("updated_at") or 0), 0.0)
    note = str(published.get("reason") or "")
    if state == "running":
        if sys.platform != "win32" and not folder_in_use(out_dir):  # no run lock on Windows
            state = "dead"
            note = (
                f"the run's lock is free: it died or was killed {duration(age)} ago; "
                "run the same command again to resume"
            )
        elif age > stale_after_s:
            state = "stale"
            note = f"no update for {duration(age)}: the run may be hung"
    live = state == "running"
    return RunStatus(
        out_dir=out_dir,
        state=state,
        note=note,
        ok=int(published.get("ok", 0)),
        failed=int(published.get("failed", 0)),
        to_go=int(published.get("to_go", 0)),
        total=int(published.get("total", 0)),
        images=int(published.get("images", 0)),
        images_per_s=float(published.get("images_per_s") or 0.0),
        eta_s=published.get("eta_s") if live else None,
        age_s=age,
        endpoints=tuple(published.get("endpoints") or ()),
        simulators=tuple(str(name) for name in published.get("simulators") or ()),
        published=published,
    )


def _from_manifest(out_dir: Path) -> RunStatus | None:
    """A folder from before status files, or one whose run has not started yet."""
    if not (out_dir / MANIFEST).exists():
        return None
    # Each key's latest ok, images and simulator endpoint: not its record (a manifest is large).
    latest: dict[str, tuple[bool, int, str | None]] = {}
    for _, _, record in scan(out_dir / MANIFEST):
        if record is not None:
            made = len(record.images) if record.ok else 0
            latest[record.key] = (record.ok, made, record.endpoint if record.simulator else None)
    ok = sum(1 for done, _, _ in latest.values() if done)
    simulators = sorted({endpoint for _, _, endpoint in latest.values() if endpoint is not None})
    return RunStatus(
        out_dir=out_dir,
        state="running" if folder_in_use(out_dir) else "unknown",
        note=f"no {STATUS_FILE}: counts from the manifest",
        ok=ok,
        failed=len(latest) - ok,
        to_go=None,
        total=None,
        images=sum(made for _, made, _ in latest.values()),
        images_per_s=None,
        eta_s=None,
        age_s=None,
        simulators=tuple(simulators),
    )
