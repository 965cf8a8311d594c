"""Rows plus job defaults -> request bodies: mapping, coercion, errors, traps, seeds, images."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image
from runhelp import write_png

from batchgen.errors import InputError, Problem
from batchgen.job import JobSpec, SeedSpec
from batchgen.records import ImageRef, SheetRow, Task
from batchgen.rows.columns import coerce_auto
from batchgen.rows.payload import PayloadBuilder, adapt_for, derive_seed, encode_body, manifest_body
from batchgen.rows.sheet import read_headers, read_rows

PANDA = "一只在竹林里的大熊猫\uff0c水墨画 🐼🎋"


def make_job(sheet: Path, **fields: Any) -> JobSpec:
    return JobSpec(name="t", sheet=sheet, **fields)


def write_csv(tmp_path: Path, text: str, name: str = "s.csv") -> Path:
    sheet = tmp_path / name
    sheet.write_text(text, encoding="utf-8")
    return sheet


def builder_for(job: JobSpec) -> PayloadBuilder:
    return PayloadBuilder(job, read_headers(job.sheet, job.sheet_name))


def build_all(job: JobSpec) -> list[Task]:
    builder = builder_for(job)
    assert builder.header_problems == ()
    assert builder.default_problems() == ()
    return [builder.build(row) for row in read_rows(job.sheet, job.sheet_name)]


def row_problems(job: JobSpec) -> list[Problem]:
    builder = builder_for(job)
    found: list[Problem] = []
    for row in read_rows(job.sheet):
        try:
            builder.build(row)
        except InputError as error:
            found.extend(error.problems)
    return found


# ---- mapping --------------------------------------------------------------------------------


def test_headers_map_to_fields_aliases_and_dotted_paths(tmp_path: Path) -> None:
    sheet = write_csv(
        tmp_path,
        " Prompt ,Negative Prompt,CFG,model,VAE,clip_skip,sampler,batch_count,"
        "override_settings.eta_noise_seed_delta,override_settings.my_ext_flag,notes\n"
        "fox,blurry,6.5,dreamshaper_8,None,2,Euler a,3,31337,on,keep me\n",
    )
    (task,) = build_all(make_job(sheet))
    body = dict(task.body)
    assert body["prompt"] == "fox"
    assert body["negative_prompt"] == "blurry"
    assert body["cfg_scale"] == 6.5
    assert body["sampler_name"] == "Euler a"
    assert body["n_iter"] == 3
    assert body["override_settings"] == {
        "sd_model_checkpoint": "dreamshaper_8",
        "sd_vae": "None",
        "CLIP_stop_at_last_layers": 2,
        "eta_noise_seed_delta": 31337,
        "my_ext_flag": "on",  # an untyped setting: text that is not a number stays text
    }
    assert "clip_skip" not in body
    assert "notes" not in body
    assert task.checkpoint == "dreamshaper_8"
    assert task.metadata == {"notes": "keep me"}
    assert task.route == "txt2img"
    assert task.row == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2),
        ("-3", -3),
        ("0.5", 0.5),
        ("TRUE", True),
        ("false", False),
        (" CPU ", " CPU "),
        ("1.2.3", "1.2.3"),
        (7, 7),
        ("", ""),
    ],
)
def test_untyped_settings_read_numbers_and_booleans_only(value: Any, expected: Any) -> None:
    result = coerce_auto(value)
    assert result == expected
    assert type(result) is type(expected)


def test_metadata_columns_are_listed(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "prompt,notes,category\na,b,c\n")
    builder = builder_for(make_job(sheet))
    assert builder.metadata_columns == ("notes", "category")


def test_job_columns_map_headers_explicitly(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "Beschreibung,Stil,prompts\nein Fuchs,Watercolor,x\n")
    job = make_job(sheet, columns={"Beschreibung": "prompt", "Stil": "styles", "prompts": ""})
    builder = builder_for(job)
    assert builder.header_problems == ()
    assert builder.metadata_columns == ("prompts",)  # mapped to "": a note, not a misspelling
    task = builder.build(next(read_rows(sheet)))
    assert task.body["prompt"] == "ein Fuchs"
    assert task.body["styles"] == ["Watercolor"]
    assert task.metadata == {"prompts": "x"}


def test_header_problems(tmp_path: Path) -> None:
    sheet = write_csv(
        tmp_path,
        "prompt,negativ_prompt,steps,steps,model,checkpoint,prompt.x,controlnet.0.wieght,"
        "override_settings.clip_stop_at_last_layer,cn.x\n" + "a,,,,,,,,,\n",
    )
    job = make_job(sheet, columns={"Missing": "prompt"})
    builder = PayloadBuilder(
        job.model_copy(update={"source": tmp_path / "t.toml"}), read_headers(sheet)
    )
    by_column = {p.column: p for p in builder.header_problems}
    assert by_column["negativ_prompt"].hint is not None
    assert "did you mean 'negative_prompt'?" in by_column["negativ_prompt"].hint
    assert "silently ignore" in by_column["negativ_prompt"].message
    assert by_column["negativ_prompt"].row == 1
    assert by_column["negativ_prompt"].file == str(sheet)
    assert by_column["steps"].message == "the header appears twice"
    assert "both set 'override_settings.sd_model_checkpoint'" in by_column["checkpoint"].message
    assert "has no part 'x'" in by_column["prompt.x"].message
    assert by_column["controlnet.0.wieght"].hint == "did you mean 'controlnet.0.weight'?"
    assert by_column["override_settings.clip_stop_at_last_layer"].hint == (
        "did you mean 'override_settings.CLIP_stop_at_last_layers'?"
    )
    assert "controlnet.<unit number>.<field>" in str(by_column["cn.x"].hint)
    assert by_column["Missing"].file == str(tmp_path / "t.toml")
    assert "no such header" in by_column["Missing"].message
    assert len(builder.header_problems) == 8


# ---- coercion and row errors ----------------------------------------------------------------


def test_excel_floats_and_bools_from_a_real_xlsx(tmp_path: Path) -> None:
    sheet = tmp_path / "s.xlsx"
    pd.DataFrame(
        {
            "prompt": [PANDA, "b"],
            "steps": [28.0, 20.0],
            "cfg_scale": [7, 7.5],
            "enable_hr": [True, False],
            "seed": [1234.0, None],
        }
    ).to_excel(sheet, index=False)
    first, second = build_all(make_job(sheet))
    assert first.body["prompt"] == PANDA
    assert first.body["steps"] == 28
    assert type(first.body["steps"]) is int
    assert first.body["cfg_scale"] == 7.0
    assert first.body["enable_hr"] is True
    assert first.body["seed"] == 1234
    assert second.body["enable_hr"] is False
    assert second.body["cfg_scale"] == 7.5


def test_text_is_sent_exactly(tmp_path: Path) -> None:
    prompt = f"{PANDA}\nsecond line, <lora:ink_style:0.7>, (masterpiece:1.2)"
    sheet = tmp_path / "s.csv"
    pd.DataFrame({"prompt": [prompt], "negative_prompt": ["  spaced  "]}).to_csv(sheet, index=False)
    (task,) = build_all(make_job(sheet))
    assert task.body["prompt"] == prompt
    assert task.body["negative_prompt"] == "  spaced  "


def test_every_problem_of_a_row_is_reported_with_row_column_and_hint(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "prompt,steps,cfg,enable_hr\nok,20,7,yes\na,28.5,high,maybe\n")
    problems = row_problems(make_job(sheet))
    assert [(p.row, p.column) for p in problems] == [(3, "steps"), (3, "cfg"), (3, "enable_hr")]
    assert problems[0].message == "cannot read '28.5' as a whole number (it has a fraction)"
    assert problems[0].hint == "write a whole number such as 20"
    assert problems[1].hint == "write a number such as 7.5 (with a dot)"
    assert str(problems[0]).startswith(f"{sheet}, row 3, column 'steps': cannot read")


def test_a_row_without_a_prompt_is_an_error_unless_the_job_gives_one(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "prompt,steps\n,20\nfox,\n")
    problems = row_problems(make_job(sheet))
    assert [(p.row, p.message) for p in problems] == [(2, "this row has no prompt")]
    tasks = build_all(make_job(sheet, defaults={"prompt": "a cat"}))
    assert [t.body["prompt"] for t in tasks] == ["a cat", "fox"]


@pytest.mark.parametrize(
    ("header", "value", "message"),
    [
        ("steps", "0", "steps must be at least 1"),
        ("batch_size", "0", "batch_size must be at least 1"),
        ("width", "513", "not a multiple of 8 (the server would make it 512)"),
        ("height", "-8", "height must be positive"),
        ("denoising_strength", "1.5", "between 0 and 1"),
        ("seed", "4294967296", "out of range"),
        ("seed", "-2", "out of range"),
        ("save_images", "true", "grid first"),
        ("send_images", "false", "no images"),
    ],
)
def test_range_checks(tmp_path: Path, header: str, value: str, message: str) -> None:
    sheet = write_csv(tmp_path, f"prompt,{header}\nfox,{value}\n")
    (problem,) = row_problems(make_job(sheet))
    assert message in problem.message
    assert (problem.row, problem.column) == (2, header)
    assert problem.hint


def test_one_bad_cell_is_one_problem(tmp_path: Path) -> None:
    sheet = tmp_path / "s.xlsx"
    pd.DataFrame({"prompt": [None], "width": [513.5]}).to_excel(sheet, index=False)
    problems = row_problems(make_job(sheet, defaults={"prompt": "a"}))
    assert [(p.column, p.message) for p in problems] == [
        ("width", "cannot read '513.5' as a whole number (it has a fraction)")
    ]


def test_width_hint_suggests_neighbours(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "prompt,width\nfox,513\n")
    (problem,) = row_problems(make_job(sheet))
    assert problem.hint == "write 512 or 520"


def test_value_in_a_column_without_header(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "prompt,\nfox,stray\n")
    (problem,) = row_problems(make_job(sheet))
    assert "without a header" in problem.message


# ---- defaults -------------------------------------------------------------------------------


def test_defaults_merge_under_row_values_key_by_key(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "prompt,steps,model\nfox,30,dreamshaper_8\nowl,,\n")
    job = make_job(
        sheet,
        defaults={
            "steps": 20,
            "cfg_scale": 5,
            "override_settings": {"sd_vae": "vae.pt", "sd_model_checkpoint": "v1-5-pruned-emaonly"},
        },
    )
    fox, owl = build_all(job)
    assert fox.body["steps"] == 30
    assert fox.body["cfg_scale"] == 5.0
    assert fox.body["override_settings"] == {
        "sd_vae": "vae.pt",
        "sd_model_checkpoint": "dreamshaper_8",
    }
    assert fox.checkpoint == "dreamshaper_8"
    assert owl.body["steps"] == 20
    assert owl.checkpoint == "v1-5-pruned-emaonly"


def test_set_values_are_text_coerced_by_field_type(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "prompt\nfox\n")
    job = make_job(
        sheet,
        defaults={
            "steps": "25",
            "cfg": "6.5",
            "restore_faces": "no",
            "model": "dreamshaper_8",
            "override_settings.CLIP_stop_at_last_layers": "2",
            "styles": "a;b",
        },
    )
    (task,) = build_all(job)
    assert task.body["steps"] == 25
    assert task.body["cfg_scale"] == 6.5
    assert task.body["restore_faces"] is False
    assert task.body["styles"] == ["a", "b"]
    assert task.body["override_settings"] == {
        "sd_model_checkpoint": "dreamshaper_8",
        "CLIP_stop_at_last_layers": 2,
    }


def test_default_problems_name_the_job_file(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "prompt\nfox\n")
    job = make_job(sheet, defaults={"stpes": 20, "steps": 20.5, "width": 500, "colour": "red"})
    builder = PayloadBuilder(
        job.model_copy(update={"source": tmp_path / "job.toml"}), read_headers(sheet)
    )
    problems = {p.column: p for p in builder.default_problems()}
    assert problems["stpes"].hint == "did you mean 'steps'?"
    assert problems["stpes"].file == str(tmp_path / "job.toml")
    assert problems["stpes"].row is None
    assert "fraction" in problems["steps"].message
    assert "multiple of 8" in problems["width"].message
    assert "not a request field" in problems["colour"].message
    assert builder.header_problems == ()


def test_route_specific_defaults_are_dropped_for_the_other_route(tmp_path: Path) -> None:
    write_png(tmp_path / "in.png")
    sheet = write_csv(tmp_path, "prompt,init_images\nfox,\nowl,in.png\n")
    txt, img = build_all(make_job(sheet, defaults={"enable_hr": False, "mask_blur": 4}))
    assert txt.route == "txt2img"
    assert txt.body["enable_hr"] is False
    assert "mask_blur" not in txt.body
    assert img.route == "img2img"
    assert "enable_hr" not in img.body
    assert img.body["mask_blur"] == 4


# ---- traps ----------------------------------------------------------------------------------


def test_traps_fixed_before_sending(tmp_path: Path) -> None:
    sheet = write_csv(
        tmp_path,
        "prompt,sampler_index,sampler_name,clip_skip,enable_hr,denoising_strength\n"
        "a,DPM++ SDE Karras,,2,true,\n"
        "b,,DPM++ 2M SGM Uniform,,true,0.4\n"
        "c,Euler a,,,,\n",
    )
    a, b, c = build_all(make_job(sheet))
    assert a.body["sampler_name"] == "DPM++ SDE"
    assert a.body["scheduler"] == "Karras"
    assert "sampler_index" not in a.body
    assert a.body["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    assert a.body["denoising_strength"] == 0.7  # hires fix with null denoising is a 500
    assert b.body["sampler_name"] == "DPM++ 2M"
    assert b.body["scheduler"] == "SGM Uniform"
    assert b.body["denoising_strength"] == 0.4
    assert c.body["sampler_name"] == "Euler a"
    assert "scheduler" not in c.body
    assert "denoising_strength" not in c.body


def test_schedule_names_and_aliases_are_split_too(tmp_path: Path) -> None:
    sheet = write_csv(
        tmp_path,
        "prompt,sampler\na,Euler sgm_uniform\nb,DPM++ 2M SGMUniform\nc,Euler a Align Your Steps\n",
    )
    a, b, c = build_all(make_job(sheet))
    assert (a.body["sampler_name"], a.body["scheduler"]) == ("Euler", "SGM Uniform")
    assert (b.body["sampler_name"], b.body["scheduler"]) == ("DPM++ 2M", "SGM Uniform")
    assert (c.body["sampler_name"], c.body["scheduler"]) == ("Euler a", "Align Your Steps")


def test_a_schedule_in_the_sampler_name_must_agree_with_the_scheduler(tmp_path: Path) -> None:
    sheet = write_csv(
        tmp_path,
        "prompt,sampler,scheduler\nok,DPM++ 2M Karras,karras\nbad,DPM++ 2M Karras,Exponential\n",
    )
    problems = row_problems(make_job(sheet))
    assert [(p.row, p.column) for p in problems] == [(3, "sampler")]
    assert "names schedule Karras, but scheduler is 'Exponential'" in problems[0].message


# ---- seeds and keys -------------------------------------------------------------------------

ROWS = ["prompt,seed,notes", "fox,,a", "owl,-1,b", "cat,77,c", "fox,,d"]


def test_seeds_are_derived_deterministically(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "\n".join(ROWS) + "\n")
    job = make_job(sheet, seed=SeedSpec(mode="derived", base=7))
    first = build_all(job)
    again = build_all(job)
    assert [t.body for t in first] == [t.body for t in again]
    assert [t.key for t in first] == [t.key for t in again]
    fox, owl, cat, fox2 = first
    assert cat.body["seed"] == 77
    for task in (fox, owl, fox2):
        assert 0 <= task.body["seed"] <= 4294967293
        assert task.body["seed"] == derive_seed(7, task.key)
    assert len({fox.body["seed"], owl.body["seed"], fox2.body["seed"]}) == 3
    other_base = build_all(make_job(sheet, seed=SeedSpec(mode="derived", base=8)))
    assert other_base[0].body["seed"] != fox.body["seed"]
    assert other_base[0].key != fox.key  # the seed policy is part of the identity


def test_identical_rows_get_distinct_keys_and_seeds(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "\n".join(ROWS) + "\n")
    fox, _, _, fox2 = build_all(make_job(sheet))
    digest, n = fox.key.rsplit("-", 1)
    assert len(digest) == 16
    assert n == "0"
    assert fox2.key == f"{digest}-1"
    assert fox.body["seed"] != fox2.body["seed"]


def test_empty_seed_and_minus_one_are_the_same_request(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "prompt,seed\nfox,\nfox,-1\n")
    a, b = build_all(make_job(sheet))
    digest = a.key.rsplit("-", 1)[0]
    assert (a.key, b.key) == (f"{digest}-0", f"{digest}-1")
    assert a.body["seed"] != b.body["seed"]
    assert -1 not in (a.body["seed"], b.body["seed"])


def test_reordering_and_inserting_rows_keeps_keys_and_seeds(tmp_path: Path) -> None:
    original = write_csv(tmp_path, "\n".join(ROWS) + "\n", "a.csv")
    shuffled = write_csv(
        tmp_path, "\n".join([ROWS[0], "new,,z", ROWS[3], ROWS[2], ROWS[1], ROWS[4]]) + "\n", "b.csv"
    )
    before = {t.metadata["notes"]: (t.key, t.body["seed"]) for t in build_all(make_job(original))}
    after = {t.metadata["notes"]: (t.key, t.body["seed"]) for t in build_all(make_job(shuffled))}
    assert after["a"] == before["a"]
    assert after["b"] == before["b"]
    assert after["c"] == before["c"]
    assert after["d"] == before["d"]
    assert after["z"][0] not in {key for key, _ in before.values()}


def test_an_edited_row_is_new_the_others_are_not(tmp_path: Path) -> None:
    original = write_csv(tmp_path, "prompt,steps\nfox,20\nowl,20\n", "a.csv")
    edited = write_csv(tmp_path, "prompt,steps\nfox,21\nowl,20\n", "b.csv")
    a = build_all(make_job(original))
    b = build_all(make_job(edited))
    assert a[0].key != b[0].key
    assert a[1].key == b[1].key
    assert a[1].body == b[1].body


def test_metadata_is_not_part_of_the_key(tmp_path: Path) -> None:
    a = build_all(make_job(write_csv(tmp_path, "prompt,notes\nfox,one\n", "a.csv")))
    b = build_all(make_job(write_csv(tmp_path, "prompt,notes\nfox,two\n", "b.csv")))
    assert a[0].key == b[0].key


def test_random_mode_leaves_seeds_to_the_server(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "prompt,seed\nfox,\nowl,-1\ncat,5\n")
    fox, owl, cat = build_all(make_job(sheet, seed=SeedSpec(mode="random")))
    assert fox.body["seed"] == -1
    assert owl.body["seed"] == -1
    assert cat.body["seed"] == 5


def test_subseed_is_fixed_when_variation_is_on(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "prompt,subseed_strength\nfox,0.3\nowl,\n")
    fox, owl = build_all(make_job(sheet))
    assert 0 <= fox.body["subseed"] <= 4294967293
    assert "subseed" not in owl.body


def test_a_jsonl_dict_cell_overrides_default_keys(tmp_path: Path) -> None:
    sheet = tmp_path / "s.jsonl"
    sheet.write_text(
        '{"prompt": "a", "override_settings": '
        '{"sd_vae": "row.pt", "clip_stop_at_last_layers": 2}}\n',
        encoding="utf-8",
    )
    job = make_job(sheet, defaults={"vae": "default.pt", "model": "dreamshaper_8"})
    (task,) = build_all(job)
    assert task.body["override_settings"] == {
        "sd_vae": "row.pt",
        "sd_model_checkpoint": "dreamshaper_8",
        "CLIP_stop_at_last_layers": 2,
    }


def test_builds_are_the_same_for_two_builders_on_the_same_rows(tmp_path: Path) -> None:
    sheet = write_csv(tmp_path, "prompt\nfox\n")
    job = make_job(sheet)
    row = SheetRow(row=2, cells={"prompt": "fox"})
    assert builder_for(job).build(row) == builder_for(job).build(row)


# ---- img2img and images ---------------------------------------------------------------------


def test_img2img_rows_with_several_init_images_and_a_mask(tmp_path: Path) -> None:
    write_png(tmp_path / "img" / "a.png", "red")
    write_png(tmp_path / "img" / "b.png", "blue")
    write_png(tmp_path / "img" / "m.png", "white")
    sheet = write_csv(
        tmp_path,
        "prompt,init_image,mask,denoising_strength,resize_mode\n"
        'fox,"img/a.png; img/b.png",img/m.png,0.5,1\n'
        "owl,,,,\n",
    )
    img, txt = build_all(make_job(sheet))
    assert img.route == "img2img"
    refs = img.body["init_images"]
    assert [r.path for r in refs] == [tmp_path / "img" / "a.png", tmp_path / "img" / "b.png"]
    assert refs[0].sha256 == hashlib.sha256((tmp_path / "img" / "a.png").read_bytes()).hexdigest()
    assert isinstance(img.body["mask"], ImageRef)
    assert img.body["resize_mode"] == 1
    assert txt.route == "txt2img"


def test_route_field_mismatches_are_problems(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    sheet = write_csv(
        tmp_path, "prompt,init_images,enable_hr,mask_blur\nfox,a.png,true,\nowl,,,4\n"
    )
    problems = row_problems(make_job(sheet))
    assert [(p.row, p.column) for p in problems] == [(2, "enable_hr"), (3, "mask_blur")]
    assert "txt2img field" in problems[0].message
    assert "img2img field" in problems[1].message


def test_a_mask_without_init_image(tmp_path: Path) -> None:
    write_png(tmp_path / "m.png")
    sheet = write_csv(tmp_path, "prompt,mask\nfox,m.png\n")
    messages = [p.message for p in row_problems(make_job(sheet))]
    assert "a mask needs an init image" in messages


def test_image_cells_that_are_not_images(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not really a png", encoding="utf-8")
    sheet = write_csv(
        tmp_path,
        "prompt,init_images\na,missing/x.png\nb,base64SrcImg\nc,notes.png\n"
        'd,"data:image/png;base64,zz"\n',
    )
    problems = row_problems(make_job(sheet))
    assert [(p.row, p.column) for p in problems] == [
        (2, "init_images"),
        (3, "init_images"),
        (4, "init_images"),
        (5, "init_images"),
    ]
    assert f"image file not found: {tmp_path / 'missing' / 'x.png'}" == problems[0].message
    assert "'base64SrcImg' is not a file, URL or base64 image" in problems[1].message
    assert "is not a PNG, JPEG" in problems[2].message
    assert "data URL" in problems[3].message


def test_inline_images_and_urls_are_sent_as_given(tmp_path: Path) -> None:
    data = base64.b64encode(write_png(tmp_path / "x.png").read_bytes()).decode()
    url = "https://example.com/in.png"
    sheet = tmp_path / "s.jsonl"
    sheet.write_text(
        f'{{"prompt": "a", "init_images": ["{url}", "data:image/png;base64,{data}", "{data}"]}}\n',
        encoding="utf-8",
    )
    (task,) = build_all(make_job(sheet))
    assert task.body["init_images"] == [url, f"data:image/png;base64,{data}", data]
    assert task.row == 1


def test_image_content_not_path_is_the_identity(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", "red")
    sheet = write_csv(tmp_path, "prompt,init_images\nfox,a.png\n")
    before = build_all(make_job(sheet))[0]
    write_png(tmp_path / "a.png", "green")
    after = build_all(make_job(sheet))[0]
    assert before.key != after.key
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").rename(tmp_path / "sub" / "b.png")
    moved = build_all(make_job(write_csv(tmp_path, "prompt,init_images\nfox,sub/b.png\n")))[0]
    assert moved.key == after.key


# ---- wire and manifest forms ----------------------------------------------------------------


def test_encode_and_manifest_forms(tmp_path: Path) -> None:
    image = write_png(tmp_path / "a.png")
    ref = ImageRef(image, hashlib.sha256(image.read_bytes()).hexdigest())
    big = base64.b64encode(Image.new("RGB", (64, 64)).tobytes()[:0] + image.read_bytes() * 4)
    inline = "data:image/png;base64," + big.decode()
    body = {
        "prompt": "x" * 300,
        "init_images": [ref],
        "alwayson_scripts": {"c": {"args": [inline]}},
    }
    wire = encode_body(body)
    assert base64.b64decode(wire["init_images"][0]) == image.read_bytes()
    assert body["init_images"] == [ref]  # the task's body is not changed
    shown = manifest_body(body, tmp_path)
    assert shown["init_images"] == [{"path": "a.png", "sha256": ref.sha256}]
    assert shown["alwayson_scripts"]["c"]["args"][0] == {
        "sha256": hashlib.sha256(base64.b64decode(big)).hexdigest(),
        "bytes": len(base64.b64decode(big)),
    }
    assert shown["prompt"] == "x" * 300  # long text that is not base64 stays


def test_adapt_for_forge_hires() -> None:
    body = {"prompt": "a", "enable_hr": True, "cfg_scale": 6.0}
    forge = adapt_for(body, "forge")
    assert forge["hr_additional_modules"] == ["Use same choices"]
    assert forge["hr_cfg"] == 6.0
    assert "hr_cfg" not in body
    kept = adapt_for({**body, "hr_cfg": 3.0, "hr_additional_modules": []}, "forge")
    assert (kept["hr_cfg"], kept["hr_additional_modules"]) == (3.0, [])
    assert adapt_for({"prompt": "a"}, "forge") == {"prompt": "a"}
    assert adapt_for(body, "a1111") == body
    assert adapt_for({"prompt": "a", "enable_hr": True}, "forge")["hr_cfg"] == 7.0
