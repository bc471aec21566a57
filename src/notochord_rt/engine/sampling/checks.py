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

from ... import events as ev
from ...errors import InputError, short_repr

show = short_repr
"""``repr(v)`` cut to 60 characters (hostile values can be huge)."""


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
    if type(v) is float and lo <= v <= hi and not (finite and math.isinf(v)):
        return v  # the common case, fast
    if _not_a_number(v):
        raise InputError(f"{name} must be a number, got {show(v)}")
    try:
        x = float(v)
    except OverflowError:  # an int beyond float range
        x = math.inf if v > 0 else -math.inf
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a number, got {show(v)}") from e
    if math.isnan(x):
        raise InputError(f"{name} must be a number, got NaN")
    if finite and math.isinf(x):
        raise InputError(f"{name} must be finite, got {show(v)}")
    if not lo <= x <= hi:
        raise InputError(f"{name} must be in [{lo:g}, {hi:g}], got {show(v)}")
    return x


def integer(v: Any, name: str, lo: int, hi: int, what: str = "an int") -> int:
    """``v`` as an int in ``lo..hi``; only ints (Python or numpy) are accepted, not bools."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise InputError(f"{name} must be {what} in {lo}..{hi}, got {show(v)}")
    if not lo <= int(v) <= hi:
        raise InputError(f"{name} must be {what} in {lo}..{hi}, got {show(v)}")
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
        raise InputError(f"{name} must be a collection of {what}, got {show(v)}")
    if isinstance(v, np.ndarray) and v.ndim != 1:
        raise InputError(f"{name} must be a 1-d collection of {what}, got shape {v.shape}")
    return v


def ints(v: Any, name: str, lo: int, hi: int, one: str = "an int") -> tuple[int, ...]:
    """A collection of ints, each in ``lo..hi``, as a tuple (order and repeats kept).

    Ranges are bounds-checked before they are expanded (``range(10**12)`` is refused, not
    materialised); int arrays and lists of plain ints are checked in C loops.
    """
    if isinstance(v, range):
        if len(v) and not (lo <= min(v[0], v[-1]) and max(v[0], v[-1]) <= hi):
            raise InputError(f"{name} must only hold values in {lo}..{hi}, got {show(v)}")
        return tuple(v)
    if isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "iu":
        out = tuple(v.tolist())
    else:
        out = tuple(collection(v, name, "ints"))
    if all(type(x) is int for x in out) and (not out or (min(out) >= lo and max(out) <= hi)):
        return out
    return tuple(integer(x, name, lo, hi, one) for x in out)


def flag(v: Any, name: str) -> bool:
    """A yes/no argument: a bool, or the ints 0 / 1 (what OSC clients send); not text."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)) and int(v) in (0, 1):
        return bool(v)
    raise InputError(f"{name} must be True/False (or 1/0), got {show(v)}")
