"""What a caller may ask of the next sampled event: the :class:`Constraints` dataclass.

Covers everything of the reference's ``EventConstraints`` (reference §5.4) plus fixed
instrument/pitch, several weighted time and velocity intervals, instrument/velocity
temperatures and a sub-event order. A ``Constraints`` is plain data; :meth:`validate`
checks it and :func:`per_inst` turns scalar-or-dict fields into ``(321,)`` arrays for the
vectorised support (:mod:`notochord_rt.engine.support`).

Hard vs soft: note maps, fixed values, ``min_time``, time and velocity ranges are hard
(an empty result raises :class:`~notochord_rt.errors.NoPossibleEvents`). ``max_time``,
polyphony and duration limits are *soft*: they carry a penalty (:class:`Soft`) and, when
they cannot all hold, the ones with the smallest total cost are broken first. Two
guarantees override everything: a non-external note older than its ``max_duration`` is
released at once, and an instrument above ``max_polyphony`` gets a note-off at once.

Temperatures follow the reference: a value ``<= 1`` is nucleus (top-p) filtering, a
value ``> 1`` a temperature (probabilities raised to ``1/T``); 1 changes nothing. This
holds for ``inst_temp``, ``pitch_temp`` and ``rhythm_temp`` (top-p over the time
mixture's components). ``timing_temp`` and ``vel_temp`` scale the width of the chosen
time / velocity component (0 = its location exactly).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Union

import numpy as np

from .. import events as ev
from ..errors import InputError

N_I = ev.N_INST_CLASSES  # 321
N_P = ev.N_PITCH_CLASSES  # 129

NoteMap = Union[Mapping[int, Iterable[int]], np.ndarray]  # noqa: UP007
PerInst = Union[float, Mapping[int, float]]  # noqa: UP007
Interval = Union[tuple[float, float], tuple[float, float, float]]  # noqa: UP007


class Soft(str, Enum):
    """Soft constraints, named by the :class:`Constraints` field they come from."""

    MIN_POLY = "min_polyphony"
    MAX_POLY = "max_polyphony"
    MIN_DUR = "min_duration"
    MAX_DUR = "max_duration"
    MAX_TIME = "max_time"


DEFAULT_PENALTY: dict[Soft, float] = {
    Soft.MIN_POLY: 1.0,
    Soft.MAX_POLY: 3.0,
    Soft.MIN_DUR: 2.0,
    Soft.MAX_DUR: 2.0,
    Soft.MAX_TIME: 0.5,
}

ORDER_LETTERS = frozenset("iptv")


@dataclass
class Constraints:
    """Constraints and steering for one :meth:`Notochord.sample` call.

    Note maps are ``{inst: pitches}`` or boolean ``(321, 129)`` masks; ``None`` means
    every instrument 1..320 with all 128 pitches (note-on) and the held notes of the
    note-on instruments (note-off). Sounding
    notes are always removed from the note-on map and silent ones from the note-off map.
    Per-instrument fields accept a scalar or ``{inst: value}`` (missing keys take the
    default). ``time_ranges``/``vel_ranges`` are lists of ``(lo, hi)`` or ``(lo, hi,
    weight)`` closed intervals; velocity ranges restrict note-ons only (use the note-off
    map, or ``vel=0``, for note-offs). The weights multiply the model's mass in each
    interval when choosing between them.
    """

    note_on_map: NoteMap | None = None
    note_off_map: NoteMap | None = None
    inst: int | None = None
    pitch: int | None = None
    time: float | None = None
    vel: float | None = None
    time_ranges: list[Interval] | None = None
    vel_ranges: list[Interval] | None = None
    min_time: float = 0.0
    max_time: float = math.inf
    min_vel: PerInst = 0.0
    max_vel: PerInst = ev.VEL_MAX
    min_polyphony: PerInst = 0
    max_polyphony: PerInst = 128
    min_duration: PerInst = 0.0
    max_duration: PerInst = math.inf
    penalty: dict[Soft, float] = field(default_factory=lambda: dict(DEFAULT_PENALTY))
    inst_temp: float = 1.0
    pitch_temp: float = 1.0
    rhythm_temp: float = 1.0
    timing_temp: float = 1.0
    vel_temp: float = 1.0
    truncate_quantile_time: tuple[float, float] = (0.0, 1.0)
    truncate_quantile_pitch: tuple[float, float] = (0.0, 1.0)
    truncate_quantile_vel: tuple[float, float] = (0.0, 1.0)
    index_pitch: int | None = None
    steer_density: float | None = 0.5
    inst_weights: Mapping[int, float] = field(default_factory=dict)
    external: set[int] = field(default_factory=set)
    order: str | None = None

    # -- checking ---------------------------------------------------------------------------
    def validate(self) -> Constraints:
        """Raise :class:`InputError` naming the first bad field; return ``self``."""
        for name in ("note_on_map", "note_off_map"):
            m = getattr(self, name)
            if isinstance(m, np.ndarray):
                if m.shape != (N_I, N_P) or m.dtype != bool:
                    raise InputError(f"{name} as an array must be bool {(N_I, N_P)}, got "
                                     f"{m.dtype} {m.shape}")
            elif m is not None:
                if not isinstance(m, Mapping):
                    raise InputError(f"{name} must be a dict {{inst: pitches}}, got {m!r}")
                for i, ps in m.items():
                    _check_inst(i, name)
                    for p in ps:
                        _check_pitch(p, name)
        if self.inst is not None:
            _check_inst(self.inst, "inst")
        if self.pitch is not None:
            _check_pitch(self.pitch, "pitch")
        if self.time is not None:
            _check_number(self.time, "time", 0.0, math.inf)
        if self.vel is not None:
            _check_number(self.vel, "vel", 0.0, ev.VEL_MAX)
        for name in ("time_ranges", "vel_ranges"):
            r = getattr(self, name)
            if r is not None:
                intervals(r, name)
        _check_number(self.min_time, "min_time", 0.0, math.inf, allow_inf=False)
        if math.isnan(float(self.max_time)) or float(self.max_time) < 0:
            raise InputError(f"max_time must be a number >= 0, got {self.max_time!r}")
        for name, lo, hi in (
            ("min_vel", -math.inf, math.inf),
            ("max_vel", -math.inf, math.inf),
            ("min_polyphony", 0, math.inf),
            ("max_polyphony", 0, math.inf),
            ("min_duration", 0, math.inf),
            ("max_duration", 0, math.inf),
        ):
            per_inst(getattr(self, name), name, lo, hi)
        soft_names = {s.value for s in Soft}
        for k, v in self.penalty.items():
            if not (isinstance(k, Soft) or k in soft_names):
                raise InputError(f"penalty has an unknown key {k!r} (known: "
                                 f"{', '.join(sorted(soft_names))})")
            _check_number(v, f"penalty[{Soft(k).value}]", 0.0, math.inf, allow_inf=False)
        for name in ("inst_temp", "pitch_temp", "rhythm_temp", "timing_temp", "vel_temp"):
            _check_number(getattr(self, name), name, 0.0, math.inf, allow_inf=False)
        for name in ("truncate_quantile_time", "truncate_quantile_pitch",
                     "truncate_quantile_vel"):
            q = getattr(self, name)
            try:
                lo, hi = (float(x) for x in q)
            except (TypeError, ValueError) as e:
                raise InputError(f"{name} must be a pair (lo, hi), got {q!r}") from e
            if not (0.0 <= lo < hi <= 1.0):
                raise InputError(f"{name} must satisfy 0 <= lo < hi <= 1, got {q!r}")
        if self.index_pitch is not None and not (
            isinstance(self.index_pitch, (int, np.integer)) and 0 <= self.index_pitch < N_P
        ):
            raise InputError(f"index_pitch must be an int in 0..128, got {self.index_pitch!r}")
        if self.steer_density is not None:
            _check_number(self.steer_density, "steer_density", 0.0, 1.0)
        for i, w in self.inst_weights.items():
            _check_inst(i, "inst_weights")
            _check_number(w, f"inst_weights[{i}]", 0.0, math.inf, allow_inf=False)
        for i in self.external:
            _check_inst(i, "external")
        if self.order is not None:
            check_order(self.order)
        return self

    def penalty_of(self, soft: Soft) -> float:
        """The cost of breaking ``soft`` (the default when not given)."""
        for k, v in self.penalty.items():
            if Soft(k) is soft:
                return float(v)
        return DEFAULT_PENALTY[soft]


# -- helpers ------------------------------------------------------------------------------
def check_order(order: str) -> str:
    """Validate an order: a permutation of ``"iptv"`` or ``"random"``."""
    if order == "random":
        return order
    if not isinstance(order, str) or len(order) != 4 or set(order) != ORDER_LETTERS:
        raise InputError(f"order must be a permutation of 'iptv' or 'random', got {order!r}")
    return order


def _check_inst(i, name: str) -> None:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not (
        ev.FIRST_MELODIC <= int(i) <= ev.NUM_INSTRUMENTS
    ):
        raise InputError(f"{name}: instrument must be an int in 1..320, got {i!r}")


def _check_pitch(p, name: str) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not (
        0 <= int(p) < ev.NUM_PITCHES
    ):
        raise InputError(f"{name}: pitch must be an int in 0..127, got {p!r}")


def _check_number(v, name: str, lo: float, hi: float, allow_inf: bool = True) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a number, got {v!r}") from e
    if math.isnan(x) or (not allow_inf and math.isinf(x)) or not (lo <= x <= hi):
        raise InputError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")
    return x


def intervals(spec: Iterable[Interval], name: str) -> np.ndarray:
    """Validated ``(n, 3)`` float array ``[lo, hi, weight]``, sorted, disjoint.

    Raises :class:`InputError` for NaN, ``lo > hi``, negative weights or overlaps.
    """
    rows = []
    for r in spec:
        try:
            vals = [float(x) for x in r]
        except (TypeError, ValueError) as e:
            raise InputError(f"{name}: each interval is (lo, hi[, weight]), got {r!r}") from e
        if len(vals) == 2:
            vals.append(1.0)
        if len(vals) != 3 or any(math.isnan(x) for x in vals):
            raise InputError(f"{name}: each interval is (lo, hi[, weight]), got {r!r}")
        lo, hi, w = vals
        if lo > hi or not (0.0 <= w < math.inf):
            raise InputError(f"{name}: need lo <= hi and a weight >= 0, got {r!r}")
        rows.append((lo, hi, w))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    if len(arr) > 1 and np.any(arr[1:, 0] <= arr[:-1, 1]):
        raise InputError(f"{name}: intervals must not overlap or touch, got {list(spec)!r}")
    return arr


def per_inst(value: PerInst, name: str, lo: float = -math.inf, hi: float = math.inf,
             default: float | None = None) -> np.ndarray:
    """A scalar-or-``{inst: value}`` field as a float ``(321,)`` array, validated."""
    if isinstance(value, Mapping):
        if default is None:
            default = float(Constraints.__dataclass_fields__[name].default)  # type: ignore[arg-type]
        out = np.full(N_I, default, dtype=np.float64)
        for i, v in value.items():
            _check_inst(i, name)
            out[int(i)] = _check_number(v, f"{name}[{i}]", lo, hi)
        return out
    return np.full(N_I, _check_number(value, name, lo, hi), dtype=np.float64)


def note_mask(note_map: NoteMap | np.ndarray) -> np.ndarray:
    """A ``{inst: pitches}`` map (or a mask) as a new boolean ``(321, 129)`` mask."""
    if isinstance(note_map, np.ndarray):
        return note_map.copy()
    mask = np.zeros((N_I, N_P), dtype=bool)
    for i, ps in note_map.items():
        ps = list(ps)
        if ps:
            mask[int(i), np.asarray(ps, dtype=np.intp)] = True
    return mask


def inst_mask(insts: Iterable[int]) -> np.ndarray:
    """A set of instruments as a boolean ``(321,)`` mask."""
    m = np.zeros(N_I, dtype=bool)
    idx = np.fromiter((int(i) for i in insts), dtype=np.intp)
    m[idx] = True
    return m


DEFAULT_ON = np.zeros((N_I, N_P), dtype=bool)
DEFAULT_ON[ev.FIRST_MELODIC:, : ev.NUM_PITCHES] = True
DEFAULT_ON.setflags(write=False)
"""Every real instrument with every real pitch (start tokens excluded)."""
