"""One ComfyUI endpoint: a row's graph (GraphRequest) posted under its prompt id, results collected.

The same interface as an A1111 endpoint (`EndpointClient`: probe, get_json, generate), so the
runner, fleet and scheduler drive it unchanged; transport, auth, TLS and timeouts are shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp

from batchgen.backends.a1111 import Endpoint, EndpointClient, ServerState, _TlsError
from batchgen.errors import ConfigError, FatalEndpointError, RetryableEndpointError
from batchgen.job import TimeoutSpec
from batchgen.records import Generation, GraphRequest, ImageRef, Request

log = logging.getLogger(__name__)

POLL_S = 1.0  # /history is asked this often when the websocket says nothing
UPLOAD_FOLDER = "batchgen"


class ComfyClient(EndpointClient):
    """Talks to one ComfyUI server. `default_checkpoint`: what the workflow loads for a row that
    names none (scheduling affinity)."""

    def __init__(
        self,
        endpoint: Endpoint,
        session: aiohttp.ClientSession,
        timeout: TimeoutSpec,
        default_checkpoint: str | None,
    ) -> None:
        super().__init__(endpoint, session, timeout)
        self.default_checkpoint = default_checkpoint
        self.version: str | None = None
        self.ignores_prompt_id = False
        self._client_id = uuid.uuid4().hex
        self._known: set[str] = set()  # prompt ids the server had queued or run when probed
        self._sent: set[str] = set()  # prompt ids this client posted (an answer may be lost)
        self._uploaded: dict[str, str] = {}  # sha256 -> the name LoadImage takes
        # prompt id -> resolved when the websocket says it is done: with the history entry it
        # implies when every event of the run was seen, else None (then /history is asked).
        self._waiters: dict[str, asyncio.Future[Mapping[str, Any] | None]] = {}
        self._seen: dict[str, dict[str, Any]] = {}  # prompt id -> outputs, from its start on
        self._socket: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._request_limit = timeout.request

    async def probe(self) -> ServerState:
        """The server's version, and the prompts it already knows (for resume)."""
        try:
            stats = await self.get_json("/system_stats", attempts=1)
        except FatalEndpointError as error:
            if error.status in (401, 403) or isinstance(error, _TlsError):
                raise ConfigError(f"endpoint {self.name}: {error}") from None
            raise
        system = stats.get("system") if isinstance(stats, dict) else None
        version = system.get("comfyui_version") if isinstance(system, dict) else None
        self.version = f"ComfyUI {version}" if isinstance(version, str) else "ComfyUI"
        self._known = await self._prompts_known()
        return ServerState(
            flavor="comfy",
            checkpoint=self.default_checkpoint,
            vae=None,
            simulator=self.simulator,
        )

    async def _prompts_known(self) -> set[str]:
        known: set[str] = set()
        history = await self.get_json("/history", attempts=1)
        if isinstance(history, dict):
            known.update(str(key) for key in history)
        queue = await self.get_json("/queue", attempts=1)
        if isinstance(queue, dict):
            for name in ("queue_running", "queue_pending"):
                for item in queue.get(name) or ():
                    if isinstance(item, list) and len(item) > 1:
                        known.add(str(item[1]))
        return known

    async def generate(self, request: Request) -> Generation:
        """Post the row's graph (or find the one a past run posted) and collect its images."""
        if not isinstance(request, GraphRequest):
            raise TypeError(f"{self.name} takes a ComfyUI request, not {type(request).__name__}")
        prompt_id = request.prompt_id
        names = {ref.sha256: await self._upload(ref) for ref in request.images}
        graph = _with_uploads(request.graph, names)
        found = False
        if prompt_id in self._known or prompt_id in self._sent:
            found = await self._already_there(prompt_id, graph)
        waiter = self._waiters.setdefault(prompt_id, asyncio.get_running_loop().create_future())
        try:
            if not found:
                prompt_id = await self._submit(prompt_id, graph)
                waiter = self._waiters.setdefault(prompt_id, waiter)
            entry = await asyncio.wait_for(
                self._finished(prompt_id, waiter, ask_first=found), self._request_limit
            )
        except asyncio.TimeoutError:  # not yet the builtin one on Python 3.10
            raise RetryableEndpointError(
                f"prompt {prompt_id} did not finish within {self._request_limit:g} s"
            ) from None
        finally:
            self._waiters.pop(prompt_id, None)
            self._seen.pop(prompt_id, None)
        return await self._collect(prompt_id, entry, request, graph, found)

    async def _already_there(self, prompt_id: str, graph: Mapping[str, Any]) -> bool:
        """True if the prompt is done, queued or running here, whole: wait for it, do not post
        again. A prompt ComfyUI ran only in part (some outputs invalid) does not count."""
        # The queue first: a prompt moves from the queue to the history, so asked in this order
        # it cannot finish unseen between the two looks.
        queue = await self.get_json("/queue")
        items = [*(queue.get("queue_running") or ()), *(queue.get("queue_pending") or ())]
        for item in items:
            if isinstance(item, list) and item[1:2] == [prompt_id]:
                return _whole(item, graph)
        entry = await self._history(prompt_id)
        if entry is None:
            return False
        status = entry.get("status") or {}
        return status.get("status_str") == "success" and _whole(entry.get("prompt") or [], graph)

    async def _submit(self, prompt_id: str, graph: Mapping[str, Any]) -> str:
        await self._listen()
        body = {"prompt": graph, "client_id": self._client_id, "prompt_id": prompt_id}
        self._sent.add(prompt_id)
        sent = await self._exchange("POST", "/prompt", self._generation_timeout, json=body)
        if sent.status == 400:
            raise FatalEndpointError(_refusal(sent.body, graph), 400)
        if sent.status != 200:
            raise sent.error()
        answer = _json_object(sent.body, "/prompt")
        given = str(answer.get("prompt_id") or "")
        if given != prompt_id:
            if not self.ignores_prompt_id:
                log.warning(
                    "%s ignores the prompt_id batchgen sends (an older ComfyUI): a resumed run "
                    "cannot collect what it already made, and queues such rows again",
                    self.name,
                )
            self.ignores_prompt_id = True
            self._sent.add(given)
        errors = answer.get("node_errors")
        if errors:
            # Some outputs were valid, so ComfyUI queued the prompt and runs only those: take it
            # back rather than record half a row (ComfyUI #9076).
            with contextlib.suppress(RetryableEndpointError, FatalEndpointError):
                await self._exchange(
                    "POST", "/queue", self._lookup_timeout, json={"delete": [given]}
                )
                await self._exchange(
                    "POST", "/interrupt", self._lookup_timeout, json={"prompt_id": given}
                )
            raise FatalEndpointError(_node_errors(errors, graph), 400)
        return given

    async def _history(self, prompt_id: str) -> Mapping[str, Any] | None:
        found = await self.get_json(f"/history/{prompt_id}")
        entry = found.get(prompt_id) if isinstance(found, dict) else None
        return entry if isinstance(entry, dict) else None

    async def _finished(
        self, prompt_id: str, waiter: asyncio.Future[Mapping[str, Any] | None], *, ask_first: bool
    ) -> Mapping[str, Any]:
        """The history entry once the prompt is done, from the websocket or /history."""
        pause = 0.01
        while True:
            if waiter.done() and waiter.result() is not None:
                return waiter.result()  # type: ignore[return-value]
            if ask_first:
                entry = await self._history(prompt_id)
                if entry is not None:
                    return entry
            ask_first = True
            if waiter.done():
                # ComfyUI says "done" just before it writes the history entry.
                await asyncio.sleep(pause)
                pause = min(pause * 2, POLL_S)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), POLL_S)

    async def _collect(
        self,
        prompt_id: str,
        entry: Mapping[str, Any],
        request: GraphRequest,
        graph: Mapping[str, Any],
        collected: bool,
    ) -> Generation:
        status = entry.get("status") or {}
        if status.get("status_str") != "success":
            raise _execution_error(status.get("messages") or [], graph)
        images: list[bytes] = []
        for node_id in sorted(entry.get("outputs") or {}, key=_node_order):
            for item in entry["outputs"][node_id].get("images") or ():
                if item.get("type", "output") == "output":
                    images.append(await self._view(item))
        if not images:
            raise FatalEndpointError(f"prompt {prompt_id} finished without an image")
        seed = request.seed
        provenance = {
            "backend": "comfy",
            "workflow_sha256": request.workflow_sha256,
            "bound": request.bound,
            "prompt_id": prompt_id,
        }
        return Generation(
            images=tuple(images),
            extras=(),
            seeds=(seed,) * len(images) if seed is not None else (),
            model=request.model,
            model_hash=None,
            vae=None,
            version=self.version,
            info={"prompt_id": prompt_id, "collected": collected},
            provenance=provenance,
            simulated=self.simulator,
        )

    async def _view(self, item: Mapping[str, Any]) -> bytes:
        params = {
            "filename": str(item.get("filename", "")),
            "subfolder": str(item.get("subfolder", "")),
            "type": str(item.get("type", "output")),
        }
        answer = await self._exchange("GET", "/view", self._lookup_timeout, params=params)
        if answer.status != 200:
            raise answer.error()
        return answer.body

    async def _upload(self, ref: ImageRef) -> str:
        """Upload an image once per server; its name is its hash, so no two files collide."""
        name = self._uploaded.get(ref.sha256)
        if name is not None:
            return name
        form = aiohttp.FormData()
        filename = f"{ref.sha256[:24]}{ref.path.suffix.lower() or '.png'}"
        form.add_field("image", ref.path.read_bytes(), filename=filename)
        form.add_field("subfolder", UPLOAD_FOLDER)
        form.add_field("overwrite", "true")
        sent = await self._exchange("POST", "/upload/image", self._lookup_timeout, data=form)
        if sent.status != 200:
            raise sent.error()
        answer = _json_object(sent.body, "/upload/image")
        if not isinstance(answer.get("name"), str):
            raise RetryableEndpointError("the answer to /upload/image names no file")
        folder = answer.get("subfolder") or ""
        name = f"{folder}/{answer['name']}" if folder else answer["name"]
        self._uploaded[ref.sha256] = name
        return name

    # ----- the websocket: when a prompt is done, and what it made if every event was seen -----

    async def _listen(self) -> None:
        if self._socket is None or self._socket.done():
            self._connected.clear()
            self._socket = asyncio.ensure_future(self._read_socket())
            # Events for a prompt go only to a socket open when it runs; polling covers a miss.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._connected.wait(), POLL_S)

    async def _read_socket(self) -> None:
        url = self.endpoint.url.replace("http", "ws", 1) + f"/ws?clientId={self._client_id}"
        try:
            async with self._session.ws_connect(
                url, headers=self._headers, ssl=self.endpoint.ssl, heartbeat=30
            ) as socket:
                self._connected.set()
                async for message in socket:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue
                    self._on_event(message.data)
        except (aiohttp.ClientError, OSError, ValueError) as error:
            log.debug("%s: websocket closed (%s); polling /history", self.name, error)

    def _on_event(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            return
        data = event.get("data") if isinstance(event, dict) else None
        if not isinstance(data, dict):
            return
        kind = event.get("type")
        prompt_id = str(data.get("prompt_id"))
        waiter = self._waiters.get(prompt_id)
        if waiter is None or waiter.done():
            return
        seen = self._seen.get(prompt_id)
        if kind == "execution_start":
            self._seen[prompt_id] = {}
        elif kind == "executed" and seen is not None and isinstance(data.get("output"), dict):
            seen[str(data.get("node"))] = data["output"]
        elif kind == "execution_success" and seen is not None:
            # Every event since execution_start was seen: the outputs are whole; no /history.
            status = {"status_str": "success", "completed": True, "messages": []}
            waiter.set_result({"status": status, "outputs": seen})
        elif kind in ("execution_error", "execution_interrupted"):
            status = {"status_str": "error", "completed": False, "messages": [[kind, data]]}
            waiter.set_result({"status": status, "outputs": {}})
        elif kind == "executing" and data.get("node") is None:
            waiter.set_result(None)


def _json_object(raw: bytes, route: str) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise RetryableEndpointError(f"the answer to {route} was not a JSON object")
    return answer


def _with_uploads(graph: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """The graph as posted: each image's uploaded name where the request holds its ImageRef."""
    posted = dict(graph)
    for node_id, node in graph.items():
        inputs = node.get("inputs") or {}
        if any(isinstance(value, ImageRef) for value in inputs.values()):
            named = {
                name: names[value.sha256] if isinstance(value, ImageRef) else value
                for name, value in inputs.items()
            }
            posted[node_id] = {**node, "inputs": named}
    return posted


def _whole(queued: Any, graph: Mapping[str, Any]) -> bool:
    """Whether a queue item [number, id, graph, extra, outputs to run] runs every save node."""
    outputs = queued[4] if isinstance(queued, list) and len(queued) > 4 else None
    if not isinstance(outputs, list):
        return False
    saves = {i for i, node in graph.items() if "Save" in str(node.get("class_type", ""))}
    return saves <= {str(node) for node in outputs}


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def _node_name(graph: Mapping[str, Any], node_id: Any) -> str:
    node = graph.get(str(node_id)) or {}
    meta = node.get("_meta") or {}
    title = meta.get("title") if isinstance(meta, dict) else None
    kind = node.get("class_type", "?")
    return f"node {node_id} '{title}' ({kind})" if title else f"node {node_id} ({kind})"


def _node_errors(errors: Mapping[str, Any], graph: Mapping[str, Any]) -> str:
    parts = []
    for node_id, found in errors.items():
        for error in (found or {}).get("errors") or ():
            detail = error.get("details") or ""
            parts.append(
                f"{_node_name(graph, node_id)}: {error.get('message', '')}"
                + (f": {detail}" if detail else "")
            )
    return "; ".join(parts[:5]) or "the workflow failed validation"


def _refusal(raw: bytes, graph: Mapping[str, Any]) -> str:
    """A 400 from /prompt: the node errors, or the prompt-level error when there are none."""
    try:
        body = json.loads(raw)
    except ValueError:
        return f"HTTP 400: {raw.decode('utf-8', 'replace')[:300]}"
    if body.get("node_errors"):
        return f"HTTP 400: {_node_errors(body['node_errors'], graph)}"
    error = body.get("error") or {}
    detail = error.get("details") or ""
    return f"HTTP 400: {error.get('message', 'refused')}" + (f" ({detail})" if detail else "")


def _execution_error(messages: list[Any], graph: Mapping[str, Any]) -> Exception:
    for event, data in reversed([m for m in messages if isinstance(m, list) and len(m) == 2]):
        if event == "execution_error":
            return FatalEndpointError(
                f"{_node_name(graph, data.get('node_id'))} failed: "
                f"{data.get('exception_type', '')}: {data.get('exception_message', '')}".strip()
            )
        if event == "execution_interrupted":
            return RetryableEndpointError("the prompt was interrupted on the server")
    return FatalEndpointError("the prompt ended with an error")
