"""A fast, strict reader of Standard MIDI Files down to paired notes (used by ingest).

:func:`read_smf` checks the structure, walks each ``MTrk`` chunk once in Python doing the
least possible work per event (locate the message, remember where note messages are),
and then decodes and pairs the notes with numpy. The result is a :class:`SmfNotes`:
tables of notes (in ticks), program changes, orphan note-offs and tempo events, each
with its *position* in playback order.

Positions: ``seq`` is the byte offset of a message in the file. Tracks come one after
the other, so (tick, seq) orders events as a player of the merged tracks sees them:
by tick, then track, then place in the track.

Pairing (per track, channel and pitch, in file order): a note-on of a sounding pitch ends
the sounding note at that instant (``dup`` = 1 on the ended note); a note-off of a silent
pitch is an orphan; a note-on with velocity 0 is a note-off; a note still sounding at the
end of its track has ``end = -1`` and ``unended = 1``.

Refused, with :class:`~notochord_rt.errors.MidiError`: no ``MThd`` header, type 2 or
unknown formats, SMPTE or zero division, an ``MTrk`` chunk longer than the rest of the
file, a message cut off by the end of its chunk, status bytes 0xF1..0xFE other than
meta, running status with no status before it, data bytes ≥ 128 in note messages, and
variable-length numbers longer than 4 bytes. Chunks other than ``MTrk`` are skipped; an
``RMID`` (RIFF) wrapper is unwrapped. Running status survives meta and sysex events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import MidiError

log = logging.getLogger(__name__)

# columns of SmfNotes.notes
START, END, PITCH, VEL, CHAN, TRACK, SEQ, DUP, UNENDED = range(9)
# columns of SmfNotes.programs / .orphans / .tempos
P_TICK, P_TRACK, P_SEQ, P_CHAN, P_PROGRAM = range(5)
O_TICK, O_TRACK, O_SEQ, O_CHAN = range(4)
T_TICK, T_TRACK, T_SEQ, T_US = range(4)


@dataclass
class SmfNotes:
    """What ingest needs from a MIDI file; every table is an int64 array."""

    fmt: int
    ticks_per_quarter: int
    tracks: int
    notes: np.ndarray  # (n, 9): START END PITCH VEL CHAN TRACK SEQ DUP UNENDED
    programs: np.ndarray  # (m, 5): tick track seq channel program
    orphans: np.ndarray  # (k, 4): tick track seq channel (note-offs of silent pitches)
    tempos: np.ndarray  # (t, 4): tick track seq microseconds-per-quarter
    track_ends: np.ndarray  # (tracks,): tick of each track's last event


class _Bad(Exception):
    """Internal: a structural problem in a track; becomes a MidiError naming the track."""


class _Cut(_Bad):
    """Internal: a message runs past the end of its track chunk."""


def read_smf(data: bytes) -> SmfNotes:
    """Parse ``data`` (a Standard MIDI File) into paired notes and the other tables."""
    data = _unwrap_riff(bytes(data))
    if len(data) < 14 or data[:4] != b"MThd":
        raise MidiError("not a MIDI file (bad header)")
    hlen = int.from_bytes(data[4:8], "big")
    if hlen < 6 or 8 + hlen > len(data):
        raise MidiError(f"not a MIDI file (bad header length {hlen})")
    fmt = int.from_bytes(data[8:10], "big")
    ntracks = int.from_bytes(data[10:12], "big")
    division = int.from_bytes(data[12:14], "big")
    if fmt == 2:
        raise MidiError("type 2 MIDI is not supported")
    if fmt > 2:
        raise MidiError(f"unknown MIDI file format {fmt}")
    if division & 0x8000:
        raise MidiError("SMPTE time division is not supported")
    if division == 0:
        raise MidiError("division 0 (no ticks per quarter note)")
    note_msgs: list[int] = []  # flat triples: tick, position of first data byte, status
    programs: list[tuple[int, int, int, int, int]] = []
    tempos: list[tuple[int, int, int, int]] = []
    track_starts: list[int] = []
    track_ends: list[int] = []
    pos = 8 + hlen
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos + 4 : pos + 8], "big")
        start, stop = pos + 8, pos + 8 + length
        if data[pos : pos + 4] == b"MTrk":
            track = len(track_starts)
            if stop > len(data):
                raise MidiError(
                    f"truncated track {track}: its chunk says {length} bytes, "
                    f"only {len(data) - start} are left in the file"
                )
            track_starts.append(start)
            try:
                end_tick = _walk_track(data, start, stop, track, note_msgs, programs, tempos)
            except _Bad as e:
                kind = "truncated" if isinstance(e, _Cut) else "corrupt"
                raise MidiError(f"{kind} track {track}: {e}") from None
            except IndexError:
                raise MidiError(f"truncated track {track}: a message is cut off") from None
            track_ends.append(end_tick)
        pos = stop
    if not track_starts:
        raise MidiError("no tracks (no MTrk chunk)")
    if len(track_starts) != ntracks:
        log.info("header announces %d tracks, the file has %d", ntracks, len(track_starts))
    notes, orphans = _pair_notes(data, note_msgs, track_starts)
    return SmfNotes(
        fmt,
        division,
        len(track_starts),
        notes,
        np.array(programs, dtype=np.int64).reshape(-1, 5),
        orphans,
        np.array(tempos, dtype=np.int64).reshape(-1, 4),
        np.array(track_ends, dtype=np.int64),
    )


def _unwrap_riff(data: bytes) -> bytes:
    """The SMF inside an RIFF ``RMID`` file (its ``data`` chunk), else ``data`` unchanged."""
    if data[:4] != b"RIFF" or data[8:12] != b"RMID":
        return data
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if data[pos : pos + 4] == b"data":
            return data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    raise MidiError("not a MIDI file (RIFF RMID without a data chunk)")


def _walk_track(data, p, stop, track, note_msgs, programs, tempos) -> int:
    """Locate every message of one MTrk chunk; returns the tick of its last event.

    The hot loop: for note messages it only records (tick, data position, status).
    """
    add_note = note_msgs.extend
    tick = 0
    status = 0
    while p < stop:
        b = data[p]
        p += 1
        if b < 0x80:
            tick += b
        else:
            delta = b & 0x7F
            for _ in range(3):
                b = data[p]
                p += 1
                delta = (delta << 7) | (b & 0x7F)
                if b < 0x80:
                    break
            else:
                raise _Bad(f"variable-length delta longer than 4 bytes at byte {p}")
            tick += delta
        b = data[p]
        if b >= 0x80:
            p += 1
            if b < 0xF0:
                status = b
            elif b == 0xFF:  # meta: type, length, data
                mtype = data[p]
                length = data[p + 1]
                if length < 0x80:
                    p += 2
                else:
                    p, length = _varlen(data, p + 1)
                if mtype == 0x51 and length == 3:
                    tempos.append((tick, track, p, int.from_bytes(data[p : p + 3], "big")))
                elif mtype == 0x2F:
                    return tick
                p += length
                continue
            elif b == 0xF0 or b == 0xF7:  # sysex: length, data
                p, length = _varlen(data, p)
                p += length
                continue
            else:
                raise _Bad(f"status byte 0x{b:02X} is not allowed in a MIDI file")
        elif not status:
            raise _Bad("running status with no status byte before it")
        if status < 0xA0:  # note-off 0x8n, note-on 0x9n
            add_note((tick, p, status))
            p += 2
        elif status < 0xC0 or status >= 0xE0:  # poly pressure, control change, pitch bend
            p += 2
        else:
            if status < 0xD0:
                programs.append((tick, track, p, status & 15, data[p] & 0x7F))
            p += 1
    if p > stop:  # only the last message can overrun: the loop stops at the chunk's end
        raise _Cut("its last message runs past the end of the track")
    return tick


def _varlen(data: bytes, p: int) -> tuple[int, int]:
    value = 0
    for _ in range(4):
        b = data[p]
        p += 1
        value = (value << 7) | (b & 0x7F)
        if b < 0x80:
            return p, value
    raise _Bad(f"variable-length number longer than 4 bytes at byte {p}")


def _pair_notes(data: bytes, note_msgs: list, track_starts: list[int]):
    """Decode note messages and pair them per (track, channel, pitch) in file order.

    Returns the note table and the orphan note-off table (see the module docstring).
    """
    if not note_msgs:
        return np.zeros((0, 9), dtype=np.int64), np.zeros((0, 4), dtype=np.int64)
    msgs = np.array(note_msgs, dtype=np.int64).reshape(-1, 3)
    tick, pos, status = msgs[:, 0], msgs[:, 1], msgs[:, 2]
    buf = np.frombuffer(data, dtype=np.uint8)
    pitch = buf[pos].astype(np.int64)
    vel = buf[pos + 1].astype(np.int64)
    bad = (pitch | vel) >= 0x80
    if bad.any():
        at = int(pos[np.argmax(bad)])
        track = int(np.searchsorted(track_starts, at, side="right") - 1)
        raise MidiError(f"corrupt track {track}: data byte ≥ 128 in a note message at byte {at}")
    chan = status & 15
    on = (status >= 0x90) & (vel > 0)
    track = np.searchsorted(np.asarray(track_starts), pos, side="right") - 1
    key = (track * 16 + chan) * 128 + pitch
    o = np.lexsort((pos, key))  # pos: file order inside each (track, channel, pitch)
    key, on_o = key[o], on[o]
    same_next = np.append(key[1:] == key[:-1], False)
    # state after an event depends only on its kind (on: sounding, off: silent), so a
    # note-on is ended by the next event of its key, whatever that is
    starts = np.flatnonzero(on_o)
    ended = same_next[starts]
    nxt = o[np.minimum(starts + 1, len(o) - 1)]
    first = o[starts]
    notes = np.empty((len(starts), 9), dtype=np.int64)
    notes[:, START] = tick[first]
    notes[:, END] = np.where(ended, tick[nxt], -1)
    notes[:, PITCH] = pitch[first]
    notes[:, VEL] = vel[first]
    notes[:, CHAN] = chan[first]
    notes[:, TRACK] = track[first]
    notes[:, SEQ] = pos[first]
    notes[:, DUP] = ended & on[nxt]
    notes[:, UNENDED] = ~ended
    prev_on = np.concatenate([[False], on_o[:-1] & (key[1:] == key[:-1])])
    orph = o[~on_o & ~prev_on]
    orphans = np.stack([tick[orph], track[orph], pos[orph], chan[orph]], axis=1)
    return notes, orphans
