"""The training recipes in scripts/, run end to end on the CPU for a few steps.

``train-gpu.sh`` (the large-model recipe) is meant for a lent CUDA device; here it runs
with a tiny model, fp32 and three steps, so what is tested is its plumbing: prep (or a
prepared folder), training under a time limit, the last checkpoint and its evaluation
copied to the output folder. ``train-default-model.sh`` (the bundled model's recipe) runs
its five phases with the real network at two steps each on small batches: each phase
starts from the last one's weights and adds its options.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_config

from notochord_rt.data.store import write_split
from notochord_rt.events import EventArrays
from notochord_rt.model.checkpoint import load_model
from notochord_rt.model.network import NotochordNet

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train-gpu.sh"
DEFAULT_SCRIPT = ROOT / "scripts" / "train-default-model.sh"
TINY_FLAGS = ["--device", "cpu", "--precision", "fp32",
              *[a for k, v in tiny_config().items() for a in ("--model", f"{k}={v}")],
              "--batch-size", "4", "--batch-len", "32", "--max-steps", "3", "--num-workers", "0",
              "--threads", "1", "--valid-len", "64"]


def _piece(rng: np.random.Generator, n: int) -> EventArrays:
    inst, pitch, time, vel = [], [], [], []
    t = 0.0
    for _ in range(n):
        t += float(rng.choice([0.0, 0.25, 0.5]))
        i, p = int(rng.choice([1, 33, 129])), int(rng.integers(40, 80))
        inst += [i, i]
        pitch += [p, p]
        time += [t, t + 0.2]
        vel += [int(rng.integers(30, 120)), 0]
    return EventArrays.build(inst, pitch, time, vel).sorted()


@pytest.fixture()
def prepared(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "prep"
    for split, k in (("train", 8), ("valid", 3), ("test", 2)):
        pieces = [_piece(rng, 60) for _ in range(k)]
        write_split(root, split, pieces, [{"source": f"{split}{i}"} for i in range(k)])
    return root


def _run(args: list[str], tmp_path: Path, script: Path = SCRIPT,
         ) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1",
           "NOTOCHORD_RT": str(Path(sys.executable).with_name("notochord-rt"))}
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_recipe_trains_and_copies_back_the_model(prepared: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = _run([str(prepared), str(out), "0.5", *TINY_FLAGS], tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    model = load_model(NotochordNet, out / "model.safetensors")
    assert model.config.rnn_hidden == 32 and model.config.emb_size == 16
    figures = json.loads((out / "eval.json").read_text())
    assert figures["pieces"] == 2 and np.isfinite(figures["nll"]["total"])
    config = json.loads((out / "train_config.json").read_text())
    assert config["max_steps"] == 3 and config["precision"] == "fp32"
    assert "train:" in (out / "train.log").read_text()
    # optimizer state and older checkpoints stay in the work folder, not in OUT
    assert not list(out.glob("*.pt"))


def test_recipe_rejects_a_zero_budget(prepared: Path, tmp_path: Path):
    result = _run([str(prepared), str(tmp_path / "out"), "0", *TINY_FLAGS], tmp_path)
    assert result.returncode != 0
    assert "MINUTES must be > 0" in result.stderr


@pytest.mark.slow
def test_default_recipe_runs_its_five_phases_and_resumes(prepared: Path, tmp_path: Path):
    work = tmp_path / "default"
    short = ["--batch-size", "2", "--batch-len", "32", "--max-steps", "2", "--warmup-steps", "1",
             "--valid-batches", "1", "--valid-len", "64", "--checkpoint-every", "1",
             "--threads", "1"]
    result = _run([str(prepared), str(work), *short], tmp_path, DEFAULT_SCRIPT)
    assert result.returncode == 0, result.stderr + result.stdout
    times = (work / "times.txt").read_text().split("\n")
    assert [line.split()[0] for line in times if line] == [f"phase{k}" for k in range(1, 6)]
    model = load_model(NotochordNet, work / "model.safetensors")
    config = model.config
    # phase 1's size, phase 3's time additions and phase 4's motif copying, all kept
    assert (config.emb_size, config.rnn_hidden) == (192, 384)
    assert (config.time_pulse, config.time_pulse_grid, config.pitch_copy) == (8, 1, 4)
    assert config.time_res == pytest.approx(0.002)
    for k in range(2, 6):
        run = json.loads((work / f"phase{k}" / "config.json").read_text())
        assert run["init_from"] == str(work / f"phase{k - 1}") and run["max_steps"] == 2
    assert json.loads((work / "phase5" / "config.json").read_text())["lr"] == pytest.approx(1.5e-4)

    # started again after phase 3: phases 1-3 (listed in times.txt) are skipped, phase 4
    # (cut short: its folder is there, unlisted) starts over, then phase 5
    (work / "times.txt").write_text("".join(line + "\n" for line in times[:3]))
    shutil.rmtree(work / "phase5")
    written = (work / "phase2" / "config.json").stat().st_mtime_ns
    result = _run([str(prepared), str(work), *short], tmp_path, DEFAULT_SCRIPT)
    assert result.returncode == 0, result.stderr + result.stdout
    for k in (1, 2, 3):
        assert f"phase{k}: listed in" in result.stdout
    assert (work / "phase2" / "config.json").stat().st_mtime_ns == written  # not rerun
    times = (work / "times.txt").read_text().split("\n")
    assert [line.split()[0] for line in times if line] == [f"phase{k}" for k in range(1, 6)]
    assert load_model(NotochordNet, work / "model.safetensors").config.pitch_copy == 4
