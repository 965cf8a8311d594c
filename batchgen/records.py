"""The typed, frozen values passed between stages: sheet -> payload -> runner -> store, report."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from batchgen.words import counted

Route = Literal["txt2img", "img2img"]
Status = Literal["ok", "failed"]
Flavor = Literal["a1111", "forge"]  # which web UI answers /sdapi/v1: the body differs a little


@dataclass(frozen=True, slots=True)
class Expansion:
    """Which of a row's expansions a SheetRow or Task is: what was written, what it became."""

    index: int  # 0-based, in the order the row expands
    count: int  # how many the row expands into
    templates: Mapping[str, Any]  # column -> the cell as written, for each column that expanded
    values: Mapping[str, Any]  # column -> this expansion's value (the prompt as sent, ...)


@dataclass(frozen=True, slots=True)
class SheetRow:
    """One non-blank row of the sheet as read: header -> raw cell value (blank cells absent)."""

    row: int  # the row number the spreadsheet program shows; the header is row 1
    cells: Mapping[str, Any]
    expansion: Expansion | None = None  # set when a template or sweep cell made this row

    @property
    def slot(self) -> int:
        """Where its outcome goes in the results sheet: the row number, or for an expansion a
        number no plain row has (row << 32 | index)."""
        return self.row if self.expansion is None else self.row << 32 | self.expansion.index


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
    expansion: Expansion | None = None  # one of a row's expansions (templates, sweeps)


@dataclass(frozen=True, slots=True)
class WireRequest:
    """A row's request to an A1111/Forge endpoint, as sent: the route and the JSON body, its
    images as base64."""

    route: Route
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class GraphRequest:
    """A row's prompt to a ComfyUI endpoint: the graph to post and the images to upload first.

    `graph` holds an ImageRef where the uploaded image's name goes; the rest is the manifest's.
    """

    prompt_id: str  # from the row's key: the same row asks for the same id in every run
    graph: Mapping[str, Any]
    images: tuple[ImageRef, ...]
    seed: int | None
    model: str | None  # the checkpoint the graph loads
    workflow_sha256: str
    bound: Mapping[str, Any]  # field -> the value bound into the graph (an image's sha256)


Request = WireRequest | GraphRequest


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
    simulated: bool = False  # made by batchgen's simulator: placeholders, not a model's images
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
    simulated: bool = False  # sent to batchgen's simulator (the last endpoint tried)


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What the run will do, said before it starts."""

    total: int
    done: int  # already ok in the output folder
    to_retry: int  # failed last time, sent again
    to_go: int  # never finished
    skipped: int  # not sent this time (--retry-failed leaves new rows for later)
    simulated: int = 0  # of `done`: made by a simulator
    simulators: tuple[str, ...] = ()  # this run's endpoints that are simulators
    remade: int = 0  # rows a simulator made that this run sends to real servers
    sheet_rows: int = 0  # rows of the sheet; fewer than `total` when rows expand
    images: int = 0  # images the requests ask for (batch_size x n_iter each)
    expanded: tuple[RowCount, ...] = ()  # the rows that expand, the first EXPANDED_SHOWN of them
    expanded_rows: int = 0  # how many rows expand in all

    def describe(self) -> str:
        head = counted(self.total, "row")
        if self.expanded_rows:
            head = (
                f"{counted(self.total, 'request')} ({counted(self.images, 'image')}) "
                f"from {counted(self.sheet_rows, 'row')}, {self.expanded_rows:,} of them expanding"
            )
        return (
            f"{head}: {self.done:,} done, {self.to_retry:,} failed to retry, "
            f"{self.to_go:,} to go" + (f", {self.skipped:,} left for later" if self.skipped else "")
        )

    def expansion_lines(self) -> list[str]:
        """One line per expanding row (the first EXPANDED_SHOWN), for --dry-run and check."""
        lines = [f"row {c.row}: {counted(c.requests, 'request')}" for c in self.expanded]
        if self.expanded_rows > len(self.expanded):
            lines.append(f"... and {self.expanded_rows - len(self.expanded):,} more rows expand")
        return lines

    def on(self, simulators: Sequence[str], *, retry_failed: bool) -> RunPlan:
        """The plan for these endpoints: with none a simulator, rows a simulator made are not
        done (placeholder images must never pass for a real server's)."""
        if simulators or not self.simulated:
            return dataclasses.replace(self, simulators=tuple(simulators))
        moved = self.simulated
        return dataclasses.replace(
            self,
            done=self.done - moved,
            to_go=self.to_go + (0 if retry_failed else moved),
            skipped=self.skipped + (moved if retry_failed else 0),
            simulated=0,
            remade=moved,
        )

    def notes(self) -> list[str]:
        """What the user must not miss about where this run's images come from."""
        lines = []
        if self.simulators:
            lines.append(simulator_note(self.simulators))
        if self.remade:
            lines.append(
                f"{counted(self.remade, 'row')} in this folder "
                f"{'was' if self.remade == 1 else 'were'} made by a simulator; this run's "
                "endpoints are real servers, so they are not counted as done"
            )
        return lines


def simulator_note(names: Sequence[str]) -> str:
    """The plain warning every run on a simulator shows, in progress, summary and run log."""
    return (
        f"SIMULATOR: {', '.join(names)} is batchgen's built-in simulator; its images are "
        "placeholders, not a model's (for real images: --endpoint http://host:7860)"
    )


EXPANDED_SHOWN = 1000  # rows listed by expansion_lines; the count of the others is kept


@dataclass(frozen=True, slots=True)
class RowCount:
    """How many requests one sheet row expands into."""

    row: int
    requests: int


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
    simulator: bool = False  # batchgen's simulator, not a real web UI


@dataclass(frozen=True, slots=True)
class FailedRow:
    """A row that failed in this run, for the summary."""

    row: int  # spreadsheet row number, header = 1
    error: str


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
    failed_rows: tuple[FailedRow, ...] = ()  # the first ones, in the order they failed

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
