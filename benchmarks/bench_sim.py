"""Simulator throughput in zero-delay mode: the fast PNG path against a naive Pillow baseline.

Run: python benchmarks/bench_sim.py [--seconds 3] [--concurrency 4] [--batch-size 1]
The server runs in its own process pinned to one core (where the OS allows); the client drives
it over HTTP from this process. Both encoders are measured in the same run, and the ratio printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time

import aiohttp
from benchhelp import free_port

from batchgen.sim.images import FastPngEncoder, PillowPngEncoder, image_digest

INFOTEXT = (
    "a red fox in the snow, photo\nNegative prompt: lowres, blurry\nSteps: 20, Sampler: Euler, "
    "Schedule type: Automatic, CFG scale: 7.0, Seed: 1, Size: 512x512, Model hash: 6ce0161689, "
    "Model: v1-5-pruned-emaonly, Version: v1.10.1"
)


def encoder_rate(kind: str, seconds: float) -> float:
    encoder = FastPngEncoder() if kind == "fast" else PillowPngEncoder()
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        encoder.encode(image_digest("p", "n", count, "c", 512, 512), 512, 512, INFOTEXT)
        count += 1
    return count / (time.perf_counter() - began)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(pid: int, core: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(pid, {cores[core % len(cores)]})


async def http_rate(
    encoder: str, seconds: float, concurrency: int, batch_size: int
) -> tuple[float, float | None]:
    """(images per wall-clock second, images per second of server CPU time)."""
    port = free_port()
    options = ["ms_per_step=0", "switch_s=0", f"encoder={encoder}"]
    args = [sys.executable, "-m", "batchgen.sim", "--port", str(port)]
    for option in options:
        args += ["--set", option]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    pin(proc.pid, 0)
    pin(0, 1)
    assert proc.stdout is not None
    await proc.stdout.readline()
    url = f"http://127.0.0.1:{port}/sdapi/v1/txt2img"
    images = 0
    try:
        async with aiohttp.ClientSession() as http:

            async def worker(offset: int, deadline: float) -> None:
                nonlocal images
                seed = offset * 1_000_000
                while time.perf_counter() < deadline:
                    body = {
                        "prompt": "a red fox",
                        "seed": seed,
                        "steps": 20,
                        "batch_size": batch_size,
                    }
                    async with http.post(url, json=body) as resp:
                        data = await resp.json()
                    images += len(data["images"])
                    seed += batch_size

            await asyncio.gather(
                *(worker(i, time.perf_counter() + 0.3) for i in range(concurrency))
            )
            images = 0
            cpu_before = cpu_seconds(proc.pid)
            began = time.perf_counter()
            deadline = began + seconds
            await asyncio.gather(*(worker(i + 100, deadline) for i in range(concurrency)))
            wall = images / (time.perf_counter() - began)
            cpu_after = cpu_seconds(proc.pid)
            if cpu_before is None or cpu_after is None or cpu_after <= cpu_before:
                return wall, None
            return wall, images / (cpu_after - cpu_before)
    finally:
        proc.send_signal(signal.SIGINT)
        await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()

    fast = encoder_rate("fast", args.seconds)
    naive = encoder_rate("pillow", args.seconds)
    print("512x512 PNG with infotext, encoder only (one thread):")
    print(f"  fast encoder    {fast:10.0f} images/s")
    print(f"  Pillow baseline {naive:10.0f} images/s")
    print(f"  ratio           {fast / naive:10.1f}x")

    print(
        f"\nOver HTTP, zero-delay mode, server pinned to one core, {args.concurrency} connections, "
        f"batch_size={args.batch_size}:"
    )
    rates = {}
    for encoder in ("fast", "pillow"):
        rates[encoder] = await http_rate(encoder, args.seconds, args.concurrency, args.batch_size)
    (fast_wall, fast_cpu), (naive_wall, naive_cpu) = rates["fast"], rates["pillow"]
    print("                  wall-clock      per server CPU-second")
    rows = [("fast encoder", fast_wall, fast_cpu), ("Pillow baseline", naive_wall, naive_cpu)]
    for name, wall, cpu in rows:
        per_cpu = f"{cpu:10.0f}" if cpu else "       n/a"
        print(f"  {name:<15} {wall:10.0f}      {per_cpu}   images/s")
    ratio_cpu = f"{fast_cpu / naive_cpu:10.1f}x" if fast_cpu and naive_cpu else "       n/a"
    print(f"  ratio           {fast_wall / naive_wall:10.1f}x     {ratio_cpu}")


if __name__ == "__main__":
    asyncio.run(main())
