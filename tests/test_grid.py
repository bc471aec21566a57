"""Beat-aware constraints (engine/sampling/grid.py): validation, grid points, and the
sampled onsets themselves — hard grids put every onset on the grid from any stream
position, soft ones raise the on-grid share, swing moves the off-beats."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_core import RandomCore
from tiny import tiny_model

from notochord_rt.engine.sampling.constraints import Constraints
from notochord_rt.engine.sampling.grid import BEAT_TOL, grid_points, grid_step
from notochord_rt.engine.sampling.support import compile_constraints
from notochord_rt.errors import InputError, NoPossibleEvents

_MODEL = None


def model(seed: int = 0):
    global _MODEL
    if _MODEL is None:
        _MODEL = tiny_model(sampler_seed=0)
    _MODEL.use_core("module")
    _MODEL.reset(seed=seed)
    return _MODEL


def off_grid(beats: float, step: float, swing: float = 0.0) -> float:
    """Distance in beats from ``beats`` to the nearest (swung) grid point."""
    pts = grid_points(beats - 2 * step - 1, 4 * step + 2, step, swing)
    return float(np.min(np.abs(pts - beats)))


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,needle", [
    ({"bpm": 0}, "bpm"), ({"bpm": -120}, "bpm"), ({"bpm": 1000}, "bpm"),
    ({"bpm": math.nan}, "bpm"), ({"bpm": "120"}, "bpm"), ({"bpm": math.inf}, "bpm"),
    ({"bpm": 120, "grid": "1/3"}, "grid"), ({"bpm": 120, "grid": 16}, "grid"),
    ({"bpm": 120, "grid": "1/16x"}, "grid"), ({"bpm": 120, "grid": "1/128"}, "grid"),
    ({"grid": "1/16"}, "grid"),
    ({"bpm": 120, "grid": "1/16", "swing": 1.5}, "swing"),
    ({"bpm": 120, "grid": "1/16", "swing": -0.1}, "swing"),
    ({"bpm": 120, "swing": 0.3}, "swing"),
    ({"bpm": 120, "grid": "1/8t", "swing": 0.3}, "swing"),
    ({"bpm": 120, "grid": "1/16", "grid_strength": 1.5}, "grid_strength"),
    ({"bpm": 120, "grid": "1/16", "grid_strength": math.nan}, "grid_strength"),
    ({"bpm": 120, "min_beats": -1}, "min_beats"),
    ({"bpm": 120, "min_beats": 2, "max_beats": 1}, "max_beats"),
    ({"min_beats": 1}, "min_beats"),
    ({"bpm": 120, "next_bar": 1}, "next_bar"), ({"next_bar": True}, "next_bar"),
    ({"bpm": 120, "beats_per_bar": 0}, "beats_per_bar"),
    ({"bpm": 120, "beat": math.inf}, "beat"),
    ({"inst_grid": {33: "1/8"}}, "inst_grid"),
    ({"bpm": 120, "inst_grid": {33: "1/7"}}, "inst_grid[33]"),
    ({"bpm": 120, "inst_grid": {999: "1/8"}}, "inst_grid key"),
    ({"bpm": 120, "inst_grid": "1/8"}, "inst_grid"),
    ({"bpm": 120, "inst_grid": {33: "1/8"}, "inst_swing": {41: 0.2}}, "inst_swing[41]"),
    ({"bpm": 120, "inst_grid": {33: "1/8t"}, "inst_swing": {33: 0.2}}, "inst_swing[33]"),
    ({"bpm": 120, "inst_grid": {33: "1/8"}, "inst_swing": {33: 1.2}}, "inst_swing"),
])
def test_bad_beat_fields_name_the_field(kw, needle):
    with pytest.raises(InputError) as e:
        Constraints(**kw).validate()
    assert str(e.value).startswith(needle), str(e.value)


def test_grid_steps_and_swing_positions():
    assert grid_step("1/4") == 1.0 and grid_step("1/16") == 0.25 and grid_step("1/1") == 4.0
    assert grid_step("1/8t") == pytest.approx(1 / 3) and grid_step("1/16t") == pytest.approx(1 / 6)
    assert np.allclose(grid_points(0.0, 2.0, 0.5), [0, 0.5, 1.0, 1.5, 2.0])
    # swing 1: the off-beat at 2/3 of the pair (triplet swing); 0.3 at 0.55
    assert np.allclose(grid_points(0.0, 1.0, 0.5, 1.0), [0, 2 / 3, 1.0])
    assert np.allclose(grid_points(0.1, 1.0, 0.5, 0.3), [0.55, 1.0])
    assert np.allclose(grid_points(1.0 - BEAT_TOL / 2, 0.3, 0.25), [1.0, 1.25])


def test_a_tempo_alone_changes_nothing():
    plain = compile_constraints(Constraints(min_time=0.1))
    timed = compile_constraints(Constraints(min_time=0.1, bpm=90))
    assert timed.beat is None and np.array_equal(plain.pieces, timed.pieces)
    assert compile_constraints(Constraints(bpm=120, max_beats=2)).max_time == 1.0


# -- sampled onsets -----------------------------------------------------------------------------
def sample_run(m, cons, n, feed_first=(), seed=0):
    """Onsets (stream seconds) of ``n`` sampled events after feeding ``feed_first``."""
    m.reset(seed=seed)
    for i, (dt, on) in enumerate(feed_first):
        m.feed(1, 60 + i % 12, dt, 80 if on else 0)
    comp = compile_constraints(cons)
    out = []
    for _ in range(n):
        e = m.sample(comp)
        m.feed(**e.as_dict())
        out.append((m.current_time, e))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(bpm=st.floats(40, 300), grid=st.sampled_from(["1/4", "1/8", "1/16", "1/8t", "1/16t"]),
       swing=st.floats(0, 1), prefix=st.lists(st.floats(0, 3), max_size=5),
       seed=st.integers(0, 2**16), min_time=st.sampled_from([0.0, 0.05, 0.3]),
       max_time=st.sampled_from([math.inf, 0.4]))
def test_hard_grid_puts_every_onset_on_the_grid(bpm, grid, swing, prefix, seed, min_time,
                                                max_time):
    if grid.endswith("t"):
        swing = 0.0
    m = model()
    m.use_core(RandomCore(seed))
    cons = Constraints(bpm=bpm, grid=grid, swing=swing, note_on_map={1: range(60, 72)},
                       max_polyphony=3, max_duration=1.5, min_time=min_time,
                       max_time=max_time)
    step = grid_step(grid)
    feed = [(dt, k % 2 == 0) for k, dt in enumerate(prefix)]
    for t, e in sample_run(m, cons, 30, feed, seed):
        assert off_grid(t * bpm / 60.0, step, swing) < 1e-6, (t, e)
        assert e.time >= min_time - 1e-9


def test_hard_grid_with_a_given_beat_position_and_compiled_reuse():
    m = model(3)
    for beat in (0.0, 0.37, 13.9):
        m.reset(seed=1)
        m.feed(1, 60, 0.123, 90)  # the stream clock is off the grid: the beat field wins
        comp = compile_constraints(Constraints(bpm=100, beat=beat, grid="1/8",
                                               note_on_map={1: range(48, 72)}))
        for _ in range(5):
            e = m.sample(comp)
            assert off_grid(beat + e.time * 100 / 60.0, 0.5) < 1e-6


def test_soft_strength_raises_the_on_grid_share():
    m = model()
    shares = []
    for s in (0.0, 0.5, 0.9):
        cons = Constraints(bpm=120, grid="1/16", grid_strength=s, min_time=0.02,
                           note_on_map={1: range(60, 72)}, max_polyphony=2)
        run = sample_run(m, cons, 150, seed=5)
        on = sum(off_grid(t * 2.0, 0.25) < 1e-6 for t, _ in run)
        shares.append(on / len(run))
    assert shares[0] < 0.05 and shares[0] < shares[1] < shares[2], shares
    assert shares[2] > 0.6, shares


def test_swing_moves_the_off_beats():
    m = model()
    cons = Constraints(bpm=120, grid="1/8", swing=0.6, min_time=0.05,
                       note_on_map={1: range(60, 72)}, max_polyphony=2)
    frac = [round((t * 2.0) % 1.0, 6) % 1.0 for t, _ in sample_run(m, cons, 120, seed=2)]
    assert set(frac) <= {0.0, 0.6}, set(frac)
    assert 0.6 in frac and 0.0 in frac  # the off-beats are there, and swung


def test_next_bar_and_beat_limits():
    m = model()
    m.reset(seed=0)
    m.feed(1, 60, 0.7, 90)  # beat 1.4 at 120 BPM: the next bar line is beat 4
    e = m.sample(Constraints(bpm=120, next_bar=True))
    assert e.time == pytest.approx(1.3)
    e = m.sample(Constraints(bpm=120, next_bar=True, beats_per_bar=3))
    assert e.time == pytest.approx(0.8)
    for _ in range(20):
        e = m.sample(Constraints(bpm=120, min_beats=1.0, grid="1/4"))
        assert e.time >= 0.5 - 1e-9 and off_grid(1.4 + e.time * 2, 1.0) < 1e-6


def test_no_grid_point_in_the_allowed_times_is_named():
    m = model()
    with pytest.raises(NoPossibleEvents, match="grid"):
        m.sample(Constraints(bpm=60, grid="1/4", time_ranges=[(0.2, 0.8)]))


def test_streams_share_the_grid():
    from notochord_rt.engine.sampling.streams import Streams

    streams = Streams(model(), 3, seed=[1, 2, 3])
    streams.feed([0, 1, 2], [1, 1, 1], [60, 61, 62], [0.11, 0.3, 0.77], [80, 80, 80])
    clock = np.array([0.11, 0.3, 0.77])
    cons = Constraints(bpm=132, grid="1/16", note_on_map={1: range(60, 72)}, max_polyphony=2)
    for _ in range(15):
        events = streams.sample(cons)
        streams.feed_events(None, events)
        clock += [e.time for e in events]
        for t in clock:
            assert off_grid(t * 132 / 60, 0.25) < 1e-6


@pytest.mark.parametrize("order", [None, "tivp", "pvti"])
def test_each_instrument_keeps_its_own_grid(order):
    """inst_grid: bass on swung eighths, piano on quarters, drums on the shared 1/16t grid;
    every event of each (note-offs included) on its own grid, the instrument drawn before
    the time whatever the order asked."""
    m = model()
    cons = Constraints(bpm=100, grid="1/16t", inst_grid={33: "1/8", 1: "1/4"},
                       inst_swing={33: 0.4}, order=order, max_polyphony=3,
                       note_on_map={33: range(30, 50), 1: range(55, 80), 129: range(35, 50)})
    steps = {33: (0.5, 0.4), 1: (1.0, 0.0), 129: (1 / 6, 0.0)}
    now, seen = 0.0, set()
    for _ in range(150):
        e = m.sample(cons)
        m.feed(e.inst, e.pitch, e.time, e.vel)
        now += e.time
        assert e.order.index("i") < e.order.index("t"), e.order
        step, swing = steps[e.inst]
        assert off_grid(now * 100 / 60, step, swing) < 1e-6, (e, now)
        seen.add((e.inst, e.is_note_on))
    assert {33, 1, 129} <= {i for i, _ in seen} and (33, False) in seen
    # without inst_grid the order is left alone
    assert m.sample(Constraints(bpm=100, grid="1/16", order="tivp")).order == "tivp"


def test_an_instrument_grid_with_no_point_in_the_allowed_times_is_named():
    cons = Constraints(bpm=60, inst_grid={1: "1/1"}, note_on_map={1: range(60, 62)},
                       time_ranges=[(0.1, 0.2)], beat=0.0)
    with pytest.raises(NoPossibleEvents, match="instrument 1's grid"):
        model().sample(cons)


def test_beat_fields_through_the_osc_values():
    from notochord_rt.apps.osc.values import decode, sample_constraints

    raw = {"bpm": 120, "grid": "1/8t", "grid_strength": 0.5, "next_bar": 1,
           "beats_per_bar": 3, "max_beats": "inf"}
    c = sample_constraints({k: decode(v) for k, v in raw.items()})
    assert (c.bpm, c.grid, c.grid_strength, c.next_bar, c.beats_per_bar) == (
        120.0, "1/8t", 0.5, True, 3)
    with pytest.raises(InputError, match="^grid"):
        sample_constraints({"bpm": 120, "grid": decode("1/5")})
    c = sample_constraints({"bpm": 120, "inst_grid": {"33": "1/8", "violin": "1/4"},
                            "inst_swing": {"33": 0.25}})
    assert c.inst_grid == {33: "1/8", 41: "1/4"} and c.inst_swing == {33: 0.25}
    with pytest.raises(InputError, match="inst_grid"):
        sample_constraints({"bpm": 120, "inst_grid": {"33": "1/5"}})
    with pytest.raises(InputError, match="^bpm"):
        sample_constraints({"bpm": decode("0")})
