"""``play`` presets with a grid and swing per voice (used with ``--clock``)."""

from __future__ import annotations

import threading
import time

import pytest
from aio import run_async

from notochord_rt.apps.live.beat import BeatSync
from notochord_rt.apps.live.clock import InternalClock
from notochord_rt.apps.play.presets import parse_presets
from notochord_rt.apps.play.voices import Rig, VoiceConfig
from notochord_rt.errors import InputError


class SilentSink:
    """A player sink that drops the notes: the tests listen to the player's events."""

    def note(self, inst, pitch, vel):
        pass

    def panic(self):
        pass


class Onsets:
    """Collects the send times of a player's note-ons (thread-safe), per instrument."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: dict[int, list[float]] = {}
        self.kinds: dict[str, int] = {}  # every event kind seen (for failure messages)
        self.errors: list[str] = []

    def __call__(self, e) -> None:
        with self.lock:
            self.kinds[e.kind] = self.kinds.get(e.kind, 0) + 1
            if e.kind == "output" and e.vel:
                self.times.setdefault(e.inst, []).append(e.t)  # planned send time
            elif e.kind == "error":
                self.errors.append(repr(e.info))

    def report(self) -> str:
        with self.lock:
            return f"events {self.kinds}, errors {self.errors}"

    def distinct(self, inst: int) -> list[float]:
        with self.lock:
            return sorted(set(self.times.get(inst, [])))

    def clear(self) -> None:
        with self.lock:
            self.times.clear()


def clocked_player(rig: Rig, bpm: float):
    """(player, policy, clock, onsets): a tiny model playing ``rig`` on an internal clock
    at ``bpm``; nothing started yet."""
    from tiny import tiny_model

    from notochord_rt.apps.live.player import Player
    from notochord_rt.apps.play.policy import VoicesPolicy

    clock = InternalClock(bpm)
    policy = VoicesPolicy(rig)
    player = Player(tiny_model(), SilentSink(), policy, beat_clock=clock)
    onsets = Onsets()
    player.add_listener(onsets)
    return player, policy, clock, onsets


PRESETS = """
[[preset]]
name = "groove"
channel.1 = {mode = "input", inst = "acoustic grand"}
channel.2 = {mode = "auto", inst = "violin", grid = "1/16", swing = 0.3}
channel.3 = {mode = "auto", inst = "cello", grid = "1/16", swing = 0.3}
channel.4 = {mode = "follow", inst = "contrabass", source = 1}
"""


def test_preset_voices_set_grid_and_swing_and_the_clock_gives_the_tempo():
    book = parse_presets(PRESETS)
    rig = book.rig("groove")
    assert rig.voices[1].grid == "1/16" and rig.voices[1].swing == 0.3
    cons = rig.constraints()
    assert (cons.grid, cons.swing, cons.bpm) == ("1/16", 0.3, None)
    clock = InternalClock(96.0).start()
    placed = BeatSync(clock).constraints(cons, time.perf_counter())
    assert placed.bpm == 96.0 and placed.grid == "1/16"


@pytest.mark.parametrize("voice,needle", [
    ({"grid": "1/5"}, "grid"), ({"grid": "1/16", "swing": 2}, "swing"),
    ({"swing": 0.2}, "swing"), ({"grid": "1/8t", "swing": 0.2}, "swing"),
])
def test_bad_voice_grids_name_the_channel_and_field(voice, needle):
    with pytest.raises(InputError, match=f"channel 2: {needle}"):
        VoiceConfig.from_dict(1, {"mode": "auto", "inst": "violin", **voice})


def test_auto_voices_with_different_grids_get_one_each():
    rig = Rig(voices={1: VoiceConfig(1, 41, "auto", grid="1/16", swing=0.2),
                      2: VoiceConfig(2, 42, "auto", grid="1/8t"),
                      3: VoiceConfig(3, 43, "auto")}).validate()
    cons = rig.constraints()
    assert cons.grid is None and cons.inst_grid == {41: "1/16", 42: "1/8t"}
    assert cons.inst_swing == {41: 0.2}
    rig.voices[2].grid, rig.voices[2].swing = "1/16", 0.2
    rig.voices[3].grid, rig.voices[3].swing = "1/16", 0.2
    shared = rig.constraints()  # one grid for all: the shared field, as before
    assert (shared.grid, shared.swing, shared.inst_grid) == ("1/16", 0.2, None)


def test_voices_on_a_clock_play_on_their_own_grids():
    """Two auto voices, quarter notes and eighth-note triplets, on a 180 BPM internal
    clock: every onset the player sends lies on its own voice's grid."""
    rig = Rig(voices={1: VoiceConfig(1, 41, "auto", grid="1/4", duration=(0.0, 0.2)),
                      2: VoiceConfig(2, 33, "auto", grid="1/8t", duration=(0.0, 0.2))},
              max_time=0.4).validate()
    player, policy, clock, onsets = clocked_player(rig, 180.0)
    player.start()
    try:
        player.call(policy.start)
        clock.start()
        end = time.monotonic() + 20
        while time.monotonic() < end and min(len(onsets.distinct(i)) for i in (41, 33)) < 4:
            time.sleep(0.02)
        beats = {i: [clock.info(t).beat for t in onsets.distinct(i)] for i in (41, 33)}
    finally:
        player.stop()
        clock.close()
    for inst, step in ((41, 1.0), (33, 1 / 3)):
        assert len(beats[inst]) >= 4, (beats, onsets.report())
        for b in beats[inst]:  # planned on the grid (the player's own times)
            assert abs(b / step - round(b / step)) * step * 60 / 180 < 1e-6, (inst, b)


@pytest.mark.slow
def test_the_tui_shows_tempo_bar_beat_and_the_clock_source():
    from notochord_rt.apps.play.policy import PlayController
    from notochord_rt.apps.play.tui import PlayApp

    rig = Rig(voices={0: VoiceConfig(0, 1, "input"),
                      1: VoiceConfig(1, 41, "auto", grid="1/8", duration=(0.0, 0.4))},
              max_time=0.3).validate()

    player, policy, clock, _ = clocked_player(rig, 100.0)
    ctl = PlayController(player, policy, None)
    player.start()
    player.call(policy.start)
    clock.start()

    async def run() -> str:
        app = PlayApp(ctl, poll_interval=0.02)
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(100):
                await pilot.pause(0.02)
                if "BPM" in getattr(app._next, "shown_text", ""):
                    break
            return app._next.shown_text

    try:
        shown = run_async(run())
    finally:
        player.stop()
        clock.close()
    assert "100.0 BPM" in shown and "internal" in shown, shown


@pytest.mark.slow
def test_grid_and_swing_keys_set_every_voice_and_the_onsets_follow():
    """``g`` cycles the grid of the auto voices (free, 1/4, 1/8, ...), ``s`` the swing; the
    policy gets them at once and, on a clock, the voice's onsets fall on the new grid."""
    from notochord_rt.apps.play.policy import GRIDS, PlayController
    from notochord_rt.apps.play.tui import PlayApp

    rig = Rig(voices={0: VoiceConfig(0, 1, "input"),
                      1: VoiceConfig(1, 41, "auto", duration=(0.0, 0.2))},
              max_time=0.3).validate()
    got: list[float] = []  # beats of the onsets after the grid change
    player, policy, clock, onsets = clocked_player(rig, 150.0)
    ctl = PlayController(player, policy, None)
    player.start()
    player.call(policy.start)
    clock.start()

    async def run() -> tuple[list[str], float]:
        app = PlayApp(ctl, poll_interval=0.02)
        seen = []
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("s")  # no grid yet: swing stays off, the app goes on
            assert policy.rig.voices[1].swing == 0.0 and app.is_running
            for _ in GRIDS[1:3]:  # -> 1/4 -> 1/8
                await pilot.press("g")
                seen.append(policy.rig.voices[1].grid)
            await pilot.pause(0.1)
            assert "grid 1/8" in str(app._status.render())
            onsets.clear()
            for _ in range(1000):  # until 4 distinct onset times (a tiny model plays chords)
                await pilot.pause(0.02)
                if len(onsets.distinct(41)) >= 4:
                    break
            # (the clock's beat of a time, read while it plays)
            got.extend(clock.info(t).beat for t in onsets.distinct(41)[1:])
            await pilot.press("s")
            await pilot.pause(0.1)
            seen.append(policy.rig.voices[1].swing)
            for _ in GRIDS[3:] + GRIDS[:1]:  # round to free time
                await pilot.press("g")
            seen.append(policy.rig.voices[1].grid)
        return seen

    try:
        seen = run_async(run())
    finally:
        player.stop()
        clock.close()
    assert seen[:2] == ["1/4", "1/8"] and seen[2] > 0 and seen[3] is None
    assert len(got) >= 3, onsets.report()
    eighth = 60.0 / 150.0 / 2
    beats = [(b * 2) % 1.0 for b in got]  # position within an eighth
    off = [min(b, 1 - b) * eighth for b in beats]
    assert max(off) < 1e-6, off  # planned on the eighths
