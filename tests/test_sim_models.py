"""Checkpoints, aliases, override_settings, options, and the inventory routes."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from batchgen.sim import SimConfig, SimServer


async def get(http: aiohttp.ClientSession, path: str) -> Any:
    async with http.get(path) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def gen(http: aiohttp.ClientSession, **body: Any) -> dict[str, Any]:
    async with http.post("/sdapi/v1/txt2img", json={"steps": 1, **body}) as resp:
        assert resp.status == 200, await resp.text()
        info: dict[str, Any] = json.loads((await resp.json())["info"])
        return info


async def test_sd_models_titles_and_hashes(sim_http: aiohttp.ClientSession) -> None:
    models = await get(sim_http, "/sdapi/v1/sd-models")
    assert [m["model_name"] for m in models] == [
        "v1-5-pruned-emaonly",
        "sd_xl_base_1.0",
        "sdxl_dreamshaperXL",
    ]
    first = models[0]
    assert first["title"] == "v1-5-pruned-emaonly.safetensors [6ce0161689]"
    assert first["hash"] == "6ce0161689" and first["sha256"].startswith("6ce0161689")
    assert models[2]["title"].startswith("sdxl/dreamshaperXL.safetensors [")
    async with SimServer(SimConfig(models=("a.ckpt", "b/c.safetensors"))) as sim:
        again = await get(sim_http, sim.url + "/sdapi/v1/sd-models")
    assert [m["model_name"] for m in again] == ["a", "b_c"]
    async with SimServer(SimConfig(models=("a.ckpt",))) as sim:
        stable = await get(sim_http, sim.url + "/sdapi/v1/sd-models")
    assert stable == again[:1]


async def test_checkpoint_aliases_in_override(
    sim: SimServer, sim_http: aiohttp.ClientSession
) -> None:
    models = await get(sim_http, "/sdapi/v1/sd-models")
    xl = models[2]
    short = f"dreamshaperXL [{xl['hash']}]"
    names = (xl["title"], xl["model_name"], "sdxl/dreamshaperXL.safetensors", "dreamshaperXL")
    for alias in (*names, xl["hash"], xl["sha256"], short):
        info = await gen(sim_http, override_settings={"sd_model_checkpoint": alias})
        assert info["sd_model_name"] == "dreamshaperXL", alias
        assert info["sd_model_hash"] == xl["hash"]
    info = await gen(sim_http, override_settings={"sd_model_checkpoint": "dreamshaper"})
    assert info["sd_model_name"] == "v1-5-pruned-emaonly"  # fuzzy names are dropped silently


async def test_override_restore_semantics(sim: SimServer, sim_http: aiohttp.ClientSession) -> None:
    opts = await get(sim_http, "/sdapi/v1/options")
    start = opts["sd_model_checkpoint"]
    await gen(
        sim_http,
        override_settings={"sd_model_checkpoint": "sd_xl_base_1.0", "CLIP_stop_at_last_layers": 2},
    )
    assert sim.stats.switches == 1
    after = await get(sim_http, "/sdapi/v1/options")
    assert after["sd_model_checkpoint"] == start and after["CLIP_stop_at_last_layers"] == 1.0
    stats = await get(sim_http, "/_sim/stats")
    assert stats["loaded"].startswith("sd_xl_base_1.0.safetensors")  # not reloaded back
    info = await gen(sim_http)  # the next request reloads the opts checkpoint
    assert info["sd_model_name"] == "v1-5-pruned-emaonly" and sim.stats.switches == 2
    info = await gen(
        sim_http,
        override_settings={"sd_model_checkpoint": "sd_xl_base_1.0", "CLIP_stop_at_last_layers": 2},
        override_settings_restore_afterwards=False,
    )
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    info = await gen(sim_http)
    assert info["sd_model_name"] == "sd_xl_base_1.0" and info["clip_skip"] == 2
    assert sim.stats.switches == 3
    assert dict(sim.stats.per_checkpoint) == {
        start: 1,
        "sd_xl_base_1.0.safetensors [" + info["sd_model_hash"] + "]": 3,
    }


async def test_unknown_override_key_is_500(sim_http: aiohttp.ClientSession) -> None:
    async with sim_http.post("/sdapi/v1/txt2img", json={"override_settings": {"nope": 1}}) as resp:
        assert resp.status == 500
        assert await resp.json() == {
            "error": "KeyError",
            "detail": "",
            "body": "",
            "errors": "'nope'",
        }


async def test_post_options(sim: SimServer, sim_http: aiohttp.ClientSession) -> None:
    async with sim_http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "foo"}) as resp:
        assert resp.status == 500
        assert await resp.json() == {
            "error": "RuntimeError",
            "detail": "",
            "body": "",
            "errors": "model 'foo' not found",
        }
    async with sim_http.post("/sdapi/v1/options", json={"no_such_option": 1}) as resp:
        assert resp.status == 500 and (await resp.json())["error"] == "KeyError"
    body = {
        "sd_model_checkpoint": "sd_xl_base_1.0",
        "api_useragent": "x",
        "CLIP_stop_at_last_layers": 2,
    }
    async with sim_http.post("/sdapi/v1/options", json=body) as resp:
        assert resp.status == 200 and await resp.json() is None
    assert sim.stats.switches == 1
    opts = await get(sim_http, "/sdapi/v1/options")
    assert opts["sd_model_checkpoint"] == "sd_xl_base_1.0" and opts["api_useragent"] == ""
    assert opts["CLIP_stop_at_last_layers"] == 2.0
    info = await gen(sim_http)
    assert info["sd_model_name"] == "sd_xl_base_1.0" and sim.stats.switches == 1


async def test_inventory_routes(sim_http: aiohttp.ClientSession) -> None:
    samplers = await get(sim_http, "/sdapi/v1/samplers")
    assert samplers[0] == {
        "name": "DPM++ 2M",
        "aliases": ["k_dpmpp_2m"],
        "options": {"scheduler": "karras"},
    }
    sde = next(s for s in samplers if s["name"] == "DPM++ SDE")
    assert sde["options"]["second_order"] == "True"
    schedulers = await get(sim_http, "/sdapi/v1/schedulers")
    assert schedulers[2] == {
        "name": "karras",
        "label": "Karras",
        "aliases": None,
        "default_rho": 7.0,
        "need_inner_model": False,
    }
    vae = await get(sim_http, "/sdapi/v1/sd-vae")
    assert vae[0]["model_name"] == "vae-ft-mse-840000-ema-pruned.safetensors"
    loras = await get(sim_http, "/sdapi/v1/loras")
    assert {"name", "alias", "path", "metadata"} <= set(loras[0])
    upscalers = await get(sim_http, "/sdapi/v1/upscalers")
    assert [u["name"] for u in upscalers][:4] == ["None", "Lanczos", "Nearest", "R-ESRGAN 4x+"]
    memory = await get(sim_http, "/sdapi/v1/memory")
    assert set(memory) == {"ram", "cuda"}
    assert await get(sim_http, "/internal/ping") == {}
    idle = await get(sim_http, "/sdapi/v1/progress")
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    for path in ("refresh-checkpoints", "skip"):
        async with sim_http.post(f"/sdapi/v1/{path}") as resp:
            assert resp.status == 200 and await resp.json() is None
    async with sim_http.post("/sdapi/v1/interrupt") as resp:
        assert await resp.json() == {}


async def test_nowebui_has_no_internal_routes() -> None:
    async with (
        SimServer(SimConfig(webui=False)) as sim,
        aiohttp.ClientSession() as http,
        http.get(sim.url + "/internal/ping") as resp,
    ):
        assert resp.status == 404
