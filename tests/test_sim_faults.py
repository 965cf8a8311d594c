"""Fault injection: OOM 500s, dropped and hung connections, death, 503 and refusal windows."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import aiohttp
import pytest

from batchgen.sim import SimConfig, SimServer

OOM_PREFIX = "CUDA out of memory. Tried to allocate"


async def outcome(http: aiohttp.ClientSession, url: str, timeout: float = 2.0) -> Any:
    try:
        async with http.post(
            url + "/sdapi/v1/txt2img",
            json={"steps": 1},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            return resp.status
    except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:  # 3.10: not builtin
        return type(exc).__name__


async def sequence(config: SimConfig, n: int) -> list[Any]:
    async with SimServer(config) as sim, aiohttp.ClientSession() as http:
        return [await outcome(http, sim.url, timeout=0.4) for _ in range(n)]


async def test_oom_body() -> None:
    async with SimServer(SimConfig(fail_rate=1.0)) as sim, aiohttp.ClientSession() as http:
        async with http.post(sim.url + "/sdapi/v1/txt2img", json={}) as resp:
            assert resp.status == 500
            body = await resp.json()
        assert body["error"] == "OutOfMemoryError" and body["errors"].startswith(OOM_PREFIX)
        assert (body["detail"], body["body"]) == ("", "")
        assert sim.stats.faults["fail"] == 1 and sim.stats.generations == 0


async def test_same_seed_same_faults() -> None:
    config = SimConfig(fail_rate=0.3, drop_rate=0.2, hang_rate=0.1, fault_seed=7)
    first = await sequence(config, 16)
    assert first == await sequence(config, 16)
    assert {200, 500, "ServerDisconnectedError", "TimeoutError"} <= set(first)
    other = await sequence(SimConfig(fail_rate=0.3, drop_rate=0.2, hang_rate=0.1, fault_seed=8), 16)
    assert other != first


async def test_drop_after_work_and_hang() -> None:
    async with SimServer(SimConfig(drop_rate=1.0)) as sim, aiohttp.ClientSession() as http:
        assert await outcome(http, sim.url) == "ServerDisconnectedError"
        assert sim.stats.generations == 1  # the work was done, the answer lost
    async with SimServer(SimConfig(hang_rate=1.0)) as sim, aiohttp.ClientSession() as http:
        began = time.perf_counter()
        assert await outcome(http, sim.url, timeout=0.2) == "TimeoutError"
        assert time.perf_counter() - began < 0.5
        async with http.get(sim.url + "/internal/ping") as resp:
            assert resp.status == 200  # a hung request does not hold the queue


async def test_die_after_and_restart_on_same_port() -> None:
    sim = SimServer(SimConfig(die_after=2))
    url = await sim.start()
    async with aiohttp.ClientSession() as http:
        assert [await outcome(http, url) for _ in range(2)] == [200, 200]
        assert await outcome(http, url) == "ServerDisconnectedError"
        await asyncio.sleep(0.01)
        assert await outcome(http, url) == "ClientConnectorError"
        port = int(url.rsplit(":", 1)[1])
        reborn = SimServer()
        assert await reborn.start(port=port) == url
        assert await outcome(http, url) == 200
        await reborn.stop()
    await sim.stop()


async def test_unavailable_then_ready() -> None:
    async with SimServer(SimConfig(unavailable_s=0.5)) as sim, aiohttp.ClientSession() as http:
        async with http.get(sim.url + "/internal/ping") as resp:
            assert resp.status == 503
            assert await resp.json() == {
                "error": "HTTPException",
                "detail": "Service Unavailable",
                "body": "",
                "errors": "",
            }
        await asyncio.sleep(0.55)
        assert await outcome(http, sim.url) == 200


async def test_refuse_then_listen() -> None:
    async with SimServer(SimConfig(refuse_s=0.5)) as sim, aiohttp.ClientSession() as http:
        assert sim.url
        assert await outcome(http, sim.url) == "ClientConnectorError"
        await asyncio.sleep(0.6)
        assert await outcome(http, sim.url) == 200


async def test_runtime_config_route() -> None:
    async with SimServer() as sim, aiohttp.ClientSession() as http:
        async with http.post(sim.url + "/_sim/config", json={"fail_rate": 1}) as resp:
            assert resp.status == 200 and (await resp.json())["fail_rate"] == 1.0
        assert await outcome(http, sim.url) == 500
        async with http.post(sim.url + "/_sim/config", json={"models": "x"}) as resp:
            assert resp.status == 400 and "models" in (await resp.json())["detail"]
        async with http.post(sim.url + "/_sim/config", json={"fail_rte": 1}) as resp:
            assert resp.status == 400 and "fail_rte" in (await resp.json())["detail"]
        async with http.post(sim.url + "/_sim/config", json={"fail_rate": 0, "die_after": 0}):
            pass
        assert await outcome(http, sim.url) == "ServerDisconnectedError"


@pytest.mark.parametrize("knob", ["fail_rate", "drop_rate", "hang_rate"])
def test_rates_are_checked(knob: str) -> None:
    with pytest.raises(ValueError, match=knob):
        SimConfig.from_query(f"{knob}=1.5")


async def test_set_config_in_process_and_reseed() -> None:
    async with SimServer() as sim, aiohttp.ClientSession() as http:
        await sim.set_config(dataclasses.replace(sim.config, fail_rate=1.0))
        assert await outcome(http, sim.url) == 500
        with pytest.raises(ValueError, match="flavor"):
            await sim.set_config(dataclasses.replace(sim.config, flavor="forge"))
        async with http.post(sim.url + "/_sim/config", json={"fail_rate": 0.5, "fault_seed": 3}):
            pass
        assert sim.config.fault_seed == 3 and sim.config.fail_rate == 0.5
        first = [await outcome(http, sim.url) for _ in range(8)]
        async with http.post(sim.url + "/_sim/config", json={"fault_seed": 4}):
            pass
        async with http.post(sim.url + "/_sim/config", json={"fault_seed": 3}):
            pass
        assert [await outcome(http, sim.url) for _ in range(8)] == first


async def test_port_in_use_raises_cleanly() -> None:
    async with SimServer() as first:
        port = int(first.url.rsplit(":", 1)[1])
        second = SimServer()
        with pytest.raises(OSError):
            await second.start(port=port)
        await second.stop()
