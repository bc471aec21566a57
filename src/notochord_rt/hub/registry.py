"""The model registry: names of models, where they come from, what they are.

The registry is the data file ``notochord_rt/assets/models.toml`` (see its header for the
keys of an entry). ``NOTOCHORD_RT_REGISTRY`` may name a further TOML file of the same
layout: its entries are added, and replace bundled entries of the same name (a way to
publish your own models, and what the tests use to point at a local server).

Names are case-sensitive and made of letters, digits, ``.``, ``_`` and ``-``; an entry's
``aliases`` are other names for it (the reference package's ``notochord-latest.ckpt`` is an
alias of ``notochord-lakh``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

REGISTRY_ASSET = "models.toml"
REGISTRY_ENV = "NOTOCHORD_RT_REGISTRY"
FORMATS = ("notochord-rt", "reference")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_KEYS = {"title", "aliases", "bundled", "url", "format", "sha256", "size_bytes", "parameters",
         "licence", "training_data", "source", "card"}


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry (see ``assets/models.toml`` for the meaning of fields)."""

    name: str
    title: str = ""
    aliases: tuple[str, ...] = ()
    bundled: str | None = None
    url: str | None = None
    format: str = "notochord-rt"
    sha256: str = ""
    size_bytes: int = 0
    parameters: int = 0
    licence: str = ""
    training_data: str = ""
    source: str = ""
    card: str = ""
    origin: str = field(default="", compare=False)
    """The registry file the entry came from."""

    @property
    def is_bundled(self) -> bool:
        return self.bundled is not None

    @property
    def file_name(self) -> str:
        """The downloaded file's name (the last part of the URL's path)."""
        if not self.url:
            return f"{self.name}.safetensors"
        tail = self.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return tail if NAME_RE.match(tail) else f"{self.name}.download"


def _entry(name: str, raw: Any, origin: str) -> ModelEntry:
    where = f"{origin}: model {name!r}"
    if not NAME_RE.match(name):
        raise UserError(f"{origin}: {name!r} is not a valid model name (letters, digits, "
                        "'.', '_' and '-', at most 64)")
    if not isinstance(raw, Mapping):
        raise UserError(f"{where} must be a table")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key in ("title", "bundled", "url", "format", "sha256", "licence", "training_data",
                "source", "card"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise UserError(f"{where}: {key} must be text")
            values[key] = raw[key].strip() if key != "card" else raw[key].strip("\n")
    for key in ("size_bytes", "parameters"):
        if key in raw:
            if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 0:
                raise UserError(f"{where}: {key} must be a whole number >= 0")
            values[key] = raw[key]
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and NAME_RE.match(a)
                                                for a in aliases):
        raise UserError(f"{where}: aliases must be a list of model names")
    values["aliases"] = tuple(aliases)
    entry = ModelEntry(name=name, origin=origin, **values)
    if (entry.bundled is None) == (entry.url is None):
        raise UserError(f"{where}: give exactly one of 'bundled' and 'url'")
    if entry.url is not None and not entry.url.startswith(("https://", "http://")):
        raise UserError(f"{where}: url must start with https:// or http://")
    if entry.format not in FORMATS:
        raise UserError(f"{where}: format must be one of {', '.join(FORMATS)}")
    if entry.sha256 and not _SHA256_RE.match(entry.sha256.lower()):
        raise UserError(f"{where}: sha256 must be 64 hexadecimal digits (or empty)")
    return entry


def parse_registry(text: str, origin: str) -> dict[str, ModelEntry]:
    """The entries of one registry file's text (UserError naming the first problem)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"model registry {origin} is not valid TOML: {e}") from None
    return {name: _entry(name, value, origin) for name, value in raw.items()}


def _bundled_text() -> str:
    return (resources.files("notochord_rt") / "assets" / REGISTRY_ASSET).read_text("utf-8")


def load_registry() -> dict[str, ModelEntry]:
    """The bundled registry, with the entries of ``$NOTOCHORD_RT_REGISTRY`` on top."""
    entries = parse_registry(_bundled_text(), f"notochord_rt/assets/{REGISTRY_ASSET}")
    extra = os.environ.get(REGISTRY_ENV)
    if extra:
        path = Path(extra)
        try:
            text = path.read_text("utf-8")
        except OSError as e:
            raise UserError(f"{REGISTRY_ENV}={extra}: cannot read it "
                            f"({e.strerror or e})") from None
        entries.update(parse_registry(text, str(path)))
    names: dict[str, str] = {}
    for entry in entries.values():
        for alias in (entry.name, *entry.aliases):
            if alias in names and names[alias] != entry.name:
                raise UserError(f"model registry: the name {alias!r} belongs to both "
                                f"{names[alias]!r} and {entry.name!r}")
            names[alias] = entry.name
    return entries


def find(name: str, entries: Mapping[str, ModelEntry] | None = None) -> ModelEntry | None:
    """The entry called ``name`` (or with that alias), else None."""
    entries = load_registry() if entries is None else entries
    if name in entries:
        return entries[name]
    for entry in entries.values():
        if name in entry.aliases:
            return entry
    return None


def lookup(name: str, entries: Mapping[str, ModelEntry] | None = None) -> ModelEntry:
    """The entry called ``name``; UserError listing the known names otherwise."""
    entries = load_registry() if entries is None else entries
    entry = find(name, entries)
    if entry is None:
        raise UserError(f"no model named {name!r} in the registry (known: "
                        f"{', '.join(sorted(entries))}; `notochord-rt models list`)")
    return entry


def looks_like_name(spec: str) -> bool:
    """True when ``spec`` could be a model name rather than a path (no folder part)."""
    return bool(NAME_RE.match(spec)) and "/" not in spec and os.sep not in spec
