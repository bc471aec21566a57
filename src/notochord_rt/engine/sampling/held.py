"""Held (sounding) notes of one stream, as arrays: O(1) per fed event.

Onsets are stored as absolute times in a ``(321, 129)`` float array (NaN = silent); a
note's age is ``elapsed - onset``, so advancing time touches one float, not every note.
Polyphony per instrument is kept as a running count.

The clock is bounded: one fed time advances it by at most :data:`MAX_CLOCK_STEP` (an
hour), so feeding huge gaps (``1e308`` twice) can neither overflow it to ``inf`` (ages
would become NaN and ``max_duration`` would stop releasing notes) nor make it so large
that later small steps are lost to rounding. Gaps up to an hour are measured exactly; a
longer gap counts as an hour, which is past any practical ``max_duration``.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...model.motif import MotifHistory
from ...model.pulse import OnsetHistory
from .constraints import N_I, N_P

MAX_CLOCK_STEP = 3600.0
"""Seconds: the most one fed event can advance a stream's clock (see the module doc)."""


class HeldNotes:
    """Which (instrument, pitch) cells sound, since when, and the stream's elapsed time;
    ``onsets`` keeps the recent distinct onsets the pulse components are placed from
    (:mod:`~notochord_rt.model.pulse`), ``motifs`` each instrument's pitches for motif
    copying (:mod:`~notochord_rt.model.motif`)."""

    __slots__ = ("onset", "held", "poly", "elapsed", "_cells", "onsets", "motifs")

    def __init__(self, track_grid: bool = False) -> None:
        self.onset = np.full((N_I, N_P), np.nan)
        self.held = np.zeros((N_I, N_P), dtype=bool)
        self.poly = np.zeros(N_I, dtype=np.int64)
        self.elapsed = 0.0
        self._cells: dict[tuple[int, int], None] = {}
        self.onsets = OnsetHistory(track=track_grid)
        self.motifs = MotifHistory()

    @property
    def count(self) -> int:
        """Number of sounding notes."""
        return len(self._cells)

    def clear(self) -> None:
        """Silence everything and reset elapsed time to 0."""
        self.onset.fill(np.nan)
        self.held.fill(False)
        self.poly.fill(0)
        self.elapsed = 0.0
        self._cells.clear()
        self.onsets.clear()
        self.motifs.clear()

    def advance(self, dt: float) -> None:
        """Let ``dt >= 0`` seconds pass (ages every held note by ``dt``, at most
        :data:`MAX_CLOCK_STEP`)."""
        if not dt >= 0.0:  # also refuses NaN
            raise InputError(f"time must be >= 0 seconds, got {dt!r}")
        self.elapsed += dt if dt <= MAX_CLOCK_STEP else MAX_CLOCK_STEP

    def is_held(self, inst: int, pitch: int) -> bool:
        return bool(self.held[inst, pitch])

    def note_on(self, inst: int, pitch: int) -> bool:
        """Start (or restart) a note now; return True if it was already sounding."""
        was = self.is_held(inst, pitch)
        self.onset[inst, pitch] = self.elapsed
        self.onsets.note_on(self.elapsed)
        self.motifs.note_on(inst, pitch)
        if not was:
            self.held[inst, pitch] = True
            self.poly[inst] += 1
            self._cells[(inst, pitch)] = None
        return was

    def note_off(self, inst: int, pitch: int) -> bool:
        """End a note; return True if it was sounding (False: nothing to end)."""
        if not self.is_held(inst, pitch):
            return False
        self.onset[inst, pitch] = np.nan
        self.held[inst, pitch] = False
        self.poly[inst] -= 1
        del self._cells[(inst, pitch)]
        return True

    def mask(self) -> np.ndarray:
        """Boolean ``(321, 129)``: True where a note sounds (do not modify)."""
        return self.held

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Instrument and pitch index arrays of the held notes (in onset order)."""
        n = len(self._cells)
        flat = np.fromiter((c for cell in self._cells for c in cell), dtype=np.intp,
                           count=2 * n)
        return flat[0::2], flat[1::2]

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
        h.held = self.held.copy()
        h.poly = self.poly.copy()
        h.elapsed = self.elapsed
        h._cells = dict(self._cells)
        h.onsets = self.onsets.copy()
        h.motifs = self.motifs.copy()
        return h
