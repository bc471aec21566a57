"""Musical defaults and the instrument balance (apps/musical.py), alone and in generate."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import tiny_model

from notochord_rt import events as ev
from notochord_rt.apps.musical import DEFAULTS, RAW, InstrumentBalance, defaults_for
from notochord_rt.apps.offline.generate import GenerateOptions, build_constraints, generate
from notochord_rt.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_raw_switches_everything_off():
    assert defaults_for(True) is RAW and defaults_for(False) is DEFAULTS
    assert RAW.pitch_temp == RAW.inst_temp == RAW.vel_temp == 1.0
    assert RAW.min_duration == 0 and not RAW.balance and RAW.min_durations() == {}
    mins = DEFAULTS.min_durations()
    assert mins[1] == DEFAULTS.min_duration and ev.STANDARD_KIT not in mins
    # generate ends notes sooner by default; raw sampling leaves the model's balance
    assert RAW.density == 0.5 and GenerateOptions.raw().steer_density == 0.5
    assert GenerateOptions().steer_density == DEFAULTS.density < 0.5


def test_balance_pulls_named_instruments_toward_equal_shares():
    bal = InstrumentBalance([1, 41, ev.STANDARD_KIT])
    assert bal.log_weights() is None  # nothing to correct before a few note-ons
    for _ in range(30):
        bal.played(ev.STANDARD_KIT)
    for _ in range(3):
        bal.played(1)
    lw = bal.log_weights()
    assert lw[ev.STANDARD_KIT] < 0 < lw[1] < lw[41]  # the silent one is pulled hardest
    assert lw[2] == 0  # instruments not named are left alone
    assert np.all(np.abs(lw) <= np.log(bal.max_weight) + 1e-12)


def test_balance_caps_drums_in_free_choice():
    bal = InstrumentBalance(drum_share=0.3)
    for k in range(40):
        bal.played(ev.STANDARD_KIT if k % 10 else 1)  # 90 % drums
    lw = bal.log_weights()
    assert lw[ev.STANDARD_KIT] < 0 and lw[ev.FIRST_ANON_DRUM] < 0
    assert lw[1] == 0
    fair = InstrumentBalance(drum_share=0.3)
    for k in range(40):
        fair.played([1, 33, 41, ev.STANDARD_KIT][k % 4])
    lw = fair.log_weights()  # 25 % drums, no melodic hog: the band is left alone
    assert np.all(lw[[1, 33, 41, ev.STANDARD_KIT]] == 0)


def test_balance_keeps_the_opening_band_in_free_choice():
    bal = InstrumentBalance(newcomer_weight=0.01, opening=12)
    for k in range(11):
        bal.played([1, 33][k % 2])
    before = bal.log_weights()
    assert before is None or before[41] == 0  # newcomers are welcome in the opening
    bal.played(1)
    lw = bal.log_weights()
    assert lw[41] == pytest.approx(np.log(0.01)) and lw[ev.STANDARD_KIT] < 0
    assert lw[1] == lw[33] == 0 and lw[0] == 0  # the band, and the start token
    bal.played(41)  # a newcomer that came in anyway is part of the band from then on
    assert bal.log_weights()[41] == 0
    off = InstrumentBalance(newcomer_weight=1.0, opening=0)
    for _ in range(20):
        off.played(1)
    assert off.log_weights() is None  # a solo is not pushed into an ensemble


def test_balance_lets_a_solo_stay_a_solo_but_no_one_hogs_an_ensemble():
    solo = InstrumentBalance(newcomer_weight=1.0)
    for _ in range(40):
        solo.played(74)
    assert solo.log_weights() is None
    band = InstrumentBalance(newcomer_weight=1.0)
    for k in range(40):
        band.played(74 if k % 10 else 41)  # 90 % flute
    lw = band.log_weights()
    assert lw[74] < 0 and lw[41] == 0


def test_balance_keeps_a_prompt_like_mix():
    bal = InstrumentBalance({1: 3.0, 33: 1.0})
    for k in range(40):
        bal.played(1 if k % 4 else 33)  # already 3:1
    lw = bal.log_weights()
    # weights are (wanted / share) ** strength: the shares are within 2.5 % of the mix
    assert lw is None or np.all(np.abs(lw[[1, 33]]) / bal.strength < 0.025)


@pytest.mark.parametrize("kwargs", [dict(drum_share=0), dict(drum_share=1.5),
                                    dict(memory=0), dict(max_weight=0.5),
                                    dict(newcomer_weight=0), dict(newcomer_weight=2.0),
                                    dict(opening=-1), dict(opening=1.5),
                                    dict(targets=[0]), dict(targets={1: -1.0})])
def test_balance_rejects_bad_settings(kwargs):
    with pytest.raises(InputError):
        InstrumentBalance(**kwargs)


def _counts(result, insts):
    e = result.events
    ons = e.inst[(e.vel > 0)]
    return [int((ons == i).sum()) for i in insts]


@pytest.mark.slow
def test_generate_balance_lets_every_named_instrument_play():
    insts = [1, 41, 74, ev.STANDARD_KIT]
    raw, balanced = [], []
    for seed in range(3):
        model = tiny_model(seed)
        length = dict(seconds=120, events=1500, seed=seed, instruments=insts)
        for out, opts in ((raw, GenerateOptions.raw(**length)),
                          (balanced, GenerateOptions(**length))):
            counts = _counts(generate(model, opts), insts)
            out.append(min(counts) / max(sum(counts), 1))
    # a random tiny model favours some instruments; the balance lifts the quietest one
    assert np.mean(balanced) > np.mean(raw) + 0.03


def _short_share(result) -> float:
    """Share of melodic notes shorter than 10 ms (note-on to its note-off)."""
    e = result.events
    start: dict[tuple[int, int], float] = {}
    short = total = 0
    for i, p, t, v in zip(e.inst.tolist(), e.pitch.tolist(), e.time.tolist(), e.vel.tolist()):
        if ev.is_drum(i):
            continue
        if v > 0:
            start[(i, p)] = t
        elif (i, p) in start:
            total += 1
            short += (t - start.pop((i, p))) < 0.01
    return short / max(total, 1)


def test_generate_min_duration_avoids_click_notes():
    model = tiny_model(3)
    insts = [1, 41]
    raw = generate(model, GenerateOptions.raw(events=400, seed=1, instruments=insts))
    musical = generate(model, GenerateOptions(events=400, seed=1, instruments=insts,
                                              min_duration=0.05))
    assert _short_share(raw) > 0.05  # the tiny model makes plenty of them
    assert _short_share(musical) < _short_share(raw) / 2


def test_generate_options_validate_min_duration():
    with pytest.raises(InputError, match="min_duration"):
        GenerateOptions(min_duration=-1).validate()
    with pytest.raises(InputError, match="min_duration"):
        GenerateOptions(min_duration=10.0, max_note_seconds=5.0).validate()


def test_osc_sample_fills_in_the_musical_defaults():
    from notochord_rt.apps.osc.values import sample_constraints

    cons = sample_constraints({}, DEFAULTS)
    assert cons.pitch_temp == DEFAULTS.pitch_temp and cons.vel_temp == DEFAULTS.vel_temp
    assert cons.min_duration == DEFAULTS.min_durations()
    mine = sample_constraints({"pitch_temp": 1.0, "min_duration": 0.2}, DEFAULTS)
    assert mine.pitch_temp == 1.0 and mine.min_duration == 0.2  # the client's values win
    assert cons.motif_weight == DEFAULTS.motif_weight != 1.0
    assert cons.chord_spread == DEFAULTS.chord_spread != 1.0
    assert cons.pulse_weight == DEFAULTS.pulse_weight != 1.0
    assert cons.max_stuck == DEFAULTS.max_stuck == 16
    raw = sample_constraints({}, None)
    assert raw.pitch_temp == 1.0 and raw.min_duration == 0.0
    assert raw.motif_weight == raw.chord_spread == raw.pulse_weight == 1.0
    assert raw.max_stuck == 0


def test_generate_cli_takes_the_sampling_weights_and_raw_resets_them():
    import argparse

    from notochord_rt.cli import generate as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--motif-weight", "5", "--chord-spread", "0", "--max-stuck", "4"])
    opts = cli._options(args, None)
    assert (opts.motif_weight, opts.chord_spread, opts.max_stuck) == (5.0, 0.0, 4)
    assert opts.pulse_weight == DEFAULTS.pulse_weight
    assert build_constraints(opts, None).max_stuck == 4
    opts = cli._options(parser.parse_args(["--raw"]), None)
    assert opts.motif_weight == opts.chord_spread == opts.pulse_weight == 1.0
    assert opts.max_stuck == 0 and cli._options(parser.parse_args([]), None).max_stuck == 16
    assert opts.steer_density == 0.5
    assert cli._options(parser.parse_args([]), None).steer_density == DEFAULTS.density
    dense = cli._options(parser.parse_args(["--raw", "--steer-density", "0.8"]), None)
    assert dense.steer_density == 0.8  # an explicit flag wins over --raw
    assert GenerateOptions().max_total_polyphony == 12
