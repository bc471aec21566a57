"""Prepared splits appear atomically and damaged ones are refused; prep reports folders it
cannot read and writes non-UTF-8 file names as valid, readable JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fuzz_midi
import numpy as np
import pytest

from notochord_rt.cli import main as cli_main
from notochord_rt.data import store
from notochord_rt.data.prep.pipeline import prepare
from notochord_rt.data.prep.report import read_report, read_summary
from notochord_rt.data.store import MANIFEST, SPLITS, EventStore, SplitWriter, write_split
from notochord_rt.errors import DataError
from notochord_rt.events import EventArrays


def pieces(n: int, length: int, first_pitch: int) -> list[EventArrays]:
    out = []
    for k in range(n):
        t = np.arange(length, dtype=np.float64) * 0.1
        out.append(EventArrays.build([1] * length, [first_pitch + k] * length, t,
                                     [90, 0] * (length // 2)))
    return out


def write(dest: Path, n: int, length: int, first_pitch: int) -> None:
    write_split(dest, "train", pieces(n, length, first_pitch),
                [{"path": f"p{first_pitch}-{k}"} for k in range(n)])


def contents(dest: Path) -> tuple[list[int], list[int], list[str]]:
    s = EventStore(dest, "train")
    return (s.lengths.tolist(), [int(s[k].pitch[0]) for k in range(len(s))],
            [r["path"] for r in s.records()])


OLD = ([4, 4, 4], [60, 61, 62], ["p60-0", "p60-1", "p60-2"])
NEW = ([6, 6], [70, 71], ["p70-0", "p70-1"])


def test_written_split_reads_back_and_leaves_only_its_files(tmp_path):
    write(tmp_path, 3, 4, 60)
    write(tmp_path, 2, 6, 70)
    assert contents(tmp_path) == NEW
    manifest = json.loads((tmp_path / "train" / MANIFEST).read_text())
    names = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert names == sorted([MANIFEST, *manifest["files"].values()])  # old generation gone


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_kill_before_the_manifest_rename_leaves_the_old_split(tmp_path, monkeypatch):
    write(tmp_path, 3, 4, 60)
    real_replace = os.replace

    def die_on_manifest(src, dst, *a, **kw):
        if Path(dst).name == MANIFEST:
            raise Killed
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(store.os, "replace", die_on_manifest)
    monkeypatch.setattr(SplitWriter, "__exit__", lambda self, *exc: None)  # no cleanup: killed
    with pytest.raises(Killed):
        write(tmp_path, 2, 6, 70)
    monkeypatch.undo()
    leftovers = list((tmp_path / "train").iterdir())
    assert len(leftovers) > 7  # the new generation's files are there, unpublished
    assert contents(tmp_path) == OLD  # readers still see the old split, whole
    write(tmp_path, 2, 6, 70)  # the next write sweeps the leftovers
    assert contents(tmp_path) == NEW
    assert len(list((tmp_path / "train").iterdir())) == 7


def test_kill_after_the_manifest_rename_shows_the_new_split(tmp_path, monkeypatch):
    write(tmp_path, 3, 4, 60)
    calls = []
    real_sweep = store.sweep_split

    def sweep(folder):
        calls.append(folder)
        if len(calls) == 2:  # the sweep after publishing
            raise Killed
        real_sweep(folder)

    monkeypatch.setattr(store, "sweep_split", sweep)
    with pytest.raises(Killed):
        write(tmp_path, 2, 6, 70)
    monkeypatch.undo()
    assert contents(tmp_path) == NEW
    assert len(list((tmp_path / "train").iterdir())) == 13  # old generation not yet swept
    store.sweep_split(tmp_path / "train")
    assert len(list((tmp_path / "train").iterdir())) == 7 and contents(tmp_path) == NEW


def legacy(dest: Path) -> Path:
    """Turn a split into the layout written before manifests (fixed file names)."""
    folder = dest / "train"
    manifest = json.loads((folder / MANIFEST).read_text())
    for part, name in manifest["files"].items():
        os.replace(folder / name, folder / store.LEGACY_NAMES[part])
    (folder / MANIFEST).unlink()
    return folder


def test_legacy_split_with_columns_from_two_writes_is_refused(tmp_path):
    write(tmp_path / "a", 3, 4, 60)
    folder = legacy(tmp_path / "a")
    assert contents(tmp_path / "a") == OLD  # older folders still open
    write(tmp_path / "b", 2, 6, 70)  # 12 events; the old split has 12 too
    other = legacy(tmp_path / "b")
    # what a kill in the middle of the old six renames left: some columns new, some old
    os.replace(other / "pitch.npy", folder / "pitch.npy")
    os.replace(other / "offsets.npy", folder / "offsets.npy")
    with pytest.raises(DataError, match=r"pieces.json does not hold one record per piece"):
        EventStore(tmp_path / "a", "train").records()
    write(tmp_path / "c", 1, 4, 50)
    os.replace(legacy(tmp_path / "c") / "time.npy", folder / "time.npy")
    with pytest.raises(DataError, match=r"column time holds \(4,\) float64, the offsets need "
                                        r"\(12,\)"):
        EventStore(tmp_path / "a", "train")


@pytest.mark.parametrize("damage,match", [
    (lambda f, m: (f / m["files"]["vel"]).write_bytes(
        (f / m["files"]["vel"]).read_bytes()[:-2]), "vel.* bytes, the manifest says"),
    (lambda f, m: (f / m["files"]["inst"]).unlink(), r"inst.*\(inst\) is missing"),
    (lambda f, m: (f / MANIFEST).write_text("{"), "unreadable split manifest"),
    (lambda f, m: (f / MANIFEST).write_text(json.dumps({**m, "events": 5})),
     "the manifest 3 / 5"),
])
def test_damaged_split_is_refused_with_a_clear_error(tmp_path, damage, match):
    write(tmp_path, 3, 4, 60)
    folder = tmp_path / "train"
    damage(folder, json.loads((folder / MANIFEST).read_text()))
    with pytest.raises(DataError, match=match):
        EventStore(tmp_path, "train")


def test_eval_on_a_damaged_split_is_one_line(tmp_path, capsys):
    for split in SPLITS:
        write_split(tmp_path, split, pieces(2, 4, 60), [{}, {}])
    (tmp_path / "test" / MANIFEST).write_text("[]")
    assert cli_main(["eval", "default", str(tmp_path), "--split", "test"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest" in err[0]


# -- prep: unreadable folders, non-UTF-8 names -------------------------------------------------
def test_unreadable_folder_is_reported(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "locked").mkdir(parents=True)
    (src / "open").mkdir()
    (src / "open" / "a.mid").write_bytes(fuzz_midi.valid_song(1))
    (src / "locked" / "b.mid").write_bytes(fuzz_midi.valid_song(2))
    real_scandir = os.scandir
    locked = str(src / "locked")

    def scandir(path="."):  # what a folder without read permission does (tests run as root)
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    summary = prepare([src], tmp_path / "out", jobs=1)
    monkeypatch.undo()
    entries = {e["path"]: e for e in read_report(tmp_path / "out")}
    assert entries[locked]["category"] == "unreadable"
    assert "Permission denied" in entries[locked]["reason"]
    assert summary.files_ok == 1 and summary.skipped_by_category == {"unreadable": 1}
    s = read_summary(tmp_path / "out")
    assert s["files_ok"] + s["files_skipped"] + s["duplicates"] == s["files_seen"] == 2


def test_non_utf8_names_are_reported_readably_in_valid_json(tmp_path):
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    with open(os.path.join(src, b"caf\xe9_\xff.mid"), "wb") as f:
        f.write(fuzz_midi.valid_song(3))
    with open(os.path.join(src, b"bad_\xfe.mid"), "wb") as f:
        f.write(b"MThd not really")
    dest = tmp_path / "out"
    prepare([os.fsdecode(src)], dest, jobs=1)
    raw = (dest / "report.json").read_bytes().decode("utf-8")  # strict: valid UTF-8
    assert "\\ud" not in raw  # no escaped lone surrogates
    (entry,) = json.loads(raw)["skipped"]
    assert entry["path"] == str(tmp_path / "src" / "bad_\\xfe.mid")
    entry["path"].encode("utf-8")
    records = [r for s in SPLITS for r in EventStore(dest, s).records()]
    assert [r["path"] for r in records] == [str(tmp_path / "src" / "caf\\xe9_\\xff.mid")]
    for s in SPLITS:
        folder = dest / s
        name = json.loads((folder / MANIFEST).read_text())["files"]["pieces"]
        assert "\\ud" not in (folder / name).read_bytes().decode("utf-8")
