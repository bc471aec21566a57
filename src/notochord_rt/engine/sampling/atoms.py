"""The support while one event is sampled: a few :class:`Atom` s plus shared velocity limits.

An atom is a window of the instrument x pitch grid (a note-on mask and a note-off mask,
``None`` when empty) and the time pieces ``[lo, hi, weight]`` at which those cells are
allowed. Fixing the instrument or pitch narrows every window to one row / column (a
view, no copy), so later reductions are over 129 or 1 cells. Row/column reductions of the
full grid are cached per atom (atoms are immutable), which keeps the common path at one
or two full-grid reductions per sampled event.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ... import events as ev
from ...errors import NoPossibleEvents
from .constraints import N_I, N_P

_TOL = 1e-9
_NO_RANGES = np.zeros((0, 3))


class Atom:
    """Allowed note-on / note-off cells (``None`` = none) at the times in ``time``."""

    __slots__ = ("on", "off", "time", "_on_r", "_off_r", "_on_c", "_off_c", "_has_on",
                 "_has_off")

    def __init__(self, on: np.ndarray | None, off: np.ndarray | None, time: np.ndarray,
                 on_r: np.ndarray | None = None, off_r: np.ndarray | None = None,
                 on_c: np.ndarray | None = None, off_c: np.ndarray | None = None) -> None:
        self.on, self.off, self.time = on, off, time
        self._on_r, self._off_r, self._on_c, self._off_c = on_r, off_r, on_c, off_c
        self._has_on: bool | None = None
        self._has_off: bool | None = None

    def on_r(self) -> np.ndarray | None:
        if self.on is None:
            return None
        if self._on_r is None:
            self._on_r = self.on.any(1)
        return self._on_r

    def off_r(self) -> np.ndarray | None:
        if self.off is None:
            return None
        if self._off_r is None:
            self._off_r = self.off.any(1)
        return self._off_r

    def on_c(self) -> np.ndarray | None:
        if self.on is None:
            return None
        if self._on_c is None:
            self._on_c = self.on.any(0)
        return self._on_c

    def off_c(self) -> np.ndarray | None:
        if self.off is None:
            return None
        if self._off_c is None:
            self._off_c = self.off.any(0)
        return self._off_c

    def has_on(self) -> bool:
        if self._has_on is None:
            r = self.on_r()
            self._has_on = r is not None and bool(r.any())
        return self._has_on

    def has_off(self) -> bool:
        if self._has_off is None:
            r = self.off_r()
            self._has_off = r is not None and bool(r.any())
        return self._has_off

    def empty(self) -> bool:
        return not (self.has_on() or self.has_off())

    def with_time(self, time: np.ndarray) -> Atom:
        """The same cells (and cached reductions) at other time pieces."""
        atom = Atom(self.on, self.off, time, self._on_r, self._off_r, self._on_c, self._off_c)
        atom._has_on, atom._has_off = self._has_on, self._has_off
        return atom


def _or(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return a | b


class Support:
    """The events still possible, narrowed sub-event by sub-event (see the module doc).

    ``vlo``/``vhi`` are per-instrument continuous note-on velocity bounds, ``vel_ranges``
    the caller's velocity intervals ``[lo, hi, weight]``; ``fixed`` maps sub-event
    initials to the values fixed so far; ``broken``/``forced`` are reported with the event.
    """

    def __init__(self, atoms: list[Atom], vlo: np.ndarray, vhi: np.ndarray,
                 vel_ranges: np.ndarray, broken: tuple[str, ...] = (),
                 forced: str | None = None, vel_uniform: bool | None = None) -> None:
        self.atoms = [a for a in atoms if not a.empty()]
        self.vlo, self.vhi, self.vel_ranges = vlo, vhi, vel_ranges
        if vel_uniform is None:
            vel_uniform = uniform_velocity(vlo, vhi)
        self.vel_uniform = vel_uniform
        self._cache: dict[str, object] = {}
        self.fixed: dict[str, float] = {}
        self.broken = broken
        self.forced = forced
        self.r0, self.nr, self.c0, self.nc = 0, N_I, 0, N_P
        self.retime: Callable[[int, np.ndarray], np.ndarray] | None = None
        """``inst_grid``: puts the time pieces on the instrument's grid once it is fixed."""

    # -- marginals (local to the current window, then placed on the full axis) ----------------
    def _rows(self, which: str) -> np.ndarray | None:
        out = None
        for a in self.atoms:
            out = _or(out, a.on_r() if which == "on" else a.off_r())
        return out

    def _full(self, local: np.ndarray | None, size: int, start: int, n: int) -> np.ndarray:
        if local is not None and n == size:
            return local  # an atom's cached reduction: read-only for callers
        out = np.zeros(size, dtype=bool)
        if local is not None:
            out[start:start + n] = local
        return out

    def marginal_inst(self) -> np.ndarray:
        """Boolean ``(321,)``: instruments of some remaining event (do not modify)."""
        out = self._cache.get("i")
        if out is None:
            local = _or(self._rows("on"), self._rows("off"))
            out = self._cache["i"] = self._full(local, N_I, self.r0, self.nr)
        return out  # type: ignore[return-value]

    def marginal_pitch(self) -> np.ndarray:
        """Boolean ``(129,)``: pitches of some remaining event (do not modify)."""
        local = None
        for a in self.atoms:
            local = _or(local, _or(a.on_c(), a.off_c()))
        return self._full(local, N_P, self.c0, self.nc)

    def _single_pitch(self) -> int | None:
        """The only remaining pitch, if exactly one; cheap rejection on dense grids."""
        for a in self.atoms:
            for mask, rows in ((a.on, a.on_r()), (a.off, a.off_r())):
                if mask is not None and rows is not None and rows.any():
                    if np.count_nonzero(mask[int(np.argmax(rows))]) >= 2:
                        return None
        m = self.marginal_pitch()
        return int(np.argmax(m)) if np.count_nonzero(m) == 1 else None

    def time_pieces(self) -> np.ndarray:
        """Disjoint ``(n, 3)`` time pieces ``[lo, hi, weight]`` of the remaining events."""
        if len(self.atoms) == 1:
            return self.atoms[0].time
        return np.concatenate([a.time for a in self.atoms])

    def vel_pieces(self) -> tuple[bool, np.ndarray]:
        """``(note_off_possible, on)``; ``on`` = integer note-on ranges ``[k_lo, k_hi, w]``."""
        out = self._cache.get("v")
        if out is None:
            out = self._cache["v"] = self._vel_pieces()
        return out  # type: ignore[return-value]

    def _vel_pieces(self) -> tuple[bool, np.ndarray]:
        has_off = any(a.has_off() for a in self.atoms)
        on_rows = self._rows("on")
        if on_rows is None or not on_rows.any():
            return has_off, _NO_RANGES
        if self.vel_uniform:
            pairs = np.array([[self.vlo[ev.FIRST_MELODIC], self.vhi[ev.FIRST_MELODIC]]])
        else:
            rows = np.flatnonzero(on_rows) + self.r0
            lo, hi = self.vlo[rows], self.vhi[rows]
            pairs = np.unique(np.stack((lo, hi), 1), axis=0)
        return has_off, integer_ranges(pairs, self.vel_ranges)

    # -- fixing values --------------------------------------------------------------------------
    def _keep(self, atoms: list[Atom]) -> None:
        self.atoms = [a for a in atoms if not a.empty()]
        self._cache.clear()

    def fix_inst(self, i: int) -> None:
        k = i - self.r0
        if not 0 <= k < self.nr:
            self._keep([])
        else:
            s = slice(k, k + 1)
            self._keep([Atom(
                None if a.on is None else a.on[s], None if a.off is None else a.off[s], a.time,
                on_r=None if a._on_r is None else a._on_r[s],
                off_r=None if a._off_r is None else a._off_r[s]) for a in self.atoms])
        self.r0, self.nr = i, 1
        self.fixed["i"] = i
        if self.retime is not None and self.atoms:
            self._retime(i)

    def _retime(self, i: int) -> None:
        """The atoms' times put on instrument ``i``'s grid (``inst_grid``)."""
        atoms = []
        for a in self.atoms:
            t = self.retime(i, a.time)  # type: ignore[misc]
            if len(t):
                atoms.append(a.with_time(t))
        if not atoms:
            raise NoPossibleEvents(f"no possible event: no point of instrument {i}'s grid "
                                   "lies in the allowed times (constraints involved: "
                                   "inst_grid)")
        self._keep(atoms)

    def fix_pitch(self, p: int) -> None:
        k = p - self.c0
        if not 0 <= k < self.nc:
            self._keep([])
        else:
            s = slice(k, k + 1)
            self._keep([Atom(
                None if a.on is None else a.on[:, s], None if a.off is None else a.off[:, s],
                a.time, on_c=None if a._on_c is None else a._on_c[s],
                off_c=None if a._off_c is None else a._off_c[s]) for a in self.atoms])
        self.c0, self.nc = p, 1
        self.fixed["p"] = p

    def fix_time(self, t: float) -> None:
        atoms = []
        for a in self.atoms:
            tm = a.time
            if len(tm) == 1:
                inside = tm[0, 0] - _TOL <= t <= tm[0, 1] + _TOL
                w = float(tm[0, 2])
            else:
                sel = (tm[:, 0] - _TOL <= t) & (t <= tm[:, 1] + _TOL)
                inside = bool(sel.any())
                w = float(tm[sel, 2][0]) if inside else 0.0
            if inside:
                atoms.append(a.with_time(np.array([[t, t, w]])))
        if len(atoms) == len(self.atoms):  # same cells: the cell marginals still hold
            self.atoms = atoms
            self._cache.pop("t", None)
        else:
            self._keep(atoms)
        self.fixed["t"] = t

    def fix_vel(self, v: float) -> None:
        if v < ev.NOTE_ON_MIN_VEL:
            self._keep([Atom(None, a.off, a.time, off_r=a._off_r, off_c=a._off_c)
                        for a in self.atoms])
        else:
            if self.vel_uniform and self.nr > 1:
                lo, hi = self.vlo[ev.FIRST_MELODIC], self.vhi[ev.FIRST_MELODIC]
                ok = np.full(self.nr, lo - _TOL <= v <= hi + _TOL)
                ok[: max(0, ev.FIRST_MELODIC - self.r0)] = False  # the start row
            else:
                ok = ((self.vlo - _TOL <= v) & (v <= self.vhi + _TOL))[
                    self.r0:self.r0 + self.nr]
            if ok.all() or (self.nr == N_I and ok[ev.FIRST_MELODIC:].all()):
                atoms = [Atom(a.on, None, a.time, on_r=a._on_r, on_c=a._on_c)
                         for a in self.atoms]
            else:
                atoms = [Atom(None if a.on is None else a.on & ok[:, None], None, a.time)
                         for a in self.atoms]
            self._keep(atoms)
        self.fixed["v"] = v

    def fix(self, sub: str, value: float) -> None:
        """Fix sub-event ``sub`` (``"i"``, ``"p"``, ``"t"``, ``"v"``) to ``value``."""
        if sub == "i":
            self.fix_inst(int(value))
        elif sub == "p":
            self.fix_pitch(int(value))
        elif sub == "t":
            self.fix_time(float(value))
        else:
            self.fix_vel(float(value))

    def autoset(self) -> list[str]:
        """Fix every sub-event left with a single possible value; return those fixed."""
        newly: list[str] = []
        while self.atoms:
            if "i" not in self.fixed:
                m = self.marginal_inst()
                if np.count_nonzero(m) == 1:
                    self.fix_inst(int(np.argmax(m)))
                    newly.append("i")
                    continue
            if "p" not in self.fixed:
                p = self._single_pitch()
                if p is not None:
                    self.fix_pitch(p)
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


def uniform_velocity(vlo: np.ndarray, vhi: np.ndarray) -> bool:
    """True when every real instrument has the same note-on velocity bounds."""
    lo, hi = vlo[ev.FIRST_MELODIC:], vhi[ev.FIRST_MELODIC:]
    return bool(lo.min() == lo.max() and hi.min() == hi.max())


def integer_ranges(pairs: np.ndarray, user: np.ndarray) -> np.ndarray:
    """Integer velocity ranges allowed by bounds ``pairs`` (n, 2) within ``user`` (m, 3).

    Returns ``[k_lo, k_hi, weight]`` rows, merged within each user interval.
    """
    if len(pairs) == 1 and len(user) == 1:
        k_lo = max(np.ceil(pairs[0, 0] - _TOL), np.ceil(user[0, 0] - _TOL), 1.0)
        k_hi = min(np.floor(pairs[0, 1] + _TOL), np.floor(user[0, 1] + _TOL), ev.VEL_MAX)
        if k_lo <= k_hi and user[0, 2] > 0:
            return np.array([[k_lo, k_hi, user[0, 2]]])
        return _NO_RANGES
    k_lo = np.maximum(np.ceil(pairs[:, None, 0] - _TOL), np.ceil(user[None, :, 0] - _TOL))
    k_hi = np.minimum(np.floor(pairs[:, None, 1] + _TOL), np.floor(user[None, :, 1] + _TOL))
    k_lo = np.maximum(k_lo, 1.0)
    k_hi = np.minimum(k_hi, ev.VEL_MAX)
    w = np.broadcast_to(user[None, :, 2], k_lo.shape)
    ok = (k_lo <= k_hi) & (w > 0)
    if not ok.any():
        return _NO_RANGES
    rows = np.stack((k_lo[ok], k_hi[ok], w[ok]), 1)
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    merged = [rows[0].copy()]
    for r in rows[1:]:
        last = merged[-1]
        if r[0] <= last[1] + 1 and r[2] == last[2]:
            last[1] = max(last[1], r[1])
        else:
            merged.append(r.copy())
    return np.array(merged)
