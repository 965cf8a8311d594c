"""The field table, the aliases and value coercion."""

from __future__ import annotations

from typing import Any

import pytest

from batchgen.rows.fields import ALIASES, FIELDS, OVERRIDE_KINDS, Kind, coerce, normalize_name


@pytest.mark.parametrize(
    ("value", "expected"),
    [(28, 28), ("28", 28), (28.0, 28), ("28.0", 28), (" 28 ", 28), ("-1", -1), ("+5", 5)],
)
def test_int_accepts_whole_numbers_from_excel_and_text(value: Any, expected: int) -> None:
    result = coerce("int", value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize("value", [28.5, "28.5", "abc", "", True, "1e400", None, [1]])
def test_int_rejects_what_is_not_a_whole_number(value: Any) -> None:
    with pytest.raises(ValueError, match="whole number"):
        coerce("int", value)


def test_int_message_names_the_value() -> None:
    with pytest.raises(ValueError) as caught:
        coerce("int", "abc")
    assert str(caught.value) == "cannot read 'abc' as a whole number"
    with pytest.raises(ValueError, match="fraction"):
        coerce("int", 28.5)


@pytest.mark.parametrize(("value", "expected"), [("7.5", 7.5), (7, 7.0), (" 7 ", 7.0), (0.3, 0.3)])
def test_float(value: Any, expected: float) -> None:
    result = coerce("float", value)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize("value", ["7,5", "nan", "inf", "high", False])
def test_float_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="as a number"):
        coerce("float", value)


@pytest.mark.parametrize("value", [True, "TRUE", "true", "Yes", "y", "1", 1, 1.0, "on", " True "])
def test_bool_true(value: Any) -> None:
    assert coerce("bool", value) is True


@pytest.mark.parametrize("value", [False, "FALSE", "no", "0", 0, 0.0, "off"])
def test_bool_false(value: Any) -> None:
    assert coerce("bool", value) is False


@pytest.mark.parametrize("value", ["maybe", 2, "", None])
def test_bool_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="true or false"):
        coerce("bool", value)


def test_str_keeps_text_exactly() -> None:
    text = "  一只熊猫 🐼\n<lora:ink:0.7>, (masterpiece:1.2)  "
    assert coerce("str", text) == text


@pytest.mark.parametrize(("value", "expected"), [(1990, "1990"), (1990.0, "1990"), (1.5, "1.5")])
def test_str_from_excel_numbers(value: Any, expected: str) -> None:
    assert coerce("str", value) == expected


def test_list_str_from_text_json_and_list() -> None:
    assert coerce("list_str", "Cinematic; Film grain\nVivid") == [
        "Cinematic",
        "Film grain",
        "Vivid",
    ]
    assert coerce("list_str", '["a, b", "c"]') == ["a, b", "c"]
    assert coerce("list_str", ["x", 2]) == ["x", "2"]


def test_dict_and_list_read_json() -> None:
    assert coerce("dict", '{"sd_vae": "None"}') == {"sd_vae": "None"}
    assert coerce("list", "[1, 2]") == [1, 2]
    with pytest.raises(ValueError, match="JSON object"):
        coerce("dict", "[1]")
    with pytest.raises(ValueError, match="JSON list"):
        coerce("list", "not json")


def test_image_list_splits_on_semicolons_and_newlines_but_not_data_urls() -> None:
    data = "data:image/png;base64,iVBORw0KGgo="
    assert coerce("image_list", f"a.png; b.png\nc.png;{data}") == ["a.png", "b.png", "c.png", data]
    assert coerce("image_list", ["a.png"]) == ["a.png"]
    with pytest.raises(ValueError):
        coerce("image_list", " ; ")


def test_every_alias_points_at_a_field_or_a_known_setting() -> None:
    for alias, target in ALIASES.items():
        head, _, rest = target.partition(".")
        assert head in FIELDS, alias
        if rest:
            assert head == "override_settings"
            assert rest in OVERRIDE_KINDS, alias


def test_documented_aliases() -> None:
    assert ALIASES["model"] == "override_settings.sd_model_checkpoint"
    assert ALIASES["checkpoint"] == "override_settings.sd_model_checkpoint"
    assert ALIASES["vae"] == "override_settings.sd_vae"
    assert ALIASES["clip_skip"] == "override_settings.CLIP_stop_at_last_layers"
    assert ALIASES["sampler"] == "sampler_name"
    assert ALIASES["negative"] == "negative_prompt"
    assert ALIASES["batch_count"] == "n_iter"
    assert ALIASES["cfg"] == "cfg_scale"
    assert ALIASES["init_image"] == "init_images"


def test_routes_of_route_specific_fields() -> None:
    assert FIELDS["enable_hr"].routes == frozenset({"txt2img"})
    assert FIELDS["hr_additional_modules"].routes == frozenset({"txt2img"})
    assert FIELDS["init_images"].routes == frozenset({"img2img"})
    assert FIELDS["mask"].kind == "image"
    assert FIELDS["prompt"].routes == frozenset({"txt2img", "img2img"})


def test_reference_defaults() -> None:
    # a1111-api.md §3: the API's effective defaults, quirks included
    assert FIELDS["steps"].default == 50
    assert FIELDS["sampler_index"].default == "Euler"
    assert FIELDS["denoising_strength"].default is None
    assert FIELDS["hr_cfg"].default == 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [(" Negative Prompt ", "negative_prompt"), ("CFG-Scale", "cfg_scale"), ("steps", "steps")],
)
def test_normalize_name(text: str, expected: str) -> None:
    assert normalize_name(text) == expected


@pytest.mark.parametrize("kind", ["str", "int", "float", "bool"])
def test_objects_are_rejected(kind: Kind) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        coerce(kind, {"a": 1})
