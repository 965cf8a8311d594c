"""The Forge flavor: its routes, error shapes, ControlNet unit and hires requirements."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from PIL import Image

from batchgen.sim import SimConfig, SimServer


@pytest.fixture
async def forge() -> AsyncIterator[tuple[SimServer, aiohttp.ClientSession]]:
    async with (
        SimServer(SimConfig(flavor="forge")) as sim,
        aiohttp.ClientSession(base_url=sim.url) as http,
    ):
        yield sim, http


def png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "white").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def txt2img(http: aiohttp.ClientSession, **body: Any) -> tuple[int, Any, Any]:
    async with http.post("/sdapi/v1/txt2img", json={"steps": 1, "width": 64, **body}) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_routes(forge: tuple[SimServer, aiohttp.ClientSession]) -> None:
    _, http = forge
    expected = {
        "/sdapi/v1/sd-vae": 404,
        "/sdapi/v1/sd-modules": 200,
        "/controlnet/version": 404,
        "/controlnet/settings": 404,
        "/controlnet/model_list": 200,
        "/sdapi/v1/options": 200,
    }
    for path, status in expected.items():
        async with http.get(path) as resp:
            assert resp.status == status, path
    async with http.get("/sdapi/v1/samplers") as resp:
        sde = next(s for s in await resp.json() if s["name"] == "DPM++ SDE")
    assert sde["options"]["second_order"] is True
    async with http.get("/sdapi/v1/options") as resp:
        opts = await resp.json()
    assert opts["CLIP_stop_at_last_layers"] == 1 and "forge_additional_modules" in opts


async def test_response_and_errors(forge: tuple[SimServer, aiohttp.ClientSession]) -> None:
    _, http = forge
    status, data, headers = await txt2img(http, prompt="x")
    assert status == 200 and "X-Process-Time" not in headers
    assert json.loads(data["info"])["version"].startswith("f2.0.1v1.10.1")
    status, data, _ = await txt2img(http, enable_hr=True, denoising_strength=0.5)
    assert status == 500
    assert set(data) == {"error", "detail", "body", "message"} and data["error"] == "TypeError"
    status, data, _ = await txt2img(
        http, enable_hr=True, denoising_strength=0.5, hr_additional_modules=["Use same choices"]
    )
    assert status == 200
    status, data, _ = await txt2img(http, script_name="nope")
    assert (status, data) == (422, {"detail": "Script 'nope' not found"})


async def test_controlnet_unit(forge: tuple[SimServer, aiohttp.ClientSession]) -> None:
    _, http = forge
    unit: dict[str, Any] = {"module": "canny", "model": "control_v11p_sd15_canny"}
    unit |= {"resize_mode": 1, "control_mode": 0}
    scripts = {"ControlNet": {"args": [{**unit, "image": png()}]}}
    status, data, _ = await txt2img(http, alwayson_scripts=scripts)
    assert status == 200 and len(data["images"]) == 2  # enabled by default; ints accepted
    text = json.loads(data["info"])["extra_generation_params"]["ControlNet 0"]
    assert "Resize Mode: Crop and Resize" in text and "Control Mode: Balanced" in text
    scripts = {"ControlNet": {"args": [{**unit, "input_image": png()}]}}
    status, data, _ = await txt2img(http, alwayson_scripts=scripts)
    assert status == 200 and len(data["images"]) == 1  # input_image is ignored: no map


async def test_options_load_lazily(forge: tuple[SimServer, aiohttp.ClientSession]) -> None:
    sim, http = forge
    async with http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"}) as resp:
        assert resp.status == 500
        assert (await resp.json())["message"] == "model 'nope' not found"
    async with http.post(
        "/sdapi/v1/options", json={"sd_model_checkpoint": "sd_xl_base_1.0"}
    ) as resp:
        assert resp.status == 200 and await resp.json() is None
    assert sim.stats.switches == 0
    status, data, _ = await txt2img(http)
    assert status == 200 and json.loads(data["info"])["sd_model_name"] == "sd_xl_base_1.0"
    assert sim.stats.switches == 1
