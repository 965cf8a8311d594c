"""The typed, frozen values passed between stages: sheet -> payload -> runner -> store, report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Route = Literal["txt2img", "img2img"]
Status = Literal["ok", "failed"]


@dataclass(frozen=True, slots=True)
class SheetRow:
    """One non-blank row of the sheet as read: header -> raw cell value (blank cells absent)."""

    row: int  # the row number the spreadsheet program shows; the header is row 1
    cells: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image file named by a cell or the job; read and base64-encoded only when sent."""

    path: Path
    sha256: str

    def manifest_form(self, base: Path) -> dict[str, str]:
        """What the manifest records instead of the base64 blob."""
        try:
            shown = str(self.path.relative_to(base))
        except ValueError:
            shown = str(self.path)
        return {"path": shown, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class Task:
    """One row turned into a request. `body` may hold ImageRef values where images go."""

    row: int
    key: str  # stable identity for resume: content hash + occurrence among identical rows
    route: Route
    body: Mapping[str, Any]
    checkpoint: str | None  # the checkpoint the row asks for, if any (scheduling affinity)
    metadata: Mapping[str, Any] = field(default_factory=dict)  # columns that are not sent


@dataclass(frozen=True, slots=True)
class Generation:
    """What one successful response held, decoded."""

    images: tuple[bytes, ...]  # generated images in seed order (a grid, if any, dropped)
    extras: tuple[bytes, ...]  # images past the generated ones: ControlNet detected maps, masks
    seeds: tuple[int, ...]  # the real seed of each generated image, from info
    model: str | None
    model_hash: str | None
    vae: str | None
    version: str | None
    info: Mapping[str, Any]
    # Manifest fields a backend adds (ComfyUI: backend, workflow_sha256, bound, prompt_id).
    provenance: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Result:
    """How one row ended. A failed row is data, not an exception."""

    task: Task
    status: Status
    endpoint: str  # display name: never carries credentials
    attempts: int
    error: str | None
    generation: Generation | None
    started_at: float  # unix time of the first attempt
    duration_s: float


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What the run will do, said before it starts."""

    total: int
    done: int  # already ok in the output folder
    to_retry: int  # failed last time, sent again
    to_go: int  # never finished
    skipped: int  # not sent this time (--retry-failed leaves new rows for later)

    def describe(self) -> str:
        return (
            f"{self.total:,} rows: {self.done:,} done, {self.to_retry:,} failed to retry, "
            f"{self.to_go:,} to go" + (f", {self.skipped:,} left for later" if self.skipped else "")
        )


@dataclass(frozen=True, slots=True)
class EndpointView:
    """One endpoint's figures, for progress and the summary."""

    name: str
    up: bool
    running: int
    done: int
    failed: int
    images: int
    switches: int
    busy_s: float
    loaded: str | None = None  # the checkpoint in memory, as last seen
    vae: str | None = None
    down_s: float | None = None  # how long it has been out of rotation


@dataclass(frozen=True, slots=True)
class RunSummary:
    """How a run ended."""

    out_dir: Path
    plan: RunPlan
    ok: int
    failed: int
    images: int
    elapsed_s: float
    interrupted: bool
    endpoints: tuple[EndpointView, ...]
    outputs: tuple[Path, ...]
    stopped_reason: str | None = None

    @property
    def not_run(self) -> int:
        return self.plan.to_go + self.plan.to_retry - self.ok - self.failed

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.failed == 0 and self.not_run == 0 else 1


class Reporter(Protocol):
    """What the runner tells the outside while it works."""

    def started(self, plan: RunPlan, out_dir: Path) -> None: ...
    def row_finished(self, result: Result) -> None: ...
    def endpoints(self, views: list[EndpointView]) -> None: ...
    def finished(self, summary: RunSummary) -> None: ...
