"""Tests of the batched prep pipeline: batches in the pool, spools, ledger chunks, resume.

A complement of tests/test_prep.py (which checks the whole command on a fuzz corpus):
here each guarantee that batching could break is checked on its own: a crash or hang in
the middle of a batch costs only its file, results that cannot be stored stop the run,
a run killed mid-batch resumes to the same output, damaged or orphaned spools are handled.
Every corpus is generated here; nothing depends on /work/shared.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import fuzz_midi
import numpy as np
import pytest
from prep_faults import faulty
from split_files import folder_bytes

from notochord_rt.data.prep import worker as pw
from notochord_rt.data.prep.ledger import Ledger
from notochord_rt.data.prep.pipeline import prepare
from notochord_rt.data.prep.pool import PoolError, SupervisedPool
from notochord_rt.data.prep.report import read_report, read_summary, readable_json
from notochord_rt.data.prep.spool import SpoolReader, SpoolWriter, is_spool_name
from notochord_rt.data.prep.spool import runs as spool_runs
from notochord_rt.data.store import EventStore, SplitWriter, write_split
from notochord_rt.errors import UserError
from notochord_rt.events import EventArrays
from notochord_rt.midi.ingest import load_midi


def songs(folder: Path, n: int, first_seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"song_{i:03d}.mid"
        path.write_bytes(fuzz_midi.valid_song(first_seed + i, n_notes=40))
        paths.append(path)
    return paths


def spools(dest: Path) -> list[Path]:
    return sorted(p for p in (dest / ".prep").iterdir() if is_spool_name(p.name))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    return songs(tmp_path_factory.mktemp("corpus"), 24)


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("clean")
    prepare([corpus[0].parent], dest, jobs=2)
    return dest


# -- the pool -------------------------------------------------------------------------------
def _names(paths) -> list[str]:
    return [str(p) for p in paths]


def test_crash_inside_a_batch_costs_only_its_file(tmp_path):
    files = _names(songs(tmp_path, 10))
    with SupervisedPool(faulty("crash=song_002;abort=song_007"), pw.WorkerConfig(), jobs=1,
                        batch_size=5, timeout=30) as pool:
        outcomes = list(pool.run(files))
    assert sorted(o.task for o in outcomes) == files  # every task exactly once
    kinds = {Path(o.task).name: o.kind for o in outcomes}
    assert kinds.pop("song_002.mid") == "crash" and kinds.pop("song_007.mid") == "crash"
    assert set(kinds.values()) == {"done"}
    crashed = {Path(o.task).name: o.detail for o in outcomes if o.kind == "crash"}
    assert "status 70" in crashed["song_002.mid"] and "SIGABRT" in crashed["song_007.mid"]
    for o in outcomes:  # the files before the crash in its batch were redone, not lost
        if o.kind == "done":
            assert o.value.status == pw.OK and o.value.num_events == 120


@pytest.mark.slow
def test_hang_inside_a_batch_is_a_timeout_of_that_file_only(tmp_path):
    files = _names(songs(tmp_path, 6))
    with SupervisedPool(faulty("hang=song_003"), pw.WorkerConfig(), jobs=1, batch_size=6,
                        timeout=2) as pool:
        outcomes = {Path(o.task).name: o for o in pool.run(files)}
    assert len(outcomes) == 6
    assert outcomes["song_003.mid"].kind == "timeout"
    assert all(o.kind == "done" for k, o in outcomes.items() if k != "song_003.mid")


def test_results_that_cannot_be_stored_stop_the_run(tmp_path):
    files = _names(songs(tmp_path, 3))
    config = pw.WorkerConfig()  # no spool folder: pack_results refuses
    pool = SupervisedPool(pw.process_file, config, jobs=1, encode=pw.pack_results,
                          decode=pw.unpack_results)
    with pool, pytest.raises(PoolError, match="spool_dir"):
        list(pool.run(files))


def test_early_messages_by_weight_and_packing_round_trip(tmp_path):
    files = _names(songs(tmp_path, 5))
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    config = pw.WorkerConfig(spool_dir=str(spool_dir))
    with SupervisedPool(pw.process_file, config, jobs=1, batch_size=5, encode=pw.pack_results,
                        decode=pw.unpack_results, weigh=pw.result_weight,
                        max_message=1) as pool:
        outcomes = {o.task: o.value for o in pool.run(files)}
    reader = SpoolReader(spool_dir)
    for path in files:
        result = outcomes[path]
        assert result.events is None and result.events_at is not None
        expected = load_midi(Path(path).read_bytes()).events
        assert result.num_events == len(expected)
        for got, want in zip(reader.piece(result.events_at), expected):
            np.testing.assert_array_equal(got, want)
        assert result.instruments == pw.note_on_counts(expected)


# -- per-file checks ------------------------------------------------------------------------
def test_note_on_counts_and_event_checks():
    rng = np.random.default_rng(0)
    inst = rng.integers(1, 321, 500)
    vel = rng.integers(0, 128, 500) * rng.integers(0, 2, 500)
    events = EventArrays.build(inst, rng.integers(0, 128, 500), np.sort(rng.random(500)), vel)
    ids, counts = np.unique(inst[vel > 0], return_counts=True)
    assert pw.note_on_counts(events) == dict(zip(ids.tolist(), counts.tolist()))
    odd = EventArrays.build([-3, 5, -3], [1, 2, 3], [0.0, 1.0, 2.0], [9, 9, 0])
    assert pw.note_on_counts(odd) == {-3: 1, 5: 1}
    t = events.time.copy()
    assert pw.check_events(events, 10.0)[0] == pw.OK
    for bad, status in ((np.nan, pw.CORRUPT), (np.inf, pw.CORRUPT), (-1.0, pw.CORRUPT)):
        t2 = t.copy()
        t2[250] = bad
        assert pw.check_events(with_times(events, t2), 10.0)[0] == status, bad
    assert pw.check_events(with_times(events, t * 100), 10.0)[0] == pw.TOO_LONG


def with_times(events: EventArrays, time: np.ndarray) -> EventArrays:
    return EventArrays(events.inst, events.pitch, time, events.vel)


def test_special_file_is_read_to_the_cap(tmp_path):
    config = pw.WorkerConfig(max_bytes=1000)
    assert pw.process_file("/dev/zero", config).status == pw.TOO_LARGE


# -- ledger, spools and resume --------------------------------------------------------------
def test_run_killed_mid_batch_resumes_to_the_same_output(corpus, clean, tmp_path):
    dest = tmp_path / "dest"
    script = textwrap.dedent(f"""
        import os, signal
        from notochord_rt.data.prep.pipeline import prepare
        def progress(done, total):
            if done == 10:
                os.kill(os.getpid(), signal.SIGKILL)
        prepare([{str(corpus[0].parent)!r}], {str(dest)!r}, jobs=2, flush_every=4,
                progress=progress)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr.decode()
    assert not (dest / "summary.json").exists()
    chunks = sorted((dest / ".prep").glob("chunk-*.json"))
    assert len(chunks) == 2  # files 1-4 and 5-8; 9 and 10 were not committed
    resumed = prepare([corpus[0].parent], dest, jobs=2)
    assert resumed.processed_now == len(corpus) - 8
    assert folder_bytes(dest) == folder_bytes(clean)
    assert read_summary(dest)["files_ok"] == len(corpus)


def test_orphan_spools_are_deleted_and_damaged_ones_redone(corpus, clean, tmp_path):
    dest = tmp_path / "dest"
    prepare([corpus[0].parent], dest, jobs=1)
    [spool] = spools(dest)
    (dest / ".prep" / "events-1-deadbeef.bin").write_bytes(b"left by a crashed worker")
    size = spool.stat().st_size
    with open(spool, "r+b") as f:
        f.truncate(size // 2)  # the second half of the pieces are lost
    again = prepare([corpus[0].parent], dest, jobs=1)
    assert 0 < again.processed_now < len(corpus)
    assert not (dest / ".prep" / "events-1-deadbeef.bin").exists()
    assert folder_bytes(dest) == folder_bytes(clean)
    assert prepare([corpus[0].parent], dest, jobs=1).processed_now == 0


def test_ledger_spools_pieces_given_in_memory(tmp_path):
    events = load_midi(fuzz_midi.valid_song(3)).events
    result = pw.FileResult("a.mid", 10, 20, pw.OK, "ab" * 16, events=events, seconds=1.0,
                           instruments={1: 2})
    ledger = Ledger(tmp_path)
    try:
        ledger.add(result)
        ledger.flush()
    finally:
        ledger.close()
    reopened = Ledger(tmp_path)
    try:
        assert reopened.lookup("a.mid", 10, 20)["events"] == len(events)
        for got, want in zip(reopened.piece("ab" * 16), events):
            np.testing.assert_array_equal(got, want)
    finally:
        reopened.close()
    first = Ledger(tmp_path)
    try:
        with pytest.raises(UserError, match="another prep"):
            Ledger(tmp_path)
    finally:
        first.close()


def test_older_ledger_chunks_are_ignored(corpus, tmp_path):
    dest = tmp_path / "dest"
    (dest / ".prep").mkdir(parents=True)
    (dest / ".prep" / "chunk-000000.npz").write_bytes(b"version 1")
    (dest / ".prep" / "chunk-000001.json").write_text(json.dumps({"version": 99}))
    summary = prepare([corpus[0].parent], dest, jobs=1)
    assert summary.processed_now == len(corpus)
    assert (dest / ".prep" / "chunk-000002.json").exists()  # numbered after the old ones


# -- outputs --------------------------------------------------------------------------------
def test_split_writer_checks_and_cleans_up(tmp_path):
    piece = EventArrays.build([1, 1], [60, 60], [0.0, 1.0], [90, 0])
    with pytest.raises(ValueError, match="announced"), SplitWriter(tmp_path, "train", 3) as w:
        w.add(piece)
        w.finish([{}])
    with pytest.raises(ValueError, match="bytes for"), SplitWriter(tmp_path, "train", 2) as w:
        w.add_raw((b"\0\0", b"\0\0", b"\0" * 8, b"\0\0"), 2)
    assert not list((tmp_path / "train").iterdir())  # no temporary file left behind
    # any dtypes and strides go in; the stored dtypes come out
    wide = EventArrays(np.array([1, 2, 3, 4]), np.array([60, 61, 62, 63]),
                       np.array([0.0, 0.5, 1.0, 1.5]), np.array([90, 0, 80, 0]))
    strided = EventArrays(*(c[::2] for c in wide))
    write_split(tmp_path, "train", [piece, strided], [{"k": 0}, {"k": 1}])
    store = EventStore(tmp_path, "train")
    assert store.records() == [{"k": 0}, {"k": 1}]
    np.testing.assert_array_equal(store[1].pitch, [60, 62])
    assert store[1].inst.dtype == np.int16 and store[1].time.dtype == np.float64


def test_report_and_summary_are_readable_json(clean):
    text = (clean / "report.json").read_text()
    assert json.loads(text) == {"version": 1, "skipped": read_report(clean)}
    summary_text = (clean / "summary.json").read_text()
    assert summary_text.count("\n") > 10  # one entry per line, not one long line
    summary = json.loads(summary_text)
    assert summary["splits"]["train"]["pieces"] + summary["splits"]["valid"]["pieces"] + \
        summary["splits"]["test"]["pieces"] == summary["files_ok"]
    nested = {"a": [1, {"b": "x\ny"}], "c": {"d": {}}, "e": [], "f": {1: 2}}
    assert json.loads(readable_json(nested)) == json.loads(json.dumps(nested))


def test_spool_blocks_round_trip_and_runs(tmp_path):
    rng = np.random.default_rng(1)
    writer = SpoolWriter(tmp_path)
    pieces, places = [], []
    for block in ((1, 3, 7), (0,), (64, 5)):
        made = [EventArrays.build(rng.integers(1, 300, n), rng.integers(0, 128, n),
                                  np.sort(rng.random(n)), rng.integers(0, 128, n))
                for n in block]
        pieces += made
        places += writer.write_block(made)
    assert all(offset % 8 == 0 for _, offset, _, _, _ in places)
    assert len({(offset, total) for _, offset, total, _, _ in places}) == 3  # a block a call
    reader = SpoolReader(tmp_path)
    for p, where in zip(pieces, places):
        assert reader.holds(where)
        got = reader.piece(where)
        raw = reader.raw(where)
        for k in range(4):
            np.testing.assert_array_equal(got[k], p[k])
            assert bytes(raw[k]) == p[k].astype(p[k].dtype.newbyteorder("<")).tobytes()
    name, offset, total, start, n = places[-1]
    assert not reader.holds((name, offset, total, start, n + 1))  # past its block
    assert not reader.holds((name, offset + 8, total, start, n))  # past the file
    # pieces that follow each other in a block are copied as one run, in order
    order = [0, 1, 2, 4, 5, 3]
    grouped = spool_runs([places[k] for k in order])
    assert [lengths for _, lengths in grouped] == [[1, 3, 7], [64, 5], [0]]
    with SplitWriter(tmp_path / "out", "train", sum(len(pieces[k]) for k in order)) as w:
        for run, lengths in grouped:
            w.add_raw(reader.raw(run), lengths)
        w.finish([{"k": k} for k in order])
    store = EventStore(tmp_path / "out", "train")
    for j, k in enumerate([0, 1, 2, 4, 5, 3]):
        for got, want in zip(store[j], pieces[k]):
            np.testing.assert_array_equal(got, want)
    writer.close()
    reader.close()
