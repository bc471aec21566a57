"""The one atomic-write helper: all or nothing, no debris, temp names the sweepers know."""

from __future__ import annotations

import pytest

from notochord_rt import atomic


def test_write_bytes_and_text_replace_the_file(tmp_path):
    path = tmp_path / "a.json"
    atomic.atomic_write_bytes(path, b"old")
    atomic.atomic_write_text(path, "néw")
    assert path.read_text("utf-8") == "néw" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"old")

    def boom(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.atomic_write(path, boom)
    assert path.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_parents_are_created_only_on_request(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic.atomic_write_bytes(tmp_path / "no" / "x", b"1")
    assert atomic.atomic_write_bytes(tmp_path / "no" / "x", b"1", make_parents=True).is_file()


def test_temp_names_are_what_the_sweepers_remove(tmp_path):
    name = atomic.temp_name(tmp_path / "manifest.json").name
    assert atomic.is_temp_name(name) and name.startswith(".manifest.json.")
