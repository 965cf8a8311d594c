"""One generation at a time in arrival order, the time model, progress, interrupt and skip."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from batchgen.sim import SimConfig, SimServer


async def timed_post(http: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    async with http.post("/sdapi/v1/txt2img", json=body) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.json()
    return time.perf_counter() - began, data


async def test_fifo_while_other_routes_answer() -> None:
    config = SimConfig(ms_per_step=10.0)  # 20 steps of 512x512 = 200 ms per request
    async with SimServer(config) as sim, aiohttp.ClientSession(base_url=sim.url) as http:
        finished: list[str] = []

        async def one(name: str) -> None:
            await timed_post(http, {"prompt": name, "steps": 20})
            finished.append(name)

        tasks = []
        for i in range(4):
            tasks.append(asyncio.create_task(one(f"p{i}")))
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        began = time.perf_counter()
        async with http.get("/sdapi/v1/progress") as resp:
            progress = await resp.json()
        async with http.get("/sdapi/v1/sd-models") as resp:
            assert resp.status == 200
        assert time.perf_counter() - began < 0.15  # not queued behind 600 ms of generations
        assert progress["state"]["job_count"] == 1 and progress["state"]["job"] == "txt2img"
        assert 0 < progress["progress"] <= 1
        await asyncio.gather(*tasks)
        assert finished == ["p0", "p1", "p2", "p3"]
        assert [b["prompt"] for b in sim.stats.history] == finished


async def test_time_model_scales() -> None:
    config = SimConfig(ms_per_step=1.0, switch_s=0.15)
    async with SimServer(config) as sim, aiohttp.ClientSession(base_url=sim.url) as http:
        base, _ = await timed_post(http, {"steps": 20})  # 20 ms
        big, _ = await timed_post(http, {"steps": 20, "batch_size": 2, "n_iter": 2, "width": 1024})
        assert 0.02 <= base < 0.2
        assert 0.16 <= big < 0.4  # 20 ms x 2 (pixels) x 4 (images)
        switch, _ = await timed_post(
            http, {"steps": 20, "override_settings": {"sd_model_checkpoint": "sd_xl_base_1.0"}}
        )
        assert 0.17 <= switch < 0.4 and sim.stats.switches == 1
    async with SimServer(SimConfig(ms_per_step=1.0, speed=4)) as sim:
        async with aiohttp.ClientSession(base_url=sim.url) as http:
            fast, _ = await timed_post(http, {"steps": 400})  # 400 ms / 4
        assert 0.1 <= fast < 0.3


async def test_interrupt_returns_finished_batches() -> None:
    config = SimConfig(ms_per_step=15.0)  # 20 steps: 300 ms per batch
    async with SimServer(config) as sim, aiohttp.ClientSession(base_url=sim.url) as http:
        job = asyncio.create_task(timed_post(http, {"steps": 20, "n_iter": 4, "seed": 1}))
        await asyncio.sleep(0.45)
        async with http.get("/sdapi/v1/progress") as resp:
            state = (await resp.json())["state"]
        assert state["job_no"] == 1 and state["job_count"] == 4
        async with http.post("/sdapi/v1/interrupt") as resp:
            assert await resp.json() == {}
        elapsed, data = await job
        assert elapsed < 0.9  # four batches would take 1.2 s
        info = json.loads(data["info"])
        assert info["all_seeds"] == [1, 2] and len(data["images"]) == 2
        # The flag does not leak into the next request.
        _, data = await timed_post(http, {"steps": 1, "n_iter": 2})
        assert len(data["images"]) == 2


async def test_skip_ends_current_batch_only() -> None:
    config = SimConfig(ms_per_step=20.0)  # 400 ms per batch
    async with SimServer(config) as sim, aiohttp.ClientSession(base_url=sim.url) as http:
        job = asyncio.create_task(timed_post(http, {"steps": 20, "n_iter": 2}))
        await asyncio.sleep(0.1)
        async with http.post("/sdapi/v1/skip") as resp:
            assert resp.status == 200
        elapsed, data = await job
        assert 0.48 <= elapsed < 0.7 and len(data["images"]) == 2  # not 0.8 s


async def test_zero_delay_mode_is_fast() -> None:
    config = SimConfig(ms_per_step=0, switch_s=0)
    async with SimServer(config) as sim, aiohttp.ClientSession(base_url=sim.url) as http:
        began = time.perf_counter()
        for i in range(50):
            await timed_post(http, {"steps": 150, "seed": i})
        assert time.perf_counter() - began < 1.0


async def test_client_timeout_does_not_cancel_the_job() -> None:
    async with SimServer(SimConfig(ms_per_step=10.0)) as sim, aiohttp.ClientSession() as http:
        try:
            async with http.post(
                sim.url + "/sdapi/v1/txt2img",
                json={"steps": 20},
                timeout=aiohttp.ClientTimeout(total=0.05),
            ):
                raise AssertionError("expected a timeout")
        except asyncio.TimeoutError:  # on 3.10 not the builtin TimeoutError
            pass
        assert sim.stats.generations == 0
        await asyncio.sleep(0.3)
        assert sim.stats.generations == 1  # finished for nobody, as in A1111


async def test_stop_does_not_wait_for_queued_work() -> None:
    sim = SimServer(SimConfig(ms_per_step=500.0))  # 10 s per request
    async with aiohttp.ClientSession() as http:

        async def doomed() -> None:
            try:
                async with http.post(sim.url + "/sdapi/v1/txt2img", json={"steps": 20}):
                    raise AssertionError("expected a disconnect")
            except aiohttp.ClientConnectionError:
                pass

        await sim.start()
        tasks = [asyncio.create_task(doomed()) for _ in range(3)]
        await asyncio.sleep(0.2)
        began = time.perf_counter()
        await sim.stop()
        assert time.perf_counter() - began < 1.0
        await asyncio.gather(*tasks)


async def test_internal_progress_with_force_task_id() -> None:
    config = SimConfig(ms_per_step=10.0)  # 200 ms per request
    async with SimServer(config) as sim, aiohttp.ClientSession(base_url=sim.url) as http:

        async def where(task: str) -> dict[str, Any]:
            async with http.post("/internal/progress", json={"id_task": task}) as resp:
                data: dict[str, Any] = await resp.json()
                return data

        jobs = []
        for task in ("task(a)", "task(b)"):
            body = {"steps": 20, "force_task_id": task}
            jobs.append(asyncio.create_task(timed_post(http, body)))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.03)
        a, b = await where("task(a)"), await where("task(b)")
        assert a["active"] and not a["queued"] and 0 <= a["progress"] < 1
        assert not b["active"] and b["queued"] and b["textinfo"] == "In queue: 1/1"
        async with http.get("/internal/pending-tasks") as resp:
            assert await resp.json() == {"size": 1, "tasks": ["task(b)"]}
        await asyncio.gather(*jobs)
        done = await where("task(a)")
        assert done["completed"] and not done["active"] and done["textinfo"] == "Waiting..."
        unknown = await where("task(zzz)")
        assert not (unknown["active"] or unknown["queued"] or unknown["completed"])
