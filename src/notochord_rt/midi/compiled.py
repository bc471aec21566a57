"""The compiled MIDI ingest (``notochord_rt.midi._cingest``, C) as :func:`load_midi` uses it.

:func:`wanted` decides, for one call, whether the compiled ingest runs (see
"Implementations" in :mod:`notochord_rt.midi.ingest`); :func:`run` calls it and turns its
plain result (bytearrays and tuples) into events, part tuples and the stats dict, logging
the same records as the numpy ingest would. The extension is optional: without a C
compiler at install time ``_cingest`` does not exist and :func:`available` is False.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from .. import events as ev
from ..errors import InputError, MidiError
from .smf import log as smf_log

try:
    from . import _cingest
except ImportError:  # built without a C compiler: the numpy ingest does the work
    _cingest = None

log = logging.getLogger("notochord_rt.midi.ingest")  # the numpy ingest's records

PURE_ENV = "NOTOCHORD_RT_PURE_INGEST"  # "1": load_midi(impl="auto") uses the numpy ingest
# the stats keys, in the order load_midi fills them (the extension returns the values)
STATS = ("format", "tracks", "ticks_per_quarter", "unended_notes", "invalid_tempos",
         "tempo_changes", "min_bpm", "max_bpm", "clipped_notes", "forced_merges",
         "duplicate_strikes", "zero_length_notes", "notes", "events", "parts", "instruments",
         "repaired_note_ons", "dropped_note_offs", "duration")


def available() -> bool:
    """True when the compiled ingest is built."""
    return _cingest is not None


def wanted(impl: str, max_note_seconds) -> bool:
    """Whether a load_midi call with these arguments runs the compiled ingest."""
    if impl == "python":
        return False
    if impl not in ("auto", "c"):
        raise InputError(f"impl must be 'auto', 'c' or 'python', got {impl!r}")
    if impl == "c" and _cingest is None:
        raise InputError("impl='c' but the compiled ingest (notochord_rt.midi._cingest) is not "
                         "built; reinstall with a C compiler")
    if impl == "auto" and (_cingest is None or os.environ.get(PURE_ENV) == "1"):
        return False
    # other number types (Decimal, longdouble) keep numpy's own arithmetic
    return isinstance(max_note_seconds, (int, float, np.integer, np.float16, np.float32))


def run(data: bytes, merge: bool, max_note_seconds: float):
    """The compiled ingest of ``data``: ``(events, part tuples, stats)``, or the duration in
    seconds of a piece that is too long (the caller words that error). Raises MidiError
    for every other refusal, with the numpy ingest's message."""
    out = _cingest.ingest(data, merge, max_note_seconds)
    header_tracks, tracks, invalid_tempos, forced = out[-1]
    if tracks >= 0 and header_tracks != tracks:
        smf_log.info("header announces %d tracks, the file has %d", header_tracks, tracks)
    if invalid_tempos > 0:
        log.warning("ignoring %d tempo events of 0 µs per quarter note", invalid_tempos)
    if forced > 0:
        log.warning("more parts than anonymous ids: %d parts merged with collisions", forced)
    if len(out) == 2:
        if isinstance(out[0], float):
            return out[0]
        raise MidiError(out[0])
    inst, pitch, time, vel, parts, stats, _ = out
    events = ev.EventArrays(np.frombuffer(inst, np.int16), np.frombuffer(pitch, np.int16),
                            np.frombuffer(time, np.float64), np.frombuffer(vel, np.int16))
    return events, parts, dict(zip(STATS, stats))
