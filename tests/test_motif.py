"""Motif copying (model/motif.py): known candidates, training and live candidates
agreeing, gates on the logits, widening a trained network, and sampling with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_config, tiny_model

from notochord_rt.engine.sampling.constraints import Constraints
from notochord_rt.events import EventArrays
from notochord_rt.model import motif
from notochord_rt.model.config import NotochordConfig
from notochord_rt.model.network import NotochordNet
from notochord_rt.train.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _history(notes):
    h = motif.MotifHistory()
    for inst, pitch in notes:
        h.note_on(inst, pitch)
    return h


def test_candidates_of_a_repeated_riff():
    # C D E C D E C D, then what comes next? The riff says E.
    riff = [60, 62, 64, 60, 62, 64, 60, 62]
    h = _history([(1, p) for p in riff] + [(33, 40)])  # another instrument in between
    cand, valid = h.candidates(1, 2)
    assert valid.all()
    assert cand[:2].tolist() == [62, 60]  # 1 and 2 notes back
    assert cand[2:5].tolist() == [64, 64, 64]  # after the last 62, (60 62), (64 60 62)
    # the +2 before the last one (62 -> 64) was followed by -4: 62 - 4
    assert cand[5] == 58
    cand, valid = h.candidates(33, 2)  # the bass has one note: only "1 back"
    assert valid.tolist() == [True, False, False, False, False, False]
    assert cand[0] == 40
    assert not h.candidates(5, 2)[1].any()  # an instrument never heard


def test_interval_candidate_transposes_and_stays_in_range():
    h = _history([(1, p) for p in (60, 64, 62, 126, 127)])  # +4 -2 +64 +1
    cand, valid = h.candidates(1, 1)
    assert not valid[-1]  # no earlier +1
    h.note_on(1, 120)  # -7
    h.note_on(1, 124)  # +4: the previous +4 was followed by -2 -> 122
    cand, valid = h.candidates(1, 1)
    assert valid[-1] and cand[-1] == 122
    # +10 +10 +5 -5 -10 +10: the +10 before the last was followed by +5
    h = _history([(1, p) for p in (100, 110, 120, 125, 120, 110, 120)])
    assert h.candidates(1, 1)[0][-1] == 125
    h = _history([(1, p) for p in (100, 110, 127, 117, 127)])  # the first +10 led to +17
    cand, valid = h.candidates(1, 1)
    assert not valid[-1]  # 127 + 17 is not a pitch


def test_long_histories_are_trimmed_but_keep_working():
    h = motif.MotifHistory()
    for k in range(3 * motif.KEEP):
        h.note_on(1, 60 + k % 5)
    assert len(h.voices[1].p) <= motif.KEEP
    for k in range(motif.KEEP + 7):  # every candidate stays an index into what is kept
        h.note_on(1, 60 + (k * 7) % 13)
        cand, valid = h.candidates(1, 1)
        assert valid[0] and (0 <= cand).all() and (cand < 128).all()
    fresh = _history([(1, p) for p in h.voices[1].p])  # a rebuilt history agrees
    np.testing.assert_array_equal(fresh.candidates(1, 1)[0], cand)
    c = h.copy()
    h.note_on(1, 0)
    assert c.voices[1].p[-1] != 0


def _sequence(seed: int, n: int):
    rng = np.random.default_rng(seed)
    inst = rng.choice([1, 33, 129], size=n)
    pitch = rng.choice([36, 38, 40, 42, 60, 62, 64, 65, 67], size=n)
    vel = rng.integers(0, 2, size=n) * rng.integers(1, 127, size=n)
    time = rng.choice([0.0, 0.1, 0.25], size=n)
    inst[0], pitch[0], vel[0], time[0] = 0, 128, 0, 0.0
    return (torch.tensor(inst), torch.tensor(pitch), torch.tensor(time, dtype=torch.float32),
            torch.tensor(vel, dtype=torch.float32))


def test_training_candidates_are_the_live_ones():
    inst, pitch, _, vel = (torch.stack(x) for x in zip(_sequence(1, 80), _sequence(2, 80)))
    cand, valid = motif.sequence_candidates(inst, pitch, vel, 3)
    assert cand.shape == valid.shape == (2, 79, 7)
    assert valid.any()
    for b in range(2):
        h = motif.MotifHistory()
        for s in range(1, 80):
            want = h.candidates(int(inst[b, s]), 3)
            assert cand[b, s - 1].tolist() == want[0].tolist()
            assert valid[b, s - 1].tolist() == want[1].tolist()
            if vel[b, s] > 0:
                h.note_on(int(inst[b, s]), int(pitch[b, s]))


def test_gates_add_to_the_candidate_logits():
    out = np.zeros(129 + 3)
    out[-3:] = [1.0, 2.0, 4.0]
    logits = motif.apply(out, np.array([60, 60, 70]), np.array([True, True, False]))
    assert len(logits) == 129 and logits[60] == 3.0 and logits[70] == 0.0
    raw = torch.zeros(2, 129 + 3)
    raw[:, -3:] = torch.tensor([1.0, 2.0, 4.0])
    t = motif.apply_logits(raw, torch.tensor([[60, 60, 70]] * 2),
                           torch.tensor([[True, True, False], [False, False, True]]))
    assert t.shape == (2, 129)
    assert t[0, 60] == 3.0 and t[0, 70] == 0.0 and t[1, 70] == 4.0 and t[1, 60] == 0.0


def test_config_and_widening(tmp_path):
    c = NotochordConfig(**tiny_config(pitch_copy=2))
    assert c.pitch_head_outputs == c.n_pitch_classes + 6
    assert NotochordConfig.from_dict(c.to_dict()) == c
    torch.manual_seed(0)
    net = NotochordNet(**tiny_config()).eval()
    wide = motif.widen_pitch_head(net, 2).eval()
    inst, pitch, time, vel = _sequence(3, 60)
    args = (inst[1:].numpy(), pitch[1:].numpy(), time[1:].numpy(), vel[1:].numpy())
    a, b = net.score(*args), wide.score(*args)
    for k in a:  # zero gates: the same model until trained
        torch.testing.assert_close(a[k], b[k])
    with pytest.raises(ValueError, match="already"):
        motif.widen_pitch_head(wide, 2)
    wide.save(tmp_path / "w.safetensors")
    assert NotochordNet.load(tmp_path / "w.safetensors").config.pitch_copy == 2


def test_chunked_evaluation_uses_the_candidates_like_score():
    torch.manual_seed(1)
    model = NotochordNet(**tiny_config(pitch_copy=2)).eval()
    with torch.no_grad():
        model.pitch_head.out.bias[-6:] = 3.0  # trust every candidate
    inst, pitch, time, vel = _sequence(4, 71)
    piece = EventArrays.build(inst[1:].numpy(), pitch[1:].numpy(), np.cumsum(time[1:].numpy()),
                              vel[1:].numpy())
    ref = model.score(piece.inst, piece.pitch, piece.deltas(), piece.vel, order="iptv")
    plain = NotochordNet(**tiny_config()).eval()
    plain.load_state_dict({k: (v[:-6] if k.startswith("pitch_head.out") else v)
                           for k, v in model.state_dict().items()})
    base = plain.score(piece.inst, piece.pitch, piece.deltas(), piece.vel, order="iptv")
    assert not torch.allclose(ref["pitch"], base["pitch"])  # the gates take part
    # ... but not where the instrument is not known: pitch before instrument
    r2 = model.score(piece.inst, piece.pitch, piece.deltas(), piece.vel, order="pitv")
    b2 = plain.score(piece.inst, piece.pitch, piece.deltas(), piece.vel, order="pitv")
    torch.testing.assert_close(r2["pitch"], b2["pitch"])
    expected = -float(ref["pitch"].double().sum()) / len(piece)
    for chunk in (2, 9, 1000):
        got = evaluate(model, [piece], orders=("iptv",), chunk=chunk)["nll"]["pitch"]
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), chunk


def test_sampler_copies_a_riff_when_the_gates_trust_it():
    model = tiny_model(4, pitch_copy=1)
    with torch.no_grad():
        model.net.pitch_head.out.bias[-4:-1] = 30.0  # the induction candidates
    riff = [60, 67, 63, 72]
    model.reset()
    for p in riff * 3:
        model.feed(1, p, 0.2, 90)
        model.feed(1, p, 0.1, 0)
    nxt = [model.sample(Constraints(inst=1, note_off_map={}), seed=s).pitch for s in range(20)]
    assert nxt.count(60) >= 18  # the riff starts again
    # with the pitch drawn before the instrument (not fixed), no candidates
    free = [model.sample(Constraints(note_off_map={}), order="ptiv", seed=s).pitch
            for s in range(20)]
    assert free.count(60) < 10
    state = model.get_state()
    a = model.sample(seed=9)
    model.feed(1, 61, 0.1, 80)
    model.set_state(state)
    assert model.sample(seed=9) == a


def _riff_played(seed: int):
    """A tiny motif-copying model that has played a 4-note piano riff three times."""
    model = tiny_model(seed, pitch_copy=1)
    model.reset()
    for p in [60, 67, 63, 72] * 3:
        model.feed(1, p, 0.2, 90)
        model.feed(1, p, 0.1, 0)
    return model


def test_motif_weight_reweights_the_models_own_candidates():
    from notochord_rt.errors import InputError

    model = _riff_played(4)
    # instrument, velocity and time fixed: the pitch head sees the same inputs each time
    rows = {w: np.asarray(model.sample(Constraints(motif_weight=w, inst=1, vel=90.0,
                                                   time=0.2),
                                       order="ivtp", return_params=True).params["p"])
            for w in (0.0, 1.0, 8.0)}
    # the last pitch (one back) and what followed it, its last 2 and 3 pitches and its
    # last interval before (all 60): two distinct candidates
    cand = [60, 72]
    other = np.setdiff1d(np.arange(128), cand)

    def share(w):
        p = np.exp(rows[w] - rows[w].max())
        p /= p.sum()
        return p[cand].sum()

    assert share(0.0) == 0.0 and 0.0 < share(1.0) < share(8.0) < 1.0
    # x8 on the odds of each candidate pitch (once, however many kinds propose it)
    odds = {w: share(w) / (1 - share(w)) for w in (1.0, 8.0)}
    assert odds[8.0] / odds[1.0] == pytest.approx(8.0, rel=1e-6)
    np.testing.assert_allclose(rows[8.0][other], rows[1.0][other])  # others unchanged
    np.testing.assert_allclose(rows[8.0][cand] - rows[1.0][cand], np.log(8.0))
    with pytest.raises(InputError, match="motif_weight"):
        Constraints(motif_weight=float("nan")).validate()


def test_motif_weight_acts_inside_the_nucleus_of_the_models_own_pitches():
    from notochord_rt.engine.sampling.draw import nucleus

    model = _riff_played(1)
    state = model.get_state()
    fixed = dict(inst=1, vel=90.0, time=0.2, pitch_temp=0.6)
    rows = {}
    for w in (1.0, 8.0):
        model.set_state(state)
        rows[w] = np.asarray(model.sample(Constraints(motif_weight=w, **fixed), order="ivtp",
                                          return_params=True).params["p"])
    everything = np.ones(len(rows[1.0]), dtype=bool)
    plausible = set(np.flatnonzero(nucleus(rows[1.0], everything, 0.6)).tolist())
    narrowed = set(np.flatnonzero(nucleus(rows[8.0], everything, 0.6)).tolist())
    assert 72 in plausible and len(narrowed) < len(plausible)  # the case this is about
    drawn = {}
    for w in (1.0, 8.0):
        drawn[w] = []
        for seed in range(80):
            model.set_state(state)
            drawn[w].append(model.sample(Constraints(motif_weight=w, **fixed), seed=seed,
                                         order="ivtp").pitch)
    # the nucleus is the model's own: the weight adds no pitch outside it, and does not
    # narrow it to the weighted distribution's nucleus ...
    assert set(drawn[8.0]) <= plausible and set(drawn[8.0]) - narrowed
    # ... it makes the candidate more likely inside it
    assert np.mean(np.equal(drawn[8.0], 72)) > np.mean(np.equal(drawn[1.0], 72))
