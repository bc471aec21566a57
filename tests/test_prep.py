"""Tests of ``notochord-rt prep`` (data.prep and friends) on generated MIDI files.

Every corpus is generated here (tests/fuzz_midi.py); nothing depends on /work/shared.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import fuzz_midi
import numpy as np
import pytest
from prep_faults import faulty
from split_files import folder_bytes

from notochord_rt.cli import main as cli_main
from notochord_rt.data.prep import worker as pw
from notochord_rt.data.prep.pipeline import discover, prepare, split_of
from notochord_rt.data.prep.pool import SupervisedPool
from notochord_rt.data.prep.report import read_report, read_summary
from notochord_rt.data.store import SPLITS, EventStore
from notochord_rt.errors import UserError
from notochord_rt.midi.ingest import load_midi

N_GOOD = 12
MUST_BE_CORRUPT = (
    "empty", "truncated_header", "truncated_half", "random_bytes", "random_after_header",
    "wrong_header", "format_7", "header_length_zero", "huge_meta_length", "bad_chunk_tag",
    "type_2", "division_0", "smpte_division", "track_length_too_long",
)
MUST_BE_STORED = ("many_tempo_changes", "unending_notes")


def make_corpus(root: Path, n_good: int = N_GOOD) -> dict[str, Path]:
    """Valid songs (mixed-case suffixes), a duplicate, a short file and the fuzz corpus."""
    paths = fuzz_midi.write_corpus(root / "fuzz", seed=1, n_mutations=24)
    good = root / "good"
    good.mkdir(parents=True)
    for i in range(n_good):
        suffix = (".mid", ".MID", ".midi", ".kar")[i % 4]
        paths[f"good_{i}"] = good / f"song_{i:02d}{suffix}"
        paths[f"good_{i}"].write_bytes(fuzz_midi.valid_song(i, n_notes=50))
    paths["dup"] = good / "zz_copy_of_song_03.mid"
    shutil.copyfile(paths["good_3"], paths["dup"])
    paths["short"] = good / "short.mid"
    paths["short"].write_bytes(fuzz_midi.valid_song(500, n_notes=5, drums=False))
    paths["no_notes"] = good / "no_notes.mid"
    paths["no_notes"].write_bytes(fuzz_midi.smf([fuzz_midi.track([(0, fuzz_midi.tempo(1000))])]))
    (root / "notes.txt").write_text("not a MIDI file, not looked at")
    paths["broken_link"] = good / "broken_link.mid"
    paths["broken_link"].symlink_to(root / "nowhere.mid")
    return paths


def stored(dest: Path) -> dict[str, tuple[str, object]]:
    """path -> (split, EventArrays) of everything in a prepared folder."""
    out = {}
    for split in SPLITS:
        store = EventStore(dest, split)
        for k, rec in enumerate(store.records()):
            out[rec["path"]] = (split, store[k])
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, make_corpus(root)


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    root, _ = corpus
    dest = tmp_path_factory.mktemp("prepared")
    prepare([root], dest, jobs=2)
    return dest


def test_fuzz_corpus_every_file_accounted_for(corpus, prepared):
    root, paths = corpus
    files, dirs = discover([root])
    in_store = stored(prepared)
    report = read_report(prepared)
    reported = [e["path"] for e in report]
    assert len(reported) == len(set(reported))
    assert set(in_store).isdisjoint(reported)
    assert set(in_store) | set(reported) == set(files) | set(dirs)
    for entry in report:
        assert entry["reason"], entry
        assert entry["category"] in {
            pw.NOT_A_FILE, pw.UNREADABLE, pw.TOO_LARGE, pw.CORRUPT, pw.TOO_LONG,
            pw.TOO_SHORT, pw.DUPLICATE, pw.CRASH, pw.TIMEOUT,
        }
    by_path = {e["path"]: e for e in report}
    assert by_path[str(paths["directory"])]["category"] == pw.NOT_A_FILE
    assert by_path[str(paths["broken_link"])]["category"] == pw.UNREADABLE
    for name in MUST_BE_CORRUPT:
        assert by_path[str(paths[name])]["category"] == pw.CORRUPT, name
    short = by_path[str(paths["short"])]
    assert short["category"] == pw.TOO_SHORT and "fewer than the minimum 64" in short["reason"]
    assert by_path[str(paths["no_notes"])]["category"] == pw.TOO_SHORT
    assert by_path[str(paths["huge_deltas"])]["category"] == pw.TOO_LONG
    for name in MUST_BE_STORED:
        split, events = in_store[str(paths[name])]
        assert len(events) == len(load_midi(paths[name].read_bytes()).events) >= 64
    # whatever got through is usable: finite, non-negative, sorted, within the duration limit
    for _split, events in in_store.values():
        assert len(events) >= 64
        assert np.isfinite(events.time).all() and (events.time >= 0).all()
        assert (np.diff(events.time) >= 0).all()
        assert events.duration <= 6 * 3600


def test_valid_files_arrive_with_their_events(corpus, prepared):
    _, paths = corpus
    in_store = stored(prepared)
    for i in range(N_GOOD):
        path = paths[f"good_{i}"]
        data = path.read_bytes()
        split, events = in_store[str(path)]
        expected = load_midi(data).events
        assert len(expected) >= 64
        assert split == split_of(pw.content_hash(data))
        for got, want in zip(events, expected):
            np.testing.assert_array_equal(got, want)


def test_duplicates_counted_once(corpus, prepared):
    _, paths = corpus
    report = {e["path"]: e for e in read_report(prepared)}
    dup = report[str(paths["dup"])]
    assert dup["category"] == pw.DUPLICATE
    assert dup["duplicate_of"] == str(paths["good_3"])
    summary = read_summary(prepared)
    assert summary["duplicates"] == 1
    assert summary["files_ok"] == sum(len(EventStore(prepared, s)) for s in SPLITS)
    total = summary["files_ok"] + summary["files_skipped"] + summary["duplicates"]
    assert total == summary["files_seen"]
    assert summary["events"] == sum(EventStore(prepared, s).num_events for s in SPLITS)
    names = summary["instruments"]
    assert "Standard Kit" in names and names["Standard Kit"]["pieces"] >= 1


def test_rerun_processes_nothing_and_adding_moves_nothing(corpus, prepared, tmp_path):
    root, paths = corpus
    dest = tmp_path / "dest"
    shutil.copytree(prepared, dest)
    before = folder_bytes(dest)
    again = prepare([root], dest, jobs=2)
    assert again.processed_now == 0 and again.reused == again.files_seen - 1  # 1 = x.mid
    assert folder_bytes(dest) == before

    extra_root = tmp_path / "extra"
    extra_root.mkdir()
    new = extra_root / "new_song.mid"
    new.write_bytes(fuzz_midi.valid_song(777, n_notes=60))
    old_splits = {p: s for p, (s, _) in stored(dest).items()}
    grown = prepare([root, extra_root], dest, jobs=2)
    assert grown.processed_now == 1
    now = stored(dest)
    assert {p: now[p][0] for p in old_splits} == old_splits
    assert now[str(new)][0] == split_of(pw.content_hash(new.read_bytes()))


def test_touched_file_is_rehashed_not_reparsed(corpus, prepared, tmp_path):
    root, paths = corpus
    dest = tmp_path / "dest"
    shutil.copytree(prepared, dest)
    target = root / "aa_copy.mid"  # found first: it becomes the stored path of the content
    shutil.copyfile(paths["good_5"], target)  # new path, known content
    try:
        s = prepare([root], dest, jobs=1, loader="no_such_module:nothing")
        # the loader would fail if called: the content was recognised by its hash instead
        assert s.processed_now == 1
        assert stored(dest)[str(target)][0] == split_of(pw.content_hash(target.read_bytes()))
        report = {e["path"]: e for e in read_report(dest)}
        assert report[str(paths["good_5"])]["duplicate_of"] == str(target)
    finally:
        target.unlink()


def test_jobs_1_and_2_give_identical_stores(corpus, prepared, tmp_path):
    root, _ = corpus
    dest = tmp_path / "j1"
    prepare([root], dest, jobs=1)
    assert folder_bytes(dest) == folder_bytes(prepared)


def test_interrupted_run_loses_only_files_in_flight(corpus, tmp_path):
    root, _ = corpus
    dest = tmp_path / "dest"
    finished = []

    def progress(done, total):
        finished.append(done)
        if done == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare([root], dest, jobs=2, progress=progress)
    assert not (dest / "summary.json").exists()
    files, _ = discover([root])
    resumed = prepare([root], dest, jobs=2)
    assert resumed.processed_now == len(files) - 10


@pytest.mark.slow
def test_crashing_and_hanging_workers_are_reported(corpus, tmp_path):
    root, paths = corpus
    dest = tmp_path / "dest"
    summary = prepare([root / "good"], dest, jobs=2, timeout=3.0,
                      task=faulty("crash=song_01;abort=song_02;hang=song_04"))
    report = {e["path"]: e for e in read_report(dest)}
    assert report[str(paths["good_1"])]["category"] == pw.CRASH
    assert "status 70" in report[str(paths["good_1"])]["reason"]
    assert report[str(paths["good_2"])]["category"] == pw.CRASH
    assert "SIGABRT" in report[str(paths["good_2"])]["reason"]
    assert report[str(paths["good_4"])]["category"] == pw.TIMEOUT
    in_store = stored(dest)
    for i in set(range(N_GOOD)) - {1, 2, 4}:
        assert str(paths[f"good_{i}"]) in in_store
    assert summary.skipped_by_category[pw.CRASH] == 2
    # failures are remembered; --retry-failed tries them again (now without faults)
    assert prepare([root / "good"], dest, jobs=2).processed_now == 0
    retried = prepare([root / "good"], dest, jobs=2, retry_failed=True)
    assert retried.processed_now == 4  # the 3 files and the broken link (unreadable)
    assert {str(paths[f"good_{i}"]) for i in (1, 2, 4)} <= set(stored(dest))


def test_pool_attributes_each_crash_to_its_task(tmp_path):
    names = [tmp_path / f"f{i}.mid" for i in range(6)]
    for n in names:
        n.write_bytes(b"")
    with SupervisedPool(faulty("crash=f1;crash=f4"), pw.WorkerConfig(), jobs=2,
                        timeout=30) as pool:
        outcomes = {Path(o.task).name: o for o in pool.run([str(n) for n in names])}
    assert {k for k, o in outcomes.items() if o.kind == "crash"} == {"f1.mid", "f4.mid"}
    for k in ("f0.mid", "f2.mid", "f3.mid", "f5.mid"):
        assert outcomes[k].kind == "done" and outcomes[k].value.status == pw.CORRUPT


def test_discover(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.MID", "a/b/y.midi", "a/b/z.Kar", "a/skip.txt", "a/w.mid"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a" / "dir.mid").mkdir()
    single = tmp_path / "single.bin"
    single.write_bytes(b"")
    files, dirs = discover([tmp_path / "a", single, tmp_path / "a" / "w.mid"])
    rel = [os.path.relpath(f, tmp_path) for f in files]
    assert rel == ["a/w.mid", "a/x.MID", "a/b/y.midi", "a/b/z.Kar", "single.bin"]
    assert [os.path.relpath(d, tmp_path) for d in dirs] == ["a/dir.mid"]
    with pytest.raises(UserError, match="no such file"):
        discover([tmp_path / "missing"])


def test_split_fractions_and_stability():
    rng = np.random.default_rng(0)
    hashes = [pw.content_hash(rng.bytes(16)) for _ in range(20000)]
    splits = [split_of(h) for h in hashes]
    frac = {s: splits.count(s) / len(splits) for s in SPLITS}
    assert abs(frac["valid"] - 0.03) < 0.006 and abs(frac["test"] - 0.02) < 0.005
    assert [split_of(h) for h in hashes[:100]] == splits[:100]


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError):
        prepare([tmp_path], tmp_path / "d", jobs=0)
    with pytest.raises(UserError):
        prepare([tmp_path], tmp_path / "d", min_events=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        prepare([tmp_path], tmp_path / "file")


def test_cli(corpus, tmp_path, capsys):
    root, _ = corpus
    dest = tmp_path / "cli"
    assert cli_main(["prep", str(root / "good"), "--out", str(dest), "-j", "1",
                     "--min-events", "4"]) == 0
    out = capsys.readouterr().out
    assert "files:" in out and "splits:" in out
    summary = json.loads((dest / "summary.json").read_text())
    assert summary["min_events"] == 4
    assert str(root / "good" / "short.mid") in stored(dest)  # 5 notes: 10 events
    assert cli_main(["prep", str(tmp_path / "missing"), "--out", str(dest)]) == 2
    limited = tmp_path / "limited"
    assert cli_main(["prep", str(root / "good"), "--out", str(limited), "--limit", "3"]) == 0
    assert read_summary(limited)["files_seen"] == 3


def test_empty_source_gives_empty_splits(tmp_path):
    (tmp_path / "src").mkdir()
    summary = prepare([tmp_path / "src"], tmp_path / "dest", jobs=1)
    assert summary.files_seen == 0 and summary.events == 0
    for split in SPLITS:
        assert len(EventStore(tmp_path / "dest", split)) == 0
    assert read_report(tmp_path / "dest") == []


def test_prep_duration_limit_is_the_ingest_cap():
    from notochord_rt.data.prep.limits import DEFAULT_MAX_HOURS
    from notochord_rt.midi.ingest import MAX_PIECE_SECONDS

    assert DEFAULT_MAX_HOURS * 3600 == MAX_PIECE_SECONDS
