"""Cross-check with the third-party A1111 client `webuiapi` (sync, so it runs in a thread)."""

from __future__ import annotations

import asyncio

import webuiapi
from PIL import Image

from batchgen.sim import SimConfig, SimServer


def port_of(sim: SimServer) -> int:
    return int(sim.url.rsplit(":", 1)[1])


def drive(port: int) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=5)
    assert api.has_controlnet  # found "controlnet m2m" in /sdapi/v1/scripts
    result = api.txt2img(
        prompt="fox", seed=42, width=64, height=64, batch_size=2, alwayson_scripts={}
    )
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [42, 43] and result.parameters["seed"] == 42
    assert result.images[1].info["parameters"] == result.info["infotexts"][1]
    assert "Sampler: Euler a, Schedule type: Automatic" in result.info["infotexts"][0]
    again = api.txt2img(prompt="fox", seed=42, width=64, height=64, alwayson_scripts={})
    assert again.image.tobytes() == result.image.tobytes()

    edited = api.img2img(
        images=[result.image], prompt="fox", seed=1, width=64, height=64, alwayson_scripts={}
    )
    assert len(edited.images) == 1 and edited.info["denoising_strength"] == 0.75

    unit = webuiapi.ControlNetUnit(
        image=Image.new("RGB", (32, 32), "white"), module="canny", model="control_v11p_sd15_canny"
    )
    with_cn = api.txt2img(
        prompt="fox", width=64, height=64, controlnet_units=[unit], alwayson_scripts={}
    )
    assert len(with_cn.images) == 2 and "ControlNet 0" in with_cn.info["extra_generation_params"]
    assert api.controlnet_version() == 3
    assert "canny" in api.controlnet_module_list()
    assert api.controlnet_model_list()[0].startswith("control_v11p_sd15_canny [")

    names = api.util_get_model_names()
    assert any(n.startswith("sd_xl_base_1.0.safetensors [") for n in names)
    api.util_set_model("sd_xl_base_1.0.safetensors")
    assert api.util_get_current_model().startswith("sd_xl_base_1.0.safetensors [")
    after = api.txt2img(prompt="fox", width=64, height=64, alwayson_scripts={})
    assert after.info["sd_model_name"] == "sd_xl_base_1.0"

    assert "DPM++ 2M" in api.util_get_sampler_names()
    assert "karras" in api.util_get_scheduler_names()
    assert api.get_progress()["state"]["job_count"] == 0
    assert api.get_sd_vae() and api.get_loras() and api.get_upscalers() and api.get_memory()
    api.interrupt()
    api.skip()
    api.refresh_checkpoints()
    try:
        api.txt2img(prompt="x", script_name="nope", alwayson_scripts={})
    except RuntimeError as exc:
        assert exc.args[0] == 422
    else:
        raise AssertionError("expected a 422")


async def test_webuiapi_against_sim(sim: SimServer) -> None:
    await asyncio.to_thread(drive, port_of(sim))
    assert sim.stats.switches == 1


def drive_with_auth(port: int) -> None:
    api = webuiapi.WebUIApi(port=port, username="u", password="p", steps=2)
    assert api.txt2img(prompt="x", width=64, height=64, alwayson_scripts={}).image.size == (64, 64)
    anonymous = webuiapi.WebUIApi(port=port, steps=2)
    try:
        anonymous.txt2img(prompt="x", alwayson_scripts={})
    except RuntimeError as exc:
        assert exc.args[0] == 401 and "Not authenticated" in exc.args[1]
    else:
        raise AssertionError("expected a 401")


async def test_webuiapi_basic_auth() -> None:
    async with SimServer(SimConfig(api_auth="u:p")) as sim:
        await asyncio.to_thread(drive_with_auth, port_of(sim))
