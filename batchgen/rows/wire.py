"""A row's request as an endpoint is sent it (Task -> WireRequest or GraphRequest), made before
the client is called: the client only sends it, judges the answer and parses it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

from batchgen.backends.comfy.workflow import Binding
from batchgen.records import Flavor, GraphRequest, ImageRef, Request, Task, WireRequest
from batchgen.rows.payload import adapt_for, encode_body

# prompt ids are uuid5 of the row key: the same row asks for the same id in every run.
PROMPT_NAMESPACE = uuid.UUID("5f0c6c1e-9a51-4d0b-8a55-2a4c0f1b7c3e")

MakeRequest = Callable[[Task, Flavor], Request]


def a1111_request(task: Task, flavor: Flavor) -> WireRequest:
    """The body as an A1111 or Forge server gets it: image files read and base64-encoded now."""
    return WireRequest(task.route, adapt_for(encode_body(task.body), flavor))


def comfy_request(task: Task, binding: Binding) -> GraphRequest:
    """The row bound into the workflow; its images stay ImageRefs until the client uploads them."""
    filled = binding.fill(task.body, lambda ref: ref)
    return GraphRequest(
        prompt_id=prompt_id_for(task.key),
        graph=filled.graph,
        images=tuple(_image_refs(task.body)),
        seed=filled.seed,
        model=binding.checkpoint_in(filled.graph),
        workflow_sha256=binding.workflow.sha256,
        bound=filled.bound,
    )


def prompt_id_for(key: str) -> str:
    return str(uuid.uuid5(PROMPT_NAMESPACE, key))


class RowRequests:
    """One row's request for each flavor of endpoint it goes to, made when first needed: the
    legs of one attempt (a tail copy) share it, and it goes with the attempt."""

    __slots__ = ("_made", "_make", "_task")

    def __init__(self, task: Task, make: MakeRequest) -> None:
        self._task = task
        self._make = make
        self._made: dict[Flavor, Request] = {}

    def to(self, flavor: Flavor) -> Request:
        made = self._made.get(flavor)
        if made is None:
            made = self._made[flavor] = self._make(self._task, flavor)
        return made


def _image_refs(value: Any) -> list[ImageRef]:
    if isinstance(value, ImageRef):
        return [value]
    if isinstance(value, Mapping):
        return [ref for item in value.values() for ref in _image_refs(item)]
    if isinstance(value, (list, tuple)):
        return [ref for item in value for ref in _image_refs(item)]
    return []
