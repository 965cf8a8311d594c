"""ComfyUI jobs end to end over real HTTP against the simulator's ComfyUI flavor."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from runhelp import manifest, no_sleep, simulators, write_png, write_sheet

from batchgen.errors import ConfigError, InputError
from batchgen.job import load_job
from batchgen.run.plan import check_only
from batchgen.run.runner import RunOptions, run_batch
from batchgen.sim import SimConfig, SimServer

DEMO_WORKFLOW = Path(__file__).parent.parent / "jobs" / "comfy" / "wf_api.json"
BIND = """
[comfy.bind]
prompt = "Positive.text"
negative = "Negative.text"
checkpoint = "Load Checkpoint.ckpt_name"
seed = "KSampler.seed"
steps = "KSampler.steps"
"""


def comfy_sim(**settings: Any) -> SimConfig:
    return SimConfig(flavor="comfy", **settings)


def write_job(
    folder: Path,
    urls: list[str],
    rows: list[dict[str, Any]],
    *,
    comfy: str = "",
    extra: str = "",
    workflow: dict[str, Any] | None = None,
) -> Path:
    write_sheet(folder / "sheet.csv", rows)
    if workflow is not None:
        (folder / "wf_api.json").write_text(json.dumps(workflow), encoding="utf-8")
    endpoints = "".join(f'[[endpoints]]\nurl = "{url}"\nbackend = "comfy"\n\n' for url in urls)
    path = folder / "job.toml"
    path.write_text(
        f'name = "c"\nsheet = "sheet.csv"\n{extra}\n{endpoints}'
        "[retry]\nattempts = 3\nbackoff_initial = 0.01\nbackoff_max = 0.02\n\n"
        '[timeout]\nconnect = 2\nrequest = 20\n\n[output]\ndir = "out"\n\n'
        f"{comfy}\n",
        encoding="utf-8",
    )
    return path


def demo_workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DEMO_WORKFLOW.read_text(encoding="utf-8"))
    return loaded


async def run(job: Path, **options: Any) -> Any:
    return await run_batch(load_job(job), RunOptions(sleep=no_sleep, **options))


def posted(server: SimServer) -> list[dict[str, Any]]:
    """Every graph the simulator was sent, in order."""
    return list(server.stats.history)


async def test_the_standard_graph_is_bound_by_node_class(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a fox", "negative": "blurry", "steps": 7, "width": 640, "height": 384,
         "seed": 11, "checkpoint": "sd_xl_base_1.0.safetensors", "cfg": 5.5,
         "sampler": "euler", "notes": "n1"},
        {"prompt": "an owl", "steps": 3, "notes": "n2"},
    ]  # fmt: skip
    async with simulators(comfy_sim()) as [server]:
        job = write_job(tmp_path, [server.url], rows)  # no [comfy]: the built-in graph
        summary = await run(job)
        assert summary.exit_code == 0
        graphs = sorted(posted(server), key=lambda g: g["3"]["inputs"]["steps"])
    owl, fox = graphs
    assert fox["6"]["inputs"]["text"] == "a fox"  # the KSampler's positive link
    assert fox["7"]["inputs"]["text"] == "blurry"  # its negative link
    assert fox["3"]["inputs"] | {"model": 0} == {
        "seed": 11, "steps": 7, "cfg": 5.5, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1, "model": 0, "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0],
    }  # fmt: skip
    assert (fox["5"]["inputs"]["width"], fox["5"]["inputs"]["height"]) == (640, 384)
    assert fox["4"]["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors"
    assert owl["6"]["inputs"]["text"] == "an owl"
    assert owl["4"]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"  # the template's
    assert owl["7"]["inputs"]["text"] == "text, watermark"


async def test_manifest_provenance_and_images_byte_for_byte(tmp_path: Path) -> None:
    async with simulators(comfy_sim()) as [server]:
        job = write_job(tmp_path, [server.url], [{"prompt": "a fox", "seed": 5, "notes": "x"}])
        assert (await run(job)).exit_code == 0
        served = next(iter(server.app.queue.outputs.values()))  # type: ignore[union-attr]
    [record] = manifest(tmp_path / "out")
    assert record["backend"] == "comfy"
    assert record["version"] == "ComfyUI 0.7.0"
    standard = Path(__file__).parent.parent / "batchgen" / "backends" / "comfy" / "txt2img_api.json"
    assert record["workflow_sha256"] == hashlib.sha256(standard.read_bytes()).hexdigest()
    assert record["seeds"] == [5]
    assert record["bound"]["prompt"] == "a fox" and record["bound"]["seed"] == 5
    assert record["model"] == "v1-5-pruned-emaonly.safetensors"  # the template's checkpoint
    image = (tmp_path / "out" / record["images"][0]).read_bytes()
    assert image == served
    graph = json.loads(Image.open(io.BytesIO(image)).info["prompt"])  # the PNG's own chunk
    assert graph["6"]["inputs"]["text"] == "a fox"


async def test_binding_by_title_and_title_input_columns(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a fox", "steps": 4, "KSampler.denoise": 0.5, "Latent.width": 256},
        {"prompt": "an owl", "steps": 5},
    ]
    async with simulators(comfy_sim()) as [server]:
        job = write_job(
            tmp_path,
            [server.url],
            rows,
            comfy=f'[comfy]\nworkflow = "wf_api.json"\n{BIND}',
            workflow=demo_workflow(),
        )
        assert (await run(job)).exit_code == 0
        graphs = sorted(posted(server), key=lambda g: g["3"]["inputs"]["steps"])
    fox, owl = graphs
    assert fox["6"]["inputs"]["text"] == "a fox"
    assert fox["3"]["inputs"]["denoise"] == 0.5
    assert fox["5"]["inputs"]["width"] == 256
    assert owl["3"]["inputs"]["denoise"] == 1  # the template's value
    records = {r["row"]: r for r in manifest(tmp_path / "out")}
    assert records[2]["bound"]["KSampler.denoise"] == 0.5


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ('prompt = "Positiv.text"', "no node is titled 'Positiv'"),
        ('prompt = "CLIP Text Encode (Prompt).text"', "2 nodes are titled"),
        ('prompt = "Positive.txt"', "has no input 'txt'"),
    ],
)
async def test_a_missing_or_shared_title_is_an_error_before_sending(
    tmp_path: Path, bind: str, expected: str
) -> None:
    workflow = demo_workflow()
    workflow["7"]["_meta"]["title"] = "CLIP Text Encode (Prompt)"
    workflow["6"]["_meta"]["title"] = "CLIP Text Encode (Prompt)" if "CLIP" in bind else "Positive"
    async with simulators(comfy_sim()) as [server]:
        job = write_job(
            tmp_path,
            [server.url],
            [{"prompt": "a fox"}],
            comfy=f'[comfy]\nworkflow = "wf_api.json"\n[comfy.bind]\n{bind}\n',
            workflow=workflow,
        )
        with pytest.raises(InputError) as caught:
            await run(job)
        assert server.stats.requests["/prompt"] == 0
    text = str(caught.value)
    assert expected in text and "comfy.bind.prompt" in text


async def test_a_column_no_node_receives_is_an_error(tmp_path: Path) -> None:
    async with simulators(comfy_sim()) as [server]:
        job = write_job(
            tmp_path,
            [server.url],
            [{"prompt": "a fox", "cfg": 4}],
            comfy=f'[comfy]\nworkflow = "wf_api.json"\n{BIND}',
            workflow=demo_workflow(),
        )
        with pytest.raises(InputError) as caught:
            await run(job)
        assert server.stats.requests["/prompt"] == 0
    assert "'cfg' sets 'cfg_scale', but no node input of the workflow receives it" in str(
        caught.value
    )


async def test_image_cells_are_uploaded_and_bound_to_load_image(tmp_path: Path) -> None:
    workflow = demo_workflow()
    workflow["10"] = {
        "class_type": "LoadImage",
        "_meta": {"title": "Source"},
        "inputs": {"image": "example.png"},
    }
    workflow["11"] = {
        "class_type": "VAEEncode",
        "_meta": {"title": "Encode"},
        "inputs": {"pixels": ["10", 0], "vae": ["4", 2]},
    }
    workflow["3"]["inputs"]["latent_image"] = ["11", 0]
    red = write_png(tmp_path / "in" / "red.png", "red")
    blue = write_png(tmp_path / "in" / "blue.png", "blue")
    rows = [
        {"prompt": "a fox", "Source.image": "in/red.png"},
        {"prompt": "an owl", "Source.image": "in/blue.png"},
        {"prompt": "a cat", "Source.image": "in/red.png"},
    ]
    async with simulators(comfy_sim()) as [server]:
        job = write_job(
            tmp_path,
            [server.url],
            rows,
            comfy='[comfy]\nworkflow = "wf_api.json"\n',
            workflow=workflow,
        )
        assert (await run(job, check=True)).exit_code == 0
        inputs = dict(server.app.queue.inputs)  # type: ignore[union-attr]
        graphs = {g["6"]["inputs"]["text"]: g for g in posted(server)}
    assert sorted(inputs.values()) == sorted([red.read_bytes(), blue.read_bytes()])  # once each
    fox, owl, cat = (graphs[p]["10"]["inputs"]["image"] for p in ("a fox", "an owl", "a cat"))
    assert fox == cat != owl
    assert inputs[fox] == red.read_bytes() and inputs[owl] == blue.read_bytes()
    records = {r["row"]: r for r in manifest(tmp_path / "out")}
    red_sha = hashlib.sha256(red.read_bytes()).hexdigest()
    assert records[2]["payload"]["comfy_inputs"]["Source.image"]["sha256"] == red_sha


async def test_node_errors_are_row_errors_not_endpoint_failures(tmp_path: Path) -> None:
    rows = [
        {"prompt": f"row {i}", "checkpoint": "v1-5-pruned-emaonly.safetensors"} for i in range(4)
    ]
    rows[1]["checkpoint"] = "missing.safetensors"
    async with simulators(comfy_sim()) as [server]:
        job = write_job(tmp_path, [server.url], rows, extra="check = false")
        summary = await run(job)
        assert server.stats.requests["/prompt"] == 4  # the bad row once: never retried
    assert (summary.ok, summary.failed) == (3, 1)
    records = {r["row"]: r for r in manifest(tmp_path / "out")}
    failed = records[3]
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert "HTTP 400" in failed["error"] and "node 4 'Load Checkpoint'" in failed["error"]
    assert "missing.safetensors" in failed["error"] and "Value not in list" in failed["error"]
    assert summary.endpoints[0].up


async def test_execution_errors_are_row_errors_with_the_node(tmp_path: Path) -> None:
    async with simulators(comfy_sim(fail_rate=1.0)) as [server]:
        job = write_job(tmp_path, [server.url], [{"prompt": "a fox"}, {"prompt": "an owl"}])
        summary = await run(job)
    assert (summary.ok, summary.failed) == (0, 2)
    assert summary.endpoints[0].up
    for record in manifest(tmp_path / "out"):
        assert record["attempts"] == 1
        assert "node 3 'KSampler' (KSampler) failed" in record["error"]
        assert "out of memory" in record["error"]


@pytest.mark.parametrize("ms_per_step", [0, 20])  # done before it is taken back, or not
async def test_a_half_valid_graph_is_taken_back_and_fails_the_row(
    tmp_path: Path, ms_per_step: float
) -> None:
    workflow = demo_workflow()
    workflow["10"] = {
        "class_type": "SaveImage",
        "_meta": {"title": "Broken save"},
        "inputs": {"images": ["99", 0], "filename_prefix": "x"},
    }
    async with simulators(comfy_sim(ms_per_step=ms_per_step, switch_s=0)) as [server]:
        job = write_job(
            tmp_path,
            [server.url],
            [{"prompt": "a fox"}],
            comfy='[comfy]\nworkflow = "wf_api.json"\n',
            workflow=workflow,
            extra="check = false",
        )
        summary = await run(job)
        assert summary.failed == 1
        again = await run(job)  # the part ComfyUI ran is not collected as the row's result
        assert again.failed == 1
        assert server.stats.requests["/prompt"] == 2
    records = manifest(tmp_path / "out")
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert "node 10 'Broken save' (SaveImage)" in records[0]["error"]


async def test_resume_collects_what_the_server_made_instead_of_queueing_again(
    tmp_path: Path,
) -> None:
    rows = [{"prompt": f"row {i}"} for i in range(5)]
    async with simulators(comfy_sim()) as [server]:
        job = write_job(tmp_path, [server.url], rows)
        assert (await run(job)).exit_code == 0
        first = {r["row"]: r for r in manifest(tmp_path / "out")}
        # As if the run died after the server made the images but before they were written.
        shutil.rmtree(tmp_path / "out")
        summary = await run(job)
        assert summary.exit_code == 0 and summary.ok == 5
        assert server.stats.requests["/prompt"] == 5  # nothing queued a second time
    again = {r["row"]: r for r in manifest(tmp_path / "out")}
    for row, record in again.items():
        assert record["image_sha256"] == first[row]["image_sha256"]
        assert record["prompt_id"] == first[row]["prompt_id"]


async def test_a_server_that_ignores_prompt_id_is_detected_and_rows_still_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [{"prompt": f"row {i}"} for i in range(3)]
    async with simulators(comfy_sim(accept_prompt_id=False)) as [server]:
        job = write_job(tmp_path, [server.url], rows)
        assert (await run(job)).exit_code == 0
        shutil.rmtree(tmp_path / "out")
        assert (await run(job)).exit_code == 0  # cannot collect: queued again, still right
        assert server.stats.requests["/prompt"] == 6
    assert "ignores the prompt_id" in caplog.text
    ids = {r["prompt_id"] for r in manifest(tmp_path / "out")}
    assert len(ids) == 3  # the server's own ids, recorded


async def test_a_dropped_answer_is_retried_without_queueing_twice(tmp_path: Path) -> None:
    async with simulators(comfy_sim(drop_rate=0.5, fault_seed=3)) as [server]:
        job = write_job(tmp_path, [server.url], [{"prompt": f"row {i}"} for i in range(6)])
        summary = await run(job)
        assert summary.exit_code == 0
        stats = server.app.posted  # type: ignore[union-attr]
        assert server.stats.faults["drop"] >= 1
    assert len(stats) == len(set(stats)) == 6


async def test_checks_against_object_info_before_sending(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a", "checkpoint": "v1-5-pruned-emaonly.safetensors", "sampler": "euler"},
        {"prompt": "b", "checkpoint": "dreamshaper_7.safetensors", "sampler": "euler"},
        {"prompt": "c", "checkpoint": "dreamshaper_7.safetensors", "sampler": "Euler a"},
        {"prompt": "d", "checkpoint": "v1-5-pruned-emaonly.safetensors", "steps": 20000},
        {"prompt": "e <lora:add_detail:0.8>", "checkpoint": "v1-5-pruned-emaonly.safetensors"},
    ]
    config = comfy_sim(models=("v1-5-pruned-emaonly.safetensors", "dreamshaper_8.safetensors"))
    async with simulators(config) as [server]:
        job = write_job(tmp_path, [server.url], rows)
        with pytest.raises(InputError) as caught:
            await run(job)
        assert server.stats.requests["/prompt"] == 0
        with pytest.raises(InputError):
            await check_only(load_job(job))
    text = str(caught.value)
    assert "'dreamshaper_7.safetensors' is not installed" in text
    assert "rows 3-4" in text and "did you mean 'dreamshaper_8.safetensors'?" in text
    assert "'Euler a' is not installed" in text
    assert "20000 is above the maximum 10000" in text
    assert "<lora:...> tags, which ComfyUI reads as plain text: rows 6" in text


def test_comfy_urls_and_one_backend_per_job(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "s.csv", [{"prompt": "a"}])
    job = load_job(sheet, endpoints=["comfy://gpu1:8188"])
    assert job.backend == "comfy"
    assert load_job(sheet, endpoints=["sim://?flavor=comfy"]).backend == "comfy"
    with pytest.raises(ConfigError, match="one job uses one backend kind"):
        load_job(sheet, endpoints=["comfy://gpu1:8188", "http://gpu2:7860"])
    from batchgen.backends.a1111 import resolve_endpoint

    endpoint = resolve_endpoint(job.endpoints[0], 1)
    assert (endpoint.url, endpoint.backend) == ("http://gpu1:8188", "comfy")


def test_a_ui_workflow_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "wf.json").write_text('{"nodes": [], "links": []}', encoding="utf-8")
    sheet = write_sheet(tmp_path / "sheet.csv", [{"prompt": "a"}])
    job = tmp_path / "job.toml"
    job.write_text(
        f'sheet = "{sheet.name}"\n[[endpoints]]\nurl = "comfy://h:8188"\n'
        '[comfy]\nworkflow = "wf.json"\n',
        encoding="utf-8",
    )
    from batchgen.run.plan import validate

    with pytest.raises(ConfigError, match=r"not the API format.*Save \(API\)"):
        validate(load_job(job))


async def test_rows_keep_to_the_checkpoint_an_endpoint_has_loaded(tmp_path: Path) -> None:
    models = ("alpha.safetensors", "beta.safetensors")
    rows = [{"prompt": f"row {i}", "checkpoint": models[i % 2]} for i in range(24)]
    config = comfy_sim(models=models, ms_per_step=1, switch_s=0.2)
    async with simulators(config, config) as servers:
        job = write_job(tmp_path, [s.url for s in servers], rows)
        assert (await run(job)).exit_code == 0
        loads = sum(server.stats.switches for server in servers)
    # Sheet order would load a checkpoint for nearly every row; affinity loads each about once
    # per endpoint (the first load included).
    assert loads <= 4, loads


async def test_basic_auth_and_refused_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with simulators(comfy_sim(api_auth="me:s3cret-pass")) as [server]:
        auth = 'auth_env = "COMFY_AUTH"\n'
        job = write_job(tmp_path, [server.url], [{"prompt": "a fox"}])
        job.write_text(job.read_text().replace('backend = "comfy"\n', 'backend = "comfy"\n' + auth))
        monkeypatch.setenv("COMFY_AUTH", "me:wrong")
        with pytest.raises(ConfigError, match="401"):
            await run(job)
        monkeypatch.setenv("COMFY_AUTH", "me:s3cret-pass")
        assert (await run(job)).exit_code == 0
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file() and path.suffix != ".png":
            assert "s3cret" not in path.read_text(encoding="utf-8", errors="replace")


async def test_a_hanging_server_is_endpoint_trouble_and_rows_move(tmp_path: Path) -> None:
    rows = [{"prompt": f"row {i}"} for i in range(4)]
    async with simulators(comfy_sim(hang_rate=1.0), comfy_sim()) as [hung, healthy]:
        job = write_job(tmp_path, [hung.url, healthy.url], rows)
        job.write_text(job.read_text().replace("request = 20", "request = 0.5"))
        summary = await run(job)
    assert summary.exit_code == 0 and summary.ok == 4
    assert {r["endpoint"] for r in manifest(tmp_path / "out")} == {
        healthy.url.replace("http", "http")
    }


def test_the_demo_job_runs_and_its_dry_run_shows_the_graph(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from batchgen.cli import cli

    demo = Path(__file__).parent.parent / "jobs" / "comfy-demo.toml"
    runner = CliRunner()
    logger = logging.getLogger("batchgen")
    handlers = list(logger.handlers)
    try:
        dry = runner.invoke(cli, ["run", str(demo), "--dry-run"], catch_exceptions=False)
        out = tmp_path / "demo"
        done = runner.invoke(cli, ["run", str(demo), "--out", str(out)], catch_exceptions=False)
    finally:  # each CLI call adds a console handler
        logger.handlers = handlers
    assert dry.exit_code == 0
    first = json.loads(dry.stdout.split("\n}\n")[0] + "\n}")
    assert first["graph"]["6"]["inputs"]["text"] == first["body"]["prompt"]
    assert done.exit_code == 0
    records = manifest(out)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    assert all(r["simulator"] for r in records), "a ComfyUI simulator's images are marked too"
    assert "SIMULATOR" in done.stderr
    assert {r["model"] for r in records} == {
        "v1-5-pruned-emaonly.safetensors",
        "dreamshaper_8.safetensors",
    }
