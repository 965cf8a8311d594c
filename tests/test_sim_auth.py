"""`--api-auth` style basic auth: which routes it covers and the 401 bodies of each flavor."""

from __future__ import annotations

import base64

import aiohttp
import pytest

from batchgen.sim import SimConfig, SimServer


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize("flavor", ["a1111", "forge"])
async def test_basic_auth(flavor: str) -> None:
    config = SimConfig(api_auth="alice:s3cret,bob:pw", flavor=flavor)  # type: ignore[arg-type]
    async with SimServer(config) as sim, aiohttp.ClientSession(base_url=sim.url) as http:
        cases = [
            ({}, "Not authenticated"),
            ({"Authorization": "Bearer abc"}, "Not authenticated"),
            ({"Authorization": "Basic !!!"}, "Invalid authentication credentials"),
            ({"Authorization": "Basic " + "bm9jb2xvbg=="}, "Invalid authentication credentials"),
            (basic("alice", "x"), "Incorrect username or password"),
            (basic("mallory", "s3cret"), "Incorrect username or password"),
        ]
        for headers, detail in cases:
            async with http.get("/sdapi/v1/sd-models", headers=headers) as resp:
                assert resp.status == 401
                body = await resp.json()
                if flavor == "a1111":
                    assert body == {
                        "error": "HTTPException",
                        "detail": detail,
                        "body": "",
                        "errors": "",
                    }
                    assert "WWW-Authenticate" not in resp.headers
                else:
                    assert body == {"detail": detail}
                    assert resp.headers["WWW-Authenticate"] == "Basic"
        for user, password in (("alice", "s3cret"), ("bob", "pw")):
            headers = basic(user, password)
            async with http.post("/sdapi/v1/txt2img", json={"steps": 1}, headers=headers) as resp:
                assert resp.status == 200
        for path in ("/sdapi/v1/loras", "/controlnet/model_list", "/internal/ping", "/_sim/stats"):
            async with http.get(path) as resp:
                assert resp.status == 200, path
