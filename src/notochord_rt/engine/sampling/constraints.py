"""What a caller may ask of the next sampled event: the :class:`Constraints` dataclass.

Covers everything of the reference's ``EventConstraints`` (docs/design.md §6.1) plus fixed
instrument/pitch, several weighted time and velocity intervals, instrument/velocity
temperatures and a sub-event order. A ``Constraints`` is plain data; :meth:`validate`
checks it and :func:`per_inst` turns scalar-or-dict fields into ``(321,)`` arrays for the
vectorised support (:mod:`notochord_rt.engine.sampling.support`).

Checking is driven by one table, :data:`FIELDS` (name, kind, allowed range, converter of
every field; helpers in :mod:`.checks`): each bad field raises
:class:`~notochord_rt.errors.InputError` naming it. Values are never coerced from text
(``max_polyphony="3"`` is an error), bools are not numbers, NaN is refused everywhere,
and a fixed ``time`` must lie in the model's time support ``[0, 10]`` s (``inf`` is an
error, not an event at ``t = inf``). Validation runs when constraints are compiled
(:func:`~notochord_rt.engine.sampling.support.compile_constraints`), not per sampled event when
a compiled set is reused.

Hard vs soft: note maps, fixed values, ``min_time``, time and velocity ranges are hard
(an empty result raises :class:`~notochord_rt.errors.NoPossibleEvents`). ``max_time``,
polyphony and duration limits are *soft*: they carry a penalty (:class:`Soft`) and, when
they cannot all hold, the ones with the smallest total cost are broken first and named
in the event's ``broken``. A soft constraint never overrides a hard one (a
``min_polyphony`` note-on happens inside every hard constraint). Two guarantees override
everything but the hard time constraints: a non-external note older than its
``max_duration`` is released at once, and an instrument above ``max_polyphony`` gets a
note-off at once, both at the earliest allowed time; such a forced event lists every
constraint it breaks, hard or soft, in ``broken`` (see :mod:`.guards`).

Temperatures follow the reference: a value ``<= 1`` is nucleus (top-p) filtering, a
value ``> 1`` a temperature (probabilities raised to ``1/T``); 1 changes nothing. This
holds for ``inst_temp``, ``pitch_temp`` and ``rhythm_temp`` (top-p over the time
mixture's components). ``timing_temp`` and ``vel_temp`` scale the width of the chosen
time / velocity component (0 = its location exactly). ``pulse_weight`` multiplies the
weight of the model's pulse components in the time mixture before it is renormalised (for
a model with ``time_pulse_grid``: the next lines of the grid it tracks through the
stream, :mod:`~notochord_rt.model.grid_track`): above 1 the model stays closer to the
pulse it has been playing. No grid is imposed and no time is moved: the lines are the
model's own; 1 samples the model as it is, and a model without pulse components ignores it.
``motif_weight`` does the same for pitch: it multiplies the odds of every pitch the
model's motif copying proposes for the instrument (its recent pitches and what followed
their earlier occurrences, :mod:`~notochord_rt.model.motif`); above 1 riffs and figures
come back more often. Nothing is copied: the candidates are the model's own, and a model
without motif copying (or a pitch drawn before its instrument) ignores it. With a pitch
top-p, the nucleus is taken from the model's own pitch distribution and the weight acts
inside it: it favours the candidates among the pitches the model finds plausible, and
does not shrink those to the candidates.
``chord_spread`` multiplies the width of the time components the model places within
10 ms of the previous event (its "now": the notes it means to play together, chord
notes and a note-off with the next note-on): below 1 its chords are struck tighter, 0
exactly together; the weights of "now" against a gap are unchanged.
``max_stuck`` (0: off) keeps a melodic instrument from looping on a few pitches: at
most that many note-ons in a row on one or two pitches, twice as many on three
(:mod:`.variety`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

import numpy as np

from ... import events as ev
from ...errors import InputError
from ...events import CANONICAL_ORDER
from . import checks
from .checks import show

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

ORDER_LETTERS = frozenset(CANONICAL_ORDER)
_SOFT_BY_NAME: dict[str, Soft] = {s.value: s for s in Soft}  # Soft members are str too


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

    Beat fields (:mod:`.grid`): with a tempo ``bpm``, ``grid`` puts onsets on a rhythmic
    grid (``"1/16"``, ``"1/8t"``...) with ``swing``, pulled by ``grid_strength`` (1 =
    hard); ``min_beats`` / ``max_beats`` are ``min_time`` / ``max_time`` in beats;
    ``next_bar`` allows only the next bar line. ``beat`` is the beat position at the
    stream's current time (``None``: the stream clock, beat 0 at reset). ``inst_grid``
    gives instruments grids of their own (``{33: "1/8", 41: "1/16"}``, with
    ``inst_swing``; instruments not named keep ``grid``, or free time): the sampler then
    draws the instrument before the time (the order's ``i`` moves before its ``t``) and
    places the time on that instrument's grid, note-offs included.
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
    pulse_weight: float = 1.0
    motif_weight: float = 1.0
    chord_spread: float = 1.0
    max_stuck: int = 0
    truncate_quantile_time: tuple[float, float] = (0.0, 1.0)
    truncate_quantile_pitch: tuple[float, float] = (0.0, 1.0)
    truncate_quantile_vel: tuple[float, float] = (0.0, 1.0)
    index_pitch: int | None = None
    steer_density: float | None = 0.5
    inst_weights: Mapping[int, float] = field(default_factory=dict)
    external: set[int] = field(default_factory=set)
    order: str | None = None
    bpm: float | None = None
    beat: float | None = None
    beats_per_bar: int = 4
    grid: str | None = None
    swing: float = 0.0
    grid_strength: float = 1.0
    min_beats: float = 0.0
    max_beats: float = math.inf
    next_bar: bool = False
    inst_grid: Mapping[int, str] | None = None
    inst_swing: Mapping[int, float] | None = None

    # -- checking ---------------------------------------------------------------------------
    def validate(self) -> Constraints:
        """Raise :class:`InputError` naming the first bad field (see :data:`FIELDS`); return
        ``self`` unchanged."""
        for f in FIELDS.values():
            f.convert(getattr(self, f.name))
        if (self.bpm is not None or self.grid is not None or self.next_bar or self.swing
                or self.beat is not None or self.min_beats or self.max_beats != math.inf
                or self.inst_grid or self.inst_swing):
            from .grid import cross_check

            cross_check(self)
        return self

    def penalty_of(self, soft: Soft) -> float:
        """The cost of breaking ``soft`` (the default when not given)."""
        for k, v in self.penalty.items():
            if Soft(k) is soft:
                return float(v)
        return DEFAULT_PENALTY[soft]


# -- the field table ------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """How one :class:`Constraints` field is checked and converted: a row of :data:`FIELDS`.

    ``kind`` is the shape of the value (a key of :data:`KINDS`); ``lo`` / ``hi`` bound every
    number in it (each per-instrument value, each interval end for ``"intervals"``, the
    id for ``"int"``); ``finite`` refuses ``±inf``; ``optional`` allows ``None``; ``role``
    is ``"hard"`` (never broken), ``"soft"`` (broken at a cost, see :class:`Soft`),
    ``"steer"`` (shapes the distribution) or ``"setting"``.
    """

    name: str
    kind: str
    lo: float = -math.inf
    hi: float = math.inf
    finite: bool = False
    optional: bool = False
    role: str = "steer"
    doc: str = ""

    def convert(self, value: Any, name: str | None = None) -> Any:
        """``value`` checked and in its canonical type (see :data:`KINDS`).

        Raises :class:`InputError` whose message starts with ``name`` (default: the field's
        own name; callers mapping other argument names, such as ``query``'s
        ``next_time``, pass theirs).
        """
        name = self.name if name is None else name
        if value is None:
            if self.optional:
                return None
            raise InputError(f"{name} must not be None")
        return _CONVERTERS[self.kind](value, name, self)


def _c_real(v: Any, name: str, f: Field) -> float:
    return checks.real(v, name, f.lo, f.hi, finite=f.finite)


def _c_int(v: Any, name: str, f: Field) -> int:
    return checks.integer(v, name, int(f.lo), int(f.hi))


def _c_inst(v: Any, name: str, f: Field) -> int:
    return checks.inst(v, name)


def _c_note_map(v: Any, name: str, f: Field) -> dict[int, tuple[int, ...]] | np.ndarray:
    if isinstance(v, np.ndarray):
        if v.shape != (N_I, N_P) or v.dtype != bool:
            raise InputError(f"{name} as an array must be bool {(N_I, N_P)}, got "
                             f"{v.dtype} {v.shape}")
        return v
    if not isinstance(v, Mapping):
        raise InputError(f"{name} must be a dict {{inst: pitches}} or a bool "
                         f"{(N_I, N_P)} array, got {show(v)}")
    return {checks.inst(i, f"{name} key"): _pitches(ps, f"{name}[{i!r}]")
            for i, ps in v.items()}


def _pitches(ps: Any, name: str) -> tuple[int, ...]:
    return checks.ints(ps, name, 0, ev.NUM_PITCHES - 1, "a pitch (int)")


def _c_per_inst(v: Any, name: str, f: Field) -> float | dict[int, float]:
    if isinstance(v, Mapping):
        return {checks.inst(i, f"{name} key"): _c_real(x, f"{name}[{i!r}]", f)
                for i, x in v.items()}
    return _c_real(v, name, f)


def _c_intervals(v: Any, name: str, f: Field) -> list[tuple[float, float, float]]:
    return [tuple(r) for r in intervals(v, name).tolist()]  # type: ignore[misc]


def _c_penalty(v: Any, name: str, f: Field) -> dict[Soft, float]:
    if not isinstance(v, Mapping):
        raise InputError(f"{name} must be a dict {{soft constraint: cost}}, got {show(v)}")
    out = {}
    for k, x in v.items():
        soft = _SOFT_BY_NAME.get(k) if isinstance(k, str) else None
        if soft is None:
            raise InputError(f"{name} has an unknown key {show(k)} (known: "
                             f"{', '.join(sorted(_SOFT_BY_NAME))})")
        out[soft] = _c_real(x, f"{name}[{soft.value}]", f)
    return out


def _c_quantile(v: Any, name: str, f: Field) -> tuple[float, float]:
    q = list(checks.collection(v, name, "two numbers (lo, hi)"))
    if len(q) != 2:
        raise InputError(f"{name} must be a pair (lo, hi), got {show(v)}")
    lo, hi = (checks.real(x, name, 0.0, 1.0) for x in q)
    if not lo < hi:
        raise InputError(f"{name} must satisfy 0 <= lo < hi <= 1, got {show(v)}")
    return lo, hi


def _c_inst_weights(v: Any, name: str, f: Field) -> dict[int, float]:
    if not isinstance(v, Mapping):
        raise InputError(f"{name} must be a dict {{inst: weight}}, got {show(v)}")
    return {checks.inst(i, f"{name} key"): _c_real(x, f"{name}[{i!r}]", f)
            for i, x in v.items()}


def _c_inst_set(v: Any, name: str, f: Field) -> frozenset[int]:
    return frozenset(checks.inst(i, name)
                     for i in checks.collection(v, name, "instruments (e.g. {5})"))


def _c_order(v: Any, name: str, f: Field) -> str:
    return check_order(v, name)


def _c_bpm(v: Any, name: str, f: Field) -> float:
    from .grid import check_bpm

    return check_bpm(v, name)


def _c_grid(v: Any, name: str, f: Field) -> str:
    from .grid import check_grid

    return check_grid(v, name)


def _c_inst_grid(v: Any, name: str, f: Field) -> dict[int, str]:
    from .grid import check_grid

    if not isinstance(v, Mapping):
        raise InputError(f"{name} must be a dict {{inst: grid}} such as {{33: '1/8'}}, got "
                         f"{show(v)}")
    return {checks.inst(i, f"{name} key"): check_grid(g, f"{name}[{i!r}]")
            for i, g in v.items()}


def _c_bool(v: Any, name: str, f: Field) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False, got {show(v)}")
    return bool(v)


#: Value kinds of :data:`FIELDS` and their canonical Python types.
KINDS: dict[str, str] = {
    "real": "float in [lo, hi]",
    "int": "int in lo..hi",
    "inst": "int instrument id in 1..320",
    "note_map": "dict {inst: tuple of pitches} or a bool (321, 129) array (kept as is)",
    "per_inst": "float, or dict {inst: float} (missing instruments take the default)",
    "intervals": "list of (lo, hi, weight) tuples, sorted and disjoint (weight default 1)",
    "penalty": "dict {Soft: cost}",
    "quantile": "(lo, hi) with 0 <= lo < hi <= 1",
    "inst_weights": "dict {inst: weight >= 0}",
    "inst_set": "frozenset of instrument ids",
    "order": f"a permutation of {CANONICAL_ORDER!r}, or 'random'",
    "bpm": "float tempo in beats per minute, in [1, 999]",
    "grid": "str '1/N' or '1/Nt' (triplets), N in 1, 2, 4, 8, 16, 32, 64",
    "inst_grid": "dict {inst: grid} (grids as for grid)",
    "bool": "True or False",
}
_CONVERTERS = {
    "real": _c_real, "int": _c_int, "inst": _c_inst, "note_map": _c_note_map,
    "per_inst": _c_per_inst, "intervals": _c_intervals, "penalty": _c_penalty,
    "quantile": _c_quantile, "inst_weights": _c_inst_weights, "inst_set": _c_inst_set,
    "order": _c_order, "bpm": _c_bpm, "grid": _c_grid, "bool": _c_bool,
    "inst_grid": _c_inst_grid,
}
_INF = math.inf
FIELDS: dict[str, Field] = {f.name: f for f in (
    Field("note_on_map", "note_map", optional=True, role="hard"),
    Field("note_off_map", "note_map", optional=True, role="hard"),
    Field("inst", "inst", optional=True, role="hard"),
    Field("pitch", "int", 0, ev.NUM_PITCHES - 1, optional=True, role="hard"),
    Field("time", "real", ev.TIME_MIN, ev.TIME_MAX, finite=True, optional=True, role="hard",
          doc="a fixed time must lie in the model's time support"),
    Field("vel", "real", 0.0, ev.VEL_MAX, optional=True, role="hard"),
    Field("time_ranges", "intervals", optional=True, role="hard",
          doc="clipped to the model's time support"),
    Field("vel_ranges", "intervals", optional=True, role="hard"),
    Field("min_time", "real", 0.0, _INF, finite=True, role="hard",
          doc="above the model's time support it is impossible (NoPossibleEvents)"),
    Field("max_time", "real", 0.0, _INF, role="soft"),
    Field("min_vel", "per_inst", role="hard"),
    Field("max_vel", "per_inst", role="hard"),
    Field("min_polyphony", "per_inst", 0.0, _INF, role="soft"),
    Field("max_polyphony", "per_inst", 0.0, _INF, role="soft"),
    Field("min_duration", "per_inst", 0.0, _INF, role="soft"),
    Field("max_duration", "per_inst", 0.0, _INF, role="soft"),
    Field("penalty", "penalty", 0.0, _INF, finite=True, role="setting"),
    Field("inst_temp", "real", 0.0, _INF, finite=True),
    Field("pitch_temp", "real", 0.0, _INF, finite=True),
    Field("rhythm_temp", "real", 0.0, _INF, finite=True),
    Field("timing_temp", "real", 0.0, _INF, finite=True),
    Field("vel_temp", "real", 0.0, _INF, finite=True),
    Field("pulse_weight", "real", 0.0, _INF, finite=True),
    Field("motif_weight", "real", 0.0, _INF, finite=True),
    Field("chord_spread", "real", 0.0, _INF, finite=True),
    Field("max_stuck", "int", 0, 1 << 16),
    Field("truncate_quantile_time", "quantile", 0.0, 1.0),
    Field("truncate_quantile_pitch", "quantile", 0.0, 1.0),
    Field("truncate_quantile_vel", "quantile", 0.0, 1.0),
    Field("index_pitch", "int", 0, N_P - 1, optional=True),
    Field("steer_density", "real", 0.0, 1.0, optional=True),
    Field("inst_weights", "inst_weights", 0.0, _INF, finite=True,
          doc="weight 0 removes the instrument (hard)"),
    Field("external", "inst_set", role="setting",
          doc="instruments played from outside: no duration/polyphony guarantees, no steering"),
    Field("order", "order", optional=True, role="setting"),
    Field("bpm", "bpm", optional=True, role="setting",
          doc="tempo (quarter-note beats per minute) for the beat fields; None = free time"),
    Field("beat", "real", finite=True, optional=True, role="setting",
          doc="beat position at the stream's current time; None = from the stream clock"),
    Field("beats_per_bar", "int", 1, 64, role="setting"),
    Field("grid", "grid", optional=True,
          doc="onsets on this grid (pulled by grid_strength); needs bpm"),
    Field("swing", "real", 0.0, 1.0, doc="0 straight .. 1 triplet swing; needs a straight grid"),
    Field("grid_strength", "real", 0.0, 1.0,
          doc="0 = free, in between a soft pull to the grid, 1 = hard quantisation"),
    Field("min_beats", "real", 0.0, _INF, finite=True, role="hard",
          doc="min_time in beats (the later of the two holds)"),
    Field("max_beats", "real", 0.0, _INF, role="soft",
          doc="max_time in beats (the earlier of the two holds, soft like max_time)"),
    Field("next_bar", "bool", role="hard", doc="only the next bar line (a voice entering)"),
    Field("inst_grid", "inst_grid", optional=True,
          doc="a grid per instrument (instruments not named keep grid); needs bpm; the "
              "instrument is then drawn before the time"),
    Field("inst_swing", "inst_weights", 0.0, 1.0, optional=True,
          doc="swing per instrument of inst_grid (each needs a straight grid there)"),
)}
"""Every :class:`Constraints` field, in declaration order: how it is checked and converted.

One table drives :meth:`Constraints.validate` (each value goes through
``FIELDS[name].convert``); protocol layers (OSC, the reference ``query`` mapping in
:mod:`.query`) use the same rows so that a value is accepted or refused the same way
everywhere, with a message naming the argument.
"""


# -- helpers ------------------------------------------------------------------------------
def check_order(order: Any, name: str = "order") -> str:
    """Validate an order: a permutation of ``"iptv"`` (:data:`CANONICAL_ORDER`) or ``"random"``."""
    if isinstance(order, str) and order == "random":
        return order
    if not isinstance(order, str) or len(order) != 4 or set(order) != ORDER_LETTERS:
        raise InputError(f"{name} must be a permutation of {CANONICAL_ORDER!r} or 'random', "
                         f"got {show(order)}")
    return order


def intervals(spec: Iterable[Interval], name: str) -> np.ndarray:
    """Validated ``(n, 3)`` float array ``[lo, hi, weight]``, sorted, disjoint.

    Raises :class:`InputError` naming ``name`` for anything but a collection of
    ``(lo, hi[, weight])`` number tuples, NaN, ``lo > hi``, a weight that is negative or
    infinite, or overlapping intervals. The ends may be infinite (they are clipped to the
    model's support where used).
    """
    rows = []
    for r in checks.collection(spec, name, "intervals (lo, hi[, weight])"):
        if isinstance(r, (str, bytes, Mapping)) or not isinstance(r, Iterable):
            raise InputError(f"{name}: each interval is (lo, hi[, weight]), got {show(r)}")
        vals = [checks.real(x, name) for x in r]
        if len(vals) == 2:
            vals.append(1.0)
        if len(vals) != 3:
            raise InputError(f"{name}: each interval is (lo, hi[, weight]), got {show(r)}")
        lo, hi, w = vals
        if lo > hi or not (0.0 <= w < math.inf):
            raise InputError(f"{name}: need lo <= hi and a finite weight >= 0, got {show(r)}")
        rows.append((lo, hi, w))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    if len(arr) > 1 and np.any(arr[1:, 0] <= arr[:-1, 1]):
        raise InputError(f"{name}: intervals must not overlap or touch, got {show(arr.tolist())}")
    return arr


def per_inst(value: PerInst, name: str, lo: float = -math.inf, hi: float = math.inf,
             default: float | None = None) -> np.ndarray:
    """A scalar-or-``{inst: value}`` field as a float ``(321,)`` array, validated."""
    if isinstance(value, Mapping):
        if default is None:
            default = float(Constraints.__dataclass_fields__[name].default)  # type: ignore[arg-type]
        out = np.full(N_I, default, dtype=np.float64)
        for i, v in value.items():
            out[checks.inst(i, f"{name} key")] = checks.real(v, f"{name}[{i!r}]", lo, hi)
        return out
    return np.full(N_I, checks.real(value, name, lo, hi), dtype=np.float64)


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
