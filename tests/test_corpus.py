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

import pytest

from notochord_rt.cli import main as cli_main
from notochord_rt.data import corpus, corpus_mma
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
    with pytest.raises(UserError, match="--mma-variants"):
        corpus.build(tmp_path, ["mma"], mma_variants=0)


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


def test_song_plan_is_seeded_by_groove_name_and_in_range(tmp_path):
    plans = [
        corpus_mma.plan_song(corpus_mma.Groove(f"G{k}", tmp_path / "x.mma"), v)
        for k in range(200)
        for v in range(2)
    ]
    again = [
        corpus_mma.plan_song(corpus_mma.Groove(f"G{k}", tmp_path / "x.mma"), v)
        for k in range(200)
        for v in range(2)
    ]
    assert plans == again
    assert all(70 <= p.tempo <= 160 and -5 <= p.transpose <= 6 for p in plans)
    assert {p.progression for p in plans} == set(corpus_mma.PROGRESSIONS)
    assert len(corpus_mma.PROGRESSIONS) == 8
    assert len({p.tempo for p in plans}) > 40 and len({p.transpose for p in plans}) == 12
    # variant 1 of a groove is a different song from variant 0
    assert sum(plans[2 * k] != plans[2 * k + 1] for k in range(200)) == 200
    assert plans[0].filename == "G0.mid" and plans[1].filename == "G0_v1.mid"
    assert corpus_mma.safe_name("R&B-Ballad") == "R_B_Ballad"
    text = corpus_mma.song_text(plans[0])
    chord_lines = [ln for ln in text.splitlines() if ln.split(" ", 1)[0].isdigit()]
    assert len(chord_lines) == 32 and f"Groove {plans[0].groove.name}" in text
    assert f"Tempo {plans[0].tempo}" in text and f"Transpose {plans[0].transpose}" in text


# --- real builds ---------------------------------------------------------------------


@needs_mma
def test_mma_build_is_valid_deterministic_and_cached(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    rc = cli_main(["corpus", "build", str(a), "--sources", "mma", "--limit", "2", "-j", "2"])
    assert rc == 0
    corpus.build(b, ["mma"], limit=2, jobs=1)
    files = midi_files(a / "mma")
    assert len(files) == 2
    assert [f.name for f in files] == [f.name for f in midi_files(b / "mma")]
    for f in files:
        assert note_count(f) > 0
        assert f.read_bytes() == (b / "mma" / f.name).read_bytes()
    section = json.loads((a / "manifest.json").read_text())["sources"]["mma"]
    assert section["written"] == 2 and section["cached"] == 0 and section["skipped"] == []
    assert section["version"] and section["songs"] == 2

    mtimes = {f: f.stat().st_mtime_ns for f in files}
    again = corpus.build(a, ["mma"], limit=2, jobs=2)["sources"]["mma"]
    assert again["written"] == 0 and again["cached"] == 2
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes

    files[0].unlink()  # resume: only the missing song is made again
    third = corpus.build(a, ["mma"], limit=2, jobs=1)["sources"]["mma"]
    assert third["written"] == 1 and third["cached"] == 1
    assert files[0].read_bytes() == (b / "mma" / files[0].name).read_bytes()


@needs_mma
def test_mma_variants_make_more_songs(tmp_path):
    section = corpus.build(tmp_path, ["mma"], limit=1, mma_variants=2)["sources"]["mma"]
    files = midi_files(tmp_path / "mma")
    assert section["written"] == 2 and len(files) == 2
    assert files[0].stem + "_v1" == files[1].stem
    assert files[0].read_bytes() != files[1].read_bytes()


@needs_music21
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
    from notochord_rt.data import corpus_music21

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
