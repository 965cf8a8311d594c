"""The aiohttp application: A1111/Forge routes, auth, error shapes, faults and /_sim extras."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .config import SimConfig
from .controlnet import MODEL_FREE
from .errors import ApiError, RequestInvalid
from .faults import FaultPlan
from .generate import Engine
from .models import LATENT_UPSCALE_MODES
from .options import render_options
from .paste import apply_infotext
from .state import ServerState
from .stats import SimStats
from .validate import Validator, fields_for

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RUNTIME_KNOBS = frozenset(
    {
        "fail_rate",
        "drop_rate",
        "hang_rate",
        "busy_rate",
        "retry_after",
        "die_after",
        "unavailable_s",
        "fault_seed",
        "nan_marker",
        "ms_per_step",
        "switch_s",
        "speed",
    }
)
SIMULATOR_HEADER = "X-Batchgen-Simulator"
_NO_AUTH = frozenset({"/sdapi/v1/loras", "/sdapi/v1/refresh-loras"})
_MEMORY = {
    "ram": {"free": 24_000_000_000, "used": 8_000_000_000, "total": 32_000_000_000},
    "cuda": {
        "system": {"free": 16_000_000_000, "used": 8_000_000_000, "total": 24_000_000_000},
        "active": {"current": 4_000_000_000, "peak": 7_000_000_000},
        "allocated": {"current": 4_000_000_000, "peak": 7_000_000_000},
        "reserved": {"current": 5_000_000_000, "peak": 8_000_000_000},
        "inactive": {"current": 500_000_000, "peak": 900_000_000},
        "events": {"retries": 0, "oom": 0},
    },
}


def dumps(obj: Any) -> bytes:
    """Starlette's JSONResponse rendering."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=dumps(obj), status=status, content_type="application/json", headers=headers
    )


class SimApp:
    """Routes and middleware over one Engine; `on_die` is called when die_after is reached."""

    def __init__(self, config: SimConfig, stats: SimStats, on_die: Callable[[], None]) -> None:
        self.config = config
        self.stats = stats
        self.state = ServerState(config, stats)
        self.engine = Engine(self.state)
        self.faults = FaultPlan(config.fault_seed)
        self.validator = Validator(config.flavor)
        self.forge = config.flavor == "forge"
        self.started = time.monotonic()
        self.dead = False
        self._on_die = on_die
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._credentials = (
            dict(c.split(":", 1) for c in config.api_auth.split(",")) if config.api_auth else {}
        )
        self.app = web.Application(middlewares=[self._middleware], client_max_size=1 << 30)
        self._add_routes()

    def reset_clock(self) -> None:
        """`unavailable_s` counts from when the port starts listening."""
        self.started = time.monotonic()

    def stopping(self) -> None:
        """Server shutdown or death: release hung requests, cancel queued and running ones.

        A client disconnect alone cancels nothing (A1111 finishes the job), so aiohttp's
        handler_cancellation stays off and this does it explicitly.
        """
        self._stopping.set()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    # ----- middleware -----

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        began = time.perf_counter()
        path = request.path
        if self.dead:
            return _abort(request)
        if not path.startswith("/_sim/"):
            self.stats.requests[path] += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if not path.startswith("/_sim/"):
                self._gate(request)
            response = await handler(request)
        except ApiError as exc:
            response = self._render(exc)
        except RequestInvalid as exc:
            response = json_response({"detail": exc.errors}, status=422)
        except web.HTTPMethodNotAllowed:
            response = json_response({"detail": "Method Not Allowed"}, status=405)
        except web.HTTPNotFound:
            response = json_response({"detail": "Not Found"}, status=404)
        except Exception as exc:
            log.exception("simulator handler failed")
            response = self._render(ApiError.internal(type(exc).__name__, str(exc)))
        finally:
            self._tasks.discard(task)
        if not self.forge:
            response.headers["X-Process-Time"] = f"{time.perf_counter() - began:.4f}"
        # No real web UI sends this: a client can tell a simulator's placeholder images apart.
        if self.config.marked:
            response.headers[SIMULATOR_HEADER] = self.config.flavor
        # Starlette's GZipMiddleware(minimum_size=1000), installed by A1111 and Forge.
        accepts_gzip = "gzip" in request.headers.get("Accept-Encoding", "")
        if accepts_gzip and isinstance(response, web.Response):
            _maybe_gzip(response)
        return response

    def _gate(self, request: web.Request) -> None:
        if time.monotonic() - self.started < self.config.unavailable_s:
            raise ApiError(
                503, "HTTPException", detail="Service Unavailable", headers=self._retry_after()
            )
        path = request.path
        if self._credentials and path.startswith("/sdapi/v1/") and path not in _NO_AUTH:
            self._check_auth(request.headers.get("Authorization"))

    def _retry_after(self) -> dict[str, str] | None:
        seconds = self.config.retry_after
        return {"Retry-After": str(seconds)} if seconds else None

    def _check_auth(self, header: str | None) -> None:
        scheme, _, param = (header or "").partition(" ")
        if not header or scheme.lower() != "basic":
            raise ApiError.http(401, "Not authenticated")
        try:
            user, sep, password = base64.b64decode(param).decode("ascii").partition(":")
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise ApiError.http(401, "Invalid authentication credentials") from None
        if not sep:
            raise ApiError.http(401, "Invalid authentication credentials")
        expected = self._credentials.get(user)
        if expected is None or not hmac.compare_digest(password, expected):
            raise ApiError.http(401, "Incorrect username or password")

    def _render(self, exc: ApiError) -> web.Response:
        if not self.forge:
            body = {
                "error": exc.error,
                "detail": exc.detail,
                "body": exc.body,
                "errors": exc.errors,
            }
            return json_response(body, status=exc.status, headers=exc.headers)
        if exc.is_http:
            headers = {"WWW-Authenticate": "Basic"} if exc.status == 401 else {}
            headers.update(exc.headers or {})
            return json_response({"detail": exc.detail}, status=exc.status, headers=headers)
        body = {"error": exc.error, "detail": exc.detail, "body": exc.body, "message": exc.errors}
        return json_response(body, status=exc.status, headers=exc.headers)

    # ----- routes -----

    def _add_routes(self) -> None:
        e = self.engine
        st = self.state
        inv = st.inv
        r = self.app.router
        r.add_post("/sdapi/v1/txt2img", self._txt2img)
        r.add_post("/sdapi/v1/img2img", self._img2img)
        r.add_get("/sdapi/v1/options", self._get_options)
        r.add_post("/sdapi/v1/options", self._post_options)
        static: dict[str, Callable[[], Any]] = {
            "/sdapi/v1/sd-models": inv.sd_models,
            "/sdapi/v1/samplers": inv.samplers,
            "/sdapi/v1/schedulers": inv.schedulers,
            "/sdapi/v1/loras": inv.loras,
            "/sdapi/v1/upscalers": inv.upscalers,
            "/sdapi/v1/prompt-styles": lambda: [
                {"name": name, "prompt": text, "negative_prompt": ""}
                for name, text in self.config.style_texts().items()
            ],
            "/sdapi/v1/latent-upscale-modes": lambda: [{"name": n} for n in LATENT_UPSCALE_MODES],
            "/sdapi/v1/progress": st.progress_json,
            "/sdapi/v1/memory": lambda: _MEMORY,
            "/sdapi/v1/scripts": e.scripts,
            "/controlnet/model_list": lambda: {
                "model_list": [inv.cn_model_title(m) for m in self.config.cn_models]
            },
            "/controlnet/module_list": self._module_list,
            "/_sim/stats": self._stats,
        }
        static["/sdapi/v1/sd-modules" if self.forge else "/sdapi/v1/sd-vae"] = inv.sd_vae
        if not self.forge:
            static["/controlnet/version"] = lambda: {"version": 3}
            static["/controlnet/settings"] = lambda: {
                "control_net_unit_count": st.opts.get("control_net_unit_count", 3)
            }
        if self.config.webui:
            static["/internal/ping"] = dict
            static["/internal/pending-tasks"] = st.pending_tasks
            r.add_post("/internal/progress", self._task_progress)
        for path, fn in static.items():
            r.add_get(path, _static(fn))
        r.add_post("/sdapi/v1/interrupt", self._interrupt)
        r.add_post("/sdapi/v1/skip", self._skip)
        for path in ("refresh-checkpoints", "refresh-vae", "refresh-loras"):
            r.add_post(f"/sdapi/v1/{path}", self._refresh)
        r.add_post("/_sim/config", self._set_config)

    def _module_list(self) -> dict[str, Any]:
        detail = {
            m: {
                "model_free": m in MODEL_FREE,
                "sliders": [
                    {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8}
                ],
            }
            for m in self.config.cn_modules
        }
        out: dict[str, Any] = {"module_list": list(self.config.cn_modules)}
        if not self.forge:
            out["module_detail"] = detail
        return out

    def _stats(self) -> dict[str, Any]:
        out = self.stats.as_json()
        out["loaded"] = self.state.loaded.title
        out["config"] = dataclasses.asdict(self.config)
        return out

    async def _txt2img(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "txt2img")

    async def _img2img(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "img2img")

    async def _generate(self, request: web.Request, route: str) -> web.StreamResponse:
        self.stats.request_started()
        try:
            return await self._generate_counted(request, route)
        finally:
            self.stats.request_ended()

    async def _generate_counted(self, request: web.Request, route: str) -> web.StreamResponse:
        body = self.validator.parse_json(await request.read(), request.headers.get("Content-Type"))
        self.stats.record_body(route, body)
        req = self.validator.validate(body, fields_for(route, self.config.flavor))
        apply_infotext(req, set(body))
        verdict = self.faults.draw(self.config)
        if verdict != "ok":
            self.stats.faults[verdict] += 1
            log.info("fault %s on generation %d", verdict, self.faults.count)
        if verdict == "die":
            self.dead = True
            self._on_die()
            return _abort(request)
        if verdict == "hang":
            await self._stopping.wait()
            return _abort(request)
        if verdict == "busy":
            raise ApiError(
                429, "HTTPException", detail="Too Many Requests", headers=self._retry_after()
            )
        result = await self.engine.generate(route, req, fail=verdict == "fail")
        if verdict == "drop":
            return _abort(request)
        return json_response(result)

    async def _get_options(self, request: web.Request) -> web.StreamResponse:
        return json_response(render_options(self.state.opts, self.forge))

    async def _post_options(self, request: web.Request) -> web.StreamResponse:
        body = self.validator.parse_json(await request.read(), request.headers.get("Content-Type"))
        if not isinstance(body, dict):
            self.validator.validate(body, ())
        await self.state.set_options(body)
        return json_response(None)

    async def _task_progress(self, request: web.Request) -> web.StreamResponse:
        body = self.validator.parse_json(await request.read(), request.headers.get("Content-Type"))
        if not isinstance(body, dict):
            self.validator.validate(body, ())
        id_task = body.get("id_task")
        return json_response(
            self.state.task_progress(id_task if isinstance(id_task, str) else None)
        )

    async def _interrupt(self, request: web.Request) -> web.StreamResponse:
        self.state.interrupt()
        return json_response({})

    async def _skip(self, request: web.Request) -> web.StreamResponse:
        self.state.skip()
        return json_response(None)

    async def _refresh(self, request: web.Request) -> web.StreamResponse:
        await self.state.refresh()
        return json_response(None)

    async def _set_config(self, request: web.Request) -> web.StreamResponse:
        return await set_config(request, self.apply_config, lambda: self.config)

    def apply_config(self, config: SimConfig) -> None:
        """Swap time and fault knobs; a new fault_seed restarts the fault sequence."""
        change_at_run_time(self.config, config, self.faults)
        self.config = config
        self.state.config = config


def _maybe_gzip(response: web.Response) -> None:
    body = response.body
    if not isinstance(body, bytes) or len(body) < 1000:
        return
    # Level 1: most of a response is base64 PNG data that no level shrinks much, and
    # aiohttp's own enable_compression() costs several times more CPU per response.
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    response.body = comp.compress(body) + comp.flush()
    response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = "Accept-Encoding"


def _static(fn: Callable[[], Any]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return json_response(fn())

    return handler


def _abort(request: web.Request) -> web.StreamResponse:
    """Cut the connection without an answer; the returned response is never delivered."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=499)


def change_at_run_time(old: SimConfig, new: SimConfig, faults: FaultPlan) -> None:
    """Refuse a change of anything but the time and fault knobs; reseed faults on a new seed."""
    changed = [
        f.name for f in dataclasses.fields(new) if getattr(new, f.name) != getattr(old, f.name)
    ]
    bad = sorted(set(changed) - RUNTIME_KNOBS)
    if bad:
        raise ValueError(f"not changeable at run time: {', '.join(bad)}")
    if "fault_seed" in changed:
        faults.reseed(new.fault_seed)


async def set_config(
    request: web.Request,
    apply: Callable[[SimConfig], None],
    current: Callable[[], SimConfig],
) -> web.StreamResponse:
    """POST /_sim/config: the knobs in the JSON body applied, or 400 saying which cannot be."""
    try:
        values = await request.json()
        if not isinstance(values, dict):
            raise ValueError("expected a JSON object")
        apply(current().replace(values))
    except ValueError as exc:
        return json_response({"detail": str(exc)}, status=400)
    return json_response(dataclasses.asdict(current()))
