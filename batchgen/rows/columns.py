"""Names -> request fields: what a header, a `columns` value or a default key sets."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Literal

from batchgen.rows import controlnet as cn
from batchgen.rows.fields import ALIASES, FIELDS, OVERRIDE_KINDS, Kind, normalize_name

FieldPath = tuple[str, ...]
LOWER_FIELDS = {name.lower(): name for name in FIELDS}
LOWER_OVERRIDES = {name.lower(): name for name in OVERRIDE_KINDS}


@dataclass(frozen=True, slots=True)
class Target:
    """Where a column or default goes: a field path, or a ControlNet unit field."""

    path: FieldPath  # ("steps",), ("override_settings", "sd_vae"), ("controlnet", "0", "image")
    kind: Kind | Literal["auto", "units"]
    unit: int | None = None

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A name that sets no field, and why; a plain unknown header is a metadata column."""

    message: str
    hint: str | None
    misspelled: bool  # close to a known name: never treated as a metadata column
    suggestion: str | None = None  # the field it is probably meant to be


def resolve(name: str) -> Target | Unresolved:
    """The field a header, a `columns` value or a default key names."""
    norm = normalize_name(name)
    if norm in LOWER_FIELDS:
        field = FIELDS[LOWER_FIELDS[norm]]
        return Target((field.name,), field.kind)
    if norm in ALIASES:
        return resolve(ALIASES[norm])
    if norm == "controlnet":
        return Target(("controlnet",), "units")
    if "." in name:
        return _resolve_dotted([part.strip() for part in name.strip().split(".")])
    close = difflib.get_close_matches(norm, [*LOWER_FIELDS, *ALIASES], n=1, cutoff=0.8)
    if close:
        suggestion = LOWER_FIELDS.get(close[0], close[0])
        return Unresolved(
            f"'{name}' is not a request field (A1111 would silently ignore it)",
            f"did you mean '{suggestion}'?",
            misspelled=True,
            suggestion=suggestion,
        )
    return Unresolved(f"'{name}' is not a request field", None, misspelled=False)


def _resolve_dotted(parts: list[str]) -> Target | Unresolved:
    head = normalize_name(parts[0])
    shown = ".".join(parts)
    if head in ("controlnet", "cn"):
        if len(parts) == 3 and parts[1].isdigit():
            key = cn.canonical_key(parts[2])
            if key is not None:
                return Target(("controlnet", str(int(parts[1])), key), "auto", int(parts[1]))
            near = cn.suggest_key(parts[2])
            hint = f"did you mean 'controlnet.{parts[1]}.{near}'?" if near else None
            return Unresolved(f"'{parts[2]}' is not a ControlNet unit field", hint, True)
        return Unresolved(
            f"'{shown}' is not a ControlNet column",
            "write controlnet.<unit number>.<field>, e.g. controlnet.0.image",
            True,
        )
    if head == "override_settings" and len(parts) == 2 and parts[1]:
        key = LOWER_OVERRIDES.get(parts[1].lower())
        if key is not None:
            return Target(("override_settings", key), OVERRIDE_KINDS[key])
        close = difflib.get_close_matches(parts[1], list(OVERRIDE_KINDS), n=1, cutoff=0.8)
        if close:
            return Unresolved(
                f"'{parts[1]}' is not a known setting (an unknown override fails the request)",
                f"did you mean 'override_settings.{close[0]}'?",
                True,
            )
        return Target(("override_settings", parts[1]), "auto")
    if head == "comments" and len(parts) == 2 and parts[1]:
        return Target(("comments", parts[1]), "auto")
    if head in LOWER_FIELDS or head in ALIASES:
        return Unresolved(
            f"'{shown}' is not a field: '{parts[0]}' has no part '{'.'.join(parts[1:])}'",
            "write alwayson_scripts as a JSON cell, or use controlnet.N.* columns"
            if head == "alwayson_scripts"
            else None,
            True,
        )
    return Unresolved(f"'{shown}' is not a request field", None, misspelled=False)


def coerce_auto(value: Any) -> Any:
    """Settings we have no type for: numbers and true/false read as such, other text as is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?", text):
        return float(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value
