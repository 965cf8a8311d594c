"""ComfyUI's node classes as the simulator knows them: /object_info, prompt validation, evaluation.

Validation follows ComfyUI's `execution.validate_prompt` (comfy-api.md, "Submitting"): an unknown
class is `invalid_prompt`; each output node is checked with what feeds it, and the prompt is
refused (400) only when no output node is valid; otherwise the valid ones run and the answer's
`node_errors` names the rest (the "silently half-run" trap, ComfyUI #9076).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import SimConfig

SAMPLERS = (
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpmpp_2m",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "ddim",
    "uni_pc",
)
SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta")
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _int(default: int, low: int, high: int) -> list[Any]:
    return ["INT", {"default": default, "min": low, "max": high}]


def _float(default: float, low: float, high: float) -> list[Any]:
    return ["FLOAT", {"default": default, "min": low, "max": high, "step": 0.01}]


@dataclass(frozen=True, slots=True)
class NodeClass:
    """One class: its required inputs (ComfyUI's INPUT_TYPES form) and its output types."""

    name: str
    inputs: Mapping[str, list[Any]]
    outputs: tuple[str, ...]
    output_node: bool = False
    category: str = "sampling"


def node_classes(config: SimConfig, uploaded: list[str]) -> dict[str, NodeClass]:
    """The installed classes, with today's lists of checkpoints, LoRAs and uploaded images."""
    classes = [
        NodeClass(
            "CheckpointLoaderSimple",
            {"ckpt_name": [list(config.models), {}]},
            ("MODEL", "CLIP", "VAE"),
            category="loaders",
        ),
        NodeClass(
            "LoraLoader",
            {
                "model": ["MODEL", {}],
                "clip": ["CLIP", {}],
                "lora_name": [[f"{name}.safetensors" for name in config.loras], {}],
                "strength_model": _float(1.0, -100.0, 100.0),
                "strength_clip": _float(1.0, -100.0, 100.0),
            },
            ("MODEL", "CLIP"),
            category="loaders",
        ),
        NodeClass(
            "CLIPTextEncode",
            {"text": ["STRING", {"multiline": True}], "clip": ["CLIP", {}]},
            ("CONDITIONING",),
            category="conditioning",
        ),
        NodeClass(
            "EmptyLatentImage",
            {
                "width": _int(512, 16, 16384),
                "height": _int(512, 16, 16384),
                "batch_size": _int(1, 1, 4096),
            },
            ("LATENT",),
            category="latent",
        ),
        NodeClass(
            "KSampler",
            {
                "model": ["MODEL", {}],
                "seed": _int(0, 0, SEED_MAX),
                "steps": _int(20, 1, 10000),
                "cfg": _float(8.0, 0.0, 100.0),
                "sampler_name": [list(SAMPLERS), {}],
                "scheduler": [list(SCHEDULERS), {}],
                "positive": ["CONDITIONING", {}],
                "negative": ["CONDITIONING", {}],
                "latent_image": ["LATENT", {}],
                "denoise": _float(1.0, 0.0, 1.0),
            },
            ("LATENT",),
        ),
        NodeClass(
            "VAEDecode",
            {"samples": ["LATENT", {}], "vae": ["VAE", {}]},
            ("IMAGE",),
            category="latent",
        ),
        NodeClass(
            "VAEEncode",
            {"pixels": ["IMAGE", {}], "vae": ["VAE", {}]},
            ("LATENT",),
            category="latent",
        ),
        NodeClass(
            "LoadImage",
            {"image": [sorted(uploaded), {"image_upload": True}]},
            ("IMAGE", "MASK"),
            category="image",
        ),
        NodeClass(
            "SaveImage",
            {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
            (),
            output_node=True,
            category="image",
        ),
    ]
    return {cls.name: cls for cls in classes}


def object_info(cls: NodeClass) -> dict[str, Any]:
    """One class as GET /object_info shows it."""
    return {
        "input": {"required": {name: spec for name, spec in cls.inputs.items()}},
        "input_order": {"required": list(cls.inputs)},
        "output": list(cls.outputs),
        "output_is_list": [False] * len(cls.outputs),
        "output_name": list(cls.outputs),
        "name": cls.name,
        "display_name": cls.name,
        "description": "",
        "python_module": "nodes",
        "category": cls.category,
        "output_node": cls.output_node,
    }


class PromptRefused(Exception):
    """A 400 answer to POST /prompt, body included."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body["error"]["message"])
        self.body = body


def _error(kind: str, message: str, details: str = "", extra: Any = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def refuse(kind: str, message: str, details: str = "") -> PromptRefused:
    return PromptRefused({"error": _error(kind, message, details), "node_errors": {}})


@dataclass(slots=True)
class Checked:
    """What validation found: the output nodes that run and the errors of the others."""

    outputs: list[str]
    node_errors: dict[str, Any] = field(default_factory=dict)


def validate_prompt(graph: Any, classes: Mapping[str, NodeClass]) -> Checked:
    """Raise PromptRefused (400) or return the output nodes that will run."""
    if not isinstance(graph, dict) or not graph:
        raise refuse("no_prompt", "No prompt provided")
    for node_id, node in graph.items():
        kind = node.get("class_type") if isinstance(node, dict) else None
        if not isinstance(kind, str):
            raise refuse(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{node_id}'",
            )
        if kind not in classes:
            raise refuse(
                "invalid_prompt",
                f"Cannot execute because node {kind} does not exist.",
                f"Node ID '#{node_id}'",
            )
    outputs = [i for i, node in graph.items() if classes[node["class_type"]].output_node]
    if not outputs:
        raise refuse("prompt_no_outputs", "Prompt has no outputs")
    errors: dict[str, list[dict[str, Any]]] = {}
    good: list[str] = []
    for out in outputs:
        if _check_node(graph, out, classes, errors, set()):
            good.append(out)
    node_errors = {
        node_id: {
            "errors": found,
            "dependent_outputs": list(outputs),
            "class_type": graph[node_id]["class_type"],
        }
        for node_id, found in errors.items()
    }
    if not good:
        body = {
            "error": _error("prompt_outputs_failed_validation", "Prompt outputs failed validation"),
            "node_errors": node_errors,
        }
        raise PromptRefused(body)
    return Checked(good, node_errors)


def _check_node(
    graph: Mapping[str, Any],
    node_id: str,
    classes: Mapping[str, NodeClass],
    errors: dict[str, list[dict[str, Any]]],
    seen: set[str],
) -> bool:
    if node_id in seen:
        return node_id not in errors
    seen.add(node_id)
    node = graph[node_id]
    cls = classes[node["class_type"]]
    inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
    found: list[dict[str, Any]] = []
    ok = True
    for name, (kind, opts) in cls.inputs.items():
        info = {"input_name": name, "input_config": [kind, opts]}
        if name not in inputs:
            found.append(_error("required_input_missing", "Required input is missing", name, info))
            continue
        value = inputs[name]
        if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
            source = str(value[0])
            if source not in graph:
                found.append(
                    _error("bad_linked_input", "Bad linked input", f"{name}, {value}", info)
                )
                continue
            made = classes[graph[source]["class_type"]].outputs
            given = made[value[1]] if value[1] < len(made) else None
            if given != kind:
                found.append(
                    _error(
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        f"{name}, received_type({given}) mismatch input_type({kind})",
                        info,
                    )
                )
                continue
            ok = _check_node(graph, source, classes, errors, seen) and ok
            continue
        found.extend(_check_value(node["class_type"], name, kind, opts, value, info))
    if found:
        errors[node_id] = found
    return ok and not found


def _check_value(
    class_type: str, name: str, kind: Any, opts: Mapping[str, Any], value: Any, info: Any
) -> list[dict[str, Any]]:
    if isinstance(kind, list):
        if value in kind:
            return []
        if class_type == "LoadImage":
            return [
                _error(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    f"{name} - Invalid image file: {value}",
                    info,
                )
            ]
        shown = str(kind) if len(kind) < 50 else str(kind[:50])[:-1] + ", ...]"
        return [
            _error(
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{value}' not in {shown}",
                {**info, "received_value": value},
            )
        ]
    try:
        if kind == "INT":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number: float = int(value)
        elif kind == "FLOAT":
            number = float(value)
        else:
            return [] if isinstance(value, str) else [_bad_type(name, kind, value, info)]
    except (TypeError, ValueError):
        return [_bad_type(name, kind, value, info)]
    low, high = opts.get("min"), opts.get("max")
    if low is not None and number < low:
        return [
            _error(
                "value_smaller_than_min",
                f"Value {number} smaller than min of {low}",
                f"{name}",
                {**info, "received_value": value},
            )
        ]
    if high is not None and number > high:
        return [
            _error(
                "value_bigger_than_max",
                f"Value {number} bigger than max of {high}",
                f"{name}",
                {**info, "received_value": value},
            )
        ]
    return []


def _bad_type(name: str, kind: str, value: Any, info: Any) -> dict[str, Any]:
    return _error(
        "invalid_input_type",
        f"Failed to convert an input value to a {kind} value",
        f"{name}, {value}, {type(value).__name__}",
        {**info, "received_value": value},
    )


@dataclass(frozen=True, slots=True)
class Picture:
    """One image a SaveImage node will write: what decides its pixels, and its size."""

    digest: bytes
    width: int
    height: int


@dataclass(slots=True)
class Plan:
    """What running the valid part of a graph costs and makes."""

    checkpoints: list[str] = field(default_factory=list)  # in load order
    units: float = 0.0  # sampling steps x megapixels / 512^2 x batch
    saves: dict[str, tuple[str, list[Picture]]] = field(default_factory=dict)  # id -> prefix


def plan_run(graph: Mapping[str, Any], outputs: list[str], inputs: Mapping[str, bytes]) -> Plan:
    """Evaluate the graph symbolically: each node's outputs as plain values."""
    plan = Plan()
    values: dict[str, tuple[Any, ...]] = {}

    def value(link: Any) -> Any:
        return run(str(link[0]))[link[1]]

    def run(node_id: str) -> tuple[Any, ...]:
        if node_id in values:
            return values[node_id]
        node = graph[node_id]
        kind = node["class_type"]
        args = node.get("inputs", {})

        def get(name: str) -> Any:
            return value(args[name]) if isinstance(args[name], list) else args[name]

        out: tuple[Any, ...]
        if kind == "CheckpointLoaderSimple":
            name = args["ckpt_name"]
            plan.checkpoints.append(name)
            out = (f"model:{name}", f"clip:{name}", f"vae:{name}")
        elif kind == "LoraLoader":
            tag = f"+{args['lora_name']}@{args['strength_model']}"
            out = (get("model") + tag, get("clip") + tag)
        elif kind == "CLIPTextEncode":
            out = ({"text": args["text"], "clip": get("clip")},)
        elif kind == "EmptyLatentImage":
            out = (
                {
                    "w": int(args["width"]),
                    "h": int(args["height"]),
                    "n": int(args["batch_size"]),
                    "src": "",
                },
            )
        elif kind == "LoadImage":
            digest = hashlib.sha256(inputs.get(args["image"], b"")).hexdigest()
            out = ({"image": digest, "w": 512, "h": 512, "n": 1}, None)
        elif kind == "VAEEncode":
            pixels = get("pixels")
            out = ({"w": pixels["w"], "h": pixels["h"], "n": pixels["n"], "src": pixels["image"]},)
        elif kind == "KSampler":
            latent = get("latent_image")
            width, height = latent["w"] // 8 * 8, latent["h"] // 8 * 8
            steps = int(args["steps"]) * float(args["denoise"])
            plan.units += steps * width * height / 512**2 * latent["n"]
            key = json.dumps(
                [
                    get("model"),
                    get("positive"),
                    get("negative"),
                    int(args["seed"]),
                    latent["src"],
                    args["steps"],
                    args["cfg"],
                    args["sampler_name"],
                    args["scheduler"],
                    args["denoise"],
                ],
                sort_keys=True,
            )
            out = ({"w": width, "h": height, "n": latent["n"], "key": key},)
        elif kind == "VAEDecode":
            samples = get("samples")
            pictures = [
                Picture(
                    hashlib.sha256(f"{samples['key']}#{index}".encode()).digest(),
                    samples["w"],
                    samples["h"],
                )
                for index in range(samples["n"])
            ]
            out = (
                {
                    "image": samples["key"],
                    "w": samples["w"],
                    "h": samples["h"],
                    "n": samples["n"],
                    "pictures": pictures,
                },
            )
        elif kind == "SaveImage":
            images = get("images")
            plan.saves[node_id] = (str(args["filename_prefix"]), images.get("pictures", []))
            out = ()
        else:  # pragma: no cover - validation knows every class
            raise ValueError(kind)
        values[node_id] = out
        return out

    for node_id in outputs:
        run(node_id)
    return plan
