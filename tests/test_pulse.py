"""Pulse components of the time mixture (model/pulse.py): known candidates, the batched
(training) and live (numpy) computations agreeing, renormalisation, widening a trained
network, and sampling, scoring and training with them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny import tiny_config, tiny_model

from notochord_rt.engine.sampling.sampler import Notochord
from notochord_rt.events import EventArrays
from notochord_rt.model import pulse
from notochord_rt.model.config import NotochordConfig
from notochord_rt.model.distributions import MixtureParams
from notochord_rt.model.network import NotochordNet
from notochord_rt.train.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_candidates_on_a_steady_pulse():
    # onsets every 0.5 s, then 0.25 s: the last IOI is 0.25, the one before 0.5
    onsets = [0.0, 0.5, 1.0, 1.25]
    loc, valid = pulse.candidates(onsets, 1.25, 3)
    assert valid.tolist() == [True, True, True, True, True, True, True, True, True]
    assert loc[:3] == pytest.approx([0.25, 0.5, 0.5])  # next line of each grid
    assert loc[3:6] == pytest.approx([0.5, 1.0, 1.0])  # the line after
    assert loc[6:] == pytest.approx([0.125, 0.25, 0.25])  # half grids
    # a note-off 0.1 s later: the same grid lines, seen from later
    loc, _ = pulse.candidates(onsets, 1.35, 3)
    assert loc[:3] == pytest.approx([0.15, 0.4, 0.4])
    assert loc[6] == pytest.approx(0.025)


def test_fitted_grids_do_not_inherit_one_onsets_jitter():
    # a humanised half-note pulse: every onset up to 15 ms off its line at k * 0.5 s
    jitter = [0.0, 0.01, -0.01, 0.012, -0.008, 0.009, -0.011, 0.01, -0.015]
    onsets = [0.5 * i + j for i, j in enumerate(jitter)]
    now = onsets[-1]
    true_next = 0.5 * len(jitter) - now  # the next line of the real grid
    plain, _ = pulse.candidates(onsets, now, 2)
    fitted, valid = pulse.candidates(onsets, now, 2, fit=8)
    assert valid.all()
    assert abs(plain[0] - true_next) > 0.02  # the last IOI was 476 ms
    assert abs(fitted[0] - true_next) < 0.01
    assert abs(fitted[2] - (true_next + 0.5)) < 0.012  # the line after
    # without a pulse to fit (random onsets) the plain grid is kept
    rng = np.random.default_rng(0)
    rand = np.cumsum(rng.uniform(0.05, 1.0, size=12)).tolist()
    a, _ = pulse.candidates(rand, rand[-1], 1, fit=8)
    b, _ = pulse.candidates(rand, rand[-1], 1)
    assert a[0] > 0 and np.isfinite(a).all() and np.isfinite(b).all()


def test_voted_grids_survive_an_off_grid_last_onset():
    """A steady 0.5 s pulse whose last onset came 150 ms late (as a model's own spread
    chord can): anchored on it, every grid moves with it; voted, the grids of the intact
    periods keep the pulse (and the late onset's own IOI cannot outvote them)."""
    onsets = [0.5 * i for i in range(10)] + [5.0 + 0.15]
    now = onsets[-1] + 0.02
    true_next = 5.5 - now
    k = 3
    last, _ = pulse.candidates(onsets, now, k, fit=16)
    voted, valid = pulse.candidates(onsets, now, k, fit=16, vote=True)
    assert valid.all()
    assert all(abs(last[j] - true_next) > 0.1 for j in range(1, k))  # periods 0.5 s, moved
    for j in range(1, k):  # the intact periods: next line, the line after, the half grid
        assert voted[j] == pytest.approx(true_next, abs=1e-6)
        assert voted[k + j] == pytest.approx(true_next + 0.5, abs=1e-6)
        assert voted[2 * k + j] == pytest.approx(5.25 - now, abs=1e-6)


def test_candidates_validity():
    loc, valid = pulse.candidates([], 0.0, 4)
    assert not valid.any() and np.isfinite(loc).all()
    loc, valid = pulse.candidates([3.0], 3.0, 4)
    assert not valid.any()
    # one IOI too long to be a period, one usable
    loc, valid = pulse.candidates([0.0, 5.0, 5.5], 5.5, 4)
    assert valid.tolist() == [True, False, False, False] * 3
    assert loc[0] == pytest.approx(0.5)


def test_onset_history_groups_chords_and_strums():
    h = pulse.OnsetHistory(keep=3)
    for t in (0.0, 0.0, 0.004, 0.008, 0.5, 1.0, 1.5):
        h.note_on(t)
    assert h.onsets == [0.5, 1.0, 1.5]  # the strum 0..8 ms was one onset; keep=3
    c = h.copy()
    h.clear()
    assert c.onsets == [0.5, 1.0, 1.5] and h.onsets == []


def _sequence(seed: int, n: int):
    rng = np.random.default_rng(seed)
    deltas = rng.choice([0.0, 0.003, 0.012, 0.125, 0.25, 0.5, 5.0], size=n,
                        p=[0.3, 0.05, 0.05, 0.3, 0.15, 0.13, 0.02])
    inst = rng.choice([1, 33, 129], size=n)
    vel = rng.integers(0, 2, size=n) * rng.integers(1, 127, size=n)
    inst[0], deltas[0], vel[0] = 0, 0.0, 0  # the start event
    return (torch.tensor(inst), torch.tensor(deltas, dtype=torch.float32),
            torch.tensor(vel, dtype=torch.float32))


@pytest.mark.parametrize("seed,fit,vote", [(0, 0, False), (1, 0, False), (2, 0, False),
                                           (0, 8, False), (1, 8, False), (3, 5, False),
                                           (0, 8, True), (4, 16, True), (5, 3, True)])
def test_training_and_live_candidates_agree(seed, fit, vote):
    k = 4
    seqs = [_sequence(seed * 10 + j, 120) for j in range(3)]
    inst, time, vel = (torch.stack(x) for x in zip(*seqs))
    loc, valid = pulse.sequence_candidates(inst, time, vel, k, fit, vote)
    assert loc.shape == valid.shape == (3, 120, 3 * k)
    assert valid.any()
    for b in range(3):
        h, now = pulse.OnsetHistory(), 0.0
        for i in range(120):
            now += float(time[b, i])
            if inst[b, i] > 0 and vel[b, i] >= 0.5:
                h.note_on(now)
            lv, vv = pulse.candidates(h.onsets, now, k, fit, vote)
            assert vv.tolist() == valid[b, i].tolist(), (b, i)
            np.testing.assert_allclose(lv[vv], loc[b, i].numpy()[vv], atol=1e-4)
            assert (lv[vv] > 0).all()


def test_fill_renormalises_over_valid_components():
    rows = np.log(np.full((3, 5), 0.2))
    rows[1] = [0.1, 0.2, 9.0, 9.0, 9.0]
    rows[2] = 100.0
    out = pulse.fill_rows(rows, np.array([0.3, 0.4, 0.5]), np.array([True, False, True]))
    assert out[1].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert out[0][3] == -math.inf
    assert np.exp(out[0]).sum() == pytest.approx(1.0)
    assert np.exp(out[0][[0, 1, 2, 4]]) == pytest.approx([0.25] * 4)
    assert rows[1][2] == 9.0  # the input is not modified
    p = MixtureParams(torch.log(torch.full((2, 5), 0.2)), torch.zeros(2, 5), torch.ones(2, 5))
    q = pulse.fill_params(p, torch.tensor([[0.3, 0.4, 0.5]] * 2),
                          torch.tensor([[False, False, False], [True, True, True]]))
    torch.testing.assert_close(q.log_pi.exp().sum(-1), torch.ones(2))
    torch.testing.assert_close(q.log_pi[0].exp(), torch.tensor([0.5, 0.5, 0, 0, 0]))
    torch.testing.assert_close(q.loc[1], torch.tensor([0.0, 0.0, 0.3, 0.4, 0.5]))


def test_config_counts_and_round_trips():
    c = NotochordConfig(**tiny_config(time_pulse=3))
    assert c.time_mixture_components == c.time_components + 9
    assert NotochordConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="time_pulse"):
        NotochordConfig(**tiny_config(time_pulse=-1))
    with pytest.raises(ValueError, match="time_pulse"):
        c.to_reference()


def _piece(seed: int, n: int) -> EventArrays:
    inst, time, vel = (x.numpy() for x in _sequence(seed, n + 1))
    rng = np.random.default_rng(seed)
    return EventArrays.build(inst[1:], rng.integers(40, 80, n), np.cumsum(time[1:]), vel[1:])


def test_widening_keeps_everything_but_time(tmp_path):
    torch.manual_seed(0)
    net = NotochordNet(**tiny_config()).eval()
    wide = pulse.widen_time_mixture(net, 2).eval()
    assert wide.config.time_pulse == 2
    assert wide.time_dist.n_components == net.time_dist.n_components + 6
    piece = _piece(3, 60)
    a = net.score(piece.inst, piece.pitch, piece.deltas(), piece.vel)
    b = wide.score(piece.inst, piece.pitch, piece.deltas(), piece.vel)
    for k in ("inst", "pitch", "vel", "end"):
        torch.testing.assert_close(a[k], b[k])
    assert torch.isfinite(b["time"]).all()
    assert not torch.allclose(a["time"], b["time"])  # the pulse components take part
    with pytest.raises(ValueError, match="already"):
        pulse.widen_time_mixture(wide, 2)
    wide.save(tmp_path / "w.safetensors")
    back = NotochordNet.load(tmp_path / "w.safetensors")
    assert back.config == wide.config
    c = back.score(piece.inst, piece.pitch, piece.deltas(), piece.vel)
    torch.testing.assert_close(b["time"], c["time"])


@pytest.mark.parametrize("placed", [{}, {"time_pulse_grid": 1}])
def test_chunked_evaluation_places_pulse_components_like_score(placed):
    """On interval grids and on the tracked grid's lines (model/grid_track.py) alike."""
    torch.manual_seed(1)
    model = NotochordNet(**tiny_config(time_pulse=2, **placed)).eval()
    with torch.no_grad():
        model.time_head.out.weight.mul_(300.0)
    piece = _piece(4, 70)
    ref = model.score(piece.inst, piece.pitch, piece.deltas(), piece.vel, order="iptv",
                      end="last")
    expected = -float(ref["time"].double().sum()) / len(piece)
    for chunk in (2, 7, 1000):
        got = evaluate(model, [piece], orders=("iptv",), chunk=chunk)["nll"]["time"]
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), chunk


def _steady(model: Notochord, beats: int, period: float) -> None:
    model.reset()
    for b in range(beats):
        model.feed(1, 60, period - 0.05 if b else 0.0, 80)
        model.feed(1, 60, 0.05, 0)


def test_sampler_places_pulse_components_from_what_was_fed():
    model = tiny_model(2, time_pulse=2)
    _steady(model, 4, 0.4)  # onsets at 0, 0.4, 0.8, 1.2; now 1.25
    ev = model.sample(return_params=True)
    t = ev.params["t"]
    free = model.config.time_components
    assert t[1, free:] == pytest.approx([0.35, 0.35, 0.75, 0.75, 0.15, 0.15])
    assert np.exp(t[0]).sum() == pytest.approx(1.0)
    # a snapshot keeps the onset history: the same draw after restoring it
    state = model.get_state()
    first = model.sample(seed=5)
    model.feed(1, 61, 0.3, 90)
    model.set_state(state)
    assert model.sample(seed=5) == first
    model.reset()
    assert model.sample(return_params=True).params["t"][0, free:].max() == -math.inf


def test_a_trained_pulse_puts_samples_on_the_grid():
    """With the pulse components' weight turned up, samples follow the fed pulse."""
    model = tiny_model(3, time_pulse=2)
    free = model.config.time_components
    with torch.no_grad():
        bias = model.net.time_dist.bias.view(3, -1)
        bias[0, free:free + 2] = 20.0  # "the next line of the last two IOIs"
        bias[2, free:free + 2] = 300.0  # narrow: a logistic scale of 3 ms
    _steady(model, 6, 0.3)
    from notochord_rt.engine.sampling.constraints import Constraints

    gaps = [model.sample(Constraints(min_time=0.01), seed=s).time for s in range(40)]
    assert np.median(np.abs(np.array(gaps) - 0.25)) < 0.01  # 1.55 -> next line 1.8


@torch.no_grad()
def test_exponential_widths_start_where_they_were_and_agree_live():
    torch.manual_seed(2)
    net = pulse.widen_time_mixture(NotochordNet(**tiny_config()), 2).eval()
    with pytest.raises(ValueError, match="no pulse"):
        pulse.exponential_widths(NotochordNet(**tiny_config()), 10.0)
    exp = pulse.exponential_widths(net, 10.0).eval()
    assert exp.config.time_pulse_gain == 10.0
    raw = torch.zeros(exp.time_dist.n_params)  # the biases alone
    before = net.time_params(raw, None).sharp[-6:]
    after = exp.time_params(raw, (torch.ones(6), torch.ones(6, dtype=torch.bool))).sharp[-6:]
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-3)  # the same widths
    # the numpy path (the sampler) reads them the same way
    p = exp.time_dist.params(torch.randn(exp.time_dist.n_params))
    rows = torch.stack(p).double().numpy()
    loc, valid = np.array([0.2] * 6), np.array([True] * 5 + [False])
    got = pulse.fill_rows(rows, loc, valid, 10.0)
    want = pulse.fill_params(p, torch.tensor(loc), torch.tensor(valid), 10.0)
    np.testing.assert_allclose(got[2], want.sharp.double().numpy(), rtol=1e-5)
    np.testing.assert_allclose(got[0], want.log_pi.double().numpy(), rtol=1e-5, atol=1e-6)
    # a sampler of it works, and a changed decoded value changes the width by a factor
    s = pulse.pulse_sharpness(torch.tensor([0.5, 0.6]), 10.0)
    assert float(s[1] / s[0]) == pytest.approx(math.e)


@pytest.mark.parametrize("gain", [0.0, 10.0])
def test_a_new_network_starts_its_pulse_components_narrow(gain):
    net = NotochordNet(**tiny_config(time_pulse=2, time_pulse_gain=gain)).eval()
    with torch.no_grad():
        p = net.time_params(torch.zeros(net.time_dist.n_params),
                            (torch.ones(6), torch.ones(6, dtype=torch.bool)))
    torch.testing.assert_close(p.sharp[-6:], torch.full((6,), pulse.SHARP_INIT), rtol=1e-4,
                               atol=1e-3)
