"""Events → notes: the view every statistic of :mod:`notochord_rt.analysis` is built on.

A piece arrives as :class:`~notochord_rt.events.EventArrays` (absolute seconds, from
``load_midi`` or a prepared split). :func:`notes_of` pairs each note-on with the next
event of the same (instrument, pitch) — its note-off, or a repeated note-on that ends it,
exactly as ingest and the sampler pair them — and returns one row per note.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import events as ev

ONSET_DECIMALS = 3
"""Onsets are compared after rounding to 1 ms: notes of one chord share one onset."""


class Notes(NamedTuple):
    """One row per note, sorted by onset: instrument id, pitch, onset and release in
    seconds, note-on velocity, and whether the instrument is a drum kit."""

    inst: np.ndarray
    pitch: np.ndarray
    start: np.ndarray
    end: np.ndarray
    vel: np.ndarray
    drum: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.start.shape[0])

    def select(self, mask: np.ndarray) -> Notes:
        """The notes where ``mask`` is true."""
        return Notes(*(a[mask] for a in self))

    @property
    def duration(self) -> np.ndarray:
        return self.end - self.start


def notes_of(events: ev.EventArrays) -> Notes:
    """The notes of a piece (start tokens and stray note-offs are ignored).

    A note lasts until the next event of its (instrument, pitch) in event order; a note
    still sounding at the end is closed at the last event's time.
    """
    inst = np.asarray(events.inst, dtype=np.int64)
    real = inst > ev.START_INST
    idx = np.flatnonzero(real)
    if not len(idx):
        return _empty()
    inst = inst[idx]
    pitch = np.asarray(events.pitch, dtype=np.int64)[idx]
    time = np.asarray(events.time, dtype=np.float64)[idx]
    vel = np.asarray(events.vel, dtype=np.int64)[idx]
    key = inst * 256 + pitch
    order = np.lexsort((np.arange(len(key)), key))  # by key, then event order
    k, t, v = key[order], time[order], vel[order]
    on = np.flatnonzero(v > 0)
    nxt = on + 1
    has_next = nxt < len(k)
    same = np.zeros(len(on), dtype=bool)
    same[has_next] = k[nxt[has_next]] == k[on[has_next]]
    last = float(time.max())
    end = np.where(same, t[np.minimum(nxt, len(k) - 1)], last)
    start = t[on]
    end = np.maximum(end, start)
    src = order[on]
    rows = np.argsort(start, kind="stable")
    i = inst[src][rows]
    return Notes(i, pitch[src][rows], start[rows], end[rows], vel[src][rows],
                 np.asarray(ev.is_drum(i), dtype=bool))


def _empty() -> Notes:
    z = np.zeros(0)
    zi = np.zeros(0, dtype=np.int64)
    return Notes(zi, zi, z, z, zi, np.zeros(0, dtype=bool))


def distinct_onsets(start: np.ndarray) -> np.ndarray:
    """Sorted onset times with notes of one chord (same time to 1 ms) counted once."""
    return np.unique(np.round(np.asarray(start, dtype=np.float64), ONSET_DECIMALS))


def window_index(times: np.ndarray, window: float) -> np.ndarray:
    """Index of the ``window``-second window (from time 0) each time falls in."""
    return np.floor(np.asarray(times, dtype=np.float64) / window).astype(np.int64)
