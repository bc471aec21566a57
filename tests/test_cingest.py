"""The compiled MIDI ingest (``notochord_rt.midi._cingest``) against the numpy one.

Identical means: the same events (dtypes and bytes, so times bit for bit), the same parts,
the same stats (values, types and order) or the same MidiError message. Checked on every
file ``tests/test_midi.py`` builds (its tests are run again here with ``load_midi``
replaced by a wrapper that runs both implementations and compares them), on the fuzz
cases of ``tests/fuzz_midi.py``, on truncations, bit flips and other mutations of valid
files, and on random multi-track songs full of collisions, overlaps and program changes.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import test_midi
from fuzz_midi import corrupt_cases, mutations, valid_song
from midifiles import (
    bpm,
    chunk,
    control_change,
    header_bytes,
    note_off,
    note_on,
    notes_track,
    program_change,
    set_tempo,
    simple_song,
    write_midi_bytes,
)

from notochord_rt.errors import InputError, MidiError
from notochord_rt.midi import compiled, ingest
from notochord_rt.midi.ingest import load_midi

if not compiled.available():
    pytest.skip("the compiled ingest is not built (no C compiler at install time)",
                allow_module_level=True)


def outcome(data, **kwargs):
    """Both implementations' results, each in a form where == means identical."""
    out = []
    for impl in ("c", "python"):
        try:
            r = load_midi(data, impl=impl, **kwargs)
        except MidiError as e:
            out.append(("MidiError", str(e)))
            continue
        assert all(a.flags.writeable for a in r.events)
        out.append((tuple((a.dtype.str, a.tobytes()) for a in r.events), repr(r.parts),
                    repr(list(r.stats.items()))))
    return out


def assert_same(data, **kwargs) -> str:
    """Assert that both implementations agree; returns "ok" or the MidiError message."""
    c, py = outcome(data, **kwargs)
    if c != py:
        if c[0] == "MidiError" or py[0] == "MidiError":
            raise AssertionError(f"compiled: {c[1] if c[0] == 'MidiError' else 'events'}; "
                                 f"python: {py[1] if py[0] == 'MidiError' else 'events'}")
        names = [n for n, x, y in zip(("events", "parts", "stats"), c, py) if x != y]
        raise AssertionError(f"compiled and python differ in {names}: {c[1:]} vs {py[1:]}")
    return c[1] if c[0] == "MidiError" else "ok"


# -- every test of test_midi.py again, each load_midi call checked ----------------------
_CALLS = {"n": 0}


def _checked_load_midi(source, **kwargs):
    if isinstance(source, (bytes, bytearray, memoryview)) or hasattr(source, "__fspath__") \
            or isinstance(source, str):
        try:
            data = ingest._read_source(source)
        except MidiError:
            data = None
        if data is not None and kwargs.get("max_note_seconds", 1) > 0:
            assert_same(data, **kwargs)
            _CALLS["n"] += 1
    return load_midi(source, impl="c", **kwargs)


@pytest.fixture(autouse=True)
def _compare_every_load(monkeypatch):
    monkeypatch.setattr(test_midi, "load_midi", _checked_load_midi)


_SKIP = {"test_same_events_as_the_reference_preprocessing"}  # the reference's own run
for _name in dir(test_midi):
    if _name.startswith("test_") and _name not in _SKIP:
        globals()[f"{_name}__both"] = getattr(test_midi, _name)


def test_the_wrapper_compares_and_is_used():
    before = _CALLS["n"]
    test_midi.test_program_change_gives_gm_instrument_and_times()
    assert _CALLS["n"] == before + 1
    with pytest.raises(AssertionError, match="differ"):
        _compare_with_a_wrong_result()


def _compare_with_a_wrong_result():
    real = compiled._cingest.ingest

    def off_by_one(data, merge, max_note):
        out = real(data, merge, max_note)
        time = bytearray(out[2])
        time[0] ^= 1  # one bit of the first time
        return (out[0], out[1], time, *out[3:])

    compiled._cingest.ingest = off_by_one
    try:
        assert_same(simple_song())
    finally:
        compiled._cingest.ingest = real


# -- fuzz cases and mutations --------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(corrupt_cases(0)))
@pytest.mark.parametrize("merge", [True, False])
def test_fuzz_cases_agree(name, merge):
    assert_same(corrupt_cases(0)[name], merge=merge)


def _riff(smf: bytes) -> bytes:
    body = b"RMID" + b"data" + len(smf).to_bytes(4, "little") + smf
    return b"RIFF" + len(body).to_bytes(4, "little") + body


BASES = {
    "valid_song": valid_song(3),
    "simple_song": simple_song(96),
    "overlapping": test_midi.overlapping_song(),
    "many_instruments": test_midi.many_instruments(24),
    "riff": _riff(simple_song(96, drums=False)),
    "running_status": write_midi_bytes(
        [[(0, set_tempo(400_000)), (0, note_on(0, 60)), (0, note_on(0, 64)),
          (96, note_on(0, 60, 0)), (96, note_on(0, 64, 0)), (100, control_change(0, 7, 5))]],
        96, running_status=True),
}


@pytest.mark.parametrize("base", sorted(BASES))
def test_random_mutations_agree(base):
    outcomes = {assert_same(m) for m in mutations(BASES[base], 250, seed=len(base))}
    assert "ok" in outcomes or len(outcomes) > 1  # the mutants are not all refused alike


def test_every_truncation_and_bit_flip_agrees():
    data = BASES["running_status"]
    for k in range(len(data) + 1):
        assert_same(data[:k])
    for k in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[k] ^= 1 << bit
            assert_same(bytes(flipped))


def _raw(*bodies: bytes) -> bytes:
    return header_bytes(0, len(bodies), 96) + b"".join(chunk(b"MTrk", b) for b in bodies)


NOTE = b"\x00\x90\x3c\x40\x10\x80\x3c\x00"
EDGE_CASES = {  # walker branches the other files may not reach
    "meta_length_cut_off": _raw(NOTE + b"\x00\xff\x01\x81"),
    "meta_length_too_long": _raw(NOTE + b"\x00\xff\x01\xff\xff\xff\xff\x01"),
    "meta_type_cut_off": _raw(NOTE + b"\x00\xff"),
    "sysex_length_cut_off": _raw(NOTE + b"\x00\xf0\x81"),
    "sysex_length_too_long": _raw(NOTE + b"\x00\xf0\xff\xff\xff\xff\x01"),
    "program_cut_off": _raw(NOTE + b"\x00\xc0"),
    "delta_cut_off": _raw(NOTE + b"\x81"),
    "tempo_cut_off": _raw(NOTE + b"\x00\xff\x51\x03\x07"),
    "message_into_next_chunk": _raw(b"\x00\x90\x3c", NOTE),
    "pressure_and_bend": _raw(b"\x00\xd0\x10\x00\xe0\x00\x40\x00\xa0\x3c\x10" + NOTE),
    "end_of_track_then_junk": _raw(NOTE + b"\x00\xff\x2f\x00\xf8\xf8"),
    "zero_length_chord": write_midi_bytes(  # all times 0 or 5e-324: the sort's fallback
        [notes_track([(0, 0, p, 90) for p in range(20, 90)], channel=0)]),
    "one_long_chord": write_midi_bytes(
        [notes_track([(0, 480, p, 90) for p in range(20, 120)], channel=9)]),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases_agree(name):
    assert_same(EDGE_CASES[name])


# -- random songs: collisions, forced merges, programs across tracks, zero lengths --------
def random_song(rng: random.Random) -> bytes:
    """Up to 40 tracks on few channels and programs (many collisions and merges), program
    changes anywhere, overlapping and zero-length notes, tempo changes in several tracks,
    orphan note-offs and unended notes."""
    tracks = []
    for _ in range(rng.choice([1, 2, 5, 12, 40])):
        events = []
        channel = rng.choice([0, 0, 1, 9, 9, 3])
        for _ in range(rng.randrange(0, 4)):
            events.append((rng.randrange(0, 2000), program_change(channel, rng.choice([0, 1, 40]))))
        if rng.random() < 0.3:
            events.append((rng.randrange(0, 2000), set_tempo(rng.choice([0, 1, 250_000, 10**6]))))
        for _ in range(rng.randrange(0, 30)):
            t, pitch = rng.randrange(0, 2000), rng.randrange(36, 44)
            events.append((t, note_on(channel, pitch, rng.randrange(0, 128))))
            if rng.random() < 0.9:
                events.append((t + rng.choice([0, 0, 1, 50, 400]), note_off(channel, pitch)))
        events.sort(key=lambda e: e[0])
        tracks.append(events)
    return write_midi_bytes(tracks, rng.choice([1, 96, 480]))


@pytest.mark.slow
def test_random_songs_agree():
    rng = random.Random(1)
    seen = set()
    for _ in range(400):
        data = random_song(rng)
        merge = rng.random() < 0.8
        max_note = rng.choice([60.0, 0.5, 3, np.float32(0.25), float("inf")])
        assert_same(data, merge=merge, max_note_seconds=max_note)
        try:
            stats = load_midi(data, impl="c", merge=merge, max_note_seconds=max_note).stats
        except MidiError:
            continue
        seen |= {k for k in ("forced_merges", "duplicate_strikes", "zero_length_notes",
                             "clipped_notes", "invalid_tempos", "unended_notes") if stats[k]}
    assert len(seen) == 6  # every repair happened somewhere, so it was compared


def test_many_tempo_changes_in_two_tracks():
    conductor = [(k * 3, bpm(60 + k % 97)) for k in range(5000)]
    other = [(k * 5 + 1, bpm(200 - k % 50)) for k in range(3000)]
    notes = notes_track([(k * 7, 5, 60 + k % 12, 80) for k in range(2000)], channel=0)
    assert assert_same(write_midi_bytes([conductor, other, notes], 96)) == "ok"


@pytest.mark.parametrize("name", ["tempo_0", "more_tracks_than_declared", "forced"])
def test_same_log_records(name, caplog):
    if name == "forced":
        data = write_midi_bytes([notes_track([(k, 480, 60, 80)], channel=0) for k in range(40)])
    else:
        data = corrupt_cases(0)[name]
    records = []
    for impl in ("c", "python"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="notochord_rt.midi"):
            try:
                load_midi(data, impl=impl)
            except MidiError:
                pass
        records.append([(r.name, r.levelno, r.getMessage()) for r in caplog.records])
    assert records[0] == records[1] and records[0]


# -- choosing the implementation -----------------------------------------------------------
def test_impl_choice_and_environment(monkeypatch):
    calls = []
    real = compiled._cingest.ingest

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(compiled._cingest, "ingest", counting)
    load_midi(simple_song())
    assert len(calls) == 1
    load_midi(simple_song(), impl="python")
    assert len(calls) == 1
    monkeypatch.setenv("NOTOCHORD_RT_PURE_INGEST", "1")
    load_midi(simple_song())
    assert len(calls) == 1
    load_midi(simple_song(), impl="c")
    assert len(calls) == 2
    with pytest.raises(InputError, match="impl"):
        load_midi(simple_song(), impl="fortran")
    monkeypatch.setattr(compiled, "_cingest", None)
    assert not compiled.available()
    with pytest.raises(InputError, match="not built"):
        load_midi(simple_song(), impl="c")
    monkeypatch.delenv("NOTOCHORD_RT_PURE_INGEST")
    assert len(load_midi(simple_song()).events) == len(load_midi(simple_song(), impl="python")
                                                        .events)


def test_bad_arguments_to_the_extension_raise():
    with pytest.raises(TypeError):
        compiled._cingest.ingest("not bytes", True, 60.0)
    with pytest.raises(TypeError):
        compiled._cingest.ingest(b"MThd", True)
