"""txt2img over HTTP: response shape, seeds, infotext, sampler fallback, reproducible pixels."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import aiohttp
from PIL import Image

from batchgen.sim import SimServer

INFO_KEYS = [
    "prompt",
    "all_prompts",
    "negative_prompt",
    "all_negative_prompts",
    "seed",
    "all_seeds",
    "subseed",
    "all_subseeds",
    "subseed_strength",
    "width",
    "height",
    "sampler_name",
    "cfg_scale",
    "steps",
    "batch_size",
    "restore_faces",
    "face_restoration_model",
    "sd_model_name",
    "sd_model_hash",
    "sd_vae_name",
    "sd_vae_hash",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "denoising_strength",
    "extra_generation_params",
    "index_of_first_image",
    "infotexts",
    "styles",
    "job_timestamp",
    "clip_skip",
    "is_using_inpainting_conditioning",
    "version",
]


async def txt2img(http: aiohttp.ClientSession, **body: Any) -> dict[str, Any]:
    async with http.post("/sdapi/v1/txt2img", json=body) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
    data["info"] = json.loads(data["info"])
    return data


def png(b64: str) -> Image.Image:
    assert not b64.startswith("data:")
    img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    img.load()
    return img


async def test_response_shape_and_info_keys(sim_http: aiohttp.ClientSession) -> None:
    async with sim_http.post("/sdapi/v1/txt2img", json={"prompt": "a fox"}) as resp:
        assert resp.status == 200
        assert "X-Process-Time" in resp.headers
        data = await resp.json()
    assert set(data) == {"images", "parameters", "info"}
    assert isinstance(data["info"], str)
    info = json.loads(data["info"])
    assert list(info) == INFO_KEYS
    assert info["version"] == "v1.10.1"
    assert info["sd_model_name"] == "v1-5-pruned-emaonly"
    assert info["sd_model_hash"] == "6ce0161689"
    assert info["styles"] == [] and info["index_of_first_image"] == 0


async def test_seed_minus_one_resolved_only_in_info(sim_http: aiohttp.ClientSession) -> None:
    data = await txt2img(sim_http, prompt="p", seed=-1, batch_size=2, n_iter=2, steps=5)
    info = data["info"]
    assert data["parameters"]["seed"] == -1
    base = info["seed"]
    assert base >= 0 and info["all_seeds"] == [base, base + 1, base + 2, base + 3]
    assert len(data["images"]) == 4 == len(info["infotexts"])
    for i, b64 in enumerate(data["images"]):
        text = png(b64).info["parameters"]
        assert text == info["infotexts"][i]
        assert f"Seed: {base + i}," in text
    assert info["all_subseeds"][1] == info["all_subseeds"][0] + 1


async def test_variation_strength_keeps_one_seed(sim_http: aiohttp.ClientSession) -> None:
    data = await txt2img(sim_http, seed=7, subseed=100, subseed_strength=0.5, batch_size=3)
    assert data["info"]["all_seeds"] == [7, 7, 7]
    assert data["info"]["all_subseeds"] == [100, 101, 102]
    assert "Variation seed: 100, Variation seed strength: 0.5" in data["info"]["infotexts"][0]


async def test_parameters_echo_defaults(sim_http: aiohttp.ClientSession) -> None:
    data = await txt2img(sim_http, prompt="x", cfg_scale=7, steps="20", bogus_field=1)
    params = data["parameters"]
    assert params["sampler_index"] == "Euler"
    assert params["cfg_scale"] == 7.0 and isinstance(params["cfg_scale"], float)
    assert params["steps"] == 20
    assert params["denoising_strength"] is None and params["enable_hr"] is False
    assert params["styles"] is None
    assert "bogus_field" not in params
    assert data["info"]["steps"] == 20


async def test_infotext_format(sim_http: aiohttp.ClientSession) -> None:
    data = await txt2img(
        sim_http,
        prompt="a red fox, photo",
        negative_prompt="lowres, blurry",
        seed=1234,
        steps=20,
        cfg_scale=7,
        width=512,
        height=768,
        sampler_name="DPM++ 2M",
        scheduler="Karras",
    )
    assert data["info"]["infotexts"][0] == (
        "a red fox, photo\nNegative prompt: lowres, blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, "
        "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
    )
    assert png(data["images"][0]).size == (512, 768)


async def test_sampler_fallbacks(sim_http: aiohttp.ClientSession) -> None:
    cases = [
        ({}, "Euler", "Automatic"),
        ({"sampler_name": "no such sampler"}, "DPM++ 2M", "Automatic"),
        ({"sampler_name": "k_euler_a"}, "DPM++ 2M", "Automatic"),
        ({"sampler_name": "DPM++ 2M Karras"}, "DPM++ 2M", "Karras"),
        ({"sampler_name": "", "sampler_index": "DPM++ SDE Karras"}, "DPM++ SDE", "Karras"),
        ({"sampler_name": "Euler a", "scheduler": "nonsense"}, "Euler a", "Automatic"),
        ({"sampler_name": "Euler a", "scheduler": "sgm_uniform"}, "Euler a", "SGM Uniform"),
    ]
    for body, sampler, schedule in cases:
        data = await txt2img(sim_http, steps=1, **body)
        assert data["info"]["sampler_name"] == sampler, body
        assert f"Sampler: {sampler}, Schedule type: {schedule}," in data["info"]["infotexts"][0]


async def test_pixels_are_a_function_of_the_inputs(sim_http: aiohttp.ClientSession) -> None:
    base = {"prompt": "p", "negative_prompt": "n", "seed": 5, "steps": 2, "width": 64, "height": 64}
    first = await txt2img(sim_http, **base)
    again = await txt2img(sim_http, **base, cfg_scale=3)  # cfg is not part of the key
    assert png(first["images"][0]).tobytes() == png(again["images"][0]).tobytes()
    variants: list[dict[str, Any]] = [
        {"prompt": "q"},
        {"negative_prompt": "m"},
        {"seed": 6},
        {"width": 72},
        {"override_settings": {"sd_model_checkpoint": "sd_xl_base_1.0"}},
    ]
    seen = {png(first["images"][0]).tobytes()}
    for change in variants:
        data = await txt2img(sim_http, **{**base, **change})
        seen.add(png(data["images"][0]).tobytes())
    assert len(seen) == len(variants) + 1


async def test_send_images_false_and_grid(sim_http: aiohttp.ClientSession) -> None:
    data = await txt2img(sim_http, batch_size=2, send_images=False)
    assert data["images"] == [] and len(data["info"]["infotexts"]) == 2
    data = await txt2img(sim_http, seed=3, batch_size=2, width=64, height=64, save_images=True)
    assert len(data["images"]) == 3 and data["info"]["index_of_first_image"] == 1
    assert png(data["images"][0]).size == (128, 64)
    assert len(data["info"]["infotexts"]) == 3
    single = await txt2img(sim_http, batch_size=1, save_images=True)
    assert len(single["images"]) == 1 and single["info"]["index_of_first_image"] == 0


async def test_size_floored_to_multiple_of_8(sim_http: aiohttp.ClientSession) -> None:
    data = await txt2img(sim_http, width=100, height=70, steps=1)
    assert png(data["images"][0]).size == (96, 64)
    assert "Size: 100x70" in data["info"]["infotexts"][0]


async def test_hires_fix(sim_http: aiohttp.ClientSession) -> None:
    data = await txt2img(
        sim_http, width=64, height=64, steps=2, enable_hr=True, denoising_strength=0.4
    )
    assert png(data["images"][0]).size == (128, 128)
    text = data["info"]["infotexts"][0]
    assert "Denoising strength: 0.4" in text and "Hires upscale: 2.0" in text
    assert data["info"]["width"] == 64
    resized = await txt2img(
        sim_http, width=64, height=32, enable_hr=True, denoising_strength=0.4, hr_resize_x=256
    )
    assert png(resized["images"][0]).size == (256, 128)


async def test_hires_errors(sim_http: aiohttp.ClientSession) -> None:
    cases = [
        ({}, "TypeError", "'>' not supported between instances of 'NoneType' and 'int'"),
        (
            {"denoising_strength": 0.5, "hr_upscaler": "Nope"},
            "Exception",
            "could not find upscaler named Nope",
        ),
        (
            {"denoising_strength": 0.5, "hr_checkpoint_name": "zzz"},
            "Exception",
            "Could not find checkpoint with name zzz",
        ),
    ]
    for extra, error, errors in cases:
        async with sim_http.post(
            "/sdapi/v1/txt2img", json={"enable_hr": True, "steps": 1, **extra}
        ) as resp:
            assert resp.status == 500
            assert await resp.json() == {"error": error, "detail": "", "body": "", "errors": errors}
    ok = await txt2img(
        sim_http,
        enable_hr=True,
        denoising_strength=0.5,
        hr_upscaler="R-ESRGAN 4x+",
        hr_checkpoint_name="dreamshaper",
        width=64,
        height=64,
    )
    assert "Hires upscaler: R-ESRGAN 4x+" in ok["info"]["infotexts"][0]


async def test_lora_hashes_and_quoting(sim_http: aiohttp.ClientSession) -> None:
    data = await txt2img(sim_http, prompt="cat <lora:add_detail:0.8> <lora:missing:1>", steps=1)
    text = data["info"]["infotexts"][0]
    assert 'Lora hashes: "add_detail: ' in text
    assert "missing" not in data["info"]["extra_generation_params"].get("Lora hashes", "")


async def test_non_latin1_infotext_is_itxt(sim_http: aiohttp.ClientSession) -> None:
    data = await txt2img(sim_http, prompt="一只狐狸", width=64, height=64, steps=1)
    raw = base64.b64decode(data["images"][0])
    assert b"iTXt" in raw and b"tEXt" not in raw
    assert png(data["images"][0]).info["parameters"].startswith("一只狐狸\n")


async def test_stats_record_history(sim: SimServer, sim_http: aiohttp.ClientSession) -> None:
    await txt2img(sim_http, prompt="one", seed=1)
    await txt2img(sim_http, prompt="two", seed=-1, batch_size=2)
    assert [b["prompt"] for b in sim.stats.history] == ["one", "two"]
    assert sim.stats.generations == 2 and sim.stats.images == 3
    async with sim_http.get("/_sim/stats") as resp:
        stats = await resp.json()
    assert [(r["prompt"], r["seed"]) for r in stats["received"]] == [("one", 1), ("two", -1)]
    assert stats["requests"]["/sdapi/v1/txt2img"] == 2
    assert stats["generations"] == 2 and stats["images"] == 3
    assert "/_sim/stats" not in stats["requests"]


async def test_infotext_fills_fields_not_sent(sim_http: aiohttp.ClientSession) -> None:
    pasted = (
        'a fox, "quoted"\nNegative prompt: blurry\nSteps: 7, Sampler: Euler a, '
        "Schedule type: Karras, CFG scale: 5.5, Seed: 99, Size: 64x96, Clip skip: 2, "
        'Lora hashes: "x: 1", Version: v1.10.1'
    )
    data = await txt2img(sim_http, infotext=pasted, steps=3)
    params, info = data["parameters"], data["info"]
    assert params["prompt"] == 'a fox, "quoted"' and params["negative_prompt"] == "blurry"
    assert (params["steps"], params["seed"], params["cfg_scale"]) == (3, 99, 5.5)
    assert (params["width"], params["height"]) == (64, 96)
    assert params["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    assert info["sampler_name"] == "Euler a" and info["clip_skip"] == 2
    assert "Schedule type: Karras" in info["infotexts"][0]


async def test_gzip_like_starlette(sim_http: aiohttp.ClientSession) -> None:
    async with sim_http.post("/sdapi/v1/txt2img", json={"steps": 1}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"  # aiohttp asks for gzip by default
        assert (await resp.json())["images"]
    plain = {"Accept-Encoding": "identity"}
    async with sim_http.post("/sdapi/v1/txt2img", json={"steps": 1}, headers=plain) as resp:
        assert "Content-Encoding" not in resp.headers
    async with sim_http.get("/internal/ping") as resp:
        assert "Content-Encoding" not in resp.headers  # under 1000 bytes
