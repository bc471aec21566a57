"""Build Standard MIDI Files byte by byte, for tests (any test module may import this).

Messages are ``bytes``; a track is a list of ``(absolute_tick, message)`` pairs, written in
the given order at equal ticks. Nothing here checks what it writes, so it can also build
broken files.

>>> data = write_midi_bytes([[(0, set_tempo(500_000))],
...                          notes_track([(0, 480, 60, 100)], channel=0, program=0)])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Message = bytes
TrackEvents = Sequence[tuple[int, Message]]


MAX_VARLEN = (1 << 28) - 1  # the largest delta a 4-byte variable-length quantity holds


def varlen(value: int) -> bytes:
    """MIDI variable-length quantity (7 bits a byte, high bit = more bytes follow)."""
    if not 0 <= value <= MAX_VARLEN:
        raise ValueError(f"varlen value out of range: {value}")
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


# -- messages -----------------------------------------------------------------------------
def note_on(channel: int, pitch: int, velocity: int = 100) -> Message:
    return bytes((0x90 | channel, pitch, velocity))


def note_off(channel: int, pitch: int, velocity: int = 0) -> Message:
    return bytes((0x80 | channel, pitch, velocity))


def program_change(channel: int, program: int) -> Message:
    return bytes((0xC0 | channel, program))


def control_change(channel: int, control: int, value: int) -> Message:
    return bytes((0xB0 | channel, control, value))


def meta(kind: int, data: bytes) -> Message:
    return bytes((0xFF, kind)) + varlen(len(data)) + data


def set_tempo(us_per_quarter: int) -> Message:
    return meta(0x51, us_per_quarter.to_bytes(3, "big"))


def bpm(beats_per_minute: float) -> Message:
    """Tempo meta event for a tempo in quarter notes per minute."""
    return set_tempo(round(60e6 / beats_per_minute))


def track_name(name: str) -> Message:
    return meta(0x03, name.encode("latin-1"))


def end_of_track() -> Message:
    return meta(0x2F, b"")


def sysex(data: bytes) -> Message:
    return b"\xf0" + varlen(len(data) + 1) + data + b"\xf7"


# -- chunks and files ---------------------------------------------------------------------
def track_bytes(
    events: Iterable[tuple[int, Message]], *, end: bool = True, running_status: bool = False
) -> bytes:
    """An ``MTrk`` chunk from (absolute tick, message) pairs (stable-sorted by tick).

    ``end`` appends an end-of-track meta event; ``running_status`` omits repeated channel
    status bytes.
    """
    body = bytearray()
    now = 0
    last_status = None
    for tick, msg in sorted(events, key=lambda e: e[0]):
        body += varlen(tick - now)
        now = tick
        if running_status and msg[0] < 0xF0 and msg[0] == last_status:
            body += msg[1:]
        else:
            body += msg
        if msg[0] < 0xF0:
            last_status = msg[0]
    if end:
        body += varlen(0) + end_of_track()
    return chunk(b"MTrk", bytes(body))


def chunk(kind: bytes, body: bytes, length: int | None = None) -> bytes:
    """Any chunk; ``length`` overrides the true length (to build broken files)."""
    return kind + (len(body) if length is None else length).to_bytes(4, "big") + body


def header_bytes(fmt: int, ntracks: int, division: int) -> bytes:
    return chunk(b"MThd", fmt.to_bytes(2, "big") + ntracks.to_bytes(2, "big")
                 + division.to_bytes(2, "big"))


def write_midi_bytes(
    tracks: Sequence[TrackEvents],
    ticks_per_beat: int = 480,
    *,
    fmt: int | None = None,
    division: int | None = None,
    ntracks: int | None = None,
    running_status: bool = False,
) -> bytes:
    """A whole file: header + one ``MTrk`` per track (type 0 for one track, else type 1).

    ``fmt``, ``division`` (raw 16-bit field) and ``ntracks`` override the header fields.
    """
    fmt = (0 if len(tracks) == 1 else 1) if fmt is None else fmt
    head = header_bytes(fmt, len(tracks) if ntracks is None else ntracks,
                        ticks_per_beat if division is None else division)
    return head + b"".join(track_bytes(t, running_status=running_status) for t in tracks)


def notes_track(
    notes: Iterable[tuple[int, int, int, int]],
    channel: int = 0,
    program: int | None = None,
    name: str | None = None,
) -> list[tuple[int, Message]]:
    """Track events for notes ``(start_tick, duration_ticks, pitch, velocity)``.

    At equal ticks: name and program change first, then note-offs, then note-ons, then the
    note-offs of zero-length notes (so each note reads back as written).
    """
    items: list[tuple[int, int, Message]] = []
    if name is not None:
        items.append((0, 0, track_name(name)))
    if program is not None:
        items.append((0, 1, program_change(channel, program)))
    for start, duration, pitch, velocity in notes:
        items.append((start, 3, note_on(channel, pitch, velocity)))
        items.append((start + duration, 2 if duration else 4, note_off(channel, pitch)))
    items.sort(key=lambda x: (x[0], x[1]))
    return [(tick, msg) for tick, _, msg in items]


def simple_song(ticks_per_beat: int = 480, *, tempo_change: bool = True,
                drums: bool = True, anonymous: bool = True) -> bytes:
    """A small type-1 song: conductor (120 bpm, then 90 bpm at beat 8 if ``tempo_change``),
    piano melody (program 0, channel 1), fingered bass (program 33, channel 2), a channel
    without program change (``anonymous``) and drums on channel 10 without program change
    (``drums``). 16 beats long.
    """
    q = ticks_per_beat
    conductor = [(0, bpm(120))] + ([(8 * q, bpm(90))] if tempo_change else [])
    melody = [(k * q, q // 2, 60 + (k * 5) % 12, 60 + k) for k in range(16)]
    bass = [(k * 2 * q, 2 * q - 10, 36 + (k % 3) * 5, 90) for k in range(8)]
    tracks = [conductor,
              notes_track(melody, channel=0, program=0, name="Piano"),
              notes_track(bass, channel=1, program=33, name="Bass")]
    if anonymous:
        pad = [(k * 4 * q, 4 * q, 64 + k, 50) for k in range(4)]
        tracks.append(notes_track(pad, channel=2, name="Pad"))
    if drums:
        hits = [(k * q // 2, q // 4, (36, 42, 38, 42)[k % 4], 100) for k in range(32)]
        tracks.append(notes_track(hits, channel=9, name="Drums"))
    return write_midi_bytes(tracks, ticks_per_beat)


def note_spans(events) -> list[tuple[int, int, float, float]]:
    """(inst, pitch, start, end) per note of an EventArrays; asserts strict pairing: no
    note-on of a sounding note, no note-off of a silent one, every note released."""
    held: dict[tuple[int, int], float] = {}
    out = []
    for i, p, t, v in zip(events.inst.tolist(), events.pitch.tolist(), events.time.tolist(),
                          events.vel.tolist()):
        if v > 0:
            assert (i, p) not in held, f"note-on of a sounding note {(i, p)} at {t}"
            held[(i, p)] = t
        else:
            assert (i, p) in held, f"note-off of a silent note {(i, p)} at {t}"
            out.append((i, p, held.pop((i, p)), t))
    assert not held, f"notes never released: {held}"
    return out
