"""The Notochord inference API: reset / feed / sample / query / state, on a tiny model."""

import logging
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny import tiny_config, tiny_model

from notochord_rt.engine.cores.core import InferenceCore, ModuleCore
from notochord_rt.engine.sampling.constraints import Constraints
from notochord_rt.engine.sampling.sampler import Notochord, SampledEvent
from notochord_rt.errors import InputError, NoPossibleEvents

TWO_LAYERS = tiny_config(rnn_layers=2)  # the multi-layer recurrent state


def two_layer_model(seed: int = 0) -> Notochord:
    m = tiny_model(seed, sampler_seed=seed, **TWO_LAYERS)
    m.reset()
    return m


@pytest.fixture
def model() -> Notochord:
    return two_layer_model()


def play(m: Notochord, n: int, cons=None, order=None) -> list[SampledEvent]:
    out = []
    for _ in range(n):
        e = m.sample(cons, order)
        m.feed(**e.as_dict())
        out.append(e)
    return out


def test_core_protocol_is_implemented(model):
    assert isinstance(model.core, InferenceCore)
    assert isinstance(ModuleCore(model.net), InferenceCore)


def test_sampled_events_are_valid_and_finite(model):
    for e in play(model, 200):
        assert 1 <= e.inst <= 320 and 0 <= e.pitch <= 127
        assert 0.0 <= e.time <= 10.0 and 0.0 <= e.vel <= 127.0 and float(e.vel).is_integer()
        assert 0.0 <= e.end <= 1.0
        for lp in (e.inst_logp, e.pitch_logp, e.time_logp, e.vel_logp):
            assert lp is None or (math.isfinite(lp) and lp <= 1e-9)
    assert model.step_count == 200


def test_logp_matches_teacher_forced_score(model):
    events = play(model, 12, order="itpv")
    scores = model.score([e.inst for e in events], [e.pitch for e in events],
                         [e.time for e in events], [e.vel for e in events], order="itpv")
    for k, e in enumerate(events):
        for name in ("inst", "pitch", "time", "vel"):
            lp = getattr(e, f"{name}_logp")
            if lp is not None:
                assert lp == pytest.approx(float(scores[name][k]), abs=2e-3), (k, name)


def test_seed_and_generator_reproduce(model):
    a = model.sample(seed=7)
    b = model.sample(seed=7)
    assert a == b
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert model.sample(generator=g1) == model.sample(generator=g2)
    r1, r2 = np.random.default_rng(4), np.random.default_rng(4)
    assert model.sample(generator=r1) == model.sample(generator=r2)
    with pytest.raises(InputError, match="seed"):
        model.sample(seed=-1)


def test_state_restore_reproduces_sampling(model):
    play(model, 10)
    snap = model.get_state()
    first = model.sample()  # uses and advances the stream's generator
    play(model, 5)
    model.set_state(snap)
    assert model.sample() == first
    assert model.held_notes == pytest.approx(snap.held.as_dict())


def test_restored_context_is_not_stale(model):
    # reference bug: after restoring a state the cached top output was the old one
    events = play(model, 6)
    snap = model.get_state()
    play(model, 3)
    model.set_state(snap)
    fresh = two_layer_model()
    for e in events:
        fresh.feed(**e.as_dict())
    assert model.sample(seed=11) == fresh.sample(seed=11)
    assert torch.allclose(model._context(), fresh._context())


def test_reset_with_state_and_seed(model):
    snap = model.get_state()
    play(model, 4)
    model.reset(state=snap)
    assert model.step_count == 0 and model.held_notes == {}
    model.reset(seed=5)
    a = model.sample()
    model.reset(seed=5)
    assert model.sample() == a
    with pytest.raises(InputError, match="SamplerState"):
        model.set_state({"rnn": 1})


@pytest.mark.parametrize("args,needle", [
    ((0, 60, 0.1, 64), "inst"),
    ((1, 128, 0.1, 64), "pitch"),
    ((1, 60, -0.1, 64), "time"),
    ((1, 60, float("nan"), 64), "time"),
    ((1, 60, math.inf, 64), "time"),
    ((1, 60, 0.1, 128), "vel"),
    (("a", 60, 0.1, 64), "inst"),
])
def test_feed_validates(model, args, needle):
    with pytest.raises(InputError, match=needle):
        model.feed(*args)
    assert model.step_count == 0


def test_feed_tracks_held_notes_and_repairs(model, caplog):
    model.feed(1, 60, 0.0, 90)
    model.feed(2, 62, 0.5, 90)
    assert model.held_notes == pytest.approx({(1, 60): 0.5, (2, 62): 0.0})
    assert model.held_map() == {1: {60}, 2: {62}} and model.current_time == 0.5
    with caplog.at_level(logging.WARNING):
        model.feed(1, 60, 0.25, 70)  # duplicate note-on: restarts the note
        model.feed(3, 40, 0.0, 0)  # orphan note-off: no held change
    assert "sounding note" in caplog.text and "silent note" in caplog.text
    assert model.held_notes == pytest.approx({(1, 60): 0.0, (2, 62): 0.25})
    with pytest.raises(InputError, match="sounding"):
        model.feed(1, 60, 0.0, 70, strict=True)
    with pytest.raises(InputError, match="silent"):
        model.feed(3, 40, 0.0, 0, strict=True)
    model.feed(1, 60, 0.1, 0)
    assert (1, 60) not in model.held_notes
    # extra keys from sample/query results are ignored
    model.feed(inst=1, pitch=61, time=0.0, vel=80, end=0.3, step=4, handle="h")
    assert (1, 61) in model.held_notes


def test_reference_polyphony_bug_gives_a_valid_note_off(model):
    # reference: max_polyphony=1 with two held notes returned time=-inf and an orphan pitch
    model.feed(1, 60, 0.0, 80)
    model.feed(1, 64, 0.0, 80)
    e = model.sample(Constraints(max_polyphony=1))
    assert e.forced == "max_polyphony" and e.inst == 1 and e.vel == 0
    assert e.pitch in (60, 64) and e.time == 0.0


def test_all_excluded_raises_instead_of_sampling_anything(model):
    with pytest.raises(NoPossibleEvents, match="note_on_map"):
        model.sample(Constraints(note_on_map={}, note_off_map={}))
    with pytest.raises(InputError, match="every pitch"):
        model.query(include_pitch=[60], exclude_pitch=[60])


def test_constraints_are_respected(model):
    cons = Constraints(note_on_map={5: range(60, 65), 9: [30]}, vel_ranges=[(20, 40)],
                       time_ranges=[(0.1, 0.2), (1.0, 1.5, 2.0)], max_polyphony=2)
    for e in play(model, 100, cons):
        assert e.inst in (5, 9)
        if e.is_note_on:
            assert 20 <= e.vel <= 40 and (e.inst, e.pitch) != (9, 31)
            assert (e.inst == 5 and 60 <= e.pitch < 65) or (e.inst, e.pitch) == (9, 30)
        assert 0.1 <= e.time <= 0.2 or 1.0 <= e.time <= 1.5 or e.time == 0.0


def test_orders(model):
    e = model.sample(order="pvti")
    assert e.order == "pvti"
    fixed_first = model.sample(Constraints(pitch=61), order="itpv")
    assert fixed_first.order[0] == "p" and fixed_first.pitch == 61
    r1 = model.sample(order="random", seed=3)
    r2 = model.sample(order="random", seed=3)
    assert r1 == r2 and sorted(r1.order) == list("iptv")
    with pytest.raises(InputError, match="order"):
        model.sample(order="ipt")
    with pytest.raises(InputError, match="Constraints"):
        model.sample({"pitch": 60})


def test_query_reference_arguments(model):
    r = model.query(include_inst=[1, 2], include_pitch=range(60, 64), min_vel=1, handle="abc",
                    return_params=True, seed=1)
    assert r["inst"] in (1, 2) and 60 <= r["pitch"] < 64 and r["vel"] >= 1
    assert r["handle"] == "abc" and r["step"] == 0 and r["end"] == 0
    assert r["inst_params"] is None or r["inst_params"].shape == (321,)
    assert r["time_params"].shape[0] == 3
    model.feed(**r)
    r = model.query(next_inst=r["inst"], next_pitch=r["pitch"], next_time=0.2)
    assert r["vel"] == 0 and r["time"] == 0.2  # the note sounds: only a note-off is possible
    model.feed(**r)
    for _ in range(20):
        r = model.query(exclude_inst=range(1, 250), allow_anon=False, max_time=0.3,
                        velocity_temp=0.5, allow_end=True)
        assert 250 <= r["inst"] <= 256
        assert r["time"] <= 0.3 and r["end"] in (0, 1)
        model.feed(**r)
    with pytest.raises(InputError, match="unknown"):
        model.query(nxt_inst=1)
    with pytest.raises(InputError, match="sweep_time"):
        model.query(sweep_time=True)


def test_query_index_pitch_is_deterministic(model):
    picks = {model.query(next_inst=1, include_pitch=range(40, 80), index_pitch=0, seed=s)["pitch"]
             for s in range(8)}
    second = {model.query(next_inst=1, include_pitch=range(40, 80), index_pitch=1,
                          seed=s)["pitch"] for s in range(8)}
    assert len(picks) == 1 and len(second) == 1 and picks != second


def test_query_include_drum(model):
    for _ in range(30):
        r = model.query(include_inst=[1, 129], include_pitch=[60, 61], include_drum=[36])
        if r["inst"] == 129:
            assert r["pitch"] == 36 or r["vel"] == 0
        else:
            assert r["pitch"] in (60, 61)
        model.feed(**r)


def test_fast_core_gives_the_same_events(model):
    fast = pytest.importorskip("notochord_rt.engine.cores.fast")
    play(model, 5)
    snap = model.get_state()
    expected = [model.sample(seed=s) for s in range(5)]
    model.use_core(fast.FastCore(model.net, precision="fp32"))
    model.set_state(snap)
    got = [model.sample(seed=s) for s in range(5)]
    assert [(e.inst, e.pitch, e.vel) for e in got] == [(e.inst, e.pitch, e.vel) for e in expected]
    assert [e.time for e in got] == pytest.approx([e.time for e in expected], abs=1e-4)
    model.use_core("module")
    with pytest.raises(InputError, match="InferenceCore"):
        model.use_core(object())


@pytest.mark.slow
def test_package_import_is_torch_free_and_exports_lazily():
    code = ("import sys, notochord_rt as n; assert 'torch' not in sys.modules; "
            "n.Notochord; n.Constraints; n.SampledEvent; n.Event; n.NoPossibleEvents; "
            "assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_and_from_net_give_a_sampler(tmp_path):
    from notochord_rt.model.network import NotochordNet

    torch.manual_seed(2)
    net = NotochordNet(**TWO_LAYERS)
    path = tmp_path / "tiny.safetensors"
    net.save(path)
    loaded = Notochord.load(path)
    wrapped = Notochord.from_net(net)
    assert isinstance(loaded, Notochord) and not loaded.training
    loaded.reset()
    wrapped.reset()
    assert loaded.sample(seed=1) == wrapped.sample(seed=1)
