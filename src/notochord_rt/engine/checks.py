"""Strict checks of single argument values, shared by constraints, ``feed`` and ``query``.

Each check returns the value converted to its plain Python type or raises
:class:`~notochord_rt.errors.InputError` whose message starts with the argument's name.
They are strict on purpose: strings are never parsed (``"0.1"`` is not a number here;
text protocols such as OSC decode their own values first), ``True``/``False`` are not
numbers, and NaN is never a valid value. Infinity is accepted only where the caller says
so (``finite=False``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .. import events as ev
from ..errors import InputError


def _not_a_number(v: Any) -> bool:
    """True for values ``float()`` would coerce but that are not numbers (text, bools)."""
    if isinstance(v, (str, bytes, bool, np.bool_)):
        return True
    dtype = getattr(v, "dtype", None)  # numpy / torch scalars and 0-d arrays
    if dtype is None:
        return False
    kind = getattr(dtype, "kind", None)
    if kind is not None:
        return kind not in "iuf"
    return not (getattr(dtype, "is_floating_point", False)
                or str(dtype).startswith(("torch.int", "torch.uint")))


def real(v: Any, name: str, lo: float = -math.inf, hi: float = math.inf, *,
         finite: bool = False) -> float:
    """``v`` as a float in ``[lo, hi]``; NaN, text and bools raise ``InputError``.

    ``finite=True`` also refuses ``±inf`` (whatever ``lo``/``hi`` say).
    """
    if _not_a_number(v):
        raise InputError(f"{name} must be a number, got {v!r}")
    try:
        x = float(v)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a number, got {v!r}") from e
    if math.isnan(x):
        raise InputError(f"{name} must be a number, got NaN")
    if finite and math.isinf(x):
        raise InputError(f"{name} must be finite, got {v!r}")
    if not lo <= x <= hi:
        raise InputError(f"{name} must be in [{lo:g}, {hi:g}], got {v!r}")
    return x


def integer(v: Any, name: str, lo: int, hi: int, what: str = "an int") -> int:
    """``v`` as an int in ``lo..hi``; only ints (Python or numpy) are accepted, not bools."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise InputError(f"{name} must be {what} in {lo}..{hi}, got {v!r}")
    if not lo <= int(v) <= hi:
        raise InputError(f"{name} must be {what} in {lo}..{hi}, got {v!r}")
    return int(v)


def inst(v: Any, name: str) -> int:
    """A real instrument id (1..320)."""
    return integer(v, name, ev.FIRST_MELODIC, ev.NUM_INSTRUMENTS, "an instrument (int)")


def pitch(v: Any, name: str) -> int:
    """A MIDI pitch (0..127)."""
    return integer(v, name, 0, ev.NUM_PITCHES - 1, "a pitch (int)")


def collection(v: Any, name: str, what: str) -> Iterable[Any]:
    """``v`` if it is a collection (not text, not a mapping, not a scalar); else ``InputError``."""
    if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, Iterable):
        raise InputError(f"{name} must be a collection of {what}, got {v!r}")
    if isinstance(v, np.ndarray) and v.ndim != 1:
        raise InputError(f"{name} must be a 1-d collection of {what}, got shape {v.shape}")
    return v


def flag(v: Any, name: str) -> bool:
    """A yes/no argument: a bool, or the ints 0 / 1 (what OSC clients send); not text."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)) and int(v) in (0, 1):
        return bool(v)
    raise InputError(f"{name} must be True/False (or 1/0), got {v!r}")
