"""Tests of the corpus recipe (``notochord-rt corpus build``) on a tiny scale, for real:
a few music21 scores and mma songs are built, checked as MIDI, rebuilt elsewhere for
determinism, and rebuilt in place to check that nothing is redone."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from midifiles import bpm, notes_track, write_midi_bytes

from notochord_rt.cli import main as cli_main
from notochord_rt.corpus import build as corpus
from notochord_rt.corpus import mma as corpus_mma
from notochord_rt.corpus import songs as corpus_songs
from notochord_rt.errors import UserError

HAVE_MMA = shutil.which("mma") is not None
needs_mma = pytest.mark.skipif(
    not HAVE_MMA, reason="the mma program is not installed (apt-get install mma)"
)


def _has_music21() -> bool:
    try:
        import music21  # noqa: F401
    except ImportError:
        return False
    return True


needs_music21 = pytest.mark.skipif(
    not _has_music21(), reason="music21 is not installed (pip install 'notochord-rt[corpus]')"
)


def midi_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.mid") if not p.name.startswith("."))


def note_count(path: Path) -> int:
    import symusic

    score = symusic.Score(str(path))
    return sum(len(t.notes) for t in score.tracks)


# --- helpers -----------------------------------------------------------------------


def test_stride_sample_spreads_and_is_deterministic():
    items = list(range(100))
    picked = corpus.stride_sample(items, 4)
    assert picked == corpus.stride_sample(items, 4)
    assert len(picked) == 4 == len(set(picked))
    assert picked[0] < 25 and picked[-1] >= 75  # covers both ends of the list
    assert corpus.stride_sample(items, None) == items
    assert corpus.stride_sample(items, 1000) == items
    assert corpus.stride_sample([], 3) == []


def test_time_limit_interrupts_and_clears_the_alarm():
    start = time.perf_counter()
    with pytest.raises(corpus.ScoreTimeout, match="time limit"):
        with corpus.time_limit(0.2):
            while time.perf_counter() - start < 5:
                pass
    assert time.perf_counter() - start < 2
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    start = time.perf_counter()
    with pytest.raises(corpus.ScoreTimeout):  # library code catching Exception can't hide it
        with corpus.time_limit(0.1):
            try:
                while time.perf_counter() - start < 5:
                    pass
            except Exception:
                pass
            while time.perf_counter() - start < 5:
                pass
    assert time.perf_counter() - start < 2
    with corpus.time_limit(None):
        time.sleep(0.01)  # no limit: nothing raised
    with corpus.time_limit(5):
        pass
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_parse_sources_names_bad_sources():
    assert corpus.parse_sources("mma, music21,mma") == ["mma", "music21"]
    with pytest.raises(UserError, match="lakh"):
        corpus.parse_sources("music21,lakh")
    with pytest.raises(UserError):
        corpus.parse_sources(" , ")


def test_bad_limits_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--limit"):
        corpus.build(tmp_path, ["mma"], limit=0)
    with pytest.raises(UserError, match="--songs-per-groove"):
        corpus.build(tmp_path, ["mma"], songs_per_groove=0)


# --- missing tools -----------------------------------------------------------------


def test_missing_mma_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(UserError, match="apt-get install mma"):
        corpus.build(tmp_path / "out", ["mma"])
    assert not (tmp_path / "out").exists()  # nothing started
    rc = cli_main(["corpus", "build", str(tmp_path / "out"), "--sources", "mma"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "apt-get install mma" in err and err.count("\n") == 1


def test_missing_music21_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "music21", None)  # makes `import music21` fail
    with pytest.raises(UserError, match=r"pip install 'notochord-rt\[corpus\]'"):
        corpus.build(tmp_path / "out", ["music21", "mma"])
    assert not (tmp_path / "out").exists()


# --- mma recipe without the program --------------------------------------------------


def write_fake_lib(lib: Path) -> None:
    (lib / "stdlib").mkdir(parents=True)
    (lib / "zoom").mkdir()
    (lib / "stdlib" / "swing.mma").write_text(
        "// a groove file\nDefGroove Swing  basic swing\n  defgroove SwingSus  with strings\n"
        "DefGroove SwingIntro  intro\nDefGroove SwingEnd  ending\nDefGroove SwingFill fill\n"
    )
    (lib / "zoom" / "zswing.mma").write_text(
        "DefGroove SWING other\nDefGroove R&B  rnb\nDefGroove R_B  same file name as R&B\n"
    )


def test_list_grooves_skips_intros_and_prefers_stdlib(tmp_path):
    write_fake_lib(tmp_path / "lib")
    grooves = corpus_mma.list_grooves(tmp_path / "lib")
    assert [g.name for g in grooves] == ["R&B", "Swing", "SwingSus"]
    assert {g.name: g.file.parent.name for g in grooves} == {
        "R&B": "zoom",
        "Swing": "stdlib",
        "SwingSus": "stdlib",
    }


def test_song_plans_are_seeded_varied_and_in_range():
    plans = [corpus_songs.plan_song(f"G{k}", v, variations=("GSus", "G1"))
             for k in range(150) for v in range(2)]
    again = [corpus_songs.plan_song(f"G{k}", v, variations=("GSus", "G1"))
             for k in range(150) for v in range(2)]
    assert plans == again
    assert plans != [corpus_songs.plan_song(f"G{k}", v, seed=1, variations=("GSus", "G1"))
                     for k in range(150) for v in range(2)]
    assert len(corpus_songs.PROGRESSIONS) >= 20
    modes = {m for m, _ in corpus_songs.PROGRESSIONS.values()}
    assert modes == {"major", "minor"}
    for _, chords in corpus_songs.PROGRESSIONS.values():  # every chord is understood
        assert all(len(corpus_songs.chord_tones(c)) >= 3 for c in chords)
    used = {s.progression for p in plans for s in p.sections}
    assert len(used) == len(corpus_songs.PROGRESSIONS)
    assert {p.transpose for p in plans} == set(range(-5, 7))  # all 12 keys
    assert {p.form for p in plans} == set(corpus_songs.FORMS)
    lo, hi = min(p.tempo for p in plans), max(p.tempo for p in plans)
    assert 55 <= lo and hi <= 210
    assert corpus_songs.tempo_range("SlowBallad") == (55, 90)
    assert corpus_songs.tempo_range("Samba", "latin") != corpus_songs.tempo_range("Ballad")
    melodic = [p for p in plans if p.melody_program is not None]
    assert 0.6 < len(melodic) / len(plans) < 0.95
    for p in melodic:
        for sec in p.sections:
            assert [sum(d for d, _ in bar) for bar in sec.melody] == [4.0] * len(sec.chords)
            assert len(sec.chords) >= 8
            pitches = [q for bar in sec.melody for _, q in bar if q is not None]
            assert min(pitches) >= 60 and max(pitches) <= 81 and len(set(pitches)) >= 3
    # a waltz gets 3-beat bars; an odd metre gets no melody
    waltz = corpus_songs.plan_song("Waltz", 0, beats=3)
    assert all(sum(d for d, _ in bar) == 3 for s in waltz.sections for bar in s.melody or ())
    assert corpus_songs.plan_song("Odd", 0, beats=2.5).melody_program is None


def test_song_text_repeats_sections_exactly():
    plan = next(p for k in range(50)
                if (p := corpus_songs.plan_song("Swing", k, variations=("SwingSus",))).form
                == "AABA" and p.melody_program is not None)
    text = corpus_songs.song_text(plan, "/lib/swing.mma")
    blocks = text.split("// section ")[1:]
    strip = [[ln.split(" ", 1)[1] if ln[:1].isdigit() else ln for ln in b.splitlines()]
             for b in blocks]
    assert strip[0] == strip[1] == strip[3] != strip[2]  # A A B A
    assert "Groove SwingSus" in blocks[2] and "Groove Swing\n" in blocks[0]
    assert blocks[0].count("{") == len(plan.section("A").chords)
    assert "Seq\n" in blocks[0] and "RndSeed" in blocks[0]


# --- the screen ---------------------------------------------------------------------


def midi_of(notes, channel=0, program=0) -> bytes:
    return write_midi_bytes([[(0, bpm(120))], notes_track(notes, channel=channel,
                                                          program=program)])


def test_screen_leaves_out_degenerate_files_and_says_why(tmp_path):
    ok = midi_of([(k * 240, 200, 60 + k % 7, 90) for k in range(32)])
    drums = midi_of([(k * 240, 100, 36 + k % 3, 90) for k in range(64)], channel=9, program=None)
    one_pitch = midi_of([(k * 240, 200, 64, 90) for k in range(64)])
    few = midi_of([(k * 240, 200, 60 + k, 90) for k in range(5)])
    assert corpus.screen_midi(ok) is None
    assert corpus.screen_midi(drums).startswith("no melodic notes (drums only, 64")
    assert "only 1 pitch" in corpus.screen_midi(one_pitch)
    assert corpus.screen_midi(few) == "only 5 melodic notes (fewer than 16)"
    assert corpus.screen_midi(b"not midi").startswith("unreadable MIDI")
    for name, data in {"ok": ok, "drums": drums, "sub/one": one_pitch, "few": few}.items():
        (tmp_path / f"{name}.mid").parent.mkdir(exist_ok=True)
        (tmp_path / f"{name}.mid").write_bytes(data)
    left = corpus.screen_folder(tmp_path)
    assert sorted(left) == ["drums.mid", "few.mid", "sub/one.mid"]
    assert corpus.reason_counts(left.values()) == {
        "melodic notes use only N pitch": 1, "no melodic notes": 1,
        "only N melodic notes": 1}
    rc = cli_main(["corpus", "screen", str(tmp_path)])
    assert rc == 0


# --- real builds ---------------------------------------------------------------------


GROOVES = """// a tiny groove library for the tests
SeqClear
SeqSize 1
Time 4
Begin Drum-Kick
  Tone KickDrum1
  Sequence {1 0 90; 3 0 90}
  RVolume 20
End
Begin Drum-Hat
  Tone ClosedHiHat
  Sequence {1 0 70; 2 0 70; 3 0 70; 4 0 70}
  RTime 10
End
DefGroove TestDrums  drums only

Begin Bass
  Voice FingeredBass
  Sequence {1 4 1 90; 3 4 5 90}
End
Begin Chord
  Voice Piano1
  Sequence {1 2 80; 3 2 80}
  RVolume 20
End
DefGroove TestBand  drums, bass and piano

Chord Voice Strings
DefGroove TestBandSus  the same with strings
"""


def groove_lib(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    (lib / "stdlib").mkdir(parents=True)
    (lib / "stdlib" / "testband.mma").write_text(GROOVES)
    return lib


def build_lib(dest: Path, lib: Path, **kw) -> dict:
    return corpus.build(dest, ["mma"], mma_lib=lib, **kw)["sources"]["mma"]


@needs_mma
@pytest.mark.slow
def test_mma_build_leaves_out_drum_grooves_is_deterministic_and_cached(tmp_path):
    lib = groove_lib(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    rc = cli_main(["corpus", "build", str(a), "--sources", "mma", "--mma-lib", str(lib),
                   "--songs-per-groove", "2", "-j", "2"])
    assert rc == 0
    build_lib(b, lib, songs_per_groove=2, jobs=1)
    files = midi_files(a / "mma")
    assert [f.name for f in files] == ["TestBand.mid", "TestBandSus.mid", "TestBandSus_v1.mid",
                                       "TestBand_v1.mid"]
    assert [f.name for f in files] == [f.name for f in midi_files(b / "mma")]
    for f in files:
        assert corpus.screen_midi(f) is None and note_count(f) > 0
        assert f.read_bytes() == (b / "mma" / f.name).read_bytes()
    assert files[0].read_bytes() != files[3].read_bytes()  # song 1 differs from song 0
    section = json.loads((a / "manifest.json").read_text())["sources"]["mma"]
    assert section["grooves"] == 3 and section["grooves_fit"] == 2
    [dropped] = section["grooves_left_out"]
    assert dropped["groove"] == "TestDrums" and "no melodic notes" in dropped["reason"]
    assert section["written"] == 4 and section["cached"] == 0 and section["skipped"] == []
    assert section["songs"] == 4 and section["seed"] == 0 and section["version"]

    mtimes = {f: f.stat().st_mtime_ns for f in files}
    again = build_lib(a, lib, songs_per_groove=2, jobs=2)
    assert again["written"] == 0 and again["cached"] == 4
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes

    files[0].unlink()  # resume: only the missing song is made again
    third = build_lib(a, lib, songs_per_groove=2, jobs=1)
    assert third["written"] == 1 and third["cached"] == 3
    assert files[0].read_bytes() == (b / "mma" / files[0].name).read_bytes()

    with pytest.raises(UserError, match="seed 0"):  # never mix two seeds' songs
        build_lib(a, lib, songs_per_groove=2, seed=5)


@needs_mma
def test_mma_song_sections_repeat_exactly_with_a_melody(tmp_path):
    from notochord_rt.events import is_drum
    from notochord_rt.midi.ingest import load_midi

    lib = groove_lib(tmp_path)
    groove = corpus_mma.Groove("TestBand", lib / "stdlib" / "testband.mma")
    plan = next(p for k in range(60)
                if (p := corpus_songs.plan_song("TestBand", k, beats=4,
                                                variations=("TestBandSus",))).form == "AABA"
                and p.melody_program is not None and len(p.section("A").chords) == 8)
    tool = corpus_mma.require_mma(None, lib)
    data, _ = corpus_mma.run_mma(tool, corpus_songs.song_text(plan, groove.file.as_posix()), 60)
    ev = load_midi(data).events
    bar = 240 / plan.tempo  # seconds per 4-beat bar
    sec = 8 * bar

    def section(k):
        m = (ev.time >= k * sec - 1e-3) & (ev.time < (k + 1) * sec - 1e-3) & (ev.vel > 0)
        return list(zip(ev.inst[m], ev.pitch[m], np.round(ev.time[m] - k * sec, 4), ev.vel[m]))

    a1, a2, b, a3 = (section(k) for k in range(4))
    assert a1 and a1 == a2 == a3 and a1 != b  # humanized, yet repeated exactly
    melody = ev.inst == plan.melody_program + 1
    assert (melody & (ev.vel > 0)).sum() >= 16  # the Solo track is there
    assert len(set(ev.inst[~is_drum(ev.inst)])) >= 3  # bass, chords, melody


@needs_mma
@pytest.mark.slow
def test_mma_real_library_songs_are_valid(tmp_path):
    section = corpus.build(tmp_path, ["mma"], limit=2, jobs=2)["sources"]["mma"]
    files = midi_files(tmp_path / "mma")
    assert section["grooves"] == 2 and section["skipped"] == []
    assert len(files) == section["files"] == section["songs"] - len(section["left_out"])
    assert section["songs"] == section["grooves_fit"]  # one song per fit groove
    for f in files:
        assert corpus.screen_midi(f) is None


@needs_music21
@pytest.mark.slow
def test_music21_build_is_valid_deterministic_and_cached(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    rc = cli_main(["corpus", "build", str(a), "--sources", "music21", "--limit", "3", "-j", "2"])
    assert rc == 0
    corpus.build(b, ["music21"], limit=3, jobs=1)
    files = midi_files(a / "music21")
    assert len(files) >= 3
    assert [f.relative_to(a) for f in files] == [
        f.relative_to(b) for f in midi_files(b / "music21")
    ]
    for f in files:
        assert note_count(f) > 0
        assert f.parent.name in {"bach", "palestrina", "oneills1850", "ryansMammoth", "other"}
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes()
        assert "essenFolksong" not in f.name
    section = json.loads((a / "manifest.json").read_text())["sources"]["music21"]
    assert section["written"] == len(files) and section["cached"] == 0
    assert section["files_considered"] == 3 and section["version"]
    assert any("non-commercial" in g["reason"] for g in section["excluded"])

    mtimes = {f: f.stat().st_mtime_ns for f in files}
    again = corpus.build(a, ["music21"], limit=3, jobs=1)["sources"]["music21"]
    assert again["written"] == 0 and again["cached"] == len(files)
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes

    files[-1].unlink()  # resume: the missing file is written again, the rest kept
    third = corpus.build(a, ["music21"], limit=3, jobs=1)["sources"]["music21"]
    assert third["written"] == 1 and third["cached"] == len(files) - 1
    assert files[-1].read_bytes() == (b / files[-1].relative_to(a)).read_bytes()

    if HAVE_MMA:  # a later build of another source keeps this source's manifest section
        corpus.build(a, ["mma"], limit=1)
        manifest = json.loads((a / "manifest.json").read_text())
        assert set(manifest["sources"]) == {"mma", "music21"}
        assert manifest["sources"]["music21"]["written"] == 1


@needs_music21
def test_music21_bad_file_is_skipped_with_a_reason(tmp_path):
    from notochord_rt.corpus import scores as corpus_music21

    bad = tmp_path / "broken.mxl"
    bad.write_bytes(b"this is not a zip archive")
    task = corpus_music21.FileTask(
        path=str(bad),
        rel="demos/broken.mxl",
        out_dir=str(tmp_path / "out"),
        max_scores=None,
        time_limit_s=30,
    )
    result = corpus_music21.convert_file(task)
    assert result["written"] == [] and len(result["skipped"]) == 1
    assert result["skipped"][0]["index"] is None and result["skipped"][0]["reason"]
    assert not (tmp_path / "out").exists()


@needs_music21
def test_music21_time_limit_works_in_workers_and_a_larger_limit_retries(tmp_path):
    # 1 ms is far less than any parse takes, so every file must hit the limit.
    first = corpus.build(tmp_path, ["music21"], limit=2, jobs=2, time_limit_s=0.001)
    section = first["sources"]["music21"]
    assert section["written"] == 0 and len(section["skipped"]) == 2
    assert all("ScoreTimeout" in s["reason"] for s in section["skipped"])
    assert midi_files(tmp_path / "music21") == []
    # the same limit again: the timeouts are remembered, not retried
    same = corpus.build(tmp_path, ["music21"], limit=2, jobs=1, time_limit_s=0.001)
    assert same["sources"]["music21"]["skipped"] == section["skipped"]
    # a larger limit: the files are tried again and written
    larger = corpus.build(tmp_path, ["music21"], limit=2, jobs=1, time_limit_s=120)
    assert larger["sources"]["music21"]["skipped"] == []
    assert larger["sources"]["music21"]["written"] == len(midi_files(tmp_path / "music21")) >= 2
