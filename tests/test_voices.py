"""The voice configuration of ``notochord-rt play`` (apps.voices) and its presets
(apps.presets): voices + controls -> Constraints, CC -> control values, presets that load
or fail with clear errors, voices from a MIDI prompt. Pure logic plus a tiny random model
to check that the constraints really hold when sampled."""

from __future__ import annotations

import numpy as np
import pytest
from midifiles import simple_song
from tiny import tiny_model

from notochord_rt import events as ev
from notochord_rt.apps.live.controls import ControlMap
from notochord_rt.apps.live.ports import ChannelMap
from notochord_rt.apps.play.presets import load_presets, parse_presets, prompt_rig
from notochord_rt.apps.play.voices import (
    BALANCE_MARGIN,
    MODES,
    ControlSpec,
    Rig,
    VoiceConfig,
    balance_weights,
    default_actions,
    default_controls,
    instrument_groups,
    short_name,
)
from notochord_rt.engine.sampling.sampler import Notochord
from notochord_rt.errors import InputError, UserError
from notochord_rt.midi.ingest import load_midi

PIANO, BASS, VIOLIN, CELLO, KIT = 1, 34, 41, 43, ev.STANDARD_KIT


@pytest.fixture(scope="module")
def model() -> Notochord:
    return tiny_model(0)


def rig_of(*voices: VoiceConfig, **kw) -> Rig:
    return Rig(voices={v.channel: v for v in voices}, **kw).validate()


def band() -> Rig:
    return rig_of(
        VoiceConfig(0, PIANO, "input"),
        VoiceConfig(1, VIOLIN, "auto", range=(60, 72), poly=(0, 2), duration=(0.0, 0.5),
                    vel=(30, 90)),
        VoiceConfig(2, CELLO, "auto", range=(36, 48), poly=(0, 1)),
        VoiceConfig(3, BASS, "follow", source=0, transpose=(-24, -12)),
        VoiceConfig(9, KIT, "auto", mute=True),
    )


# -- voices -> constraints ---------------------------------------------------------------
def test_constraints_cover_exactly_the_unmuted_auto_voices():
    c = band().constraints()
    assert set(c.note_on_map) == {VIOLIN, CELLO}
    assert list(c.note_on_map[VIOLIN]) == list(range(60, 73))
    assert list(c.note_on_map[CELLO]) == list(range(36, 49))
    assert c.external == {PIANO, BASS, KIT}
    assert c.max_polyphony[VIOLIN] == 2 and c.max_polyphony[CELLO] == 1
    assert c.max_duration[VIOLIN] == 0.5
    assert (c.min_vel[VIOLIN], c.max_vel[VIOLIN]) == (30.0, 90.0)


@pytest.mark.parametrize("switch", ["muted", "stopped"])
def test_no_autonomous_event_when_muted_stopped_or_no_auto_voice(switch):
    rig = band()
    setattr(rig, switch, True)
    assert rig.constraints() is None
    assert rig_of(VoiceConfig(0, PIANO, "input")).constraints() is None


def test_sampled_events_obey_the_voices(model):
    """Sampling under the rig's constraints: note-ons only of auto voices inside their
    ranges and velocities; polyphony and duration limits hold."""
    rig = band()
    model.reset(seed=1)
    model.feed(PIANO, 60, 0.1, 80)  # a held input note the sampler must leave alone
    cons = rig.constraints()
    now = 0.0
    for _ in range(150):
        e = model.sample(cons)
        now += e.time
        if e.is_note_on:
            v = rig.voice_of(e.inst)
            assert v is not None and v.state == "auto"
            assert v.range[0] <= e.pitch <= v.range[1]
            assert v.vel[0] - 0.5 <= e.vel <= v.vel[1] + 0.5
        else:
            assert e.inst != PIANO
        model.feed(e.inst, e.pitch, e.time, e.vel)
        held = model.held_map()
        assert len(held.get(CELLO, ())) <= 1 and len(held.get(VIOLIN, ())) <= 2
        ages = model.held_notes
        assert all(age <= 0.5 + 1e-6 for (i, _), age in ages.items() if i == VIOLIN)
    assert (PIANO, 60) in model.held_notes


def test_steering_controls_move_the_windows():
    rig = band()
    windows = []
    for value in (0.0, 0.5, 1.0):
        for name in ("steer_pitch", "steer_rate", "steer_velocity"):
            rig.controls[name].value = value
        c = rig.constraints()
        windows.append((c.truncate_quantile_pitch, c.truncate_quantile_time,
                        c.truncate_quantile_vel))
    low, mid, high = windows
    assert mid == ((0.0, 1.0),) * 3  # 0.5 = no steering
    assert low[0][1] < 1.0 and high[0][0] > 0.0  # pitch: low keeps the low end
    assert low[1][0] > 0.0 and high[1][1] < 1.0  # rate: high rate keeps the short times
    assert low[2][1] < 1.0 and high[2][0] > 0.0
    rig.controls["steer_density"].value = 0.8
    rig.controls["pitch_temp"].value = 0.3
    c = rig.constraints()
    assert c.steer_density == 0.8 and c.pitch_temp == 0.3


def test_balance_weights_favour_the_voices_that_lag():
    insts = [VIOLIN, CELLO, BASS]
    assert balance_weights(insts, {}) == {}
    assert balance_weights([VIOLIN], {VIOLIN: 30}) == {}  # one voice: nothing to balance
    assert balance_weights(insts, {VIOLIN: BALANCE_MARGIN}) == {}  # within the margin
    w = balance_weights(insts, {VIOLIN: 20, CELLO: 15, BASS: 0})
    assert set(w) == {BASS}  # cello lags by 5 <= margin; bass by 20
    w2 = balance_weights(insts, {VIOLIN: 24, CELLO: 15, BASS: 0})
    assert w2[BASS] > w[BASS] > 1.0 and w2[CELLO] > 1.0
    c = band().constraints({VIOLIN: 30})
    assert set(c.inst_weights) == {CELLO} and c.inst_weights[CELLO] > 1.0
    assert band().constraints().inst_weights == {}


def test_follow_constraints(model):
    rig = band()
    bass = rig.voices[3]
    c = rig.follow_constraints(bass, 60, 100, sounding=[40, 44])
    allowed = sorted(c.note_on_map[BASS])
    assert allowed == [p for p in range(36, 49) if p not in (40, 44)]
    assert c.inst == BASS and c.time == 0.0 and c.vel == 100
    model.reset(seed=2)
    for _ in range(20):
        e = model.sample(c)
        assert e.inst == BASS and e.pitch in allowed and e.time == 0.0 and e.is_note_on
    bass.vel = (20, 60)
    assert rig.follow_constraints(bass, 60, 100, []).vel == 60
    bass.range = (0, 40)
    assert sorted(rig.follow_constraints(bass, 60, 100, []).note_on_map[BASS]) == list(
        range(36, 41))  # transpose and range intersect
    assert rig.follow_constraints(bass, 60, 100, list(range(36, 41))) is None  # nothing free


def test_followers_and_labels():
    rig = band()
    assert [v.channel for v in rig.followers(0)] == [3]
    assert rig.voices[0].label() == "-->01" and rig.voices[1].label() == "02"
    assert rig.voices[3].label() == "01->04"
    rig.muted = True
    assert rig.followers(0) == []


def test_mute_keeps_the_mode():
    v = VoiceConfig(4, VIOLIN, "follow", source=0)
    v.set_state("mute")
    assert v.state == "mute" and v.mode == "follow"
    v.set_state("input")
    assert v.state == "input" and not v.mute
    assert set(MODES) == {"auto", "input", "follow", "mute"}
    with pytest.raises(InputError, match="mode must be one of"):
        v.set_state("loud")


def test_input_channels_and_channel_map():
    rig = band()
    assert rig.input_channels() == {0: PIANO}
    cmap = ChannelMap(rig.channel_insts(), rig.programs())
    assert cmap.channel_of(VIOLIN) == 1 and cmap.channel_of(KIT) == 9


def test_dedupe_gives_a_taken_instrument_an_anonymous_id():
    rig = Rig(voices={0: VoiceConfig(0, VIOLIN), 1: VoiceConfig(1, VIOLIN),
                      9: VoiceConfig(9, KIT), 10: VoiceConfig(10, KIT)})
    notes = rig.dedupe()
    assert len(notes) == 2 and "taken" in notes[0]
    assert rig.voices[0].inst == VIOLIN
    assert ev.FIRST_ANON <= rig.voices[1].inst <= ev.LAST_ANON
    assert rig.voices[1].program == ev.program_of(VIOLIN)
    assert ev.FIRST_ANON_DRUM <= rig.voices[10].inst <= ev.LAST_ANON_DRUM
    cmap = ChannelMap(rig.channel_insts(), rig.programs())  # unique: accepted
    assert len(cmap.channel) == 4
    progs = {m.channel: m.program for m in cmap.program_messages() if m.type == "program_change"}
    assert progs[1] == ev.program_of(VIOLIN)


# -- controls and CCs ----------------------------------------------------------------------
def test_cc_maps_onto_the_control_range():
    spec = ControlSpec("pitch_temp", 0.9, 0.2, 1.4, (7,))
    assert spec.from_cc(0) == pytest.approx(0.2) and spec.from_cc(127) == pytest.approx(1.4)
    values = [spec.from_cc(v) for v in range(128)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert spec.from_unit(spec.to_unit(0.77)) == pytest.approx(0.77)
    assert spec.from_unit(2.0) == 1.4 and spec.clip(-3) == 0.2


def test_default_controls_are_complete_and_valid():
    controls = default_controls()
    assert set(controls) == {"steer_pitch", "steer_density", "steer_rate", "steer_velocity",
                             "pitch_temp", "rhythm_temp", "timing_temp"}
    Rig(controls=controls).validate()
    action_ccs = {cc for ccs in default_actions().values() for cc in ccs}
    assert not action_ccs & {7, 10, 11, 64}  # volume, pan, expression, sustain never act
    # one map for every live app: play's defaults are the shared ones
    shared = ControlMap.default()
    assert {cc: s.name for s in controls.values() for cc in s.ccs} == dict(shared.controls)
    assert {cc: a for a, ccs in default_actions().items() for cc in ccs} == dict(shared.actions)


@pytest.mark.parametrize("change, needle", [
    (lambda r: setattr(r.controls["steer_rate"], "ccs", (20,)), "CC 20 is used by both"),
    (lambda r: r.actions.update(query=(21,)), "CC 21 is used by both"),
    (lambda r: r.actions.update(query=(64,)), "CC 64 is the sustain pedal"),
    (lambda r: setattr(r.controls["steer_rate"], "hi", 3.0), "range must lie within"),
    (lambda r: r.actions.update(explode=(90,)), "unknown action"),
    (lambda r: r.voices.update({5: VoiceConfig(5, 1, "follow", source=7)}), "has no voice"),
    (lambda r: setattr(r, "max_time", 0.0), "max_time"),
])
def test_rig_validation_names_the_problem(change, needle):
    rig = band()
    change(rig)
    with pytest.raises(InputError, match=needle):
        rig.validate()


@pytest.mark.parametrize("data, needle", [
    ({"inst": 1, "mode": "solo"}, "mode must be one of"),
    ({"inst": "kazoo"}, "unknown instrument"),
    ({"inst": 1, "range": [80, 20]}, "range must satisfy"),
    ({"inst": 1, "range": [0, 200]}, "range must satisfy"),
    ({"inst": 1, "poly": [0.5, 2]}, "poly must be two integers"),
    ({"inst": 1, "mode": "follow"}, "needs a source"),
    ({"inst": 1, "mode": "follow", "source": 3}, "cannot follow itself"),
    ({"inst": 1, "rnage": [1, 2]}, "unknown key 'rnage'"),
    ({"inst": 1, "duration": [0, 0]}, "maximum must be > 0"),
    ({"inst": 1, "mute": "yes"}, "mute must be true or false"),
])
def test_voice_validation_names_the_problem(data, needle):
    with pytest.raises(InputError, match=needle):
        VoiceConfig.from_dict(2, data)


def test_instrument_groups_cover_every_program_once():
    groups = instrument_groups()
    assert len(groups) == 19
    ids = [i for _, insts in groups for i in insts]
    assert len(ids) == len(set(ids))
    assert set(range(1, 129)) <= set(ids)
    assert all(ev.is_valid_instrument(i) for i in ids)
    assert all(len(short_name(i)) <= 12 for i in ids)


# -- presets -------------------------------------------------------------------------------
def test_bundled_presets_load_and_make_valid_constraints():
    book = load_presets()
    assert len(book.presets) >= 5
    assert len({n.lower() for n in book.names}) == len(book.names)
    modes = set()
    for name in book.names:
        rig = book.rig(name)
        modes |= {v.state for v in rig.voices.values()}
        c = rig.constraints()
        if c is not None:
            assert set(c.note_on_map) == {v.inst for v in rig.auto_voices()}
        ChannelMap(rig.channel_insts(), rig.programs())
    assert modes == set(MODES)  # the shipped presets show every mode


PRESETS = """
[defaults]
max_time = 2.5
voice = {poly = [0, 2]}

[[control]]
name = "steer_rate"
cc = [30]
value = 0.25
range = [0.1, 0.9]

[[action]]
name = "panic"
cc = [31]

[[preset]]
name = "Pair"
description = "two voices"
controls = {steer_pitch = 0.7}
channel.1 = {mode = "input", inst = "acoustic grand"}
channel.2 = {inst = "violin", range = [55, 90], poly = [1, 3]}

[[preset]]
name = "chain"
max_time = 1.0
channel.1 = {mode = "input", inst = 1}
channel.2 = {mode = "follow", source = 1, inst = 41}
channel.3 = {mode = "follow", source = 2, inst = 41}
"""


def test_parse_presets_with_defaults_controls_and_actions():
    book = parse_presets(PRESETS, "mine.toml")
    assert book.names == ["Pair", "chain"]
    pair = book.rig("pair")  # names are case-insensitive
    assert pair.max_time == 2.5
    assert pair.voices[0].mode == "input" and pair.voices[0].inst == PIANO
    assert pair.voices[1].mode == "auto" and pair.voices[1].poly == (1, 3)
    assert pair.voices[0].poly == (0, 2)  # from [defaults]
    assert pair.value("steer_pitch") == 0.7 and pair.value("steer_rate") == 0.25
    assert pair.controls["steer_rate"].ccs == (30,)
    assert pair.controls["steer_rate"].from_cc(127) == pytest.approx(0.9)
    assert pair.actions["panic"] == (31,)
    chain = book.rig(1)
    assert chain.max_time == 1.0
    assert chain.voices[2].inst != VIOLIN and ev.is_anonymous(chain.voices[2].inst)
    assert chain.voices[2].program == ev.program_of(VIOLIN)
    with pytest.raises(UserError, match=r"mine.toml: no preset named 'x' \(presets: Pair, chain"):
        book.find("x")
    with pytest.raises(UserError, match="no preset number 5"):
        book.find(4)


@pytest.mark.parametrize("text, needle", [
    ("[[preset]\nname='a'", "not valid TOML"),
    ("[[preset]]\nname='a'\nchannel.2 = {inst=1, rnage=[1,2]}",
     "preset 'a': channel 2: unknown key 'rnage'"),
    ("[[preset]]\nname='a'\nchannel.2 = {inst='kazoo'}",
     "preset 'a': channel 2: unknown instrument"),
    ("[[preset]]\nname='a'\nchannel.17 = {inst=1}", "channel numbers are 1..16"),
    ("[[preset]]\nname='a'\nchannel.1 = {mode='auto'}", "channel 1 needs an inst"),
    ("[[preset]]\nname='a'\n[[preset]]\nname='A'", "two presets are named 'a'"),
    ("[[preset]]\ndescription='x'", "needs a name"),
    ("[[preset]]\nname='a'\ncolour='red'", "preset 'a': unknown key 'colour'"),
    ("[[preset]]\nname='a'\ncontrols={steer_pitch=3}", "steer_pitch: value must be a number in"),
    ("[[preset]]\nname='a'\ncontrols={wobble=0.1}", "unknown control 'wobble'"),
    ("[[control]]\nname='wobble'", "name must be one of"),
    ("[[control]]\nname='steer_rate'\ncc=[20]", "CC 20 is used by both"),
    ("[[control]]\nname='steer_rate'\ncc=[200]", "CC numbers must be 0..119"),
    ("[[action]]\nname='explode'", "name must be one of"),
    ("[defaults]\nmax_time=-1", "max_time must be a number of seconds > 0"),
    ("[defaults]\nvoice={inst=3}", "'inst' cannot have a default"),
    ("[defaults]\nvoice={poly=[3, 1]}", "poly must satisfy"),
    ("[preset]\nname='a'", r"\[\[preset\]\] must be an array"),
    ("colour = 1", "top level: unknown key 'colour'"),
    ("[[preset]]\nname='a'\nchannel.2={mode='follow', source=5, inst=1}", "has no voice"),
])
def test_bad_presets_fail_with_clear_errors(text, needle):
    with pytest.raises(UserError, match=needle) as info:
        parse_presets(text, "bad.toml")
    assert str(info.value).startswith("bad.toml: ")


def test_load_presets_file_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read presets file"):
        load_presets(tmp_path / "missing.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"name = '\xe9'")
    with pytest.raises(UserError, match="must be UTF-8"):
        load_presets(bad)
    good = tmp_path / "good.toml"
    good.write_text(PRESETS)
    assert load_presets(good).source == "good.toml"


# -- voices from a prompt ------------------------------------------------------------------
def test_prompt_rig_turns_the_prompt_instruments_into_voices():
    ing = load_midi(simple_song())
    keep = Rig(voices={1: VoiceConfig(1, VIOLIN, "input"), 4: VoiceConfig(4, CELLO, "auto")})
    rig, notes = prompt_rig(keep, ing.events, ing.parts)
    assert notes == []
    insts = {int(i) for i in np.unique(ing.events.inst)}
    assert rig.voices[1].inst == VIOLIN and rig.voices[1].mode == "input"  # input kept
    assert CELLO not in {v.inst for v in rig.voices.values()}  # other voices replaced
    auto = {v.inst: v for v in rig.voices.values() if v.mode == "auto"}
    assert set(auto) == insts
    for inst, v in auto.items():
        on = (ing.events.inst == inst) & (ing.events.vel > 0)
        assert v.range == (int(ing.events.pitch[on].min()), int(ing.events.pitch[on].max()))
    assert auto[PIANO].channel == 0  # its own channel was free
    assert [v.channel for v in auto.values() if ev.is_drum(v.inst)] == [ev.DRUM_CHANNEL]
    assert auto[BASS].channel not in (1,)  # channel 2 was the kept input voice
    rig.validate()


def test_prompt_rig_with_more_instruments_than_channels():
    keep = Rig(voices={c: VoiceConfig(c, VIOLIN + c, "input") for c in range(15)})
    ing = load_midi(simple_song())
    rig, notes = prompt_rig(keep, ing.events, ing.parts)
    assert len(rig.voices) == 16
    assert len(notes) == len(np.unique(ing.events.inst)) - 1
    assert all("no free channel" in n for n in notes)
