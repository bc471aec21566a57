"""Hostile and edge input to the engine (issue 10, "engine edges"), on a tiny real model.

Every bad ``Constraints`` field, ``feed`` or ``query`` argument raises ``InputError``
naming the argument (never a raw ``TypeError`` / ``AttributeError``, never a silent
coercion of text); times are finite and bounded, fed or sampled; a soft constraint never
overrides a hard one; a forced event names everything it breaks.
"""

import dataclasses
import math

import numpy as np
import pytest
from tiny import tiny_model

from notochord_rt.engine.cores.core import InferenceCore
from notochord_rt.engine.sampling.constraints import FIELDS, KINDS, Constraints, Field
from notochord_rt.engine.sampling.held import MAX_CLOCK_STEP, HeldNotes
from notochord_rt.engine.sampling.query import DIRECT, query_constraints
from notochord_rt.engine.sampling.sampler import Notochord
from notochord_rt.engine.sampling.streams import Streams
from notochord_rt.engine.sampling.support import compile_constraints
from notochord_rt.errors import InputError, NoPossibleEvents

NAN, INF = float("nan"), math.inf


@pytest.fixture(scope="module")
def net() -> Notochord:
    return tiny_model(3)


@pytest.fixture
def model(net) -> Notochord:
    net.use_core("module")
    net.reset(seed=0)
    return net


# -- the field table -------------------------------------------------------------------------
def test_fields_table_covers_every_field_and_accepts_the_defaults():
    names = [f.name for f in dataclasses.fields(Constraints)]
    assert list(FIELDS) == names  # one row per field, in declaration order
    default = Constraints()
    for name, row in FIELDS.items():
        assert isinstance(row, Field) and row.name == name and row.kind in KINDS
        assert row.role in ("hard", "soft", "steer", "setting")
        row.convert(getattr(default, name))  # the defaults are valid
    assert FIELDS["time"].hi == 10.0 and FIELDS["time"].finite
    assert FIELDS["max_polyphony"].role == "soft" and FIELDS["time_ranges"].role == "hard"


def test_field_convert_gives_canonical_values_and_uses_the_callers_name():
    assert FIELDS["external"].convert([5, np.int64(6)]) == frozenset({5, 6})
    assert FIELDS["note_on_map"].convert({1: range(60, 62)}) == {1: (60, 61)}
    assert FIELDS["time_ranges"].convert([(2, 3, 0.5), (0, 1)]) == [(0, 1, 1), (2, 3, 0.5)]
    assert FIELDS["max_duration"].convert({3: 2}) == {3: 2.0}
    assert FIELDS["truncate_quantile_time"].convert([0, 0.5]) == (0.0, 0.5)
    assert FIELDS["steer_density"].convert(None) is None
    with pytest.raises(InputError, match="^next_time"):
        FIELDS["time"].convert(INF, "next_time")
    with pytest.raises(InputError, match="^inst_temp must not be None"):
        FIELDS["inst_temp"].convert(None)


# -- every bad Constraints field: InputError naming it, through the real engine -------------
BAD_FIELDS = [
    # the findings
    ({"time": INF}, "time"),
    ({"note_on_map": {1: 60}}, "note_on_map"),
    ({"time_ranges": 5}, "time_ranges"),
    ({"penalty": [1]}, "penalty"),
    ({"inst_weights": [1]}, "inst_weights"),
    ({"external": 5}, "external"),
    ({"max_polyphony": "3"}, "max_polyphony"),
    # more of the same families
    ({"time": 10.5}, "time"),
    ({"time": -INF}, "time"),
    ({"time": "0.1"}, "time"),
    ({"time": True}, "time"),
    ({"vel": NAN}, "vel"),
    ({"vel": "64"}, "vel"),
    ({"inst": True}, "inst"),
    ({"inst": 1.0}, "inst"),
    ({"inst": "1"}, "inst"),
    ({"pitch": np.float64(60)}, "pitch"),
    ({"pitch": False}, "pitch"),
    ({"note_on_map": {1: "60"}}, "note_on_map"),
    ({"note_on_map": {"1": [60]}}, "note_on_map"),
    ({"note_on_map": {1: [True]}}, "note_on_map"),
    ({"note_on_map": {1: [[60]]}}, "note_on_map"),
    ({"note_off_map": 3}, "note_off_map"),
    ({"note_on_map": np.ones((321, 129), dtype=np.int8)}, "note_on_map"),
    ({"time_ranges": "ab"}, "time_ranges"),
    ({"time_ranges": [("0", "1")]}, "time_ranges"),
    ({"time_ranges": [(0, NAN)]}, "time_ranges"),
    ({"time_ranges": [(0, 1, INF)]}, "time_ranges"),
    ({"time_ranges": [5]}, "time_ranges"),
    ({"vel_ranges": [(1, 2, 3, 4)]}, "vel_ranges"),
    ({"vel_ranges": {"lo": 1}}, "vel_ranges"),
    ({"min_time": "0.1"}, "min_time"),
    ({"min_time": INF}, "min_time"),
    ({"min_time": None}, "min_time"),
    ({"max_time": NAN}, "max_time"),
    ({"max_time": -1}, "max_time"),
    ({"min_vel": NAN}, "min_vel"),
    ({"max_vel": {1: "3"}}, "max_vel"),
    ({"max_polyphony": True}, "max_polyphony"),
    ({"max_polyphony": {1: NAN}}, "max_polyphony"),
    ({"min_polyphony": {0: 1}}, "min_polyphony"),
    ({"min_duration": -1}, "min_duration"),
    ({"max_duration": [1]}, "max_duration"),
    ({"penalty": {"max_time": NAN}}, "penalty"),
    ({"penalty": {"max_time": INF}}, "penalty"),
    ({"penalty": {3: 1}}, "penalty"),
    ({"inst_temp": NAN}, "inst_temp"),
    ({"pitch_temp": "1"}, "pitch_temp"),
    ({"vel_temp": None}, "vel_temp"),
    ({"truncate_quantile_time": "01"}, "truncate_quantile_time"),
    ({"truncate_quantile_vel": (0.2, NAN)}, "truncate_quantile_vel"),
    ({"truncate_quantile_pitch": (0.1, 0.2, 0.3)}, "truncate_quantile_pitch"),
    ({"index_pitch": True}, "index_pitch"),
    ({"index_pitch": 129}, "index_pitch"),
    ({"steer_density": "0.5"}, "steer_density"),
    ({"steer_density": NAN}, "steer_density"),
    ({"inst_weights": {1: NAN}}, "inst_weights"),
    ({"inst_weights": {1: "2"}}, "inst_weights"),
    ({"external": "12"}, "external"),
    ({"external": {True}}, "external"),
    ({"order": 5}, "order"),
    ({"order": ["i", "p", "t", "v"]}, "order"),
]


@pytest.mark.parametrize("kw,name", BAD_FIELDS)
def test_bad_constraints_field_is_an_input_error_naming_it(model, kw, name):
    with pytest.raises(InputError, match=name):
        Constraints(**kw).validate()
    with pytest.raises(InputError, match=name):  # and through the engine, nothing raw
        model.sample(Constraints(**kw))
    assert model.step_count == 0


def test_valid_values_are_still_accepted(model):
    for kw in ({"time": 10.0}, {"time": np.float32(0.5)}, {"inst": np.int64(5)},
               {"note_on_map": {np.int16(1): np.arange(60, 64)}}, {"max_time": INF},
               {"time_ranges": [(0.5, INF)]}, {"max_polyphony": np.int64(3)},
               {"max_duration": {1: INF}}, {"external": range(1, 3)},
               {"penalty": {"max_time": 1}}, {"truncate_quantile_time": [0.1, 0.9]},
               {"min_vel": 30, "max_vel": INF}, {"index_pitch": 0}):
        e = model.sample(Constraints(**kw))
        assert 1 <= e.inst <= 320 and 0.0 <= e.time <= 10.0


def test_hostile_sizes_are_refused_cheaply_with_a_short_message():
    with pytest.raises(InputError, match="note_on_map") as err:
        Constraints(note_on_map={1: range(10**12)}).validate()  # not materialised
    assert len(str(err.value)) < 200
    with pytest.raises(InputError, match="max_polyphony") as err:
        Constraints(max_polyphony=-(10**400)).validate()
    assert len(str(err.value)) < 200
    with pytest.raises(InputError, match="include_pitch"):
        query_constraints({"include_pitch": range(-(10**12), 10)})


def test_compiled_constraints_are_not_revalidated_per_event(model, monkeypatch):
    comp = compile_constraints(Constraints(note_on_map={1: range(40, 80)}, max_polyphony=3))

    def boom(self):
        raise AssertionError("validate() ran on the per-event path")

    monkeypatch.setattr(Constraints, "validate", boom)
    for _ in range(5):
        model.feed(**model.sample(comp).as_dict())


# -- feed ----------------------------------------------------------------------------------
@pytest.mark.parametrize("args,name", [
    ((1, 60, "0.1", 64), "time"),
    ((1, 60, True, 64), "time"),
    ((1, 60, -1e-9, 64), "time"),
    ((1, 60, NAN, 64), "time"),
    ((1, 60, INF, 64), "time"),
    ((1, 60, 1e309, 64), "time"),
    ((1, 60, np.array("0.1"), 64), "time"),
    ((1, 60, 0.1, "64"), "vel"),
    ((1, 60, 0.1, NAN), "vel"),
    ((1, 60, 0.1, False), "vel"),
    ((True, 60, 0.1, 64), "inst"),
    (("1", 60, 0.1, 64), "inst"),
    ((1, 60.5, 0.1, 64), "pitch"),
    ((1, None, 0.1, 64), "pitch"),
])
def test_bad_feed_is_an_input_error_naming_the_argument(model, args, name):
    with pytest.raises(InputError, match=name):
        model.feed(*args)
    assert model.step_count == 0 and model.held_notes == {}


def test_feed_accepts_numpy_scalars_and_plain_ints(model):
    model.feed(np.int64(1), np.int16(60), np.float32(0.25), np.int64(64))
    model.feed(1.0, 60.0, 0, 0)  # integral floats for ids, ints for time / vel
    assert model.step_count == 2 and model.held_notes == {}
    assert model.current_time == pytest.approx(0.25)
    with pytest.raises(InputError, match="time") as err:
        model.feed(1, 60, 10**400, 64)
    assert len(str(err.value)) < 200


def test_streams_feed_refuses_text_times(net):
    st = Streams(net.net, 2, seed=0)
    with pytest.raises(InputError, match="time"):
        st.feed([0, 1], [1, 1], [60, 61], ["0.1", "0.2"], [64, 64])
    assert st.step_count.tolist() == [0, 0] and st.held_notes(0) == {}


class RecordingCore:
    """Forwards to a real core and records every time the network is fed or embeds."""

    def __init__(self, inner: InferenceCore) -> None:
        self.inner, self.times = inner, []

    def initial_state(self):
        return self.inner.initial_state()

    def feed(self, state, inst, pitch, time, vel):
        self.times.append(time)
        return self.inner.feed(state, inst, pitch, time, vel)

    def context(self, state):
        return self.inner.context(state)

    def embed(self, sub, value):
        if sub == "t":
            self.times.append(value)
        return self.inner.embed(sub, value)

    def head(self, sub, x):
        return self.inner.head(sub, x)

    def end_prob(self, state):
        return self.inner.end_prob(state)


def test_huge_fed_times_keep_the_clock_finite_and_max_duration_releasing(model):
    rec = RecordingCore(model.core)
    model.use_core(rec)
    model.reset()
    model.feed(1, 60, 0.0, 64)
    model.feed(1, 61, 1e308, 64)
    model.feed(1, 62, 1e308, 64)
    assert model.current_time == 2 * MAX_CLOCK_STEP
    ages = model.held_notes
    assert ages == {(1, 60): 2 * MAX_CLOCK_STEP, (1, 61): MAX_CLOCK_STEP, (1, 62): 0.0}
    cons = compile_constraints(Constraints(note_on_map={2: range(40, 80)}, max_duration=1.0))
    released = []
    for _ in range(60):
        e = model.sample(cons)
        if e.forced == "max_duration":
            released.append((e.inst, e.pitch))
        model.feed(**e.as_dict())
        for age in model.held_notes.values():
            assert math.isfinite(age)
        if (1, 62) in released:
            break
    # the two overdue notes at once (most overdue first), the young one after its second
    assert released[:2] == [(1, 60), (1, 61)] and (1, 62) in released
    assert all(math.isfinite(t) and 0.0 <= t <= 10.0 for t in rec.times)


def test_held_notes_refuse_nan_steps():
    h = HeldNotes()
    with pytest.raises(InputError, match="time"):
        h.advance(NAN)
    h.advance(1e308)
    assert h.elapsed == MAX_CLOCK_STEP


# -- sampled times ---------------------------------------------------------------------------
def test_sampled_times_stay_inside_the_model_support(model):
    for kw in ({"min_time": 9.99}, {"time_ranges": [(9.5, INF)]},
               {"time_ranges": [(-INF, 0.0)]}, {"time": 10.0}, {"timing_temp": 0.0}):
        cons = compile_constraints(Constraints(**kw))
        for s in range(20):
            t = model.sample(cons, seed=s).time
            assert math.isfinite(t) and 0.0 <= t <= 10.0, (kw, t)


def test_a_min_time_beyond_the_support_is_impossible_not_clamped(model):
    with pytest.raises(NoPossibleEvents, match="min_time"):
        model.sample(Constraints(min_time=11.0))


# -- soft never overrides hard; everything broken is listed -------------------------------
def test_min_polyphony_keeps_the_hard_time_ranges_and_fixed_velocity(model):
    model.feed(1, 60, 0.0, 64)
    e = model.sample(Constraints(min_polyphony=2, time_ranges=[(1.0, 2.0)], vel=33,
                                 note_on_map={1: range(50, 70)}))
    assert e.forced == "min_polyphony" and e.is_note_on and e.inst == 1
    assert 1.0 <= e.time <= 2.0 and e.time == 1.0  # the earliest allowed time
    assert e.vel == 33 and 50 <= e.pitch < 70 and e.broken == ()


def test_min_polyphony_lists_the_soft_constraints_it_breaks(model):
    model.feed(1, 60, 0.0, 64)
    e = model.sample(Constraints(min_polyphony=2, max_polyphony=1, time_ranges=[(1.0, 2.0)],
                                 max_time=0.5, note_on_map={1: range(50, 70)}))
    assert e.forced == "min_polyphony" and e.time == 1.0
    assert e.broken == ("max_polyphony", "max_time")


def test_a_stuck_note_release_keeps_time_ranges_and_names_what_it_overrides(model):
    model.feed(1, 60, 0.0, 64)
    model.feed(1, 62, 2.0, 64)  # (1, 60) is now 2 s old
    e = model.sample(Constraints(max_duration=1.5, note_off_map={}, vel=80, inst=2,
                                 time_ranges=[(0.3, 0.4)]))
    assert e.forced == "max_duration" and (e.inst, e.pitch, e.vel) == (1, 60, 0.0)
    assert e.time == pytest.approx(0.3)
    assert e.broken == ("inst", "note_off_map", "vel")


def test_the_release_threshold_uses_the_earliest_allowed_time(model):
    model.feed(1, 60, 0.0, 64)
    model.feed(2, 62, 0.9, 64)  # (1, 60) is 0.9 s old: 0.1 s left, but nothing before 0.5 s
    e = model.sample(Constraints(max_duration={1: 1.0}, time_ranges=[(0.5, 1.0)]))
    assert e.forced == "max_duration" and (e.inst, e.pitch) == (1, 60) and e.time == 0.5
    assert e.broken == ()  # the remedy is not reported as a break


def test_a_release_names_other_notes_left_past_their_deadline(model):
    model.feed(1, 60, 0.0, 64)
    model.feed(1, 61, 0.0, 64)
    model.feed(1, 62, 0.5, 64)
    e = model.sample(Constraints(max_polyphony={1: 1}, max_duration={1: 0.6},
                                 min_time=0.2))
    # (1, 60) and (1, 61) are 0.5 s old: within min_time of 0.6, so released first
    assert e.forced == "max_duration" and (e.inst, e.pitch) == (1, 60)
    assert e.broken == ("max_duration",)  # (1, 61) is still sounding past its deadline


def test_streams_report_forced_breaks_like_the_single_sampler(net):
    st = Streams(net.net, 2, seed=[0, 1])
    st.feed([0, 1], [1, 1], [60, 60], [0.0, 0.0], [64, 64])
    st.feed([0, 1], [1, 1], [62, 62], [2.0, 2.0], [64, 64])
    cons = Constraints(max_duration=1.5, note_off_map={}, time_ranges=[(0.3, 0.4)])
    for e in st.sample(cons):
        assert e.forced == "max_duration" and (e.inst, e.pitch) == (1, 60)
        assert e.time == pytest.approx(0.3) and e.broken == ("note_off_map",)


# -- query -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,name", [
    ({"include_pitch": "abc"}, "include_pitch"),
    ({"include_pitch": [60.5]}, "include_pitch"),
    ({"include_pitch": [True]}, "include_pitch"),
    ({"exclude_inst": {"x": 1}}, "exclude_inst"),
    ({"include_inst": 0}, "include_inst"),
    ({"include_drum": [200]}, "include_drum"),
    ({"min_time": NAN}, "min_time"),
    ({"min_time": "0.1"}, "min_time"),
    ({"min_time": INF}, "min_time"),
    ({"max_time": NAN}, "max_time"),
    ({"min_time": 0.5, "max_time": 0.2}, "max_time"),
    ({"min_vel": "3"}, "min_vel"),
    ({"max_vel": NAN}, "max_vel"),
    ({"next_time": INF}, "next_time"),
    ({"next_time": NAN}, "next_time"),
    ({"next_inst": "1"}, "next_inst"),
    ({"next_pitch": True}, "next_pitch"),
    ({"next_vel": "64"}, "next_vel"),
    ({"instrument_temp": NAN}, "instrument_temp"),
    ({"velocity_temp": "1"}, "velocity_temp"),
    ({"truncate_quantile_pitch": "ab"}, "truncate_quantile_pitch"),
    ({"index_pitch": 1.0}, "index_pitch"),
    ({"allow_anon": "no"}, "allow_anon"),
    ({"allow_end": "False"}, "allow_end"),
    ({"return_params": 2}, "return_params"),
    ({"seed": "1"}, "seed"),
    ({"seed": True}, "seed"),
])
def test_bad_query_argument_is_an_input_error_naming_it(model, kw, name):
    with pytest.raises(InputError, match=name):
        model.query(**kw)
    assert model.step_count == 0


def test_query_mapping_uses_the_field_table_and_keeps_valid_behaviour(model):
    assert set(DIRECT.values()) <= set(FIELDS)
    cons, order = query_constraints({"next_time": 0.25, "min_time": -3, "max_time": INF,
                                     "allow_anon": 0, "include_pitch": np.int64(60)})
    assert cons.time == 0.25 and cons.min_time == 0.0 and cons.time_ranges == [(0.0, INF)]
    assert order == "iptv"
    out = model.query(include_pitch=range(60, 72), min_time=0.1, max_time=0.5,
                      allow_end=1, return_params=True)
    assert 60 <= out["pitch"] < 72 and 0.1 <= out["time"] <= 0.5
    assert out["end"] in (0, 1) and out["pitch_params"].shape == (129,)
