"""Live apps through real JACK MIDI ports (``jackd --no-realtime -d dummy``).

A test-side :class:`jack.Probe` plays into the app's input and records what comes out;
the app runs with a tiny random model. Checks: harmony notes on the voices' channels and
within their ranges, every note released (explicit note-offs) when the session closes,
feedback suppression in a loopback, a vanished port reported (the app keeps running or
exits, with every note released), and the ``improvise`` / ``harmonize --live`` commands
end to end in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from jack import Probe, jack_or_skip, sounding_after, wait_until
from tiny import tiny_model

from notochord_rt import Notochord
from notochord_rt.apps.harmony import HarmonyPolicy, Voice
from notochord_rt.apps.live.improvise import ImprovisePolicy
from notochord_rt.apps.live.ports import ChannelMap
from notochord_rt.apps.live.session import LiveOptions, LiveSession, voice_channels
from notochord_rt.errors import UserError

torch.set_num_threads(1)

VIOLIN, CELLO, PIANO = 41, 43, 1
NOTE_ON, NOTE_OFF, CC = 0x90, 0x80, 0xB0


@pytest.fixture(scope="module")
def jack():
    yield from jack_or_skip()


@pytest.fixture
def probe(jack):
    p = Probe("probe")
    yield p
    p.close()


def tiny(seed: int = 0) -> Notochord:
    return tiny_model(seed, init="default", sampler_seed=seed)


def notes_on(msgs, channel=None):
    return [(m[0] & 0x0F, m[1], m[2]) for _, m in msgs
            if m[0] & 0xF0 == NOTE_ON and m[2] > 0 and (channel is None or m[0] & 0x0F == channel)]


def settle(synth: Probe) -> None:
    """Wait until the app's program changes arrived, then a little more for the input
    connection: JACK makes new connections effective at a later process cycle."""
    assert synth.wait_for(lambda m: any(x[0] & 0xF0 == 0xC0 for _, x in m), timeout=10)
    time.sleep(0.15)


def options(probe_in: str, probe_out: str | None, **kw) -> LiveOptions:
    return LiveOptions(api="jack", inputs=[probe_in] if probe_in else [],
                       outputs=[probe_out] if probe_out else [], client_name="app", **kw)


@pytest.mark.slow
def test_harmonize_through_jack_ports(probe):
    voices = [Voice(VIOLIN, -12, -3), Voice(CELLO, -24, -13)]
    cin = ChannelMap({0: PIANO})
    cout = voice_channels([VIOLIN, CELLO], set(cin.inst))
    played = [60, 62, 64, 65, 67, 69]
    with LiveSession(tiny(), HarmonyPolicy(voices), cin, cout,
                     options(probe.out_port, probe.in_port)) as s:
        settle(probe)
        for p in played:
            probe.send(NOTE_ON, p, 100)
            time.sleep(0.03)
        assert probe.wait_for(lambda m: len(notes_on(m)) >= 2 * len(played))
        for p in played[:3]:  # release half; the rest must be released by the shutdown
            probe.send(NOTE_OFF, p, 0)
        time.sleep(0.1)
        latency = s.player.stats.values("latency")
    msgs = probe.messages()
    on = notes_on(msgs)
    assert len(on) == 2 * len(played)
    vch, cch = cout.channel_of(VIOLIN), cout.channel_of(CELLO)
    for src, (_, pitch, vel) in zip(played, [x for x in on if x[0] == vch]):
        assert src - 12 <= pitch <= src - 3 and vel == 100
    for src, (_, pitch, _) in zip(played, [x for x in on if x[0] == cch]):
        assert src - 24 <= pitch <= src - 13
    assert {ch for ch, _, _ in on} == {vch, cch}
    # explicit note-offs for everything, then all-notes-off on both channels
    assert sounding_after(msgs, all_notes_off=False) == set()
    ccs = {(m[0] & 0x0F, m[1]) for _, m in msgs if m[0] & 0xF0 == CC}
    assert {(vch, 123), (cch, 123)} <= ccs
    assert len(latency) == 2 * len(played) and (latency < 0.5).all()


@pytest.mark.slow
def test_improvise_plays_and_releases_everything_on_exit(probe):
    policy = ImprovisePolicy([VIOLIN], [PIANO], max_polyphony=3, max_duration=0.3, max_time=0.1)
    with LiveSession(tiny(), policy, ChannelMap({0: PIANO}), ChannelMap({1: VIOLIN}),
                     options(probe.out_port, probe.in_port)) as s:
        settle(probe)
        for k in range(6):
            probe.send(NOTE_ON, 50 + k, 80)
            time.sleep(0.05)
            probe.send(NOTE_OFF, 50 + k, 0)
        assert probe.wait_for(lambda m: len(notes_on(m, 1)) >= 5, timeout=5)
        probe.send(CC, 104, 127)  # mute (apps/live/controls.py): the voice stops, its notes end
        time.sleep(0.2)
        assert sounding_after(probe.messages(), all_notes_off=False) == set()
        inputs = s.player.stats.summary()["counts"]["inputs"]
    assert inputs == 12
    msgs = probe.messages()
    assert {ch for ch, _, _ in notes_on(msgs)} == {1}
    assert sounding_after(msgs, all_notes_off=False) == set()


@pytest.mark.slow
def test_feedback_suppression_in_a_loopback(jack):
    """The app's output is wired back to its own input; echoes are not fed as input."""

    def run(window):
        policy = ImprovisePolicy([VIOLIN], max_time=0.05, max_duration=0.1)
        # channel 2 is both the voice's output and a "player" input channel (as in a
        # loopback through a hardware thru)
        opt = LiveOptions(api="jack", virtual_out=["out"], inputs=["loop-app:out"],
                          client_name="loop-app", suppress_feedback=window)
        with LiveSession(tiny(), policy, ChannelMap({1: CELLO}), ChannelMap({1: VIOLIN}),
                         opt) as s:
            time.sleep(0.8)
            counts = s.player.stats.summary()["counts"]
            outs = counts["outputs"]
            fed = counts["inputs"]
            dropped = s.router.feedback.dropped if s.router.feedback else 0
        return outs, fed, dropped

    outs, fed, dropped = run(None)
    assert outs >= 3 and fed >= 3  # without suppression our own notes come back as input
    outs, fed, dropped = run(0.03)
    assert outs >= 3 and fed == 0 and dropped >= 3


@pytest.mark.slow
def test_lost_input_port_is_reported_and_the_app_keeps_running(jack):
    keys, synth = Probe("keys"), Probe("synth")
    try:
        voices = [Voice(VIOLIN, -12, -1)]
        opt = options(keys.out_port, synth.in_port, watch_interval=0.1)
        with LiveSession(tiny(), HarmonyPolicy(voices), ChannelMap({0: PIANO}),
                         ChannelMap({1: VIOLIN}), opt) as s:
            settle(synth)
            keys.send(NOTE_ON, 60, 90)
            assert synth.wait_for(lambda m: len(notes_on(m, 1)) == 1)
            keys.close()  # the keyboard is unplugged while a note sounds
            assert synth.wait_for(lambda m: sounding_after(m, all_notes_off=False) == set())
            # the notes go on the connection's loss; the port's own loss is seen by the
            # watch thread's next look (every watch_interval), maybe a little later
            assert wait_until(lambda: s.lost_ports == [(keys.out_port, "input")], 5.0)
            assert s.player.running
            keys = Probe("keys")  # plugged back in: reconnected
            time.sleep(0.4)
            keys.send(NOTE_ON, 64, 90)
            assert synth.wait_for(lambda m: len(notes_on(m, 1)) == 2)
            assert s.wait(0.05) == 0
        assert sounding_after(synth.messages(), all_notes_off=False) == set()
    finally:
        keys.close()
        synth.close()


@pytest.mark.slow
def test_lost_port_exits_cleanly_when_asked(jack):
    keys, synth = Probe("keys2"), Probe("synth2")
    try:
        opt = options(keys.out_port, synth.in_port, watch_interval=0.1, on_port_loss="exit")
        with LiveSession(tiny(), HarmonyPolicy([Voice(VIOLIN, 1, 12)]), ChannelMap({0: PIANO}),
                         ChannelMap({1: VIOLIN}), opt) as s:
            settle(synth)
            keys.send(NOTE_ON, 60, 90)
            keys.send(NOTE_ON, 67, 90)
            assert synth.wait_for(lambda m: len(notes_on(m, 1)) == 2)
            keys.close()
            assert s.wait(5.0) == 3
        msgs = synth.messages()
        assert sounding_after(msgs, all_notes_off=False) == set()
    finally:
        keys.close()
        synth.close()


def test_missing_port_is_a_user_error(jack):
    with pytest.raises(UserError, match="no MIDI input port matches 'nosuchport'"):
        with LiveSession(tiny(), HarmonyPolicy([Voice(VIOLIN, 1, 2)]), ChannelMap({0: 1}),
                         ChannelMap({1: VIOLIN}), options("nosuchport", None,
                                                          virtual_out=["o"])):
            pass


def _cli(args: list[str], jack_name: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, JACK_DEFAULT_SERVER=jack_name)
    return subprocess.run([sys.executable, "-m", "notochord_rt", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    from notochord_rt.model.checkpoint import save_model

    path = tmp_path / "tiny.safetensors"
    save_model(tiny(), path)
    return path


@pytest.mark.slow
def test_improvise_command_end_to_end(jack, probe, checkpoint, tmp_path):
    stats = tmp_path / "stats.json"
    r = _cli(["improvise", "--checkpoint", str(checkpoint), "--precision", "module",
              "--voices", "2=violin", "--max-time", "0.1", "--max-duration", "0.2",
              "--midi-api", "jack", "--midi-out", probe.in_port, "--duration", "1.5",
              "--stats-json", str(stats)], jack)
    assert r.returncode == 0, r.stderr
    msgs = probe.messages()
    assert len(notes_on(msgs, 1)) >= 3
    assert sounding_after(msgs, all_notes_off=False) == set()
    summary = json.loads(stats.read_text())
    assert summary["counts"]["outputs"] >= 3 and summary["lateness"]["n"] >= 3


@pytest.mark.slow
def test_harmonize_live_command_end_to_end(jack, probe, checkpoint):
    env = dict(os.environ, JACK_DEFAULT_SERVER=jack)
    proc = subprocess.Popen(
        [sys.executable, "-m", "notochord_rt", "harmonize", "--live", "--checkpoint",
         str(checkpoint), "--precision", "module", "--voice", "violin:-7:-1",
         "--midi-api", "jack", "--midi-in", probe.out_port, "--midi-out", probe.in_port,
         "--duration", "60"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert probe.wait_for(lambda m: any(x[0] & 0xF0 == 0xC0 for _, x in m), timeout=30)
        time.sleep(0.5)
        for p in (60, 64, 67):
            probe.send(NOTE_ON, p, 70)
            time.sleep(0.05)
        assert probe.wait_for(lambda m: len(notes_on(m)) >= 3, timeout=5)
        proc.terminate()  # SIGTERM while the notes are held: handled like Ctrl-C
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err  # 128 + SIGTERM, as in every live app
    msgs = probe.messages()
    on = notes_on(msgs)
    assert [p for _, p, _ in on][:3] and all(
        src - 7 <= p <= src - 1 for src, (_, p, _) in zip((60, 64, 67), on))
    assert sounding_after(msgs, all_notes_off=False) == set()  # held notes released


def test_default_api_is_one_that_runs(jack):
    import rtmidi

    from notochord_rt.apps.live.ports import rt_api

    api = rt_api(None)
    assert api in rtmidi.get_compiled_api()
    rtmidi.MidiOut(api, name="check").delete()  # a client can start on it
    with pytest.raises(UserError, match="not compiled"):
        rt_api("nosuchapi")


@pytest.mark.slow
def test_replugged_output_gets_programs_again(jack):
    keys, synth = Probe("keys3"), Probe("synth3")
    try:
        opt = options(keys.out_port, synth.in_port, watch_interval=0.1)
        with LiveSession(tiny(), HarmonyPolicy([Voice(VIOLIN, 1, 12)]), ChannelMap({0: PIANO}),
                         ChannelMap({1: VIOLIN}), opt) as s:
            settle(synth)
            synth.close()  # the synth is unplugged ...
            assert wait_until(lambda: s.lost_ports == [(synth.in_port, "output")], 5.0)
            synth = Probe("synth3")  # ... and plugged back in
            assert synth.wait_for(lambda m: [0xC1, VIOLIN - 1] in [x for _, x in m],
                                  timeout=5)
            time.sleep(0.2)
            keys.send(NOTE_ON, 60, 90)
            assert synth.wait_for(lambda m: len(notes_on(m, 1)) == 1)
        assert sounding_after(synth.messages(), all_notes_off=False) == set()
    finally:
        keys.close()
        synth.close()
