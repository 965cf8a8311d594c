"""ControlNet units from columns and job defaults, and the shared sample request as a job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from runhelp import write_png

from batchgen.errors import InputError, Problem
from batchgen.job import JobSpec, load_job
from batchgen.records import ImageRef, Task
from batchgen.rows import controlnet as cn
from batchgen.rows.payload import PayloadBuilder, derive_seed, manifest_body
from batchgen.rows.sheet import read_headers, read_rows

JOBS = Path(__file__).resolve().parent.parent / "jobs"
SAMPLE = Path("/work/shared/samples/a1111-txt2img-controlnet-request.json")


def build(job: JobSpec) -> list[Task | InputError]:
    builder = PayloadBuilder(job, read_headers(job.sheet))
    assert builder.header_problems == ()
    out: list[Task | InputError] = []
    for row in read_rows(job.sheet):
        try:
            out.append(builder.build(row))
        except InputError as error:
            out.append(error)
    return out


def units_of(task: Task | InputError) -> list[dict[str, Any]]:
    assert isinstance(task, Task), task
    args: list[dict[str, Any]] = task.body["alwayson_scripts"]["controlnet"]["args"]
    return args


# ---- the unit table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("resize_mode", 0, "Just Resize"),
        ("resize_mode", "1", "Crop and Resize"),
        ("resize_mode", 2.0, "Resize and Fill"),
        ("resize_mode", 3, "Just Resize"),
        ("resize_mode", "crop and resize", "Crop and Resize"),
        ("resize_mode", "Envelope (Outer Fit)", "Envelope (Outer Fit)"),
        ("control_mode", 0, "Balanced"),
        ("control_mode", "1", "My prompt is more important"),
        ("control_mode", 2, "ControlNet is more important"),
        ("control_mode", "balanced", "Balanced"),
        ("hr_option", "low res only", "Low res only"),
        ("module", "None", "none"),
        ("module", "canny", "canny"),
        ("weight", "0.6", 0.6),
        ("pixel_perfect", "yes", True),
        ("processor_res", 512.0, 512),
    ],
)
def test_coerce_unit(key: str, value: Any, expected: Any) -> None:
    assert cn.coerce_unit(key, value) == expected


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("resize_mode", 5, "use 0..3 or a name"),
        ("control_mode", "strong", "use one of: Balanced"),
        ("hr_option", 1, "use one of: Both"),
        ("weight", "heavy", "as a number"),
    ],
)
def test_coerce_unit_rejects(key: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cn.coerce_unit(key, value)


def test_legacy_keys_map_to_current_names() -> None:
    assert cn.canonical_key("input_image") == "image"
    assert cn.canonical_key("lowvram") == "low_vram"
    assert cn.canonical_key("guidance") == "guidance_end"
    assert cn.canonical_key("mask") == "mask_image"
    assert cn.canonical_key("Control Mode") == "control_mode"
    assert cn.canonical_key("strength") is None


def test_enabled_by_default_and_gaps_filled() -> None:
    assert cn.finish_unit({"model": "m"}) == {"enabled": True, "model": "m"}
    assert cn.finish_unit({"enabled": False}) == {"enabled": False}
    assert cn.controlnet_args({2: {"enabled": True}}) == [
        {"enabled": False},
        {"enabled": False},
        {"enabled": True},
    ]


def test_unit_issues() -> None:
    assert [i.key for i in cn.unit_issues(0, {"enabled": True}, "txt2img")] == ["image"]
    assert cn.unit_issues(0, {"enabled": True}, "img2img") == []  # uses the init image
    assert cn.unit_issues(0, {"enabled": False}, "txt2img") == []
    issues = cn.unit_issues(
        1, {"image": "x", "guidance_start": 0.8, "guidance_end": 0.5, "weight": -1}, "txt2img"
    )
    assert [i.key for i in issues] == ["guidance_start", "weight"]


# ---- units from the sheet and the job -------------------------------------------------------


def test_units_from_columns_and_job_defaults(tmp_path: Path) -> None:
    write_png(tmp_path / "pose.png")
    write_png(tmp_path / "depth.png", "blue")
    (tmp_path / "s.csv").write_text(
        "prompt,controlnet.0.image,controlnet.0.weight,ControlNet.1.Input_Image,cn.1.control_mode\n"
        "a,pose.png,0.8,depth.png,2\n"
        "b,pose.png,,,\n",
        encoding="utf-8",
    )
    job = JobSpec(
        name="t",
        sheet=tmp_path / "s.csv",
        controlnet=(
            {"module": "openpose", "model": "control_openpose", "resize_mode": 1},
            {"module": "None", "model": "depth", "lowvram": True, "enabled": True},
        ),
    )
    first, second = build(job)
    unit0, unit1 = units_of(first)
    assert unit0 == {
        "enabled": True,
        "module": "openpose",
        "model": "control_openpose",
        "resize_mode": "Crop and Resize",
        "image": ImageRef(tmp_path / "pose.png", unit0["image"].sha256),
        "weight": 0.8,
    }
    assert unit1["module"] == "none"
    assert unit1["low_vram"] is True
    assert "lowvram" not in unit1
    assert unit1["control_mode"] == "ControlNet is more important"
    assert isinstance(unit1["image"], ImageRef)
    assert isinstance(second, InputError)  # unit 1 has no image in row 3
    (problem,) = second.problems
    assert (problem.row, problem.column) == (3, "controlnet.1.image")
    assert "no image" in problem.message
    assert problem.hint is not None and "enabled to false" in problem.hint


def test_a_row_can_disable_a_default_unit(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("prompt,controlnet.0.enabled\na,false\n", encoding="utf-8")
    job = JobSpec(name="t", sheet=tmp_path / "s.csv", controlnet=({"model": "m"},))
    (task,) = build(job)
    assert units_of(task) == [{"enabled": False, "model": "m"}]


def test_unit_cell_problems_name_row_and_column(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text(
        "prompt,controlnet.0.image,controlnet.0.control_mode\na,base64SrcImg,7\n", encoding="utf-8"
    )
    (error,) = build(JobSpec(name="t", sheet=tmp_path / "s.csv"))
    assert isinstance(error, InputError)
    problems = {p.column: p for p in error.problems}
    assert "not a file, URL or base64 image" in problems["controlnet.0.image"].message
    assert "use 0..2 or a name" in problems["controlnet.0.control_mode"].message
    assert problems["controlnet.0.image"].row == 2


def test_bad_unit_defaults_are_job_problems(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("prompt\na\n", encoding="utf-8")
    job = JobSpec(
        name="t",
        sheet=tmp_path / "s.csv",
        controlnet=({"wieght": 1, "input_image": "x.png", "image": "y.png", "resize_mode": 9},),
    )
    builder = PayloadBuilder(job.model_copy(update={"source": tmp_path / "t.toml"}), ["prompt"])
    problems: dict[str | None, Problem] = {p.column: p for p in builder.default_problems()}
    assert problems["controlnet[0].wieght"].hint == "did you mean 'weight'?"
    assert (
        "both 'input_image' and its new name 'image'"
        in problems["controlnet[0].input_image"].message
    )
    assert "use 0..3" in problems["controlnet[0].resize_mode"].message
    assert all(p.file == str(tmp_path / "t.toml") for p in problems.values())


def test_units_in_alwayson_scripts_and_jsonl_lists_are_normalized(tmp_path: Path) -> None:
    write_png(tmp_path / "e.png")
    sheet = tmp_path / "s.jsonl"
    rows = [
        {"prompt": "a", "controlnet": [{"input_image": "e.png", "resize_mode": 0}]},
        {
            "prompt": "b",
            "alwayson_scripts": {
                "ControlNet": {"args": [{"image": "e.png", "control_mode": 1}]},
                "Other": {"args": [1]},
            },
        },
    ]
    sheet.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    a, b = build(JobSpec(name="t", sheet=sheet))
    assert units_of(a)[0]["resize_mode"] == "Just Resize"
    assert isinstance(units_of(a)[0]["image"], ImageRef)
    assert isinstance(b, Task)
    assert set(b.body["alwayson_scripts"]) == {"Other", "controlnet"}
    assert units_of(b)[0]["control_mode"] == "My prompt is more important"


def test_img2img_units_may_use_the_init_image(tmp_path: Path) -> None:
    write_png(tmp_path / "in.png")
    (tmp_path / "s.csv").write_text("prompt,init_images\na,in.png\n", encoding="utf-8")
    job = JobSpec(name="t", sheet=tmp_path / "s.csv", controlnet=({"module": "canny"},))
    (task,) = build(job)
    assert isinstance(task, Task)
    assert task.route == "img2img"
    assert units_of(task) == [{"enabled": True, "module": "canny"}]


# ---- the shared sample ----------------------------------------------------------------------


def test_the_shared_sample_as_a_job_with_every_trap_fixed() -> None:
    job = load_job(JOBS / "sample-controlnet.toml")
    builder = PayloadBuilder(job, read_headers(job.sheet))
    assert builder.header_problems == ()
    assert builder.default_problems() == ()
    (task,) = [builder.build(row) for row in read_rows(job.sheet)]
    body = dict(task.body)
    sample = json.loads(SAMPLE.read_text(encoding="utf-8")) if SAMPLE.exists() else None

    # clip_skip is not a request field: it becomes the override setting
    assert "clip_skip" not in body
    assert body["override_settings"]["CLIP_stop_at_last_layers"] == 2
    # sampler_index "DPM++ SDE Karras" with an empty sampler_name: split
    assert (body["sampler_name"], body["scheduler"]) == ("DPM++ SDE", "Karras")
    assert "sampler_index" not in body
    # seed -1: a fixed seed derived from the job and the row
    assert body["seed"] == derive_seed(0, task.key)
    # the ControlNet units: names for the modes, current key names, real images
    units = units_of(task)
    assert len(units) == 2
    for unit in units:
        assert unit["resize_mode"] == "Crop and Resize"
        assert unit["control_mode"] == "Balanced"
        assert unit["low_vram"] is False
        assert "lowvram" not in unit
        assert "input_image" not in unit
        assert isinstance(unit["image"], ImageRef)
        assert unit["enabled"] is True
    assert [u["image"].path.name for u in units] == ["softedge-src.png", "depth-src.png"]
    assert [u["weight"] for u in units] == [0.3, 0.75]
    # everything else is the request as posted
    if sample is not None:
        for key in ("batch_size", "steps", "width", "height", "negative_prompt", "prompt"):
            assert body[key] == sample[key]
        assert body["override_settings"]["sd_vae"] == sample["override_settings"]["sd_vae"]
        assert body["cfg_scale"] == float(sample["cfg_scale"])
    shown = manifest_body(body, JOBS)
    assert shown["alwayson_scripts"]["controlnet"]["args"][0]["image"]["path"] == (
        "images/softedge-src.png"
    )


def test_the_sample_placeholder_image_is_refused(tmp_path: Path) -> None:
    sample = {
        "prompt": "x",
        "alwayson_scripts": {"controlnet": {"args": [{"input_image": "base64SrcImg"}]}},
    }
    sheet = tmp_path / "s.jsonl"
    sheet.write_text(json.dumps(sample) + "\n", encoding="utf-8")
    (error,) = build(JobSpec(name="t", sheet=sheet))
    assert isinstance(error, InputError)
    (problem,) = error.problems
    assert problem.column == "alwayson_scripts.controlnet.args[0].input_image"
    assert "not a file, URL or base64 image" in problem.message


def test_the_demo_job_builds() -> None:
    job = load_job(JOBS / "demo.toml")
    builder = PayloadBuilder(job, read_headers(job.sheet))
    assert builder.header_problems == ()
    assert builder.default_problems() == ()
    assert builder.metadata_columns == ("notes",)
    tasks = [builder.build(row) for row in read_rows(job.sheet)]
    assert len(tasks) == 12
    assert {t.checkpoint for t in tasks} == {"v1-5-pruned-emaonly", "dreamshaper_8"}
    assert any("🐼" in t.body["prompt"] for t in tasks)
    assert any("<lora:" in t.body["prompt"] for t in tasks)
    assert len({t.key for t in tasks}) == 12


def test_set_values_reach_units_and_override_the_job_file() -> None:
    job = load_job(
        JOBS / "sample-controlnet.toml",
        set_fields={"controlnet.1.weight": "0.5", "model": "v1-5-pruned-emaonly", "steps": "30"},
    )
    builder = PayloadBuilder(job, read_headers(job.sheet))
    assert builder.default_problems() == ()
    (task,) = [builder.build(row) for row in read_rows(job.sheet)]
    assert [u["weight"] for u in units_of(task)] == [0.3, 0.5]
    assert task.checkpoint == "v1-5-pruned-emaonly"
    assert task.body["steps"] == 30
