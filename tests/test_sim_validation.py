"""Request validation: pydantic-v1 coercion and FastAPI 0.94 422 bodies; A1111 error shapes."""

from __future__ import annotations

from typing import Any

import aiohttp

from batchgen.sim import SimConfig, SimServer


async def post(http: aiohttp.ClientSession, body: Any, path: str = "/sdapi/v1/txt2img") -> Any:
    async with http.post(path, json=body) as resp:
        return resp.status, await resp.json()


async def test_type_errors_are_422_v1(sim_http: aiohttp.ClientSession) -> None:
    body = {
        "steps": "abc",
        "cfg_scale": "x",
        "prompt": ["a"],
        "enable_hr": "maybe",
        "styles": [1, []],
    }
    status, data = await post(sim_http, body)
    assert status == 422
    assert data == {
        "detail": [
            {"loc": ["body", "prompt"], "msg": "str type expected", "type": "type_error.str"},
            {"loc": ["body", "styles", 1], "msg": "str type expected", "type": "type_error.str"},
            {
                "loc": ["body", "steps"],
                "msg": "value is not a valid integer",
                "type": "type_error.integer",
            },
            {
                "loc": ["body", "cfg_scale"],
                "msg": "value is not a valid float",
                "type": "type_error.float",
            },
            {
                "loc": ["body", "enable_hr"],
                "msg": "value could not be parsed to a boolean",
                "type": "type_error.bool",
            },
        ]
    }


async def test_v1_coercions(sim_http: aiohttp.ClientSession) -> None:
    body = {
        "steps": 20.7,
        "width": "64",
        "height": True,
        "cfg_scale": "7",
        "prompt": 12,
        "send_images": "yes",
        "restore_faces": 0,
        "styles": ("a",),
    }
    status, data = await post(sim_http, body)
    assert status == 200, data
    p = data["parameters"]
    assert (p["steps"], p["width"], p["height"], p["cfg_scale"]) == (20, 64, 1, 7.0)
    assert p["prompt"] == "12" and p["send_images"] is True and p["restore_faces"] is False


async def test_body_errors(sim: SimServer) -> None:
    async with aiohttp.ClientSession(base_url=sim.url) as http:
        async with http.post("/sdapi/v1/txt2img") as resp:
            assert resp.status == 422
            assert await resp.json() == {
                "detail": [
                    {"loc": ["body"], "msg": "field required", "type": "value_error.missing"}
                ]
            }
        headers = {"Content-Type": "application/json"}
        async with http.post("/sdapi/v1/txt2img", data=b"{bad", headers=headers) as resp:
            assert resp.status == 422
            (err,) = (await resp.json())["detail"]
            assert err["type"] == "value_error.jsondecode" and err["loc"] == ["body", 1]
            assert err["ctx"]["pos"] == 1 and err["msg"].startswith("Expecting property name")
        async with http.post("/sdapi/v1/txt2img", data=b'{"prompt": "x"}') as resp:
            # Not declared as JSON: FastAPI validates the raw bytes, which are not a dict.
            assert resp.status == 422
            assert (await resp.json())["detail"][0]["type"] == "type_error.dict"
        async with http.post("/sdapi/v1/txt2img", json=[1, 2]) as resp:
            assert resp.status == 422
            assert (await resp.json())["detail"] == [
                {"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}
            ]


async def test_route_errors(sim_http: aiohttp.ClientSession) -> None:
    async with sim_http.get("/sdapi/v1/nothing") as resp:
        assert resp.status == 404 and await resp.json() == {"detail": "Not Found"}
    async with sim_http.get("/sdapi/v1/txt2img") as resp:
        assert resp.status == 405 and await resp.json() == {"detail": "Method Not Allowed"}


async def test_script_errors(sim_http: aiohttp.ClientSession) -> None:
    status, data = await post(sim_http, {"script_name": "foo"})
    assert status == 422
    assert data == {
        "error": "HTTPException",
        "detail": "Script 'foo' not found",
        "body": "",
        "errors": "",
    }
    status, data = await post(sim_http, {"alwayson_scripts": {"x/y/z plot": {"args": []}}})
    assert status == 422
    assert data["detail"] == "Cannot have a selectable script in the always on scripts params"
    status, data = await post(sim_http, {"alwayson_scripts": {"NoSuchScript": {"args": []}}})
    assert status == 422 and data["detail"] == "Script 'NoSuchScript' not found"


async def test_forge_422_is_pydantic_v2() -> None:
    async with SimServer(SimConfig(flavor="forge")) as sim, aiohttp.ClientSession() as http:
        status, data = await post(http, {"steps": 20.5, "prompt": 5}, sim.url + "/sdapi/v1/txt2img")
        assert status == 422
        assert data["detail"] == [
            {
                "type": "string_type",
                "loc": ["body", "prompt"],
                "msg": "Input should be a valid string",
                "input": 5,
                "url": "https://errors.pydantic.dev/2.8/v/string_type",
            },
            {
                "type": "int_from_float",
                "loc": ["body", "steps"],
                "msg": "Input should be a valid integer, got a number with a fractional part",
                "input": 20.5,
                "url": "https://errors.pydantic.dev/2.8/v/int_from_float",
            },
        ]
        status, data = await post(http, {"steps": 20.0}, sim.url + "/sdapi/v1/txt2img")
        assert status == 200
