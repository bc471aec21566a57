"""Repetition: onset-pattern autocorrelation and melodic interval n-grams.

Pattern repetition (drums, and melodic pitch classes)
    Each row (a drum key, or a pitch class of the melodic notes) becomes an onset signal
    of :data:`BIN` second bins (onset counts, smoothed with a ``[1/4, 1/2, 1/4]`` kernel
    so ±1 bin of timing jitter still matches), with its mean removed. The normalised
    autocorrelation at lag ``L`` is ``sum_rows sum_k x[k] x[k+L] / (N - L)`` divided by
    ``sum_rows sum_k x[k]^2 / N`` (the unbiased estimate, clipped to [-1, 1]). The
    statistic is its peak over lags of :data:`MIN_LAG`..:data:`MAX_LAG` seconds (one bar
    to several bars at usual tempi), lags limited to half the signal's length. A loop
    repeated exactly gives ~1, independent random onsets ~0.
Interval n-gram repetition
    For each melodic instrument, its *top voice* is the highest pitch at each distinct
    onset (1 ms); the intervals between successive top-voice notes form a sequence, and
    every ``n`` consecutive notes (``n - 1`` intervals; default ``n = 4``) form an
    n-gram. The statistic is the fraction of the piece's n-gram occurrences (all
    instruments pooled) whose interval pattern occurs more than once in the piece.
"""

from __future__ import annotations

import numpy as np

from .notes import ONSET_DECIMALS

BIN = 0.02
MIN_LAG, MAX_LAG = 1.0, 8.0
NGRAM = 4


def pattern_repetition(rows, times, *, bin_s: float = BIN, min_lag: float = MIN_LAG,
                       max_lag: float = MAX_LAG) -> float | None:
    """Peak normalised autocorrelation of the onset signal (see the module docstring).

    ``rows`` labels each onset (e.g. drum key); ``times`` are the onsets in seconds.
    None when there are fewer than 4 onsets or the signal is too short for ``min_lag``.
    """
    t = np.asarray(times, dtype=np.float64)
    r = np.asarray(rows, dtype=np.int64)
    if len(t) < 4:
        return None
    t = t - t.min()
    n = int(np.floor(t.max() / bin_s)) + 3
    lo = int(round(min_lag / bin_s))
    hi = min(int(round(max_lag / bin_s)), n // 2)
    if hi < lo:
        return None
    labels, row = np.unique(r, return_inverse=True)
    x = np.zeros((len(labels), n))
    np.add.at(x, (row.ravel(), np.floor(t / bin_s).astype(np.int64) + 1), 1.0)
    x = 0.5 * x + 0.25 * (np.roll(x, 1, axis=1) + np.roll(x, -1, axis=1))
    x -= x.mean(axis=1, keepdims=True)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(x, size, axis=1)
    ac = np.fft.irfft((f * f.conj()).real.sum(axis=0), size)[: hi + 1]
    if ac[0] <= 1e-12:
        return None
    lags = np.arange(lo, hi + 1)
    norm = (ac[lags] / (n - lags)) / (ac[0] / n)
    return float(np.clip(norm.max(), -1.0, 1.0))


def top_voice_intervals(inst, pitch, start) -> list[np.ndarray]:
    """Per instrument, the intervals (semitones) between successive top-voice notes."""
    inst = np.asarray(inst, dtype=np.int64)
    pitch = np.asarray(pitch, dtype=np.int64)
    onset = np.round(np.asarray(start, dtype=np.float64), ONSET_DECIMALS)
    out = []
    for i in np.unique(inst).tolist():
        sel = inst == i
        o, p = onset[sel], pitch[sel]
        order = np.lexsort((-p, o))  # by onset, highest pitch first
        o, p = o[order], p[order]
        first = np.ones(len(o), dtype=bool)
        first[1:] = o[1:] != o[:-1]
        out.append(np.diff(p[first]))
    return out


def ngram_repetition(intervals: list[np.ndarray], n: int = NGRAM,
                     min_ngrams: int = 4) -> float | None:
    """Fraction of n-gram occurrences (``n`` notes = ``n - 1`` intervals, all sequences
    pooled) whose interval pattern occurs more than once; None below ``min_ngrams``."""
    if not 2 <= n <= 8:
        raise ValueError(f"n-grams of 2 to 8 notes are supported, got n={n}")
    codes = []
    for seq in intervals:
        m = len(seq) - (n - 1) + 1
        if m <= 0:
            continue
        s = np.clip(np.asarray(seq, dtype=np.int64), -127, 127) + 127
        code = np.zeros(m, dtype=np.int64)
        for j in range(n - 1):
            code = code * 255 + s[j:j + m]
        codes.append(code)
    if not codes:
        return None
    allc = np.concatenate(codes)
    if len(allc) < min_ngrams:
        return None
    _, inverse, counts = np.unique(allc, return_inverse=True, return_counts=True)
    return float((counts[inverse.ravel()] > 1).mean())
