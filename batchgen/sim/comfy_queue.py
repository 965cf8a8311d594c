"""The ComfyUI flavor's prompt queue: one prompt at a time, FIFO; history, files, events.

A prompt's time follows the A1111 flavor's model (ms_per_step x steps x pixels / speed, plus
switch_s when the checkpoint changes); its images are written to memory and served by /view;
websocket events go to the socket of the client that queued it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket as _socket
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .comfy_nodes import plan_run
from .config import SimConfig
from .images import make_encoder, text_chunk
from .stats import SimStats

HISTORY_CAP = 10_000


@dataclass(slots=True)
class Prompt:
    """One queued prompt, as /queue and /history show it."""

    number: int
    prompt_id: str
    graph: dict[str, Any]
    extra: dict[str, Any]
    outputs: list[str]
    client_id: str | None
    verdict: str

    def queue_form(self) -> list[Any]:
        return [self.number, self.prompt_id, self.graph, self.extra, self.outputs]


class PromptQueue:
    """What one ComfyUI process holds between requests: the queue, history, files, sockets."""

    def __init__(self, config: SimConfig, stats: SimStats) -> None:
        self.config = config
        self.stats = stats
        self._encoder = make_encoder(config.encoder)
        self.pending: deque[Prompt] = deque()
        self.running: Prompt | None = None
        self.history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.outputs: dict[tuple[str, str], bytes] = {}  # (subfolder, filename) -> PNG
        self.inputs: dict[str, bytes] = {}  # "subfolder/name" -> uploaded bytes
        self.loaded: str | None = None
        self.sockets: dict[str, set[Outbox]] = {}
        self._saved = 0
        self._wake = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._stopping = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    def stop(self) -> None:
        """Shutdown or death: the running prompt is dropped, a hung one released."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.cancel()

    def add(self, prompt: Prompt) -> None:
        self.pending.append(prompt)
        self._wake.set()
        self.broadcast("status", self.status())

    def status(self) -> dict[str, Any]:
        remaining = len(self.pending) + (1 if self.running else 0)
        return {"exec_info": {"queue_remaining": remaining}}

    def delete(self, prompt_ids: set[str]) -> None:
        """Pending prompts only, as ComfyUI does."""
        self.pending = deque(p for p in self.pending if p.prompt_id not in prompt_ids)

    def interrupt(self, prompt_id: str | None) -> None:
        """The running prompt, if it is `prompt_id` (or whatever runs, for None)."""
        if self.running is not None and prompt_id in (None, self.running.prompt_id):
            self._interrupt.set()

    async def _work(self) -> None:
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            item = self.pending.popleft()
            self.running = item
            self._interrupt.clear()
            try:
                await self._execute(item)
            finally:
                self.running = None
            self.broadcast("status", self.status())

    async def _execute(self, item: Prompt) -> None:
        started = int(time.time() * 1000)
        messages: list[list[Any]] = []

        def say(event: str, data: dict[str, Any], keep: bool = True) -> None:
            data = {**data, "prompt_id": item.prompt_id}
            if keep:
                messages.append([event, {**data, "timestamp": int(time.time() * 1000)}])
            self.send(item.client_id, event, data)

        say("execution_start", {})
        say("execution_cached", {"nodes": []})
        plan = plan_run(item.graph, item.outputs, self.inputs)
        outputs: dict[str, Any] = {}
        status = "success"
        try:
            for name in plan.checkpoints:
                if name != self.loaded:
                    await self._sleep(self.config.switch_s)
                    self.loaded = name
                    self.stats.switches += 1
                    self.stats.per_checkpoint[name] += 1
            sampler = next(
                (i for i, n in item.graph.items() if n.get("class_type") == "KSampler"), None
            )
            if item.verdict == "hang":
                await self._stopping.wait()
                return
            say("executing", {"node": sampler}, keep=False)
            seconds = self.config.ms_per_step / 1000 * plan.units / self.config.speed
            if not await self._sleep(seconds):
                say(
                    "execution_interrupted",
                    {"node_id": sampler, "node_type": "KSampler", "executed": []},
                )
                status = "error"
            elif item.verdict == "fail":
                say(
                    "execution_error",
                    {
                        "node_id": sampler,
                        "node_type": "KSampler",
                        "executed": [],
                        "exception_message": "Allocation on device would exceed allowed memory. "
                        "(out of memory)",
                        "exception_type": "torch.OutOfMemoryError",
                        "traceback": [],
                        "current_inputs": {},
                        "current_outputs": {},
                    },
                )
                status = "error"
            else:
                self.stats.generations += 1
                prompt_text = json.dumps(item.graph)
                for node_id, (prefix, pictures) in plan.saves.items():
                    images = []
                    for picture in pictures:
                        self._saved += 1
                        name = f"{prefix}_{self._saved:05d}_.png"
                        self.outputs[("", name)] = self._png(
                            picture.digest, picture.width, picture.height, prompt_text, item.extra
                        )
                        images.append({"filename": name, "subfolder": "", "type": "output"})
                        self.stats.images += 1
                    outputs[node_id] = {"images": images}
                    say(
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": outputs[node_id]},
                        keep=False,
                    )
                say("execution_success", {})
        except asyncio.CancelledError:
            raise
        finally:
            if not self._stopping.is_set():
                self._remember(item, outputs, status, messages, started)
                self.send(item.client_id, "executing", {"node": None, "prompt_id": item.prompt_id})

    def _png(
        self, digest: bytes, width: int, height: int, prompt: str, extra: dict[str, Any]
    ) -> bytes:
        data = self._encoder.encode(digest, width, height, None)
        chunks = text_chunk("prompt", prompt)
        workflow = (
            (extra.get("extra_pnginfo") or {}).get("workflow")
            if isinstance(extra.get("extra_pnginfo"), dict)
            else None
        )
        if workflow is not None:
            chunks += text_chunk("workflow", json.dumps(workflow))
        # after IHDR: signature (8) + IHDR chunk (25)
        return data[:33] + chunks + data[33:]

    def _remember(
        self,
        item: Prompt,
        outputs: dict[str, Any],
        status: str,
        messages: list[list[Any]],
        started: int,
    ) -> None:
        self.history.pop(item.prompt_id, None)  # the same id run again: the later run
        self.history[item.prompt_id] = {
            "prompt": item.queue_form(),
            "outputs": outputs,
            "status": {
                "status_str": status,
                "completed": status == "success",
                "messages": messages,
            },
            "meta": {node: {"node_id": node, "display_node": node} for node in outputs},
        }
        while len(self.history) > HISTORY_CAP:
            self.history.popitem(last=False)

    async def _sleep(self, seconds: float) -> bool:
        """Work for `seconds`; False if interrupted meanwhile."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return not self._interrupt.is_set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._interrupt.wait(), seconds)
        return not self._interrupt.is_set()

    def send(self, client_id: str | None, event: str, data: dict[str, Any]) -> None:
        if client_id is None:
            return
        for outbox in list(self.sockets.get(client_id, ())):
            outbox.post(json.dumps({"type": event, "data": data}))

    def broadcast(self, event: str, data: dict[str, Any]) -> None:
        for client_id in list(self.sockets):
            self.send(client_id, event, {"status": data})


class Outbox:
    """One websocket's outgoing events, in order. Events made in the same loop tick leave in
    one TCP segment (TCP_CORK), so a client is woken once per burst, not once per event."""

    def __init__(self, socket: web.WebSocketResponse, transport: asyncio.BaseTransport | None):
        self.socket = socket
        raw = transport.get_extra_info("socket") if transport is not None else None
        self._raw = raw if raw is not None and hasattr(_socket, "TCP_CORK") else None
        self._waiting: list[str] = []
        self._flushing: asyncio.Task[None] | None = None

    def post(self, text: str) -> None:
        if self.socket.closed:
            return
        self._waiting.append(text)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
            self._flushing.add_done_callback(_quiet)

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            self._cork(True)
            try:
                for text in batch:
                    await self.socket.send_str(text)
            finally:
                self._cork(False)

    def _cork(self, on: bool) -> None:
        if self._raw is not None:
            with contextlib.suppress(OSError):
                self._raw.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_CORK, int(on))


def _quiet(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
