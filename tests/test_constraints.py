"""Constraints, the vectorised support, guards and the drawing helpers (no network)."""

import math

import numpy as np
import pytest
from tiny import tiny_model

from notochord_rt import events as ev
from notochord_rt.engine.sampling.atoms import integer_ranges
from notochord_rt.engine.sampling.constraints import Constraints, Soft, intervals, per_inst
from notochord_rt.engine.sampling.draw import (
    categorical,
    mixture_log_prob,
    mixture_mass,
    reweight,
    sample_mixture,
    truncate_quantile,
)
from notochord_rt.engine.sampling.held import HeldNotes
from notochord_rt.engine.sampling.support import build_support, compile_constraints
from notochord_rt.errors import InputError, NoPossibleEvents


def support(cons=None, held=None):
    return build_support(compile_constraints(cons or Constraints()), held or HeldNotes())


def held_notes(*cells, elapsed=0.0, ages=None):
    h = HeldNotes()
    for k, (i, p) in enumerate(cells):
        h.note_on(i, p)
        if ages is not None:
            h.onset[i, p] = elapsed - ages[k]
    h.elapsed = elapsed
    return h


# -- validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw,needle", [
    ({"note_on_map": {0: [60]}}, "note_on_map"),
    ({"note_on_map": {1: [128]}}, "note_on_map"),
    ({"note_off_map": [1, 2]}, "note_off_map"),
    ({"inst": 321}, "inst"),
    ({"pitch": -1}, "pitch"),
    ({"time": float("nan")}, "time"),
    ({"vel": 200}, "vel"),
    ({"min_time": -math.inf}, "min_time"),
    ({"min_time": float("nan")}, "min_time"),
    ({"max_time": float("nan")}, "max_time"),
    ({"time_ranges": [(1, 0)]}, "time_ranges"),
    ({"time_ranges": [(0, 1), (0.5, 2)]}, "time_ranges"),
    ({"vel_ranges": [(1, 10, -1)]}, "vel_ranges"),
    ({"max_polyphony": {1: -1}}, "max_polyphony"),
    ({"min_duration": float("nan")}, "min_duration"),
    ({"pitch_temp": -1}, "pitch_temp"),
    ({"timing_temp": math.inf}, "timing_temp"),
    ({"chord_spread": -0.5}, "chord_spread"),
    ({"motif_weight": math.inf}, "motif_weight"),
    ({"truncate_quantile_pitch": (0.8, 0.2)}, "truncate_quantile_pitch"),
    ({"steer_density": 2}, "steer_density"),
    ({"inst_weights": {5: -1}}, "inst_weights"),
    ({"external": {400}}, "external"),
    ({"order": "iptt"}, "order"),
    ({"penalty": {"nonsense": 1}}, "nonsense"),
    ({"note_on_map": np.zeros((5, 5), bool)}, "note_on_map"),
])
def test_validate_names_the_bad_field(kw, needle):
    with pytest.raises(InputError, match=needle):
        Constraints(**kw).validate()


def test_intervals_sorted_and_weighted():
    arr = intervals([(2, 3, 0.5), (0, 1)], "x")
    assert arr.tolist() == [[0, 1, 1], [2, 3, 0.5]]


def test_per_inst_scalar_and_dict():
    assert np.all(per_inst(3.0, "max_polyphony") == 3.0)
    arr = per_inst({5: 2}, "max_polyphony")
    assert arr[5] == 2 and arr[6] == 128


# -- support: maps, held notes, fixed values -------------------------------------------------
def test_default_support_is_every_real_note_on():
    sup = support()
    assert sup.marginal_inst().sum() == ev.NUM_INSTRUMENTS and not sup.marginal_inst()[0]
    assert sup.marginal_pitch().sum() == ev.NUM_PITCHES and not sup.marginal_pitch()[128]
    has_off, on = sup.vel_pieces()
    assert not has_off and on.tolist() == [[1, 127, 1]]


def test_held_notes_are_removed_from_note_on_and_are_the_note_offs():
    h = held_notes((1, 60), (2, 61))
    sup = support(Constraints(note_on_map={1: [60, 62]}), h)
    atom = sup.atoms[0]
    assert atom.on[1, 62] and not atom.on[1, 60]
    # note-offs default to the held notes of the note-on instruments only
    assert atom.off[1, 60] and not atom.off[2, 61]
    assert int(atom.off.sum()) == 1 and int(atom.on.sum()) == 1


def test_note_off_map_intersects_held():
    h = held_notes((1, 60), (2, 61))
    sup = support(Constraints(note_on_map={}, note_off_map={2: [61, 62], 3: [1]}), h)
    assert np.flatnonzero(sup.marginal_inst()).tolist() == [2]
    assert np.flatnonzero(sup.marginal_pitch()).tolist() == [61]


def test_autoset_fixes_single_values():
    sup = support(Constraints(note_on_map={7: [64]}, vel_ranges=[(80, 80)],
                              time_ranges=[(0.25, 0.25)]))
    assert sup.autoset() and sup.fixed == {"i": 7, "p": 64, "t": 0.25, "v": 80}


def test_fixed_zero_velocity_means_note_off():
    h = held_notes((3, 50))
    sup = support(Constraints(vel=0), h)
    sup.autoset()
    assert sup.fixed == {"i": 3, "p": 50, "v": 0.0}


def test_zero_instrument_weight_excludes_the_instrument():
    sup = support(Constraints(note_on_map={1: [60], 2: [60]}, inst_weights={1: 0.0, 2: 3.0}))
    assert np.flatnonzero(sup.marginal_inst()).tolist() == [2]
    with pytest.raises(NoPossibleEvents, match="inst_weights"):
        support(Constraints(note_on_map={1: [60]}, inst_weights={1: 0.0}))


def test_mask_note_maps_are_accepted():
    grid = np.zeros((321, 129), bool)
    grid[5, 10:20] = True
    sup = support(Constraints(note_on_map=grid))
    assert np.flatnonzero(sup.marginal_inst()).tolist() == [5]
    assert np.flatnonzero(sup.marginal_pitch()).tolist() == list(range(10, 20))


def test_per_instrument_velocity_limits():
    cons = Constraints(note_on_map={1: [60], 2: [60]}, min_vel={1: 100}, max_vel={2: 10})
    sup = support(cons)
    _, on = sup.vel_pieces()
    assert on.tolist() == [[1, 10, 1], [100, 127, 1]]
    sup.fix_vel(50)
    assert sup.atoms == []  # neither instrument allows velocity 50
    sup = support(cons)
    sup.fix_vel(110)
    assert np.flatnonzero(sup.marginal_inst()).tolist() == [1]


def test_integer_ranges_merge_and_clip():
    pairs = np.array([[0.5, 127.0]])
    user = np.array([[0.2, 3.7, 1.0], [10.0, 200.0, 2.0]])
    assert integer_ranges(pairs, user).tolist() == [[1, 3, 1], [10, 127, 2]]
    assert len(integer_ranges(np.array([[5.2, 5.8]]), np.array([[1, 127, 1.0]]))) == 0


# -- impossible requests ----------------------------------------------------------------------
@pytest.mark.parametrize("kw,held,needle", [
    ({"note_on_map": {1: [60]}, "note_off_map": {}}, [(1, 60)], "note_on_map"),
    ({"vel": 0}, [], "vel"),
    ({"note_on_map": {1: [60]}, "vel_ranges": [(0.1, 0.4)]}, [], "vel_ranges"),
    ({"min_time": 11.0}, [], "min_time"),
    ({"time": 0.5, "min_time": 1.0}, [], "time"),
    ({"time_ranges": [(12, 13)]}, [], "time_ranges"),
    ({"inst": 5, "pitch": 60, "note_on_map": {5: [61]}}, [], "pitch"),
])
def test_no_possible_events_names_constraints(kw, held, needle):
    with pytest.raises(NoPossibleEvents, match=needle):
        support(Constraints(**kw), held_notes(*held))


# -- guarantees and soft constraints ---------------------------------------------------------
def test_stuck_note_is_released_at_min_time():
    h = held_notes((1, 60), (2, 70), elapsed=10.0, ages=[3.0, 1.0])
    sup = support(Constraints(max_duration=2.5, min_time=0.2), h)
    sup.autoset()
    assert sup.forced == Soft.MAX_DUR.value
    assert sup.fixed == {"i": 1, "p": 60, "t": 0.2, "v": 0.0}


def test_external_notes_are_never_forced():
    h = held_notes((1, 60), elapsed=10.0, ages=[3.0])
    sup = support(Constraints(max_duration=2.5, external={1}), h)
    assert sup.forced is None


def test_over_polyphony_forces_note_off_of_a_held_pitch():
    # reference bug: this case returned time=-inf and an orphan note-off
    h = held_notes((1, 60), (1, 64))
    sup = support(Constraints(max_polyphony=1), h)
    sup.autoset()
    assert sup.forced == Soft.MAX_POLY.value
    assert sup.fixed["i"] == 1 and sup.fixed["t"] == 0.0 and sup.fixed["v"] == 0.0
    assert np.flatnonzero(sup.marginal_pitch()).tolist() == [60, 64]


def test_under_polyphony_forces_note_on():
    h = held_notes((1, 60))
    sup = support(Constraints(note_on_map={1: range(60, 72)}, min_polyphony=2), h)
    sup.autoset()
    assert sup.forced == Soft.MIN_POLY.value
    has_off, on = sup.vel_pieces()
    assert not has_off and len(on) and sup.fixed["i"] == 1


def test_at_max_polyphony_note_ons_are_dropped_first():
    h = held_notes((1, 60), (1, 62))
    sup = support(Constraints(note_on_map={1: range(60, 72)}, max_polyphony=2), h)
    has_off, on = sup.vel_pieces()
    assert has_off and len(on) == 0 and sup.broken == ()


def test_soft_constraints_break_in_order_of_cost():
    # at max polyphony (note-on costs 3) and, within the allowed times, the held note is
    # too young to end (note-off costs 2): the cheaper constraint is broken
    h = held_notes((1, 60), elapsed=1.0, ages=[0.1])
    cons = Constraints(note_on_map={1: [60, 61]}, max_polyphony=1, min_duration=1.0,
                       time_ranges=[(0.0, 0.5)])
    sup = support(cons, h)
    has_off, on = sup.vel_pieces()
    assert has_off and len(on) == 0 and sup.broken == (Soft.MIN_DUR.value,)
    # make breaking min_duration dearer than max_polyphony: the note-on wins instead
    cons.penalty[Soft.MIN_DUR] = 5.0
    sup = support(cons, h)
    has_off, on = sup.vel_pieces()
    assert not has_off and len(on) == 1 and sup.broken == (Soft.MAX_POLY.value,)
    # with more time allowed the note-off after its minimum duration costs nothing
    cons.time_ranges = None
    sup = support(cons, h)
    has_off, on = sup.vel_pieces()
    assert has_off and len(on) == 0 and sup.broken == ()
    assert sup.time_pieces()[:, 0].min() == pytest.approx(0.9)


def test_max_duration_deadline_penalises_late_times():
    h = held_notes((1, 60), elapsed=5.0, ages=[1.0])
    sup = support(Constraints(max_duration=3.0), h)
    pieces = sup.time_pieces()
    assert pieces[:, 1].max() == pytest.approx(2.0)


def test_max_time_is_soft():
    sup = support(Constraints(max_time=0.5, time_ranges=[(1.0, 2.0)]))
    # nothing fits below max_time: the soft constraint is broken instead of failing
    assert sup.broken == (Soft.MAX_TIME.value,)
    assert sup.time_pieces()[:, 0].min() == 1.0
    sup = support(Constraints(max_time=0.5))
    assert sup.time_pieces()[:, 1].max() == 0.5 and sup.broken == ()


def test_support_cost_does_not_depend_on_instrument_count():
    # masks, not per-instrument objects: one atom regardless of how many instruments
    many = support(Constraints(max_time=1.0))
    few = support(Constraints(note_on_map={1: [60]}, max_time=1.0))
    assert len(many.atoms) == len(few.atoms) == 1


# -- drawing helpers ---------------------------------------------------------------------------
def test_categorical_never_returns_masked_class():
    rng = np.random.default_rng(0)
    logits = np.array([50.0, -50.0, 0.0, 10.0])
    allowed = np.array([False, True, False, False])
    assert {categorical(logits, allowed, rng) for _ in range(50)} == {1}
    lw = np.array([0.0, -np.inf, 0.0, 0.0])
    # all allowed classes weighted to zero: falls back to the mask, still allowed
    assert categorical(logits, allowed, rng, log_weights=lw) == 1


def test_categorical_index_and_top_p():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([0.1, 0.6, 0.3]))
    allowed = np.ones(3, bool)
    assert categorical(logits, allowed, rng, index=0) == 1
    assert categorical(logits, allowed, rng, index=1) == 2
    assert {categorical(logits, allowed, rng, top_p=0.5) for _ in range(30)} == {1}


def test_reweight_temperature_and_quantile():
    p = np.array([0.25, 0.5, 0.25])
    hot = reweight(p, 1e6)
    assert np.allclose(hot / hot.sum(), 1 / 3, atol=1e-4)
    q = truncate_quantile(np.array([0.25, 0.25, 0.25, 0.25]), 0.3, 0.7)
    assert np.allclose(q, [0, 0.2, 0.2, 0])


def _mix(k=4, seed=0):
    r = np.random.default_rng(seed)
    log_pi = np.log(r.dirichlet(np.ones(k)))
    return np.stack((log_pi, r.uniform(0, 3, k), r.uniform(0.5, 20, k)))


def test_mixture_mass_matches_numeric_integral():
    mix = _mix()
    xs = np.linspace(0.5, 1.7, 400001)
    pi, loc, s = np.exp(mix[0]), mix[1], mix[2]
    z = (xs[:, None] - loc) * s
    sig = 1 / (1 + np.exp(-np.clip(z, -500, 500)))
    dens = (pi * s * sig * (1 - sig)).sum(1)
    numeric = np.trapezoid(dens, xs)
    assert mixture_mass(mix, 0.5, 1.7) == pytest.approx(numeric, rel=1e-4)
    assert mixture_mass(mix, -math.inf, math.inf) == pytest.approx(1.0)


def test_truncated_mixture_samples_stay_inside_and_match_cdf():
    mix = _mix(seed=1)
    rng = np.random.default_rng(2)
    xs = np.array([sample_mixture(mix, 0.5, 2.0, 0.5, 2.0, rng) for _ in range(4000)])
    assert xs.min() >= 0.5 and xs.max() <= 2.0
    # empirical CDF at the truncated median-ish point matches the model's
    total = mixture_mass(mix, 0.5, 2.0)
    for x in (0.8, 1.2, 1.6):
        expected = mixture_mass(mix, 0.5, x) / total
        assert np.mean(xs <= x) == pytest.approx(expected, abs=0.03)


def test_mixture_sampling_in_far_tail_is_finite():
    mix = np.stack((np.zeros(1), np.zeros(1), np.full(1, 2000.0)))
    rng = np.random.default_rng(0)
    x = sample_mixture(mix, 5.0, 6.0, 5.0, 6.0, rng)
    assert 5.0 <= x <= 6.0 and math.isfinite(x)
    # censored lower bin: P(x <= 5 ms) = sigmoid(0.005 * 2000)
    expected = -math.log1p(math.exp(-10.0))
    assert mixture_log_prob(mix, 0.0, 0.0, 10.0, 0.01) == pytest.approx(expected, rel=1e-9)


def test_chord_spread_narrows_only_the_models_now():
    from notochord_rt.engine.sampling.draw import TOGETHER, narrow_together

    mix = np.stack((np.log([0.3, 0.3, 0.4]), np.array([0.002, TOGETHER, 0.25]),
                    np.array([100.0, 2000.0, 60.0])))
    out = narrow_together(mix, 0.25)
    np.testing.assert_array_equal(out[:2], mix[:2])  # weights and locations kept
    assert out[2].tolist() == [400.0, 2000.0, 60.0]  # only the component under 10 ms
    assert mix[2, 0] == 100.0  # a new array
    # 0: at the location itself (a finite, huge sharpness), still a valid mixture
    rng = np.random.default_rng(0)
    zero = narrow_together(mix, 0.0)
    xs = [sample_mixture(zero, 0.0015, 0.0025, 0.0, 1.0, rng) for _ in range(20)]
    assert all(abs(x - 0.002) < 1e-4 for x in xs)
    # through the sampler: the time row it draws from carries the narrowed widths
    model = tiny_model(3)
    model.reset()
    model.feed(1, 60, 0.0, 80)
    rows = {s: model.sample(Constraints(chord_spread=s, inst=1, vel=80.0),
                            return_params=True).params["t"] for s in (1.0, 0.5)}
    now = rows[1.0][1] < TOGETHER
    np.testing.assert_allclose(rows[0.5][2][now], 2.0 * rows[1.0][2][now])
    np.testing.assert_allclose(rows[0.5][2][~now], rows[1.0][2][~now])
    np.testing.assert_allclose(rows[0.5][:2], rows[1.0][:2])


def test_timing_temperature_zero_returns_location():
    mix = np.stack((np.log([0.5, 0.5]), np.array([1.0, 3.0]), np.array([5.0, 5.0])))
    rng = np.random.default_rng(0)
    vals = {sample_mixture(mix, 0.0, 10.0, 0.0, 10.0, rng, temp=0.0) for _ in range(40)}
    assert vals == {1.0, 3.0}
    vals = {sample_mixture(mix, 2.0, 10.0, 0.0, 10.0, rng, temp=0.0) for _ in range(20)}
    assert vals == {3.0}
