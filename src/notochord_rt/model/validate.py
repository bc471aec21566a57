"""Checks of user-supplied event sequences before they reach the network.

Every failure is an :class:`~notochord_rt.errors.InputError` that names the argument and
says what is wrong, so a bad call never turns into NaNs or an index error deep in torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..events import CANONICAL_ORDER


def as_1d(name: str, value: Any) -> np.ndarray:
    """``value`` (list, numpy array, tensor, scalar-free) as a 1-D float64 numpy array."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a 1-D sequence of numbers: {e}") from None
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    return arr


def check_ids(name: str, arr: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Whole numbers in ``lo..hi`` (inclusive), as int64."""
    bad = ~np.isfinite(arr) | (arr != np.round(arr)) | (arr < lo) | (arr > hi)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InputError(f"{name}[{k}] = {arr[k]!r} is not an integer in {lo}..{hi}")
    return arr.astype(np.int64)


def check_range(name: str, arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Finite numbers in ``[lo, hi]`` (``hi`` may be ``inf``: then only finiteness)."""
    bad = ~np.isfinite(arr) | (arr < lo) | (arr > hi)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        what = f"a finite number >= {lo}" if np.isinf(hi) else f"a number in [{lo}, {hi}]"
        raise InputError(f"{name}[{k}] = {arr[k]!r} is not {what}")
    return arr


def check_same_length(arrays: Sequence[tuple[str, np.ndarray]]) -> int:
    """Common length of named 1-D arrays; raises naming the first that differs."""
    (first_name, first), *rest = arrays
    n = len(first)
    for name, arr in rest:
        if len(arr) != n:
            raise InputError(
                f"{name} has length {len(arr)} but {first_name} has length {n}; "
                "all sub-event sequences must have the same length")
    return n


def check_order(order: Any) -> str:
    """A permutation of :data:`~notochord_rt.events.CANONICAL_ORDER` (case-insensitive)."""
    if not isinstance(order, str) or sorted(order.lower()) != sorted(CANONICAL_ORDER):
        raise InputError(f"order must be a permutation of {CANONICAL_ORDER!r}, got {order!r}")
    return order.lower()
