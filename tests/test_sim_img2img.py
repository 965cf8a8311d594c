"""img2img over HTTP: init image handling, batch sizing, echo rules and errors."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import aiohttp
from PIL import Image


def init_png(color: str = "green", size: tuple[int, int] = (48, 48)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def img2img(http: aiohttp.ClientSession, **body: Any) -> tuple[int, Any]:
    async with http.post("/sdapi/v1/img2img", json={"steps": 4, **body}) as resp:
        data = await resp.json()
    if resp.status == 200:
        data["info"] = json.loads(data["info"])
    return resp.status, data


def pixels(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).tobytes()


async def test_basic_img2img(sim_http: aiohttp.ClientSession) -> None:
    status, data = await img2img(sim_http, init_images=[init_png()], width=64, height=64, seed=9)
    assert status == 200, data
    assert data["parameters"]["init_images"] is None and data["parameters"]["mask"] is None
    assert data["parameters"]["denoising_strength"] == 0.75
    assert data["info"]["denoising_strength"] == 0.75
    assert "Denoising strength: 0.75" in data["info"]["infotexts"][0]
    _, kept = await img2img(
        sim_http,
        init_images=["data:image/png;base64," + init_png()],
        width=64,
        height=64,
        seed=9,
        include_init_images=True,
    )
    assert kept["parameters"]["init_images"] == ["data:image/png;base64," + init_png()]
    assert pixels(kept["images"][0]) == pixels(data["images"][0])
    _, other = await img2img(sim_http, init_images=[init_png("red")], width=64, height=64, seed=9)
    assert pixels(other["images"][0]) != pixels(data["images"][0])


async def test_batch_rules(sim_http: aiohttp.ClientSession) -> None:
    _, data = await img2img(sim_http, init_images=[init_png()], batch_size=3, seed=1)
    assert len(data["images"]) == 3 and data["info"]["all_seeds"] == [1, 2, 3]
    _, data = await img2img(sim_http, init_images=[init_png(), init_png("red")], batch_size=3)
    assert len(data["images"]) == 2 and data["info"]["batch_size"] == 2
    status, data = await img2img(sim_http, init_images=[init_png()] * 3, batch_size=2)
    assert status == 500 and data["error"] == "RuntimeError"
    assert data["errors"] == "bad number of images passed: 3; expecting 2 or less"


async def test_img2img_errors(sim_http: aiohttp.ClientSession) -> None:
    status, data = await img2img(sim_http, prompt="no init")
    assert (status, data) == (
        404,
        {"error": "HTTPException", "detail": "Init image not found", "body": "", "errors": ""},
    )
    status, data = await img2img(sim_http, init_images=["not base64 at all"])
    assert status == 500 and data["detail"] == "Invalid encoded image"
    status, data = await img2img(sim_http, init_images=["http://localhost/x.png"])
    assert status == 500 and data["detail"] == "Request to local resource not allowed"
    status, data = await img2img(sim_http, init_images=["https://example.com/x.png"])
    assert status == 500 and data["detail"] == "Invalid image url"
    status, data = await img2img(sim_http, init_images=[init_png()], mask="garbage")
    assert status == 500 and data["detail"] == "Invalid encoded image"


async def test_controlnet_uses_init_image(sim_http: aiohttp.ClientSession) -> None:
    unit = {"enabled": True, "module": "canny", "model": "control_v11p_sd15_canny"}
    status, data = await img2img(
        sim_http, init_images=[init_png()], alwayson_scripts={"ControlNet": {"args": [unit]}}
    )
    assert status == 200 and len(data["images"]) == 2
