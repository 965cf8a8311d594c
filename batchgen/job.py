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
from batchgen.outputs.shards import Shard
from batchgen.rows.columns import Target, resolve
from batchgen.rows.fields import coerce

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SHEET_SUFFIXES = (".csv", ".tsv", ".xlsx", ".jsonl")
# `--set KEY=VALUE` keys that are the job's own, not a request field every row gets.
SET_JOB_KEYS = frozenset({"sheet_name", "delimiter", "encoding", "in_flight", "wait_all_down"})
EXPAND = "expand."  # `--set expand.mode=random`: the job's [expand] table, not a request field
DEFAULT_FILENAME = "{row:06d}-{index:02d}-{seed}"
DEFAULT_URL = "http://127.0.0.1:7860"  # A1111's own default address, when no endpoint is named


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


class ExpandSpec(_Frozen):
    """How template and sweep cells expand a row (see README, "Sweeps")."""

    mode: Literal["combinatorial", "random"] = "combinatorial"
    count: int = Field(default=1, gt=0)  # random mode: draws per row
    wildcards: Path | None = None  # the wildcard folder; default: wildcards/ beside the job
    max_images: int = Field(default=100_000, gt=0)  # per row: more is taken for a typo


class ComfySpec(_Frozen):
    """A ComfyUI job: the API-format workflow template and which node input each field sets."""

    workflow: Path | None = None  # "Save (API)" export; default: the standard text-to-image graph
    bind: dict[str, str] = Field(default_factory=dict)  # field -> "Node title.input"


class JobSpec(_Frozen):
    """Everything a run needs to know, validated before any I/O."""

    name: str
    sheet: Path
    source: Path | None = None  # the job file, for messages; None for a bare sheet
    sheet_name: str | None = None  # XLSX: the sheet to read (default: the first)
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)  # CSV: else detected
    encoding: str | None = None  # CSV/TSV: else UTF-8 (BOM or not), then Windows cp1252
    # Never the simulator unless named: its placeholder images must not pass for real ones.
    endpoints: tuple[EndpointSpec, ...] = Field(
        default_factory=lambda: (EndpointSpec(url=DEFAULT_URL),)
    )
    in_flight: int = Field(default=2, gt=0)  # per endpoint: one running, one waiting
    defaults: dict[str, Any] = Field(default_factory=dict)
    columns: dict[str, str] = Field(default_factory=dict)  # sheet header -> request field path
    controlnet: tuple[dict[str, Any], ...] = ()  # unit defaults, by unit index
    retry: RetrySpec = RetrySpec()
    timeout: TimeoutSpec = TimeoutSpec()
    output: OutputSpec = OutputSpec()
    seed: SeedSpec = SeedSpec()
    expand: ExpandSpec = ExpandSpec()
    check: bool = True  # check rows against the endpoints before sending
    wait_all_down: float = Field(default=600.0, ge=0)  # seconds to wait when no endpoint answers
    shards: int | None = Field(default=None, gt=0)  # N for a Kubernetes Indexed Job's pods
    shard: Shard | None = None  # this run's share: from --shard i/N or the scheduler's environment
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
    def endpoints_defaulted(self) -> bool:
        """No endpoint was named in the job or on the command line."""
        return "endpoints" not in self.model_fields_set

    @property
    def sheet_options(self) -> dict[str, Any]:
        """How to read the sheet: the sheet_name, delimiter and encoding keyword arguments."""
        return {
            "sheet_name": self.sheet_name,
            "delimiter": self.delimiter,
            "encoding": self.encoding,
        }

    @property
    def wildcard_folder(self) -> Path:
        if self.expand.wildcards is not None:
            return self.expand.wildcards
        return (self.source or self.sheet).parent / "wildcards"

    @property
    def out_dir(self) -> Path:
        base = self.output.dir if self.output.dir is not None else Path("outputs") / self.name
        return base / self.shard.folder if self.shard is not None else base


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
    if "shard" in raw:  # which shard is the task's to say, not the job's
        raise ConfigError(
            f"{source}: 'shard' is not a job key; give --shard I/N (or let Slurm or Kubernetes "
            "say it) and put only the count in the job file: shards = N"
        )
    if endpoints:
        raw["endpoints"] = list(endpoints)
    if "endpoints" in raw:
        raw["endpoints"] = _endpoint_tables(raw["endpoints"])
    if set_fields:
        job_keys = {k: v for k, v in set_fields.items() if k in SET_JOB_KEYS}
        expand = {k[len(EXPAND) :]: v for k, v in set_fields.items() if k.startswith(EXPAND)}
        fields = {
            k: _typed(k, v)
            for k, v in set_fields.items()
            if k not in SET_JOB_KEYS and not k.startswith(EXPAND)
        }
        raw.update(job_keys)
        if expand:
            raw["expand"] = {**raw.get("expand", {}), **expand}
        if fields:
            raw["defaults"] = {**raw.get("defaults", {}), **fields}
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


def _endpoint_tables(value: Any) -> Any:
    """`endpoints = ["http://gpu1:7860"]` (or one string, or one table): shorthand for a list
    of tables with a url."""
    if isinstance(value, str | dict):
        value = [value]
    if isinstance(value, list | tuple):
        return [{"url": item} if isinstance(item, str) else item for item in value]
    return value


def _typed(name: str, value: str) -> Any:
    """A --set value as the request field's type when it reads as one, so job.json keeps
    20 as a number; anything else stays text and is reported with the sheet's problems."""
    target = resolve(name)
    if not isinstance(target, Target) or target.kind not in ("int", "float", "bool"):
        return value
    try:
        return coerce(target.kind, value)
    except ValueError:
        return value


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
    expand = raw.get("expand")
    if isinstance(expand, dict) and isinstance(expand.get("wildcards"), str):
        expand["wildcards"] = base / expand["wildcards"]
    comfy = raw.get("comfy")
    if isinstance(comfy, dict) and isinstance(comfy.get("workflow"), str):
        comfy["workflow"] = base / comfy["workflow"]
    for endpoint in raw.get("endpoints") or ():  # tables by now
        if isinstance(endpoint, dict) and isinstance(endpoint.get("ca_file"), str):
            endpoint["ca_file"] = base / endpoint["ca_file"]
    return raw


def _render(source: Path, error: ValidationError) -> str:
    lines = [f"{source}: the job is not valid; nothing was sent"]
    for item in error.errors():
        loc = item["loc"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
            hint = _suggest(loc)
            if hint:
                message += f"; did you mean '{hint}'?"
        else:
            message = _plain_message(item)
            example = _example(loc)
            if example:
                message += f", e.g. {example}"
        lines.append(f"  - {_where(loc)}: {message}")
    return "\n".join(lines)


# pydantic's error types, said in the words of someone who writes a TOML file by hand.
_PLAIN = {
    "missing": "required",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text in quotes",
    "path_type": "must be a file path in quotes",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "tuple_type": "must be a list in [ ]",
    "list_type": "must be a list in [ ]",
}
_EXAMPLES = {
    "name": 'name = "night-run"',
    "sheet": 'sheet = "prompts.csv"',
    "endpoints": 'endpoints = ["http://127.0.0.1:7860", "http://gpu2:7860"]',
    "endpoints.url": 'url = "http://127.0.0.1:7860"',
    "endpoints.headers": 'headers = { "X-Team" = "art" }',
    "endpoints.headers_env": 'headers_env = { "Authorization" = "GPU_TOKEN" }',
    "defaults": "[defaults] steps = 20",
    "columns": '[columns] Beschreibung = "prompt"',
    "controlnet": '[[controlnet]] module = "canny"',
    "output.filename": 'filename = "{row:06d}-{index:02d}-{seed}"',
    "output.dir": 'dir = "outputs/night-run"',
    "seed.mode": 'mode = "derived"',
    "expand.mode": 'mode = "combinatorial"',
    "expand.count": "count = 20",
    "expand.max_images": "max_images = 100000",
    "delimiter": 'delimiter = ";"',
    "encoding": 'encoding = "cp1252"',
}


def _plain_message(item: Any) -> str:
    kind = item["type"]
    ctx = item.get("ctx") or {}
    if item["loc"][:1] == ("endpoints",) and len(item["loc"]) == 2:
        return "each endpoint must be a URL in quotes or a table with a url"
    if kind in _PLAIN:
        return _PLAIN[kind]
    if kind == "greater_than":
        return f"must be more than {ctx.get('gt')}"
    if kind == "greater_than_equal":
        return f"must be {ctx.get('ge')} or more"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind in ("string_too_short", "string_too_long") and item["loc"][-1] == "delimiter":
        return "must be one character"
    return str(item["msg"]).replace("Value error, ", "")


def _where(loc: tuple[int | str, ...]) -> str:
    """`endpoints item 2.url` for ("endpoints", 1, "url"): items counted from 1, as people do."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f" item {part + 1}"
        else:
            text += f".{part}" if text else str(part)
    return text


def _example(loc: tuple[int | str, ...]) -> str | None:
    """A valid line for the key: a known example, else the key with its default value."""
    names = [str(part) for part in loc if not isinstance(part, int)]
    dotted = ".".join(names)
    if dotted in _EXAMPLES:
        return _EXAMPLES[dotted]
    model: type[BaseModel] = JobSpec
    for name in names[:-1]:
        nested = _nested_model(model, name)
        if nested is None:
            return None
        model = nested
    field = model.model_fields.get(names[-1]) if names else None
    default = field.default if field is not None else None
    if isinstance(default, bool):
        return f"{names[-1]} = {str(default).lower()}"
    if isinstance(default, int | float):
        return f"{names[-1]} = {default}"
    return None


def _nested_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    annotation = model.model_fields[name].annotation if name in model.model_fields else None
    inner = getattr(annotation, "__args__", (annotation,))
    nested = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
    return nested[0] if nested else None


def _suggest(loc: tuple[int | str, ...]) -> str | None:
    model: type[BaseModel] = JobSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        nested = _nested_model(model, str(part))
        if nested is None:
            return None
        model = nested
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return close[0] if close else None
