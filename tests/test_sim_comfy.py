"""The simulator's ComfyUI flavor over real HTTP: what comfy-api.md says a real server does."""

from __future__ import annotations

import asyncio
import copy
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from batchgen.sim import SimConfig, SimServer

GRAPH_FILE = Path(__file__).parent.parent / "jobs" / "comfy" / "wf_api.json"


def graph(**changes: Any) -> dict[str, Any]:
    """The demo workflow, with `node_input=value` changes ("6_text": "a fox")."""
    loaded: dict[str, Any] = json.loads(GRAPH_FILE.read_text(encoding="utf-8"))
    for key, value in changes.items():
        node, _, name = key.partition("_")
        loaded[node]["inputs"][name] = value
    return loaded


@pytest.fixture
async def comfy() -> AsyncIterator[tuple[SimServer, aiohttp.ClientSession]]:
    async with (
        SimServer(SimConfig(flavor="comfy")) as server,
        aiohttp.ClientSession(base_url=server.url) as http,
    ):
        yield server, http


async def post(http: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post("/prompt", json=body) as response:
        return response.status, await response.json()


async def wait_done(http: aiohttp.ClientSession, prompt_id: str) -> dict[str, Any]:
    for _ in range(500):
        async with http.get(f"/history/{prompt_id}") as response:
            found = await response.json()
        if found:
            entry: dict[str, Any] = found[prompt_id]
            return entry
        await asyncio.sleep(0.01)
    raise AssertionError("the prompt never finished")


async def test_a_prompt_runs_and_its_png_carries_the_graph(comfy: Any) -> None:
    _, http = comfy
    socket = await http.ws_connect("/ws?clientId=me")
    status, answer = await post(
        http, {"prompt": graph(**{"6_text": "a fox"}), "client_id": "me", "prompt_id": "p-1"}
    )
    assert status == 200
    assert answer == {"prompt_id": "p-1", "number": 1, "node_errors": {}}
    events = []
    async for message in socket:
        event = json.loads(message.data)
        events.append(event["type"])
        if event["type"] == "executing" and event["data"]["node"] is None:
            assert event["data"]["prompt_id"] == "p-1"
            break
    await socket.close()
    assert events[0] == "status"
    assert events.index("execution_start") < events.index("executed") < len(events) - 1
    entry = await wait_done(http, "p-1")
    assert entry["status"]["status_str"] == "success"
    assert entry["prompt"][1] == "p-1"
    image = entry["outputs"]["9"]["images"][0]
    async with http.get("/view", params=image) as response:
        data = await response.read()
    png = Image.open(io.BytesIO(data))
    assert png.size == (512, 512)
    assert json.loads(png.info["prompt"])["6"]["inputs"]["text"] == "a fox"


async def test_same_graph_and_seed_same_pixels_another_seed_other_pixels(comfy: Any) -> None:
    _, http = comfy
    pixels = []
    for seed in (1, 1, 2):
        _, answer = await post(http, {"prompt": graph(**{"3_seed": seed})})
        entry = await wait_done(http, answer["prompt_id"])
        async with http.get("/view", params=entry["outputs"]["9"]["images"][0]) as response:
            pixels.append(Image.open(io.BytesIO(await response.read())).tobytes())
    assert pixels[0] == pixels[1] != pixels[2]


async def test_validation_errors_have_comfyuis_shapes(comfy: Any) -> None:
    _, http = comfy
    status, body = await post(http, {"prompt": graph(**{"4_ckpt_name": "nope.safetensors"})})
    assert status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    error = body["node_errors"]["4"]["errors"][0]
    assert error["type"] == "value_not_in_list"
    assert "v1-5-pruned-emaonly.safetensors" in error["details"]
    assert body["node_errors"]["4"]["class_type"] == "CheckpointLoaderSimple"

    status, body = await post(http, {"prompt": graph(**{"3_steps": 0})})
    assert status == 400
    assert body["node_errors"]["3"]["errors"][0]["type"] == "value_smaller_than_min"

    broken = graph()
    del broken["3"]["inputs"]["seed"]
    status, body = await post(http, {"prompt": broken})
    assert body["node_errors"]["3"]["errors"][0]["type"] == "required_input_missing"

    unknown = graph()
    unknown["3"]["class_type"] = "KSamplerTurbo"
    status, body = await post(http, {"prompt": unknown})
    assert (status, body["error"]["type"], body["node_errors"]) == (400, "invalid_prompt", {})

    no_output = graph()
    del no_output["9"]
    status, body = await post(http, {"prompt": no_output})
    assert (status, body["error"]["type"]) == (400, "prompt_no_outputs")

    async with http.post("/prompt", data=b"{not json") as response:
        assert response.status == 500


async def test_a_partly_invalid_graph_is_queued_and_half_run(comfy: Any) -> None:
    """ComfyUI #9076: a second, broken SaveImage does not stop the valid one from running."""
    _, http = comfy
    two = graph()
    two["10"] = copy.deepcopy(two["9"])
    two["10"]["inputs"]["images"] = ["99", 0]
    status, body = await post(http, {"prompt": two})
    assert status == 200
    assert body["node_errors"]["10"]["errors"][0]["type"] == "bad_linked_input"
    entry = await wait_done(http, body["prompt_id"])
    assert list(entry["outputs"]) == ["9"]


async def test_a_client_prompt_id_is_used_as_is_and_queued_again(comfy: Any) -> None:
    _, http = comfy
    for _ in range(2):
        _, answer = await post(http, {"prompt": graph(), "prompt_id": "same"})
        assert answer["prompt_id"] == "same"
        await wait_done(http, "same")
    async with http.get("/_sim/stats") as response:
        assert (await response.json())["posted"] == ["same", "same"]


async def test_an_older_server_ignores_the_prompt_id() -> None:
    config = SimConfig(flavor="comfy", accept_prompt_id=False)
    async with SimServer(config) as server, aiohttp.ClientSession(base_url=server.url) as http:
        _, answer = await post(http, {"prompt": graph(), "prompt_id": "mine"})
        assert answer["prompt_id"] != "mine"
        async with http.get("/history/mine") as response:
            assert await response.json() == {}


async def test_uploads_keep_identical_bytes_and_rename_others(comfy: Any) -> None:
    _, http = comfy
    names = []
    for data, overwrite in ((b"one", ""), (b"one", ""), (b"two", ""), (b"three", "true")):
        form = aiohttp.FormData()
        form.add_field("image", data, filename="in.png")
        form.add_field("subfolder", "mine")
        if overwrite:
            form.add_field("overwrite", overwrite)
        async with http.post("/upload/image", data=form) as response:
            answer = await response.json()
        assert answer["type"] == "input" and answer["subfolder"] == "mine"
        names.append(answer["name"])
    assert names == ["in.png", "in.png", "in (1).png", "in.png"]
    async with http.get("/object_info/LoadImage") as response:
        listed = (await response.json())["LoadImage"]["input"]["required"]["image"][0]
    assert "mine/in.png" in listed and "mine/in (1).png" in listed


async def test_queue_interrupt_and_system_stats() -> None:
    config = SimConfig(flavor="comfy", ms_per_step=200)  # 20 steps: 4 s per prompt
    async with SimServer(config) as server, aiohttp.ClientSession(base_url=server.url) as http:
        first = (await post(http, {"prompt": graph(), "prompt_id": "a"}))[1]["prompt_id"]
        await post(http, {"prompt": graph(**{"3_seed": 2}), "prompt_id": "b"})
        await post(http, {"prompt": graph(**{"3_seed": 3}), "prompt_id": "c"})
        await asyncio.sleep(0.05)
        async with http.get("/queue") as response:
            queue = await response.json()
        assert [item[1] for item in queue["queue_running"]] == [first]
        assert [item[1] for item in queue["queue_pending"]] == ["b", "c"]
        async with http.post("/queue", json={"delete": ["c"]}):
            pass
        async with http.post("/interrupt", json={"prompt_id": "b"}):  # not running: no effect
            pass
        async with http.post("/interrupt", json={"prompt_id": "a"}):
            pass
        entry = await wait_done(http, "a")
        assert entry["status"]["status_str"] == "error"
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        async with http.post("/interrupt"):
            pass
        assert (await wait_done(http, "b"))["status"]["status_str"] == "error"
        async with http.get("/history/c") as response:
            assert await response.json() == {}
        async with http.get("/system_stats") as response:
            stats = await response.json()
        assert stats["system"]["comfyui_version"] == "0.7.0"
        assert stats["devices"][0]["type"] == "cuda"


async def test_a_failing_generation_is_an_execution_error_in_history() -> None:
    config = SimConfig(flavor="comfy", fail_rate=1.0)
    async with SimServer(config) as server, aiohttp.ClientSession(base_url=server.url) as http:
        _, answer = await post(http, {"prompt": graph()})
        entry = await wait_done(http, answer["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    assert entry["outputs"] == {}
    event, data = entry["status"]["messages"][-1]
    assert event == "execution_error"
    assert data["node_id"] == "3" and "out of memory" in data["exception_message"]


async def test_object_info_lists_installed_names() -> None:
    config = SimConfig(flavor="comfy", models=("a.safetensors", "b.safetensors"))
    async with SimServer(config) as server, aiohttp.ClientSession(base_url=server.url) as http:
        response = await http.get("/object_info")
        info = await response.json()
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [
        "a.safetensors",
        "b.safetensors",
    ]
    assert "dpmpp_2m" in info["KSampler"]["input"]["required"]["sampler_name"][0]
    assert info["SaveImage"]["output_node"] is True


async def test_unavailable_then_dies_after_n_prompts() -> None:
    config = SimConfig(flavor="comfy", unavailable_s=0.3, die_after=1)
    async with SimServer(config) as server, aiohttp.ClientSession(base_url=server.url) as http:
        async with http.get("/system_stats") as response:
            assert response.status == 503
        await asyncio.sleep(0.35)
        status, _ = await post(http, {"prompt": graph()})
        assert status == 200
        with pytest.raises(aiohttp.ClientError):
            await post(http, {"prompt": graph(**{"3_seed": 9})})
        with pytest.raises(aiohttp.ClientError):
            await http.get("/system_stats")
