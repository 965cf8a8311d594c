"""One web UI endpoint: address and secrets, HTTP routes, timeouts, error classification."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import email.utils
import json
import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from batchgen.errors import ConfigError, FatalEndpointError, RetryableEndpointError, RowError
from batchgen.job import EndpointSpec, RetrySpec, TimeoutSpec
from batchgen.records import Flavor, Generation, Request, WireRequest

# A 500 that names an exception was raised while the server processed this one request: the
# server is well, the request fails there (a1111-api.md §8, §15). Running out of memory is the
# exception: it depends on what else the GPU holds, so it is worth sending again.
_OUT_OF_MEMORY = ("OutOfMemoryError", "out of memory")
# 500s without an exception name (Forge drops A1111's error shape) that are still the request's.
_ROW_500_PHRASES = ("could not find", "not found", "not a valid", "invalid encoded image")
# Known row errors and what the user can do about them, by exception name or message phrase.
_ROW_ERROR_HINTS = (
    (
        "NansException",
        "the model produced NaNs for this request; start that server with --no-half-vae "
        "(or --no-half), or with --disable-nan-check",
    ),
    ("UniPC order must be < sampling steps", "UniPC needs at least 3 sampling steps"),
    ("Invalid encoded image", "the image sent is not a readable PNG/JPEG; check its file"),
)
# Sent by batchgen's simulator on every answer, never by a real web UI (README, "The simulator").
SIMULATOR_HEADER = "X-Batchgen-Simulator"
RETRY_AFTER_MAX = 60.0  # seconds: a longer Retry-After is waited this long, then asked again


class _TlsError(FatalEndpointError):
    """The server's certificate is not trusted (or TLS failed): a setting, not a passing fault."""


class _Secret:
    """A value that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A resolved endpoint: a URL without credentials, a display name, secrets kept apart."""

    name: str  # shown in progress, logs and the manifest
    url: str  # base URL without user info; "sim://..." until the simulator is started
    in_flight: int
    headers: Mapping[str, _Secret] = field(default_factory=dict)  # basic auth included
    ssl: ssl.SSLContext | bool = True  # aiohttp's `ssl=`: True verifies against the system CAs
    backend: Literal["a1111", "comfy"] = "a1111"

    @property
    def is_sim(self) -> bool:
        return self.url.startswith("sim://")

    def request_headers(self) -> dict[str, str]:
        return {key: value.reveal() for key, value in self.headers.items()}


def resolve_endpoint(spec: EndpointSpec, default_in_flight: int) -> Endpoint:
    """Split credentials out of the URL and the environment; only the display name is ever shown."""
    url = "http" + spec.url[len("comfy") :] if spec.url.startswith("comfy://") else spec.url
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https", "sim"}:
        raise ConfigError(
            f"endpoint {redact_url(spec.url)}: use http://host:port, https://..., "
            "comfy://host:port or sim://"
        )
    if parts.scheme != "sim" and not parts.hostname:
        raise ConfigError(f"endpoint {redact_url(spec.url)}: the URL has no host")
    # urlsplit leaves percent-escapes in place: "p%40ss" is how a URL spells "p@ss".
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if spec.auth_env:
        value = os.environ.get(spec.auth_env)
        if value is None or ":" not in value:
            raise ConfigError(
                f"endpoint {redact_url(url)}: set the environment variable {spec.auth_env} "
                "to user:password"
            )
        username, _, password = value.partition(":")
    headers = {key: _Secret(value) for key, value in spec.headers.items()}
    if username is not None:
        # A1111 (FastAPI HTTPBasic) decodes the pair as ASCII; UTF-8 is the same for ASCII.
        pair = f"{username}:{password or ''}".encode()
        headers["Authorization"] = _Secret("Basic " + base64.b64encode(pair).decode("ascii"))
    for header, variable in spec.headers_env.items():
        value = os.environ.get(variable)
        if value is None:
            raise ConfigError(
                f"endpoint {redact_url(spec.url)}: header {header} needs the environment "
                f"variable {variable}, which is not set"
            )
        headers[header] = _Secret(value)
    clean = redact_url(url)
    if parts.scheme != "sim":
        clean = clean.rstrip("/")
    return Endpoint(
        name=spec.name or clean,
        url=clean,
        in_flight=spec.in_flight or default_in_flight,
        headers=headers,
        ssl=_tls(spec, clean),
        backend=spec.kind,
    )


def row_backoff(retry: RetrySpec) -> wait_exponential_jitter:
    """The wait between a row's attempts: jittered and exponential, from the job's settings."""
    return wait_exponential_jitter(
        multiplier=retry.backoff_initial, max=retry.backoff_max, jitter=retry.backoff_initial
    )


def open_session() -> aiohttp.ClientSession:
    """One session for every endpoint. No pool cap: the per-endpoint in_flight is the limit."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


def _tls(spec: EndpointSpec, shown: str) -> ssl.SSLContext | bool:
    if spec.ca_file is not None:
        try:
            return ssl.create_default_context(cafile=str(spec.ca_file))
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"endpoint {shown}: cannot use ca_file {spec.ca_file}: {error}"
            ) from None
    return spec.verify


def redact_url(url: str) -> str:
    """The URL without its user:password part, to be shown."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]  # keeps [::1] brackets and the port as written
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer, before it is judged."""

    status: int
    body: bytes
    retry_after: str | None  # the Retry-After header, if any

    def error(self) -> RetryableEndpointError | FatalEndpointError:
        """The endpoint error a non-200 answer means."""
        return _status_error(self.status, self.body, self.retry_after)


@dataclass(frozen=True, slots=True)
class ServerState:
    """What a probe learned about a server."""

    flavor: Flavor | Literal["comfy"]
    checkpoint: str | None  # opts.sd_model_checkpoint
    vae: str | None
    simulator: bool = False  # batchgen's simulator: placeholder images, not a model


class EndpointClient:
    """Talks to one started endpoint over a shared aiohttp session."""

    def __init__(
        self, endpoint: Endpoint, session: aiohttp.ClientSession, timeout: TimeoutSpec
    ) -> None:
        if endpoint.is_sim:
            raise ValueError("start the simulator and resolve its URL before making a client")
        self.endpoint = endpoint
        self.flavor: Flavor = "a1111"
        self.simulator = False  # as its last answer said
        self._session = session
        # Images are base64 PNG, which gzip shrinks by a quarter at best, while A1111 compresses
        # each answer at level 9 on its own CPU: on a LAN the bytes are cheaper. A job's own
        # Accept-Encoding header wins.
        self._headers = {"Accept-Encoding": "identity", **endpoint.request_headers()}
        self._generation_timeout = aiohttp.ClientTimeout(
            total=timeout.request, sock_connect=timeout.connect
        )
        # Lookups are small and fast; a server that takes a minute to list its models is unwell.
        self._lookup_timeout = aiohttp.ClientTimeout(
            total=max(60.0, timeout.connect), sock_connect=timeout.connect
        )

    @property
    def name(self) -> str:
        return self.endpoint.name

    async def get_json(self, path: str, *, attempts: int = 3) -> Any:
        """GET a JSON route, retrying passing failures; 404 raises FatalEndpointError."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
            retry=retry_if_exception_type(RetryableEndpointError),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._request("GET", path, None, self._lookup_timeout)
        raise AssertionError("unreachable")  # pragma: no cover

    async def probe(self) -> ServerState:
        """Ask the server what it is and what it has loaded.

        Refused credentials or an untrusted certificate raise ConfigError: the job is wrong, and
        waiting for the server to come back would not help.
        """
        try:
            options = await self.get_json("/sdapi/v1/options", attempts=1)
        except FatalEndpointError as error:
            if error.status in (401, 403) or isinstance(error, _TlsError):
                raise ConfigError(f"endpoint {self.name}: {error}") from None
            raise
        self.flavor = await self._detect_flavor()
        if not isinstance(options, dict):
            raise FatalEndpointError("/sdapi/v1/options did not return an object")
        return ServerState(
            flavor=self.flavor,
            checkpoint=_text_or_none(options.get("sd_model_checkpoint")),
            vae=_text_or_none(options.get("sd_vae")),
            simulator=self.simulator,
        )

    async def generate(self, request: Request) -> Generation:
        """Send one row's request once. Raises RetryableEndpointError or FatalEndpointError."""
        if not isinstance(request, WireRequest):
            raise TypeError(f"{self.name} takes an A1111 request, not {type(request).__name__}")
        payload = await self._request(
            "POST", f"/sdapi/v1/{request.route}", request.body, self._generation_timeout
        )
        return dataclasses.replace(parse_generation(payload), simulated=self.simulator)

    async def _detect_flavor(self) -> Flavor:
        # Forge replaced /sd-vae by /sd-modules; A1111 v1.10 has no /sd-modules (a1111-api.md §11).
        try:
            await self._request("GET", "/sdapi/v1/sd-modules", None, self._lookup_timeout)
        except FatalEndpointError:
            return "a1111"
        return "forge"

    async def _request(
        self, method: str, path: str, body: Any, timeout: aiohttp.ClientTimeout
    ) -> Any:
        answer = await self._exchange(method, path, timeout, json=body)
        if answer.status != 200:
            raise answer.error()
        try:
            return json.loads(answer.body)
        except ValueError:
            raise RetryableEndpointError("the answer was not JSON") from None

    async def _exchange(
        self, method: str, path: str, timeout: aiohttp.ClientTimeout, **send: Any
    ) -> Answer:
        """One request: the status and the body, transport failures mapped to endpoint errors."""
        try:
            async with self._session.request(
                method,
                self.endpoint.url + path,
                headers=self._headers,
                timeout=timeout,
                ssl=self.endpoint.ssl,
                **send,
            ) as response:
                raw = await response.read()
                self.simulator = SIMULATOR_HEADER in response.headers
                return Answer(response.status, raw, response.headers.get("Retry-After"))
        except (TimeoutError, asyncio.TimeoutError):  # not the same class before Python 3.11
            limit = timeout.total
            raise RetryableEndpointError(
                f"no answer within {limit:g} s" if limit else "timed out"
            ) from None
        except aiohttp.ClientPayloadError:
            raise RetryableEndpointError(
                "the connection dropped while the answer was sent"
            ) from None
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as error:
            raise _TlsError(
                f"TLS: {_tls_reason(error)}; trust the server's certificate with the endpoint's "
                "ca_file (or verify = false on a network you trust)"
            ) from None
        except aiohttp.ServerDisconnectedError:
            raise RetryableEndpointError("the server closed the connection") from None
        except aiohttp.ClientConnectorError as error:
            raise RetryableEndpointError(f"cannot connect: {error.os_error}") from None
        except aiohttp.ClientError as error:
            raise RetryableEndpointError(f"{type(error).__name__}: {error}") from None


def _tls_reason(error: aiohttp.ClientError) -> str:
    reason = getattr(error, "certificate_error", None) or getattr(error, "os_error", None)
    return str(reason or error)


def parse_generation(payload: Any) -> Generation:
    """Split a txt2img/img2img answer into generated images, extras and the real seeds."""
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise FatalEndpointError("the answer has no image list")
    try:
        info = json.loads(payload.get("info") or "{}")
    except ValueError:
        raise FatalEndpointError("the answer's info is not JSON") from None
    if not isinstance(info, dict):
        info = {}
    images = [_decode_image(item) for item in payload["images"]]
    infotexts = info.get("infotexts")
    first = int(info.get("index_of_first_image") or 0)
    # images = [grid?] + generated + extras; infotexts cover the grid and the generated ones.
    end = len(infotexts) if isinstance(infotexts, list) else len(images)
    seeds = info.get("all_seeds") or ([info["seed"]] if "seed" in info else [])
    return Generation(
        images=tuple(images[first:end]),
        extras=tuple(images[end:]),
        seeds=tuple(int(seed) for seed in seeds[: end - first]),
        model=_text_or_none(info.get("sd_model_name")),
        model_hash=_text_or_none(info.get("sd_model_hash")),
        vae=_text_or_none(info.get("sd_vae_name")),
        version=_text_or_none(info.get("version")),
        info=info,
    )


def _decode_image(item: Any) -> bytes:
    if not isinstance(item, str):
        raise FatalEndpointError("the answer holds an image that is not a string")
    data = item.split(",", 1)[1] if item.startswith("data:") else item
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise FatalEndpointError("the answer holds an image that is not base64") from None


def _status_error(
    status: int, raw: bytes, retry_after: str | None = None
) -> RetryableEndpointError | FatalEndpointError:
    message, error_name = _server_message(raw)
    text = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status == 500 and _raised_by_the_request(message, error_name):
        hint = next((hint for mark, hint in _ROW_ERROR_HINTS if mark in message), None)
        return RowError(text, status, hint=hint)
    if status in (429, 503) and retry_after is not None:
        wait = _seconds_from(retry_after)
        if wait is not None:
            return RetryableEndpointError(
                f"{text} (asked to wait {wait:g} s)", status, retry_after=wait
            )
    if status == 429 or status >= 500:
        return RetryableEndpointError(text, status)
    return FatalEndpointError(text, status)


def _raised_by_the_request(message: str, error_name: str | None) -> bool:
    if any(mark in message for mark in _OUT_OF_MEMORY):
        return False
    return error_name is not None or any(p in message.lower() for p in _ROW_500_PHRASES)


def _seconds_from(retry_after: str) -> float | None:
    """A Retry-After value (seconds or an HTTP date) as seconds from now, capped."""
    text = retry_after.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def _server_message(raw: bytes) -> tuple[str, str | None]:
    """The readable part of the error bodies of A1111, Forge, SD.Next and FastAPI."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:300], None
    if isinstance(body, str):
        return body[:300], None
    if not isinstance(body, dict):
        return str(body)[:300], None
    detail = body.get("detail")
    if isinstance(detail, list):  # FastAPI validation errors
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
        return "; ".join(parts), None
    error_name = body.get("error") if isinstance(body.get("error"), str) else None
    text = body.get("errors") or body.get("message") or detail or ""
    message = str(text)
    if error_name and error_name != "HTTPException":
        message = f"{error_name}: {message}" if message else error_name
    return message[:500], error_name


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
