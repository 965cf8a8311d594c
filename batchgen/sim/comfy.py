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
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

from .app import SIMULATOR_HEADER, _abort, change_at_run_time, set_config
from .comfy_nodes import (
    Checked,
    PromptRefused,
    node_classes,
    object_info,
    validate_prompt,
)
from .comfy_queue import Outbox, Prompt, PromptQueue
from .config import SimConfig
from .faults import FaultPlan
from .stats import SimStats

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=lambda o: json.dumps(o))


class ComfyApp:
    """Routes over an in-memory queue and history; the same knobs as the A1111 flavor."""

    def __init__(self, config: SimConfig, stats: SimStats, on_die: Callable[[], None]) -> None:
        self.config = config
        self.stats = stats
        self.faults = FaultPlan(config.fault_seed)
        self.started = time.monotonic()
        self.dead = False
        self._on_die = on_die
        self._credentials = (
            dict(c.split(":", 1) for c in config.api_auth.split(",")) if config.api_auth else {}
        )
        self._number = 0
        self.posted: list[str] = []  # the prompt id of every prompt queued, in order
        self.queue = PromptQueue(config, stats)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.app = web.Application(middlewares=[self._middleware], client_max_size=1 << 30)
        self.app.on_startup.append(self._start_queue)
        self._add_routes()

    def reset_clock(self) -> None:
        self.started = time.monotonic()

    def stopping(self) -> None:
        """Shutdown or death: stop the worker, release hung prompts and open sockets."""
        self.queue.stop()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    def apply_config(self, config: SimConfig) -> None:
        change_at_run_time(self.config, config, self.faults)
        self.config = config
        self.queue.config = config

    async def _start_queue(self, app: web.Application) -> None:
        self.queue.start()

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
            response = await handler(request)
        finally:
            self._tasks.discard(task)
        # No real ComfyUI sends this: a client can tell a simulator's placeholder images apart.
        if self.config.marked and not response.prepared:  # a websocket has sent its headers
            response.headers[SIMULATOR_HEADER] = "comfy"
        return response

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
        return node_classes(self.config, list(self.queue.inputs))

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
        item = Prompt(number, prompt_id, graph, extra, checked.outputs, client_id, verdict)
        self.posted.append(prompt_id)
        self.queue.add(item)
        if verdict == "drop":  # queued, but the answer never arrives
            return _abort(request)
        return _json({"prompt_id": prompt_id, "number": number, "node_errors": checked.node_errors})

    async def _get_prompt(self, request: web.Request) -> web.StreamResponse:
        return _json(self.queue.status())

    async def _get_history(self, request: web.Request) -> web.StreamResponse:
        items = list(self.queue.history.items())
        limit = request.query.get("max_items")
        if limit and limit.isdigit():
            items = items[-int(limit) :]
        return _json(dict(items))

    async def _get_history_one(self, request: web.Request) -> web.StreamResponse:
        prompt_id = request.match_info["prompt_id"]
        entry = self.queue.history.get(prompt_id)
        return _json({prompt_id: entry} if entry is not None else {})

    async def _view(self, request: web.Request) -> web.StreamResponse:
        key = (request.query.get("subfolder", ""), request.query.get("filename", ""))
        kind = request.query.get("type", "output")
        data = (
            self.queue.outputs.get(key)
            if kind == "output"
            else self.queue.inputs.get("/".join(filter(None, key)))
        )
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        outbox = Outbox(socket, request.transport)
        self.queue.sockets.setdefault(client_id, set()).add(outbox)
        try:
            await socket.send_json(
                {"type": "status", "data": {"status": self.queue.status(), "sid": client_id}}
            )
            async for message in socket:
                if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self.queue.sockets.get(client_id, set()).discard(outbox)
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
            existing = self.queue.inputs.get(key)
            if existing is None or overwrite or existing == data:
                break
            name = f"{stem} ({counter}){dot}{suffix}" if dot else f"{name} ({counter})"
            counter += 1
        self.queue.inputs[key] = data
        return _json({"name": name, "subfolder": subfolder, "type": "input"})

    async def _get_queue(self, request: web.Request) -> web.StreamResponse:
        return _json(
            {
                "queue_running": [q.queue_form() for q in filter(None, [self.queue.running])],
                "queue_pending": [item.queue_form() for item in self.queue.pending],
            }
        )

    async def _post_queue(self, request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(ValueError):
            body = await request.json()
            if isinstance(body, dict):
                if body.get("clear"):
                    self.queue.pending.clear()
                self.queue.delete({str(i) for i in body.get("delete") or ()})
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.StreamResponse:
        body: Any = None
        with contextlib.suppress(ValueError):
            body = await request.json()
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        self.queue.interrupt(wanted if isinstance(wanted, str) else None)
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
        out["loaded"] = self.queue.loaded
        out["config"] = dataclasses.asdict(self.config)
        out["posted"] = self.posted
        out["uploaded"] = sorted(self.queue.inputs)
        return _json(out)

    async def _set_config(self, request: web.Request) -> web.StreamResponse:
        return await set_config(request, self.apply_config, lambda: self.config)


def _route_name(path: str) -> str:
    for prefix in ("/history/", "/object_info/"):
        if path.startswith(prefix):
            return prefix + "{id}"
    return path
