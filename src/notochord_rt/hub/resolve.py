"""Names everywhere: turn what a user passed as a checkpoint into something to load.

:func:`resolve_checkpoint` is what ``Notochord.load`` and every ``--checkpoint`` /
``--init-from`` / ``--from`` option call. Its rules, in order:

1. ``"default"`` stays ``"default"``: the loaders read the bundled file, as always;
2. an existing file or folder is itself (a path always wins over a name);
3. a registry name or alias is the cached model; a name that is not cached raises
   :class:`NotCached` (a :class:`~notochord_rt.errors.UserError`: one line with the
   ``pull`` command), unless ``download=True`` was asked for, which pulls it;
4. anything else is returned unchanged, for the caller's own "not found" message.

Nothing here downloads unless ``download=True``, and nothing ever prompts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UserError
from . import cache, registry

DEFAULT_NAME = "default"


class NotCached(UserError):
    """A registry model that has not been pulled into the cache."""


def not_cached_message(entry: registry.ModelEntry, spec: str) -> str:
    size = f", {entry.size_bytes / 1e6:.0f} MB" if entry.size_bytes else ""
    alias = f" ({entry.name})" if spec != entry.name else ""
    return (f"model {spec!r}{alias} is not downloaded yet{size}: run `notochord-rt models pull "
            f"{entry.name}` (or add --download)")


def resolve_checkpoint(spec: str | os.PathLike, *, download: bool = False,
                       progressbar: Any = False) -> str | Path:
    """What to load for ``spec`` (see the module docstring for the rules)."""
    text = os.fspath(spec)
    if text == DEFAULT_NAME:
        return text
    path = Path(text)
    if path.exists() or not registry.looks_like_name(text):
        return path
    entry = registry.find(text)
    if entry is None:
        return path
    if entry.name == DEFAULT_NAME:
        return DEFAULT_NAME
    found = cache.cached_model(entry)
    if found is not None:
        return found
    if not download:
        raise NotCached(not_cached_message(entry, text))
    from .pull import pull

    return pull(entry, progressbar=progressbar).path


def unknown_message(spec: str, option: str = "--checkpoint") -> str:
    """One line for a checkpoint that is neither a file nor a model name."""
    if registry.looks_like_name(spec):
        names = ", ".join(sorted(registry.load_registry()))
        return (f"{option} {spec}: no such file, and no model of that name (known names: "
                f"{names}; `notochord-rt models list`)")
    return f"{option} {spec}: no such file"
