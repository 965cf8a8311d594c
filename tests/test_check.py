"""`batchgen check`: each name a row uses, checked against simulators with other inventories."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from runhelp import write_png

from batchgen.backends.a1111 import EndpointClient, resolve_endpoint
from batchgen.backends.check import RowSet, check_job, collect_uses, lora_names
from batchgen.backends.inventory import CheckpointIndex, resolve_checkpoint
from batchgen.cli import cli
from batchgen.errors import InputError, Problem
from batchgen.job import EndpointSpec, JobSpec, TimeoutSpec, load_job
from batchgen.rows.prepare import prepare
from batchgen.run.plan import check_only
from batchgen.sim import SimConfig, SimServer

JOBS = Path(__file__).resolve().parents[1] / "jobs"
MODELS = ("v1-5-pruned-emaonly.safetensors", "dreamshaper_8.safetensors", "sdxl/juggernaut.ckpt")


def write_sheet(tmp_path: Path, rows: Sequence[dict[str, Any]], name: str = "rows.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(list(rows)).to_csv(path, index=False)
    return path


def job_for(sheet: Path, *urls: str) -> JobSpec:
    return load_job(sheet, endpoints=list(urls))


async def problems_of(job: JobSpec, *sims: SimServer) -> list[Problem]:
    """`batchgen check`'s problems; the simulators named must have generated nothing."""
    try:
        await check_only(job)
    except InputError as error:
        problems = list(error.problems)
    else:
        problems = []
    assert generated(*sims) == 0
    return problems


def by_head(problems: Sequence[Problem]) -> dict[str, Problem]:
    """Each problem by its message up to the endpoint ("... on URL: rows")."""
    return {problem.message.split(" on ")[0]: problem for problem in problems}


def cli_check(sheet: Path, endpoint: str) -> Result:
    """`batchgen check SHEET --endpoint ENDPOINT`."""
    return CliRunner().invoke(
        cli, ["check", str(sheet), "--endpoint", endpoint], catch_exceptions=False
    )


def generated(*sims: SimServer) -> int:
    return sum(sim.stats.generations for sim in sims) + sum(
        count for sim in sims for path, count in sim.stats.requests.items() if "2img" in path
    )


def texts(problems: Sequence[Problem]) -> list[str]:
    return [str(problem) for problem in problems]


# ---- pieces -------------------------------------------------------------------------------------


def test_rowset_keeps_ranges_and_describes_them() -> None:
    rows = RowSet()
    for row in [*range(4, 20), 33]:
        rows.add(row)
    rows.add(33)  # a row using a name twice counts once
    assert (rows.first, rows.count, rows.describe()) == (4, 17, "rows 4-19, 33")
    single = RowSet()
    single.add(7)
    assert single.describe() == "row 7"
    odd = RowSet()
    for row in (5, 9, 2, 3, 3, 7, 8, 6):
        odd.add(row)
    assert list(odd.rows()) == [2, 3, 5, 6, 7, 8, 9] and odd.describe() == "rows 2-3, 5-9"
    assert odd.count == 7
    many = RowSet()
    for row in range(2, 200, 2):
        many.add(row)
    assert many.describe().startswith("rows 2, 4, 6") and many.describe().endswith("and 87 more")


def test_lora_tags_are_read_like_a1111() -> None:
    prompt = "a <lora:add_detail:0.5> cat, <lyco:sdxl/pixel:1:0.5>, <hypernet:x:1>, <lora:bare>"
    assert list(lora_names(prompt)) == ["add_detail", "sdxl/pixel", "bare"]


async def test_every_checkpoint_alias_resolves_to_one_name() -> None:
    async with (
        SimServer(SimConfig(models=MODELS)) as sim,
        aiohttp.ClientSession() as http,
        http.get(sim.url + "/sdapi/v1/sd-models") as response,
    ):
        models = await response.json()
    item = next(m for m in models if m["model_name"] == "sdxl_juggernaut")
    short, sha = item["hash"], item["sha256"]
    forms = [
        item["title"],  # "sdxl/juggernaut.ckpt [hash]"
        "sdxl_juggernaut",  # model_name
        "sdxl/juggernaut.ckpt",  # name
        "juggernaut",  # name_for_extra
        short,
        sha,
        f"sdxl/juggernaut.ckpt [{short}]",
        f"juggernaut [{short}]",
    ]
    index = CheckpointIndex.from_api(models)
    assert {resolve_checkpoint(form, models) for form in forms} == {"sdxl/juggernaut.ckpt"}
    assert {index.resolve(form) for form in forms} == {"sdxl/juggernaut.ckpt"}
    assert resolve_checkpoint("Juggernaut", index) is None  # A1111's lookup is exact
    assert resolve_checkpoint("juggernaut [0123456789]", index) is None


# ---- each check, against a simulator -------------------------------------------------------------


async def test_unknown_checkpoint_is_grouped_by_rows_with_a_suggestion(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "model": "v1-5-pruned-emaonly"} for i in range(40)]
    for index in [*range(2, 18), 31]:  # sheet rows 4-19 and 33
        rows[index]["model"] = "dreamshaper_7"
    sheet = write_sheet(tmp_path, rows)
    async with SimServer(SimConfig(models=MODELS)) as sim:
        problems = await problems_of(job_for(sheet, sim.url), sim)
    assert len(problems) == 1
    problem = problems[0]
    assert problem.row == 4 and problem.file == str(sheet)
    assert problem.message == f"checkpoint 'dreamshaper_7' unknown on {sim.url}: rows 4-19, 33"
    assert problem.hint is not None and problem.hint.startswith("did you mean 'dreamshaper_8'?")


async def test_checkpoint_alias_forms_and_a_passing_check(tmp_path: Path) -> None:
    forms = ["dreamshaper_8", "dreamshaper_8.safetensors", "sdxl_juggernaut", "juggernaut"]
    sheet = write_sheet(tmp_path, [{"prompt": "p", "checkpoint": form} for form in forms])
    async with SimServer(SimConfig(models=MODELS)) as sim:
        lines = await check_only(job_for(sheet, sim.url))
        assert generated(sim) == 0
    assert lines[-1] == "all checks passed"


async def test_a_checkpoint_with_another_hash_names_the_server_file(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path, [{"prompt": "p", "model": "dreamshaper_8 [0123456789]"}])
    async with SimServer(SimConfig(models=MODELS)) as sim:
        (problem,) = await problems_of(job_for(sheet, sim.url))
    assert problem.hint is not None
    assert "a different hash; write 'dreamshaper_8' to accept any version" in problem.hint


async def test_ambiguous_checkpoint_stem(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path, [{"prompt": "p", "model": "x"}])
    async with SimServer(SimConfig(models=("a/x.safetensors", "b/x.safetensors"))) as sim:
        (problem,) = await problems_of(job_for(sheet, sim.url))
    assert problem.message.startswith("checkpoint 'x' is ambiguous")
    assert problem.hint is not None and "a/x.safetensors, b/x.safetensors" in problem.hint


async def test_samplers_schedulers_and_their_aliases(tmp_path: Path) -> None:
    rows = [
        {"prompt": "p", "sampler": "Euler a", "scheduler": "Karras"},  # 2: fine
        {"prompt": "p", "sampler": "k_euler_a"},  # 3: an alias, falls back silently
        {"prompt": "p", "sampler": "DPM++ 2M Karras"},  # 4: suffix split: fine
        {"prompt": "p", "sampler": "Euler sgm_uniform"},  # 5: name suffix: fine
        {"prompt": "p", "sampler": "Eulr", "scheduler": "karras"},  # 6: typo; name: fine
        {"prompt": "p", "sampler": "Euler", "scheduler": "KARRAS"},  # 7: case matters
        {"prompt": "p", "sampler": "k_euler_a", "scheduler": "SGMUniform"},  # 8: alias twice
    ]
    sheet = write_sheet(tmp_path, rows)
    async with SimServer(SimConfig()) as sim:
        problems = await problems_of(job_for(sheet, sim.url), sim)
    by_text = by_head(problems)
    assert set(by_text) == {
        "sampler alias 'k_euler_a' not accepted",
        "sampler 'Eulr' unknown",
        "scheduler 'KARRAS' unknown",
        "scheduler 'SGMUniform' unknown",
    }
    assert by_text["sampler alias 'k_euler_a' not accepted"].message.endswith(": rows 3, 8")
    assert str(by_text["sampler alias 'k_euler_a' not accepted"].hint).startswith("write 'Euler a'")
    assert str(by_text["sampler 'Eulr' unknown"].hint).startswith("did you mean 'Euler'?")
    assert str(by_text["scheduler 'KARRAS' unknown"].hint).startswith("did you mean 'Karras'?")
    assert str(by_text["scheduler 'SGMUniform' unknown"].hint).startswith(
        "did you mean 'SGM Uniform'?"
    )


async def test_vae_lora_and_hires_upscaler(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a <lora:add_detail:0.5> cat", "vae": "sdxl_vae.safetensors"},
        {"prompt": "a <lora:add_detial:1> cat", "vae": "Automatic"},
        {"prompt": "p", "negative_prompt": "<lora:bad_hands:1>", "vae": "sdxl-vae.safetensors"},
        {"prompt": "p", "enable_hr": "true", "hr_upscaler": "R-ESRGAN 4x"},
        {"prompt": "p", "enable_hr": "true", "hr_upscaler": "Latent (bicubic)"},
        {"prompt": "p", "hr_upscaler": "R-ESRGAN 4x"},  # no hires pass: the server ignores it
        {"prompt": "<lora:bad_hands:1>", "disable_extra_networks": "true"},  # tags are ignored
    ]
    sheet = write_sheet(tmp_path, rows)
    async with SimServer(SimConfig()) as sim:
        problems = await problems_of(job_for(sheet, sim.url), sim)
    assert texts(problems) == [
        f"{sheet}, row 3: LoRA 'add_detial' unknown on {sim.url}: row 3 (did you mean "
        "'add_detail'? A1111 makes the image without a LoRA it cannot find)",
        f"{sheet}, row 4: LoRA 'bad_hands' unknown on {sim.url}: row 4 (A1111 makes the image "
        "without a LoRA it cannot find)",
        f"{sheet}, row 4: VAE 'sdxl-vae.safetensors' unknown on {sim.url}: row 4 (did you mean "
        "'sdxl_vae.safetensors'? the server would not use it; 'Automatic' and 'None' are always "
        "accepted)",
        f"{sheet}, row 5: hires upscaler 'R-ESRGAN 4x' unknown on {sim.url}: row 5 (did you mean "
        "'R-ESRGAN 4x+'? the server would fail these rows ('could not find upscaler'))",
    ]


async def test_hires_and_refiner_names(tmp_path: Path) -> None:
    hires: dict[str, Any] = {"prompt": "p", "enable_hr": "true", "denoising_strength": 0.5}
    rows = [
        {**hires, "hr_checkpoint_name": "Use same checkpoint", "hr_sampler_name": "Euler"},
        {**hires, "hr_checkpoint_name": "dreamshaper_9", "hr_scheduler": "Karras"},
        {**hires, "hr_sampler_name": "k_dpmpp_2m", "hr_scheduler": "karas"},
        {"prompt": "p", "refiner_checkpoint": "sd_xl_refiner_1.0"},
        {"prompt": "p", "refiner_checkpoint": "None", "hr_checkpoint_name": "nothing"},
    ]
    sheet = write_sheet(tmp_path, rows)
    async with SimServer(SimConfig(models=MODELS)) as sim:
        problems = await problems_of(job_for(sheet, sim.url), sim)
    assert sorted(p.message.split(f" on {sim.url}")[0] for p in problems) == [
        "checkpoint 'dreamshaper_9' unknown",
        "checkpoint 'sd_xl_refiner_1.0' unknown",
        "sampler alias 'k_dpmpp_2m' not accepted",
        "scheduler 'karas' unknown",
    ]
    failing = [p for p in problems if "refiner" in p.message or "dreamshaper_9" in p.message]
    assert all("the server would fail these rows" in str(p.hint) for p in failing)


async def test_controlnet_models_modules_and_unit_count(tmp_path: Path) -> None:
    write_png(tmp_path / "edge.png", "white")
    unit = {"controlnet.0.image": "edge.png", "controlnet.0.module": "canny"}
    rows = [
        {"prompt": "p", **unit, "controlnet.0.model": "control_v11p_sd15_canny"},
        {"prompt": "p", **unit, "controlnet.0.model": "CONTROL_V11P_SD15_CANNY"},  # stem: fine
        {"prompt": "p", **unit, "controlnet.0.model": "control_v11p_sd15_cany"},
        {"prompt": "p", **unit, "controlnet.0.model": "depth"},  # CN would guess
        {**unit, "prompt": "p", "controlnet.0.module": "Canny"},  # case matters
        {
            "prompt": "p",
            **unit,
            "controlnet.1.image": "edge.png",
            "controlnet.2.image": "edge.png",
            "controlnet.2.module": "invert",
        },  # three units
    ]
    sheet = write_sheet(tmp_path, rows)
    async with SimServer(SimConfig()) as sim:
        async with aiohttp.ClientSession() as http:
            options = {"control_net_unit_count": 2}
            async with http.post(sim.url + "/sdapi/v1/options", json=options) as response:
                assert response.status == 200
        problems = await problems_of(job_for(sheet, sim.url), sim)
    by_text = by_head(problems)
    assert set(by_text) == {
        "ControlNet model 'control_v11p_sd15_cany' unknown",
        "ControlNet model 'depth' is not a full name",
        "ControlNet module 'Canny' unknown",
        "3 ControlNet units exceed the server's 2 unit slots",
    }
    assert by_text["ControlNet module 'Canny' unknown"].message.endswith(": row 6")
    assert str(by_text["ControlNet module 'Canny' unknown"].hint).startswith(
        "did you mean 'canny'?"
    )
    assert "'control_v11f1p_sd15_depth [" in str(
        by_text["ControlNet model 'depth' is not a full name"].hint
    )
    assert by_text["3 ControlNet units exceed the server's 2 unit slots"].row == 7


async def test_two_endpoints_with_different_model_sets(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "model": m} for m in ("v1-5-pruned-emaonly", "dreamshaper_8")]
    rows.append({"prompt": "p", "model": "nowhere"})
    sheet = write_sheet(tmp_path, rows)
    async with (
        SimServer(SimConfig(models=MODELS)) as gpu1,
        SimServer(SimConfig(models=("v1-5-pruned-emaonly.safetensors",))) as gpu2,
    ):
        problems = await problems_of(job_for(sheet, gpu1.url, gpu2.url), gpu1, gpu2)
    messages = sorted(p.message for p in problems)
    assert messages == [
        f"checkpoint 'dreamshaper_8' unknown on {gpu2.url}: row 3",
        "checkpoint 'nowhere' unknown on every endpoint (2): row 4",
    ]


async def test_forge_vaes_and_default_unit_count(tmp_path: Path) -> None:
    write_png(tmp_path / "edge.png")
    units = {f"controlnet.{i}.image": "edge.png" for i in range(4)}
    rows = [
        {"prompt": "p", "vae": "flux-ae.safetensors"},
        {"prompt": "p", "vae": "sdxl_vae.safetensors", **units},
    ]
    sheet = write_sheet(tmp_path, rows)
    config = SimConfig(flavor="forge", vaes=("flux-ae.safetensors", "clip_l.safetensors"))
    async with SimServer(config) as sim:
        problems = await problems_of(job_for(sheet, sim.url), sim)
        assert "/controlnet/settings" not in sim.stats.requests
    messages = sorted(p.message for p in problems)
    assert messages == [
        f"4 ControlNet units exceed the server's 3 unit slots on {sim.url}: row 3",
        f"VAE 'sdxl_vae.safetensors' unknown on {sim.url}: row 3",
    ]


async def test_many_rows_stay_compact(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "model": "dreamshaper_7"} for i in range(3000)]
    sheet = write_sheet(tmp_path, rows)
    usage = collect_uses(prepare(job_for(sheet, "sim://")))
    assert usage.rows == 3000
    (rowset,) = usage.uses.values()
    assert rowset.describe() == "rows 2-3001"


async def test_unreadable_endpoint_is_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sheet = write_sheet(tmp_path, [{"prompt": "p", "model": "nowhere"}])
    job = job_for(sheet, "http://127.0.0.1:9")
    endpoint = resolve_endpoint(EndpointSpec(url="http://127.0.0.1:9"), 1)
    async with aiohttp.ClientSession() as session:
        client = EndpointClient(endpoint, session, TimeoutSpec(connect=1))
        with caplog.at_level(logging.WARNING, logger="batchgen"):
            assert await check_job(job, prepare(job), [client]) == []
    assert "cannot read what it has installed" in caplog.text


async def test_metadata_columns_are_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sheet = write_sheet(tmp_path, [{"prompt": "p", "notes": "mine", "batch": "b1"}])
    async with SimServer(SimConfig()) as sim:
        with caplog.at_level(logging.WARNING, logger="batchgen"):
            assert (await check_only(job_for(sheet, sim.url)))[-1] == "all checks passed"
    assert "'notes', 'batch' are not request fields" in caplog.text
    caplog.clear()
    job_file = tmp_path / "job.toml"
    job_file.write_text('sheet = "rows.csv"\n[columns]\nNotes = ""\nbatch = ""\n')
    async with SimServer(SimConfig()) as sim:
        with caplog.at_level(logging.WARNING, logger="batchgen"):
            await check_only(load_job(job_file, endpoints=[sim.url]))
    assert "not request fields" not in caplog.text


# ---- the command line ----------------------------------------------------------------------------


def test_cli_check_exits_2_and_lists_grouped_problems(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "model": "dreamshaper_7", "sampler": "k_euler_a"} for _ in range(3)]
    sheet = write_sheet(tmp_path, rows)
    endpoint = "sim://?models=dreamshaper_8.safetensors"
    result = cli_check(sheet, endpoint)
    assert result.exit_code == 2, result.output
    assert "checkpoint 'dreamshaper_7' unknown on sim://" in result.output
    assert ": rows 2-4 (did you mean 'dreamshaper_8'?" in result.output
    assert "sampler alias 'k_euler_a' not accepted" in result.output


def test_cli_check_lists_sheet_and_endpoint_problems_together(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "steps": "many"}, {"prompt": "p", "model": "dreamshaper_7"}]
    sheet = write_sheet(tmp_path, rows)
    endpoint = "sim://?models=dreamshaper_8.safetensors"
    result = cli_check(sheet, endpoint)
    assert result.exit_code == 2, result.output
    assert "2 problems found; nothing was sent" in result.output
    assert f"{sheet}, row 2, column 'steps'" in result.output
    assert "checkpoint 'dreamshaper_7' unknown on sim://" in result.output


def test_cli_run_checks_first_and_sends_nothing(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path, [{"prompt": "p", "model": "dreamshaper_7"}])
    out = tmp_path / "out"
    args = ["run", str(sheet), "--endpoint", "sim://?models=dreamshaper_8.safetensors"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "checkpoint 'dreamshaper_7' unknown" in result.output
    assert not (out / "manifest.jsonl").exists()


def test_cli_check_passes(tmp_path: Path) -> None:
    sheet = write_sheet(
        tmp_path, [{"prompt": "a <lora:add_detail:1> cat", "model": "dreamshaper_8"}]
    )
    endpoint = "sim://?models=dreamshaper_8.safetensors"
    result = cli_check(sheet, endpoint)
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("all checks passed")


# ---- the shared sample request (jobs/sample-controlnet.toml) ------------------------------------


def copy_sample(tmp_path: Path) -> Path:
    for name in ("sample-controlnet.toml", "sample-controlnet.csv"):
        shutil.copy(JOBS / name, tmp_path / name)
    shutil.copytree(JOBS / "images", tmp_path / "images")
    return tmp_path / "sample-controlnet.toml"


async def test_sample_job_reports_what_the_server_lacks(tmp_path: Path) -> None:
    job_file = copy_sample(tmp_path)
    async with SimServer(SimConfig()) as sim:  # the default inventory has none of its models
        problems = await problems_of(load_job(job_file, endpoints=[sim.url]), sim)
    heads = sorted(p.message.split(" on ")[0] for p in problems)
    assert heads == [
        "ControlNet model 'control_v11f1p_sd15_depth [cfd03158]' unknown",
        "ControlNet model 'control_v11p_sd15_softedge [a8575a2a]' unknown",
        "LoRA 'tachi-e' unknown",
        "VAE 'pastel-waifu-diffusion.vae.pt' unknown",
        "checkpoint 'chosenMix_chosenMix.ckpt [dd0aacadb6]' unknown",
    ]


async def test_sample_job_passes_once_the_hints_are_followed(tmp_path: Path) -> None:
    job_file = copy_sample(tmp_path)
    config = SimConfig(
        models=("chosenMix_chosenMix.ckpt",),
        vaes=("pastel-waifu-diffusion.vae.pt",),
        loras=("tachi-e",),
    )
    async with SimServer(config) as sim:
        problems = await problems_of(load_job(job_file, endpoints=[sim.url]))
        # Same files, other hashes: each hint says which name accepts any version.
        assert len(problems) == 3
        text = job_file.read_text(encoding="utf-8")
        for problem in problems:
            assert problem.hint is not None and "; write '" in problem.hint
            written = problem.message.split("'")[1]
            fixed = problem.hint.split("; write '")[1].split("'")[0]
            text = text.replace(written, fixed)
        job_file.write_text(text, encoding="utf-8")
        lines = await check_only(load_job(job_file, endpoints=[sim.url]))
        assert generated(sim) == 0
    assert lines[-1] == "all checks passed"
