"""The resumable part of a training run, stored without pickle.

A training state is the optimizer's state dict, the step counters and the random
number generator states. Tensors go to ``train_state.safetensors``; everything else
(parameter groups, counters, Python/numpy RNG states) to ``train_state.json``. Loading
therefore never executes code from the file, unlike ``torch.load`` on a pickle.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

TENSORS = "train_state.safetensors"
META = "train_state.json"
FORMAT = "notochord_rt.train_state/1"


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Current RNG states of python, numpy, torch (CPU and CUDA) as (tensors, json)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for k, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{k}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(py_state), py_gauss],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    kind, pos, has_gauss, gauss = meta["numpy"]
    keys = tensors["rng.numpy.keys"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, gauss))
    version, py_state, py_gauss = meta["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def save_train_state(
    folder: str | Path, optimizer: torch.optim.Optimizer, counters: dict[str, Any]
) -> None:
    """Write the optimizer state, ``counters`` (JSON-ready) and RNG states into ``folder``."""
    folder = Path(folder)
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, dict[str, Any]] = {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                extra.setdefault(str(index), {})[name] = value
    rng_tensors, rng_meta = capture_rng()
    tensors.update(rng_tensors)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in sd["param_groups"]]
    meta = {
        "format": FORMAT,
        "optimizer": type(optimizer).__name__,
        "param_groups": groups,
        "state_extra": extra,
        "counters": counters,
        "rng": rng_meta,
    }
    save_file(tensors, str(folder / TENSORS))
    (folder / META).write_text(json.dumps(meta))


def load_train_state(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a training state written by :func:`save_train_state` as (meta, tensors)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text())
        tensors = load_file(str(folder / TENSORS))
    except FileNotFoundError as e:
        raise CheckpointError(f"{folder} holds no training state ({e.filename} missing)") from None
    except (json.JSONDecodeError, OSError, ValueError) as e:
        raise CheckpointError(f"training state in {folder} is unreadable: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / META}: unknown format {meta.get('format')!r}")
    return meta, tensors


def restore_optimizer(
    optimizer: torch.optim.Optimizer, meta: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Load the optimizer state of a training state into ``optimizer`` (same parameters)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in meta["state_extra"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state does not fit this model: {e}") from None
