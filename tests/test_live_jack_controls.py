"""The CC map, the sustain pedal and ``--thru`` through real JACK ports.

A test-side :class:`jack.Probe` plays a keyboard into ``harmonize --live``'s session
(tiny random model) and records what comes out: a keyboard's own controllers (volume,
foot controller, data entry) do nothing to the music; an action CC fires once per rising
edge; the sustain pedal holds the harmony until it lifts; ``--thru`` passes sustain,
expression, pitch bend and pressure of the player channel.
"""

from __future__ import annotations

import time

import pytest
import torch
from jack import Probe, jack_or_skip, sounding_after
from tiny import tiny_model

from notochord_rt.apps.harmony import HarmonyPolicy, Voice
from notochord_rt.apps.live.controls import DEFAULT_CCS
from notochord_rt.apps.live.ports import ChannelMap
from notochord_rt.apps.live.session import LiveOptions, LiveSession

torch.set_num_threads(1)
pytestmark = pytest.mark.slow

PIANO, VIOLIN = 1, 41
NOTE_ON, NOTE_OFF, CC, BEND, PRESSURE = 0x90, 0x80, 0xB0, 0xE0, 0xD0
VCH = 1  # the violin's output channel


@pytest.fixture(scope="module")
def jack():
    yield from jack_or_skip()


@pytest.fixture
def probe(jack):
    p = Probe("ctlprobe")
    yield p
    p.close()


def session(probe: Probe, **kw) -> LiveSession:
    opts = LiveOptions(api="jack", inputs=[probe.out_port], outputs=[probe.in_port],
                       client_name="ctlapp", **kw)
    return LiveSession(tiny_model(0, init="default", sampler_seed=0),
                       HarmonyPolicy([Voice(VIOLIN, -12, -3)]), ChannelMap({0: PIANO}),
                       ChannelMap({VCH: VIOLIN}), opts)


def settle(synth: Probe) -> None:
    assert synth.wait_for(lambda m: any(x[0] & 0xF0 == 0xC0 for _, x in m), timeout=10)
    time.sleep(0.15)
    synth.clear()


def violin_sounding(probe: Probe) -> set[tuple[int, int]]:
    return {n for n in sounding_after(probe.messages()) if n[0] == VCH}


def all_notes_off(probe: Probe) -> int:
    return sum(1 for _, m in probe.messages() if m[0] == CC | VCH and m[1] == 123)


def test_keyboard_controllers_leave_the_harmony_alone(probe):
    with session(probe):
        settle(probe)
        probe.send(NOTE_ON, 60, 100)
        assert probe.wait_for(lambda m: len(violin_sounding(probe)) == 1)
        held = violin_sounding(probe)
        for cc in (7, 4, 6):  # volume fader, foot controller, data entry: moved about
            for v in (100, 101, 102, 0, 127):
                probe.send(CC, cc, v)
                time.sleep(0.01)
        time.sleep(0.3)
        assert violin_sounding(probe) == held  # nothing released, nothing reset
        assert all_notes_off(probe) == 0
        probe.send(NOTE_OFF, 60, 0)
        assert probe.wait_for(lambda m: not violin_sounding(probe))
    assert sounding_after(probe.messages(), all_notes_off=False) == set()


def test_an_action_fires_once_per_rising_edge(probe):
    panic = DEFAULT_CCS["panic"]
    with session(probe):
        settle(probe)
        probe.send(NOTE_ON, 60, 100)
        assert probe.wait_for(lambda m: len(violin_sounding(probe)) == 1)
        for v in (100, 101, 102):  # a fader moved about above the threshold: one panic
            probe.send(CC, panic, v)
            time.sleep(0.02)
        assert probe.wait_for(lambda m: all_notes_off(probe) >= 1)
        time.sleep(0.3)
        assert all_notes_off(probe) == 1 and not violin_sounding(probe)
        for v in (0, 127, 0, 127):  # a button pressed twice: two more
            probe.send(CC, panic, v)
            time.sleep(0.02)
        assert probe.wait_for(lambda m: all_notes_off(probe) >= 3)
        time.sleep(0.3)
        assert all_notes_off(probe) == 3
        probe.send(NOTE_OFF, 60, 0)


def test_sustain_holds_the_harmony_until_the_pedal_lifts(probe):
    with session(probe):
        settle(probe)
        probe.send(CC, 64, 127)
        for p in (60, 64):
            probe.send(NOTE_ON, p, 100)
            time.sleep(0.03)
        assert probe.wait_for(lambda m: len(violin_sounding(probe)) == 2)
        held = violin_sounding(probe)
        probe.send(NOTE_OFF, 60, 0)
        probe.send(NOTE_OFF, 64, 0)
        time.sleep(0.4)
        assert violin_sounding(probe) == held  # keys up, pedal down: still sounding
        probe.send(CC, 64, 0)
        assert probe.wait_for(lambda m: not violin_sounding(probe))
        lifted = probe.messages()
    offs = [m for _, m in lifted if m[0] & 0xF0 in (NOTE_OFF, NOTE_ON) and m[0] & 0x0F == VCH
            and (m[0] & 0xF0 == NOTE_OFF or m[2] == 0)]
    assert len(offs) == 2  # explicit note-offs when the pedal lifted, before any shutdown


def test_thru_passes_sustain_expression_bend_and_pressure(probe):
    sent = [[CC, 64, 127], [CC, 11, 90], [BEND, 0, 80], [PRESSURE, 50], [CC, 64, 0]]
    with session(probe, thru=True):
        settle(probe)
        for m in sent:
            probe.send(*m)
            time.sleep(0.01)
        probe.send(CC, DEFAULT_CCS["steer_pitch"], 127)  # the map's own: not passed on
        probe.send(CC | 5, 64, 127)  # not a player channel: not passed on
        assert probe.wait_for(lambda m: [x for _, x in m] == sent)
        time.sleep(0.2)
        assert [x for _, x in probe.messages()] == sent
