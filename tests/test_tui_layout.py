"""The ``play`` TUI as a musician meets it (issue 16), with textual's pilot around a real
player and a tiny model: quick ``+``/``-`` presses all count even while the player is
busy, everything needed is readable at 80×24 (channels 10-16, modes, instruments,
legends, the controls, the keys), ``q`` quits and releases every note, and the UI's
work stays off the scheduler thread."""

from __future__ import annotations

import sys
import time

import pytest
from aio import run_async
from test_tui import PIANO, Rig_, quiet_duet, until

from notochord_rt.apps.play.presets import load_presets
from notochord_rt.apps.play.tui import KEYS_HELP, SWITCH_INTERVAL, PlayApp
from notochord_rt.apps.play.widgets import abbreviate

SMALL = (80, 24)


@pytest.fixture(scope="module")
def book():
    return load_presets()


def screen_lines(app: PlayApp) -> list[str]:
    """The screen as plain text, one string per row."""
    strips = app.screen._compositor.render_strips()
    return ["".join(seg.text for seg in strip) for strip in strips]


def test_quick_presses_all_count_while_the_player_is_busy(book):
    r = Rig_(quiet_duet(book), book)

    async def go():
        async with r.app().run_test(size=SMALL) as pilot:
            app = pilot.app
            await pilot.press("down", "down")
            assert app.control_names[app.control_index] == "steer_rate"
            assert await until(pilot, lambda: "steer_rate" in r.policy.view.values)
            start = r.policy.view.values["steer_rate"]
            r.player.call(lambda ctx: time.sleep(0.3))  # the view lags behind the keys
            await pilot.press("plus", "plus", "plus")
            want = start + 3 * 0.05
            assert abs(app.control_value("steer_rate") - want) < 1e-9  # shown at once
            assert await until(
                pilot, lambda: abs(r.policy.view.values["steer_rate"] - want) < 1e-9)
            r.player.call(lambda ctx: time.sleep(0.3))
            await pilot.press("minus", "minus")
            assert await until(
                pilot, lambda: abs(r.policy.view.values["steer_rate"] - (want - 0.1)) < 1e-9)
            await pilot.pause(0.1)
            assert f"{want - 0.1:5.2f}" in app._controls.lines["steer_rate"]

    run_async(go())
    r.player.stop()


def test_everything_needed_is_readable_at_80x24(book):
    rig = book.rig("follows")
    for ch in (10, 13, 15):  # voices on the channels that used to read "ch 1"
        rig.voices[ch] = type(rig.voices[0])(ch, 33 + ch, "auto", mute=True)
    r = Rig_(rig.validate(), book)

    async def go():
        async with r.app().run_test(size=SMALL) as pilot:
            app = pilot.app
            await pilot.pause(0.3)
            lines = screen_lines(app)
            assert len(lines) == 24
            text = "\n".join(lines)
            # the mixer: every channel number, whole modes, instruments that fit a cell
            for ch in range(1, 17):
                assert f"{ch:02d}" in text
            assert "ch 1 " not in text.replace("ch 1 playing", "")
            cell = app._mixer.cell_width - 1
            assert cell >= 8
            for ch, v in app.ctl.rig.voices.items():
                tag, mode, inst = app._mixer.cells[ch]
                assert mode == v.state and mode in text
                assert inst == abbreviate(inst, cell) and len(inst) <= cell and inst in text
                if v.mode == "follow":
                    assert tag.startswith(f"{ch + 1:02d}<{v.source + 1:02d}")
            assert "follows" in text and "sounding" in text and "muted" in text  # legend
            # the controls with their CCs, the action CCs, the keys
            for name, spec in app.ctl.rig.controls.items():
                assert name in text and f"cc{spec.ccs[0]}" in text
            for key in KEYS_HELP.split("\n"):
                assert key.strip() in text
            for needed in ("q quit", "r reset", "p panic", "x stop", "n query", "1-0 presets"):
                assert needed in text
            # the selected channel in full, never cut
            assert "Acoustic Grand Piano" in text

    run_async(go())
    r.player.stop()


@pytest.mark.slow
def test_q_quits_and_releases_every_note(book):
    r = Rig_(book.rig("follows"), book)

    async def go():
        async with r.app().run_test(size=SMALL) as pilot:
            await pilot.pause(0.1)
            r.play(0, 60, 90)  # held: its answers sound until the player stops
            assert await until(pilot, lambda: len(r.sink.sounding()) == 3)
            await pilot.press("i", "q")  # in the instrument picker's filter q is a letter
            await pilot.pause(0.1)
            assert pilot.app.is_running
            await pilot.press("escape")
            await pilot.pause(0.1)
            await pilot.press("q")
            await pilot.pause(0.1)
            assert not pilot.app.is_running

    run_async(go())
    assert not r.player.running
    assert r.sink.sounding() == set() and r.sink.panics >= 1


def test_ui_work_stays_off_the_scheduler_thread(book):
    r = Rig_(quiet_duet(book), book)
    before = sys.getswitchinterval()

    async def go():
        async with r.app().run_test(size=SMALL) as pilot:
            await pilot.pause(0.1)
            # the player's listeners (run on its thread) only enqueue for the UI
            assert r.player._listeners
            for fn in r.player._listeners:
                assert type(getattr(fn, "__self__", None)).__name__ == "deque"
            # a thread waiting for the GIL waits at most ~0.5 ms for the UI thread
            assert sys.getswitchinterval() == SWITCH_INTERVAL
            r.play(0, 60, 90)
            await pilot.press("right", "plus", "left")
            assert await until(pilot, lambda: r.ctl.counts["input"] >= 1)

    run_async(go())
    r.player.stop()
    assert sys.getswitchinterval() == before
    assert all(i == PIANO for i, _ in r.model.held_notes)  # (only the played note remains)


def test_the_timing_panel_reads_a_bounded_recent_window(book):
    """A long session's history (100 000 values a series) is never copied or sorted by
    the UI: the panel shows the last TIMING_WINDOW values."""
    from notochord_rt.apps.play.tui import TIMING_WINDOW

    r = Rig_(quiet_duet(book), book)
    stats = r.player.stats
    for _ in range(50_000):
        stats.add("lateness", 0.0)
    for k in range(TIMING_WINDOW):
        stats.add("lateness", 0.005 + k * 1e-9)
    last = stats.recent("lateness", 3)
    assert list(last) == [0.005 + k * 1e-9 for k in range(TIMING_WINDOW - 3, TIMING_WINDOW)]

    async def go():
        async with r.app().run_test(size=SMALL) as pilot:
            summary = pilot.app.timing()
            assert summary["lateness"]["n"] == TIMING_WINDOW
            assert summary["lateness"]["p50_ms"] == pytest.approx(5.0, abs=0.01)
            await pilot.pause(0.2)
            assert "late   p50   5.0" in str(pilot.app._timing.render())

    run_async(go())
    r.player.stop()
