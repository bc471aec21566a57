"""Load the sampler every app and CLI command plays with: one place for the checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CheckpointError, UserError


def load_sampler(checkpoint: str, precision: str = "fp32", threads: int = 1) -> Any:
    """The sampler for ``checkpoint`` (a path or ``"default"``) on the chosen core
    (``"module"`` keeps the plain module core), with ``threads`` torch threads;
    UserError if it cannot be loaded."""
    import torch

    from ..engine.sampler import Notochord

    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if checkpoint != "default" and not Path(checkpoint).exists():
        raise UserError(f"--checkpoint {checkpoint}: no such file")
    try:
        model = Notochord.load(checkpoint)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    if precision and precision != "module":
        model.use_core(precision)
    return model
