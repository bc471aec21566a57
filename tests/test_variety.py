"""The stuck-pitch guard (``Constraints.max_stuck``, engine/sampling/variety.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import tiny_model

from notochord_rt.engine.sampling.constraints import Constraints
from notochord_rt.engine.sampling.variety import SPANS, stuck_pitches
from notochord_rt.errors import InputError


@pytest.mark.parametrize(("pitches", "banned"), [
    ([5] * 16, [5]),                      # one pitch: 16 note-ons fill the stretch
    ([5] * 15, []),
    ([1, 2] * 8, [2, 1]),                 # two pitches: 16 too
    ([1, 2] * 7 + [1], []),
    ([9] + [5] * 16, [5, 9]),             # 17 on {5, 9}: a third pitch is due
    ([1, 2, 3] * 10 + [1, 2], [2, 1, 3]),  # three pitches: 32
    ([1, 2, 3] * 10 + [1], []),
    ([1, 2, 3, 4] * 40, []),              # four pitches: never stuck
    ([], []),
])
def test_stuck_pitches_are_those_of_a_full_stretch(pitches, banned):
    assert stuck_pitches(pitches, 16) == banned


def test_stuck_pitches_off_and_scaled():
    assert stuck_pitches([5] * 100, 0) == []
    assert stuck_pitches([5] * 3, 3) == [5]
    assert stuck_pitches([5] * 2, 3) == []
    assert stuck_pitches([1, 2, 3, 1, 2, 3], 3) == [3, 2, 1]  # 2 x 3 on three pitches
    assert SPANS == (1, 1, 2)


def _feed(model, inst, pitches):
    model.reset()
    for p in pitches:
        model.feed(inst, p, 0.2, 90)
        model.feed(inst, p, 0.1, 0)


def _pitch_probs(model, cons):
    row = np.asarray(model.sample(cons, order="ivtp", return_params=True).params["p"])
    p = np.exp(row - row.max())
    return p / p.sum()


def test_guard_removes_only_the_stuck_pitches_of_a_melodic_instrument():
    model = tiny_model(4)
    _feed(model, 1, [60, 67] * 4)  # piano, 8 note-ons on two pitches
    fixed = dict(inst=1, vel=90.0, time=0.2)
    state = model.get_state()
    free = _pitch_probs(model, Constraints(**fixed))
    model.set_state(state)
    guarded = _pitch_probs(model, Constraints(max_stuck=8, **fixed))  # 8 on two pitches: full
    assert free[[60, 67]].sum() > 0 and guarded[[60, 67]].sum() == 0
    others = np.setdiff1d(np.arange(len(free)), [60, 67])
    np.testing.assert_allclose(guarded[others], free[others] / free[others].sum(), rtol=1e-9)
    model.set_state(state)
    loose = _pitch_probs(model, Constraints(max_stuck=9, **fixed))  # 9 allowed: not yet
    np.testing.assert_allclose(loose, free, rtol=1e-9)


def test_guard_never_picks_a_stuck_pitch_when_another_is_allowed():
    model = tiny_model(2)
    _feed(model, 1, [64] * 6)
    state = model.get_state()
    for seed in range(20):
        model.set_state(state)
        e = model.sample(Constraints(inst=1, vel=90.0, max_stuck=6,
                                     note_on_map={1: [64, 65]}), seed=seed, order="ivtp")
        assert e.pitch == 65
    # when the stuck pitch is the only one allowed, the guard gives way
    model.set_state(state)
    e = model.sample(Constraints(inst=1, vel=90.0, max_stuck=6, note_on_map={1: [64]}),
                     seed=0, order="ivtp")
    assert e.pitch == 64


def test_drums_are_exempt():
    model = tiny_model(4)
    _feed(model, 129, [36] * 8)  # standard kit: a kick drum loop
    fixed = dict(inst=129, vel=90.0, time=0.2)
    state = model.get_state()
    free = _pitch_probs(model, Constraints(**fixed))
    model.set_state(state)
    guarded = _pitch_probs(model, Constraints(max_stuck=2, **fixed))
    np.testing.assert_allclose(guarded, free, rtol=1e-9)


@pytest.mark.parametrize("bad", [-1, 1.5, "16", 1 << 20])
def test_bad_max_stuck_is_named(bad):
    with pytest.raises(InputError, match="max_stuck"):
        Constraints(max_stuck=bad).validate()


def test_generate_passes_max_stuck_unrounded_so_a_bad_value_is_named():
    from notochord_rt.apps.offline.generate import GenerateOptions, build_constraints

    assert build_constraints(GenerateOptions(max_stuck=5), None).max_stuck == 5
    with pytest.raises(InputError, match="max_stuck"):
        build_constraints(GenerateOptions(max_stuck=1.5), None)
