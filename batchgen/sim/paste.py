"""The request field `infotext`: fill every field not sent from a pasted A1111 infotext.

A subset of `Api.apply_infotext` + `infotext_utils.parse_generation_parameters`.
"""

from __future__ import annotations

import json
import re
from typing import Any

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
# (infotext label, request field, type)
_FIELDS: tuple[tuple[str, str, type], ...] = (
    ("Prompt", "prompt", str),
    ("Negative prompt", "negative_prompt", str),
    ("Steps", "steps", int),
    ("Sampler", "sampler_name", str),
    ("Schedule type", "scheduler", str),
    ("CFG scale", "cfg_scale", float),
    ("Seed", "seed", int),
    ("Size-1", "width", int),
    ("Size-2", "height", int),
    ("Variation seed", "subseed", int),
    ("Variation seed strength", "subseed_strength", float),
    ("Denoising strength", "denoising_strength", float),
)


def parse_infotext(text: str) -> dict[str, str]:
    """Prompt, negative prompt and the `Key: value` pairs of the last line."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    params = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(last):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = json.loads(value)
        size = _SIZE.match(value)
        if size:
            params[f"{key}-1"], params[f"{key}-2"] = size.group(1), size.group(2)
        else:
            params[key] = value
    return params


def apply_infotext(req: dict[str, Any], sent: set[str]) -> None:
    """Fill fields not in `sent` from `req["infotext"]`; Clip skip goes to override_settings."""
    text = req.get("infotext")
    if not text:
        return
    params = parse_infotext(text)
    for label, field, cast in _FIELDS:
        if field in sent or label not in params:
            continue
        try:
            req[field] = cast(params[label])
        except ValueError:
            continue
    overrides = dict(req.get("override_settings") or {})
    clip_skip = params.get("Clip skip")
    if clip_skip is not None and clip_skip.isdigit():
        overrides.setdefault("CLIP_stop_at_last_layers", int(clip_skip))
    req["override_settings"] = overrides
