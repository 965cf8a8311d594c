"""The ComfyUI flavor: /prompt, /history, /view, /ws, /object_info, /upload/image, /queue, ...

Follows comfy-api.md (ComfyUI v0.7.0): one prompt runs at a time in FIFO order, history is kept
in memory (capped), a client's prompt_id is taken as is with no duplicate check (or ignored, with
`accept_prompt_id = false`), the last checkpoint stays loaded. Faults are drawn per POST /prompt:
`fail` ends the prompt with an execution_error, `drop` queues it but cuts the answer, `hang`
never finishes it, `die` kills the server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hmac
import json
import logging
import socket as _socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

from .comfy_nodes import (
    Checked,
    PromptRefused,
    node_classes,
    object_info,
    plan_run,
    validate_prompt,
)
from .config import SimConfig
from .faults import FaultPlan
from .images import make_encoder, text_chunk
from .stats import SimStats

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HISTORY_CAP = 10_000
RUNTIME_KNOBS = frozenset(
    {
        "fail_rate",
        "drop_rate",
        "hang_rate",
        "die_after",
        "unavailable_s",
        "fault_seed",
        "ms_per_step",
        "switch_s",
        "speed",
    }
)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=lambda o: json.dumps(o))


@dataclass(slots=True)
class _Item:
    number: int
    prompt_id: str
    graph: dict[str, Any]
    extra: dict[str, Any]
    outputs: list[str]
    client_id: str | None
    verdict: str

    def queue_form(self) -> list[Any]:
        return [self.number, self.prompt_id, self.graph, self.extra, self.outputs]


class ComfyApp:
    """Routes over an in-memory queue and history; the same knobs as the A1111 flavor."""

    def __init__(self, config: SimConfig, stats: SimStats, on_die: Callable[[], None]) -> None:
        self.config = config
        self.stats = stats
        self.faults = FaultPlan(config.fault_seed)
        self.started = time.monotonic()
        self.dead = False
        self._on_die = on_die
        self._encoder = make_encoder(config.encoder)
        self._credentials = (
            dict(c.split(":", 1) for c in config.api_auth.split(",")) if config.api_auth else {}
        )
        self._number = 0
        self._pending: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._running: _Item | None = None
        self._interrupt = asyncio.Event()
        self._stopping = asyncio.Event()
        self.history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.outputs: dict[tuple[str, str], bytes] = {}  # (subfolder, filename) -> PNG
        self.inputs: dict[str, bytes] = {}  # "subfolder/name" -> uploaded bytes
        self._saved = 0
        self.posted: list[str] = []  # the prompt id of every prompt queued, in order
        self.loaded: str | None = None
        self._sockets: dict[str, set[_Outbox]] = {}
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.app = web.Application(middlewares=[self._middleware], client_max_size=1 << 30)
        self.app.on_startup.append(self._start_worker)
        self._add_routes()

    def reset_clock(self) -> None:
        self.started = time.monotonic()

    def stopping(self) -> None:
        """Shutdown or death: stop the worker, release hung prompts and open sockets."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.cancel()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    def apply_config(self, config: SimConfig) -> None:
        changed = [
            f.name
            for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(self.config, f.name)
        ]
        bad = sorted(set(changed) - RUNTIME_KNOBS)
        if bad:
            raise ValueError(f"not changeable at run time: {', '.join(bad)}")
        if "fault_seed" in changed:
            self.faults.reseed(config.fault_seed)
        self.config = config

    # ----- middleware -----

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.dead:
            return _abort(request)
        path = request.path
        if not path.startswith("/_sim/"):
            self.stats.requests[_route_name(path)] += 1
            if time.monotonic() - self.started < self.config.unavailable_s:
                return web.Response(status=503, text="Service Unavailable")
            if self._credentials and not self._authorized(request.headers.get("Authorization")):
                return web.Response(
                    status=401, text="Unauthorized", headers={"WWW-Authenticate": "Basic"}
                )
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            return await handler(request)
        finally:
            self._tasks.discard(task)

    def _authorized(self, header: str | None) -> bool:
        # ComfyUI has no auth; a reverse proxy in front of it does basic auth.
        scheme, _, param = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(param).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError, binascii.Error):
            return False
        expected = self._credentials.get(user)
        return expected is not None and hmac.compare_digest(password, expected)

    # ----- routes -----

    def _add_routes(self) -> None:
        r = self.app.router
        r.add_post("/prompt", self._post_prompt)
        r.add_get("/prompt", self._get_prompt)
        r.add_get("/history", self._get_history)
        r.add_get("/history/{prompt_id}", self._get_history_one)
        r.add_get("/view", self._view)
        r.add_get("/ws", self._ws)
        r.add_get("/object_info", self._object_info)
        r.add_get("/object_info/{node_class}", self._object_info_one)
        r.add_post("/upload/image", self._upload)
        r.add_get("/queue", self._get_queue)
        r.add_post("/queue", self._post_queue)
        r.add_post("/interrupt", self._post_interrupt)
        r.add_get("/system_stats", self._system_stats)
        r.add_get("/_sim/stats", self._stats)
        r.add_post("/_sim/config", self._set_config)

    def _classes(self) -> Any:
        return node_classes(self.config, list(self.inputs))

    async def _post_prompt(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return web.Response(status=500, text="500 Internal Server Error")
        if not isinstance(body, dict):
            body = {}
        self._number += 1  # counts rejected prompts too
        number = self._number
        graph = body.get("prompt")
        self.stats.record_body("prompt", graph if isinstance(graph, dict) else {"_raw": graph})
        given = body.get("prompt_id")
        prompt_id = (
            given if self.config.accept_prompt_id and isinstance(given, str) else str(uuid.uuid4())
        )
        try:
            checked: Checked = validate_prompt(graph, self._classes())
        except PromptRefused as refused:
            return _json(refused.body, status=400)
        verdict = self.faults.draw(self.config)
        if verdict != "ok":
            self.stats.faults[verdict] += 1
        if verdict == "die":
            self.dead = True
            self._on_die()
            return _abort(request)
        assert isinstance(graph, dict)
        extra_data = body.get("extra_data")
        extra: dict[str, Any] = extra_data if isinstance(extra_data, dict) else {}
        client_id = body.get("client_id") if isinstance(body.get("client_id"), str) else None
        item = _Item(number, prompt_id, graph, extra, checked.outputs, client_id, verdict)
        self.posted.append(prompt_id)
        self._pending.append(item)
        self._wake.set()
        self._broadcast("status", self._status())
        if verdict == "drop":  # queued, but the answer never arrives
            return _abort(request)
        return _json({"prompt_id": prompt_id, "number": number, "node_errors": checked.node_errors})

    async def _get_prompt(self, request: web.Request) -> web.StreamResponse:
        return _json(self._status())

    def _status(self) -> dict[str, Any]:
        remaining = len(self._pending) + (1 if self._running else 0)
        return {"exec_info": {"queue_remaining": remaining}}

    async def _get_history(self, request: web.Request) -> web.StreamResponse:
        items = list(self.history.items())
        limit = request.query.get("max_items")
        if limit and limit.isdigit():
            items = items[-int(limit) :]
        return _json(dict(items))

    async def _get_history_one(self, request: web.Request) -> web.StreamResponse:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return _json({prompt_id: entry} if entry is not None else {})

    async def _view(self, request: web.Request) -> web.StreamResponse:
        key = (request.query.get("subfolder", ""), request.query.get("filename", ""))
        kind = request.query.get("type", "output")
        data = (
            self.outputs.get(key)
            if kind == "output"
            else self.inputs.get("/".join(filter(None, key)))
        )
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        outbox = _Outbox(socket, request.transport)
        self._sockets.setdefault(client_id, set()).add(outbox)
        try:
            await socket.send_json(
                {"type": "status", "data": {"status": self._status(), "sid": client_id}}
            )
            async for message in socket:
                if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self._sockets.get(client_id, set()).discard(outbox)
        return socket

    async def _object_info(self, request: web.Request) -> web.StreamResponse:
        return _json({name: object_info(cls) for name, cls in self._classes().items()})

    async def _object_info_one(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["node_class"]
        cls = self._classes().get(name)
        return _json({name: object_info(cls)} if cls is not None else {})

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        fields: dict[str, Any] = {}
        data: bytes | None = None
        filename = ""
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "image":
                filename = part.filename or "image.png"
                data = await part.read()
            elif part.name:
                fields[part.name] = (await part.read()).decode()
        if data is None:
            return web.Response(status=400)
        subfolder = fields.get("subfolder", "").strip("/")
        overwrite = fields.get("overwrite", "").lower() == "true"
        name = filename.replace("\\", "/").rsplit("/", 1)[-1]
        stem, dot, suffix = name.rpartition(".")
        counter = 1
        while True:
            key = f"{subfolder}/{name}" if subfolder else name
            existing = self.inputs.get(key)
            if existing is None or overwrite or existing == data:
                break
            name = f"{stem} ({counter}){dot}{suffix}" if dot else f"{name} ({counter})"
            counter += 1
        self.inputs[key] = data
        return _json({"name": name, "subfolder": subfolder, "type": "input"})

    async def _get_queue(self, request: web.Request) -> web.StreamResponse:
        return _json(
            {
                "queue_running": [self._running.queue_form()] if self._running else [],
                "queue_pending": [item.queue_form() for item in self._pending],
            }
        )

    async def _post_queue(self, request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(ValueError):
            body = await request.json()
            if isinstance(body, dict):
                if body.get("clear"):
                    self._pending.clear()
                delete = set(body.get("delete") or ())
                if delete:
                    self._pending = deque(i for i in self._pending if i.prompt_id not in delete)
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.StreamResponse:
        body: Any = None
        with contextlib.suppress(ValueError):
            body = await request.json()
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        if self._running is not None and (wanted is None or wanted == self._running.prompt_id):
            self._interrupt.set()
        return web.Response(status=200)

    async def _system_stats(self, request: web.Request) -> web.StreamResponse:
        return _json(
            {
                "system": {
                    "os": "posix",
                    "comfyui_version": self.config.server_version,
                    "python_version": "3.12.3 (main)",
                    "pytorch_version": "2.5.1+cu124",
                    "embedded_python": False,
                    "argv": ["main.py", "--listen", "127.0.0.1"],
                    "ram_total": 32_000_000_000,
                    "ram_free": 24_000_000_000,
                },
                "devices": [
                    {
                        "name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": 24_000_000_000,
                        "vram_free": 16_000_000_000,
                    }
                ],
            }
        )

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        out = self.stats.as_json()
        out["loaded"] = self.loaded
        out["config"] = dataclasses.asdict(self.config)
        out["posted"] = self.posted
        out["uploaded"] = sorted(self.inputs)
        return _json(out)

    async def _set_config(self, request: web.Request) -> web.StreamResponse:
        try:
            values = await request.json()
            if not isinstance(values, dict):
                raise ValueError("expected a JSON object")
            self.apply_config(self.config.replace(values))
        except ValueError as exc:
            return _json({"detail": str(exc)}, status=400)
        return _json(dataclasses.asdict(self.config))

    # ----- execution -----

    async def _start_worker(self, app: web.Application) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            item = self._pending.popleft()
            self._running = item
            self._interrupt.clear()
            try:
                await self._execute(item)
            finally:
                self._running = None
            self._broadcast("status", self._status())

    async def _execute(self, item: _Item) -> None:
        started = int(time.time() * 1000)
        messages: list[list[Any]] = []

        def say(event: str, data: dict[str, Any], keep: bool = True) -> None:
            data = {**data, "prompt_id": item.prompt_id}
            if keep:
                messages.append([event, {**data, "timestamp": int(time.time() * 1000)}])
            self._send(item.client_id, event, data)

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
                self._send(item.client_id, "executing", {"node": None, "prompt_id": item.prompt_id})

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
        item: _Item,
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

    def _send(self, client_id: str | None, event: str, data: dict[str, Any]) -> None:
        if client_id is None:
            return
        for outbox in list(self._sockets.get(client_id, ())):
            outbox.post(json.dumps({"type": event, "data": data}))

    def _broadcast(self, event: str, data: dict[str, Any]) -> None:
        for client_id in list(self._sockets):
            self._send(client_id, event, {"status": data})


class _Outbox:
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


def _route_name(path: str) -> str:
    for prefix in ("/history/", "/object_info/"):
        if path.startswith(prefix):
            return prefix + "{id}"
    return path


def _abort(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=499)
