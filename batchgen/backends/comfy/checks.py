"""Checks of a ComfyUI job before anything is sent: the binding, then each row against /object_info.

ComfyUI refuses a bad value with a 400 (or, worse, runs the valid part of the graph), so every
value a row puts into the graph is checked against each server's node classes first: checkpoint,
sampler, scheduler and LoRA names, number ranges, LoadImage files.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchgen.backends.a1111 import EndpointClient
from batchgen.backends.comfy.workflow import NODE_INPUTS, Binding, bind_job
from batchgen.errors import EndpointError, Problem
from batchgen.job import JobSpec
from batchgen.records import ImageRef

if TYPE_CHECKING:  # the pre-run pass imports binding_problems from here
    from batchgen.rows.payload import PayloadBuilder
    from batchgen.rows.prepare import Prepared

_ALWAYS_SENT = frozenset({"seed", "subseed"})
_LORA_TAG = re.compile(
    r"<(lora|lyco):", re.IGNORECASE
)  # derived by batchgen; fine to leave unbound


def binding_problems(job: JobSpec, builder: PayloadBuilder, binding: Binding) -> list[Problem]:
    """Titles that are missing or not unique, and fields that no node input would receive."""
    problems = list(binding.problems)
    job_file = str(job.source or "job")
    if "prompt" not in binding.fields and not binding.problems:
        problems.append(
            Problem(
                binding.workflow.source,
                "no node input receives the prompt",
                hint='bind it in the job: [comfy.bind] prompt = "Positive.text"',
            )
        )
    for dotted, source in builder.sent_fields.items():
        if dotted.startswith(NODE_INPUTS + ".") or dotted in binding.fields:
            continue
        if dotted in _ALWAYS_SENT:
            continue
        hint = f'bind it: [comfy.bind] {dotted} = "Node title.input"'
        if source == "defaults":
            message = f"'{dotted}' has a default, but no node input of the workflow receives it"
            problems.append(Problem(job_file, message, column=dotted, hint=hint))
        else:
            message = (
                f"'{source}' sets '{dotted}', but no node input of the workflow receives it "
                "(ComfyUI would never see it)"
            )
            hint += ', or name the column "Node title.input"'
            problems.append(Problem(str(job.sheet), message, 1, source, hint))
    return problems


@dataclass(frozen=True, slots=True)
class _Finding:
    endpoint: str
    node: str
    name: str
    message: str
    hint: str | None


async def check_comfy_job(
    job: JobSpec, prepared: Prepared, clients: Sequence[EndpointClient]
) -> list[Problem]:
    """Every value each row binds, against each endpoint's /object_info; grouped by value."""
    infos: list[tuple[str, Mapping[str, Any]]] = []
    problems: list[Problem] = []
    for client in clients:
        try:
            info = await client.get_json("/object_info")
        except EndpointError as error:
            problems.append(Problem(client.name, f"cannot read /object_info: {error}"))
            continue
        if isinstance(info, dict):
            infos.append((client.name, info))
    binding = bind_job(job)
    found: dict[_Finding, list[int]] = {}
    tagged: dict[str, list[int]] = {}  # field -> rows whose text holds an A1111 LoRA tag
    for task in prepared.tasks():  # a row with problems is the sheet's to report
        graph = binding.fill(task.body, lambda ref: "").graph
        uploads = _image_inputs(binding, task.body)
        for name in ("prompt", "negative_prompt"):
            text = task.body.get(name)
            if isinstance(text, str) and _LORA_TAG.search(text):
                tagged.setdefault(name, []).append(task.row)
        for name, info in infos:
            for finding in _check_graph(name, graph, info, uploads):
                found.setdefault(finding, []).append(task.row)
    for name, rows in tagged.items():
        problems.append(
            Problem(
                str(job.sheet),
                f"the {name.replace('_', ' ')} holds <lora:...> tags, which ComfyUI reads as "
                f"plain text: rows {_ranges(rows)}",
                rows[0],
                name,
                "add a LoraLoader node to the workflow and bind its lora_name and strengths",
            )
        )
    for finding, rows in found.items():
        message = f"{finding.message} on {finding.endpoint}: rows {_ranges(rows)}"
        problems.append(Problem(str(job.sheet), message, rows[0], finding.node, finding.hint))
    return problems


def _image_inputs(binding: Binding, body: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(node id, input) pairs that get an uploaded file for this row."""
    out: set[tuple[str, str]] = set()
    for dotted, where in binding.fields.items():
        value: Any = body
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, ImageRef) or (isinstance(value, list) and value):
            out.add((where.node, where.name))
    for reference, value in (body.get(NODE_INPUTS) or {}).items():
        named = binding.find(reference)
        if isinstance(value, ImageRef) and not isinstance(named, str):
            out.add((named.node, named.name))
    return out


def _check_graph(
    endpoint: str,
    graph: Mapping[str, Any],
    info: Mapping[str, Any],
    uploads: set[tuple[str, str]],
) -> list[_Finding]:
    findings = []
    for node_id, node in graph.items():
        kind = node.get("class_type")
        title = (node.get("_meta") or {}).get("title") or kind
        spec = info.get(kind)
        if not isinstance(spec, dict):
            findings.append(
                _Finding(
                    endpoint,
                    f"{title}",
                    "",
                    f"node class {kind} is not installed",
                    "install the custom node, or use another server",
                )
            )
            continue
        required = (spec.get("input") or {}).get("required") or {}
        optional = (spec.get("input") or {}).get("optional") or {}
        for name, value in (node.get("inputs") or {}).items():
            if isinstance(value, list) or (node_id, name) in uploads:
                continue  # a link, or a file uploaded when the row is sent
            declared = required.get(name) or optional.get(name)
            if not isinstance(declared, list) or not declared:
                continue
            problem = _value_problem(declared, value)
            if problem is not None:
                message, hint = problem
                findings.append(
                    _Finding(endpoint, f"{title}.{name}", name, f"{title}.{name}: {message}", hint)
                )
    return findings


def _value_problem(declared: list[Any], value: Any) -> tuple[str, str | None] | None:
    kind = declared[0]
    opts = declared[1] if len(declared) > 1 and isinstance(declared[1], dict) else {}
    if isinstance(kind, list):
        if value in kind:
            return None
        close = difflib.get_close_matches(str(value), [str(k) for k in kind], n=1, cutoff=0.5)
        hint = (
            f"did you mean '{close[0]}'?"
            if close
            else f"installed: {', '.join(map(str, kind[:8]))}"
        )
        return f"'{value}' is not installed", hint
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{value!r} is not a number", None
        low, high = opts.get("min"), opts.get("max")
        if low is not None and value < low:
            return f"{value} is below the minimum {low}", None
        if high is not None and value > high:
            return f"{value} is above the maximum {high}", None
    return None


def _ranges(rows: list[int]) -> str:
    spans: list[list[int]] = []
    for row in rows:
        if spans and row == spans[-1][1] + 1:
            spans[-1][1] = row
        else:
            spans.append([row, row])
    shown = [str(a) if a == b else f"{a}-{b}" for a, b in spans[:10]]
    return ", ".join(shown + (["..."] if len(spans) > 10 else []))
