"""Run checkpoints survive kills at any point of a write, whatever ``keep`` is; leftovers of
killed writes are swept; the divergence message reads as English."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny import FEW_FEATURES, tiny_config

from notochord_rt.model.network import NotochordNet
from notochord_rt.train import checkpoints as ck
from notochord_rt.train import sources
from notochord_rt.train.trainer import Trainer

torch.set_num_threads(1)

TINY = tiny_config(**FEW_FEATURES)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def writer(seed: int):
    torch.manual_seed(seed)
    model = NotochordNet(**TINY)

    def write(folder: Path) -> None:
        sources.save_model(model, folder)
        (folder / "note.txt").write_text(f"seed {seed}")
    return model, write


def kill_at_replace(monkeypatch, n: int) -> None:
    """Make the ``n``-th rename of a checkpoint folder or of ``latest``, and every later
    one, die (renames of files inside a checkpoint being written are not counted)."""
    real, calls = os.replace, []

    def replace(src, dst, *a, **kw):
        if Path(dst).name == ck.LATEST or Path(dst).name.startswith("step-"):
            calls.append(dst)
            if len(calls) >= n:
                raise Killed
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(ck.os, "replace", replace)


def test_rewrite_killed_between_its_renames_keeps_the_checkpoint(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "run" / ck.CHECKPOINTS
    first, write1 = writer(1)
    ck.write_checkpoint(ckpt_dir, 10, write1, keep=1)
    _, write2 = writer(2)
    kill_at_replace(monkeypatch, 2)  # 1: final -> .old-*, 2: tmp -> final (dies; so does the undo)
    with pytest.raises(Killed):
        ck.write_checkpoint(ckpt_dir, 10, write2, keep=1)
    monkeypatch.undo()
    assert not (ckpt_dir / "step-00000010").exists()  # the state a SIGKILL there leaves
    found = ck.latest_checkpoint(ckpt_dir)
    assert found is not None and found.parent.name.startswith(".old-")
    back = sources.load_model(found)  # still a complete, loadable checkpoint
    torch.testing.assert_close(back.end_head.weight, first.end_head.weight)
    assert [s for s, _ in ck.list_checkpoints(ckpt_dir)] == [10]

    ck.sweep_partial(ckpt_dir)  # what starting or resuming the run does
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest", "step-00000010"]
    assert ck.latest_checkpoint(ckpt_dir) == ckpt_dir / "step-00000010"
    assert (ckpt_dir / "step-00000010" / "note.txt").read_text() == "seed 1"
    sources.load_model(ckpt_dir / "step-00000010")


def test_rewrite_that_fails_between_its_renames_puts_the_old_one_back(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / ck.CHECKPOINTS
    _, write1 = writer(1)
    ck.write_checkpoint(ckpt_dir, 10, write1, keep=1)
    real, calls = os.replace, []

    def replace(src, dst, *a, **kw):
        if Path(dst).name.startswith("step-"):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(ck.os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        ck.write_checkpoint(ckpt_dir, 10, writer(2)[1], keep=1)
    monkeypatch.undo()
    assert (ckpt_dir / "step-00000010" / "note.txt").read_text() == "seed 1"
    sources.load_model(ck.latest_checkpoint(ckpt_dir))


@pytest.mark.parametrize("n", [1, 2])  # killed at the new folder's rename / at `latest`
def test_keep_one_never_loses_the_last_checkpoint(tmp_path, monkeypatch, n):
    ckpt_dir = tmp_path / ck.CHECKPOINTS
    ck.write_checkpoint(ckpt_dir, 10, writer(1)[1], keep=1)
    kill_at_replace(monkeypatch, n)
    with pytest.raises(Killed):
        ck.write_checkpoint(ckpt_dir, 20, writer(2)[1], keep=1)
    monkeypatch.undo()
    found = ck.latest_checkpoint(ckpt_dir)
    assert found is not None and found.name in ("step-00000010", "step-00000020")
    sources.load_model(found)
    assert (ckpt_dir / "step-00000010").is_dir()  # pruned only after the new one is complete


def test_sweep_removes_leftovers_of_killed_writes(tmp_path):
    run = tmp_path / "run"
    ckpt_dir = run / ck.CHECKPOINTS
    ck.write_checkpoint(ckpt_dir, 5, writer(1)[1])
    (ckpt_dir / ".tmp-step-00000006-abc").mkdir()
    (ckpt_dir / ".tmp-step-00000006-abc" / "model.safetensors").write_bytes(b"half")
    (ckpt_dir / ".old-step-00000005-xyz").mkdir()  # empty: its rewrite had finished
    (ckpt_dir / ".latest.k2j3.tmp").write_text("step-0000")
    (run / ".config.json.p9q.tmp").write_text("{")
    (run / "config.json").write_text("{}")
    ck.sweep_partial(ckpt_dir)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest", "step-00000005"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json"]


def test_divergence_message_reads_as_english(tmp_path):
    ckpt_dir = tmp_path / "run" / ck.CHECKPOINTS
    none = Trainer._diverged_message(
        SimpleNamespace(step=4, last_checkpoint=None, ckpt_dir=ckpt_dir), "the loss is nan")
    assert "is none" not in none and "none was written" not in none
    assert none.startswith("training stopped at step 5: the loss is nan. No checkpoint was "
                           "written by this run yet")
    some = Trainer._diverged_message(
        SimpleNamespace(step=4, last_checkpoint=ckpt_dir / "step-00000004", ckpt_dir=ckpt_dir),
        "the gradient norm is inf")
    assert f"The last good checkpoint is {ckpt_dir / 'step-00000004'}. " in some
