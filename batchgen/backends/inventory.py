"""What one endpoint has installed: read once from its list routes, normalised for exact lookups."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

from batchgen.errors import EndpointError, FatalEndpointError

log = logging.getLogger(__name__)

Need = Literal["checkpoints", "vaes", "samplers", "schedulers", "upscalers", "loras", "controlnet"]
ALL_NEEDS: frozenset[Need] = frozenset(
    ("checkpoints", "vaes", "samplers", "schedulers", "upscalers", "loras", "controlnet")
)
# a1111-api.md §2: used when a server does not list them (the names are built into A1111).
LATENT_UPSCALE_MODES = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)
DEFAULT_CN_UNITS = 3  # opts.control_net_unit_count default; Forge has no route to ask (§9, §11)
_HASH_SUFFIX = re.compile(r" \[[0-9a-fA-F]{8,64}\]$")


class InventorySource(Protocol):
    """The part of EndpointClient an inventory is read through."""

    @property
    def name(self) -> str: ...

    @property
    def flavor(self) -> str: ...

    async def get_json(self, path: str, *, attempts: int = 3) -> Any: ...


@dataclass(frozen=True, slots=True)
class CheckpointIndex:
    """A server's checkpoints and every name A1111 accepts for each (`CheckpointInfo.ids`, §7).

    The canonical name is `name` ("sub/x.safetensors"): unlike the title it does not change
    when the server first hashes the file.
    """

    names: tuple[str, ...]
    titles: tuple[str, ...]  # the server's titles, in the order of `names`
    aliases: Mapping[str, tuple[str, ...]]  # alias -> canonical names, in server order

    @classmethod
    def from_api(cls, items: Iterable[Any]) -> CheckpointIndex:
        """Build from the list GET /sdapi/v1/sd-models returns."""
        names: list[str] = []
        titles: list[str] = []
        aliases: dict[str, list[str]] = {}
        for item in items:
            if not isinstance(item, Mapping):
                continue
            title = _text(item.get("title"))
            if not title:
                continue
            shorthash = _text(item.get("hash"))
            sha256 = _text(item.get("sha256"))
            name = _HASH_SUFFIX.sub("", title)
            stem = re.split(r"[/\\]", name)[-1].rsplit(".", 1)[0]
            ids = [_text(item.get("model_name")), title, name, stem]
            if shorthash:
                ids += [shorthash, f"{name} [{shorthash}]", f"{stem} [{shorthash}]"]
            if sha256:
                ids.append(sha256)
            names.append(name)
            titles.append(title)
            for alias in dict.fromkeys(i for i in ids if i):
                aliases.setdefault(alias, []).append(name)
        frozen = MappingProxyType({k: tuple(v) for k, v in aliases.items()})
        return cls(tuple(names), tuple(titles), frozen)

    def lookup(self, name: str) -> tuple[str, ...]:
        """Every checkpoint `name` is an alias of: one, none, or several (an ambiguous name)."""
        return self.aliases.get(name, ())

    def resolve(self, name: str) -> str | None:
        """The canonical name, as A1111's exact alias lookup would find it; None if unknown."""
        found = self.lookup(name)
        return found[0] if found else None

    def title(self, name: str) -> str:
        """The server's title of a canonical name."""
        return self.titles[self.names.index(name)]


def resolve_checkpoint(
    name: str, models: CheckpointIndex | Iterable[Mapping[str, Any]]
) -> str | None:
    """The canonical name ("sub/x.safetensors") of a checkpoint given in any A1111 alias form.

    `models` is a CheckpointIndex or the list GET /sdapi/v1/sd-models returned. Accepted forms:
    title, model_name, name, the file stem, the short hash, the sha256, "name [hash]",
    "stem [hash]". None if the server has no such checkpoint (it would ignore the override).
    """
    index = models if isinstance(models, CheckpointIndex) else CheckpointIndex.from_api(models)
    return index.resolve(name)


@dataclass(frozen=True, slots=True)
class SchedulerInfo:
    name: str  # "karras"
    label: str  # "Karras"
    aliases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Inventory:
    """One endpoint's installed names. A None field: the server has no route that lists them."""

    endpoint: str
    flavor: str
    checkpoints: CheckpointIndex | None = None
    vaes: frozenset[str] | None = None
    samplers: frozenset[str] | None = None
    sampler_aliases: Mapping[str, str] = field(default_factory=dict)  # "k_euler_a" -> "Euler a"
    schedulers: tuple[SchedulerInfo, ...] | None = None
    upscalers: frozenset[str] | None = None  # upscaler names plus latent modes
    loras: frozenset[str] | None = None  # names and aliases
    cn_models: tuple[str, ...] | None = None  # "control_v11p_sd15_canny [d14c016b]"
    cn_modules: frozenset[str] | None = None  # names and labels
    cn_units: int = DEFAULT_CN_UNITS


class InventoryError(Exception):
    """The endpoint did not answer a list route that it should have."""


async def fetch_inventory(
    client: InventorySource, needs: Collection[Need] = ALL_NEEDS
) -> Inventory:
    """Read what `needs` asks for, concurrently. Raises InventoryError if the server fails."""
    forge = client.flavor == "forge"
    routes: dict[str, tuple[str, ...]] = {}
    if "checkpoints" in needs:
        routes["sd-models"] = ("/sdapi/v1/sd-models",)
    if "vaes" in needs:
        # Forge replaced /sd-vae by /sd-modules (§11); try the other if the flavor guess is off.
        vae_routes = ("/sdapi/v1/sd-vae", "/sdapi/v1/sd-modules")
        routes["vaes"] = tuple(reversed(vae_routes)) if forge else vae_routes
    if "samplers" in needs:
        routes["samplers"] = ("/sdapi/v1/samplers",)
    if "samplers" in needs or "schedulers" in needs:
        routes["schedulers"] = ("/sdapi/v1/schedulers",)
    if "upscalers" in needs:
        routes["upscalers"] = ("/sdapi/v1/upscalers",)
        routes["latent"] = ("/sdapi/v1/latent-upscale-modes",)
    if "loras" in needs:
        routes["loras"] = ("/sdapi/v1/loras",)
    if "controlnet" in needs:
        routes["cn_models"] = ("/controlnet/model_list?update=true",)
        routes["cn_modules"] = ("/controlnet/module_list",)
        if not forge:
            routes["cn_labels"] = ("/controlnet/module_list?alias_names=true",)
            routes["cn_settings"] = ("/controlnet/settings",)
    keys = list(routes)
    answers = await asyncio.gather(*(_first_answer(client, routes[key]) for key in keys))
    got = dict(zip(keys, answers, strict=True))
    schedulers = _schedulers(got.get("schedulers"))
    samplers, sampler_aliases = _samplers(got.get("samplers"))
    return Inventory(
        endpoint=client.name,
        flavor=client.flavor,
        checkpoints=(
            CheckpointIndex.from_api(_items(got["sd-models"])) if "sd-models" in got else None
        ),
        vaes=_names(got.get("vaes"), "model_name"),
        samplers=samplers,
        sampler_aliases=sampler_aliases,
        schedulers=schedulers,
        upscalers=_upscalers(got.get("upscalers"), got.get("latent")),
        loras=_loras(got.get("loras")),
        cn_models=_cn_models(got.get("cn_models")),
        cn_modules=_cn_modules(got.get("cn_modules"), got.get("cn_labels")),
        cn_units=_cn_units(got.get("cn_settings")),
    )


async def _first_answer(client: InventorySource, paths: tuple[str, ...]) -> Any:
    """The JSON of the first route that exists; None if none does (404)."""
    for path in paths:
        try:
            return await client.get_json(path)
        except FatalEndpointError as error:
            if error.status != 404:
                raise InventoryError(f"{path}: {error}") from None
            log.debug("%s has no %s", client.name, path)
        except EndpointError as error:
            raise InventoryError(f"{path}: {error}") from None
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _items(answer: Any) -> list[Mapping[str, Any]]:
    return (
        [item for item in answer if isinstance(item, Mapping)] if isinstance(answer, list) else []
    )


def _names(answer: Any, *keys: str) -> frozenset[str] | None:
    if answer is None:
        return None
    return frozenset(_text(item.get(key)) for item in _items(answer) for key in keys) - {""}


def _samplers(answer: Any) -> tuple[frozenset[str] | None, Mapping[str, str]]:
    if answer is None:
        return None, MappingProxyType({})
    names: set[str] = set()
    aliases: dict[str, str] = {}
    for item in _items(answer):
        name = _text(item.get("name"))
        if not name:
            continue
        names.add(name)
        for alias in item.get("aliases") or ():
            if isinstance(alias, str):
                aliases.setdefault(alias, name)
    return frozenset(names), MappingProxyType(aliases)


def _schedulers(answer: Any) -> tuple[SchedulerInfo, ...] | None:
    if answer is None:
        return None
    found = []
    for item in _items(answer):
        name, label = _text(item.get("name")), _text(item.get("label"))
        if name:
            aliases = tuple(a for a in item.get("aliases") or () if isinstance(a, str))
            found.append(SchedulerInfo(name, label or name, aliases))
    return tuple(found)


def _upscalers(answer: Any, latent: Any) -> frozenset[str] | None:
    names = _names(answer, "name")
    if names is None:
        return None
    modes = _names(latent, "name")
    return names | (modes if modes is not None else frozenset(LATENT_UPSCALE_MODES))


def _loras(answer: Any) -> frozenset[str] | None:
    return _names(answer, "name", "alias")


def _cn_models(answer: Any) -> tuple[str, ...] | None:
    if not isinstance(answer, Mapping):
        return None
    models = answer.get("model_list")
    if not isinstance(models, list):
        return ()
    return tuple(m for m in models if isinstance(m, str) and m not in ("", "None"))


def _cn_modules(names: Any, labels: Any) -> frozenset[str] | None:
    if not isinstance(names, Mapping):
        return None
    found: set[str] = set()
    for answer in (names, labels):
        if isinstance(answer, Mapping) and isinstance(answer.get("module_list"), list):
            found.update(m for m in answer["module_list"] if isinstance(m, str))
    return frozenset(found)


def _cn_units(settings: Any) -> int:
    if isinstance(settings, Mapping):
        count = settings.get("control_net_unit_count")
        if isinstance(count, (int, float)) and not isinstance(count, bool) and count >= 1:
            return int(count)
    return DEFAULT_CN_UNITS
