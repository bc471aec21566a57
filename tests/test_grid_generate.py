"""Offline generation on a tempo grid: ``notochord-rt generate --bpm --grid --swing``,
checked on the written MIDI file (onset ticks on the grid, tempo and metre meta events)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_model

from notochord_rt.apps.offline.generate import GenerateOptions, generate
from notochord_rt.cli import main
from notochord_rt.midi.export import midi_bytes

symusic = pytest.importorskip("symusic")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "tiny.safetensors"
    tiny_model().save(path)
    return path


def onset_ticks(path: Path) -> tuple[object, np.ndarray]:
    score = symusic.Score(str(path))  # ticks
    starts = np.array([n.time for t in score.tracks for n in t.notes], dtype=np.int64)
    return score, starts


def test_cli_generate_on_a_swung_grid_writes_tempo_and_grid(ckpt, tmp_path, capsys):
    out = tmp_path / "g.mid"
    rc = main(["generate", "--checkpoint", str(ckpt), "--seconds", "8", "--seed", "3",
               "--out", str(out), "--instruments", "violin", "--bpm", "100",
               "--grid", "1/16", "--swing", "0.2", "--beats-per-bar", "3",
               "--threads", "1"])
    _, err = capsys.readouterr()
    assert rc == 0, err
    score, starts = onset_ticks(out)
    assert score.ticks_per_quarter == 960 and len(starts) > 5
    assert score.tempos[0].qpm == pytest.approx(100.0, abs=1e-3)
    assert (score.time_signatures[0].numerator, score.time_signatures[0].denominator) == (3, 4)
    pair = 480  # two sixteenths; the swung one at (0.5 + 0.2 / 6) of the pair
    phase = starts % pair
    assert set(phase.tolist()) <= {0, round(pair * (0.5 + 0.2 / 6))}, sorted(set(phase))
    assert (phase != 0).any()  # off-beats were played, and they are swung


def test_generate_triplet_grid_in_seconds_and_free_time_unchanged():
    model = tiny_model()
    g = generate(model, GenerateOptions(seconds=6, seed=1, instruments=[1], bpm=90,
                                        grid="1/8t"))
    beats = g.events.time[g.events.vel > 0] * 90 / 60
    assert np.allclose(beats * 3, np.round(beats * 3), atol=1e-6)
    free = generate(model, GenerateOptions(seconds=6, seed=1, instruments=[1]))
    beats = free.events.time[free.events.vel > 0] * 90 / 60
    assert not np.allclose(beats * 3, np.round(beats * 3), atol=1e-6)


def test_cli_bad_grid_values_are_one_clear_line(ckpt, tmp_path, capsys):
    for extra, needle in ((["--bpm", "0"], "bpm"), (["--bpm", "1200"], "bpm"),
                          (["--grid", "1/16"], "grid needs a tempo"),
                          (["--bpm", "120", "--grid", "1/5"], "grid"),
                          (["--bpm", "120", "--grid", "1/16", "--swing", "2"], "swing")):
        rc = main(["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x.mid"),
                   "--seconds", "1", *extra])
        _, err = capsys.readouterr()
        assert rc == 2 and needle in err and "Traceback" not in err, (extra, err)


def test_export_time_signature_checked():
    with pytest.raises(Exception, match="beats_per_bar"):
        midi_bytes([], beats_per_bar=0)
