"""The ``notochord-rt play`` terminal UI, headless with textual's pilot, around a real
:class:`Player` with a tiny random model writing to an in-memory sink; input arrives as
mido messages through the live apps' :class:`InputRouter`. One test runs the CLI through
real JACK MIDI ports (skipped where JACK is missing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import mido
import pytest
from aio import run_async
from jack import Probe, jack_or_skip, sounding_after
from midifiles import simple_song
from tiny import tiny_model

from notochord_rt import events as ev
from notochord_rt.apps.live.player import Player
from notochord_rt.apps.live.ports import ChannelMap
from notochord_rt.apps.live.session import InputRouter
from notochord_rt.apps.play.policy import (
    PlayController,
    VoicesPolicy,
    feed_prompt_file,
    layout_hook,
)
from notochord_rt.apps.play.presets import load_presets
from notochord_rt.apps.play.tui import PlayApp
from notochord_rt.apps.play.voices import Rig, VoiceConfig
from notochord_rt.cli import main

PIANO, VIOLIN, CELLO = 1, 41, 43
VIBES, MARIMBA, AC_BASS = 12, 13, 33
SIZE = (160, 48)



class Recorder:
    """An in-memory sink: every note with its time, what sounds now, panics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[float, int, int, int]] = []
        self.on: set[tuple[int, int]] = set()
        self.panics = 0

    def note(self, inst: int, pitch: int, vel: int) -> None:
        with self.lock:
            self.events.append((time.perf_counter(), inst, pitch, vel))
            (self.on.add if vel > 0 else self.on.discard)((inst, pitch))

    def panic(self) -> None:
        with self.lock:
            self.panics += 1

    def note_ons(self, inst: int | None = None, since: int = 0) -> list[tuple[int, int, int]]:
        with self.lock:
            return [(i, p, v) for _, i, p, v in self.events[since:]
                    if v > 0 and (inst is None or i == inst)]

    def sounding(self) -> set[tuple[int, int]]:
        with self.lock:
            return set(self.on)


class Rig_:
    """A running player + policy + controller + router for one test."""

    def __init__(self, rig: Rig, book=None, model=None, prompt_state=None) -> None:
        self.model = model or tiny_model()
        if prompt_state is None:
            self.model.reset(seed=0)
        self.sink = Recorder()
        self.policy = VoicesPolicy(rig, prompt_state=prompt_state)
        self.player = Player(self.model, self.sink, self.policy,
                             reset_on_start=prompt_state is None)
        self.router = InputRouter(
            self.player, ChannelMap(rig.input_channels()),
            controls={cc: s.name for s in rig.controls.values() for cc in s.ccs},
            actions={cc: a for a, ccs in rig.actions.items() for cc in ccs})
        self.policy.on_layout = layout_hook(self.router, None)
        self.ctl = PlayController(self.player, self.policy, book)
        self.player.start()
        self.player.call(self.policy.start)

    def play(self, channel: int, pitch: int, vel: int) -> None:
        kind = "note_on" if vel else "note_off"
        self.router(mido.Message(kind, channel=channel, note=pitch, velocity=vel))

    def app(self, **kw) -> PlayApp:
        return PlayApp(self.ctl, poll_interval=0.02, **kw)


async def until(pilot, pred, timeout: float = 8.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await pilot.pause(0.02)
    return bool(pred())


@pytest.fixture(scope="module")
def book():
    return load_presets()


def solo(inst: int = VIOLIN, **kw) -> Rig:
    v = VoiceConfig(1, inst, "auto", duration=(0.0, 0.4), **kw)
    rig = Rig(voices={0: VoiceConfig(0, PIANO, "input"), 1: v}, max_time=0.3)
    rig.controls["steer_rate"].value = 0.9  # short gaps: the voice plays often
    return rig.validate()


def label(app: PlayApp, channel: int, what: str) -> str:
    """What the mixer shows for a channel: its ``tag``, ``mode`` or ``inst``."""
    return app._mixer.cells[channel][("tag", "mode", "inst").index(what)]


async def click_cell(pilot, channel: int, what: str) -> None:
    """Click a channel's mode or instrument line in the mixer (inside its border)."""
    mixer = pilot.app._mixer
    w = mixer.cell_width
    row, col = divmod(channel, 8)
    line = ("tag", "mode", "inst").index(what)
    await pilot.click(mixer, offset=(1 + col * w + w // 2, 1 + row * 4 + line))


# -- voices: mode and instrument ---------------------------------------------------------------
def quiet_duet(book) -> Rig:
    """The duet preset with its auto voice muted: the player idles (a tiny model's sampling
    is pure Python and would compete with the UI for the GIL on a loaded machine)."""
    rig = book.rig("duet")
    rig.voices[1].mute = True
    rig.stopped = True  # and auto voices stay silent when unmuted
    return rig


@pytest.mark.slow
def test_keys_change_mode_and_instrument_and_the_player_is_told(book):
    r = Rig_(quiet_duet(book), book)

    async def go():
        async with r.app().run_test(size=SIZE) as pilot:
            app = pilot.app
            assert app.channel == 0
            await pilot.press("right")
            assert app.channel == 1
            assert await until(pilot, lambda: app._mixer.selected == 1)
            assert label(app, 1, "mode") == "mute"
            seen = []
            for _ in range(4):  # mute -> auto -> input -> follow -> mute
                await pilot.press("o")
                state = r.ctl.rig.voices[1].state
                seen.append(state)
                assert await until(pilot, lambda s=state: r.policy.rig.voices[1].state == s)
                await pilot.pause(0.05)
                assert label(app, 1, "mode") == state
                if state == "input":  # the router now feeds channel 2 to the model
                    assert r.router.cmap.inst_of(1) == r.ctl.rig.voices[1].inst
                if state == "follow":
                    assert r.policy.rig.voices[1].source == 0  # the input voice
            assert seen == ["auto", "input", "follow", "mute"]
            assert r.policy.rig.voices[1].mode == "follow"  # muting keeps the mode
            assert r.router.cmap.inst_of(1) is None
            await pilot.press("i")
            for k in "cello":
                await pilot.press(k)
            await pilot.press("enter")
            assert await until(pilot, lambda: r.policy.rig.voices[1].inst == CELLO)
            assert r.ctl.rig.voices[1].inst == CELLO
            await pilot.pause(0.05)
            assert label(app, 1, "inst") == "Cello"
            await pilot.press("i", "escape")  # cancel: nothing changes
            await pilot.pause(0.05)
            assert r.ctl.rig.voices[1].inst == CELLO
            await pilot.press("space")  # unmute: back to follow
            assert await until(pilot, lambda: r.policy.rig.voices[1].state == "follow")
            assert label(app, 4, "mode") == "--"
            await click_cell(pilot, 4, "mode")  # an unused channel gets a voice by clicking
            assert await until(pilot, lambda: 4 in r.policy.rig.voices)
            assert app.channel == 4 and r.policy.rig.voices[4].state == "auto"
            await click_cell(pilot, 12, "inst")  # the instrument line opens the picker
            await pilot.press(*"tuba", "enter")
            assert await until(pilot, lambda: r.policy.rig.voices.get(12) is not None)
            assert r.policy.rig.voices[12].inst == 59 and label(app, 12, "inst") == "Tuba"

    run_async(go())
    r.player.stop()
    assert r.player.error is None


@pytest.mark.slow
def test_instrument_change_releases_the_old_notes_and_plays_the_new(book):
    r = Rig_(solo())

    async def go():
        async with r.app().run_test(size=SIZE) as pilot:
            assert await until(pilot, lambda: len(r.sink.note_ons(VIOLIN)) >= 3)
            assert await until(pilot, lambda: r.ctl.next_event is not None)
            assert r.ctl.next_event.inst == VIOLIN  # the predicted event is shown
            assert "next:" in str(pilot.app._next.render())
            pilot.app.channel = 1
            changes = r.policy.view.changes
            await pilot.press("i", "4", "3", "enter")  # typing the id works too
            assert await until(pilot, lambda: r.policy.view.changes > changes)
            mark = len(r.sink.events)
            assert not any(i == VIOLIN for i, _ in r.sink.sounding())
            assert await until(pilot, lambda: len(r.sink.note_ons(CELLO)) >= 2)
            assert r.sink.note_ons(VIOLIN, since=mark) == []

    run_async(go())
    r.player.stop()
    assert r.sink.sounding() == set()


@pytest.mark.slow
def test_taken_instrument_becomes_anonymous(book):
    r = Rig_(quiet_duet(book), book)

    async def go():
        async with r.app().run_test(size=SIZE) as pilot:
            await pilot.press("right", "i", *"sax", "down", "down", "enter")
            assert await until(pilot, lambda: r.policy.rig.voices[1].inst == 67)  # tenor sax
            await pilot.press("i", "1", "enter")  # id 1 is channel 1's piano
            assert await until(pilot, lambda: r.policy.rig.voices[1].inst != 5)
            v = r.policy.rig.voices[1]
            assert ev.FIRST_ANON <= v.inst <= ev.LAST_ANON and v.program == 0
            await pilot.pause(0.1)
            text = "\n".join(str(line) for line in pilot.app._log.lines)
            assert "is taken" in text

    run_async(go())
    r.player.stop()


# -- global switches, controls, presets ------------------------------------------------------------
@pytest.mark.slow
def test_mute_stop_and_query_keys(book):
    r = Rig_(solo())
    planned = []
    r.player.add_listener(lambda e: planned.append(e) if e.kind == "planned" else None)

    async def go():
        async with r.app().run_test(size=SIZE) as pilot:
            assert await until(pilot, lambda: len(r.sink.note_ons(VIOLIN)) >= 2)
            for key, flag in (("m", "muted"), ("x", "stopped")):
                await pilot.press(key)
                assert await until(pilot, lambda f=flag: getattr(r.policy.view, f))
                assert r.sink.sounding() == set()  # the model's notes were released
                mark = len(r.sink.events)
                await pilot.pause(0.4)
                assert r.sink.note_ons(since=mark) == []
                assert await until(
                    pilot, lambda f=flag: f.upper() in str(pilot.app._status.render()))
                await pilot.press(key)
                assert await until(pilot, lambda f=flag: not getattr(r.policy.view, f))
                assert await until(pilot, lambda m=mark: len(r.sink.note_ons(since=m)) >= 1)
            n = len(planned)
            await pilot.press("n")  # query: plan the next event again
            assert await until(pilot, lambda: len(planned) > n)

    run_async(go())
    r.player.stop()


@pytest.mark.slow
def test_control_keys_and_ccs_move_the_controls(book):
    r = Rig_(quiet_duet(book), book)

    async def go():
        async with r.app().run_test(size=SIZE) as pilot:
            app = pilot.app
            await pilot.press("down", "down")
            assert app.control_names[app.control_index] == "steer_rate"
            start = r.policy.view.values["steer_rate"]
            await pilot.press("plus", "plus", "plus", "plus")
            want = start + 4 * 0.05
            assert await until(pilot, lambda: abs(r.policy.view.values["steer_rate"] - want) < 1e-9)
            window = r.policy.rig.steering()["truncate_quantile_time"]
            assert window[0] == 0.0 and window[1] < 1.0  # faster: the short times are kept
            await pilot.pause(0.1)
            panel = app._controls
            assert panel.lines["steer_rate"].startswith("> steer_rate")
            assert f"{want:5.2f}" in panel.lines["steer_rate"]
            await pilot.press("minus")
            assert await until(
                pilot, lambda: abs(r.policy.view.values["steer_rate"] - (want - 0.05)) < 1e-9)
            # MIDI CCs through the input router: CC 22 is steer_rate (0 -> low end)
            r.router(mido.Message("control_change", channel=0, control=22, value=0))
            assert await until(pilot, lambda: r.policy.view.values["steer_rate"] == 0.0)
            r.router(mido.Message("control_change", channel=0, control=24, value=127))
            assert await until(pilot, lambda: r.policy.view.values["pitch_temp"] == 1.0)
            r.router(mido.Message("control_change", channel=0, control=20, value=127))
            assert await until(pilot, lambda: r.policy.view.values["steer_pitch"] == 1.0)
            r.router(mido.Message("control_change", channel=0, control=104, value=127))  # mute
            assert await until(pilot, lambda: r.policy.view.muted)
            assert await until(pilot, lambda: "MUTED" in str(app._status.render()))
            assert f"{0.0:5.2f}" in panel.lines["steer_rate"]  # the UI shows the CC's value
            assert f"{0.0:5.2f}" in str(panel.render()).splitlines()[2]

    run_async(go())
    r.player.stop()


def test_preset_keys_load_presets(book):
    r = Rig_(quiet_duet(book), book)

    async def go():
        async with r.app().run_test(size=SIZE) as pilot:
            await pilot.press("3")
            want = book.rig("follows").voices
            assert await until(pilot, lambda: r.policy.rig.voices == want)
            assert pilot.app.sub_title == "follows"
            assert r.router.cmap.inst == {ch: v.inst for ch, v in want.items()
                                          if v.state == "input"}
            await pilot.press("9")  # there is no ninth preset
            await pilot.pause(0.1)
            assert "no preset 9" in "\n".join(str(line) for line in pilot.app._log.lines)
            assert r.policy.rig.voices == want

    run_async(go())
    r.player.stop()


# -- follow voices, panic, reset, quit -------------------------------------------------------------
def test_follow_voices_answer_played_notes_and_end_with_them(book):
    r = Rig_(book.rig("follows"), book)

    async def go():
        async with r.app().run_test(size=SIZE) as pilot:
            await pilot.pause(0.1)
            r.play(0, 60, 90)
            assert await until(pilot, lambda: len(r.sink.note_ons()) >= 3)
            ons = {i: (p, v) for i, p, v in r.sink.note_ons()}
            assert set(ons) == {VIBES, MARIMBA, AC_BASS}
            assert 63 <= ons[VIBES][0] <= 75 and ons[VIBES][1] == 90
            assert ons[VIBES][0] - 15 <= ons[MARIMBA][0] <= ons[VIBES][0] - 3  # follows ch 2
            assert 28 <= ons[AC_BASS][0] <= 48
            assert await until(pilot, lambda: (PIANO, 60) in r.ctl.sounding)
            assert await until(pilot, lambda: len(r.ctl.sounding) == 4)
            assert "sounding: 4" in str(pilot.app._sounding.render())
            r.play(0, 60, 0)
            assert await until(pilot, lambda: r.sink.sounding() == set())
            assert await until(pilot, lambda: r.ctl.sounding == {})
            assert r.player.stats.summary()["latency"]["n"] >= 3

    run_async(go())
    r.player.stop()
    assert r.model.held_notes == {}


@pytest.mark.parametrize("key", ["p", "r"])
def test_panic_and_reset_release_every_note(book, key):
    r = Rig_(book.rig("follows"), book)
    resets = []
    r.player.add_listener(lambda e: resets.append(e) if e.kind == "reset" else None)

    async def go():
        async with r.app().run_test(size=SIZE) as pilot:
            await pilot.pause(0.1)
            r.play(0, 60, 90)
            r.play(0, 67, 90)
            assert await until(pilot, lambda: len(r.sink.sounding()) >= 4)
            await pilot.press(key)
            assert await until(pilot, lambda: r.sink.sounding() == set())
            assert r.sink.panics >= 1
            if key == "r":
                assert await until(pilot, lambda: len(resets) == 1)
                assert await until(pilot, lambda: r.ctl.sounding == {})
            else:  # panic keeps the stream: the model heard the note-offs
                assert await until(pilot, lambda: not any(
                    i != PIANO for i, _ in r.model.held_notes))

    run_async(go())
    r.player.stop()


@pytest.mark.parametrize("key", ["ctrl+q", "ctrl+c"])
@pytest.mark.slow
def test_quit_releases_every_note(book, key):
    r = Rig_(book.rig("follows"), book)

    async def go():
        async with r.app().run_test(size=SIZE) as pilot:
            await pilot.pause(0.1)
            r.play(0, 60, 90)  # held: its answers sound until the player stops
            assert await until(pilot, lambda: len(r.sink.sounding()) == 3)
            await pilot.press(key)
            await pilot.pause(0.1)

    run_async(go())
    assert not r.player.running
    assert r.sink.sounding() == set() and r.sink.panics >= 1


def test_player_error_ends_the_app_and_releases(book):
    r = Rig_(book.rig("follows"), book)

    async def go():
        app = r.app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.1)
            r.play(0, 60, 90)
            assert await until(pilot, lambda: len(r.sink.sounding()) == 3)

            def boom(ctx):
                raise RuntimeError("synth on fire")

            r.player.call(boom)
            assert await until(pilot, lambda: app.return_value == 1)
        return app

    app = run_async(go())
    assert "synth on fire" in app.exit_message
    assert r.sink.sounding() == set()


@pytest.mark.slow
def test_prompt_voices_start_and_reset_to_the_prompt(tmp_path, book, song_file, tiny):
    song = song_file
    model = tiny
    model.reset(seed=0)
    rig, state, notes = feed_prompt_file(model, str(song), book.rig("duet"))
    assert "prompt:" in notes[0]
    steps = state.step
    assert steps > 50 and rig.voices[0].mode == "input"  # the duet's input voice stays
    assert {v.inst for v in rig.voices.values() if v.mode == "auto"} >= {ev.STANDARD_KIT}
    model.reset()  # the player must bring the prompt state back
    r = Rig_(rig, book, model=model, prompt_state=state)
    at_reset = []
    r.player.add_listener(
        lambda e: at_reset.append(r.model.step_count) if e.kind == "reset" else None)

    async def go():
        async with r.app().run_test(size=SIZE) as pilot:
            assert await until(pilot, lambda: r.model.step_count > steps)
            await pilot.press("r")
            assert await until(pilot, lambda: len(at_reset) == 1)
            assert at_reset[0] == steps  # reset returned to the prompt, not to nothing

    run_async(go())
    r.player.stop()


def test_layout_hook_moves_channels_and_announces_new_instruments(book):
    """Voice changes reach the MIDI side: the output map follows the voices, a changed
    channel gets a program change (only that one), the router feeds the input channels."""
    from notochord_rt.apps.live.ports import MidiOut

    class Port:
        name = "fake"

        def __init__(self) -> None:
            self.sent: list[mido.Message] = []

        def send(self, msg: mido.Message) -> None:
            self.sent.append(msg)

    rig = book.rig("duet")
    port = Port()
    out = MidiOut([port], ChannelMap(rig.channel_insts(), rig.programs()))
    assert {m.channel for m in port.sent if m.type == "program_change"} == {0, 1}
    player = Player(tiny_model(), out, VoicesPolicy(rig))
    router = InputRouter(player, ChannelMap(rig.input_channels()), controls={}, actions={})
    hook = layout_hook(router, out)
    port.sent.clear()
    new = rig.copy()
    new.voices[1].inst = CELLO
    new.voices[2] = VoiceConfig(2, VIOLIN, "input")
    hook(new)
    progs = {m.channel: m.program for m in port.sent if m.type == "program_change"}
    assert progs == {1: CELLO - 1, 2: VIOLIN - 1}
    assert out.cmap.channel_of(CELLO) == 1 and out.cmap.channel_of(VIOLIN) == 2
    assert router.cmap.inst == {0: PIANO, 2: VIOLIN}
    out.note(CELLO, 48, 70)  # notes of the new instrument go to its channel
    assert port.sent[-1].type == "note_on" and port.sent[-1].channel == 1


def test_feed_prompt_file_reports_progress_and_rejects_bad_files(tmp_path, book):
    from notochord_rt.errors import UserError

    song = tmp_path / "song.mid"
    song.write_bytes(simple_song(drums=False))
    calls = []
    model = tiny_model()
    rig, state, _ = feed_prompt_file(model, str(song), book.rig("solo"),
                                     lambda k, n: calls.append((k, n)))
    assert calls and calls[-1][0] == calls[-1][1] == state.step
    assert [k for k, _ in calls] == list(range(1, state.step + 1))
    assert all(v.mode == "auto" for v in rig.voices.values())  # solo has no input voice
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd garbage")
    with pytest.raises(UserError, match="prompt .*bad.mid"):
        feed_prompt_file(model, str(bad), book.rig("solo"))


def test_policy_balances_the_auto_voices():
    """A voice that has played much more than another makes the policy favour the other
    (instrument weights), and reset forgets the counts."""
    from notochord_rt.apps.play.voices import BALANCE_MARGIN

    rig = Rig(voices={1: VoiceConfig(1, VIOLIN), 2: VoiceConfig(2, CELLO)}).validate()
    policy = VoicesPolicy(rig)

    class Played:
        inst, pitch, vel, is_note_on = VIOLIN, 60, 80.0, True

    assert policy.next_constraints(None).inst_weights == {}
    for _ in range(BALANCE_MARGIN + 3):
        policy.on_played(None, Played)
    weights = policy.next_constraints(None).inst_weights
    assert set(weights) == {CELLO} and weights[CELLO] > 1.0

    class Ctx:
        def reset_model(self, state=None):
            pass

    policy.on_reset(Ctx)
    assert policy.next_constraints(None).inst_weights == {}


# -- the CLI -------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["play", "--preset", "nope"], "no preset named 'nope'"),
    (["play", "--player", "1=violin"], "--player and --out-channels do not apply"),
    (["play", "--presets", "/nonexistent/p.toml"], "cannot read presets file"),
])
def test_cli_errors(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_cli_list_presets_and_bad_prompt(tmp_path, capsys, book):
    assert main(["play", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in book.names)
    ckpt = tmp_path / "tiny.safetensors"
    tiny_model().save(ckpt)
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not midi at all")
    assert main(["play", "--checkpoint", str(ckpt), "--prompt", str(bad)]) == 2
    assert "prompt" in capsys.readouterr().err


def _connected(server: str, *ports: str, timeout: float = 30.0) -> bool:
    """Wait until each of our JACK ``ports`` is connected to something (the app's ports).
    Messages sent before a connection is active are lost, so tests wait for this."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            lines = subprocess.run(["jack_lsp", "-c", "-s", server], capture_output=True,
                                   text=True, timeout=10).stdout.splitlines()
        except subprocess.TimeoutExpired:  # one slow listing on a loaded machine: ask again
            continue
        linked = {a for a, b in zip(lines, lines[1:]) if b.startswith(" ")}
        if all(p in linked for p in ports):
            return True
        time.sleep(0.1)
    return False


def _failed(proc: subprocess.Popen) -> str:
    """The app's exit status and stderr tail, for an assertion message."""
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate(timeout=10)
    return f"status {proc.returncode}: {err.decode()[-2000:]}"


@pytest.fixture
def jack():
    yield from jack_or_skip()


@pytest.mark.slow
def test_cli_through_jack_ports(jack, tmp_path):
    """The whole app on real JACK ports: follow voices answer a played note, and every note
    is off when it is killed (SIGTERM)."""
    ckpt = tmp_path / "tiny.safetensors"
    tiny_model().save(ckpt)
    probe = Probe("tuiprobe")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notochord_rt", "play", "--headless", "--duration", "60",
             "--checkpoint", str(ckpt), "--preset", "follows", "--seed", "0",
             "--midi-api", "jack", "--midi-in", probe.out_port, "--midi-out", probe.in_port],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
        try:
            assert _connected(jack, probe.out_port, probe.in_port), _failed(proc)
            time.sleep(0.5)  # connections take effect on a later JACK cycle
            probe.send(0x90, 60, 90)
            assert probe.wait_for(lambda ms: sum(
                1 for _, m in ms if m[0] & 0xF0 == 0x90 and m[2] > 0) >= 3, 5)
            ons = {m[0] & 0x0F: m[1] for _, m in probe.messages()
                   if m[0] & 0xF0 == 0x90 and m[2] > 0}
            assert set(ons) == {1, 2, 3} and 63 <= ons[1] <= 75  # channels 2, 3, 4
            programs = {m[0] & 0x0F: m[1] for _, m in probe.messages() if m[0] & 0xF0 == 0xC0}
            assert programs == {0: 0, 1: VIBES - 1, 2: MARIMBA - 1, 3: AC_BASS - 1}
            probe.send(0x80, 60, 0)
            assert probe.wait_for(lambda ms: not sounding_after(ms, all_notes_off=False), 5)
            probe.send(0x90, 64, 90)  # held while the app is killed: it releases the answers
            assert probe.wait_for(lambda ms: len(sounding_after(ms)) == 3, 5)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
        assert not sounding_after(probe.messages(), all_notes_off=False)
    finally:
        probe.close()


@pytest.mark.slow
def test_cli_exits_when_a_port_disappears(jack, tmp_path):
    """``--on-port-loss exit``: the app ends with status 3 and says which port was lost.
    (Started from a prompt, whose instruments play until then.)"""
    ckpt = tmp_path / "tiny.safetensors"
    tiny_model().save(ckpt)
    song = tmp_path / "song.mid"
    song.write_bytes(simple_song())
    probe = Probe("lossprobe")
    closed = False
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notochord_rt", "play", "--headless", "--duration", "30",
             "--checkpoint", str(ckpt), "--prompt", str(song), "--on-port-loss", "exit",
             "--midi-api", "jack", "--midi-in", probe.out_port, "--midi-out", probe.in_port],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
        try:
            assert _connected(jack, probe.out_port, probe.in_port), _failed(proc)
            # the prompt's instruments (but the piano, the first preset's input voice) play
            assert probe.wait_for(lambda ms: sum(
                1 for _, m in ms if m[0] & 0xF0 == 0x90 and m[2] > 0) >= 3, 10), _failed(proc)
            probe.close()
            closed = True
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 3, err.decode()[-2000:]
        assert "MIDI port lost" in err.decode()
    finally:
        if not closed:
            probe.close()
