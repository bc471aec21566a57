"""Per-piece statistics: :func:`describe` turns one piece into a dict of numbers.

Every statistic is defined in :data:`FEATURES` (name → unit and definition) and in
``docs/stats.md``. Conventions:

* *Melodic* notes are those of melodic instruments (named or anonymous); *drum* notes
  those of drum kits (see :mod:`notochord_rt.events`).
* *Onsets* are distinct note-on times (notes within 1 ms count once), all instruments.
* *Windows* are consecutive :attr:`StatsConfig.window` second stretches from time 0;
  windowed statistics average over the windows that hold enough material and are
  ``None`` when no window does.
* A value is ``None`` when it is undefined for the piece (e.g. drum repetition without
  drums), never NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import events as ev
from .. import onset_grid as grid_mod
from . import patterns, tonal
from .notes import Notes, distinct_onsets, notes_of, window_index

IOI_BIN, IOI_MAX = 0.01, 2.0

FEATURES: dict[str, tuple[str, str]] = {
    "duration": ("s", "first onset to last event"),
    "notes": ("count", "note-ons"),
    "notes_per_s": ("1/s", "note-ons per second of duration"),
    "polyphony": ("notes", "time-averaged number of sounding melodic notes, while any sounds"),
    "polyphony_max": ("notes", "most melodic notes sounding at once"),
    "pitch_range": ("semitones", "highest minus lowest melodic pitch"),
    "pitch_mean": ("MIDI", "mean melodic pitch"),
    "pc_entropy": ("bits", "pitch-class entropy of the melodic note-ons per window "
                   "(max log2 12 = 3.58)"),
    "key_corr": ("r", "per window, correlation of the duration-weighted pitch-class "
                 "histogram with the best of the 24 Krumhansl-Kessler key profiles"),
    "in_scale": ("share", "per window, melodic notes in the scale of the window's best key"),
    "ioi_median": ("s", "median inter-onset interval"),
    "ioi_entropy": ("bits", "entropy of the inter-onset intervals in 10 ms bins (0-2 s, "
                    "longer in one bin)"),
    "grid_fit": ("share", "per window, onsets on the window's best 16th-note grid"),
    "grid_chance": ("share", "grid_fit of as many uniformly random onsets per window "
                    "(chance level)"),
    "grid_bpm": ("bpm", "median quarter-note tempo of the windows' best grids"),
    "drum_repetition": ("r", "peak autocorrelation (1-8 s lags) of the drum onsets, "
                        "per drum key"),
    "note_repetition": ("r", "peak autocorrelation (1-8 s lags) of the melodic onsets, "
                        "per pitch class"),
    "ngram_repetition": ("share", "4-note top-voice interval n-grams that occur more "
                         "than once"),
    "duration_median": ("s", "median melodic note duration"),
    "short_share": ("share", "melodic notes shorter than 10 ms"),
    "velocity_mean": ("MIDI", "mean note-on velocity"),
    "velocity_std": ("MIDI", "standard deviation of note-on velocities"),
    "instruments": ("count", "instruments with notes"),
    "drum_share": ("share", "note-ons played by drum kits"),
    "silence_share": ("share", "time between first onset and end with no note sounding "
                      "(each note lasting at least 100 ms)"),
    "longest_silence": ("s", "longest such silence"),
}
"""Name → (unit, definition) of every per-piece statistic, in report order."""

RANGES: dict[str, float] = {
    **{name: 1.0 for name, (unit, _) in FEATURES.items() if unit in ("share", "r")},
    "pc_entropy": math.log2(12),
    "ioi_entropy": math.log2(IOI_MAX / IOI_BIN + 1),
}
"""Width of a feature's natural range, where it has one (shares and correlations: 1;
entropies: their maximum). Set comparisons (:mod:`.compare`) smooth each feature at
least 1 % of it: a share that every piece of both sets has at about 0 (no short notes)
then compares as equal, rather than as two needles whose overlap depends on a few
1e-4 differences (two halves of the test split overlapped 0.2 on short notes)."""

MIN_AUDIBLE = 0.1  # seconds a note counts as sounding for silences (drum hits are short)


@dataclass(frozen=True)
class StatsConfig:
    """Parameters of the statistics (defaults are the documented ones).

    ``window``: seconds per window; ``tolerance``: grid tolerance as a fraction of the
    16th step; ``bpm_range``: tempi searched; ``min_onsets`` / ``min_notes``: onsets a
    window needs for the grid fit / melodic notes for the pitch statistics;
    ``short_note``: seconds below which a note is "short"; ``ngram``: notes per n-gram;
    ``seed``: the random onsets of ``grid_chance``.
    """

    window: float = 8.0
    tolerance: float = grid_mod.TOLERANCE
    bpm_range: tuple[float, float] = grid_mod.BPM_RANGE
    min_onsets: int = 8
    min_notes: int = 8
    short_note: float = 0.01
    ngram: int = patterns.NGRAM
    seed: int = 0

    def check(self) -> StatsConfig:
        """Raise ``ValueError`` naming the first bad field; return ``self``."""
        if not self.window > 0:
            raise ValueError(f"window must be > 0 seconds, got {self.window}")
        if not 0 < self.tolerance < 0.5:
            raise ValueError(f"tolerance must be in (0, 0.5), got {self.tolerance}")
        lo, hi = self.bpm_range
        if not 0 < lo <= hi:
            raise ValueError(f"bpm_range must be increasing positive tempi, got {self.bpm_range}")
        if self.min_onsets < 2 or self.min_notes < 2:
            raise ValueError("min_onsets and min_notes must be at least 2")
        if not 2 <= self.ngram <= 8:
            raise ValueError(f"ngram must be 2..8 notes, got {self.ngram}")
        return self


def describe(events: ev.EventArrays, config: StatsConfig | None = None) -> dict[str, float | None]:
    """All statistics of :data:`FEATURES` for one piece (values ``None`` where undefined).

    Raises ``ValueError`` for a piece without note-ons.
    """
    cfg = (config or StatsConfig()).check()
    n = notes_of(events)
    if not len(n):
        raise ValueError("the piece has no notes")
    out: dict[str, float | None] = dict.fromkeys(FEATURES)
    mel = n.select(~n.drum)
    onsets = distinct_onsets(n.start)
    first = float(n.start[0])
    last = max(float(np.max(events.time)), float(n.end.max()))
    duration = max(last - first, 1e-9)
    out.update(duration=last - first, notes=float(len(n)), notes_per_s=len(n) / max(duration, 1.0),
               instruments=float(len(np.unique(n.inst))), drum_share=float(n.drum.mean()),
               velocity_mean=float(n.vel.mean()), velocity_std=float(n.vel.std()))
    out.update(_melodic(mel, cfg))
    out.update(_tonal(mel, cfg))
    out.update(_timing(onsets, cfg))
    out.update(_silence(n, first, last))
    drums = n.select(n.drum)
    out["drum_repetition"] = patterns.pattern_repetition(drums.pitch, drums.start)
    out["note_repetition"] = patterns.pattern_repetition(mel.pitch % 12, mel.start)
    out["ngram_repetition"] = patterns.ngram_repetition(
        patterns.top_voice_intervals(mel.inst, mel.pitch, mel.start), cfg.ngram)
    return out


def _melodic(mel: Notes, cfg: StatsConfig) -> dict[str, float | None]:
    if not len(mel):
        return {}
    dur = mel.duration
    poly_mean, poly_max = polyphony(mel.start, mel.end)
    return {"pitch_range": float(mel.pitch.max() - mel.pitch.min()),
            "pitch_mean": float(mel.pitch.mean()),
            "duration_median": float(np.median(dur)),
            "short_share": float((dur < cfg.short_note).mean()),
            "polyphony": poly_mean, "polyphony_max": poly_max}


def polyphony(start, end) -> tuple[float | None, float]:
    """(time-averaged count of sounding notes while at least one sounds, maximum count).

    A note sounds on ``[start, end)``; the mean is None when no note has a duration.
    """
    s, e = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    t = np.concatenate([s, e])
    d = np.concatenate([np.ones(len(s)), -np.ones(len(e))])
    order = np.lexsort((d, t))  # ends before starts at equal times
    t, level = t[order], np.cumsum(d[order])
    dt = np.diff(t)
    busy = level[:-1] > 0
    total = float(dt[busy].sum())
    mean = float((level[:-1][busy] * dt[busy]).sum() / total) if total > 0 else None
    return mean, float(level.max()) if len(level) else 0.0


def _tonal(mel: Notes, cfg: StatsConfig) -> dict[str, float | None]:
    if len(mel) < cfg.min_notes:
        return {}
    w = window_index(mel.start, cfg.window)
    weight = np.clip(mel.duration, 0.01, 4.0)
    ent, corr, scale = [], [], []
    for k in np.unique(w).tolist():
        sel = w == k
        if sel.sum() < cfg.min_notes:
            continue
        ent.append(tonal.entropy_bits(tonal.pitch_class_histogram(mel.pitch[sel])))
        key = tonal.best_key(tonal.pitch_class_histogram(mel.pitch[sel], weight[sel]))
        if key is not None:
            corr.append(key.correlation)
            scale.append(tonal.in_scale_share(mel.pitch[sel], key))
    return {"pc_entropy": _mean(ent), "key_corr": _mean(corr), "in_scale": _mean(scale)}


def _timing(onsets: np.ndarray, cfg: StatsConfig) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    if len(onsets) >= 2:
        ioi = np.diff(onsets)
        out["ioi_median"] = float(np.median(ioi))
        bins = np.minimum((ioi / IOI_BIN).astype(np.int64), int(IOI_MAX / IOI_BIN))
        out["ioi_entropy"] = tonal.entropy_bits(np.bincount(bins))
    grids = grid_mod.windowed_grids(onsets, cfg.window, cfg.min_onsets, cfg.tolerance,
                                    cfg.bpm_range)
    if grids:
        rng = np.random.default_rng(cfg.seed)
        w = window_index(onsets, cfg.window)
        chance = []
        for k in grids:
            lo, hi = k * cfg.window, (k + 1) * cfg.window
            chance.append(grid_mod.chance_fit(int((w == k).sum()), lo, hi, rng,
                                              cfg.tolerance, cfg.bpm_range))
        out["grid_fit"] = _mean([g.fraction for g in grids.values()])
        out["grid_chance"] = _mean(chance)
        out["grid_bpm"] = float(np.median([g.bpm for g in grids.values()]))
    return out


def _silence(n: Notes, first: float, last: float) -> dict[str, float | None]:
    s = n.start
    e = np.maximum(n.end, s + MIN_AUDIBLE)
    reach = np.maximum.accumulate(e)  # notes are sorted by start
    gaps = s[1:] - reach[:-1]
    gaps = np.append(gaps[gaps > 0], max(last - reach[-1], 0.0))
    span = max(last - first, 1e-9)
    return {"silence_share": float(min(gaps.sum() / span, 1.0)),
            "longest_silence": float(gaps.max())}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def instrument_counts(events: ev.EventArrays) -> dict[int, int]:
    """``{instrument id: note-ons}`` of a piece."""
    n = notes_of(events)
    ids, counts = np.unique(n.inst, return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist()))


def piece_key(events: ev.EventArrays) -> tonal.Key | None:
    """The Krumhansl–Kessler key of a whole piece (duration-weighted melodic notes)."""
    n = notes_of(events)
    mel = n.select(~n.drum)
    if not len(mel):
        return None
    return tonal.best_key(tonal.pitch_class_histogram(
        mel.pitch, np.clip(mel.duration, 0.01, 4.0)))
