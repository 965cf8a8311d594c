"""SimServer: start/stop one simulator on a socket; `serve` runs one until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from types import TracebackType

from aiohttp import web

from .app import SimApp
from .comfy import ComfyApp
from .config import SimConfig
from .stats import SimStats

log = logging.getLogger(__name__)


class SimServer:
    """A simulated A1111/Forge/ComfyUI server on 127.0.0.1; an async context manager."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self._config = config or SimConfig()
        self.stats = SimStats()
        self.url = ""
        self._sim: SimApp | ComfyApp | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._bind_task: asyncio.Task[None] | None = None

    @property
    def config(self) -> SimConfig:
        """The current config, including knobs changed at run time via POST /_sim/config."""
        return self._sim.config if self._sim is not None else self._config

    @property
    def app(self) -> SimApp | ComfyApp:
        if self._sim is None:
            raise RuntimeError("SimServer is not started")
        return self._sim

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind (after `refuse_s` seconds, refusing connections until then); return the base URL."""
        flavor = ComfyApp if self.config.flavor == "comfy" else SimApp
        self._sim = flavor(self.config, self.stats, self._die)
        self._runner = web.AppRunner(self._sim.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            await self._runner.cleanup()
            self._runner = None
            raise
        bound = sock.getsockname()[1]
        self.url = f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
        if self.config.refuse_s > 0:
            # A bound socket that does not listen answers connects with RST: "connection refused".
            self._bind_task = asyncio.create_task(self._listen_later(sock))
        else:
            await self._listen(sock)
        log.info("simulator (%s) at %s", self.config.flavor, self.url)
        return self.url

    async def _listen_later(self, sock: socket.socket) -> None:
        await asyncio.sleep(self.config.refuse_s)
        await self._listen(sock)

    async def _listen(self, sock: socket.socket) -> None:
        assert self._runner is not None
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()
        self.app.reset_clock()

    def _die(self) -> None:
        """Simulate a crashed process: stop listening and cut every open connection."""
        log.warning("simulator at %s dies (die_after=%s)", self.url, self.config.die_after)
        asyncio.get_running_loop().create_task(self._kill())

    async def _kill(self) -> None:
        if self._sim is not None:
            self._sim.stopping()
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server if self._runner is not None else None
        for handler in list(getattr(server, "connections", [])):
            transport = handler.transport
            if transport is not None:
                transport.abort()

    async def stop(self) -> None:
        if self._bind_task is not None:
            self._bind_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._bind_task
            self._bind_task = None
        if self._runner is not None:
            await self._kill()
            await self._runner.cleanup()
            self._runner = None

    async def set_config(self, config: SimConfig) -> None:
        """Swap fault and time knobs at run time; other changes raise ValueError."""
        if self._sim is not None:
            self._sim.apply_config(config)
        self._config = config

    async def __aenter__(self) -> SimServer:
        if not self.url:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def serve(port: int, config: SimConfig, host: str = "127.0.0.1") -> None:
    """Run a simulator until SIGINT/SIGTERM; prints the URL line (the CLI's `batchgen sim`).

    Raises OSError with a message to show as it is when the address cannot be used.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        server = SimServer(config)
        try:
            url = await server.start(host, port)
        except OSError as error:
            raise OSError(error.errno, cannot_listen(error, host, port)) from None
        print(
            f"batchgen simulator ({config.flavor}) serving at {url}  (Ctrl-C to stop)", flush=True
        )
        try:
            await stop.wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def cannot_listen(error: OSError, host: str, port: int) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (a web UI or another simulator?); "
            "give another with --port, or --port 0 for any free port"
        )
    return f"cannot listen on {host}:{port}: {error.strerror or error}"
