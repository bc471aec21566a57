"""Notochord events → MIDI: ``save_midi`` / ``midi_bytes`` (a type-1 file) and
``events_to_score`` (a :class:`symusic.Score`).

Events are an :class:`~notochord_rt.events.EventArrays` (absolute seconds) or a list of
:class:`~notochord_rt.events.Event` (delta seconds); start tokens (instrument 0) are
skipped. Events are taken in time order, keeping the given order at equal times.

Notes
    Note-ons and note-offs are paired per (instrument, pitch) exactly as ingest pairs them:
    a note-on of a sounding pitch ends the sounding note there, a note-off of a silent
    pitch is dropped, a note still sounding at the end is closed at the last event's time.
    Times are rounded to ticks (``ticks_per_beat`` at ``tempo_bpm``: 960 at 120 bpm is
    ~0.52 ms a tick); notes that overlap after rounding are repaired the same way.
Channels
    Every drum kit, named or anonymous, plays on channel 10. Each melodic instrument gets a
    channel of its own (channel 10 skipped). Named instruments get a program change;
    anonymous melodic instruments get none (unless ``program_for`` maps them to a GM
    program), so that reading the file back gives anonymous ids again — on a synthesiser
    a channel without program change sounds as program 0. With more than 15 melodic
    instruments, channels are shared (a warning is logged): instruments whose time spans
    overlap least share, anonymous with anonymous and named with named, and a program
    change is written before each note-on whose instrument differs from the channel's
    current program, so every note reads back with its own instrument. On channel 10 a
    kit other than the standard kit gets a program change the same way; anonymous kits
    get none and play on the kit that is set (reading back, they collide with that kit's
    part and get anonymous ids again). Known limit: an anonymous kit that sounds at the
    same tick as the standard kit, before another kit's first note, reads back in the
    standard kit's group — one channel 10 cannot carry two kits at one instant.
Tracks
    Track 0 holds the tempo and the time signature (``beats_per_bar``/4); then one track
    per instrument in id order, named by :func:`~notochord_rt.events.instrument_name`.

Why not ``symusic.Score.dump_midi``? symusic picks the channel from the track index and
writes a program change for every track, so anonymous parts would read back as pianos
and more than 15 tracks would share channels with conflicting programs.
:func:`events_to_score` still gives a symusic ``Score`` (one track per instrument) for
code that wants one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .. import events as ev
from ..atomic import atomic_write_bytes
from ..errors import InputError
from .ingest import repair_overlaps

log = logging.getLogger(__name__)

MELODIC_CHANNELS = tuple(c for c in range(16) if c != ev.DRUM_CHANNEL)
MAX_TICK = (1 << 28) - 1  # the largest delta a MIDI variable-length number holds


@dataclass
class _Notes:
    """Paired notes in ticks, sorted by (inst, start, pitch)."""

    inst: np.ndarray
    pitch: np.ndarray
    start: np.ndarray
    end: np.ndarray
    vel: np.ndarray


def _as_arrays(events) -> ev.EventArrays:
    """EventArrays (absolute seconds) from EventArrays or an iterable of Events; validated."""
    if isinstance(events, ev.EventArrays):
        arrays = events
        vel = np.asarray(events.vel, dtype=np.float64)
    else:
        items = list(events) if isinstance(events, Iterable) else None
        if items is None:
            raise InputError("events must be EventArrays or a sequence of Event")
        if not items:
            return ev.EventArrays.empty()
        inst, pitch, dt, vel = (np.asarray(c, dtype=np.float64) for c in zip(*items))
        if not np.isfinite(dt).all() or (dt < 0).any():
            raise InputError("events: delta times must be finite and >= 0")
        arrays = ev.EventArrays.build(inst, pitch, np.cumsum(dt), np.zeros(len(inst)))
    real = np.asarray(arrays.inst) != ev.START_INST
    inst = np.asarray(arrays.inst, dtype=np.int64)[real]
    pitch = np.asarray(arrays.pitch, dtype=np.int64)[real]
    time = np.asarray(arrays.time, dtype=np.float64)[real]
    vel = vel[real]
    if len(inst) and ((inst < ev.FIRST_MELODIC) | (inst > ev.NUM_INSTRUMENTS)).any():
        raise InputError(f"events: instrument ids must be in 1..{ev.NUM_INSTRUMENTS}")
    if len(pitch) and ((pitch < 0) | (pitch >= ev.NUM_PITCHES)).any():
        raise InputError("events: pitch must be in 0..127")
    if not np.isfinite(time).all() or (time < 0).any():
        raise InputError("events: times must be finite and >= 0")
    if not np.isfinite(vel).all() or (vel < 0).any() or (vel > ev.VEL_MAX + 0.5).any():
        raise InputError("events: velocity must be in 0..127")
    vel = ev.midi_velocities(vel)
    order = np.argsort(time, kind="stable")
    return ev.EventArrays.build(inst[order], pitch[order], time[order], vel[order])


def _pair(arrays: ev.EventArrays, ticks_per_second: float) -> _Notes:
    """Pair note-ons with note-offs per (inst, pitch) and convert to ticks."""
    inst = arrays.inst.astype(np.int64)
    pitch = arrays.pitch.astype(np.int64)
    if len(arrays) and arrays.time.max() * ticks_per_second > MAX_TICK:
        raise InputError(f"events last {arrays.time.max():.0f} s: too long for a MIDI file at "
                         f"{ticks_per_second:g} ticks per second")
    ticks = np.rint(arrays.time * ticks_per_second).astype(np.int64)
    on = arrays.vel > 0
    key = inst * 128 + pitch
    o = np.lexsort((np.arange(len(key)), key))
    k = key[o]
    same_next = np.append(k[1:] == k[:-1], False)
    starts = np.flatnonzero(on[o])
    first = o[starts]
    nxt = o[np.minimum(starts + 1, len(o) - 1)]
    end = np.where(same_next[starts], ticks[nxt], ticks.max() if len(ticks) else 0)
    on_o = on[o]
    after_on = np.concatenate([[False], on_o[:-1] & (k[1:] == k[:-1])])
    dropped = int((~on_o & ~after_on).sum())  # note-offs of silent pitches
    if dropped:
        log.debug("dropped %d note-offs of silent pitches", dropped)
    keep, start, end, _, _ = repair_overlaps(inst[first], pitch[first], ticks[first], end)
    inst, pitch, start, end = inst[first][keep], pitch[first][keep], start[keep], end[keep]
    vel = arrays.vel[first][keep].astype(np.int64)
    o = np.lexsort((pitch, start, inst))  # by instrument, then time
    return _Notes(inst[o], pitch[o], start[o], end[o], vel[o])


@dataclass
class _Voice:
    """One instrument to write: its track, channel and the program it needs."""

    inst: int
    program: int | None  # program to select; None: anonymous (no program change)
    drum: bool
    first: int  # first note-on tick
    last: int  # last note-off tick
    count: int  # notes
    channel: int = ev.DRUM_CHANNEL


def _voices(notes: _Notes, program_for: Mapping[int, int] | None) -> list[_Voice]:
    """One _Voice per instrument, in id order."""
    program_for = dict(program_for or {})
    for inst, program in program_for.items():
        if not (isinstance(program, (int, np.integer)) and 0 <= program < ev.N_GM):
            raise InputError(f"program_for[{inst}] must be a GM program 0..127, got {program!r}")
    voices = []
    insts, first_idx, counts = np.unique(notes.inst, return_index=True, return_counts=True)
    for inst, i, n in zip(insts.tolist(), first_idx.tolist(), counts.tolist()):
        sl = slice(i, i + n)  # notes are sorted by inst
        program = program_for.get(inst, ev.program_of(inst))
        voices.append(_Voice(inst, program, bool(ev.is_drum(inst)),
                             int(notes.start[sl].min()), int(notes.end[sl].max()), n))
    return voices


def _assign_channels(voices: list[_Voice]) -> None:
    """Drums on channel 10, one channel per melodic voice, sharing sensibly beyond 15."""
    melodic = [v for v in voices if not v.drum]
    if len(melodic) <= len(MELODIC_CHANNELS):
        for v, c in zip(melodic, MELODIC_CHANNELS):
            v.channel = c
        return
    anon = [v for v in melodic if v.program is None]
    named = [v for v in melodic if v.program is not None]
    n_anon = 0 if not anon else max(1, round(len(MELODIC_CHANNELS) * len(anon) / len(melodic)))
    if named:
        n_anon = min(n_anon, len(MELODIC_CHANNELS) - 1)
    log.warning(
        "%d melodic instruments for 15 channels: sharing channels (%d for anonymous ones)",
        len(melodic), n_anon,
    )
    for group, channels in ((anon, MELODIC_CHANNELS[:n_anon]), (named, MELODIC_CHANNELS[n_anon:])):
        members: dict[int, list[_Voice]] = {c: [] for c in channels}
        for v in sorted(group, key=lambda v: (-v.count, v.inst)):
            v.channel = min(channels, key=lambda c, v=v: _share_cost(v, members[c], c))
            members[v.channel].append(v)


def _share_cost(v: _Voice, peers: list[_Voice], channel: int) -> tuple[int, int, int]:
    """How bad sharing ``channel`` with ``peers`` is: overlapping ticks, then crowding."""
    overlap = sum(max(0, min(v.last, u.last) - max(v.first, u.first)) for u in peers)
    return overlap, len(peers), channel


def _program_changes(voices: list[_Voice], notes: _Notes) -> dict[int, list[tuple[int, int]]]:
    """Program changes to write, as {track index: [(tick, program)]}.

    Walks each channel's note-ons in the order a reader sees them (tick, then track) and
    selects the program each one needs. A change that no earlier note-on depends on (the
    first of a channel, or one after only anonymous kits) goes at tick 0.
    """
    out: dict[int, list[tuple[int, int]]] = {}
    by_channel: dict[int, list[int]] = {}
    for t, v in enumerate(voices):
        by_channel.setdefault(v.channel, []).append(t)
    warned = False
    for channel, tracks in by_channel.items():
        if len(tracks) == 1:  # the common case: one instrument, at most one change at 0
            v = voices[tracks[0]]
            if v.program is not None and not (v.drum and v.program == 0):
                out.setdefault(tracks[0], []).append((0, v.program))
            continue
        tick = np.concatenate([notes.start[notes.inst == voices[t].inst] for t in tracks])
        track = np.concatenate([np.full(voices[t].count, t) for t in tracks])
        order = np.lexsort((track, tick))
        tick, track = tick[order], track[order]
        runs = np.flatnonzero(np.append(True, track[1:] != track[:-1]))
        state: int | None = None
        pinned = False  # has a note-on relied on the current state yet?
        for i in runs.tolist():
            v = voices[int(track[i])]
            need = v.program
            if v.drum and need is None:  # an anonymous kit plays on whatever kit is set
                continue
            if need == state or (v.drum and need == 0 and state is None):
                pinned = True
                continue
            if need is None:  # an anonymous voice after a program change cannot be restored
                need = 0
                if not warned:
                    log.warning("channel %d: an anonymous instrument follows a program change; "
                                "written as program 0", channel + 1)
                    warned = True
            # nothing relied on the old state yet: set the new one from the start
            out.setdefault(int(track[i]), []).append((int(tick[i]) if pinned else 0, need))
            state, pinned = need, True
    return out


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _chunk(items: list[tuple[int, int, bytes]]) -> bytes:
    """An MTrk chunk from (tick, rank, message) items; rank orders items of one tick."""
    items.sort(key=lambda x: (x[0], x[1]))
    body = bytearray()
    now = 0
    for tick, _, msg in items:
        body += _varlen(tick - now)
        body += msg
        now = tick
    body += _varlen(0) + b"\xff\x2f\x00"
    return b"MTrk" + len(body).to_bytes(4, "big") + bytes(body)


def _meta(kind: int, data: bytes) -> bytes:
    return bytes((0xFF, kind)) + _varlen(len(data)) + data


# ranks of items at one tick: names and tempo, note-offs, program changes, note-ons, and
# last the note-offs of zero-length notes (their note-on is at the same tick)
_META, _OFF, _PROGRAM, _ON, _LATE_OFF = range(5)


def _prepare(events, ticks_per_beat: int, tempo_bpm: float, program_for):
    if not isinstance(ticks_per_beat, (int, np.integer)) or not 1 <= ticks_per_beat <= 0x7FFF:
        raise InputError(f"ticks_per_beat must be an integer in 1..32767, got {ticks_per_beat!r}")
    if not (np.isfinite(tempo_bpm) and 60e6 / 0xFFFFFF <= tempo_bpm <= 60e6):
        raise InputError(f"tempo_bpm must be in 3.6..6e7, got {tempo_bpm!r}")
    notes = _pair(_as_arrays(events), ticks_per_beat * tempo_bpm / 60.0)
    voices = _voices(notes, program_for)
    _assign_channels(voices)
    return notes, voices


def midi_bytes(
    events,
    *,
    ticks_per_beat: int = 960,
    tempo_bpm: float = 120.0,
    program_for: Mapping[int, int] | None = None,
    beats_per_bar: int = 4,
) -> bytes:
    """The events as the bytes of a type-1 Standard MIDI File (see the module docstring).

    ``tempo_bpm`` and ``beats_per_bar`` (1..64) are written as the tempo and the time
    signature ``beats_per_bar``/4, so a piece generated at a tempo lines up with a DAW's
    bars. ``program_for`` maps instrument ids to the GM program to write for them (e.g. to give
    anonymous instruments a sound); other named ids get their own program.
    """
    if (isinstance(beats_per_bar, bool) or not isinstance(beats_per_bar, (int, np.integer))
            or not 1 <= beats_per_bar <= 64):
        raise InputError(f"beats_per_bar must be an integer in 1..64, got {beats_per_bar!r}")
    notes, voices = _prepare(events, ticks_per_beat, tempo_bpm, program_for)
    us = min(round(60e6 / tempo_bpm), 0xFFFFFF)
    conductor = [(0, _META, _meta(0x51, us.to_bytes(3, "big"))),
                 (0, _META, _meta(0x58, bytes((int(beats_per_bar), 2, 24, 8))))]
    chunks = [_chunk(conductor)]
    changes = _program_changes(voices, notes)
    lo = 0
    for t, v in enumerate(voices):
        hi = lo + v.count
        items = [(0, _META, _meta(0x03, ev.instrument_name(v.inst).encode("latin-1", "replace")))]
        items += [(tick, _PROGRAM, bytes((0xC0 | v.channel, p))) for tick, p in changes.get(t, [])]
        on, off = 0x90 | v.channel, 0x80 | v.channel
        for s, e, p, vel in zip(notes.start[lo:hi].tolist(), notes.end[lo:hi].tolist(),
                                notes.pitch[lo:hi].tolist(), notes.vel[lo:hi].tolist()):
            items.append((s, _ON, bytes((on, p, vel))))
            items.append((e, _OFF if e > s else _LATE_OFF, bytes((off, p, 0))))
        chunks.append(_chunk(items))
        lo = hi
    header = b"MThd" + (6).to_bytes(4, "big") + (1).to_bytes(2, "big")
    header += len(chunks).to_bytes(2, "big") + int(ticks_per_beat).to_bytes(2, "big")
    return header + b"".join(chunks)


def save_midi(
    events,
    path: str | os.PathLike,
    *,
    ticks_per_beat: int = 960,
    tempo_bpm: float = 120.0,
    program_for: Mapping[int, int] | None = None,
    beats_per_bar: int = 4,
) -> None:
    """Write the events to ``path`` as a type-1 MIDI file (see :func:`midi_bytes`).

    The file is written to a temporary name and renamed, so no half-written file is left.
    """
    data = midi_bytes(events, ticks_per_beat=ticks_per_beat, tempo_bpm=tempo_bpm,
                      program_for=program_for, beats_per_bar=beats_per_bar)
    atomic_write_bytes(path, data)


def events_to_score(
    events,
    *,
    ticks_per_beat: int = 960,
    tempo_bpm: float = 120.0,
    program_for: Mapping[int, int] | None = None,
):
    """The events as a ``symusic.Score`` in ticks: one track per instrument, in id order.

    Tracks carry the instrument name, GM program (0 for anonymous ones unless
    ``program_for`` says otherwise) and drum flag. Notes are paired and repaired as for
    :func:`midi_bytes`. Note that ``Score.dump_midi`` chooses channels by track index;
    use :func:`save_midi` to write files that read back with the same instruments.
    """
    from symusic.core import NoteTickList, ScoreTick, TempoTick, TrackTick

    notes, voices = _prepare(events, ticks_per_beat, tempo_bpm, program_for)
    score = ScoreTick(int(ticks_per_beat))
    score.tempos.append(TempoTick(0, qpm=float(tempo_bpm)))
    lo = 0
    for v in voices:
        hi = lo + v.count
        track = TrackTick(ev.instrument_name(v.inst), v.program or 0, v.drum)
        track.notes = NoteTickList.from_numpy(
            notes.start[lo:hi].astype(np.int32),
            (notes.end[lo:hi] - notes.start[lo:hi]).astype(np.int32),
            notes.pitch[lo:hi].astype(np.int8),
            notes.vel[lo:hi].astype(np.int8),
        )
        score.tracks.append(track)
        lo = hi
    return score
