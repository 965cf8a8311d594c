"""The job description: one validated, immutable JobSpec from a TOML file and CLI overrides."""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchgen.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SHEET_SUFFIXES = (".csv", ".tsv", ".xlsx", ".jsonl")
DEFAULT_FILENAME = "{row:06d}-{index:02d}-{seed}"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointSpec(_Frozen):
    """One web UI server. Credentials may sit in the URL or in environment variables."""

    url: str
    name: str | None = None  # shown in progress and the manifest; default: URL sans secrets
    auth_env: str | None = None  # environment variable holding "user:password" for basic auth
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, str] = Field(default_factory=dict)  # header -> env var with its value
    in_flight: int | None = Field(default=None, gt=0)
    verify: bool = True  # false: accept any TLS certificate (a self-signed one on your own LAN)
    ca_file: Path | None = None  # a PEM certificate (or CA) to trust for this https endpoint
    backend: Literal["a1111", "comfy"] | None = None  # default: from the URL (comfy://), else a1111

    @property
    def kind(self) -> Literal["a1111", "comfy"]:
        """The API this endpoint speaks: `backend`, else comfy:// or sim://?flavor=comfy."""
        if self.backend is not None:
            return self.backend
        parts = urlsplit(self.url)
        flavors = parse_qs(parts.query).get("flavor", []) if parts.scheme == "sim" else []
        return "comfy" if parts.scheme == "comfy" or "comfy" in flavors else "a1111"


class RetrySpec(_Frozen):
    attempts: int = Field(default=5, gt=0)  # sends per row, over all endpoints
    backoff_initial: float = Field(default=1.0, ge=0)
    backoff_max: float = Field(default=30.0, ge=0)


class TimeoutSpec(_Frozen):
    connect: float = Field(default=10.0, gt=0)
    request: float | None = Field(default=3600.0, gt=0)  # a real generation can take minutes


class OutputSpec(_Frozen):
    dir: Path | None = None  # default: outputs/<job name>
    filename: str = DEFAULT_FILENAME  # fields: row, index, seed, key, job, and metadata columns


class SeedSpec(_Frozen):
    mode: Literal["derived", "random"] = "derived"  # derived: a fixed seed per row from `base`
    base: int = 0


class ComfySpec(_Frozen):
    """A ComfyUI job: the API-format workflow template and which node input each field sets."""

    workflow: Path | None = None  # "Save (API)" export; default: the standard text-to-image graph
    bind: dict[str, str] = Field(default_factory=dict)  # field -> "Node title.input"


class JobSpec(_Frozen):
    """Everything a run needs to know, validated before any I/O."""

    name: str
    sheet: Path
    source: Path | None = None  # the job file, for messages; None for a bare sheet
    sheet_name: str | None = None
    endpoints: tuple[EndpointSpec, ...] = (EndpointSpec(url="sim://"),)
    in_flight: int = Field(default=2, gt=0)  # per endpoint: one running, one waiting
    defaults: dict[str, Any] = Field(default_factory=dict)
    columns: dict[str, str] = Field(default_factory=dict)  # sheet header -> request field path
    controlnet: tuple[dict[str, Any], ...] = ()  # unit defaults, by unit index
    retry: RetrySpec = RetrySpec()
    timeout: TimeoutSpec = TimeoutSpec()
    output: OutputSpec = OutputSpec()
    seed: SeedSpec = SeedSpec()
    check: bool = True  # check rows against the endpoints before sending
    wait_all_down: float = Field(default=600.0, ge=0)  # seconds to wait when no endpoint answers
    comfy: ComfySpec | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.-]+", value) or value.strip(".") == "":
            raise ValueError("use letters, digits, '.', '-' and '_' only (it names a folder)")
        return value

    @model_validator(mode="after")
    def _one_backend(self) -> JobSpec:
        if len({endpoint.kind for endpoint in self.endpoints}) > 1:
            raise ValueError(
                "one job uses one backend kind: these endpoints mix A1111 and ComfyUI servers"
            )
        return self

    @property
    def backend(self) -> Literal["a1111", "comfy"]:
        return self.endpoints[0].kind if self.endpoints else "a1111"

    @property
    def out_dir(self) -> Path:
        return self.output.dir if self.output.dir is not None else Path("outputs") / self.name


def load_job(
    source: Path,
    *,
    endpoints: Sequence[str] = (),
    out: Path | None = None,
    set_fields: Mapping[str, str] | None = None,
) -> JobSpec:
    """Build the JobSpec from a job file or a bare sheet, then apply command-line overrides."""
    if not source.exists():
        raise ConfigError(f"{source}: no such file")
    suffix = source.suffix.lower()
    if suffix == ".toml":
        raw = _read_toml(source)
        raw.setdefault("name", source.stem)
        raw["source"] = source
        base = source.parent
    elif suffix in SHEET_SUFFIXES:
        raw = {"name": _folder_name(source.stem), "sheet": source.name}
        base = source.parent
    else:
        raise ConfigError(
            f"{source}: not a job file or a sheet; "
            f"give a .toml job or one of {', '.join(SHEET_SUFFIXES)}"
        )
    if endpoints:
        raw["endpoints"] = [{"url": url} for url in endpoints]
    if set_fields:
        raw["defaults"] = {**raw.get("defaults", {}), **set_fields}
    raw = _resolve_paths(raw, base)
    if out is not None:
        raw.setdefault("output", {})["dir"] = out
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_render(source, error)) from None


def parse_set(items: Sequence[str]) -> dict[str, str]:
    """`--set FIELD=VALUE` pairs; values stay text and are coerced by the field's type later."""
    fields: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {item!r}: write it as FIELD=VALUE, e.g. --set steps=20")
        fields[name.strip()] = value
    return fields


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def _folder_name(stem: str) -> str:
    return re.sub(r"[^\w.-]+", "_", stem).strip("._") or "job"


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Paths in a job file are relative to the job file, not to where batchgen runs."""
    if isinstance(raw.get("sheet"), str):
        raw["sheet"] = base / raw["sheet"]
    output = raw.get("output")
    if isinstance(output, dict) and isinstance(output.get("dir"), str):
        output["dir"] = base / output["dir"]
    comfy = raw.get("comfy")
    if isinstance(comfy, dict) and isinstance(comfy.get("workflow"), str):
        comfy["workflow"] = base / comfy["workflow"]
    for endpoint in raw.get("endpoints") or ():
        if isinstance(endpoint, dict) and isinstance(endpoint.get("ca_file"), str):
            endpoint["ca_file"] = base / endpoint["ca_file"]
    return raw


def _render(source: Path, error: ValidationError) -> str:
    lines = [f"{source}: the job is not valid; nothing was sent"]
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
            hint = _suggest(item["loc"])
            if hint:
                message += f"; did you mean '{hint}'?"
        elif item["type"] == "missing":
            message = "required"
        lines.append(f"  - {loc}: {message}")
    return "\n".join(lines)


def _suggest(loc: tuple[int | str, ...]) -> str | None:
    model: type[BaseModel] = JobSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = (
            model.model_fields[str(part)].annotation if part in model.model_fields else None
        )
        inner = getattr(annotation, "__args__", (annotation,))
        nested = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return close[0] if close else None
