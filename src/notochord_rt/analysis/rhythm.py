"""The teacher-forced rhythm test: does the model's next onset land on the piece's grid?

The model is fed a real piece event by event (teacher forcing). At a *position* — just
after a real note-on at time ``t`` (at least ``min_start`` seconds into the piece) whose
next real onset comes at least :data:`MIN_GAP` later (so the whole chord at ``t`` has
been fed) — the model is asked for its next **note-on** at least :data:`MIN_GAP` after
``t``: ``Constraints(note_off_map={}, min_time=MIN_GAP)``, sampled in the order
v→t→i→p, so the time is drawn from the model's distribution of "when is the next new
onset", marginalised over which instrument and pitch it will be. The stream is not
advanced by the sample; the next real event is fed instead.

The grid is the piece's own: the best 16th-note grid (:func:`~.grid.fit_grid`) of the
real distinct onsets in the ``window``-second window that holds ``t`` (positions in
windows with too few onsets are not used). The result compares

* ``model``: the share of sampled onsets ``t + Δt`` on that grid,
* ``real``: the share of the real next onsets on it (the ceiling: what the piece does;
  the real onset helped fit the grid, which favours it slightly),
* ``chance``: ``2 · tolerance``, the share of uniformly random times on a fixed grid;

and the median gap (seconds from ``t`` to the next onset) sampled and real. The model
is not told that the chord at ``t`` is complete, so part of its mass may go to further
chord notes a few ms later (humanised "strums"); real onsets 10–30 ms apart are rare
(3 % of the test split's inter-onset intervals), which the median gaps make visible.

Work is bounded: ``pieces`` pieces (evenly spread over the set) and the first
``positions`` positions of each, so only the events up to the last position are fed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import events as ev
from ..events import SAMPLING_ORDER
from ..onset_grid import windowed_grids
from .features import StatsConfig
from .notes import distinct_onsets
from .sets import Source

log = logging.getLogger(__name__)

MIN_GAP = 0.01  # seconds: onsets closer than this belong to one chord (the model's bin)
MIN_START = 2.0


@dataclass
class RhythmResult:
    """Totals of a rhythm test and one ``{source, positions, model, real}`` per piece."""

    positions: int = 0
    model_hits: int = 0
    real_hits: int = 0
    chance: float = 0.0
    model_gaps: list[float] = field(default_factory=list)
    real_gaps: list[float] = field(default_factory=list)
    per_piece: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def model(self) -> float | None:
        """Share of the model's sampled next onsets on the grid."""
        return self.model_hits / self.positions if self.positions else None

    @property
    def real(self) -> float | None:
        """Share of the real next onsets on the grid."""
        return self.real_hits / self.positions if self.positions else None

    def as_dict(self) -> dict[str, Any]:
        return {"positions": self.positions, "pieces": len(self.per_piece),
                "model_on_grid": self.model, "real_on_grid": self.real,
                "chance": self.chance,
                "model_gap_median": _median(self.model_gaps),
                "real_gap_median": _median(self.real_gaps), "per_piece": self.per_piece,
                "skipped": [{"source": s, "reason": r} for s, r in self.skipped]}


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def find_positions(events: ev.EventArrays, min_start: float = MIN_START,
                   min_gap: float = MIN_GAP) -> tuple[np.ndarray, np.ndarray]:
    """(event index of each position, time of the real next onset) — see the module
    docstring; ``events`` must be sorted (as ingest and prepared data are)."""
    time = np.asarray(events.time, dtype=np.float64)
    on = np.flatnonzero((np.asarray(events.vel) > 0) & (np.asarray(events.inst) > 0))
    if len(on) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    t_on = time[on]
    # the first note-on at least min_gap after each note-on
    nxt = np.searchsorted(t_on, t_on + min_gap - 1e-9, side="left")
    # last note-on of its chord: the very next note-on is already min_gap later
    last_of_chord = np.append(t_on[1:] >= t_on[:-1] + min_gap - 1e-9, False)
    ok = last_of_chord & (nxt < len(on)) & (t_on >= min_start)
    return on[ok], t_on[np.minimum(nxt, len(on) - 1)][ok]


def rhythm_test(model, sources: Sequence[Source], *, pieces: int = 20, positions: int = 50,
                samples: int = 1, config: StatsConfig | None = None, seed: int = 0,
                progress: bool = False, fields: dict[str, Any] | None = None) -> RhythmResult:
    """Run the teacher-forced rhythm test of ``model`` (a :class:`~notochord_rt.engine.
    sampler.Notochord`) on up to ``pieces`` of ``sources`` (see the module docstring).

    ``samples`` next onsets are drawn at each position. Pieces that cannot be read or
    give no position are recorded in ``skipped``. ``fields`` are further ``Constraints``
    fields of the draw (e.g. the apps' ``timing_temp``), to test sampling settings.
    """
    from ..engine.sampling.constraints import Constraints
    from ..engine.sampling.support import compile_constraints
    from ..errors import MidiError

    cfg = (config or StatsConfig()).check()
    if pieces < 1 or positions < 1 or samples < 1:
        raise ValueError("pieces, positions and samples must be at least 1")
    chosen = _spread(len(sources), pieces)
    base = {"note_off_map": {}, "min_time": MIN_GAP, "order": SAMPLING_ORDER}
    cons = compile_constraints(Constraints(**{**base, **(fields or {})}))
    result = RhythmResult(chance=min(2.0 * cfg.tolerance, 1.0))
    it: Any = chosen
    if progress:
        from tqdm import tqdm

        it = tqdm(chosen, desc="rhythm test", unit="piece")
    for k in it:
        src = sources[k]
        try:
            events = src.load()
        except (MidiError, OSError, ValueError) as e:
            result.skipped.append((src.label, str(e)))
            continue
        hits = _piece(model, events, cons, cfg, positions, samples, seed + int(k))
        if hits is None:
            result.skipped.append((src.label, "no position with a fitted grid"))
            continue
        n, m_hits, r_hits, m_gaps, r_gaps = hits
        result.model_gaps += m_gaps
        result.real_gaps += r_gaps
        result.positions += n
        result.model_hits += m_hits
        result.real_hits += r_hits
        result.per_piece.append({"source": src.label, "positions": n,
                                 "model": m_hits / n, "real": r_hits / n})
    return result


def _spread(n: int, k: int) -> list[int]:
    """``min(n, k)`` indices evenly spread over ``range(n)``."""
    if n <= k:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))


def _piece(model, events: ev.EventArrays, cons, cfg: StatsConfig, max_positions: int,
           samples: int, seed: int) -> tuple[int, int, int, list, list] | None:
    """(positions × samples, model hits, real hits × samples, sampled gaps, real gaps)
    of one piece, or None when it has no usable position."""
    on = np.asarray(events.vel) > 0
    grids = windowed_grids(distinct_onsets(np.asarray(events.time)[on]), cfg.window,
                           cfg.min_onsets, cfg.tolerance, cfg.bpm_range)
    idx, real_next = find_positions(events)
    win = np.floor(np.asarray(events.time)[idx] / cfg.window).astype(np.int64)
    keep = np.array([w in grids for w in win.tolist()], dtype=bool)
    idx, real_next, win = idx[keep][:max_positions], real_next[keep][:max_positions], win[keep][
        :max_positions]
    if not len(idx):
        return None
    rng = np.random.default_rng(seed)
    model.reset()
    deltas = events.deltas()
    inst, pitch, vel = (np.asarray(a).tolist() for a in (events.inst, events.pitch, events.vel))
    targets = dict(zip(idx.tolist(), range(len(idx))))
    n = m_hits = r_hits = 0
    m_gaps: list[float] = []
    for j in range(int(idx[-1]) + 1):
        if inst[j] == ev.START_INST:
            continue
        model.feed(inst[j], pitch[j], float(deltas[j]), vel[j])
        p = targets.get(j)
        if p is None:
            continue
        g = grids[int(win[p])]
        t = float(events.time[j])
        gaps = [model.sample(cons, generator=rng).time for _ in range(samples)]
        m_gaps += gaps
        drawn = [t + d for d in gaps]
        m_hits += int(g.on_grid(drawn).sum())
        r_hits += samples * int(g.on_grid([real_next[p]])[0])
        n += samples
    real_gaps = (real_next - np.asarray(events.time)[idx]).tolist()
    return n, m_hits, r_hits, m_gaps, real_gaps
