"""Grid fit: how well the onsets of a stretch of music sit on one 16th-note grid.

Definition (used by the ``grid_fit`` statistic and the teacher-forced rhythm test):

* A *grid* is a period ``P`` (one 16th note: ``P = 15 / bpm`` seconds for a quarter-note
  tempo ``bpm``) and a phase (the time of one grid line). An onset is *on the grid* when
  it lies within ``tolerance * P`` of a grid line (default tolerance 0.1: ±10 % of a 16th,
  12.5 ms at 120 bpm). A tolerance relative to the step makes every tempo equally easy
  to hit by chance: a uniformly random time is on a given grid with probability
  ``2 * tolerance`` (0.2).
* :func:`fit_grid` searches tempi from ``bpm_range`` (default 50–200 bpm, i.e. 16ths of
  75–300 ms) and, for each tempo, every phase; it returns the grid holding the largest
  fraction of the onsets (ties: the slower tempo). The search is vectorised and
  two-stage: a phase histogram (bins of a quarter of the tolerance) on a coarse
  geometric tempo ladder ranks the tempi, then fine ladders around the best
  :data:`_REFINE` (steps small enough that the phase drifts by at most a quarter of the
  tolerance across the onsets) are scored exactly over all phases.

Because the grid is the best of many, even random onsets fit some grid better than
``2 * tolerance``: :func:`chance_fit` measures that level for the same number of onsets.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

BPM_RANGE = (50.0, 200.0)
TOLERANCE = 0.1
_BINS_PER_TOL = 4  # phase histogram resolution: a quarter of the tolerance
_REFINE = 8  # tempi scored exactly after the histogram ranking


class Grid(NamedTuple):
    """A 16th-note grid: ``period`` seconds, a grid line at ``phase`` seconds, the
    ``tolerance`` (fraction of the period) it was fitted with, and ``fraction``: the
    share of the fitted onsets that lie on it."""

    period: float
    phase: float
    tolerance: float
    fraction: float

    @property
    def bpm(self) -> float:
        """Quarter-note tempo of the grid."""
        return 15.0 / self.period

    def on_grid(self, times) -> np.ndarray:
        """Boolean array: which of ``times`` lie within the tolerance of a grid line."""
        d = np.mod((np.asarray(times, dtype=np.float64) - self.phase) / self.period, 1.0)
        return np.minimum(d, 1.0 - d) <= self.tolerance + 1e-9


def _ladder(lo: float, hi: float, rel: float) -> np.ndarray:
    n = int(np.ceil(np.log(hi / lo) / np.log1p(rel))) + 1
    return lo * np.exp(np.linspace(0.0, np.log(hi / lo), max(n, 2)))


def _histogram_scores(x: np.ndarray, periods: np.ndarray, tolerance: float) -> np.ndarray:
    """Per period, the most onsets in any ``2 * tolerance`` wide phase interval (binned)."""
    n_bins = int(round(_BINS_PER_TOL / tolerance))
    width = 2 * _BINS_PER_TOL
    q = x[None, :] / periods[:, None]
    b = np.floor((q - np.floor(q)) * n_bins).astype(np.int64)  # faster than np.mod
    b = np.minimum(b, n_bins - 1) + n_bins * np.arange(len(periods))[:, None]
    hist = np.bincount(b.ravel(), minlength=len(periods) * n_bins).reshape(-1, n_bins)
    ext = np.concatenate([np.zeros((len(periods), 1), dtype=np.int64), hist,
                          hist[:, :width]], axis=1).cumsum(axis=1)
    return (ext[:, width:width + n_bins] - ext[:, :n_bins]).max(axis=1)


def fit_grid(onsets, tolerance: float = TOLERANCE,
             bpm_range: tuple[float, float] = BPM_RANGE) -> Grid:
    """The 16th-note grid that holds the largest share of ``onsets`` (seconds).

    ``onsets`` should be distinct (see :func:`~.notes.distinct_onsets`); at least one is
    needed. Raises ``ValueError`` for an empty input or a bad tolerance or tempo range.
    """
    x = np.asarray(onsets, dtype=np.float64).ravel()
    if not len(x):
        raise ValueError("fit_grid needs at least one onset")
    if not 0.0 < tolerance < 0.5:
        raise ValueError(f"tolerance must be in (0, 0.5), got {tolerance}")
    if not 0.0 < bpm_range[0] <= bpm_range[1]:
        raise ValueError(f"bpm_range must be increasing positive tempi, got {bpm_range}")
    centre = 0.5 * (x.min() + x.max())
    x = x - centre  # anchored at the centre: period errors drift least
    lo, hi = 15.0 / bpm_range[1], 15.0 / bpm_range[0]
    steps_to_edge = max(0.5 * (x.max() - x.min()), lo) / lo
    # coarse ladder: the phase drifts by up to one tolerance at the edges; it only ranks
    coarse = _ladder(lo, hi, max(tolerance / steps_to_edge, 1e-5))
    top = coarse[np.argsort(-_histogram_scores(x, coarse, tolerance), kind="stable")[:_REFINE]]
    # fine ladders around the best coarse tempi: drift under a quarter of the tolerance
    step = np.log1p(max(tolerance / steps_to_edge, 1e-5))
    fine_n = 9
    offsets = np.linspace(-step, step, fine_n)
    candidates = np.unique(np.clip(top[:, None] * np.exp(offsets)[None, :], lo, hi))[::-1]
    counts, phases = _exact_best_all(x, candidates, tolerance)
    k = int(np.argmax(counts))  # the first maximum: slowest first, ties keep the slower tempo
    return Grid(float(candidates[k]), float(phases[k]) + centre, tolerance,
                int(counts[k]) / len(x))


def _exact_best_all(x: np.ndarray, periods: np.ndarray, tolerance: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per period, the most onsets in any ``2 * tolerance`` wide phase interval, exactly,
    and the phase of the grid line at its centre (in units of ``x``): the onsets' phases
    sorted, each one taken as an interval's start; all periods at once, with one sort and
    one search (rows are offset by 3 so one flat array stays sorted)."""
    n, c = len(x), len(periods)
    theta = np.sort(np.mod(x[None, :] / periods[:, None], 1.0), axis=1)
    off = 3.0 * np.arange(c)[:, None]
    wrapped = (np.concatenate([theta, theta + 1.0], axis=1) + off).ravel()
    ends = np.searchsorted(wrapped, (theta + off + 2.0 * tolerance + 1e-12).ravel(),
                           side="right").reshape(c, n)
    counts = ends - (2 * n * np.arange(c)[:, None] + np.arange(n)[None, :])
    i = np.argmax(counts, axis=1)
    rows = np.arange(c)
    return counts[rows, i], (theta[rows, i] + tolerance) * periods


def refine_grid(grid: Grid, onsets) -> Grid:
    """``grid`` with its period and phase fitted by least squares to the ``onsets`` that
    lie on it (each given its line's index), for extrapolating it beyond them.

    :func:`fit_grid` maximises the share of onsets on the grid, so any period in a band
    holding the same onsets scores the same; across a window of ``W`` seconds that band is
    about ``tolerance * period / W`` wide, and the grid drifts off the music within
    seconds after the window. The least-squares line through the onsets on the grid
    pins the period to the onsets' own jitter divided by their count. Two passes (lines
    re-assigned after the first); a grid with fewer than two distinct lines hit is
    returned as it is. ``fraction`` is re-measured on ``onsets``.
    """
    x = np.asarray(onsets, dtype=np.float64).ravel()
    period, phase = grid.period, grid.phase
    for _ in range(2):
        q = (x - phase) / period
        k = np.round(q)
        on = np.abs(q - k) <= grid.tolerance + 1e-9
        if np.unique(k[on]).size < 2:
            break
        kk = k[on] - k[on].mean()
        b = float(np.dot(kk, x[on] - x[on].mean()) / np.dot(kk, kk))
        if not 0.5 * grid.period < b < 2.0 * grid.period:
            break
        phase = float(x[on].mean() - b * k[on].mean())
        period = b
    out = Grid(period, phase, grid.tolerance, 0.0)
    return out._replace(fraction=float(out.on_grid(x).mean()) if len(x) else 0.0)


def chance_fit(n: int, lo: float, hi: float, rng: np.random.Generator,
               tolerance: float = TOLERANCE,
               bpm_range: tuple[float, float] = BPM_RANGE) -> float:
    """Grid fit of ``n`` distinct uniformly random onsets in ``[lo, hi)``: chance level."""
    x = np.unique(np.round(rng.uniform(lo, hi, n), 3))
    return fit_grid(x, tolerance, bpm_range).fraction


def windowed_grids(onsets, window: float, min_onsets: int, tolerance: float = TOLERANCE,
                   bpm_range: tuple[float, float] = BPM_RANGE) -> dict[int, Grid]:
    """``{window index: Grid}`` for each ``window``-second window (from time 0) holding at
    least ``min_onsets`` of the distinct ``onsets``."""
    x = np.asarray(onsets, dtype=np.float64)
    w = np.floor(x / window).astype(np.int64)
    out: dict[int, Grid] = {}
    for k in np.unique(w).tolist():
        sel = x[w == k]
        if len(sel) >= min_onsets:
            out[k] = fit_grid(sel, tolerance, bpm_range)
    return out
