"""Checkpoints: our safetensors format, resumable training state, and safe reference import.

**Model files** (ours) are one ``NAME.safetensors`` file: the tensors are the network's
``state_dict`` under its own names, and the safetensors metadata (string -> string) holds

* ``format`` = ``"notochord-rt"``, ``format_version`` = ``"1"``,
* ``config`` = the :class:`~.config.NotochordConfig` as JSON,
* any extra string metadata given to :func:`save_model` (e.g. ``source``).

Loading is strict and checks before it builds (:mod:`.checkpoint_checks`): the config
must lie within its declared bounds, and the tensor names, dtypes and shapes read from the
safetensors header must be those the config implies; then the weights must be finite.
Only then is the network built, so a file cannot make us allocate more than it holds.
Every failure is a :class:`~notochord_rt.errors.CheckpointError` naming what is wrong.
Nothing is unpickled.

**Training state** for resuming (optimizer state, step counters, RNG states) goes to a
separate ``NAME.train.pt`` (:func:`training_state_path`), written with ``torch.save`` and
read back with ``torch.load(weights_only=True)``: only tensors and plain Python data.

**Reference checkpoints** (a torch pickle with ``kw['model']`` hyper-parameters and
``model_state``) are read with ``torch.load(weights_only=True)`` plus an allow-list of a
few harmless types the reference trainer stores (paths, numpy arrays/scalars in its RNG
state); their hyper-parameters and tensors then pass the same checks as ours. Any other
pickled object, such as one whose ``__reduce__`` would call
``os.system``, makes the load fail *before* it is constructed; that is reported as a
refused, possibly malicious file. Parameter names are then converted to ours.

All writes go to a temporary file in the destination folder and are renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import pickle
import random
import re
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_write as _atomic_write
from ..errors import CheckpointError
from . import checkpoint_checks as checks
from .config import NotochordConfig

log = logging.getLogger(__name__)

FORMAT = "notochord-rt"
FORMAT_VERSION = "1"
TRAIN_FORMAT = "notochord-rt-train"
DEFAULT_NAME = "default"
DEFAULT_ASSET = "default.safetensors"

PathLike = str | os.PathLike


# -- small helpers ---------------------------------------------------------------------------
def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path`` then rename it over ``path``
    durably (:func:`notochord_rt.atomic.atomic_write`), creating missing folders."""
    return _atomic_write(path, write, make_parents=True)


def training_state_path(model_path: PathLike) -> Path:
    """``NAME.train.pt`` next to ``NAME.safetensors``."""
    p = Path(model_path)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.name
    return p.with_name(f"{stem}.train.pt")


def default_checkpoint() -> Path:
    """Path of the bundled ``default`` model; CheckpointError if it is not installed."""
    asset = resources.files("notochord_rt") / "assets" / DEFAULT_ASSET
    path = Path(str(asset))
    if not path.is_file():
        raise CheckpointError(
            f"the bundled '{DEFAULT_NAME}' model is not installed (no {DEFAULT_ASSET} in "
            "notochord_rt/assets); pass the path of a checkpoint instead")
    return path


def _file_kind(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` (zip or pickle) or raise CheckpointError."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; a checkpoint is a .safetensors file")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if head[:4] == b"PK\x03\x04":
        return "torch"
    # safetensors: an 8-byte little-endian header length, then the JSON header. Checked
    # before the pickle marker, since the length's low byte may itself be 0x80 (a torch
    # pickle never has '{' at offset 8: its magic number is there).
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch"
    raise CheckpointError(f"{path} is neither a safetensors file nor a torch checkpoint")


# -- our format ------------------------------------------------------------------------------
def save_model(model: nn.Module, path: PathLike, **metadata: str) -> Path:
    """Write ``model`` (weights + config) to ``path`` atomically; returns the path."""
    from safetensors.torch import save_file

    config: NotochordConfig = model.config  # type: ignore[assignment]
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta.update(format=FORMAT, format_version=FORMAT_VERSION,
                config=json.dumps(config.to_dict(), sort_keys=True))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_metadata(path: PathLike) -> dict[str, str]:
    """The string metadata of one of our checkpoints (CheckpointError if it is not one)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    checks.check_header_size(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a notochord-rt checkpoint (no format={FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format_version "
                              f"{meta.get('format_version')!r} (expected {FORMAT_VERSION})")
    return meta


def read_checked(path: PathLike) -> tuple[NotochordConfig, dict[str, Tensor]]:
    """Config and tensors (on the CPU) of one of our checkpoints, every check passed.

    The config and the header's names, dtypes and shapes are checked before a single
    tensor is read; the weights are then checked to be finite.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    meta = read_metadata(path)
    if "config" not in meta:
        raise CheckpointError(f"{path}: bad config in metadata (no 'config' entry)")
    config = checks.parse_config_json(meta["config"], str(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            checks.check_header_tensors(path, f, config)
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    checks.check_finite(state, str(path))
    return config, state


def build_model(cls: type, config: NotochordConfig, state: Mapping[str, Tensor],
                source: str) -> Any:
    """``cls(config)`` with ``state`` loaded strictly; call only after the checks passed.

    A failure here (memory, a subclass refusing the config) is still a CheckpointError.
    """
    try:
        model = cls(config)
        load_state_strict(model, state, source)
    except CheckpointError:
        raise
    except (RuntimeError, MemoryError, ValueError) as e:
        raise CheckpointError(f"{source}: cannot build the network ({e})") from None
    return model


def load_state_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model``; any key or shape mismatch is a CheckpointError."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
        raise CheckpointError(f"{source}: tensors do not match the network: {'; '.join(parts)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, the config "
                                  f"needs {tuple(want[k].shape)}")
    model.load_state_dict(dict(state), strict=True)


def load_model(cls: type, path: PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Build ``cls(config)`` from our checkpoint, a reference checkpoint, or ``"default"``.

    The model is returned in eval mode on ``map_location``.
    """
    if str(path) == DEFAULT_NAME:
        path = default_checkpoint()
    path = Path(path)
    if _file_kind(path) == "torch":
        config, state = read_reference(path)
    else:
        config, state = read_checked(path)
    return build_model(cls, config, state, str(path)).to(map_location).eval()


# -- reference checkpoints -------------------------------------------------------------------
def _allowed_globals() -> list:
    """Harmless types found in reference trainer checkpoints, under their pickled names."""
    try:
        from numpy._core import multiarray as np_multiarray  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray as np_multiarray

    allowed: list = []
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        for name in ("_reconstruct", "scalar"):
            allowed.append((getattr(np_multiarray, name), f"{module}.{name}"))
    allowed += [np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in ("u4", "i4", "i8", "f4", "f8", "bool")]
    for module in ("pathlib", "pathlib._local"):
        allowed += [(pathlib.PosixPath, f"{module}.PosixPath"),
                    (pathlib.PurePosixPath, f"{module}.PurePosixPath"),
                    (pathlib.PureWindowsPath, f"{module}.WindowsPath"),
                    (pathlib.PureWindowsPath, f"{module}.PureWindowsPath")]
    return allowed


def safe_torch_load(path: PathLike, allow_numpy_and_paths: bool = True) -> Any:
    """``torch.load(weights_only=True)`` that turns refusals into a clear CheckpointError."""
    path = Path(path)
    try:
        if allow_numpy_and_paths:
            with torch.serialization.safe_globals(_allowed_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.findall(r"GLOBAL ([\w.]+)", str(e)) or re.findall(r"global[: ]+([\w.]+)",
                                                                      str(e))
        what = f" ({found[0]})" if found else ""
        raise CheckpointError(
            f"refused to load {path}: it contains a pickled object that is not plain data"
            f"{what}. Unpickling it could run arbitrary code, so nothing was loaded.") from None
    except (RuntimeError, OSError, EOFError, ValueError, MemoryError) as e:
        text = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: unreadable torch checkpoint ({text})") from None


_GLU = re.compile(r"^net\.(\d+)\.(\d+)\.(weight|bias)$")
_OUT = re.compile(r"^net\.(\d+)\.(weight|bias)$")
_HEADS = {"h_proj": "h_proj", "projections.0": "inst_head", "projections.1": "pitch_head",
          "projections.2": "time_head", "projections.3": "vel_head"}
_RENAME = {"instrument_emb.weight": "inst_emb.weight", "initial_state.0": "initial_state",
           "time_emb.fs": "time_emb.freqs", "vel_emb.fs": "vel_emb.freqs",
           "end_proj.weight": "end_head.weight", "end_proj.bias": "end_head.bias"}


def _convert_mlp_key(rest: str, config: NotochordConfig) -> str | None:
    lin = 1 if config.dropout > 0 else 0  # the reference's Dropout shifts indices by one
    m = _GLU.match(rest)
    if m:
        layer, sub, kind = int(m[1]), int(m[2]), m[3]
        if layer < config.mlp_layers and sub in (lin, lin + 2):
            return f"layers.{layer}.{'linear' if sub == lin else 'norm'}.{kind}"
        return None
    m = _OUT.match(rest)
    if m and int(m[1]) == config.mlp_layers:
        return f"out.{m[2]}"
    return None


def convert_reference_state(state: Mapping[str, Tensor], config: NotochordConfig,
                            source: str = "reference checkpoint") -> dict[str, Tensor]:
    """Rename a reference ``model_state`` to ours, checking what is dropped.

    Dropped: the inference-state buffers ``cell_state_*`` and the distributions' ``lo`` /
    ``hi`` buffers (checked against the config). Unknown names are an error.
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    bounds = {"time_dist": config.time_bounds, "vel_dist": config.vel_bounds}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source}: model_state has a key that is not a string")
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: model_state[{key!r}] is not a tensor")
        if key.startswith("cell_state_"):
            continue
        dist, _, attr = key.partition(".")
        if dist in bounds and attr in ("lo", "hi"):
            want = bounds[dist][0 if attr == "lo" else 1]
            if value.numel() != 1 or not value.dtype.is_floating_point:
                raise CheckpointError(f"{source}: {key} is not a single number")
            if not abs(float(value) - want) <= 1e-6 * max(1.0, abs(want)):
                raise CheckpointError(f"{source}: {key} = {float(value)} but the "
                                      f"hyper-parameters say {want}")
            continue
        new = _RENAME.get(key)
        if new is None and key.startswith("rnn.rnn."):
            new = "rnn." + key[len("rnn.rnn."):]
        if new is None:
            for old_prefix, prefix in _HEADS.items():
                if key.startswith(old_prefix + "."):
                    rest = _convert_mlp_key(key[len(old_prefix) + 1:], config)
                    new = f"{prefix}.{rest}" if rest else None
                    break
        same = key in ("time_dist.bias", "vel_dist.bias", "pitch_emb.weight") or \
            key.startswith(("time_emb.proj.", "vel_emb.proj."))
        if new is None and same:
            new = key
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(f"{source}: unknown reference tensors: {', '.join(unknown[:8])}")
    return out


def _check_frequencies(state: Mapping[str, Tensor], config: NotochordConfig, source: str) -> None:
    from .network import SineEmbedding

    for name, n, (w0, w1), spacing in (
            ("time_emb.freqs", config.time_sines, config.time_wavelengths, "log"),
            ("vel_emb.freqs", config.vel_sines, config.vel_wavelengths, "linear")):
        if name not in state:
            continue
        want = SineEmbedding(n, 1, w0, w1, spacing).freqs
        got = state[name]
        if got.shape != want.shape or not torch.allclose(got.float(), want, rtol=1e-5):
            raise CheckpointError(f"{source}: {name} does not match the sine embedding the "
                                  "hyper-parameters describe")


def read_reference(path: PathLike) -> tuple[NotochordConfig, dict[str, Tensor]]:
    """Safely read a reference checkpoint: (our config, our-named state dict).

    The hyper-parameters must lie within our config's bounds, and the tensors must have
    the names, dtypes and shapes they imply and be finite
    (:func:`.checkpoint_checks.check_state`), all before anything is built.
    """
    path = Path(path)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, Mapping) or "model_state" not in ckpt:
        raise CheckpointError(f"{path}: not a reference Notochord checkpoint (no model_state)")
    if not isinstance(ckpt["model_state"], Mapping):
        raise CheckpointError(f"{path}: model_state is not a dict of tensors")
    kw = ckpt.get("kw") or {}
    hparams = kw.get("model", {}) if isinstance(kw, Mapping) else {}
    if not isinstance(hparams, Mapping):
        raise CheckpointError(f"{path}: kw['model'] is not a dict of hyper-parameters")
    config = checks.config_from(lambda: NotochordConfig.from_reference(hparams), str(path),
                                "unsupported hyper-parameters")
    config = dataclasses.replace(config, extra={"converted_from": path.name})
    state = convert_reference_state(ckpt["model_state"], config, str(path))
    checks.check_state(state, config, str(path))
    _check_frequencies(state, config, str(path))
    return config, state


# -- training state --------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU, CUDA if present) RNG states as tensors and plain data."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: PathLike, *, optimizer: Mapping[str, Any],
                        step: Mapping[str, int], rng: Mapping[str, Any] | None = None,
                        extra: Mapping[str, Any] | None = None) -> Path:
    """Atomically write what resuming needs besides the weights.

    ``optimizer`` is an ``optimizer.state_dict()``, ``step`` counters such as
    ``{"iteration": ..., "epoch": ..., "exposure": ...}``, ``rng`` defaults to
    :func:`capture_rng_state`; ``extra`` is any further plain data (e.g. the LR scheduler's
    state dict). Everything must be tensors or plain Python data.
    """
    payload = {"format": TRAIN_FORMAT, "format_version": FORMAT_VERSION,
               "optimizer": dict(optimizer), "step": {k: int(v) for k, v in step.items()},
               "rng": dict(rng) if rng is not None else capture_rng_state(),
               "extra": dict(extra or {})}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_training_state(path: PathLike) -> dict[str, Any]:
    """Read a training-state file safely (tensors and plain data only)."""
    data = safe_torch_load(path, allow_numpy_and_paths=False)
    if not isinstance(data, dict) or data.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path}: not a notochord-rt training-state file")
    return data
