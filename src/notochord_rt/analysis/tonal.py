"""Pitch statistics: pitch-class entropy and key finding with Krumhansl–Kessler profiles.

Key finding (Krumhansl & Kessler 1982, as in Krumhansl's *Cognitive Foundations of
Musical Pitch*, 1990): the duration-weighted pitch-class histogram of the melodic notes
is correlated (Pearson) with the 24 rotated major and minor profiles; the key with the
highest correlation wins. Its *scale* is the major scale for major keys and the natural
minor scale for minor keys (7 pitch classes either way, so a uniformly random pitch is
in scale with probability 7/12 ≈ 0.58 before the best key is chosen).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)  # natural minor
PITCH_CLASS_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
KEY_NAMES = tuple(f"{n} major" for n in PITCH_CLASS_NAMES) + tuple(
    f"{n} minor" for n in PITCH_CLASS_NAMES)
"""Key ``k`` (0..23): tonic ``k % 12``, major for ``k < 12``."""


def _profiles() -> tuple[np.ndarray, np.ndarray]:
    pc = np.arange(12)
    rows = [np.roll(MAJOR_PROFILE, k) for k in range(12)] + [
        np.roll(MINOR_PROFILE, k) for k in range(12)]
    prof = np.array(rows)
    z = (prof - prof.mean(1, keepdims=True)) / prof.std(1, keepdims=True)
    scale = np.zeros((24, 12), dtype=bool)
    for k in range(24):
        steps = MAJOR_SCALE if k < 12 else MINOR_SCALE
        scale[k, (np.array(steps) + k % 12) % 12] = True
    assert scale.sum(1).tolist() == [7] * 24 and pc.shape == (12,)
    return z, scale


_Z, SCALES = _profiles()
"""``SCALES[k]``: boolean (12,) mask of the pitch classes of key ``k``'s scale."""


class Key(NamedTuple):
    """The best key of a pitch-class histogram: index (0..23), name, correlation."""

    index: int
    name: str
    correlation: float


def best_key(histogram) -> Key | None:
    """The Krumhansl–Kessler key of a 12-bin pitch-class histogram (any weights);
    None when the histogram is empty or flat (no key can be preferred)."""
    h = np.asarray(histogram, dtype=np.float64)
    if h.shape != (12,):
        raise ValueError(f"a pitch-class histogram has 12 bins, got shape {h.shape}")
    sd = h.std()
    if h.sum() <= 0 or sd <= 1e-12 * max(h.max(), 1e-300):
        return None
    corr = _Z @ ((h - h.mean()) / sd) / 12.0
    k = int(np.argmax(corr))
    return Key(k, KEY_NAMES[k], float(corr[k]))


def pitch_class_histogram(pitch, weights=None) -> np.ndarray:
    """Pitch-class histogram (12 bins) of MIDI pitches, optionally weighted."""
    return np.bincount(np.asarray(pitch, dtype=np.int64) % 12, weights=weights,
                       minlength=12).astype(np.float64)


def entropy_bits(counts) -> float:
    """Shannon entropy in bits of a histogram (0 for an empty one)."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return 0.0
    p = c[c > 0] / total
    return float(-(p * np.log2(p)).sum())


def in_scale_share(pitch, key: Key) -> float:
    """Fraction of ``pitch`` (MIDI numbers) whose pitch class is in ``key``'s scale."""
    p = np.asarray(pitch, dtype=np.int64)
    return float(SCALES[key.index][p % 12].mean()) if len(p) else 0.0
