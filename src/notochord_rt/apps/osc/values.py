"""Argument values of the OSC server, checked and bounded (see :mod:`.osc_protocol`).

Anyone who can send a datagram can send anything, so every value is bounded before it
is used: JSON strings are decoded only up to :data:`MAX_STRING` characters,
:data:`MAX_DEPTH` levels and :data:`MAX_ITEMS` values; numbers must be finite and within
:data:`MAX_ABS` (``inf`` only for upper bounds); a handle must be a short scalar. Each
check raises :class:`~notochord_rt.errors.InputError` naming the bad argument.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from ... import events as ev
from ...engine.sampling.constraints import FIELDS, Constraints
from ...errors import InputError, short_repr
from ..musical import MusicalDefaults

PREFIX = "/notochord"
SHARED = 0  # the shared session
MAX_STRING = 4096  # characters of one string argument
MAX_DEPTH = 6  # nesting of a decoded JSON value
MAX_ITEMS = 4096  # values in one decoded argument
MAX_ABS = 1e6  # largest magnitude of a number argument (seconds, velocities, weights)
MAX_HANDLE = 64  # characters / bytes of a string / blob handle
MAX_MESSAGE = 160  # characters of an error reply's message
_CONSTRAINT_FIELDS = {f.name for f in dataclasses.fields(Constraints)}


# -- values ---------------------------------------------------------------------------------
def _check_size(value: Any, depth: int = 0, count: list[int] | None = None) -> None:
    """Raise :class:`InputError` if ``value`` nests deeper than :data:`MAX_DEPTH` or holds
    more than :data:`MAX_ITEMS` values (walks at most that many)."""
    count = [0] if count is None else count
    count[0] += 1
    if count[0] > MAX_ITEMS:
        raise InputError(f"a value holds more than {MAX_ITEMS} items")
    if isinstance(value, (list, dict)):
        if depth >= MAX_DEPTH:
            raise InputError(f"a value is nested deeper than {MAX_DEPTH} levels")
        for v in (value.values() if isinstance(value, dict) else value):
            _check_size(v, depth + 1, count)


def decode(value: Any) -> Any:
    """A string that parses as JSON becomes the decoded value; anything else is unchanged.

    Raises :class:`InputError` for a string over :data:`MAX_STRING` characters or a value
    nested deeper than :data:`MAX_DEPTH` / holding more than :data:`MAX_ITEMS` values.
    """
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise InputError(f"a string of {len(value)} characters (at most {MAX_STRING})")
        try:
            out = json.loads(value)
        except RecursionError:
            raise InputError(f"a JSON value nested deeper than {MAX_DEPTH} levels") from None
        except ValueError:
            return value
        _check_size(out)
        return out
    if isinstance(value, (list, tuple)):
        out = [decode(v) for v in value]
        _check_size(out)
        return out
    return value


def check_handle(value: Any) -> Any:
    """The handle if it can be echoed (a short string / blob, a number, a bool, nil)."""
    if value is None or isinstance(value, (bool, int)) and -2**63 <= value < 2**63:
        return value
    if isinstance(value, float) and math.isfinite(value) and abs(value) < 3.4e38:
        return value
    if isinstance(value, (str, bytes)) and len(value) <= MAX_HANDLE:
        return value
    raise InputError(f"handle must be a number, or a string or blob of at most {MAX_HANDLE} "
                     f"characters; got a {type(value).__name__}"
                     + (f" of {len(value)}" if isinstance(value, (str, bytes, list)) else ""))


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise InputError(f"{name} must be an integer, got {_short(value)}")
    if not lo <= int(value) <= hi:
        raise InputError(f"{name} must be in {lo}..{hi}, got {int(value)}")
    return int(value)


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise InputError(f"{name} must be true/false (or 1/0), got {_short(value)}")


def _float(value: Any, name: str) -> float:
    """A finite number within :data:`MAX_ABS`; ``inf`` only for upper bounds (``max_*``)."""
    inf_ok = name.startswith(("max_", "penalty"))
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity"):
        value = math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number, got {_short(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range
        value = math.inf if value > 0 else -math.inf
    if value == math.inf and inf_ok:
        return value
    if not (math.isfinite(value) and abs(value) <= MAX_ABS):
        raise InputError(f"{name} must be a finite number within ±{MAX_ABS:g}, got {_short(value)}")
    return value


def _short(value: Any, n: int = 40) -> str:
    return short_repr(value, n)


def _inst(value: Any, name: str) -> int:
    """An instrument id, or a name such as ``"violin"`` / ``"drums"`` / ``"anon2"``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{name}: expected an instrument id or name, got {_short(value)}")
    if isinstance(value, float):
        value = _int(value, name, ev.FIRST_MELODIC, ev.NUM_INSTRUMENTS)
    if isinstance(value, str) and len(value) > 64:
        raise InputError(f"{name}: an instrument name of {len(value)} characters")
    try:
        return ev.parse_instrument(value)
    except ValueError as e:
        raise InputError(f"{name}: {e}") from None


def _inst_dict(value: Any, name: str, convert) -> dict[int, Any]:
    if not isinstance(value, Mapping):
        raise InputError(f"{name} must be a dict {{instrument: ...}}, got {_short(value)}")
    return {_inst(k, f"{name} key"): convert(v, f"{name}[{k}]") for k, v in value.items()}


def _ints(value: Any, name: str) -> list[int]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise InputError(f"{name} must be a list of integers, got {_short(value)}")
    return [_int(v, name, -2**31, 2**31 - 1) for v in value]


def _intervals(value: Any, name: str) -> list[tuple[float, ...]]:
    if not isinstance(value, list) or not all(isinstance(r, list) for r in value):
        raise InputError(f"{name} must be a list of [lo, hi] or [lo, hi, weight], got "
                         f"{_short(value)}")
    return [tuple(_float(x, name) for x in r) for r in value]


# -- our sample: Constraints fields by name --------------------------------------------------
def _wire_number(value: Any, name: str) -> Any:
    return _float(value, name)


def _wire_numbers(value: Any, name: str) -> Any:
    """A list (pair, intervals) of numbers as sent: each number bounded like a float."""
    if not isinstance(value, list):
        return value  # the field's converter names the expected shape
    return [_wire_numbers(v, name) if isinstance(v, list) else _float(v, name) for v in value]


def _wire_map(value: Any, name: str, convert) -> Any:
    if not isinstance(value, Mapping):
        return convert(value, name) if convert is _float else value
    return _inst_dict(value, name, convert)


#: How an OSC value of each :data:`~notochord_rt.engine.sampling.constraints.KINDS` kind
#: reaches the field's converter: instruments may be names (``"violin"``), dict keys arrive
#: as strings, ``"inf"`` is a number, true/false may be 1/0, one pitch may stand for a list,
#: and every number is bounded by :data:`MAX_ABS`. The rest is the field table's job.
_WIRE = {
    "real": _wire_number,
    "bpm": _wire_number,
    "int": lambda v, n: _int(v, n, -2**31, 2**31 - 1),
    "inst": _inst,
    "inst_set": lambda v, n: [_inst(i, n) for i in (v if isinstance(v, list) else [v])],
    "note_map": lambda v, n: _wire_map(v, n, _ints),
    "per_inst": lambda v, n: _wire_map(v, n, _float),
    "inst_weights": lambda v, n: _wire_map(v, n, _float),
    "intervals": _wire_numbers,
    "quantile": _wire_numbers,
    "penalty": lambda v, n: ({k: _float(x, f"{n}[{k}]") for k, x in v.items()}
                             if isinstance(v, Mapping) else v),
    "bool": _bool,
    "order": lambda v, n: v,
    "grid": lambda v, n: v,
    "inst_grid": lambda v, n: _wire_map(v, n, lambda g, _: g),
}


def constraint_value(name: str, value: Any) -> Any:
    """One decoded OSC value as the :class:`Constraints` field ``name`` holds it: OSC's
    spellings normalised (:data:`_WIRE`), then checked and converted by the field's row of
    the one field table, :data:`~notochord_rt.engine.sampling.constraints.FIELDS`."""
    field = FIELDS.get(name)
    if field is None:
        raise InputError(f"unknown constraint {name!r}")
    if value is not None:
        value = _WIRE[field.kind](value, name)
    return field.convert(value, name)


def sample_constraints(kw: Mapping[str, Any],
                       defaults: MusicalDefaults | None = None) -> Constraints:
    """A validated :class:`Constraints` from ``{field name: decoded OSC value}``.

    ``defaults``: the musical defaults (:mod:`.musical`) filled in for the temperature and
    minimum-duration fields the client left out (``None``: the model as it is).
    """
    unknown = sorted(set(kw) - _CONSTRAINT_FIELDS)
    if unknown:
        raise InputError(f"unknown constraint(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(_CONSTRAINT_FIELDS))}")
    values = {k: constraint_value(k, v) for k, v in kw.items()}
    if defaults is not None:
        filled = {"pitch_temp": defaults.pitch_temp, "inst_temp": defaults.inst_temp,
                  "vel_temp": defaults.vel_temp, **defaults.shaping(),
                  "min_duration": defaults.min_durations()}
        values = {**{k: v for k, v in filled.items() if k not in values}, **values}
    return Constraints(**values).validate()



_QUERY_NUMBERS = ("next_pitch", "next_time", "next_vel", "instrument_temp", "pitch_temp",
                  "rhythm_temp", "timing_temp", "velocity_temp", "index_pitch", "min_time",
                  "max_time", "min_vel", "max_vel")
_QUERY_FLAGS = ("allow_anon", "allow_end", "return_params")


def query_values(kw: Mapping[str, Any]) -> dict[str, Any]:
    """Reference ``query`` arguments with their OSC types checked here (numbers finite and
    in range, flags true/false), whatever the engine checks after; other values as given."""
    out = dict(kw)
    for name, value in kw.items():
        if value is None:
            continue
        if name in _QUERY_NUMBERS:
            v = _float(value, name)
            out[name] = int(v) if name in ("next_pitch", "index_pitch") and v.is_integer() \
                else v
        elif name in _QUERY_FLAGS:
            out[name] = _bool(value, name)
    return out


def session_key(value: Any) -> int | str:
    """``0`` (the shared session) or a session token (a short string), as given."""
    if isinstance(value, str) and value.strip() == "0":
        return SHARED
    if not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0:
        return SHARED
    if isinstance(value, str) and 0 < len(value) <= 64:
        return value
    raise InputError(f"session must be 0 (the shared session) or the token that "
                     f"{PREFIX}/session/open returned, got {_short(value)}")
