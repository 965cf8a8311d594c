"""`serve()` / `python -m batchgen.sim` in a subprocess: fast start, real HTTP, clean Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def start(*args: str) -> tuple[asyncio.subprocess.Process, str, float]:
    """Start a process; return it, its first stdout line, and its start-up time.

    The start-up time is the CPU time spent until the line was printed where the OS reports
    it (wall-clock time on a loaded test machine mostly measures the other processes).
    """
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
    wall = time.perf_counter() - began
    cpu = cpu_seconds(proc.pid)
    return proc, line, wall if cpu is None else cpu


async def test_module_starts_fast_and_stops_on_sigint(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text('flavor = "forge"\n')
    times = []
    for _ in range(3):  # best of three
        port = free_port()
        proc, line, elapsed = await start(
            "-m", "batchgen.sim", "--port", str(port), "--config", str(config), "--set", "speed=5"
        )
        times.append(elapsed)
        try:
            assert f"http://127.0.0.1:{port}" in line and "forge" in line
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/_sim/stats") as resp,
            ):
                stats = await resp.json()
            assert stats["config"]["speed"] == 5.0 and stats["config"]["flavor"] == "forge"
        finally:
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        if elapsed < 1.0:
            break
    assert min(times) < 1.0, f"start took {', '.join(f'{t:.2f}' for t in times)} s"


async def test_serve_function() -> None:
    port = free_port()
    code = (
        "from batchgen.sim import SimConfig, serve; "
        f"serve({port}, SimConfig.from_query('models=only.safetensors'))"
    )
    proc, line, _ = await start("-c", code)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models") as resp,
        ):
            assert [m["model_name"] for m in await resp.json()] == ["only"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert line.startswith("batchgen simulator (a1111) serving at")


async def test_bad_option_exits_with_usage_error() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchgen.sim", "--set", "sped=2", stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"unknown simulator option 'sped'" in err
