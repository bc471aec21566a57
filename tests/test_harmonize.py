"""The harmonizer (apps.harmonizer) and ``notochord-rt harmonize``, on a tiny random model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from midifiles import note_spans as note_rows
from midifiles import simple_song
from tiny import tiny_model

from notochord_rt import events as ev
from notochord_rt.apps.harmony import (
    Harmonizer,
    HarmonyState,
    Voice,
    VoiceEvent,
    harmonize_piece,
)
from notochord_rt.cli import harmonize as cli_harmonize
from notochord_rt.cli import main
from notochord_rt.engine.sampling.sampler import Notochord
from notochord_rt.errors import InputError
from notochord_rt.midi.ingest import load_midi

VIOLIN, FLUTE, PIANO, BASS = 41, 74, 1, 34



@pytest.fixture(scope="module")
def model() -> Notochord:
    return tiny_model()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("harm")
    ckpt = d / "tiny.safetensors"
    tiny_model().save(ckpt)
    song = d / "song.mid"
    song.write_bytes(simple_song(drums=False))
    return {"ckpt": ckpt, "song": song}


# -- voices ----------------------------------------------------------------------------------------
def test_voice_parse():
    assert Voice.parse("violin:-12:-3") == Voice(VIOLIN, -12, -3)
    assert Voice.parse("41:3:12") == Voice(41, 3, 12)
    assert Voice.parse("acoustic grand piano:1:12") == Voice(PIANO, 1, 12)
    assert Voice.parse("jazz kit:0:5").inst == ev.FIRST_DRUM + 32
    for bad, what in (("violin:-3", "INST:LO:HI"), ("violin:a:3", "integers"),
                      ("violin:5:1", "LO must not"), ("kazoo:1:2", "kazoo")):
        with pytest.raises(ValueError, match=what):
            Voice.parse(bad)
    with pytest.raises(InputError):
        Voice(0, 1, 2)


def test_voice_range_is_clipped():
    assert list(Voice(1, -3, 3).pitches(1)) == [0, 1, 2, 3, 4]
    assert list(Voice(1, 0, 5).pitches(125)) == [125, 126, 127]


def test_state_allowed_pitches_and_parent_tracking():
    s = HarmonyState([Voice(VIOLIN, -2, 2)])
    assert s.allowed_pitches(s.voices[0], 60, {59}) == [58, 61, 62]
    c = s.constraints(s.voices[0], 60, 77, {59})
    assert c.inst == VIOLIN and c.time == 0.0 and c.vel == 77.0
    assert sorted(c.note_on_map[VIOLIN]) == [58, 61, 62]
    assert s.constraints(Voice(VIOLIN, 0, 0), 60, 77, ()) is None
    s.attach((PIANO, 60), (VIOLIN, 58))
    s.attach((PIANO, 60), (VIOLIN, 62))
    s.attach((PIANO, 64), (VIOLIN, 63))
    assert s.dependents((PIANO, 60)) == [(VIOLIN, 58), (VIOLIN, 62)]
    assert s.release((PIANO, 60)) == [(VIOLIN, 58), (VIOLIN, 62)]
    assert s.voice_notes() == [(VIOLIN, 63)] and s.release((PIANO, 60)) == []


# -- the harmonizer on a model ------------------------------------------------------------------
def test_note_on_adds_voice_notes_in_range_and_note_off_releases_them(model):
    voices = [Voice(VIOLIN, -12, -3), Voice(FLUTE, 3, 12)]
    h = Harmonizer(model, voices, seed=0)
    added = h.note_on(PIANO, 60, 90, dt=0.5)
    assert [a.inst for a in added] == [VIOLIN, FLUTE]
    assert 48 <= added[0].pitch <= 57 and 63 <= added[1].pitch <= 72
    assert all(a.vel == 90 for a in added)
    held = model.held_notes
    assert (PIANO, 60) in held and all((a.inst, a.pitch) in held for a in added)
    second = h.note_on(PIANO, 64, 70, dt=0.25)
    assert all(a.vel == 70 for a in second)
    released = h.note_off(PIANO, 60, dt=0.5)
    assert sorted(released) == sorted(VoiceEvent(a.inst, a.pitch, 0) for a in added)
    held = model.held_notes
    assert (PIANO, 60) not in held and all((a.inst, a.pitch) not in held for a in added)
    assert all((a.inst, a.pitch) in held for a in second)  # the other note's voices sound on
    assert h.note_off(PIANO, 60) == []  # a second note-off is ignored
    assert sorted(h.note_off(PIANO, 64)) == sorted(VoiceEvent(a.inst, a.pitch, 0) for a in second)
    assert h.sounding_voice_notes() == []


def test_voice_avoids_played_and_sounding_pitches(model):
    h = Harmonizer(model, [Voice(VIOLIN, -1, 1)], seed=1)
    first = h.note_on(PIANO, 60, 80)
    assert len(first) == 1 and first[0].pitch in (59, 61)
    second = h.note_on(PIANO, 62, 80)  # 61 may sound already; 62 is played
    assert len(second) <= 1
    if second:
        assert second[0].pitch in (61, 63) and second[0].pitch != first[0].pitch
    assert h.note_on(PIANO, 70, 80, harmonize=False) == []
    h2 = Harmonizer(model, [Voice(VIOLIN, 0, 0)], seed=1)
    assert h2.note_on(PIANO, 60, 80) == []  # only the played pitch: nothing to add


def test_same_instrument_voice_and_restrike(model):
    h = Harmonizer(model, [Voice(PIANO, 1, 2)], seed=2)
    (v,) = h.note_on(PIANO, 60, 80)
    assert v.inst == PIANO and v.pitch in (61, 62)
    out = h.note_on(PIANO, v.pitch, 90, harmonize=False)  # the player plays the voice's pitch
    assert out[0] == VoiceEvent(PIANO, v.pitch, 0)
    assert (PIANO, v.pitch) in model.held_notes and h.dependents(PIANO, 60) == []
    again = h.note_on(PIANO, 60, 100)  # re-strike of a held note
    free = ({61, 62} - {v.pitch}).pop()  # v.pitch now sounds (played), 60 is played
    assert again == [VoiceEvent(PIANO, free, 100)]
    assert (PIANO, 60) in model.held_notes and h.dependents(PIANO, 60) == [(PIANO, free)]
    released = h.note_on(PIANO, 60, 90)  # re-strike again: its voice is released first
    assert released[0] == VoiceEvent(PIANO, free, 0)


def test_harmonize_piece_voices_follow_their_parents(model, files):
    piece = load_midi(files["song"]).events
    voices = [Voice(VIOLIN, -12, -3), Voice(FLUTE, 3, 12)]
    out, added = harmonize_piece(model, piece, voices, parts=[PIANO], seed=3)
    rows = note_rows(out)
    inputs = [r for r in rows if r[0] not in (VIOLIN, FLUTE)]
    assert sorted(inputs) == sorted(note_rows(piece))  # the input is kept as it was
    voice_rows = [r for r in rows if r[0] in (VIOLIN, FLUTE)]
    assert len(voice_rows) == added > 0
    parents = [r for r in inputs if r[0] == PIANO]
    for inst, pitch, start, end in voice_rows:
        v = voices[0] if inst == VIOLIN else voices[1]
        match = [p for p in parents if p[2] == start and p[3] == end
                 and v.lo <= pitch - p[1] <= v.hi and pitch != p[1]]
        assert match, f"voice note {(inst, pitch, start, end)} has no parent"
    # only piano notes were harmonized: every voice note starts with a piano note
    assert {r[2] for r in voice_rows} <= {p[2] for p in parents}
    assert added <= 2 * len(parents)


def test_harmonize_piece_parts_and_seed(model, files):
    piece = load_midi(files["song"]).events
    a, na = harmonize_piece(model, piece, [Voice(VIOLIN, 3, 7)], parts=[BASS], seed=4)
    b, nb = harmonize_piece(model, piece, [Voice(VIOLIN, 3, 7)], parts=[BASS], seed=4)
    assert na == nb and all(np.array_equal(x, y) for x, y in zip(a, b))
    bass_starts = {r[2] for r in note_rows(piece) if r[0] == BASS}
    assert {r[2] for r in note_rows(a) if r[0] == VIOLIN} <= bass_starts
    with pytest.raises(InputError):
        harmonize_piece(model, piece, [])


# -- the CLI -------------------------------------------------------------------------------------
def test_cli_harmonize(files, tmp_path, capsys):
    out, png = tmp_path / "h.mid", tmp_path / "h.png"
    rc = main(["harmonize", str(files["song"]), "--checkpoint", str(files["ckpt"]),
               "--voice", "violin:-12:-3", "--voice", "74:3:12", "--parts", "1",
               "--out", str(out), "--png", str(png), "--seed", "1"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "voice notes added" in stdout
    got = load_midi(out).events
    assert {VIOLIN, FLUTE} <= set(got.inst.tolist())
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv,needle", [
    (["--voice", "violin:3"], "INST:LO:HI"),
    (["--voice", "kazoo:1:3"], "kazoo"),
    (["--parts", "flute"], "none of them plays"),
    (["--out", "/proc/no-such-dir/h.mid"], "cannot create folder"),
])
def test_cli_harmonize_bad_input(files, capsys, argv, needle):
    rc = main(["harmonize", str(files["song"]), "--checkpoint", str(files["ckpt"])] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_cli_harmonize_not_midi(files, tmp_path, capsys):
    bad = tmp_path / "x.mid"
    bad.write_bytes(b"RIFF0000WAVE")
    rc = main(["harmonize", str(bad), "--checkpoint", str(files["ckpt"]),
               "--out", str(tmp_path / "o.mid")])
    err = capsys.readouterr().err
    assert rc == 2 and "not a usable MIDI file" in err and "Traceback" not in err


def test_cli_harmonize_without_input_needs_live_module(capsys, monkeypatch):
    monkeypatch.setattr(cli_harmonize, "_module_exists", lambda name: False)
    monkeypatch.setattr(cli_harmonize, "_live_args_error", None)
    rc = main(["harmonize"])
    err = capsys.readouterr().err
    assert rc == 2 and "give a MIDI file" in err


def test_cli_harmonize_without_input_calls_live(monkeypatch):
    import types

    called = {}
    fake = types.ModuleType("notochord_rt.apps.live.session")
    fake.harmonize_main = lambda args: called.setdefault("args", args) and 0
    monkeypatch.setitem(sys.modules, "notochord_rt.apps.live.session", fake)
    monkeypatch.setattr(cli_harmonize, "_module_exists", lambda name: name.endswith(".session"))
    monkeypatch.setattr(cli_harmonize, "_live_args_error", None)
    assert main(["harmonize", "--voice", "violin:1:4"]) == 0
    assert called["args"].input is None and called["args"].voices == [Voice(VIOLIN, 1, 4)]
    assert called["args"].precision == "fp32"
