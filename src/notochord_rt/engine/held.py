"""Held (sounding) notes of one stream, as arrays: O(1) per fed event.

Onsets are stored as absolute times in a ``(321, 129)`` float array (NaN = silent); a
note's age is ``elapsed - onset``, so advancing time touches one float, not every note.
Polyphony per instrument is kept as a running count.
"""

from __future__ import annotations

import numpy as np

from .constraints import N_I, N_P


class HeldNotes:
    """Which (instrument, pitch) cells sound, since when, and the stream's elapsed time."""

    __slots__ = ("onset", "poly", "elapsed", "count")

    def __init__(self) -> None:
        self.onset = np.full((N_I, N_P), np.nan)
        self.poly = np.zeros(N_I, dtype=np.int64)
        self.elapsed = 0.0
        self.count = 0

    def clear(self) -> None:
        """Silence everything and reset elapsed time to 0."""
        self.onset.fill(np.nan)
        self.poly.fill(0)
        self.elapsed = 0.0
        self.count = 0

    def advance(self, dt: float) -> None:
        """Let ``dt`` seconds pass (ages every held note by ``dt``)."""
        self.elapsed += dt

    def is_held(self, inst: int, pitch: int) -> bool:
        return not np.isnan(self.onset[inst, pitch])

    def note_on(self, inst: int, pitch: int) -> bool:
        """Start (or restart) a note now; return True if it was already sounding."""
        was = self.is_held(inst, pitch)
        self.onset[inst, pitch] = self.elapsed
        if not was:
            self.poly[inst] += 1
            self.count += 1
        return was

    def note_off(self, inst: int, pitch: int) -> bool:
        """End a note; return True if it was sounding (False: nothing to end)."""
        if not self.is_held(inst, pitch):
            return False
        self.onset[inst, pitch] = np.nan
        self.poly[inst] -= 1
        self.count -= 1
        return True

    def mask(self) -> np.ndarray:
        """Boolean ``(321, 129)``: True where a note sounds."""
        return ~np.isnan(self.onset)

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Instrument and pitch index arrays of the held notes."""
        if self.count == 0:
            empty = np.zeros(0, dtype=np.intp)
            return empty, empty
        return np.nonzero(self.mask())

    def age(self, inst: int, pitch: int) -> float:
        """Seconds since the note started (NaN if silent)."""
        return self.elapsed - float(self.onset[inst, pitch])

    def as_dict(self) -> dict[tuple[int, int], float]:
        """``{(inst, pitch): age in seconds}`` like the reference's ``held_notes``."""
        ii, pp = self.cells()
        ages = self.elapsed - self.onset[ii, pp]
        return {(int(i), int(p)): float(a) for i, p, a in zip(ii, pp, ages)}

    def held_map(self) -> dict[int, set[int]]:
        """``{inst: {pitches}}`` of the sounding notes."""
        out: dict[int, set[int]] = {}
        ii, pp = self.cells()
        for i, p in zip(ii, pp):
            out.setdefault(int(i), set()).add(int(p))
        return out

    def copy(self) -> HeldNotes:
        h = HeldNotes.__new__(HeldNotes)
        h.onset = self.onset.copy()
        h.poly = self.poly.copy()
        h.elapsed = self.elapsed
        h.count = self.count
        return h
