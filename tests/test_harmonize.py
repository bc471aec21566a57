"""The harmonizer (apps.harmony) and ``notochord-rt harmonize``, on a tiny random model."""

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
    HarmonyPolicy,
    HarmonyState,
    Voice,
    answer_constraints,
    harmonize_piece,
)
from notochord_rt.apps.live.player import NoteIn, Player, PlayerConfig
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


def test_state_parent_tracking():
    s = HarmonyState()
    s.attach((PIANO, 60), (VIOLIN, 58))
    s.attach((PIANO, 60), (VIOLIN, 62))
    s.attach((PIANO, 64), (VIOLIN, 63))
    assert s.dependents((PIANO, 60)) == [(VIOLIN, 58), (VIOLIN, 62)]
    assert s.release((PIANO, 60)) == [(VIOLIN, 58), (VIOLIN, 62)]
    assert s.voice_notes() == [(VIOLIN, 63)] and s.release((PIANO, 60)) == []
    s.attach((PIANO, 67), (VIOLIN, 63))  # a note answers one parent at a time
    assert s.dependents((PIANO, 64)) == [] and s.dependents((PIANO, 67)) == [(VIOLIN, 63)]


# -- the harmony policy on a player, driven offline ---------------------------------------------
class _Out:
    """Sink of an offline player: every note sent, in order."""

    def __init__(self):
        self.notes = []

    def note(self, inst, pitch, vel):
        self.notes.append((inst, pitch, vel))

    def panic(self):
        pass


def offline_player(model, policy, seed=0):
    model.reset(seed=seed)
    out = _Out()
    player = Player(model, out, policy, PlayerConfig(pause_after_send=0.0), clock=lambda: 0.0,
                    reset_on_start=False)
    return player, out


def test_policy_adds_voice_notes_in_range_and_releases_them_with_their_note(model):
    voices = [Voice(VIOLIN, -12, -3), Voice(FLUTE, 3, 12)]
    policy = HarmonyPolicy(voices)
    player, out = offline_player(model, policy)
    player.process(NoteIn(PIANO, 60, 90, 0.0))
    added = list(out.notes)
    assert [a[0] for a in added] == [VIOLIN, FLUTE]
    assert 48 <= added[0][1] <= 57 and 63 <= added[1][1] <= 72
    assert all(a[2] == 90 for a in added)
    held = model.held_notes
    assert (PIANO, 60) in held and all((a[0], a[1]) in held for a in added)
    player.process(NoteIn(PIANO, 64, 70, 0.0))
    second = out.notes[2:]
    assert all(a[2] == 70 for a in second)
    player.process(NoteIn(PIANO, 60, 0, 0.0))
    released = out.notes[4:]
    assert sorted(released) == sorted((a[0], a[1], 0) for a in added)
    held = model.held_notes
    assert (PIANO, 60) not in held and all((a[0], a[1]) not in held for a in added)
    assert all((a[0], a[1]) in held for a in second)  # the other note's voices sound on
    player.process(NoteIn(PIANO, 60, 0, 0.0))  # a second note-off is dropped
    assert len(out.notes) == 6 and (PIANO, 60) not in model.held_notes
    player.process(NoteIn(PIANO, 64, 0, 0.0))
    assert sorted(out.notes[6:]) == sorted((a[0], a[1], 0) for a in second)
    assert policy.state.voice_notes() == [] and player.sounding() == set()


def test_voice_avoids_played_and_sounding_pitches(model):
    player, out = offline_player(model, HarmonyPolicy([Voice(VIOLIN, -1, 1)]), seed=1)
    player.process(NoteIn(PIANO, 60, 80, 0.0))
    (first,) = out.notes
    assert first[1] in (59, 61)
    player.process(NoteIn(PIANO, 62, 80, 0.0))  # 61 may sound already; 62 is played
    second = out.notes[1:]
    assert len(second) <= 1
    if second:
        assert second[0][1] in (61, 63) and second[0][1] != first[1]
    player2, out2 = offline_player(model, HarmonyPolicy([Voice(VIOLIN, 0, 0)]), seed=1)
    player2.process(NoteIn(PIANO, 60, 80, 0.0))
    assert out2.notes == []  # only the played pitch: nothing to add


def test_parts_and_mute(model):
    policy = HarmonyPolicy([Voice(VIOLIN, 1, 12)], parts=[BASS])
    player, out = offline_player(model, policy)
    player.process(NoteIn(PIANO, 60, 80, 0.0))
    assert out.notes == [] and (PIANO, 60) in model.held_notes  # fed as context only
    player.process(NoteIn(BASS, 40, 80, 0.0))
    assert len(out.notes) == 1
    policy.on_control(player, "mute", 1.0)
    player.process(NoteIn(BASS, 45, 80, 0.0))
    assert len(out.notes) == 1


def test_same_instrument_voice_and_restrike(model):
    policy = HarmonyPolicy([Voice(PIANO, 1, 2)])
    player, out = offline_player(model, policy, seed=2)
    player.process(NoteIn(PIANO, 60, 80, 0.0))
    (v,) = out.notes
    assert v[0] == PIANO and v[1] in (61, 62)
    policy.muted = True
    player.process(NoteIn(PIANO, v[1], 90, 0.0))  # the player plays the voice's pitch
    assert out.notes[-1] == (PIANO, v[1], 0)  # the voice note ended first
    assert (PIANO, v[1]) in model.held_notes and (PIANO, v[1]) not in player.sounding()
    policy.muted = False
    n = len(out.notes)
    player.process(NoteIn(PIANO, 60, 100, 0.0))  # re-strike of a held note
    free = ({61, 62} - {v[1]}).pop()  # v's pitch now sounds (played), 60 is played
    assert out.notes[n:] == [(PIANO, free, 100)]
    assert (PIANO, 60) in model.held_notes and policy.state.dependents((PIANO, 60)) == [
        (PIANO, free)]
    n = len(out.notes)
    player.process(NoteIn(PIANO, 60, 90, 0.0))  # re-strike again: its voice released first
    assert out.notes[n] == (PIANO, free, 0)
    player.stop()
    assert player.sounding() == set()


def test_answer_constraints_is_the_one_builder():
    c = answer_constraints(VIOLIN, 60, 177, {59}, offsets=(-2, 2))
    assert c.inst == VIOLIN and c.time == 0.0 and c.vel == 127.0 and c.external == {VIOLIN}
    assert sorted(c.note_on_map[VIOLIN]) == [58, 61, 62] and c.note_off_map == {}
    c = answer_constraints(VIOLIN, 60, 90, (), offsets=(-12, 12), pitch_range=(55, 62),
                           vel_range=(10, 50), pitch_temp=0.5)
    assert sorted(c.note_on_map[VIOLIN]) == [55, 56, 57, 58, 59, 61, 62]
    assert c.vel == 50.0 and c.pitch_temp == 0.5
    assert answer_constraints(VIOLIN, 60, 77, (), offsets=(0, 0)) is None
    assert answer_constraints(VIOLIN, 126, 77, (), offsets=(2, 5)) is None  # above 127


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
    fake = types.ModuleType("notochord_rt.apps.live.harmonize")
    fake.harmonize_main = lambda args: called.setdefault("args", args) and 0
    monkeypatch.setitem(sys.modules, "notochord_rt.apps.live.harmonize", fake)
    monkeypatch.setattr(cli_harmonize, "_module_exists", lambda name: name.endswith(".harmonize"))
    monkeypatch.setattr(cli_harmonize, "_live_args_error", None)
    assert main(["harmonize", "--voice", "violin:1:4"]) == 0
    assert called["args"].input is None and called["args"].voices == [Voice(VIOLIN, 1, 4)]
    assert called["args"].precision == "fp32"
