"""The one CC map of the live apps (apps/live/controls.py), the input router's use of it
(player channels only, rising edges, sustain pedal, thru of every channel message), the
sustain pedal in the harmonizer and in ``play``'s follow voices, and the command-line
side (``--help``, ``--cc``, ``-v`` after the subcommand, missing extras, SIGTERM status).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import time

import mido
import pytest
from aio import run_async
from tiny import tiny_model

from notochord_rt.apps.harmony import HarmonyPolicy, PedalHold, Voice
from notochord_rt.apps.live.args import require_modules
from notochord_rt.apps.live.controls import (
    ACTIONS,
    APP_USES,
    CONTROLS,
    DEFAULT_CCS,
    ControlMap,
    Edges,
    help_epilog,
    sustain_inst,
    sustain_name,
)
from notochord_rt.apps.live.improvise import ImprovisePolicy
from notochord_rt.apps.live.noise import split_noise
from notochord_rt.apps.live.player import NoteIn, Player, PlayerConfig
from notochord_rt.apps.live.ports import ChannelMap
from notochord_rt.apps.live.session import (
    EXIT_SIGTERM,
    InputRouter,
    LiveOptions,
    options_from_args,
    run_session,
)
from notochord_rt.apps.loading import load_sampler
from notochord_rt.apps.play.policy import VoicesPolicy
from notochord_rt.apps.play.presets import load_presets
from notochord_rt.cli import build_parser
from notochord_rt.cli import main as cli_main
from notochord_rt.errors import InputError, UserError

PIANO, VIOLIN = 1, 41
STANDARD = {0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 32, 64, 65, 66, 67, 68, 69, 71, 72, 73, 74,
            84, 91, 93, 96, 97, 98, 99, 100, 101}
"""Controllers with a meaning in General MIDI / common synths that must never act."""


# -- the map ---------------------------------------------------------------------------------
def test_defaults_use_only_undefined_controllers():
    undefined = set(range(20, 32)) | set(range(102, 120))
    assert set(DEFAULT_CCS.values()) <= undefined
    assert not set(DEFAULT_CCS.values()) & STANDARD
    assert len(set(DEFAULT_CCS.values())) == len(DEFAULT_CCS)  # one CC per name
    assert set(DEFAULT_CCS) == set(CONTROLS) | set(ACTIONS)


def test_every_app_reads_the_same_map():
    full = ControlMap.default()
    for app in APP_USES:
        part = ControlMap.default(app)
        assert part.controls.items() <= full.controls.items()  # same CC, same meaning
        assert part.actions.items() <= full.actions.items()
    assert set(ControlMap.default("harmonize").controls.values()) == {"steer_pitch",
                                                                      "pitch_temp"}
    assert set(ControlMap.default("play").actions.values()) == set(ACTIONS)


def test_cc_spec_moves_and_drops_controls():
    m = ControlMap.default().with_spec("steer_pitch=30+31, mute=off, replan=110")
    assert m.ccs()["steer_pitch"] == (30, 31) and "mute" not in m.ccs()
    assert m.actions[110] == "query" and 103 not in m.actions  # replan is query's old name
    assert ControlMap.default().with_spec(None) == ControlMap.default()


@pytest.mark.parametrize("spec, needle", [
    ("wobble=3", "unknown control 'wobble'"),
    ("steer_pitch=64", "CC 64 is the sustain pedal"),
    ("steer_pitch=120", "CC numbers must be 0..119"),
    ("steer_pitch=102", "CC 102 is used by both"),
    ("steer_pitch", "must be NAME=CC"),
    ("steer_pitch=x", "CC must be a number"),
])
def test_cc_spec_errors_name_the_problem(spec, needle):
    with pytest.raises(InputError, match=needle):
        ControlMap.default().with_spec(spec)


def test_summary_and_help_list_the_ccs():
    line = ControlMap.default("improvise").summary()
    assert "20 steer_pitch" in line and "102 reset" in line and "\n" not in line
    text = help_epilog("harmonize")
    assert "CC  24  pitch_temp" in text and "CC 106  panic" in text and "sustain" in text
    assert "steer_rate" not in text  # harmonize has no timing to steer


def test_sustain_names_round_trip():
    assert sustain_inst(sustain_name(41)) == 41
    assert sustain_inst("steer_pitch") is None and sustain_inst("sustain:x") is None


# -- edges -----------------------------------------------------------------------------------
def test_actions_fire_once_per_rising_edge():
    e = Edges()
    assert [e.rising(0, 104, v) for v in (100, 101, 102)] == [True, False, False]
    assert [e.rising(0, 104, v) for v in (0, 127, 0, 127)] == [False, True, False, True]
    assert [e.rising(1, 104, v) for v in (10, 63, 64, 65)] == [False, False, True, False]
    assert not any(e.rising(2, 104, v) for v in range(64))  # never past the threshold


def test_pedal_reports_changes_only():
    e = Edges()
    assert [e.pedal(0, v) for v in (0, 127, 100, 90, 20, 0, 64)] == \
        [None, True, None, None, False, None, True]


# -- the input router ------------------------------------------------------------------------
class FakePlayer:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def clock(self) -> float:
        return time.perf_counter()

    def note_input(self, inst, pitch, vel, t=None):
        self.calls.append(("note", inst, pitch, vel))

    def control(self, name, value):
        self.calls.append(("ctl", name, round(value, 3)))

    def reset(self):
        self.calls.append(("reset",))

    def panic(self):
        self.calls.append(("panic",))


class FakeOut:
    def __init__(self, cmap: ChannelMap) -> None:
        self.cmap = cmap
        self.sent: list[mido.Message] = []

    def send(self, msg: mido.Message) -> None:
        self.sent.append(msg)


def router_for(cmap: ChannelMap, app: str = "improvise", thru=None) -> tuple:
    player = FakePlayer()
    m = ControlMap.default(app)
    return player, InputRouter(player, cmap, controls=m.controls, actions=m.actions,
                               thru=thru)


def cc(channel: int, control: int, value: int) -> mido.Message:
    return mido.Message("control_change", channel=channel, control=control, value=value)


def test_keyboard_controllers_do_nothing():
    player, router = router_for(ChannelMap({0: PIANO}))
    for control in (7, 4, 6, 1, 2, 3, 5, 10, 11):
        for v in (100, 101, 102, 0, 127):
            router(cc(0, control, v))
    router(mido.Message("pitchwheel", channel=0, pitch=8191))
    router(mido.Message("aftertouch", channel=0, value=90))
    assert player.calls == []


def test_mapped_ccs_only_on_player_channels():
    player, router = router_for(ChannelMap({0: PIANO}))
    router(cc(3, 104, 127))  # another channel (a drum machine, a second keyboard)
    router(cc(3, 20, 127))
    assert player.calls == []
    router(cc(0, 20, 127))
    router(cc(0, 104, 100))
    router(cc(0, 104, 101))
    router(cc(0, 104, 0))
    router(cc(0, 104, 127))
    router(cc(0, 102, 127))
    router(cc(0, 106, 127))
    assert player.calls == [("ctl", "steer_pitch", 1.0), ("ctl", "mute", 1.0),
                            ("ctl", "mute", 1.0), ("reset",), ("panic",)]


def test_without_player_channels_ccs_are_heard_everywhere():
    player, router = router_for(ChannelMap({}))
    router(cc(5, 21, 0))
    router(cc(5, 64, 127))  # no player: no instrument whose pedal it could be
    assert player.calls == [("ctl", "steer_density", 0.0)]


def test_sustain_pedal_becomes_a_control_of_the_instrument():
    player, router = router_for(ChannelMap({0: PIANO, 1: VIOLIN}))
    for v in (0, 127, 110, 0, 30):
        router(cc(0, 64, v))
    router(cc(1, 64, 127))
    assert player.calls == [("ctl", "sustain:1", 1.0), ("ctl", "sustain:1", 0.0),
                            ("ctl", "sustain:41", 1.0)]


def test_thru_passes_every_channel_message_of_the_player_channels():
    out = FakeOut(ChannelMap({2: PIANO, 1: VIOLIN}))  # the piano sounds on channel 3
    player, router = router_for(ChannelMap({0: PIANO}), thru=out)
    played = [mido.Message("note_on", channel=0, note=60, velocity=90), cc(0, 64, 127),
              cc(0, 11, 70), mido.Message("pitchwheel", channel=0, pitch=-2000),
              mido.Message("aftertouch", channel=0, value=40),
              mido.Message("polytouch", channel=0, note=60, value=30),
              mido.Message("note_off", channel=0, note=60)]
    for m in played:
        router(m)
    router(cc(0, 104, 127))  # the map's own CCs stay here
    router(mido.Message("note_on", channel=5, note=61, velocity=90))  # not a player channel
    assert out.sent == [m.copy(channel=2) for m in played]
    assert ("ctl", "mute", 1.0) in player.calls


def test_live_options_take_the_apps_part_and_the_cc_flag():
    ns = argparse.Namespace(midi_api=None, midi_in=None, midi_out=None, virtual_in=None,
                            virtual_out=None, client_name="x", thru=False,
                            suppress_feedback=0.0, no_program_change=False,
                            on_port_loss="wait", on_server_loss="exit", lookahead=4.0,
                            cc="steer_pitch=30")
    opts = options_from_args(ns, "harmonize")
    assert opts.controls == {30: "steer_pitch", 24: "pitch_temp"}
    assert set(opts.actions.values()) == {"reset", "mute", "panic"}
    assert LiveOptions().actions == dict(ControlMap.default("improvise").actions)


# -- the sustain pedal in the policies -------------------------------------------------------
class Sink:
    def __init__(self) -> None:
        self.on: set[tuple[int, int]] = set()

    def note(self, inst: int, pitch: int, vel: int) -> None:
        (self.on.add if vel > 0 else self.on.discard)((inst, pitch))

    def panic(self) -> None:
        pass


def offline_player(policy) -> tuple[Player, Sink, list[float]]:
    clock = [10.0]
    sink = Sink()
    player = Player(tiny_model(0), sink, policy, PlayerConfig(pause_after_send=0.0),
                    clock=lambda: clock[0], reset_on_start=False)
    return player, sink, clock


def play(player: Player, clock: list[float], pitch: int, vel: int, inst: int = PIANO) -> None:
    clock[0] += 0.1
    player.process(NoteIn(inst, pitch, vel, clock[0]))


@pytest.mark.slow
def test_harmony_answers_sound_until_the_pedal_lifts():
    policy = HarmonyPolicy([Voice(VIOLIN, -12, -3)])
    player, sink, clock = offline_player(policy)
    play(player, clock, 60, 90)
    first = {n for n in sink.on if n[0] == VIOLIN}
    assert len(first) == 1
    play(player, clock, 60, 0)
    assert not {n for n in sink.on if n[0] == VIOLIN}  # no pedal: released with the key
    policy.on_control(player, sustain_name(PIANO), 1.0)
    play(player, clock, 64, 90)
    play(player, clock, 67, 90)
    play(player, clock, 64, 0)
    play(player, clock, 67, 0)
    held = {n for n in sink.on if n[0] == VIOLIN}
    assert len(held) == 2  # keys up, pedal down: the answers sound on
    policy.on_control(player, sustain_name(VIOLIN), 0.0)  # another instrument's pedal
    assert {n for n in sink.on if n[0] == VIOLIN} == held
    play(player, clock, 72, 90)  # a key still down when the pedal lifts keeps its answer
    policy.on_control(player, sustain_name(PIANO), 0.0)
    left = {n for n in sink.on if n[0] == VIOLIN}
    assert len(left) == 1 and not left & held
    play(player, clock, 72, 0)
    player.stop()
    assert sink.on == set()


def test_follow_voices_sound_until_the_pedal_lifts():
    rig = load_presets().rig("follows")  # piano on 1; a chain of follow voices
    policy = VoicesPolicy(rig)
    player, sink, clock = offline_player(policy)
    play(player, clock, 60, 90)
    answers = {n for n in sink.on if n[0] != PIANO}
    assert len(answers) >= 2  # vibraphone, and the marimba answering it, and the bass
    policy.on_control(player, sustain_name(PIANO), 1.0)
    play(player, clock, 60, 0)
    assert {n for n in sink.on if n[0] != PIANO} == answers
    policy.on_control(player, sustain_name(PIANO), 0.0)
    assert {n for n in sink.on if n[0] != PIANO} == set()  # the whole chain ends
    player.stop()


def test_pedal_hold_forgets_a_note_that_answers_again():
    p = PedalHold()
    p.on_control("sustain:1", 1.0)
    p.hold(1, [(41, 50), (41, 52)])
    p.forget((41, 50))
    assert p.on_control("sustain:1", 0.0) == [(41, 52)]
    assert p.on_control("mute", 1.0) is None


# -- the improviser's voices share the notes ------------------------------------------------
def note_on_shares(policy: ImprovisePolicy, model, events: int = 300) -> dict[int, float]:
    """Run the improviser's own constraints ``events`` times through ``model`` (what the
    player does, without the waiting) and return each voice's share of the note-ons."""
    counts = dict.fromkeys(policy.model_insts, 0)
    for _ in range(events):
        e = model.sample(policy.next_constraints(None))
        model.feed(e.inst, e.pitch, e.time, e.vel)
        policy.on_played(None, e)
        if e.vel > 0:
            counts[int(e.inst)] += 1
    total = sum(counts.values())
    return {i: c / total for i, c in counts.items()}


@pytest.mark.slow
def test_improvise_voices_get_a_fair_share():
    model = load_sampler("default", "fp32", 1)
    voices = [VIOLIN, 43, 74]  # violin, cello, flute: the model favours the strings
    for seed in (0, 1):
        model.reset(seed=seed)
        balanced = note_on_shares(ImprovisePolicy(voices, [PIANO]), model)
        model.reset(seed=seed)
        free = ImprovisePolicy(voices, [PIANO])
        free.balance = None
        unbalanced = note_on_shares(free, model)
        assert min(balanced.values()) >= 0.2, balanced  # a fair share is 1/3
        assert min(balanced.values()) > min(unbalanced.values()) + 0.05, (balanced, unbalanced)


# -- the TUI shows the map ------------------------------------------------------------------
@pytest.mark.slow
def test_play_tui_shows_the_action_ccs():

    from notochord_rt.apps.play.policy import PlayController
    from notochord_rt.apps.play.tui import PlayApp

    rig = load_presets().rig("duet")
    policy = VoicesPolicy(rig)
    player = Player(tiny_model(0), Sink(), policy)
    ctl = PlayController(player, policy)
    player.start()

    async def go() -> str:
        async with PlayApp(ctl, poll_interval=0.02).run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.2)
            return str(pilot.app._controls.render())

    try:
        shown = run_async(go())
    finally:
        player.stop()
    assert re.search(r"steer_pitch .* cc ?20\b", shown)  # each control's CC beside it
    legend = " ".join(shown.split())
    assert "102 reset" in legend and "104 mute" in legend and "106 panic" in legend


# -- command line ----------------------------------------------------------------------------
def test_verbose_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["play", "-v", "--list-presets"]).verbose == 1
    assert parser.parse_args(["-v", "improvise"]).verbose == 1
    assert parser.parse_args(["improvise", "-vv"]).verbose == 2
    assert parser.parse_args(["improvise"]).verbose == 0


@pytest.mark.parametrize("command", ["improvise", "play", "harmonize"])
def test_help_shows_the_cc_map(command, capsys):
    with pytest.raises(SystemExit):
        cli_main([command, "--help"])
    out = capsys.readouterr().out
    assert "CC 102  reset" in out and "CC  20  steer_pitch" in out and "CC 64" in out


def test_play_without_textual_stops_before_the_model_loads(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "textual", None)  # as if not installed
    assert cli_main(["play", "--checkpoint", "no-such-model.safetensors"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["notochord-rt play: error: play needs textual: "
                   "pip install 'notochord-rt[live]'"]  # not the missing model


def test_a_bad_cc_flag_is_a_user_error(capsys):
    assert cli_main(["improvise", "--cc", "steer_pitch=64", "--checkpoint", "nope"]) == 2
    assert "--cc: steer_pitch: CC 64 is the sustain pedal" in capsys.readouterr().err


def test_a_missing_extra_is_one_line():
    with pytest.raises(UserError, match=r"play needs no-such-mod: pip install "
                                        r"'notochord-rt\[live\]'"):
        require_modules("play", "mido", "no-such-mod")
    require_modules("play", "mido")


def test_backend_noise_is_told_apart():
    text = ("ALSA lib seq_hw.c:466:(snd_seq_hw_open) open /dev/snd/seq failed\n"
            "Cannot connect to server socket err = No such file or directory\n"
            "jack server is not running or cannot be started\n"
            "JackShmReadWritePtr::~JackShmReadWritePtr - Init not done for -1\n"
            "WARNING notochord_rt: something of ours\n")
    noise, other = split_noise(text)
    assert len(noise) == 4 and other == ["WARNING notochord_rt: something of ours"]


class _KilledSession:
    """Stands in for a LiveSession: SIGTERM arrives while it runs."""

    opt = LiveOptions()
    player = None
    lost_ports: list = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.exited = True

    def wait(self, duration):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return 0


def test_sigterm_exits_143_like_play():
    s = _KilledSession()
    t0 = time.monotonic()
    assert run_session(s, argparse.Namespace(duration=None), "test") == EXIT_SIGTERM == 143
    assert s.exited and time.monotonic() - t0 < 2
    assert signal.getsignal(signal.SIGTERM) is not None
