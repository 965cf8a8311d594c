"""EndpointClient against the simulator: every failure is classified retryable or fatal."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from batchgen.backends.a1111 import (
    Endpoint,
    EndpointClient,
    open_session,
    parse_generation,
    resolve_endpoint,
)
from batchgen.errors import ConfigError, FatalEndpointError, RetryableEndpointError
from batchgen.job import EndpointSpec, TimeoutSpec
from batchgen.records import Task, WireRequest
from batchgen.rows.wire import a1111_request
from batchgen.sim import SimConfig, SimServer

JOBS = Path(__file__).parent.parent / "jobs"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with open_session() as opened:
        yield opened


def client_for(url: str, session: aiohttp.ClientSession, request: float = 10.0) -> EndpointClient:
    endpoint = resolve_endpoint(EndpointSpec(url=url), 2)
    return EndpointClient(endpoint, session, TimeoutSpec(connect=1.0, request=request))


def wire(**body: Any) -> WireRequest:
    """A row's request as the runner hands it to an A1111 endpoint."""
    return a1111_request(
        Task(
            row=2,
            key="k",
            route="txt2img",
            body={"prompt": "x", "steps": 2, **body},
            checkpoint=None,
        ),
        "a1111",
    )


async def test_generate_returns_images_and_real_seeds(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    generation = await client_for(sim.url, session).generate(wire(seed=5, batch_size=2))
    assert generation.seeds == (5, 6) and len(generation.images) == 2
    assert all(image.startswith(b"\x89PNG") for image in generation.images)
    assert generation.model and generation.model_hash and generation.version == "v1.10.1"


async def test_a_422_is_fatal_with_the_servers_message(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(FatalEndpointError) as raised:
        await client_for(sim.url, session).generate(wire(steps="many"))
    assert raised.value.status == 422 and "steps" in str(raised.value)


async def test_a_404_is_fatal(sim: SimServer, session: aiohttp.ClientSession) -> None:
    with pytest.raises(FatalEndpointError) as raised:
        await client_for(sim.url, session).get_json("/sdapi/v1/no-such-route")
    assert raised.value.status == 404


async def test_a_401_is_fatal_and_refused_credentials_stop_a_probe(
    session: aiohttp.ClientSession,
) -> None:
    async with SimServer(SimConfig(api_auth="alice:pw")) as sim:
        client = client_for(sim.url, session)
        with pytest.raises(FatalEndpointError) as raised:
            await client.generate(wire())
        assert raised.value.status == 401 and "Not authenticated" in str(raised.value)
        with pytest.raises(ConfigError, match="401"):
            await client.probe()
        host = sim.url.removeprefix("http://")
        assert (await client_for(f"http://alice:pw@{host}", session).probe()).flavor == "a1111"


async def test_out_of_memory_500_is_retryable(session: aiohttp.ClientSession) -> None:
    async with SimServer(SimConfig(fail_rate=1.0)) as sim:
        with pytest.raises(RetryableEndpointError) as raised:
            await client_for(sim.url, session).generate(wire())
    assert raised.value.status == 500 and "OutOfMemoryError" in str(raised.value)


async def test_a_controlnet_validation_500_is_fatal(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    png = base64.b64encode(
        (Path(__file__).parent.parent / "jobs/images/depth-src.png").read_bytes()
    )
    unit = {"enabled": True, "module": "canny", "model": "control_v11p_sd15_canny"}
    unit |= {"image": png.decode(), "resize_mode": 1, "control_mode": 7}
    with pytest.raises(FatalEndpointError) as raised:
        await client_for(sim.url, session).generate(
            wire(alwayson_scripts={"ControlNet": {"args": [unit]}})
        )
    assert raised.value.status == 500 and "ValidationError" in str(raised.value)


async def test_503_while_starting_is_retryable(session: aiohttp.ClientSession) -> None:
    async with SimServer(SimConfig(unavailable_s=30)) as sim:
        with pytest.raises(RetryableEndpointError) as raised:
            await client_for(sim.url, session).generate(wire())
    assert raised.value.status == 503


async def test_a_dropped_connection_is_retryable(session: aiohttp.ClientSession) -> None:
    async with SimServer(SimConfig(drop_rate=1.0)) as sim:
        with pytest.raises(RetryableEndpointError) as raised:
            await client_for(sim.url, session).generate(wire())
    assert raised.value.status is None


async def test_a_refused_connection_is_retryable(session: aiohttp.ClientSession) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(RetryableEndpointError, match="cannot connect"):
        await client_for(f"http://127.0.0.1:{port}", session).generate(wire())


async def test_a_hung_server_times_out_and_is_retryable(session: aiohttp.ClientSession) -> None:
    async with SimServer(SimConfig(hang_rate=1.0)) as sim:
        with pytest.raises(RetryableEndpointError, match=r"no answer within 0\.3 s"):
            await client_for(sim.url, session, request=0.3).generate(wire())


async def test_probe_tells_forge_from_a1111(session: aiohttp.ClientSession) -> None:
    async with SimServer(SimConfig(flavor="forge")) as forge, SimServer() as a1111:
        assert (await client_for(forge.url, session).probe()).flavor == "forge"
        state = await client_for(a1111.url, session).probe()
    assert state.flavor == "a1111" and state.checkpoint


def test_parse_generation_drops_the_grid_and_keeps_extras_apart() -> None:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    info = {"index_of_first_image": 1, "infotexts": ["grid", "a", "b"], "all_seeds": [9, 10]}
    payload = {
        "images": [b64(b"grid"), b64(b"a"), "data:image/png;base64," + b64(b"b"), b64(b"map")],
        "info": json.dumps(info | {"sd_model_name": "m", "sd_model_hash": "h"}),
    }
    generation = parse_generation(payload)
    assert generation.images == (b"a", b"b") and generation.extras == (b"map",)
    assert generation.seeds == (9, 10) and (generation.model, generation.model_hash) == ("m", "h")
    with pytest.raises(FatalEndpointError):
        parse_generation({"images": ["%%%"], "info": "{}"})


def test_credentials_leave_the_url_and_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = resolve_endpoint(EndpointSpec(url="https://bob:p%40ss%3Aw0rd@gpu1:7860/"), 2)
    assert (endpoint.name, endpoint.url) == ("https://gpu1:7860", "https://gpu1:7860")
    header = endpoint.request_headers()["Authorization"]
    assert base64.b64decode(header.removeprefix("Basic ")) == b"bob:p@ss:w0rd"
    assert "p@ss" not in repr(endpoint) and "p%40ss" not in repr(endpoint)
    assert "[::1]:7860" in resolve_endpoint(EndpointSpec(url="http://u:p@[::1]:7860"), 2).url

    monkeypatch.setenv("TOKEN_VAR", "Bearer abc123")
    spec = EndpointSpec(url="http://h:1", headers_env={"Authorization": "TOKEN_VAR"}, in_flight=3)
    hosted: Endpoint = resolve_endpoint(spec, 2)
    assert hosted.request_headers() == {"Authorization": "Bearer abc123"}
    assert "abc123" not in repr(hosted) and hosted.in_flight == 3


def test_endpoint_settings_that_cannot_work_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AUTH_VAR"):
        resolve_endpoint(EndpointSpec(url="http://h:1", auth_env="AUTH_VAR"), 2)
    with pytest.raises(ConfigError, match="HDR_VAR"):
        resolve_endpoint(EndpointSpec(url="http://h:1", headers_env={"X-Key": "HDR_VAR"}), 2)
    with pytest.raises(ConfigError) as raised:
        resolve_endpoint(EndpointSpec(url="ftp://u:secret@h:1"), 2)
    assert "secret" not in str(raised.value)
    with pytest.raises(ConfigError, match="ca_file"):
        resolve_endpoint(EndpointSpec(url="https://h:1", ca_file=tmp_path / "none.pem"), 2)
