"""The workflow template: an API-format graph, and which node input each sheet field sets.

Fields bind by `[comfy.bind]` ("Node title.input"), else by node class on the standard
text-to-image graph (the KSampler and what its links lead to). A `Title.input` column sets that
input directly. Titles are optional and need not be unique in ComfyUI, so every bound title must
name exactly one node: anything else is a problem before anything is sent.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.errors import ConfigError, Problem
from batchgen.job import JobSpec
from batchgen.records import ImageRef
from batchgen.rows.columns import Target, Unresolved, resolve

STANDARD = Path(__file__).with_name("txt2img_api.json")
NODE_INPUTS = "comfy_inputs"  # body key of `Title.input` columns: {"Title.input": value}
CHECKPOINT = "override_settings.sd_model_checkpoint"
_SAMPLER_FIELDS = {
    "seed": "seed",
    "steps": "steps",
    "cfg_scale": "cfg",
    "sampler_name": "sampler_name",
    "scheduler": "scheduler",
    "denoising_strength": "denoise",
}
_LATENT_FIELDS = {"width": "width", "height": "height", "batch_size": "batch_size"}


@dataclass(frozen=True, slots=True)
class NodeInput:
    """One input of one node of the graph."""

    node: str  # node id
    name: str  # input name
    class_type: str


@dataclass(frozen=True, slots=True)
class Workflow:
    """An API-format graph as loaded, with its hash (recorded in the manifest)."""

    graph: Mapping[str, Any]
    sha256: str
    source: str  # the file, for messages

    def titled(self, title: str) -> list[str]:
        return [i for i, node in self.graph.items() if _title(node) == title]

    def of_class(self, class_type: str) -> list[str]:
        return [i for i, node in self.graph.items() if node.get("class_type") == class_type]

    def titles(self) -> list[str]:
        return sorted({t for t in map(_title, self.graph.values()) if t})


def load_workflow(path: Path | None) -> Workflow:
    """Read an API-format workflow ("Save (API)"); raise ConfigError naming the file and the fix."""
    source = path or STANDARD
    try:
        raw = source.read_bytes()
    except OSError as error:
        raise ConfigError(f"{source}: cannot read the workflow: {error.strerror}") from None
    try:
        graph = json.loads(raw)
    except ValueError as error:
        raise ConfigError(f"{source}: the workflow is not JSON: {error}") from None
    if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
        raise ConfigError(
            f"{source}: this is a UI workflow, not the API format; in ComfyUI use "
            'Workflow > Export (API) ("Save (API)") and name that file'
        )
    if not isinstance(graph, dict) or not all(
        isinstance(node, dict) and isinstance(node.get("class_type"), str)
        for node in graph.values()
    ):
        raise ConfigError(
            f"{source}: not an API-format workflow (an object of nodes with class_type and "
            'inputs); export it with "Save (API)"'
        )
    return Workflow(graph, hashlib.sha256(raw).hexdigest(), str(source))


def _title(node: Mapping[str, Any]) -> str | None:
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, Mapping) else None
    return title if isinstance(title, str) else None


@dataclass(frozen=True, slots=True)
class Binding:
    """The workflow plus where each field goes ("prompt" -> the positive prompt's text)."""

    workflow: Workflow
    fields: Mapping[str, NodeInput]  # dotted field path -> node input
    problems: tuple[Problem, ...] = ()

    def find(self, reference: str) -> NodeInput | str:
        """The node input a "Title.input" names, or why it names none."""
        title, dot, name = reference.rpartition(".")
        if not dot or not title or not name:
            return f"'{reference}' is not 'Node title.input'"
        nodes = self.workflow.titled(title)
        if not nodes:
            close = difflib.get_close_matches(title, self.workflow.titles(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return f"no node is titled '{title}' in {self.workflow.source}{hint}"
        if len(nodes) > 1:
            return (
                f"{len(nodes)} nodes are titled '{title}' in {self.workflow.source} "
                f"(ids {', '.join(nodes)}); give each a unique title in ComfyUI and export again"
            )
        node = self.workflow.graph[nodes[0]]
        inputs = node.get("inputs") or {}
        if name not in inputs:
            shown = ", ".join(sorted(inputs)) or "none"
            return f"node '{title}' ({node['class_type']}) has no input '{name}' (it has {shown})"
        return NodeInput(nodes[0], name, node["class_type"])

    def column_target(self, header: str) -> Target | Unresolved | None:
        """What a `Title.input` header sets; None if the header names no node title."""
        title, dot, _ = header.strip().rpartition(".")
        if not dot or not title:
            return None
        if not self.workflow.titled(title):
            close = difflib.get_close_matches(title, self.workflow.titles(), n=1, cutoff=0.8)
            if close:
                return Unresolved(
                    f"no node is titled '{title}' in {self.workflow.source}",
                    f"did you mean '{close[0]}.{header.rpartition('.')[2]}'?",
                    misspelled=True,
                )
            return None
        found = self.find(header.strip())
        if isinstance(found, str):
            return Unresolved(found, "use 'Node title.input' with a title that is unique", True)
        if found == self.fields.get(CHECKPOINT):  # the row's checkpoint: scheduling affinity
            return Target(("override_settings", "sd_model_checkpoint"), "str")
        if found.class_type == "LoadImage" and found.name == "image":
            return Target((NODE_INPUTS, header.strip()), "image")
        return Target((NODE_INPUTS, header.strip()), "auto")

    def checkpoint_in(self, graph: Mapping[str, Any]) -> str | None:
        """The checkpoint a graph loads; for the workflow's own graph, a row's default."""
        loader = self.fields.get(CHECKPOINT)
        value = graph[loader.node]["inputs"].get(loader.name) if loader else None
        return value if isinstance(value, str) else None

    def fill(self, body: Mapping[str, Any], image: Callable[[ImageRef], Any]) -> Filled:
        """The graph to post for a row: each bound field's value set, `image(ref)` for images."""
        # Only `inputs` dicts are written to: the rest of the template is shared, not copied.
        graph = {
            node_id: {**node, "inputs": dict(node.get("inputs") or {})}
            for node_id, node in self.workflow.graph.items()
        }
        bound: dict[str, Any] = {}

        def put(where: NodeInput, value: Any, shown: str) -> None:
            if isinstance(value, list) and value and isinstance(value[0], ImageRef):
                value = value[0]
            if isinstance(value, ImageRef):
                bound[shown] = value.sha256
                value = image(value)
            else:
                bound[shown] = value
            graph[where.node]["inputs"][where.name] = value

        for dotted, where in self.fields.items():
            value = _lookup(body, dotted)
            if value is not None:
                put(where, value, dotted)
        for reference, value in (body.get(NODE_INPUTS) or {}).items():
            found = self.find(reference)
            if isinstance(found, NodeInput):
                put(found, value, reference)
        seed = bound.get("seed")
        return Filled(graph, bound, int(seed) if isinstance(seed, int) else None)


@dataclass(frozen=True, slots=True)
class Filled:
    """One row's graph as posted, the values bound into it, and its seed."""

    graph: dict[str, Any]
    bound: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None


def _lookup(body: Mapping[str, Any], dotted: str) -> Any:
    value: Any = body
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def bind_job(job: JobSpec) -> Binding:
    """The job's binding; raises ConfigError if the workflow cannot be read."""
    spec = job.comfy
    workflow = load_workflow(spec.workflow if spec is not None else None)
    if spec is not None and spec.bind:
        return _by_title(workflow, spec.bind, str(job.source or "job"))
    return _by_class(workflow)


def _by_title(workflow: Workflow, bind: Mapping[str, str], job_file: str) -> Binding:
    probe = Binding(workflow, {})
    fields: dict[str, NodeInput] = {}
    problems: list[Problem] = []
    for name, reference in bind.items():
        column = f"comfy.bind.{name}"
        target = resolve(name)
        if isinstance(target, Unresolved) or target.unit is not None:
            message = target.message if isinstance(target, Unresolved) else "not a plain field"
            hint = target.hint if isinstance(target, Unresolved) else None
            problems.append(Problem(job_file, message, column=column, hint=hint))
            continue
        found = probe.find(reference)
        if isinstance(found, str):
            problems.append(
                Problem(job_file, found, column=column, hint='write "Node title.input"')
            )
            continue
        fields[target.dotted] = found
    return Binding(workflow, fields, tuple(problems))


def _by_class(workflow: Workflow) -> Binding:
    graph = workflow.graph
    fields: dict[str, NodeInput] = {}
    problems: list[Problem] = []
    samplers = workflow.of_class("KSampler")
    if len(samplers) != 1:
        problems.append(
            Problem(
                workflow.source,
                f"the workflow has {len(samplers)} KSampler nodes, so fields cannot be bound "
                "by node class",
                hint="bind each field to a node title in the job: [comfy.bind] "
                'prompt = "Positive.text"',
            )
        )
        return Binding(workflow, fields, tuple(problems))
    sampler = samplers[0]
    for dotted, name in _SAMPLER_FIELDS.items():
        fields[dotted] = NodeInput(sampler, name, "KSampler")
    inputs = graph[sampler]["inputs"]
    for dotted, name in (("prompt", "positive"), ("negative_prompt", "negative")):
        source = _linked(graph, inputs.get(name), "CLIPTextEncode")
        if source is not None:
            fields[dotted] = NodeInput(source, "text", "CLIPTextEncode")
    latent = _linked(graph, inputs.get("latent_image"), "EmptyLatentImage")
    if latent is not None:
        for dotted, name in _LATENT_FIELDS.items():
            fields[dotted] = NodeInput(latent, name, "EmptyLatentImage")
    loader = _checkpoint_loader(graph, inputs.get("model"))
    if loader is not None:
        fields[CHECKPOINT] = NodeInput(loader, "ckpt_name", "CheckpointLoaderSimple")
    images = workflow.of_class("LoadImage")
    if len(images) == 1:
        fields["init_images"] = NodeInput(images[0], "image", "LoadImage")
    return Binding(workflow, fields, tuple(problems))


def _linked(graph: Mapping[str, Any], link: Any, class_type: str) -> str | None:
    if isinstance(link, list) and link and str(link[0]) in graph:
        node = str(link[0])
        return node if graph[node].get("class_type") == class_type else None
    return None


def _checkpoint_loader(graph: Mapping[str, Any], link: Any) -> str | None:
    """Follow the model link back through LoraLoaders to the checkpoint loader."""
    for _ in range(len(graph)):
        if not (isinstance(link, list) and link and str(link[0]) in graph):
            return None
        node = graph[str(link[0])]
        if node.get("class_type") == "CheckpointLoaderSimple":
            return str(link[0])
        link = (node.get("inputs") or {}).get("model")
    return None
