"""Duration and polyphony: the hard guarantees and the soft penalties (docs/design.md §6.4-6.5).

Forced events, checked first, for instruments not listed as ``external``. Each happens
at ``t0``, the earliest time the hard time constraints allow (the fixed ``time``, else the
start of the first allowed piece of ``min_time`` / ``time_ranges``), so no forced event
breaks a hard time constraint:

1. *stuck notes* (a guarantee): a held note whose age is within ``max(t0, 10 ms)`` of
   its instrument's ``max_duration`` is released now (the most overdue first). The event
   is fully fixed: that note-off.
2. *over polyphony* (a guarantee): an allowed instrument with more held notes than
   ``max_polyphony`` gets a note-off now (pitch still sampled among its held notes,
   inside the note-off map when possible).
3. *under polyphony* (soft, so inside every hard constraint): an allowed instrument with
   fewer than ``min_polyphony`` notes and a free allowed pitch gets a note-on now (pitch
   and velocity sampled inside the hard support).

The two guarantees keep notes from sounding forever and may override hard note maps,
fixed values or instrument weights; :func:`forced_breaks` then lists every constraint
the forced event breaks (hard or soft) in the event's ``broken``.

Soft, as penalties (costs from ``Constraints.penalty``): times later than the earliest
``max_duration`` deadline or than ``max_time``; note-ons of instruments at their maximum;
note-offs of instruments at their minimum; note-offs of notes younger than their
``min_duration``. :func:`~notochord_rt.engine.sampling.support.stratify` keeps the cheapest.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ... import events as ev
from .constraints import N_I, Soft
from .held import HeldNotes
from .support import MIN_GAP, Atom, Compiled, Support, stratify

log = logging.getLogger(__name__)

_NO_MD = (np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp), np.zeros(0))
_NO_ROWS = np.zeros(N_I, dtype=bool)
_NO_ROWS.setflags(write=False)


def _forced(on: np.ndarray | None, off: np.ndarray | None, comp: Compiled,
            why: str) -> Support:
    atom = Atom(on, off, np.array([[comp.t0, comp.t0, 1.0]]))
    log.debug("forced event: %s", why)
    return Support([atom], comp.vlo, comp.vhi, comp.user_vel, forced=why,
                   vel_uniform=comp.vel_uniform)


def apply_guards(comp: Compiled, held: HeldNotes, held_m: np.ndarray | None,
                 on: np.ndarray, off: np.ndarray | None) -> Support:
    """Apply the guarantees and soft constraints to the hard support; see the module doc.

    ``on`` / ``off`` are the allowed cells given the held notes (``off`` is None when
    nothing sounds).
    """
    cons = comp.cons
    ext = comp.ext
    time_pens: list[tuple[float, float, str]] = []
    md_cells = _NO_MD
    on_r = comp.on_static_r
    off_r = _NO_ROWS
    if off is not None:
        rows = np.flatnonzero(held.poly)
        on_r = on_r.copy()
        on_r[rows] = on[rows].any(1)
        off_r = np.zeros(N_I, dtype=bool)
        off_r[rows] = off[rows].any(1)
    if comp.no_soft:
        atom = Atom(on, off, comp.pieces, on_r=on_r, off_r=None if off is None else off_r)
        return Support([atom], comp.vlo, comp.vhi, comp.user_vel,
                       vel_uniform=comp.vel_uniform)
    if off is not None:
        ii, pp = held.cells()
        nonext = ~ext[ii]
        ages = held.elapsed - held.onset[ii, pp]
        remaining = comp.max_dur[ii] - ages
        stuck = nonext & (remaining <= max(comp.t0, MIN_GAP))
        if stuck.any():
            k = int(np.argmin(np.where(stuck, remaining, math.inf)))
            f_off = np.zeros_like(off)
            f_off[ii[k], pp[k]] = True
            return _forced(None, f_off, comp, Soft.MAX_DUR.value)
        if cons.time is None and nonext.any():
            deadline = float(remaining[nonext].min())
            if math.isfinite(deadline):
                time_pens.append((deadline, cons.penalty_of(Soft.MAX_DUR), Soft.MAX_DUR.value))
        min_d = comp.min_dur[ii]
        young = nonext & (min_d - ages > MIN_GAP) & off[ii, pp]
        if young.any():
            md_cells = (ii[young], pp[young], (min_d - ages)[young])
    # -- polyphony -----------------------------------------------------------------------------
    cand = (on_r | off_r) & ~ext
    poly = held.poly
    maxp, minp = comp.max_poly, comp.min_poly
    over = cand & (poly > maxp)
    if over.any():
        i = int(np.argmax(np.where(over, poly - maxp, -math.inf)))
        row = off[i] if off_r[i] else held_m[i]  # type: ignore[index]
        f_off = np.zeros_like(on)
        f_off[i] = row
        return _forced(None, f_off, comp, Soft.MAX_POLY.value)
    under = cand & (poly < minp) & on_r
    if under.any():
        i = int(np.argmax(under))
        f_on = np.zeros_like(on)
        f_on[i] = on[i]
        return _forced(f_on, None, comp, Soft.MIN_POLY.value)
    pen_on = np.where(cand & (poly >= maxp), cons.penalty_of(Soft.MAX_POLY), 0.0)
    pen_off = np.where(cand & (poly <= minp), cons.penalty_of(Soft.MIN_POLY), 0.0)
    if cons.time is None and math.isfinite(comp.max_time):
        time_pens.append((comp.max_time, cons.penalty_of(Soft.MAX_TIME),
                          Soft.MAX_TIME.value))
    # -- stratify ------------------------------------------------------------------------------
    has_on_pen = bool(np.any(pen_on[on_r] > 0))
    has_off_pen = bool(np.any(pen_off[off_r] > 0))
    if not (time_pens or md_cells[0].size or has_on_pen or has_off_pen):
        atom = Atom(on, off, comp.pieces, on_r=on_r, off_r=None if off is None else off_r)
        return Support([atom], comp.vlo, comp.vhi, comp.user_vel,
                       vel_uniform=comp.vel_uniform)
    if off is None:
        off = np.zeros_like(on)
    atoms, level, broken = stratify(on, off, comp.pieces, pen_on, pen_off, time_pens, md_cells,
                                    cons.penalty_of(Soft.MIN_DUR), on_r, off_r)
    if not atoms:  # cannot happen when the hard support is non-empty; kept as a safeguard
        raise RuntimeError("stratification lost the whole support")
    if broken:
        log.debug("breaking soft constraints %s (cost %g)", ", ".join(broken), level)
    return Support(atoms, comp.vlo, comp.vhi, comp.user_vel, broken=broken,
                   vel_uniform=comp.vel_uniform)


_TOL = 1e-9


def forced_breaks(comp: Compiled, held: HeldNotes, i: int, p: int, t: float,
                  v: float) -> tuple[str, ...]:
    """Names of every constraint, hard or soft, that the forced event ``(i, p, t, v)`` breaks.

    A forced event skips the stratification that reports broken soft constraints, so what
    it breaks is checked here on its final values (only forced events pay for this).
    ``held`` is the state before the event. Sorted field names of :class:`Constraints`.
    """
    out = _hard_breaks(comp, i, p, t, v) | _soft_breaks(comp, held, i, p, t, v)
    return tuple(sorted(out))


def _hard_breaks(comp: Compiled, i: int, p: int, t: float, v: float) -> set[str]:
    """The hard constraints the event ``(i, p, t, v)`` breaks."""
    cons = comp.cons
    on = v >= ev.NOTE_ON_MIN_VEL
    out: set[str] = set()
    if cons.inst is not None and i != int(cons.inst):
        out.add("inst")
    if cons.pitch is not None and p != int(cons.pitch):
        out.add("pitch")
    if cons.time is not None and abs(t - float(cons.time)) > _TOL:
        out.add("time")
    if cons.vel is not None and (on != (float(cons.vel) >= ev.NOTE_ON_MIN_VEL)
                                 or (on and abs(v - float(cons.vel)) > _TOL)):
        out.add("vel")
    if t < float(cons.min_time) - _TOL:
        out.add("min_time")
    if cons.time_ranges is not None and not _inside(comp.pieces, t):
        out.add("time_ranges")
    if comp.inst_log_weights is not None and math.isinf(comp.inst_log_weights[i]):
        out.add("inst_weights")
    if on:
        if cons.note_on_map is not None and not _in_map(cons.note_on_map, i, p):
            out.add("note_on_map")
        if v < comp.vlo[i] - _TOL:
            out.add("min_vel")
        if v > comp.vhi[i] + _TOL:
            out.add("max_vel")
        if cons.vel_ranges is not None and not _inside(comp.user_vel, v):
            out.add("vel_ranges")
    elif cons.note_off_map is not None:
        if not _in_map(cons.note_off_map, i, p):
            out.add("note_off_map")
    elif cons.note_on_map is not None and not _in_map(cons.note_on_map, i, None):
        out.add("note_on_map")  # its instruments are the default note-off map
    return out


def _soft_breaks(comp: Compiled, held: HeldNotes, i: int, p: int, t: float,
                 v: float) -> set[str]:
    """The soft constraints the event ``(i, p, t, v)`` breaks, given the held notes."""
    on = v >= ev.NOTE_ON_MIN_VEL
    out: set[str] = set()
    if t > comp.max_time + _TOL:
        out.add(Soft.MAX_TIME.value)
    if not comp.ext[i]:
        poly = int(held.poly[i])
        if on and poly >= comp.max_poly[i]:
            out.add(Soft.MAX_POLY.value)
        if not on and poly <= comp.min_poly[i]:
            out.add(Soft.MIN_POLY.value)
        if not on and held.is_held(i, p):
            young = comp.min_dur[i] - held.age(i, p)
            if young > MIN_GAP and t < young - _TOL:
                out.add(Soft.MIN_DUR.value)
    if held.count:
        ii, pp = held.cells()
        other = ~comp.ext[ii] & ~((ii == i) & (pp == p))
        remaining = comp.max_dur[ii] - (held.elapsed - held.onset[ii, pp])
        if np.any(remaining[other] < t - _TOL):
            out.add(Soft.MAX_DUR.value)  # another note outlives its max_duration
    return out


def _inside(pieces: np.ndarray, x: float) -> bool:
    """``x`` in one of the ``[lo, hi, weight > 0]`` rows."""
    return bool(np.any((pieces[:, 0] - _TOL <= x) & (x <= pieces[:, 1] + _TOL)
                       & (pieces[:, 2] > 0)))


def _in_map(note_map, i: int, p: int | None) -> bool:
    """Is ``(i, p)`` (or, with ``p=None``, instrument ``i``) in a note map?"""
    if isinstance(note_map, np.ndarray):
        return bool(note_map[i].any() if p is None else note_map[i, p])
    ps = note_map.get(i)
    return ps is not None and (p is None or p in ps)
