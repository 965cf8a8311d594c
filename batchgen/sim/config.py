"""SimConfig: every knob of the simulator, from code, a `sim://` query string or a TOML file."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

Flavor = Literal["a1111", "forge", "comfy"]
Encoder = Literal["fast", "pillow"]

DEFAULT_MODELS = (
    "v1-5-pruned-emaonly.safetensors",
    "sd_xl_base_1.0.safetensors",
    "sdxl/dreamshaperXL.safetensors",
)
DEFAULT_VAES = ("vae-ft-mse-840000-ema-pruned.safetensors", "sdxl_vae.safetensors")
DEFAULT_LORAS = ("add_detail", "epiNoiseoffset_v2", "sdxl/pixel-art-xl")
DEFAULT_UPSCALERS = ("R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B", "ESRGAN_4x", "SwinIR 4x")
DEFAULT_CN_MODELS = (
    "control_v11p_sd15_canny",
    "control_v11f1p_sd15_depth",
    "control_v11p_sd15_openpose",
    "control_v11p_sd15_softedge",
    "control_v11f1e_sd15_tile",
)
DEFAULT_CN_MODULES = (
    "none",
    "canny",
    "depth_midas",
    "depth_zoe",
    "openpose",
    "openpose_full",
    "softedge_pidinet",
    "softedge_hed",
    "lineart_realistic",
    "mlsd",
    "tile_resample",
    "invert",
    "reference_only",
)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Inventory, time model, flavor, auth and fault knobs of one simulated server."""

    models: tuple[str, ...] = DEFAULT_MODELS
    vaes: tuple[str, ...] = DEFAULT_VAES
    loras: tuple[str, ...] = DEFAULT_LORAS
    upscalers: tuple[str, ...] = DEFAULT_UPSCALERS
    cn_models: tuple[str, ...] = DEFAULT_CN_MODELS
    cn_modules: tuple[str, ...] = DEFAULT_CN_MODULES
    # Prompt styles as "name=text" (text may hold {prompt}); a request's `styles` apply them on
    # the server, so `info.all_prompts` differs from the prompt sent, as on a real A1111.
    styles: tuple[str, ...] = ()
    # Time model: ms per sampling step of one 512x512 image, scaled by steps, pixels,
    # batch_size and n_iter, divided by speed; plus switch_s per checkpoint load.
    ms_per_step: float = 0.2
    switch_s: float = 0.02
    speed: float = 1.0
    flavor: Flavor = "a1111"
    version: str = ""
    api_auth: str | None = None
    webui: bool = True
    # Every answer says it comes from a simulator (SIMULATOR_HEADER); false only to stand in for
    # a real server in tests: a real web UI never sends it.
    marked: bool = True
    encoder: Encoder = "fast"
    # Faults, drawn per generation request from random.Random(fault_seed) in arrival order.
    fail_rate: float = 0.0
    drop_rate: float = 0.0
    hang_rate: float = 0.0
    busy_rate: float = 0.0  # answered 429 Too Many Requests, as a rate-limiting proxy does
    die_after: int | None = None
    unavailable_s: float = 0.0
    refuse_s: float = 0.0
    fault_seed: int = 0
    retry_after: int = 0  # seconds a 429 (busy_rate) or 503 (unavailable_s) asks for; 0: no header
    # A prompt holding this text fails as a real server fails a request whose model makes NaNs:
    # a 500 NansException, every time, while other requests go on (a1111-api.md §15).
    nan_marker: str = ""
    # ComfyUI flavor: false = an older server that ignores a client's prompt_id and makes its own.
    accept_prompt_id: bool = True

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models: at least one checkpoint is required")
        if self.speed <= 0:
            raise ValueError("speed must be > 0")
        for name in ("ms_per_step", "switch_s", "unavailable_s", "refuse_s", "retry_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        rates = ("fail_rate", "drop_rate", "hang_rate", "busy_rate")
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if sum(getattr(self, name) for name in rates) > 1.0:
            raise ValueError("fail_rate + drop_rate + hang_rate + busy_rate must be <= 1")
        if self.die_after is not None and self.die_after < 0:
            raise ValueError("die_after must be >= 0")
        if self.flavor not in ("a1111", "forge", "comfy"):
            raise ValueError(f"flavor must be 'a1111', 'forge' or 'comfy', not {self.flavor!r}")
        if self.encoder not in ("fast", "pillow"):
            raise ValueError(f"encoder must be 'fast' or 'pillow', not {self.encoder!r}")
        for style in self.styles:
            if "=" not in style:
                raise ValueError(f"styles: write each as 'name=text', not {style!r}")
        if self.api_auth is not None and not all(":" in c for c in self.api_auth.split(",")):
            raise ValueError("api_auth must look like 'user:pass[,user2:pass2]'")

    @property
    def server_version(self) -> str:
        if self.version:
            return self.version
        if self.flavor == "comfy":
            return "0.7.0"
        return "f2.0.1v1.10.1-previous-669-gdfdcbab6" if self.flavor == "forge" else "v1.10.1"

    def style_texts(self) -> dict[str, str]:
        return dict(style.split("=", 1) for style in self.styles)

    @classmethod
    def from_query(cls, query: str) -> SimConfig:
        """Build from `speed=2&models=a,b&fail_rate=0.1` (a leading `?` is allowed)."""
        pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True, strict_parsing=False)
        return cls.from_mapping(dict(pairs))

    @classmethod
    def from_url(cls, url: str) -> SimConfig:
        """Build from an endpoint URL such as `sim://` or `sim://?speed=2&models=a,b`."""
        parts = urlsplit(url)
        if parts.scheme != "sim":
            raise ValueError(f"not a sim:// URL: {url!r}")
        return cls.from_query(parts.query)

    @classmethod
    def from_file(cls, path: str | Path) -> SimConfig:
        """Build from a TOML file: keys at top level or under a `[sim]` table."""
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        table = data.get("sim", data)
        if not isinstance(table, dict):
            raise ValueError(f"{path}: [sim] must be a table")
        return cls.from_mapping(table)

    @classmethod
    def from_mapping(cls, values: typing.Mapping[str, Any]) -> SimConfig:
        """Build from loose values (strings from a query, or TOML types); names every bad key."""
        return cls().replace(values)

    def replace(self, values: typing.Mapping[str, Any]) -> SimConfig:
        """A copy with `values` (converted like `from_mapping`) applied."""
        hints = typing.get_type_hints(SimConfig)
        known = {f.name for f in fields(SimConfig)}
        changes: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in known:
                raise ValueError(f"unknown simulator option {key!r}")
            try:
                changes[key] = _convert(raw, hints[key])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"simulator option {key!r}: {exc}") from None
        return dataclasses.replace(self, **changes)


def _convert(raw: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw is None or (isinstance(raw, str) and raw.lower() in ("", "none", "null")):
            return None
        inner = next(a for a in args if a is not type(None))
        return _convert(raw, inner)
    if origin is tuple:
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        return tuple(str(i).strip() for i in items if str(i).strip())
    if origin is Literal:
        if raw not in args:
            raise ValueError(f"must be one of {', '.join(map(repr, args))}")
        return raw
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if hint is int:
        if isinstance(raw, bool):
            raise ValueError(f"not an integer: {raw!r}")
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"not a whole number: {raw!r}; e.g. 3") from None
    if hint is float:
        if isinstance(raw, bool):
            raise ValueError(f"not a number: {raw!r}")
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"not a number: {raw!r}; e.g. 0.5") from None
    if hint is str:
        return str(raw)
    raise TypeError(f"unsupported option type {hint!r}")  # pragma: no cover


# What each knob does, for `batchgen sim --help` (one option per knob: --fail-rate 0.1).
KNOB_HELP = {
    "models": "checkpoint names, comma-separated",
    "vaes": "VAE names, comma-separated",
    "loras": "LoRA names, comma-separated",
    "upscalers": "upscaler names, comma-separated",
    "cn_models": "ControlNet models, comma-separated",
    "cn_modules": "ControlNet preprocessors, comma-separated",
    "styles": "prompt styles as name=text ({prompt} is replaced), comma-separated",
    "ms_per_step": "milliseconds per sampling step of one 512x512 image",
    "switch_s": "seconds per checkpoint load",
    "speed": "divides every generation time",
    "flavor": "a1111, forge or comfy",
    "version": "the version the server reports",
    "api_auth": "user:password[,user2:password2] for --api-auth",
    "webui": "serve the web UI routes too (true/false)",
    "encoder": "fast or pillow (PNG encoding)",
    "fail_rate": "share of generations answered with a 500",
    "drop_rate": "share of generations whose connection is dropped",
    "hang_rate": "share of generations that never answer",
    "die_after": "stop answering after this many generations",
    "unavailable_s": "answer 503 for this many seconds after start",
    "refuse_s": "refuse connections for this many seconds after start",
    "busy_rate": "share of generations answered 429 Too Many Requests",
    "retry_after": "seconds a 429 or 503 asks the client to wait (Retry-After); 0: no header",
    "nan_marker": "a prompt holding this text is answered 500 NansException, every time",
    "accept_prompt_id": "comfy: take the client's prompt_id (false: an older server)",
    "marked": "send the X-Batchgen-Simulator header (false: stand in for a real server)",
    "fault_seed": "seed of the fault draws",
}


def knobs() -> list[tuple[str, str, str]]:
    """(name, default as text, help) of every knob, in declaration order."""
    default = SimConfig()
    shown = []
    for knob in fields(SimConfig):
        value = getattr(default, knob.name)
        if isinstance(value, tuple):  # a long list: its first name says what it looks like
            text = f"{value[0]}, … ({len(value)})" if len(value) > 1 else ",".join(value)
        else:
            text = str(value)
        shown.append((knob.name, text, KNOB_HELP.get(knob.name, "a simulator option")))
    return shown
