"""ControlNet over HTTP: unit validation (500s), detected maps, infotext, /controlnet routes."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

SAMPLE = json.loads(Path("/work/shared/samples/a1111-txt2img-controlnet-request.json").read_text())


def source_png(color: str = "red") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def unit(**fields: Any) -> dict[str, Any]:
    base = {"enabled": True, "module": "canny", "model": "control_v11p_sd15_canny"}
    return {**base, "image": source_png(), **fields}


async def run(http: aiohttp.ClientSession, units: list[Any], **body: Any) -> tuple[int, Any]:
    scripts = {"controlnet": {"args": units}}
    payload = {"steps": 1, "width": 64, "height": 64, **body, "alwayson_scripts": scripts}
    async with http.post("/sdapi/v1/txt2img", json=payload) as resp:
        data = await resp.json()
    if resp.status == 200:
        data["info"] = json.loads(data["info"])
    return resp.status, data


def has_parameters(b64: str) -> bool:
    return "parameters" in Image.open(io.BytesIO(base64.b64decode(b64))).info


async def test_integer_resize_mode_is_500_validation_error(sim_http: aiohttp.ClientSession) -> None:
    status, data = await run(sim_http, [unit(resize_mode=1, control_mode=0)])
    assert status == 500
    assert data["error"] == "ValidationError" and data["detail"] == "" and data["body"] == ""
    assert data["errors"].startswith(
        "2 validation errors for ControlNetUnit\nresize_mode\n   (type=assertion_error)\n"
        "control_mode\n  value is not a valid enumeration member; permitted: 'Balanced', "
        "'My prompt is more important', 'ControlNet is more important' (type=type_error.enum; "
    )
    status, data = await run(sim_http, [unit(module="Canny")])
    assert status == 500
    assert "module(Canny) not found in supported modules." in data["errors"]
    status, data = await run(sim_http, [unit(input_image=source_png())])
    assert status == 500 and data["error"] == "AssertionError"


async def test_the_shared_sample_request_is_rejected(sim_http: aiohttp.ClientSession) -> None:
    async with sim_http.post("/sdapi/v1/txt2img", json=SAMPLE) as resp:
        assert resp.status == 500
        data = await resp.json()
    assert (
        data["error"] == "ValidationError"
        and "resize_mode\n   (type=assertion_error)" in data["errors"]
    )


async def test_detected_maps_appended_after_images(sim_http: aiohttp.ClientSession) -> None:
    depth = unit(
        module="depth_midas",
        model="control_v11f1p_sd15_depth",
        weight=0.6,
        resize_mode="Just Resize",
        control_mode="My prompt is more important",
        pixel_perfect=True,
        image="data:image/png;base64," + source_png("blue"),
    )
    canny = unit(
        model="control_v11p_sd15_canny [d14c016b]",
        threshold_a=100,
        threshold_b=200,
        processor_res=512,
    )
    status, data = await run(sim_http, [canny, depth], batch_size=2, seed=1234)
    assert status == 200, data
    assert len(data["images"]) == 4 and len(data["info"]["infotexts"]) == 2
    assert [has_parameters(i) for i in data["images"]] == [True, True, False, False]
    extra = data["info"]["extra_generation_params"]
    assert extra["ControlNet 0"] == (
        "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, "
        "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100.0, "
        "Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, "
        "Control Mode: Balanced"
    )
    assert extra["ControlNet 1"] == (
        "Module: depth_midas, Model: control_v11f1p_sd15_depth, Weight: 0.6, "
        "Resize Mode: Just Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, "
        "Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: True, "
        "Control Mode: My prompt is more important"
    )
    assert 'ControlNet 0: "Module: canny, Model:' in data["info"]["infotexts"][0]
    assert data["parameters"]["alwayson_scripts"]["controlnet"]["args"][0] == canny


async def test_defaults_for_out_of_range_sliders(sim_http: aiohttp.ClientSession) -> None:
    _, data = await run(sim_http, [unit()])  # -1 everywhere: canny's own int defaults
    text = data["info"]["extra_generation_params"]["ControlNet 0"]
    assert "Processor Res: 512, Threshold A: 100, Threshold B: 200" in text


async def test_runtime_failures_give_200_without_maps(sim_http: aiohttp.ClientSession) -> None:
    for bad in (
        unit(model="nonexistent"),
        unit(model="None"),
        unit(image="bm90IGFuIGltYWdl"),
        unit(image=None),
    ):
        status, data = await run(sim_http, [bad], batch_size=2)
        assert status == 200 and len(data["images"]) == 2, bad
        assert "ControlNet 0" in data["info"]["extra_generation_params"]


async def test_disabled_dropped_and_hires_units(sim_http: aiohttp.ClientSession) -> None:
    status, data = await run(sim_http, [{"module": "canny"}, unit(), unit(save_detected_map=False)])
    assert status == 200 and len(data["images"]) == 2  # enabled defaults to false
    assert list(data["info"]["extra_generation_params"]) == ["ControlNet 1", "ControlNet 2"]
    status, data = await run(sim_http, [unit()] * 4)
    assert len(data["images"]) == 4  # 3 slots: the 4th unit is silently dropped
    status, data = await run(sim_http, [unit()], enable_hr=True, denoising_strength=0.5)
    sizes = [Image.open(io.BytesIO(base64.b64decode(i))).size for i in data["images"]]
    assert sizes == [(128, 128), (128, 128), (64, 64)]


async def test_controlnet_routes(sim_http: aiohttp.ClientSession) -> None:
    async with sim_http.get("/controlnet/version") as resp:
        assert await resp.json() == {"version": 3}
    async with sim_http.get("/controlnet/model_list") as resp:
        models = (await resp.json())["model_list"]
    assert models[0].startswith("control_v11p_sd15_canny [") and "None" not in models
    async with sim_http.get("/controlnet/module_list") as resp:
        modules = await resp.json()
    assert modules["module_list"][0] == "none" and "canny" in modules["module_detail"]
    async with sim_http.get("/controlnet/settings") as resp:
        assert await resp.json() == {"control_net_unit_count": 3}
