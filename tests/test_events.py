import numpy as np
import pytest

from notochord_rt import events as ev


def test_instrument_space_partitions_ids():
    ids = np.arange(1, ev.NUM_INSTRUMENTS + 1)
    drum = ev.is_drum(ids)
    anon = ev.is_anonymous(ids)
    melodic = ev.is_melodic(ids)
    assert drum.sum() == 128 + 32 and anon.sum() == 64
    assert not np.any(drum & melodic) and np.all(drum | melodic)
    assert ev.N_INST_CLASSES == 321 and ev.N_PITCH_CLASSES == 129


@pytest.mark.parametrize(
    "inst,drum,anon",
    [(1, False, False), (128, False, False), (129, True, False), (256, True, False),
     (257, False, True), (288, False, True), (289, True, True), (320, True, True)],
)
def test_boundaries(inst, drum, anon):
    assert bool(ev.is_drum(inst)) is drum
    assert bool(ev.is_anonymous(inst)) is anon


def test_program_round_trip():
    for program in range(128):
        assert ev.program_of(ev.instrument_from_program(program)) == program
        assert ev.program_of(ev.instrument_from_program(program, drum=True)) == program
    assert ev.program_of(300) is None
    with pytest.raises(ValueError):
        ev.instrument_from_program(128)


def test_parse_instrument():
    assert ev.parse_instrument("violin") == 41
    assert ev.parse_instrument("Acoustic Grand Piano") == 1
    assert ev.parse_instrument("drums") == ev.STANDARD_KIT
    assert ev.parse_instrument("anon2") == 258
    assert ev.parse_instrument("anondrums") == 289
    assert ev.parse_instrument("33") == 33
    assert ev.parse_instrument("piano") == 1
    assert ev.parse_instrument("Bass") == 33
    with pytest.raises(ValueError, match="unknown instrument"):
        ev.parse_instrument("kazoo")
    with pytest.raises(ValueError, match="ambiguous"):
        ev.parse_instrument("acoustic")
    with pytest.raises(ValueError):
        ev.parse_instrument(0)


def test_event_arrays_sort_and_deltas():
    arr = ev.EventArrays.build([1, 1, 2], [60, 60, 40], [1.0, 1.0, 0.5], [80, 0, 90])
    s = arr.sorted()
    assert list(s.time) == [0.5, 1.0, 1.0]
    assert list(s.vel) == [90, 0, 80]  # note-off before note-on at equal times
    assert np.allclose(s.deltas(), [0.5, 0.5, 0.0])
    back = ev.EventArrays.from_events(s.to_events())
    assert np.allclose(back.time, s.time) and list(back.inst) == list(s.inst)


def test_midi_velocity_is_one_clamp_for_scalars_and_arrays():
    vals = [0.0, 0.49, 0.5, 1.4, 2.5, 64.5, 126.6, 127.4, 200.0]
    want = [0, 0, 1, 1, 2, 64, 127, 127, 127]
    assert [ev.midi_velocity(v) for v in vals] == want
    assert ev.midi_velocities(np.array(vals)).tolist() == want
    assert ev.note_on_velocity(0.0) == 1 and ev.note_on_velocity(300) == 127


def test_sub_event_orders_are_named_once_and_are_permutations():
    assert "".join(n[0] for n in ev.SUB_EVENTS) == ev.CANONICAL_ORDER == "iptv"
    for order in (ev.SAMPLING_ORDER, ev.SCORE_ORDER):
        assert sorted(order) == sorted(ev.CANONICAL_ORDER)
    assert ev.SUB_EVENT_NAMES["v"] == "vel"
