"""Checks that a checkpoint must pass *before* a network is built from it.

A checkpoint is untrusted input: its config decides how much memory the network takes,
and its tensors end up in every later computation. So, in this order and without
allocating the network:

1. the safetensors header is of a sane size (:func:`check_header_size`);
2. the config JSON is small and shallow (:func:`parse_config_json`) and every value lies
   within the bounds :class:`~.config.NotochordConfig` declares;
3. the tensor names, dtypes and shapes equal those the config implies
   (:func:`expected_shapes`, computed from the config alone), read from the safetensors
   header (:func:`check_header_tensors`) or from the tensors of a reference checkpoint
   (:func:`check_state`);
4. every weight is finite (:func:`check_finite`).

Only then is the network built, so its size is bounded by the size of the file. Every
failure is a :class:`~notochord_rt.errors.CheckpointError` naming what is wrong.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from .config import NotochordConfig

MAX_HEADER_BYTES = 16 << 20
"""Largest safetensors header accepted (ours are a few kB: ~60 tensors and the config)."""
MAX_CONFIG_BYTES = 64 << 10
"""Largest config JSON accepted (ours is under 1 kB)."""
MAX_JSON_DEPTH = 8
"""Deepest nesting accepted in the config JSON (ours has depth 2: ``extra`` may nest a bit)."""

FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                "F64": torch.float64}
"""Weight dtypes a checkpoint may store (safetensors names); they are cast to the network's.
Integer or boolean weights are refused: casting them would hide a broken file."""

Shape = tuple[int, ...]


# -- the config ----------------------------------------------------------------------------
def check_header_size(path: Path) -> None:
    """Refuse a safetensors file whose announced header is huge or runs past the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if len(head) < 8:
        raise CheckpointError(f"{path}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: safetensors header of {n:,} bytes announced; at most "
                              f"{MAX_HEADER_BYTES:,} are accepted")
    if 8 + n > size:
        raise CheckpointError(f"{path}: safetensors header runs past the end of the file "
                              "(truncated?)")


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), computed without recursion."""
    depth, stack = 0, [(value, 0)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            depth = max(depth, d + 1)
            stack.extend((v, d + 1) for v in item)
    return depth


def parse_config_json(text: str, source: str) -> NotochordConfig:
    """The config stored in a checkpoint, after its size, depth and values are checked."""
    if len(text) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{source}: bad config in metadata (it is {len(text):,} "
                              f"characters long; at most {MAX_CONFIG_BYTES:,} are accepted)")
    try:
        data = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{source}: bad config in metadata (nested deeper than "
                              f"{MAX_JSON_DEPTH} levels)") from None
    except ValueError as e:
        raise CheckpointError(f"{source}: bad config in metadata (not JSON: {e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: bad config in metadata (not a JSON object)")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{source}: bad config in metadata (nested deeper than "
                              f"{MAX_JSON_DEPTH} levels)")
    return config_from(lambda: NotochordConfig.from_dict(data), source, "bad config in metadata")


def config_from(make: Any, source: str, what: str) -> NotochordConfig:
    """``make()`` with its refusals (bad values, wrong types) as one CheckpointError."""
    try:
        return make()
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise CheckpointError(f"{source}: {what} ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


# -- expected tensors ------------------------------------------------------------------------
def _mlp_shapes(prefix: str, n_in: int, hidden: int, n_out: int, config: NotochordConfig
                ) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    width = n_in
    for i in range(config.mlp_layers):
        shapes[f"{prefix}.layers.{i}.linear.weight"] = (2 * hidden, width)
        shapes[f"{prefix}.layers.{i}.linear.bias"] = (2 * hidden,)
        if config.norm == "layer":
            shapes[f"{prefix}.layers.{i}.norm.weight"] = (hidden,)
            shapes[f"{prefix}.layers.{i}.norm.bias"] = (hidden,)
        width = hidden
    shapes[f"{prefix}.out.weight"] = (n_out, width)
    shapes[f"{prefix}.out.bias"] = (n_out,)
    return shapes


def expected_shapes(config: NotochordConfig) -> dict[str, Shape]:
    """Name -> shape of every tensor of ``NotochordNet(config).state_dict()``, from the
    config alone (nothing is allocated). A test keeps it equal to the network's."""
    E, H, L = config.emb_size, config.rnn_hidden, config.rnn_layers
    shapes: dict[str, Shape] = {
        "initial_state": (L, 1, H),
        "time_dist.bias": (3 * config.time_mixture_components,),
        "vel_dist.bias": (3 * config.vel_components,),
        "inst_emb.weight": (config.n_inst_classes, E),
        "pitch_emb.weight": (config.n_pitch_classes, E),
        "time_emb.freqs": (config.time_sines,),
        "time_emb.proj.weight": (E, config.time_sines),
        "time_emb.proj.bias": (E,),
        "vel_emb.freqs": (config.vel_sines,),
        "vel_emb.proj.weight": (E, config.vel_sines),
        "vel_emb.proj.bias": (E,),
    }
    for layer in range(L):
        shapes[f"rnn.weight_ih_l{layer}"] = (3 * H, E if layer == 0 else H)
        shapes[f"rnn.weight_hh_l{layer}"] = (3 * H, H)
        shapes[f"rnn.bias_ih_l{layer}"] = (3 * H,)
        shapes[f"rnn.bias_hh_l{layer}"] = (3 * H,)
    shapes.update(_mlp_shapes("h_proj", H, E, E, config))
    for name, n_out in (("inst_head", config.n_inst_classes),
                        ("pitch_head", config.pitch_head_outputs),
                        ("time_head", 3 * config.time_mixture_components),
                        ("vel_head", 3 * config.vel_components)):
        shapes.update(_mlp_shapes(name, E, E, n_out, config))
    shapes["end_head.weight"] = (2, H)
    shapes["end_head.bias"] = (2,)
    return shapes


def _check_names(found: Iterable[str], want: Mapping[str, Shape], source: str) -> None:
    found = set(found)
    missing = sorted(set(want) - found)
    extra = sorted(found - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if extra:
            shown = [repr(k) if not k.isprintable() else k for k in extra[:8]]
            parts.append(f"unexpected {', '.join(shown)}{' ...' if len(extra) > 8 else ''}")
        raise CheckpointError(f"{source}: tensors do not match the network: {'; '.join(parts)}")


def _check_one(name: str, dtype: str, shape: Shape, want: Shape, source: str) -> None:
    if dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"{source}: {name} has dtype {dtype}; weights must be one of "
                              f"{', '.join(FLOAT_DTYPES)}")
    if shape != want:
        raise CheckpointError(f"{source}: {name} has shape {shape}, the config needs {want}")


def check_header_tensors(path: Path, handle: Any, config: NotochordConfig) -> None:
    """Names, dtypes and shapes in an open ``safe_open`` handle against the config."""
    want = expected_shapes(config)
    keys = list(handle.keys())
    _check_names(keys, want, str(path))
    for k in keys:
        sl = handle.get_slice(k)
        _check_one(k, str(sl.get_dtype()), tuple(int(n) for n in sl.get_shape()), want[k],
                   str(path))


_TORCH_NAMES = {v: k for k, v in FLOAT_DTYPES.items()}


def check_state(state: Mapping[str, Any], config: NotochordConfig, source: str) -> None:
    """Names, dtypes, shapes and finiteness of in-memory tensors against the config."""
    want = expected_shapes(config)
    _check_names(state, want, source)
    for k, v in state.items():
        if not isinstance(v, Tensor):
            raise CheckpointError(f"{source}: {k} is a {type(v).__name__}, not a tensor")
        dtype = _TORCH_NAMES.get(v.dtype, str(v.dtype).removeprefix("torch."))
        _check_one(k, dtype, tuple(v.shape), want[k], source)
    check_finite(state, source)


def check_finite(state: Mapping[str, Tensor], source: str) -> None:
    """Refuse NaN or infinite weights (they only show up later as NaN output)."""
    bad = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source}: non-finite (NaN or infinite) values in "
                              f"{', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}")
