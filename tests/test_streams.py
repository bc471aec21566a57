"""The batched many-stream engine (engine/sampling/streams.py) against separate single streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_net

from notochord_rt.engine.cores.fast import FastCore
from notochord_rt.engine.sampling.constraints import Constraints
from notochord_rt.engine.sampling.sampler import Notochord
from notochord_rt.engine.sampling.streams import Streams
from notochord_rt.errors import InputError, NoPossibleEvents
from notochord_rt.model.network import NotochordNet


@pytest.fixture(scope="module")
def net() -> NotochordNet:
    return tiny_net(0, init=0.1, rnn_layers=2, mlp_layers=2)


CONS = [
    None,
    Constraints(note_on_map={1: range(60, 72)}, max_polyphony=2),
    Constraints(note_on_map={5: range(40, 90)}, time=0.0, vel=80.0),
    Constraints(note_on_map={1: range(48, 84), 129: [36, 38, 42]}, max_duration=0.5,
                max_polyphony=1, min_time=0.01),
]
ORDERS = [None, "ipvt", None, "tvip"]


def _singles(net, seeds):
    out = []
    for s in seeds:
        m = Notochord.from_net(net)
        m.use_core("fp32")
        m.reset(seed=s)
        out.append(m)
    return out


def test_streams_match_separate_single_streams(net):
    """N streams in one batch draw the same events as N single streams with the same seeds."""
    seeds = [11, 12, 13, 14]
    st = Streams(net, 4, seed=seeds)
    singles = _singles(net, seeds)
    idx = np.arange(4)
    for step in range(25):
        if step % 5 == 0:  # one stream per call
            got = [st.sample(c, idx=[k], order=o)[0]
                   for k, (c, o) in enumerate(zip(CONS, ORDERS))]
        else:  # the usual path: many streams in one batched call
            got = _batched(st, ORDERS)
        want = [m.sample(c, order=o) for m, c, o in zip(singles, CONS, ORDERS)]
        for k, (a, b) in enumerate(zip(got, want)):
            assert (a.inst, a.pitch, a.vel) == (b.inst, b.pitch, b.vel), (step, k, a, b)
            assert abs(a.time - b.time) < 1e-4, (step, k, a, b)
            assert a.order == b.order and a.forced == b.forced and a.broken == b.broken
        st.feed_events(idx, got)
        for m, e in zip(singles, got):  # feed both the same events: states stay in step
            m.feed(e.inst, e.pitch, e.time, e.vel)
    for k in range(4):
        assert st.held_notes(k).keys() == singles[k].held_notes.keys()


def _batched(st, singles_orders):
    """One batched call per distinct order (the API takes one order per call)."""
    out = [None] * 4
    for o in dict.fromkeys(singles_orders):
        ks = [k for k in range(4) if singles_orders[k] == o]
        evs = st.sample([CONS[k] for k in ks], idx=ks, order=o)
        for k, e in zip(ks, evs):
            out[k] = e
    return out


def test_same_distributions_as_single_streams(net):
    """With time and velocity fixed, every head output matches the single stream's."""
    seeds = [1, 2, 3]
    st = Streams(net, 3, seed=seeds)
    singles = _singles(net, seeds)
    cons = Constraints(note_on_map={1: range(30, 90), 2: range(30, 90)}, time=0.1, vel=64.0)
    for _ in range(6):
        got = st.sample(cons, return_params=True)
        want = [m.sample(cons, return_params=True) for m in singles]
        for a, b in zip(got, want):
            assert a.params.keys() == b.params.keys() and a.params
            for sub in a.params:
                np.testing.assert_allclose(a.params[sub], b.params[sub], atol=1e-4, rtol=1e-4)
            assert a.inst_logp == pytest.approx(b.inst_logp, abs=1e-4)
            assert a.end == pytest.approx(b.end, abs=1e-5)
        st.feed_events(np.arange(3), got)
        for m, e in zip(singles, got):
            m.feed(e.inst, e.pitch, e.time, e.vel)
    # streams are independent: stream 0 and 1 have different states after different events
    assert not torch.equal(st.state(0), st.state(1))


def test_feed_subset_and_reset(net):
    st = Streams(net, 3, seed=0)
    s0 = [st.state(k) for k in range(3)]
    st.feed([1], [1], [60], [0.5], [100])
    assert torch.equal(st.state(0), s0[0]) and torch.equal(st.state(2), s0[2])
    assert not torch.equal(st.state(1), s0[1])
    assert st.held_notes(1) == {(1, 60): 0.0}
    st.feed([2, 0], [3, 4], [61, 62], [0.1, 0.2], [90, 91])
    assert st.step_count.tolist() == [1, 1, 1]
    fed = st.state(1)
    assert (fed - s0[1]).abs().max() > 1e-3  # the tolerance below can tell them apart
    st.reset(1)
    # a copy of the start state cached by the constructor, not a recomputation
    assert torch.equal(st.state(1), s0[1])
    assert st.held_notes(1) == {}
    assert st.held_notes(2) == {(3, 61): 0.0} and st.step_count.tolist() == [1, 0, 1]


def test_reset_state_is_the_same_whichever_streams_are_reset(net):
    st = Streams(net, 4, seed=0)
    start = st.state(0)
    st.feed_events(None, st.sample())
    st.reset([2])
    st.reset([0, 1, 3])  # another number of streams: still copies of one cached state
    assert all(torch.equal(st.state(k), start) for k in range(4))
    st.reset([1, 3], start=False)
    init = st.state(1)
    assert torch.equal(init, st.state(3)) and not torch.equal(init, start)
    single = Notochord.from_net(net)
    single.use_core("fp32")
    single.reset(start=False)
    torch.testing.assert_close(init, single.get_state().rnn)
    single.reset()
    torch.testing.assert_close(start, single.get_state().rnn, atol=1e-6, rtol=1e-5)


def test_feed_policy_is_the_single_streams(net, caplog):
    """Streams.feed warns about contradicted held notes, or refuses them with strict=True."""
    import logging

    st = Streams(net, 2, seed=0)
    with caplog.at_level(logging.WARNING):
        st.feed([0, 1], [1, 1], [60, 61], [0.1, 0.1], [0, 90])  # stream 0: silent note-off
    assert "silent note" in caplog.text and st.step_count.tolist() == [1, 1]
    before = [st.state(k) for k in range(2)]
    with pytest.raises(InputError, match="sounding note"):
        st.feed([0, 1], [1, 1], [62, 61], [0.1, 0.1], [90, 90], strict=True)
    assert st.step_count.tolist() == [1, 1]  # nothing fed: stream 0's event was fine
    assert st.held_notes(0) == {} and st.held_notes(1) == {(1, 61): 0.0}
    assert all(torch.equal(st.state(k), before[k]) for k in range(2))
    st.feed([0], [1], [62], [0.1], [90], strict=True)
    assert st.held_notes(0) == {(1, 62): 0.0}


def test_get_and_set_state_move_a_stream(net):
    st = Streams(net, 3, seed=[1, 2, 3])
    st.feed([0], [1], [60], [0.5], [100])
    snap = st.get_state(0)
    st.set_state(2, snap)
    assert torch.equal(st.state(2), st.state(0))
    assert st.held_notes(2) == st.held_notes(0) and st.step_count[2] == st.step_count[0]
    a, _, c = st.sample()
    assert a.event == c.event  # same state, held notes and generator state
    # a single-stream Notochord snapshot restores into a stream too
    single = Notochord.from_net(net, seed=9)
    single.reset()
    single.feed(2, 40, 0.1, 90)
    st.set_state(1, single.get_state())
    assert torch.allclose(st.state(1), single.get_state().rnn)
    with pytest.raises(InputError):
        st.set_state(1, "nope")


def test_per_stream_constraints_are_respected(net):
    st = Streams(net, 3, seed=5)
    cons = [Constraints(note_on_map={7: [60]}, vel=90.0),
            Constraints(note_on_map={9: [30, 31]}, vel=70.0),
            None]
    evs = st.sample(cons)
    assert (evs[0].inst, evs[0].pitch) == (7, 60) and evs[0].vel == 90.0
    assert evs[1].inst == 9 and evs[1].pitch in (30, 31)
    st.feed_events([0, 1, 2], evs)
    # the held note of stream 0 makes a second note-on impossible for it only
    with pytest.raises(NoPossibleEvents):
        st.sample(Constraints(note_on_map={7: [60]}, vel=90.0), idx=[0])
    again = st.sample(Constraints(note_on_map={7: [60]}, vel=90.0), idx=[1])
    assert again[0].pitch == 60


def test_shared_core_and_precision(net):
    core = FastCore(net, "fp32")
    a = Streams(net, 2, seed=[4, 5], core=core)
    b = Streams(net, 2, seed=[4, 5], core=core)
    assert a.core is b.core
    ea, eb = a.sample(), b.sample()
    assert [e.event for e in ea] == [e.event for e in eb]


def test_reduced_precision_streams_run(net):
    from notochord_rt.engine.cores.quant import available_precisions

    for prec in available_precisions():
        core = FastCore(net, prec, min_reduced=0)
        st = Streams(net, 3, seed=1, core=core)
        for _ in range(4):
            evs = st.sample(Constraints(note_on_map={1: range(60, 72)}))
            assert all(e.inst == 1 and 60 <= e.pitch < 72 for e in evs)
            st.feed_events([0, 1, 2], evs)
        assert st.step_count.tolist() == [4, 4, 4]


def test_bad_arguments(net):
    with pytest.raises(InputError, match="n must"):
        Streams(net, 0)
    st = Streams(net, 2, seed=0)
    with pytest.raises(InputError, match="idx"):
        st.feed([2], [1], [60], [0.1], [90])
    with pytest.raises(InputError, match="repeated"):
        st.feed([0, 0], [1, 1], [60, 61], [0.1, 0.1], [90, 90])
    with pytest.raises(InputError, match="lengths"):
        st.feed([0, 1], [1], [60], [0.1], [90])
    with pytest.raises(InputError):
        st.feed([0], [1], [60], [float("nan")], [90])
    assert st.step_count.tolist() == [0, 0]  # nothing fed on error
    with pytest.raises(InputError, match="one per stream"):
        st.sample([None])
    with pytest.raises(InputError, match="seed"):
        Streams(net, 2, seed=[1])
