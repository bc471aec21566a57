"""A generator of valid and corrupt Standard MIDI Files, built byte by byte.

Used by the preprocessing tests (and handy by hand) to check that no MIDI file, however
broken, stops ``notochord-rt prep``. Everything is seeded, so a corpus is reproducible.

- :func:`smf` / :func:`track` / :func:`valid_song` write well-formed files.
- :func:`corrupt_cases` returns the named pathological cases of the issue (empty,
  truncated, random bytes, wrong header, type 2, division 0, SMPTE division, tempo 0,
  2^28-tick deltas, tens of thousands of tempo changes, unending notes, bad track
  lengths, ...).
- :func:`mutations` makes random bit flips, truncations, byte insertions and deletions of
  a valid file.
- :func:`write_corpus` writes all of it (plus a directory named ``x.mid``) into a folder.

Run ``python tests/fuzz_midi.py DIR`` to write a corpus to ``DIR``.
"""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

from midifiles import MAX_VARLEN, varlen


def header(fmt: int, ntracks: int, division: int, length: int = 6) -> bytes:
    """An ``MThd`` chunk; ``division`` is the raw 16-bit field (top bit set = SMPTE)."""
    return b"MThd" + struct.pack(">IHHH", length, fmt, ntracks, division & 0xFFFF)


def track(events: list[tuple[int, bytes]], *, end: bool = True, length: int | None = None) -> bytes:
    """An ``MTrk`` chunk from ``(delta_ticks, message_bytes)`` pairs.

    ``end`` appends the end-of-track meta event; ``length`` overrides the declared length
    (to make bad track lengths).
    """
    body = b"".join(varlen(dt) + msg for dt, msg in events)
    if end:
        body += b"\x00\xff\x2f\x00"
    declared = len(body) if length is None else length
    return b"MTrk" + struct.pack(">I", declared) + body


def smf(tracks: list[bytes], *, fmt: int = 1, division: int = 480) -> bytes:
    """A whole file from track chunks."""
    return header(fmt, len(tracks), division) + b"".join(tracks)


def note_on(ch: int, pitch: int, vel: int) -> bytes:
    return bytes([0x90 | ch, pitch & 0x7F, vel & 0x7F])


def note_off(ch: int, pitch: int, vel: int = 64) -> bytes:
    return bytes([0x80 | ch, pitch & 0x7F, vel & 0x7F])


def program(ch: int, prog: int) -> bytes:
    return bytes([0xC0 | ch, prog & 0x7F])


def tempo(us_per_beat: int) -> bytes:
    return b"\xff\x51\x03" + us_per_beat.to_bytes(3, "big")


def melody(
    rng: random.Random, ch: int, n_notes: int, *, prog: int | None = None, step: int = 240
) -> list[tuple[int, bytes]]:
    """A monophonic line of ``n_notes`` notes (2 events each) on channel ``ch``."""
    events: list[tuple[int, bytes]] = []
    if prog is not None:
        events.append((0, program(ch, prog)))
    gap = 0
    for _ in range(n_notes):
        pitch = rng.randrange(36, 90) if ch != 9 else rng.choice([35, 36, 38, 42, 46, 49])
        events.append((gap, note_on(ch, pitch, rng.randrange(30, 127))))
        events.append((rng.randrange(1, step), note_off(ch, pitch)))
        gap = rng.randrange(0, step)
    return events


def valid_song(seed: int, n_notes: int = 60, *, drums: bool = True) -> bytes:
    """A small well-formed type-1 file: a tempo track, a melody, optionally drums.

    It has ``2 * n_notes`` melody events plus ``2 * n_notes // 2`` drum events.
    """
    rng = random.Random(seed)
    tracks = [track([(0, tempo(rng.randrange(300_000, 900_000)))])]
    tracks.append(track(melody(rng, rng.randrange(0, 8), n_notes, prog=rng.randrange(0, 128))))
    if drums:
        tracks.append(track(melody(rng, 9, n_notes // 2)))
    return smf(tracks)


def corrupt_cases(seed: int = 0) -> dict[str, bytes]:
    """The named pathological files of the issue, each a few bytes to a few hundred KB."""
    rng = random.Random(seed)
    good = valid_song(seed + 1000)
    notes = melody(rng, 0, 40, prog=0)
    cases: dict[str, bytes] = {}
    cases["empty"] = b""
    cases["truncated_half"] = good[: len(good) // 2]
    cases["truncated_header"] = good[:9]
    cases["random_bytes"] = bytes(rng.randrange(256) for _ in range(2000))
    cases["random_after_header"] = header(1, 2, 480) + bytes(rng.randrange(256) for _ in range(500))
    cases["wrong_header"] = b"RIFF" + good[4:]
    cases["header_length_zero"] = header(1, 1, 480, length=0) + track(notes)
    cases["type_2"] = smf([track(notes), track(melody(rng, 1, 40))], fmt=2)
    cases["format_7"] = smf([track(notes)], fmt=7)
    cases["division_0"] = smf([track(notes)], division=0)
    cases["smpte_division"] = smf([track(notes)], division=0xE728)  # -25 fps, 40 per frame
    cases["tempo_0"] = smf([track([(0, tempo(0))] + notes)])
    cases["huge_deltas"] = smf(
        [track([(MAX_VARLEN if i % 2 else 0, m) for i, (_, m) in enumerate(notes)])]
    )
    cases["many_tempo_changes"] = smf(
        [track([(1, tempo(rng.randrange(1, 1 << 24))) for _ in range(30_000)]), track(notes)]
    )
    cases["unending_notes"] = smf(
        [track([(rng.randrange(0, 50), note_on(0, rng.randrange(128), 100)) for _ in range(200)])]
    )
    cases["track_length_too_long"] = smf([track(notes, length=1 << 30)])
    cases["track_length_too_short"] = smf([track(notes, length=10)])
    cases["more_tracks_than_declared"] = header(1, 5, 480) + track(notes)
    cases["zero_tracks"] = header(1, 0, 480)
    cases["no_end_of_track"] = smf([track(notes, end=False)])
    cases["running_status_without_status"] = smf([track([(0, b"\x40\x40")] + notes)])
    cases["huge_meta_length"] = smf([track([(0, b"\xff\x01" + varlen(MAX_VARLEN) + b"abc")])])
    cases["unterminated_sysex"] = smf([track([(0, b"\xf0\x05\x01\x02")] + notes, end=False)])
    cases["bad_chunk_tag"] = header(1, 1, 480) + b"XTrk" + track(notes)[4:]
    return cases


def mutations(data: bytes, n: int, seed: int = 0) -> list[bytes]:
    """``n`` random corruptions of ``data``: bit flips, truncation, insertion, deletion."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        buf = bytearray(data)
        kind = rng.randrange(4)
        if kind == 0:
            for _ in range(rng.randrange(1, 9)):
                pos = rng.randrange(len(buf))
                buf[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del buf[rng.randrange(1, len(buf)) :]
        elif kind == 2:
            pos = rng.randrange(len(buf))
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        else:
            pos = rng.randrange(len(buf))
            del buf[pos : pos + rng.randrange(1, 16)]
        out.append(bytes(buf))
    return out


def write_corpus(folder: str | Path, seed: int = 0, n_mutations: int = 20) -> dict[str, Path]:
    """Write every corrupt case, ``n_mutations`` mutants and a directory named ``x.mid``.

    Returns name -> path; the directory is under the name ``"directory"``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, data in corrupt_cases(seed).items():
        paths[name] = folder / f"{name}.mid"
        paths[name].write_bytes(data)
    base = valid_song(seed + 2000)
    for k, data in enumerate(mutations(base, n_mutations, seed)):
        paths[f"mutant_{k}"] = folder / f"mutant_{k:03d}.mid"
        paths[f"mutant_{k}"].write_bytes(data)
    paths["directory"] = folder / "x.mid"
    paths["directory"].mkdir(exist_ok=True)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/fuzz_midi.py DIR")
    for name, path in write_corpus(sys.argv[1]).items():
        print(f"{name}: {path}")
