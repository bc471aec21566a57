"""Training configuration: one dataclass, filled from defaults, a TOML file and flags.

Precedence is defaults < TOML file < command-line flags, so a run can be described
once in a file and tweaked from the shell. The resolved configuration is saved with
every checkpoint (as JSON), which is what makes resuming and fine-tuning reproducible.

TOML layout: training keys at the top level (or under ``[train]``), model
hyper-parameters under ``[model]`` and augmentation options under ``[aug]``::

    data = "out/prep"
    out = "runs/small"
    batch_size = 64
    lr = 3e-4
    schedule = "cosine"
    warmup_steps = 500
    max_steps = 20000

    [model]
    emb_size = 256
    rnn_hidden = 512

Relative paths are taken relative to the working directory, as on the command line.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults: docs/design.md §5.2."""

    # -- where ---------------------------------------------------------------------------
    data: str = ""
    """Prepared data folder (``notochord-rt prep`` output with train/ and valid/)."""
    out: str = "runs/notochord"
    """Run folder: checkpoints/, tensorboard logs, config.json."""

    # -- model ---------------------------------------------------------------------------
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the network's hyper-parameters (``NotochordConfig`` fields)."""
    init_from: str | None = None
    """Checkpoint whose weights start the run (fine-tuning); ours or a converted reference."""
    freeze_rnn: bool = False
    """Train only embeddings and heads; the GRU and its initial state stay fixed."""

    # -- data ----------------------------------------------------------------------------
    batch_size: int = 128
    """Crops per optimisation step *per process*."""
    batch_len: int = 64
    """Events per training crop."""
    aug: dict[str, Any] = field(default_factory=dict)
    """Overrides of the dataset's augmentation options."""
    num_workers: int = 0
    """DataLoader worker processes (0 = load in the training process; exact resume)."""
    balance: str = "none"
    """Which pieces training crops come from: ``none`` (every piece equally often),
    ``ensemble`` (single- and multi-instrument pieces half each, drum-only pieces a small
    share) or group shares such as ``single=1,multi=1,drums=0`` (see data/balance.py)."""

    # -- optimisation ---------------------------------------------------------------------
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    """Global L2 norm clip; 0 disables."""
    schedule: str = "constant"
    """``constant`` or ``cosine`` (decays to ``min_lr_ratio * lr`` at ``max_steps``)."""
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    # -- length --------------------------------------------------------------------------
    max_steps: int | None = None
    """Stop after this many optimisation steps (required for the cosine schedule)."""
    epochs: int | None = None
    """Stop after this many epochs (None with max_steps None: until time_limit or killed)."""
    epoch_size: int | None = None
    """Steps per epoch; default one pass over the training pieces."""
    time_limit: float | None = None
    """Stop (with a checkpoint) after this many seconds of wall-clock time."""

    # -- validation, checkpoints, logging ---------------------------------------------------
    valid_batches: int | None = 8
    """Validation batches per epoch (None: one crop from every validation piece)."""
    valid_len: int = 512
    """Events per validation crop."""
    valid_split: str = "valid"
    checkpoint_every: int | None = None
    """Also checkpoint every N steps (always at the end of each epoch and of the run)."""
    keep_checkpoints: int = 3
    log_every: int = 1
    """TensorBoard scalars every N steps."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0 only)."""

    # -- machine -------------------------------------------------------------------------
    device: str = "auto"
    """``auto`` (CUDA if present), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    precision: str = "auto"
    """``fp32``, ``bf16`` (autocast) or ``auto`` (bf16 on CUDA that supports it, else fp32)."""
    compile: bool = False
    """Wrap the model in ``torch.compile``."""
    threads: int | None = None
    """torch intra-op CPU threads for this process (None: torch's default)."""
    seed: int = 0

    # ------------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Check values; raise :class:`UserError` naming the first bad one. Returns self."""
        positive = ("batch_size", "batch_len", "valid_len", "keep_checkpoints", "log_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "epochs", "epoch_size", "valid_batches", "checkpoint_every",
                     "threads"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise UserError(f"{name} must be at least 1 (or unset), got {value}")
        if self.batch_len < 2:
            raise UserError(f"batch_len must be at least 2, got {self.batch_len}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"lr must be a positive number, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise UserError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.schedule == "cosine" and self.max_steps is None:
            raise UserError("the cosine schedule needs max_steps")
        if self.precision not in PRECISIONS:
            raise UserError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.warmup_steps < 0 or self.num_workers < 0 or self.grad_clip < 0:
            raise UserError("warmup_steps, num_workers and grad_clip must not be negative")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UserError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise UserError(f"time_limit must be positive, got {self.time_limit}")
        if len(self.betas) != 2:
            raise UserError(f"betas must be two numbers, got {self.betas}")
        from ..data.balance import parse_balance

        parse_balance(self.balance)  # raises a UserError naming a bad value
        if not self.data:
            raise UserError("no training data given (DATA argument or `data` in the config)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping, rejecting unknown keys with a :class:`UserError`."""
        return merge(cls(), values)


def _field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def merge(config: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """A copy of ``config`` with ``overrides`` applied (``None`` values are skipped).

    ``model`` and ``aug`` dicts are merged key by key rather than replaced.
    """
    names = _field_names()
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"unknown training option(s): {', '.join(unknown)}")
    values = config.to_dict()
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("model", "aug"):
            if not isinstance(value, Mapping):
                raise UserError(f"{key} must be a table of options, got {value!r}")
            values[key] = {**values[key], **dict(value)}
        else:
            values[key] = value
    values["betas"] = tuple(float(b) for b in values["betas"])
    return TrainConfig(**values)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a flat dict of TrainConfig fields."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    flat = {k: v for k, v in raw.items() if k != "train"}
    train = raw.get("train", {})
    if not isinstance(train, dict):
        raise UserError(f"config file {path}: [train] must be a table")
    flat.update(train)
    return flat
