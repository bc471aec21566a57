"""The support of the next event: masks over the instrument x pitch grid plus intervals.

Where the reference builds one Python "atom" (sets of ints, interval objects) per
instrument, here the whole support is a handful of :class:`Atom` s, one per distinct
*time segment*: each has a boolean ``(321, 129)`` note-on mask, a note-off mask and an
array of time pieces ``[lo, hi, weight]``. Segments only exist where a soft time
constraint changes the penalty (``max_time``, the earliest ``max_duration`` deadline,
``min_duration`` of a held note), so the number of atoms does not grow with the number
of allowed instruments and marginals are mask reductions (``any`` over an axis).

Velocity is shared by all atoms: note-ons of instrument ``i`` may take integer
velocities inside ``[vlo[i], vhi[i]]`` and inside the caller's velocity ranges;
note-offs have velocity 0.

Two steps: :func:`compile_constraints` (once per ``Constraints``) validates and turns
note maps, fixed values and velocity / time limits into static masks and arrays;
:func:`build_support` (every sample) removes sounding notes from the note-ons and keeps
only sounding notes as note-offs (an empty result raises ``NoPossibleEvents`` naming the
constraints involved), then :mod:`.guards` applies the stuck-note release and polyphony
forcing (guarantees) and the soft constraints as penalties, and :func:`stratify` keeps
the cheapest stratum.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import events as ev
from ...errors import NoPossibleEvents
from .atoms import Atom, Support, uniform_velocity
from .constraints import (
    DEFAULT_ON,
    N_I,
    N_P,
    Constraints,
    Soft,
    inst_mask,
    intervals,
    note_mask,
    per_inst,
)
from .grid import BeatSpec, beat_spec, inst_specs
from .held import HeldNotes

log = logging.getLogger(__name__)

MIN_GAP = 0.01  # seconds: the reference's 10 ms guard for durations
_TOL = 1e-9
__all__ = ["Atom", "Compiled", "Support", "build_support", "compile_constraints", "stratify"]
_FULL_TIME = np.array([[ev.TIME_MIN, math.inf, 1.0]])
_FULL_VEL = np.array([[1.0, ev.VEL_MAX, 1.0]])


def _fail(why: str, names: list[str]) -> NoPossibleEvents:
    return NoPossibleEvents(f"no possible event: {why} (constraints involved: "
                            f"{', '.join(names) if names else 'held notes only'})")


@dataclass
class Compiled:
    """The held-note-independent part of a :class:`Constraints`, computed once.

    ``on_static`` / ``off_static`` are the cells allowed as note-on / note-off before
    held notes are considered (fixed values and velocity limits applied); ``pieces`` are
    the hard time pieces (sorted, inside the model's time support) and ``t0`` the earliest
    time they allow, where forced events happen; the per-instrument arrays are ``(321,)``.
    A snapshot: changing the ``Constraints`` afterwards does not change it.
    """

    cons: Constraints
    on_static: np.ndarray
    on_static_r: np.ndarray
    off_static: np.ndarray
    vlo: np.ndarray
    vhi: np.ndarray
    user_vel: np.ndarray
    pieces: np.ndarray
    t0: float
    names: list[str]
    ext: np.ndarray
    max_dur: np.ndarray
    min_dur: np.ndarray
    max_poly: np.ndarray
    min_poly: np.ndarray
    inst_log_weights: np.ndarray | None
    no_soft: bool = False
    """True when no duration, polyphony or max_time limit can ever apply (fast path)."""
    vel_uniform: bool = True
    """True when every instrument has the same note-on velocity bounds."""
    max_time: float = math.inf
    """The soft time limit: the earlier of ``max_time`` and ``max_beats``."""
    beat: BeatSpec | None = None
    """The tempo context; when it has a grid or ``next_bar``, :func:`.grid.place` puts
    ``pieces`` on the grid before each event."""
    inst_beats: dict[int, BeatSpec] | None = None
    """``inst_grid``'s grids: the time goes on the drawn instrument's grid
    (:func:`.grid.inst_retimer`)."""


def compile_constraints(cons: Constraints) -> Compiled:
    """Validate ``cons`` and precompute everything that does not depend on held notes.

    Raises :class:`~notochord_rt.errors.InputError` for bad fields and
    :class:`NoPossibleEvents` when the hard constraints alone allow nothing.
    """
    cons.validate()
    names: list[str] = []  # the hard constraints in play, named in errors
    on, off = _note_masks(cons, names)
    vlo, vhi, user_vel = _velocity(cons, on, off, names)
    pieces, max_time, beat = _time_pieces(cons, names)
    lw = _inst_log_weights(cons, on, off, names)
    max_dur = per_inst(cons.max_duration, "max_duration", 0)
    min_dur = per_inst(cons.min_duration, "min_duration", 0)
    max_poly = per_inst(cons.max_polyphony, "max_polyphony", 0)
    min_poly = per_inst(cons.min_polyphony, "min_polyphony", 0)
    no_soft = bool(np.all(np.isinf(max_dur)) and np.all(min_dur <= MIN_GAP)
                   and np.all(max_poly >= ev.NUM_PITCHES) and np.all(min_poly <= 0)
                   and math.isinf(max_time))
    return Compiled(
        cons, on, on.any(1), off, vlo, vhi, user_vel, pieces,
        float(pieces[0, 0]), names,
        inst_mask(cons.external) if cons.external else np.zeros(N_I, dtype=bool),
        max_dur, min_dur, max_poly, min_poly, lw, no_soft, uniform_velocity(vlo, vhi),
        max_time, beat, inst_specs(cons))


def _note_masks(cons: Constraints, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Allowed note-ons and note-offs over instrument x pitch: the note maps, then a
    fixed instrument or pitch."""
    if cons.note_on_map is None:
        on = DEFAULT_ON.copy()
        off = DEFAULT_ON.copy() if cons.note_off_map is None else note_mask(cons.note_off_map)
    else:
        names.append("note_on_map")
        on = note_mask(cons.note_on_map)
        if cons.note_off_map is None:
            rows = (on.any(1) if isinstance(cons.note_on_map, np.ndarray)
                    else inst_mask(cons.note_on_map.keys()))
            off = DEFAULT_ON & rows[:, None]
        else:
            off = note_mask(cons.note_off_map)
    if cons.note_off_map is not None:
        names.append("note_off_map")
    for name, value, shape in (("inst", cons.inst, (N_I, 1)), ("pitch", cons.pitch, (1, N_P))):
        if value is not None:
            keep = np.zeros(shape, dtype=bool)
            keep[(int(value), 0) if shape[1] == 1 else (0, int(value))] = True
            on &= keep
            off &= keep
            names.append(name)
    return on, off


def _velocity(cons: Constraints, on: np.ndarray, off: np.ndarray, names: list[str]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-instrument velocity bounds and the user's velocity intervals; removes from
    ``on`` / ``off`` (in place) what no allowed velocity can play."""
    vlo = np.maximum(per_inst(cons.min_vel, "min_vel"), ev.NOTE_ON_MIN_VEL)
    vhi = np.minimum(per_inst(cons.max_vel, "max_vel"), ev.VEL_MAX)
    user_vel = _FULL_VEL if cons.vel_ranges is None else intervals(cons.vel_ranges,
                                                                   "vel_ranges")
    if cons.vel_ranges is not None:
        names.append("vel_ranges")
    if isinstance(cons.min_vel, Mapping) or cons.min_vel != 0.0:
        names.append("min_vel")
    if isinstance(cons.max_vel, Mapping) or cons.max_vel != ev.VEL_MAX:
        names.append("max_vel")
    if cons.vel is not None:
        names.append("vel")
        v = float(cons.vel)
        if v < ev.NOTE_ON_MIN_VEL:
            on[:] = False
        else:
            off[:] = False
            in_user = bool(np.any((user_vel[:, 0] - _TOL <= v) & (v <= user_vel[:, 1] + _TOL)
                                  & (user_vel[:, 2] > 0)))
            ok = (vlo - _TOL <= v) & (v <= vhi + _TOL) & in_user
            on &= ok[:, None]
    else:
        k_lo = np.maximum(np.ceil(vlo[:, None] - _TOL), np.ceil(user_vel[None, :, 0] - _TOL))
        k_hi = np.minimum(np.floor(vhi[:, None] + _TOL), np.floor(user_vel[None, :, 1] + _TOL))
        ok = ((np.maximum(k_lo, 1) <= np.minimum(k_hi, ev.VEL_MAX))
              & (user_vel[None, :, 2] > 0)).any(1)
        if not ok.all():
            on &= ok[:, None]
    return vlo, vhi, user_vel


def _time_pieces(cons: Constraints, names: list[str]) -> tuple[np.ndarray, float, Any]:
    """The allowed time pieces ``[lo, hi, weight]`` (hard: ``time``, ``min_time``,
    ``time_ranges``, ``min_beats``), the soft ``max_time`` (with ``max_beats``) and the
    beat grid when one shapes the time (None otherwise)."""
    min_time = float(cons.min_time)
    if min_time > 0:
        names.append("min_time")
    beat = beat_spec(cons)
    max_time = float(cons.max_time)
    if beat is not None:
        if cons.min_beats > 0:
            names.append("min_beats")
            min_time = max(min_time, float(cons.min_beats) * beat.spb)
        max_time = min(max_time, float(cons.max_beats) * beat.spb)
        if beat.active():
            names.append("next_bar" if beat.next_bar else "grid")
        else:
            beat = None  # a tempo alone changes no time piece
    if cons.time is not None:
        names.append("time")
        t = float(cons.time)
        pieces = np.array([[t, t, 1.0]])
        ok_t = t >= min_time - _TOL
        if cons.time_ranges is not None:
            names.append("time_ranges")
            r = intervals(cons.time_ranges, "time_ranges")
            ok_t &= bool(np.any((r[:, 0] - _TOL <= t) & (t <= r[:, 1] + _TOL) & (r[:, 2] > 0)))
        if not ok_t:
            raise _fail(f"the fixed time {t} is outside min_time / time_ranges", names)
        return pieces, max_time, beat
    base = _FULL_TIME if cons.time_ranges is None else intervals(cons.time_ranges,
                                                                  "time_ranges")
    if cons.time_ranges is not None:
        names.append("time_ranges")
    pieces = base.copy()
    pieces[:, 0] = np.maximum(pieces[:, 0], min_time)
    pieces[:, 1] = np.minimum(pieces[:, 1], ev.TIME_MAX)
    pieces = pieces[(pieces[:, 0] <= pieces[:, 1]) & (pieces[:, 2] > 0)]
    if len(pieces) == 0:
        raise _fail(f"no time in [{ev.TIME_MIN}, {ev.TIME_MAX}] s is allowed", names)
    return pieces, max_time, beat


def _inst_log_weights(cons: Constraints, on: np.ndarray, off: np.ndarray,
                      names: list[str]) -> np.ndarray | None:
    """Log instrument weights (None without ``inst_weights``); a weight of 0 removes the
    instrument from ``on`` / ``off`` (in place), a hard constraint."""
    if not cons.inst_weights:
        return None
    lw = np.zeros(N_I)
    for i, w in cons.inst_weights.items():
        lw[int(i)] = math.log(w) if w > 0 else -math.inf
    if np.isinf(lw).any():
        names.append("inst_weights")
        on &= np.isfinite(lw)[:, None]
        off &= np.isfinite(lw)[:, None]
    return lw


def build_support(comp: Compiled, held: HeldNotes) -> Support:
    """The support of the next event under compiled constraints, given the held notes.

    Raises :class:`NoPossibleEvents` naming the constraints that leave nothing possible.
    """
    if held.count:
        held_m = held.mask()
        on = np.greater(comp.on_static, held_m)  # on_static & ~held, in one pass
        off = comp.off_static & held_m
    else:
        held_m = None
        on, off = comp.on_static, None
    if not (on.any() or (off is not None and off.any())):
        raise _fail("every allowed note-on is already sounding and no allowed note-off "
                    "is sounding", comp.names)
    from .guards import apply_guards  # local: guards builds on this module

    sup = apply_guards(comp, held, held_m, on, off)
    if comp.cons.vel is not None and "v" not in sup.fixed and sup.forced in (
            None, Soft.MIN_POLY.value):
        # a fixed velocity is a value, not only a note-on/off choice (the masks above
        # only restrict which notes it allows); a guarantee's forced note-off still wins
        # (and reports "vel" as broken), a min_polyphony note-on keeps it
        sup.fix_vel(float(comp.cons.vel))
    return sup


def stratify(on: np.ndarray, off: np.ndarray, pieces: np.ndarray, pen_on: np.ndarray,
             pen_off: np.ndarray, time_pens: list[tuple[float, float, str]],
             md_cells: tuple[np.ndarray, np.ndarray, np.ndarray], md_pen: float,
             on_r: np.ndarray | None = None, off_r: np.ndarray | None = None,
             ) -> tuple[list[Atom], float, tuple[str, ...]]:
    """Split the support into time segments, score every (cell, segment), keep the cheapest.

    ``pen_on`` / ``pen_off`` are per-instrument penalties ``(321,)``; ``time_pens`` lists
    ``(threshold, penalty, name)`` for times *later* than the threshold; ``md_cells`` are
    ``(inst, pitch, earliest_time)`` of held notes whose note-off costs ``md_pen`` before
    ``earliest_time``. Returns the atoms of the minimum-penalty stratum, that penalty and
    the names of the soft constraints it breaks.

    Cost: a few full-grid operations, plus two per kept time segment; the per-segment
    scoring is over instruments and the (few) ``md_cells`` only.
    """
    md_i, md_p, md_t = md_cells
    breaks = np.array(sorted({b for b, _, _ in time_pens} | set(md_t.tolist())))
    if len(breaks):  # cut every piece at the breaks strictly inside it
        lo, hi = pieces[:, 0], pieces[:, 1]
        first = np.searchsorted(breaks, lo, side="right")
        n_in = np.maximum(np.searchsorted(breaks, hi, side="left") - first, 0)
        if n_in.any():
            rows = np.repeat(np.arange(len(pieces)), n_in + 1)
            k = np.arange(len(rows)) - np.repeat(np.cumsum(n_in + 1) - (n_in + 1), n_in + 1)
            starts = np.where(k == 0, lo[rows], breaks[np.minimum(first[rows] + k - 1,
                                                                   len(breaks) - 1)])
            ends = np.where(k == n_in[rows], hi[rows],
                            breaks[np.minimum(first[rows] + k, len(breaks) - 1)])
            pieces = np.stack((starts, ends, pieces[rows, 2]), 1)
    mids = 0.5 * (pieces[:, 0] + pieces[:, 1])
    g = np.zeros(len(pieces))
    for b, p, _ in time_pens:
        g += np.where(mids > b, p, 0.0)
    early = mids[:, None] < md_t[None, :]  # (segments, md cells)
    on_r = on.any(1) if on_r is None else on_r
    off_r = off.any(1) if off_r is None else off_r
    # note-offs of md cells are scored one by one; every other note-off by instrument
    if md_i.size:
        rest = off.copy()
        rest[md_i, md_p] = False
        rest_r = rest.any(1)
    else:
        rest, rest_r = off, off_r
    on_min = pen_on[on_r].min() if on_r.any() else math.inf
    rest_min = pen_off[rest_r].min() if rest_r.any() else math.inf
    md_cost = pen_off[md_i][None, :] + g[:, None] + md_pen * early  # (segments, md cells)
    best = np.minimum(np.minimum(on_min + g, rest_min + g),
                      md_cost.min(1) if md_i.size else math.inf)
    level = float(best.min())
    groups: dict[tuple, list[int]] = {}
    sel_all = np.abs(md_cost - level) <= _TOL
    for k in np.flatnonzero(best <= level + _TOL).tolist():
        groups.setdefault((g[k], tuple(sel_all[k].tolist())), []).append(k)
    atoms: list[Atom] = []
    broken: set[str] = set()
    for (gk, sel_t), idx in groups.items():
        sel = np.asarray(sel_t, dtype=bool)
        rows_on = on_r & (np.abs(pen_on + gk - level) <= _TOL)
        a_on = on if np.array_equal(rows_on, on_r) else on & rows_on[:, None]
        rows_off = rest_r & (np.abs(pen_off + gk - level) <= _TOL)
        a_off = rest if np.array_equal(rows_off, rest_r) else rest & rows_off[:, None]
        if sel.any():
            a_off = a_off.copy()
            a_off[md_i[sel], md_p[sel]] = True
            rows_off = rows_off.copy()
            rows_off[md_i[sel]] = True
        atom = Atom(a_on if rows_on.any() else None, a_off if rows_off.any() else None,
                    pieces[idx])
        if atom.empty():
            continue
        atoms.append(atom)
        if level > 0:
            mid = mids[idx[0]]
            broken.update(n for b, p, n in time_pens if mid > b and p > 0)
            if np.any(rows_on & (pen_on > 0)):
                broken.add(Soft.MAX_POLY.value)
            if np.any(rows_off & (pen_off > 0)):
                broken.add(Soft.MIN_POLY.value)
            if np.any(sel & early[idx[0]]):
                broken.add(Soft.MIN_DUR.value)
    return atoms, float(level), tuple(sorted(broken))
