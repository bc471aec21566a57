"""``notochord-rt finetune`` end to end on a tiny model and generated MIDI files.

The files are one strict style (a piano arpeggio pattern on a fixed 8th-note grid at one
velocity, in a few keys); a tiny random model knows nothing of it, so fine-tuning must
lower the NLL on the held-out files of the same style.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from midifiles import bpm, notes_track, write_midi_bytes  # noqa: E402

from notochord_rt.apps.offline.finetune_data import MIN_HELD_OUT_EVENTS, MIN_TRAIN_EVENTS  # noqa: E402
from notochord_rt.cli import main  # noqa: E402
from notochord_rt.model.network import NotochordNet  # noqa: E402

TINY = dict(emb_size=16, rnn_hidden=32, rnn_layers=1, mlp_layers=1, time_sines=8,
            vel_sines=8, time_components=4, vel_components=3, dropout=0.0)


def style_file(path: Path, seed: int, bars: int = 12) -> None:
    """An arpeggio pattern (root, third, fifth, octave) in 8ths, one velocity, one key."""
    rng = random.Random(seed)
    root = 48 + rng.randrange(12)
    pattern = [0, 4, 7, 12, 7, 4, 0, 7]
    notes = []
    for i in range(bars * len(pattern)):
        notes.append((i * 240, 200, root + pattern[i % len(pattern)], 80))
    path.write_bytes(write_midi_bytes([[(0, bpm(120))], notes_track(notes, program=0)]))


@pytest.fixture
def base(tmp_path):
    torch.manual_seed(0)
    net = NotochordNet(**TINY)
    path = tmp_path / "base.safetensors"
    net.save(path)
    return path


def test_finetune_end_to_end_improves_held_out_nll(tmp_path, base, capsys):
    midi = tmp_path / "midi"
    midi.mkdir()
    for k in range(12):
        style_file(midi / f"piece{k:02d}.mid", k, bars=12 + k)  # distinct files
    (midi / "broken.mid").write_bytes(b"MThd not really")
    out = tmp_path / "tuned"
    args = ["finetune", str(midi), "--from", str(base), "--out", str(out), "--minutes", "2",
            "--max-steps", "60", "--eval-every", "20", "--lr", "3e-3", "--batch-size", "8",
            "--stats-samples", "1", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    result = json.loads((out / "finetune.json").read_text())
    before, after = result["nll_before"]["total"], result["nll_after"]["total"]
    assert after < before - 1.0, (before, after)  # a strict style: a large gain
    assert result["data"]["pieces"]["test"] >= 1 and result["data"]["skipped"] == 1
    assert result["best_step"] > 0 and result["steps"] == 60
    assert [s for s, _, _ in result["valid_curve"]] == [0, 20, 40, 60]
    for name in ("model.safetensors", "sample.mid", "sample-before.mid"):
        assert (out / name).stat().st_size > 0, name
    assert "use it: notochord-rt play --checkpoint" in text and "total" in text
    tuned = NotochordNet.load(out / "model.safetensors")
    assert tuned.config == NotochordNet.load(base).config
    # a second run reuses the prep, and refuses to overwrite the run without --restart
    assert main(args) == 2
    assert "--restart" in capsys.readouterr().err


def test_finetune_with_no_usable_midi_lists_the_skipped_files(tmp_path, base, capsys):
    midi = tmp_path / "junk"
    midi.mkdir()
    (midi / "a.mid").write_bytes(b"not midi at all")
    (midi / "b.mid").write_bytes(b"MThd\x00\x00\x00\x06")
    code = main(["finetune", str(midi), "--from", str(base), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no usable MIDI" in err and "a.mid" in err and "b.mid" in err


def test_finetune_with_too_few_events_says_how_many_more(tmp_path, base, capsys):
    midi = tmp_path / "few"
    midi.mkdir()
    for k in range(3):
        style_file(midi / f"p{k}.mid", k, bars=4)  # 3 x 64 events
    code = main(["finetune", str(midi), "--from", str(base), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    need = MIN_TRAIN_EVENTS + 2 * MIN_HELD_OUT_EVENTS
    assert f"add about {need - 3 * 64} more events" in err.lower(), err
