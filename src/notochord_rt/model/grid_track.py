"""Grid tracking: one 16th-note grid followed through a stream's onsets.

The pulse components of :mod:`.pulse` are placed on the grids of the last few
inter-onset intervals. Each of those grids is local: a model continuing its own music
mixes them, and two incommensurate IOIs (0.30 s and 0.47 s, say) place its next onsets
on no common grid; the piece loses its pulse within seconds (docs/model-card.md). With
``time_pulse_grid`` the pulse components are instead the next ``3 * time_pulse`` lines
of *one* grid, tracked through the stream the way the ``grid_fit`` statistic finds it
(:mod:`notochord_rt.onset_grid`): onsets placed there all share one grid, so a pulse
the model keeps is a pulse a listener hears.

Definitions (times in seconds, onsets as in :mod:`.pulse`: distinct note-ons):

* the tracker keeps the onsets of the last :data:`WINDOW` seconds; it has no grid while
  it holds fewer than :data:`MIN_ONSETS`;
* at each new onset the current grid is refined by least squares to the window's
  onsets (:func:`~notochord_rt.onset_grid.refine_grid`), and kept if at least
  :data:`KEEP_SHARE` of them lie on it; otherwise (and when there is none) the grid is
  fitted afresh (:func:`~notochord_rt.onset_grid.fit_grid`, then refined) when its
  lines are next read. Refining is cheap (about 0.1 ms) and keeps the phase continuous;
  a fresh fit (about 1 ms) happens only when the music has left the grid, and only where
  the lines are used: a sampler reads them to draw a time, so an answer played at once
  (its time fixed) and a prompt fed event by event cost one fit at most, at the next
  drawn time. Training reads them after every event (each event's lines are an input),
  as does a free-running sampler, so both refit at every onset off the grid. (v10 was
  trained refitting at most every 4th onset; a continuation then began up to three
  onsets late on a grid that no longer held its prompt and kept 0.65 of its onsets on
  the prompt's grid, against 0.77 now: docs/model-card.md);
* after an event at ``now`` the candidate locations are the delta times to the grid's
  next ``n`` lines, the first being the first line more than :data:`EDGE` periods after
  ``now`` (a line that close counts as ``now``: the event just played on it).

A stream's :class:`~notochord_rt.model.pulse.OnsetHistory` feeds its tracker; training
feeds one per sequence the same way (:func:`~notochord_rt.model.pulse.sequence_grid_lines`,
in the data-loader workers), so training and live sampling agree exactly (tested).
"""

from __future__ import annotations

import math

import numpy as np

from ..onset_grid import Grid, fit_grid, refine_grid

WINDOW = 8.0
"""Seconds of recent onsets the grid is fitted to (as the ``grid_fit`` statistic)."""
MIN_ONSETS = 6
"""Fewest onsets in the window for a grid."""
KEEP_SHARE = 0.75
"""Share of the window's onsets that must lie on the current grid to keep it."""
EDGE = 0.1
"""Fraction of a period: a line this close after ``now`` counts as ``now``."""


class GridTracker:
    """The tracked grid of one stream (see the module docstring)."""

    __slots__ = ("onsets", "grid", "stale")

    def __init__(self) -> None:
        self.onsets: list[float] = []
        self.grid: Grid | None = None
        self.stale = False  # the grid must be fitted afresh before its lines are read

    def add(self, t: float) -> None:
        """Account for a distinct onset at stream time ``t`` (non-decreasing)."""
        on = self.onsets
        on.append(t)
        cut = 0
        while on[cut] < t - WINDOW:
            cut += 1
        if cut:
            del on[:cut]
        if len(on) < MIN_ONSETS:
            self.grid, self.stale = None, False
            return
        x = np.asarray(on)
        if self.grid is not None:
            self.grid = refine_grid(self.grid, x)
            if self.grid.on_grid(x).mean() >= KEEP_SHARE:
                self.stale = False
                return
        self.stale = True

    @property
    def ready(self) -> bool:
        """Whether :meth:`lines` has (or will fit) a grid."""
        return self.grid is not None or self.stale

    def lines(self, now: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(delta times to the next ``n`` grid lines after ``now`` ``[n]``, valid ``[n]``);
        without a grid every location is 1 and none is valid. A pending fresh fit is done
        here, once, on the onsets of the window as they are now."""
        if self.stale:
            x = np.asarray(self.onsets)
            self.grid, self.stale = refine_grid(fit_grid(x), x), False
        if self.grid is None or n == 0:
            return np.ones(n), np.zeros(n, dtype=bool)
        period, phase = self.grid.period, self.grid.phase
        first = math.floor((now - phase) / period + EDGE) + 1
        return phase + period * (first + np.arange(n)) - now, np.ones(n, dtype=bool)

    def clear(self) -> None:
        self.onsets.clear()
        self.grid, self.stale = None, False

    def copy(self) -> GridTracker:
        t = GridTracker()
        t.onsets = list(self.onsets)
        t.grid, t.stale = self.grid, self.stale
        return t
