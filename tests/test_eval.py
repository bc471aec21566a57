"""Evaluation: whole-piece scoring with carried state, 24 orders, ±30 ms mass, bits per
second, and the ``eval`` command on prepared data and on a folder of MIDI files."""

from __future__ import annotations

import itertools
import json
import math

import mido
import numpy as np
import pytest
import torch
from tiny import tiny_config

from notochord_rt.cli import main as cli_main
from notochord_rt.data.store import write_split
from notochord_rt.events import EventArrays
from notochord_rt.model.network import NotochordNet
from notochord_rt.train.evaluate import ALL_ORDERS, evaluate

TINY = tiny_config(rnn_layers=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_model(seed: int = 0) -> NotochordNet:
    torch.manual_seed(seed)
    model = NotochordNet(**TINY)
    with torch.no_grad():  # make the heads matter: the default init makes them near-uniform
        for head in model.heads:
            head.out.weight.mul_(300.0)
    return model.eval()


def random_piece(seed: int, n: int, long_gap: bool = False) -> EventArrays:
    rng = np.random.default_rng(seed)
    deltas = rng.choice([0.0, 0.004, 0.02, 0.1, 0.25, 0.6], size=n)
    if long_gap:
        deltas[n // 2] = 12.0  # beyond the 10 s support: censored
    return EventArrays.build(rng.choice([1, 33, 129], n), rng.integers(40, 80, n),
                             np.cumsum(deltas), rng.integers(0, 2, n) * rng.integers(30, 120, n))


def test_chunked_scoring_equals_one_pass():
    model = random_model()
    piece = random_piece(1, 73)
    ref = model.score(piece.inst, piece.pitch, piece.deltas(), piece.vel, order="iptv",
                      end="last")
    expected = {k: -float(v.double().sum()) / len(piece) for k, v in ref.items()}
    for chunk in (2, 5, 16, 1000):
        got = evaluate(model, [piece], orders=("iptv",), chunk=chunk)["nll"]
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (chunk, k)
        assert got["total"] == pytest.approx(sum(expected.values()), rel=1e-5)


def test_orders_each_match_score_and_average():
    model = random_model(2)
    pieces = [random_piece(3, 20), random_piece(4, 31)]
    r = evaluate(model, pieces, chunk=8)
    assert sorted(r["orders"]) == sorted("".join(p) for p in itertools.permutations("itpv"))
    n = sum(len(p) for p in pieces)
    for order in ("vtip", "ptvi", "itpv", "iptv"):
        total = 0.0
        for p in pieces:
            s = model.score(p.inst, p.pitch, p.deltas(), p.vel, order=order, end="last")
            total -= sum(float(v.double().sum()) for v in s.values())
        assert r["orders"][order] == pytest.approx(total / n, rel=1e-5)
    assert r["nll"]["total"] == pytest.approx(r["orders"]["iptv"])  # i -> p -> t -> v
    assert r["nll_all_orders"]["total"] == pytest.approx(np.mean(list(r["orders"].values())))
    assert len(set(round(v, 6) for v in r["orders"].values())) > 1  # orders do differ


def test_time_within_30ms_from_the_cdf():
    model = random_model(5)
    piece = random_piece(6, 40, long_gap=True)
    got = evaluate(model, [piece], orders=("iptv",))["time_within_30ms"]
    # independent computation: the continuous mixture CDF, censoring at 0 and 10 s;
    # time (index 2) conditioned on inst and pitch, as in the order i -> p -> t -> v
    seq = [np.concatenate([[s], x]) for s, x in zip((0, 128, 0.0, 0.0),
                                                   (piece.inst, piece.pitch, piece.deltas(),
                                                    piece.vel))]
    t = torch.tensor(seq[2][1:], dtype=torch.float32).clamp(0, 10)[None]
    with torch.no_grad():
        embs = model.embed(*(torch.as_tensor(x)[None] for x in seq))
        top, _ = model.rnn(embs.sum(-2), model.initial_hidden(1))
        ctx = model.head_inputs(top[:, :-1], embs[:, 1:], torch.tensor(
            [[k < m for k in range(4)] for m in range(4)]))
        params = model.time_dist.params(model.time_head(ctx[..., 2, :]))
        upper = torch.where(t + 0.03 >= 10, torch.ones_like(t),
                            model.time_dist.cdf(params, t + 0.03))
        lower = torch.where(t - 0.03 <= 0, torch.zeros_like(t),
                            model.time_dist.cdf(params, t - 0.03))
    expected = float((upper - lower).mean())
    assert 0.0 < got < 1.0
    assert got == pytest.approx(expected, abs=1e-5)


def test_bits_per_second_and_counts():
    model = random_model(7)
    pieces = [random_piece(8, 25), random_piece(9, 10)]
    r = evaluate(model, pieces, orders=("iptv",))
    assert r["events"] == 35 and r["pieces"] == 2
    seconds = sum(float(p.time[-1]) for p in pieces)
    assert r["seconds"] == pytest.approx(seconds)
    assert r["bits_per_second"] == pytest.approx(r["nll"]["total"] * 35 / math.log(2) / seconds)
    assert set(r["nll"]) == {"inst", "pitch", "time", "vel", "end", "total"}
    assert ALL_ORDERS[0] == "iptv" and len(ALL_ORDERS) == 24


def write_midi(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.Message("program_change", program=40, channel=0, time=0))
    for _ in range(12):
        pitch = int(rng.integers(50, 70))
        track.append(mido.Message("note_on", note=pitch, velocity=int(rng.integers(40, 100)),
                                  channel=0, time=int(rng.integers(0, 240))))
        track.append(mido.Message("note_off", note=pitch, velocity=0, channel=0, time=200))
    mid.save(str(path))


@pytest.fixture()
def checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    random_model(11).save(path)
    return path


def test_cli_on_prepared_data(tmp_path, checkpoint, capsys):
    pieces = [random_piece(s, 30) for s in range(3)]
    write_split(tmp_path / "prep", "valid", pieces, [{"source": str(s)} for s in range(3)])
    code = cli_main(["eval", str(checkpoint), str(tmp_path / "prep"), "--json", "--no-progress",
                     "--out", str(tmp_path / "r.json")])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["data"] == {"prepared": str(tmp_path / "prep"), "split": "valid"}  # no test split
    assert r["events"] == 90 and len(r["orders"]) == 24
    for key in ("nll", "events", "seconds", "bits_per_second", "orders", "time_within_30ms"):
        assert key in r
    direct = evaluate(NotochordNet.load(checkpoint), pieces)
    assert r["nll"]["total"] == pytest.approx(direct["nll"]["total"], rel=1e-6)
    assert json.loads((tmp_path / "r.json").read_text())["events"] == 90


def test_cli_time_res_scores_times_in_other_bins(tmp_path, checkpoint, capsys):
    """--time-res compares models trained with different time bins: only the time term
    changes, and it equals the model scored with that bin width."""
    pieces = [random_piece(s, 30) for s in range(2)]
    write_split(tmp_path / "prep", "test", pieces, [{"source": str(s)} for s in range(2)])
    args = ["eval", str(checkpoint), str(tmp_path / "prep"), "--json", "--no-progress",
            "--orders", "canonical"]
    assert cli_main(args) == 0
    own = json.loads(capsys.readouterr().out)
    assert cli_main([*args, "--time-res", "0.05"]) == 0
    wide = json.loads(capsys.readouterr().out)
    assert own["time_res"] == pytest.approx(0.01) and wide["time_res"] == pytest.approx(0.05)
    assert wide["nll"]["time"] < own["nll"]["time"]  # wider bins hold more mass
    for k in ("inst", "pitch", "vel"):
        assert wide["nll"][k] == pytest.approx(own["nll"][k])
    model = NotochordNet.load(checkpoint)
    model.time_dist.res = 0.05
    direct = evaluate(model, pieces, orders=("iptv",))
    assert wide["nll"]["time"] == pytest.approx(direct["nll"]["time"], rel=1e-6)
    assert cli_main([*args, "--time-res", "0"]) == 2
    assert "--time-res" in capsys.readouterr().err


def test_cli_on_midi_folder(tmp_path, checkpoint, capsys):
    folder = tmp_path / "midi"
    folder.mkdir()
    for k in range(2):
        write_midi(folder / f"song{k}.mid", k)
    (folder / "broken.mid").write_bytes(b"MThd not really")
    code = cli_main(["eval", str(checkpoint), str(folder), "--json", "--no-progress",
                     "--orders", "canonical"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["pieces"] == 2 and r["events"] == 48  # 12 notes = 24 events per song
    assert list(r["orders"]) == ["iptv"]
    assert [s["path"] for s in r["skipped"]] == [str(folder / "broken.mid")]
    assert r["seconds"] > 0 and r["bits_per_second"] > 0


def test_cli_user_errors(tmp_path, checkpoint, capsys):
    assert cli_main(["eval", str(checkpoint), str(tmp_path / "nowhere")]) == 2
    assert "data not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["eval", str(checkpoint), str(tmp_path / "empty")]) == 2
    assert "no MIDI files" in capsys.readouterr().err
    assert cli_main(["eval", str(tmp_path / "missing.safetensors"), str(tmp_path)]) == 1
    assert "not found" in capsys.readouterr().err


def test_default_name_resolves_to_the_bundled_model():
    from notochord_rt.model.checkpoint import default_checkpoint
    from notochord_rt.train.checkpoints import resolve_checkpoint

    assert resolve_checkpoint("default") == default_checkpoint()
