"""What a model is: architecture, parameter count, provenance, model card.

:func:`checkpoint_info` reads a checkpoint file without building a network: our
safetensors files from their header and metadata alone, reference checkpoints through
the safe reader (no code is run). :func:`entry_info` adds what the registry and the
cache know about a named model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..model.config import NotochordConfig
from . import cache
from .registry import ModelEntry

BUFFERS = ("time_emb.freqs", "vel_emb.freqs")
"""Tensors of a checkpoint that are fixed buffers, not trained parameters."""


def count_parameters(config: NotochordConfig) -> int:
    """Trained parameters of a network with ``config`` (computed from shapes alone)."""
    from ..model.checkpoint_checks import expected_shapes

    return int(sum(math.prod(shape) for name, shape in expected_shapes(config).items()
                   if name not in BUFFERS))


def architecture(config: NotochordConfig) -> str:
    """One line: the sizes that matter."""
    return (f"emb {config.emb_size}, GRU {config.rnn_hidden} x {config.rnn_layers} layer"
            f"{'s' if config.rnn_layers != 1 else ''}, {config.mlp_layers} GLU layer"
            f"{'s' if config.mlp_layers != 1 else ''} per head, time mixture of "
            f"{config.time_components}"
            + (f" + {3 * config.time_pulse} pulse" if config.time_pulse else "")
            + (f", motif copying ({config.pitch_copy} + 4 candidates)" if config.pitch_copy
               else "")
            + f", velocity mixture of {config.vel_components}, "
            f"dropout {config.dropout:g}")


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Format, architecture, parameter count, size and metadata of a checkpoint file.

    Raises :class:`~notochord_rt.errors.CheckpointError` for anything that is not one.
    """
    from ..model import checkpoint as ck
    from ..model import checkpoint_checks as checks

    path = Path(path)
    if str(path) == ck.DEFAULT_NAME:
        path = ck.default_checkpoint()
    kind = ck._file_kind(path)
    meta: dict[str, str] = {}
    if kind == "torch":
        config, _ = ck.read_reference(path)
        fmt = "reference (notochord 0.x torch checkpoint, read without running code)"
    else:
        meta = ck.read_metadata(path)
        config = checks.parse_config_json(meta.get("config", "{}"), str(path))
        fmt = f"notochord-rt safetensors (format version {meta.get('format_version')})"
    return {"path": str(path), "format": fmt, "bytes": path.stat().st_size,
            "architecture": architecture(config), "parameters": count_parameters(config),
            "config": config.to_dict(),
            "metadata": {k: v for k, v in meta.items()
                         if k not in ("config", "format", "format_version")}}


def entry_info(entry: ModelEntry) -> dict[str, Any]:
    """Everything known about a registry model; the file is read only if it is cached."""
    path = cache.cached_model(entry)
    out: dict[str, Any] = {
        "name": entry.name, "aliases": list(entry.aliases), "title": entry.title,
        "source": entry.source or entry.url or "", "url": entry.url,
        "licence": entry.licence, "training_data": entry.training_data,
        "parameters": entry.parameters or None, "size_bytes": entry.size_bytes or None,
        "sha256_published": entry.sha256 or None, "format": entry.format,
        "bundled": entry.is_bundled, "cached": path is not None,
        "path": str(path) if path else None, "card": entry.card, "registry": entry.origin,
    }
    if path is not None:
        out["file"] = checkpoint_info(path)
        out["parameters"] = out["file"]["parameters"]
        record = {} if entry.is_bundled else cache.read_record(entry.name)
        if record:
            out["pull"] = {k: record[k] for k in ("url", "sha256", "bytes", "pulled_at",
                                                  "verified", "converted_from_reference")
                           if k in record}
    return out


def short_size(n: int | None) -> str:
    """``12.3 MB`` style (``?`` when unknown)."""
    if not n:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def short_count(n: int | None) -> str:
    """``17.7 M`` style (``?`` when unknown)."""
    if not n:
        return "?"
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    if n >= 1e3:
        return f"{n / 1e3:.0f} k"
    return str(n)
