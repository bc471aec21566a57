"""The live apps' ports as a musician meets them, through real JACK ports (dummy driver)
with a probe client on each side: names printed at start that ``jack_connect`` accepts,
a second app under its own names, the app's own ports never offered as inputs, a pulled
output connection (note-offs, one log line, the model in step) and a plugged one
(programs, controller state, missed note-offs), a killed JACK server (one line, a clean
exit, or waiting for it and reopening the ports)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jack as jk
import mido
import pytest
from jack import Probe, jack_or_skip, sounding_after
from tiny import tiny_model

from notochord_rt.apps.harmony import HarmonyPolicy, Voice
from notochord_rt.apps.live.ports import ChannelMap
from notochord_rt.apps.live.session import LiveOptions, LiveSession
from notochord_rt.errors import UserError

VIOLIN, PIANO = 41, 1
NOTE_ON, NOTE_OFF = 0x90, 0x80


@pytest.fixture(scope="module")
def jack():
    yield from jack_or_skip()


def harmony_session(client: str, **kw) -> LiveSession:
    opt = LiveOptions(api="jack", client_name=client, watch_interval=0.1, **kw)
    return LiveSession(tiny_model(0, init="default", sampler_seed=0),
                       HarmonyPolicy([Voice(VIOLIN, 1, 12)]), ChannelMap({0: PIANO}),
                       ChannelMap({1: VIOLIN}), opt)


def jack_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=10)


def got(probe: Probe, msg: list[int], timeout: float = 3.0) -> bool:
    return probe.wait_for(lambda m: msg in [x for _, x in m], timeout=timeout)


def on_channel(probe: Probe, channel: int) -> list[list[int]]:
    return [x for _, x in probe.messages() if x[0] == NOTE_ON | channel and x[2] > 0]


@pytest.mark.slow
def test_printed_names_connect_with_jack_connect_and_a_second_app_gets_its_own(jack):
    keys, synth = Probe("keys-n"), Probe("synth-n")
    try:
        with harmony_session("nrt", virtual_in=["in"], virtual_out=["out"]) as a, \
                harmony_session("nrt", virtual_in=["in"], virtual_out=["out"]) as b:
            assert a.port_lines() == ["in: nrt-in:in", "out: nrt:out"]
            assert b.port_lines() == ["in: nrt-2-in:in", "out: nrt-2:out"]
            listed = set(jack_cmd("jack_lsp").stdout.split())
            assert {"nrt-in:in", "nrt:out", "nrt-2-in:in", "nrt-2:out"} <= listed
            name = {ln.split(": ")[0]: ln.split(": ")[1] for ln in a.port_lines()}
            assert jack_cmd("jack_connect", keys.out_port, name["in"]).returncode == 0
            assert jack_cmd("jack_connect", name["out"], synth.in_port).returncode == 0
            # connected after the start: the synth still gets its program
            assert got(synth, [0xC1, VIOLIN - 1])
            time.sleep(0.2)
            keys.send(NOTE_ON, 60, 90)
            assert synth.wait_for(lambda m: len(on_channel(synth, 1)) == 1)
            keys.send(NOTE_OFF, 60, 0)
            assert synth.wait_for(lambda m: not sounding_after(m, all_notes_off=False))
    finally:
        keys.close()
        synth.close()


@pytest.mark.slow
def test_a_wrong_midi_in_lists_inputs_but_not_the_apps_own_ports(jack):
    keys = Probe("keys-w")
    try:
        with pytest.raises(UserError) as err:
            with harmony_session("nrtw", inputs=["nosuch"], virtual_out=["out"]):
                pass
        assert keys.out_port in str(err.value)
        assert "nrtw" not in str(err.value)
        with pytest.raises(UserError, match="no MIDI input port matches 'nrtw'"):
            with harmony_session("nrtw", inputs=["nrtw"], virtual_out=["out"]):
                pass
    finally:
        keys.close()


@pytest.mark.slow
def test_pulled_output_connection_releases_notes_and_replugging_restores_state(jack, caplog):
    keys, synth = Probe("keys-p"), Probe("synth-p")
    try:
        with harmony_session("nrtp", inputs=[keys.out_port], virtual_out=["out"]) as s:
            assert jack_cmd("jack_connect", "nrtp:out", synth.in_port).returncode == 0
            assert got(synth, [0xC1, VIOLIN - 1])
            s.out.send(mido.Message("control_change", channel=1, control=11, value=77))
            s.out.send(mido.Message("pitchwheel", channel=1, pitch=1000))
            time.sleep(0.2)
            keys.send(NOTE_ON, 60, 90)  # held: its harmony sounds
            assert synth.wait_for(lambda m: len(on_channel(synth, 1)) == 1)
            pitch = on_channel(synth, 1)[0][1]
            assert (VIOLIN, pitch) in s.player.sounding()
            caplog.clear()
            with caplog.at_level(logging.INFO):
                assert jack_cmd("jack_disconnect", "nrtp:out", synth.in_port).returncode == 0
                end = time.monotonic() + 3
                while s.player.sounding() and time.monotonic() < end:
                    time.sleep(0.02)
                time.sleep(0.2)
            assert s.player.sounding() == set()
            assert (VIOLIN, pitch) not in s.model.held_notes  # the note-off was fed
            lost = [r.getMessage() for r in caplog.records if "connection to" in r.getMessage()]
            assert lost == [f"MIDI out nrtp:out: connection to {synth.in_port} lost; "
                            "1 sounding notes released"]
            synth.clear()
            assert jack_cmd("jack_connect", "nrtp:out", synth.in_port).returncode == 0
            assert got(synth, [0xC1, VIOLIN - 1])
            assert got(synth, [0xB1, 11, 77])
            assert got(synth, [0xE1, (1000 + 8192) & 0x7F, (1000 + 8192) >> 7])
            assert got(synth, [NOTE_OFF | 1, pitch, 0])  # the note-off it missed
            keys.send(NOTE_OFF, 60, 0)
        assert sounding_after(synth.messages(), all_notes_off=False) == set()
    finally:
        keys.close()
        synth.close()


# -- a killed server -----------------------------------------------------------------------------
@pytest.fixture
def own_server():
    """A JACK server of this test's own, to kill (``jack.NAMES`` servers are shared)."""
    if jk.jack_available():
        pytest.skip(jk.jack_available())
    name = "nrt-kill"
    proc = jk._start(name, 1024, 48000)
    if proc is None:
        pytest.skip("the JACK server name nrt-kill is taken")
    box = {"proc": proc, "name": name}
    yield box
    jk._stop(box["proc"])


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    from notochord_rt.model.checkpoint import save_model

    path = tmp_path / "tiny.safetensors"
    save_model(tiny_model(0, init="default", sampler_seed=0), path)
    return path


def _app(server: str, checkpoint: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, JACK_DEFAULT_SERVER=server)
    return subprocess.Popen(
        [sys.executable, "-m", "notochord_rt", "improvise", "--checkpoint", str(checkpoint),
         "--precision", "module", "--voices", "2=violin", "--max-time", "0.1",
         "--midi-api", "jack", "--client-name", "nrtk", "--duration", "60", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ports_of(server: str) -> set[str]:
    r = subprocess.run(["jack_lsp", "-s", server], capture_output=True, text=True, timeout=10)
    return set(r.stdout.split())


def _wait(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


@pytest.mark.slow
def test_killed_server_is_one_line_and_a_clean_exit(own_server, checkpoint):
    app = _app(own_server["name"], checkpoint)
    try:
        assert _wait(lambda: {"nrtk:out", "nrtk-in:in"} <= _ports_of(own_server["name"]), 60)
        time.sleep(1.0)  # running
        own_server["proc"].kill()
        own_server["proc"].wait()
        _, err = app.communicate(timeout=20)
    finally:
        if app.poll() is None:
            app.kill()
            app.communicate()
    assert app.returncode == 3, err
    assert "Traceback" not in err
    ours = [ln for ln in err.splitlines() if "notochord_rt" in ln and "MIDI server" in ln]
    assert ours == ["ERROR notochord_rt.apps.live.connections: MIDI server stopped "
                    f"({ours[0].split('(')[1].split(')')[0]}): every note released; exiting"]
    own_server["proc"] = jk._start(own_server["name"], 1024, 48000)  # for a clean stop


@pytest.mark.slow
def test_killed_server_is_waited_for_and_the_ports_come_back(own_server, checkpoint):
    app = _app(own_server["name"], checkpoint, "--on-server-loss", "wait")
    name = own_server["name"]
    try:
        assert _wait(lambda: {"nrtk:out", "nrtk-in:in"} <= _ports_of(name), 60)
        time.sleep(1.0)  # running
        own_server["proc"].kill()
        own_server["proc"].wait()
        time.sleep(1.0)
        assert app.poll() is None  # still running, waiting
        own_server["proc"] = jk._start(name, 1024, 48000)
        assert _wait(lambda: {"nrtk:out", "nrtk-in:in"} <= _ports_of(name), 15)
        app.send_signal(signal.SIGTERM)
        _, err = app.communicate(timeout=20)
    finally:
        if app.poll() is None:
            app.kill()
            app.communicate()
    assert app.returncode in (130, 143), err
    assert "Traceback" not in err
    assert "waiting for it to come back" in err and "MIDI server is back" in err
    assert len(err.splitlines()) < 60, err  # libjack's lines at the death; none per note


@pytest.mark.slow
def test_the_cli_prints_its_ports_and_jack_connect_takes_them(jack, checkpoint):
    """``improvise`` prints ``in: ...`` / ``out: ...`` (INFO, without -v); the printed
    names connect with ``jack_connect``; the synth connected later gets its program."""
    import threading

    synth = Probe("synth-c")
    app = _app(jack, checkpoint)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(app.stderr), daemon=True)
    reader.start()
    try:
        assert _wait(lambda: any("startup: out: " in ln for ln in lines), 60), lines
        shown = [ln.strip().split("startup: ")[1] for ln in lines
                 if "startup: in: " in ln or "startup: out: " in ln]
        assert [ln for ln in lines if "startup: in: " in ln][0].startswith("INFO ")
        ports = dict(ln.split(": ") for ln in shown)
        assert ports == {"in": "nrtk-in:in", "out": "nrtk:out"}
        assert ports["in"] in _ports_of(jack) and ports["out"] in _ports_of(jack)
        assert jack_cmd("jack_connect", ports["out"], synth.in_port).returncode == 0
        assert got(synth, [0xC1, VIOLIN - 1], timeout=5)
        assert synth.wait_for(lambda m: len(on_channel(synth, 1)) >= 2, timeout=10)
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=20)
        reader.join(5)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
        synth.close()
    assert "Traceback" not in "".join(lines)
    assert sounding_after(synth.messages(), all_notes_off=False) == set()
