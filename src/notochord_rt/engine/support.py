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

:func:`build_support` applies, in order: note maps minus/with held notes, fixed values,
velocity and time limits (hard; an empty result raises ``NoPossibleEvents`` naming the
constraints involved), the stuck-note release and polyphony forcing (guarantees), then
the soft constraints as penalties and keeps the cheapest stratum.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .. import events as ev
from ..errors import NoPossibleEvents
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
from .held import HeldNotes

log = logging.getLogger(__name__)

MIN_GAP = 0.01  # seconds: the reference's 10 ms guard for durations
_TOL = 1e-9
_FULL_TIME = np.array([[ev.TIME_MIN, math.inf, 1.0]])
_FULL_VEL = np.array([[1.0, ev.VEL_MAX, 1.0]])


@dataclass
class Atom:
    """Cells allowed as note-on / note-off at the times in ``time`` (rows lo, hi, weight)."""

    on: np.ndarray
    off: np.ndarray
    time: np.ndarray

    def empty(self) -> bool:
        return not (self.on.any() or self.off.any())


class Support:
    """The events still possible while one event is being sampled, sub-event by sub-event."""

    def __init__(self, atoms: list[Atom], vlo: np.ndarray, vhi: np.ndarray,
                 vel_ranges: np.ndarray, fixed: dict[str, float],
                 broken: tuple[str, ...] = (), forced: str | None = None) -> None:
        self.atoms = atoms
        self.vlo = vlo
        self.vhi = vhi
        self.vel_ranges = vel_ranges
        self.fixed = fixed
        self.broken = broken
        self.forced = forced

    # -- marginals ----------------------------------------------------------------------------
    def on_rows(self) -> np.ndarray:
        out = self.atoms[0].on.any(1)
        for a in self.atoms[1:]:
            out |= a.on.any(1)
        return out

    def off_rows(self) -> np.ndarray:
        out = self.atoms[0].off.any(1)
        for a in self.atoms[1:]:
            out |= a.off.any(1)
        return out

    def marginal_inst(self) -> np.ndarray:
        """Boolean ``(321,)``: instruments of some remaining event."""
        return self.on_rows() | self.off_rows()

    def marginal_pitch(self) -> np.ndarray:
        """Boolean ``(129,)``: pitches of some remaining event."""
        out = np.zeros(N_P, dtype=bool)
        for a in self.atoms:
            out |= a.on.any(0)
            out |= a.off.any(0)
        return out

    def time_pieces(self) -> np.ndarray:
        """Disjoint ``(n, 3)`` time pieces ``[lo, hi, weight]`` of the remaining events."""
        if len(self.atoms) == 1:
            return self.atoms[0].time
        return np.concatenate([a.time for a in self.atoms])

    def vel_pieces(self) -> tuple[bool, np.ndarray]:
        """``(note_off_possible, on)``; ``on`` = integer note-on ranges ``[k_lo, k_hi, w]``."""
        rows = np.flatnonzero(self.on_rows())
        has_off = bool(self.off_rows().any())
        if rows.size == 0:
            return has_off, np.zeros((0, 3))
        lo, hi = self.vlo[rows], self.vhi[rows]
        if lo.min() == lo.max() and hi.min() == hi.max():
            pairs = np.array([[lo[0], hi[0]]])
        else:
            pairs = np.unique(np.stack((lo, hi), 1), axis=0)
        return has_off, integer_ranges(pairs, self.vel_ranges)

    # -- fixing values --------------------------------------------------------------------------
    def _keep(self, atoms: list[Atom]) -> None:
        self.atoms = [a for a in atoms if not a.empty()]

    def fix_inst(self, i: int) -> None:
        keep = np.zeros((N_I, 1), dtype=bool)
        keep[i] = True
        self._keep([Atom(a.on & keep, a.off & keep, a.time) for a in self.atoms])
        self.fixed["i"] = i

    def fix_pitch(self, p: int) -> None:
        keep = np.zeros((1, N_P), dtype=bool)
        keep[0, p] = True
        self._keep([Atom(a.on & keep, a.off & keep, a.time) for a in self.atoms])
        self.fixed["p"] = p

    def fix_time(self, t: float) -> None:
        atoms = []
        for a in self.atoms:
            inside = (a.time[:, 0] - _TOL <= t) & (t <= a.time[:, 1] + _TOL)
            if inside.any():
                w = a.time[inside, 2][:1]
                atoms.append(Atom(a.on, a.off, np.array([[t, t, float(w[0])]])))
        self._keep(atoms)
        self.fixed["t"] = t

    def fix_vel(self, v: float) -> None:
        if v < ev.NOTE_ON_MIN_VEL:
            self._keep([Atom(np.zeros_like(a.on), a.off, a.time) for a in self.atoms])
        else:
            ok = (self.vlo - _TOL <= v) & (v <= self.vhi + _TOL)
            ok = ok[:, None]
            self._keep([Atom(a.on & ok, np.zeros_like(a.off), a.time) for a in self.atoms])
        self.fixed["v"] = v

    def fix(self, sub: str, value: float) -> None:
        {"i": self.fix_inst, "p": self.fix_pitch, "t": self.fix_time, "v": self.fix_vel}[sub](
            value)

    def autoset(self) -> list[str]:
        """Fix every sub-event left with a single possible value; return those fixed."""
        newly: list[str] = []
        while self.atoms:
            if "i" not in self.fixed:
                m = np.flatnonzero(self.marginal_inst())
                if m.size == 1:
                    self.fix_inst(int(m[0]))
                    newly.append("i")
                    continue
            if "p" not in self.fixed:
                m = np.flatnonzero(self.marginal_pitch())
                if m.size == 1:
                    self.fix_pitch(int(m[0]))
                    newly.append("p")
                    continue
            if "t" not in self.fixed:
                pieces = self.time_pieces()
                if len(pieces) == 1 and pieces[0, 0] == pieces[0, 1]:
                    self.fix_time(float(pieces[0, 0]))
                    newly.append("t")
                    continue
            if "v" not in self.fixed:
                has_off, on = self.vel_pieces()
                if len(on) == 0 and has_off:
                    self.fix_vel(0.0)
                    newly.append("v")
                    continue
                if not has_off and len(on) == 1 and on[0, 0] == on[0, 1]:
                    self.fix_vel(float(on[0, 0]))
                    newly.append("v")
                    continue
            break
        return newly


def integer_ranges(pairs: np.ndarray, user: np.ndarray) -> np.ndarray:
    """Integer velocity ranges allowed by bounds ``pairs`` (n, 2) within ``user`` (m, 3)."""
    k_lo = np.maximum(np.ceil(pairs[:, None, 0] - _TOL), np.ceil(user[None, :, 0] - _TOL))
    k_hi = np.minimum(np.floor(pairs[:, None, 1] + _TOL), np.floor(user[None, :, 1] + _TOL))
    k_lo = np.maximum(k_lo, 1.0)
    k_hi = np.minimum(k_hi, ev.VEL_MAX)
    w = np.broadcast_to(user[None, :, 2], k_lo.shape)
    ok = (k_lo <= k_hi) & (w > 0)
    if not ok.any():
        return np.zeros((0, 3))
    rows = np.stack((k_lo[ok], k_hi[ok], w[ok]), 1)
    if len(rows) == 1:
        return rows
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    merged = [rows[0].copy()]
    for r in rows[1:]:
        last = merged[-1]
        if r[0] <= last[1] + 1 and r[2] == last[2]:
            last[1] = max(last[1], r[1])
        else:
            merged.append(r.copy())
    return np.array(merged)


def _fail(why: str, names: list[str]) -> NoPossibleEvents:
    return NoPossibleEvents(f"no possible event: {why} (constraints involved: "
                            f"{', '.join(names) if names else 'held notes only'})")


def build_support(cons: Constraints, held: HeldNotes) -> Support:
    """The support of the next event under ``cons`` given the sounding notes ``held``.

    ``cons`` must be validated. Raises :class:`NoPossibleEvents` naming the constraints
    that leave nothing possible.
    """
    names: list[str] = []
    held_m = held.mask() if held.count else None
    # -- note maps and held notes ----------------------------------------------------------
    if cons.note_on_map is None:
        on = DEFAULT_ON.copy()
        on_insts = None
    else:
        on = note_mask(cons.note_on_map)
        on_insts = inst_mask(cons.note_on_map.keys())
        names.append("note_on_map")
    if held_m is None:
        off = np.zeros((N_I, N_P), dtype=bool)
    else:
        on &= ~held_m
        if cons.note_off_map is not None:
            off = note_mask(cons.note_off_map) & held_m
        elif on_insts is None:
            off = held_m.copy()
        else:
            off = held_m & on_insts[:, None]
    if cons.note_off_map is not None:
        names.append("note_off_map")
    if cons.inst is not None:
        keep = np.zeros((N_I, 1), dtype=bool)
        keep[cons.inst] = True
        on &= keep
        off &= keep
        names.append("inst")
    if cons.pitch is not None:
        keep = np.zeros((1, N_P), dtype=bool)
        keep[0, cons.pitch] = True
        on &= keep
        off &= keep
        names.append("pitch")
    if not (on.any() or off.any()):
        raise _fail("every allowed note-on is already sounding and no allowed note-off "
                    "is sounding", names)
    # -- velocity -------------------------------------------------------------------------
    vlo = np.maximum(per_inst(cons.min_vel, "min_vel"), ev.NOTE_ON_MIN_VEL)
    vhi = np.minimum(per_inst(cons.max_vel, "max_vel"), ev.VEL_MAX)
    user_vel = _FULL_VEL if cons.vel_ranges is None else intervals(cons.vel_ranges,
                                                                   "vel_ranges")
    if cons.vel_ranges is not None:
        names.append("vel_ranges")
    if isinstance(cons.min_vel, dict) or cons.min_vel != 0.0:
        names.append("min_vel")
    if isinstance(cons.max_vel, dict) or cons.max_vel != ev.VEL_MAX:
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
    if not (on.any() or off.any()):
        raise _fail("no velocity is allowed for any allowed note", names)
    # -- time -------------------------------------------------------------------------------
    min_time = float(cons.min_time)
    if min_time > 0:
        names.append("min_time")
    if cons.time is not None:
        names.append("time")
        t = float(cons.time)
        pieces = np.array([[t, t, 1.0]])
        ok = t >= min_time - _TOL
        if cons.time_ranges is not None:
            names.append("time_ranges")
            r = intervals(cons.time_ranges, "time_ranges")
            ok &= bool(np.any((r[:, 0] - _TOL <= t) & (t <= r[:, 1] + _TOL) & (r[:, 2] > 0)))
        if not ok:
            raise _fail(f"the fixed time {t} is outside min_time / time_ranges", names)
    else:
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
    t0 = float(cons.time) if cons.time is not None else min_time
    # -- guarantees: stuck notes and polyphony --------------------------------------------------
    from .guards import apply_guards  # local: keeps this module's import graph flat

    return apply_guards(cons, held, held_m, on, off, pieces, vlo, vhi, user_vel, t0, names)


def stratify(on: np.ndarray, off: np.ndarray, pieces: np.ndarray, pen_on: np.ndarray,
             pen_off: np.ndarray, time_pens: list[tuple[float, float, str]],
             md_cells: tuple[np.ndarray, np.ndarray, np.ndarray], md_pen: float,
             ) -> tuple[list[Atom], float, tuple[str, ...]]:
    """Split the support into time segments, score every (cell, segment), keep the cheapest.

    ``pen_on`` / ``pen_off`` are per-instrument penalties ``(321,)``; ``time_pens`` lists
    ``(threshold, penalty, name)`` for times *later* than the threshold; ``md_cells`` are
    ``(inst, pitch, earliest_time)`` of held notes whose note-off costs ``md_pen`` before
    ``earliest_time``. Returns the atoms of the minimum-penalty stratum, that penalty and
    the names of the soft constraints it breaks.
    """
    breaks = sorted({b for b, _, _ in time_pens} | set(md_cells[2].tolist()))
    if breaks:
        cut = []
        for lo, hi, w in pieces:
            inner = [b for b in breaks if lo < b < hi]
            edges = [lo, *inner, hi]
            cut.extend((a, b, w) for a, b in zip(edges[:-1], edges[1:]))
        pieces = np.array(cut)
    mids = 0.5 * (pieces[:, 0] + pieces[:, 1])
    g = np.zeros(len(pieces))
    for b, p, _ in time_pens:
        g += np.where(mids > b, p, 0.0)
    md_i, md_p, md_t = md_cells
    early = mids[:, None] < md_t[None, :]  # (pieces, md cells)
    keys: dict[tuple, list[int]] = {}
    for k in range(len(pieces)):
        keys.setdefault((g[k], tuple(early[k].tolist())), []).append(k)
    on_rows, off_any = on.any(1), off.any()
    on_min = pen_on[on_rows].min() if on_rows.any() else math.inf
    groups = []
    for (gk, flags), idx in keys.items():
        off_pen = None
        if off_any:
            off_pen = np.where(off, pen_off[:, None] + gk, math.inf)
            sel = np.asarray(flags, dtype=bool)
            if sel.any():
                off_pen[md_i[sel], md_p[sel]] += md_pen
        best = min(on_min + gk, off_pen.min() if off_pen is not None else math.inf)
        groups.append((gk, flags, idx, off_pen, best))
    level = min(gr[4] for gr in groups)
    atoms: list[Atom] = []
    broken: set[str] = set()
    for gk, flags, idx, off_pen, best in groups:
        if best > level + _TOL:
            continue
        a_on = on & (np.abs(pen_on + gk - level) <= _TOL)[:, None]
        if off_pen is None:
            a_off = np.zeros_like(off)
        else:
            a_off = np.abs(off_pen - level) <= _TOL
        atom = Atom(a_on, a_off, pieces[idx])
        if atom.empty():
            continue
        atoms.append(atom)
        if level > 0:
            mid = mids[idx[0]]
            broken.update(n for b, p, n in time_pens if mid > b and p > 0)
            if np.any(a_on.any(1) & (pen_on > 0)):
                broken.add(Soft.MAX_POLY.value)
            if np.any(a_off.any(1) & (pen_off > 0)):
                broken.add(Soft.MIN_POLY.value)
            sel = np.asarray(flags, dtype=bool)
            if sel.any() and a_off[md_i[sel], md_p[sel]].any():
                broken.add(Soft.MIN_DUR.value)
    return atoms, float(level), tuple(sorted(broken))
