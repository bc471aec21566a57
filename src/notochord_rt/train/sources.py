"""Where the trainer gets its model and its crops: thin adapters to model/ and data/.

Keeping these few calls in one place means the training loop does not care how the
network is built or saved, or how crops are drawn.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from ..data.augment import Augment
from ..data.dataset import CropDataset
from ..errors import CheckpointError, InputError, UserError
from ..model.config import NotochordConfig
from ..model.network import NotochordNet

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"


# -- model ------------------------------------------------------------------------------
def new_model(overrides: dict[str, Any]) -> NotochordNet:
    """A freshly initialised network with ``overrides`` of the default hyper-parameters."""
    names = {f.name for f in dataclasses.fields(NotochordConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"unknown model option(s): {', '.join(unknown)}")
    values = dict(overrides)
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    try:
        return NotochordNet(NotochordConfig(**values))
    except (TypeError, ValueError) as e:
        raise UserError(f"bad model options: {e}") from None


SOFT_OPTIONS = ("time_pulse_fit", "time_pulse_vote", "time_pulse_grid", "time_res", "vel_res")
"""Model options a trained network can take as they are: they change how the heads'
outputs are placed or scored (pulse grids fitted to recent onsets or tracked, the
likelihood's bin widths), not the weights."""


def grow_model(model: NotochordNet, overrides: dict[str, Any], source: str) -> NotochordNet:
    """``model`` (loaded from ``source`` to start training from) with the model options
    that can be added to trained weights applied: ``time_pulse`` adds pulse components
    (:func:`~notochord_rt.model.pulse.widen_time_mixture`), ``pitch_copy`` motif copying
    (:func:`~notochord_rt.model.motif.widen_pitch_head`); the :data:`SOFT_OPTIONS` are
    set as given. Other options cannot change a
    trained architecture; they are logged and ignored."""
    from ..model.motif import widen_pitch_head
    from ..model.pulse import exponential_widths, widen_time_mixture

    rest = dict(overrides)
    for name, widen, what in (("time_pulse", widen_time_mixture, "pulse components"),
                              ("time_pulse_gain", exponential_widths, "exponential pulse widths"),
                              ("pitch_copy", widen_pitch_head, "motif copying")):
        value = rest.pop(name, None)
        if value is None or value == getattr(model.config, name):
            continue
        try:
            model = widen(model, value if name == "time_pulse_gain" else int(value))
        except (TypeError, ValueError) as e:
            raise UserError(f"cannot add {what} ({name}={value}) to {source}: {e}") from None
        model.train()
        log.info("added %s (%s=%s) to %s", what, name, value, source)
    # options that only change how outputs are read, not the weights' shapes
    soft = {k: rest.pop(k) for k in SOFT_OPTIONS if k in rest}
    soft = {k: v for k, v in soft.items() if v != getattr(model.config, k)}
    if soft:
        try:
            config = dataclasses.replace(model.config, **soft)
        except (TypeError, ValueError) as e:
            raise UserError(f"bad model option(s) {soft}: {e}") from None
        state = model.state_dict()
        model = NotochordNet(config)
        model.load_state_dict(state)
        model.train()
        log.info("model options changed for %s: %s", source, soft)
    if rest:
        log.warning("model options %s ignored: the architecture comes from %s",
                    sorted(rest), source)
    return model


def model_path(path: str | Path) -> Path:
    """The weights file of a checkpoint folder (or ``path`` itself if it is a file)."""
    p = Path(path)
    return p / MODEL_FILE if p.is_dir() else p


def load_model(path: str | Path) -> NotochordNet:
    """Load weights and config from a checkpoint folder, our file or a reference checkpoint."""
    p = model_path(path)
    if not p.exists():
        raise CheckpointError(f"no model weights at {p}")
    model = NotochordNet.load(p)
    model.train()
    return model


def save_model(model: NotochordNet, folder: Path) -> None:
    """Write ``model`` into a checkpoint folder."""
    model.save(folder / MODEL_FILE)


def freeze_rnn(model: NotochordNet) -> int:
    """Stop gradients to the GRU and its learned initial state; returns how many tensors."""
    frozen = [*model.rnn.parameters(), model.initial_state]
    for p in frozen:
        p.requires_grad_(False)
    return len(frozen)


# -- data -------------------------------------------------------------------------------
class DrawCrops(CropDataset):
    """Training crops indexed by ``(draw, piece)``.

    :class:`CropDataset` draws item k's crop and augmentation from ``(seed, epoch, k)``
    (validation crops from ``(seed, k)`` only). The trainer instead names each use of a
    piece by the pass ``draw`` over the data it belongs to (see
    :class:`~.batches.StepIndexer`), so a piece used twice in one step (small data sets)
    or in one validation still gets two different crops, and the crops of a step depend
    on nothing but the step, whichever worker loads them.
    """

    _draw = 0

    def __getitem__(self, key: Any) -> dict[str, torch.Tensor]:
        if isinstance(key, tuple):
            self._draw, key = int(key[0]), key[1]
        return super().__getitem__(key)

    def rng(self, k: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._draw, int(k), 0x7A1E])


def augment_options(overrides: dict[str, Any]) -> Augment:
    """Training augmentation with ``overrides`` of its defaults (``{"off": true}`` = none)."""
    values = dict(overrides)
    if values.pop("off", False):
        return Augment.none()
    try:
        return Augment(**values)
    except TypeError as e:
        names = ", ".join(f.name for f in dataclasses.fields(Augment))
        raise UserError(f"bad augmentation option(s) {sorted(values)}: choose from {names}") \
            from e
    except InputError as e:
        raise UserError(str(e)) from None


def open_dataset(root: str, split: str, length: int, aug: dict[str, Any], *,
                 training: bool, seed: int = 0) -> DrawCrops:
    """Crops of ``length`` events of a prepared split, indexed by ``(draw, piece)``:
    augmented for training, unaugmented (``mode="valid"``) otherwise."""
    if training:
        ds = DrawCrops(root, split, batch_len=length, mode="train",
                       augment=augment_options(aug), seed=seed)
    else:
        ds = DrawCrops(root, split, batch_len=length, mode="valid", seed=seed)
    if len(ds) == 0:
        raise UserError(f"split {split!r} of {root} holds no pieces")
    return ds


def collate(items: list[dict[str, torch.Tensor]], pitch_copy: int = 0,
            grid_lines: int = 0) -> dict[str, torch.Tensor]:
    """Stack items into the ``(B, T)`` batch of docs/architecture.md; with ``pitch_copy``
    > 0 also the motif candidates ``motif_cand`` / ``motif_valid`` (``[B, T-1, C]``,
    :func:`~notochord_rt.model.motif.sequence_candidates`), and with ``grid_lines`` > 0
    the pulse components' grid lines ``pulse_loc`` / ``pulse_valid`` (``[B, T-1, n]``,
    :func:`~notochord_rt.model.pulse.sequence_grid_lines`), so that data-loader workers
    compute them (Python per event) rather than the training loop."""
    batch = default_collate(items)
    if pitch_copy:
        from ..model.motif import sequence_candidates

        batch["motif_cand"], batch["motif_valid"] = sequence_candidates(
            batch["inst"], batch["pitch"], batch["vel"], pitch_copy)
    if grid_lines:
        from ..model.pulse import sequence_grid_lines

        loc, valid = sequence_grid_lines(batch["inst"].numpy(), batch["time"].numpy(),
                                         batch["vel"].numpy(), grid_lines)
        batch["pulse_loc"] = torch.from_numpy(loc[:, :-1])
        batch["pulse_valid"] = torch.from_numpy(valid[:, :-1])
    return batch
