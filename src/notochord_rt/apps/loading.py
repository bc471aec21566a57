"""Load the sampler every app and CLI command plays with: one place for the checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine.cores.precisions import MODULE_CORE
from ..errors import CheckpointError, UserError


def resolve_for_cli(checkpoint: str, option: str = "--checkpoint", *,
                    download: bool = False, must_exist: bool = True) -> str | Path:
    """A checkpoint option's value made loadable: a path, ``"default"`` or a registry
    name (the cached model; ``download`` pulls it if it is not cached). UserError with one
    line (the ``pull`` command for a name not downloaded yet) otherwise; a path that does
    not exist is one too unless ``must_exist`` is False (the caller reports it)."""
    from ..hub import HubError
    from ..hub.resolve import resolve_checkpoint, unknown_message

    try:
        found = resolve_checkpoint(checkpoint, download=download, progressbar=download)
    except HubError as e:
        raise UserError(f"{option} {checkpoint}: {e}") from None
    if must_exist and found != "default" and not Path(found).exists():
        raise UserError(unknown_message(str(checkpoint), option))
    return found


def load_sampler(checkpoint: str, precision: str = "fp32", threads: int = 1, *,
                 download: bool = False) -> Any:
    """The sampler for ``checkpoint`` (a path, ``"default"`` or a registry model name) on
    the chosen core (``"module"`` keeps the plain module core), with ``threads`` torch
    threads; UserError if it cannot be loaded. ``download`` pulls a named model that is
    not cached yet (otherwise the error names the ``pull`` command)."""
    import torch

    from ..engine.sampling.sampler import Notochord

    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    path = resolve_for_cli(checkpoint, download=download)
    try:
        model = Notochord.load(path)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    if precision and precision != MODULE_CORE:
        model.use_core(precision)
    return model
