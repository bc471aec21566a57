"""The model warm-up before the first played note (issue 16): throw-away calls on a saved
state, restored exactly — what is sampled next is what would have been sampled without."""

from __future__ import annotations

from tiny import tiny_model

from notochord_rt import Constraints
from notochord_rt.apps.live.warmup import warm_up


def _stream(warm: bool):
    model = tiny_model(0, init="default", sampler_seed=0)
    model.reset(seed=3)
    model.feed(1, 60, 0.1, 80.0)  # a held note the warm-up must not disturb
    if warm:
        assert warm_up(model) > 0
    held = dict(model.held_notes)
    out = []
    for _ in range(6):
        e = model.sample(Constraints(max_duration=1.0))
        model.feed(e.inst, e.pitch, e.time, e.vel)
        out.append((e.inst, e.pitch, round(e.time, 9), round(e.vel, 6)))
    return held, out


def test_warm_up_leaves_the_stream_exactly_as_it_was():
    held_cold, cold = _stream(False)
    held_warm, warm = _stream(True)
    assert held_warm.keys() == held_cold.keys() == {(1, 60)}
    assert warm == cold


def test_warm_up_skips_a_model_without_state():
    class Bare:
        def sample(self, cons):  # pragma: no cover - must not be called
            raise AssertionError("sampled")

    assert warm_up(Bare()) == 0.0


def test_settle_memory_takes_the_full_collection_before_the_music():
    import gc
    import weakref

    from notochord_rt.apps.live.warmup import settle_memory, unsettle_memory

    class Cycle:
        pass

    a, b = Cycle(), Cycle()
    a.other, b.other = b, a  # garbage only a collection finds
    gone = weakref.ref(a)
    del a, b
    try:
        settle_memory()
        assert gone() is None  # collected first, not frozen
        assert gc.get_freeze_count() > 0
    finally:
        unsettle_memory()
    assert gc.get_freeze_count() == 0
