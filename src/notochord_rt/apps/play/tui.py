"""The terminal UI of ``notochord-rt play`` (textual), in the spirit of the reference's
homunculus (docs/design.md §7): a 16-channel mixer (mode and instrument per channel), the
steering controls, the next predicted event, the sounding notes, timing, and a log.

The app holds no music logic: keys and clicks call a
:class:`~notochord_rt.apps.play.policy.PlayController`, which tells the player; a timer polls the
controller for the player's events. Keys (shown at the bottom, :data:`KEYS_HELP`)::

    left/right  channel          o  cycle mode (auto, input, follow, mute)
    up/down     control          i  instrument picker      space  mute the channel
    + / -       move control     m  mute all (model)       x  stop/start auto voices
    r  reset (release all, new stream)   n  query: plan the next event again
    p  panic (release all now)   1..9, 0  presets
    q, ctrl+q, ctrl+c  quit (every note is released)

It fits 80x24: the mixer's cells are 9 characters wide at 80 columns, with a legend in
its bottom border; instrument names are abbreviated there (:func:`.widgets.abbreviate`)
and shown in full for the selected channel.

Notes never wait for the UI: the scheduler is the player's own thread, the player's
listener only appends to a deque, and while the app runs the interpreter switches
threads every :data:`SWITCH_INTERVAL` seconds (not 5 ms) and the objects made at start
are frozen out of the garbage collector's full passes, so that neither a long render
nor a collection holds the GIL long while a note is due.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from ... import events as ev
from .policy import PlayController
from .voices import N_CHANNELS
from .widgets import (
    ControlPanel,
    InstrumentPicker,
    LogPane,
    Mixer,
    abbreviate,
    describe_event,
    describe_sounding,
    describe_timing,
    set_text,
)

log = logging.getLogger(__name__)

CSS = """
Screen { layout: vertical; }
Mixer { height: 9; border: round $panel; border-subtitle-align: left; }
#main { height: 1fr; }
#left { width: 46; }
ControlPanel { height: auto; max-height: 12; padding: 0 1; }
#sounding { height: 1fr; padding: 0 1; }
#right { width: 1fr; padding: 0 1; }
#status { height: 2; }
#next { height: 2; }
#timing { height: 3; }
#log { height: 1fr; min-height: 3; border: round $panel; }
#keys { height: 2; background: $panel; }
InstrumentPicker { align: center middle; }
#picker { width: 70; height: 24; border: thick $accent; background: $surface; }
#picker-list { height: 1fr; }
"""


KEYS_HELP = ("q quit  \u2190\u2192 channel  \u2191\u2193 control  +/- move  o mode  "
             "i inst  1-0 presets  g grid\n"
             "space mute ch  m mute all  x stop/start  r reset  p panic  n query  s swing")
"""The key lines at the bottom (they fit 80 columns)."""

MIXER_LEGEND = ("NN<SS: NN follows SS \u00b7 * sounding \u00b7 struck out: muted \u00b7 "
                "full name at right")
"""The mixer's legend, in its bottom border."""

SWITCH_INTERVAL = 0.0005
"""The interpreter's thread switch interval while the app runs (default 5 ms): a thread
that wants the GIL waits at most about this long for the UI thread to give it up."""

TIMING_WINDOW = 2000
"""The timing panel's window: the last this many values of each series."""

PENDING = 0.5
"""Seconds a value set by a key counts as the control's value until the player's view
shows it (quick presses build on each other, none is lost)."""


class PlayApp(App[int]):
    """The multi-voice UI around a running player (see the module docstring for keys).

    ``check()`` (optional) is polled; a non-None ``(code, message)`` ends the app with that
    exit code (e.g. a lost MIDI port). ``duration`` ends the app after that many seconds.
    On exit the player is stopped, which releases every sounding note.
    """

    CSS = CSS
    TITLE = "notochord-rt play"
    BINDINGS = [
        Binding("left", "channel(-1)", "chan-"),
        Binding("right", "channel(1)", "chan+"),
        Binding("up", "control(-1)", "ctl-", show=False),
        Binding("down", "control(1)", "ctl+", show=False),
        Binding("plus,equals_sign", "nudge(1)", "+"),
        Binding("minus,underscore", "nudge(-1)", "-"),
        Binding("o", "mode", "mode"),
        Binding("i", "instrument", "inst"),
        Binding("space", "mute_channel", "mute ch"),
        Binding("m", "act('mute')", "mute"),
        Binding("x", "act('stop')", "stop"),
        Binding("r", "act('reset')", "reset"),
        Binding("n", "act('query')", "query"),
        Binding("q", "quit", "quit"),
        Binding("p", "act('panic')", "panic"),
        Binding("g", "grid", "grid"),
        Binding("s", "swing", "swing"),
        *[Binding(str((k + 1) % 10), f"preset({k})", show=False) for k in range(10)],
        Binding("ctrl+q", "quit", "quit", priority=True),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
    ]

    def __init__(self, controller: PlayController, *, duration: float | None = None,
                 check: Callable[[], tuple[int, str] | None] | None = None,
                 poll_interval: float = 0.1) -> None:
        super().__init__()
        self.ctl = controller
        self.channel = min(controller.rig.voices, default=0)
        self.control_names = list(controller.rig.controls)
        self.control_index = 0
        self.duration, self.check, self.poll_interval = duration, check, poll_interval
        self.exit_message: str | None = None
        self._ticks = 0
        self._view_seen: Any = None
        self._sigterm = False
        self._pending: dict[str, tuple[float, float]] = {}  # control -> (value, when set)
        self._switch = sys.getswitchinterval()

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        # the mixer across the top; left: the controls and what sounds; right: status,
        # next event, timing and log (the frequent updates repaint small fixed regions)
        mixer = Mixer(id="mixer")
        mixer.border_subtitle = MIXER_LEGEND
        yield mixer
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield ControlPanel(id="controls")
                yield Static(id="sounding", markup=False)
            with Vertical(id="right"):
                yield Static(id="status", markup=False)
                yield Static(id="next", markup=False)
                yield Static(id="timing", markup=False)
                yield LogPane(id="log")
        yield Static(KEYS_HELP, id="keys", markup=False)

    def on_mount(self) -> None:
        # widgets of the main screen, kept: while the picker is open, queries see the picker
        self._log = self.query_one("#log", LogPane)
        self._next = self.query_one("#next", Static)
        self._sounding = self.query_one("#sounding", Static)
        self._timing = self.query_one("#timing", Static)
        self._status = self.query_one("#status", Static)
        self._mixer = self.query_one(Mixer)
        self._controls = self.query_one(ControlPanel)
        self.sub_title = self.ctl.preset_name or ""
        sys.setswitchinterval(SWITCH_INTERVAL)
        gc.freeze()  # what exists now is never garbage: keep it out of full collections
        self.refresh_all()
        self.set_interval(self.poll_interval, self.tick)
        if self.duration is not None:
            self.set_timer(self.duration, lambda: self.exit(0))
        try:  # a killed app (SIGTERM) quits like ctrl+q: the player releases every note
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._terminated)
            self._sigterm = True
        except (NotImplementedError, RuntimeError, ValueError):  # Windows, not main thread
            self._sigterm = False

    def _terminated(self) -> None:
        self.exit_message = "terminated"
        self.exit(128 + signal.SIGTERM)

    def on_unmount(self) -> None:
        sys.setswitchinterval(self._switch)
        gc.unfreeze()
        if self._sigterm:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        self.ctl.player.stop()  # releases every sounding note (and the sink's panic)

    # -- display -----------------------------------------------------------------------------
    def refresh_all(self) -> None:
        """Redraw the mixer, controls and status from the controller."""
        per_inst: dict[int, int] = {}
        for inst, _ in self.ctl.sounding:
            per_inst[inst] = per_inst.get(inst, 0) + 1
        self._mixer.show(self.ctl.rig.voices, self.channel, per_inst)
        self._controls.show([self.ctl.rig.controls[n] for n in self.control_names],
                            [self.control_value(n) for n in self.control_names],
                            self.control_index, self.ctl.rig.control_map().action_legend())
        view = self.ctl.policy.view
        flags = [f for f, on in (("MUTED", view.muted), ("STOPPED", view.stopped)) if on]
        v = self.ctl.voice(self.channel)
        about = "no voice" if v is None else (
            f"{v.state} {v.range[0]}-{v.range[1]}\n{ev.instrument_name(v.inst)}")
        preset = f" [{self.sub_title}]" if self.sub_title else ""
        grid, swing = ((v.grid, v.swing) if v is not None and v.state == "auto"
                       else self.ctl.beat_grid())  # voices may each have their own
        beat = "" if grid is None else f"\ngrid {grid}" + (f" swing {swing:g}" if swing else "")
        set_text(self._status, f"ch {self.channel + 1} {' '.join(flags) or 'playing'}"
                               f"{preset}: {about}{beat}")

    def tick(self) -> None:
        """Poll the controller (player events, messages) and the exit conditions."""
        if not self.is_running:
            return
        self._ticks += 1
        events = self.ctl.poll()
        lines = self._drain_messages()
        for e in events:
            if e.kind in ("input", "output"):
                what = "on " if e.vel else "off"
                lines.append(f"{'in ' if e.kind == 'input' else 'out'} {what} "
                             f"{abbreviate(ev.instrument_name(e.inst), 12):<12} {e.pitch:3d} "
                             f"{e.vel:3d}")
        if lines:  # one write per tick
            self._log.write("\n".join(lines[-200:]))
        now = self.ctl.player.clock()
        beat = self.ctl.player.beat_info()  # --clock: tempo, bar:beat and the source
        set_text(self._next, describe_event(self.ctl.next_event, now) if beat is None
                 else f"{beat.text()}  |  {describe_event(self.ctl.next_event, now)}")
        set_text(self._sounding, describe_sounding(self.ctl.sounding))
        view = self.ctl.policy.view  # replaced by the policy on every change (CCs too)
        if events or view is not self._view_seen or self._ticks % 10 == 1:
            self._view_seen = view
            self.refresh_all()
        if self._ticks % 10 == 1:
            set_text(self._timing, describe_timing(self.timing()))
        if self.ctl.player.error is not None:
            self.exit_message = f"player stopped: {self.ctl.player.error}"
            self.exit(1)
        elif self.check is not None:
            stop = self.check()
            if stop is not None:
                self.exit_message = stop[1]
                self.exit(stop[0])

    def timing(self) -> dict[str, Any]:
        """Latency and lateness over the last :data:`TIMING_WINDOW` values, and the
        counts: the whole history (up to 100 000 values a series) would hold the GIL,
        and the stats lock the scheduler needs, for tens of milliseconds every second."""
        stats = self.ctl.player.stats
        out: dict[str, Any] = {"counts": dict(stats.counts)}
        for key in ("latency", "lateness"):
            v = stats.recent(key, TIMING_WINDOW)
            if len(v):
                p50, p99 = np.percentile(v, [50, 99]) * 1e3
                out[key] = {"n": len(v), "p50_ms": float(p50), "p99_ms": float(p99)}
        return out

    def _drain_messages(self) -> list[str]:
        out = []
        while self.ctl.messages:
            out.append(self.ctl.messages.popleft())
        return out

    # -- actions -----------------------------------------------------------------------------
    def action_channel(self, step: int) -> None:
        self.channel = (self.channel + step) % N_CHANNELS
        self.refresh_all()

    def action_control(self, step: int) -> None:
        self.control_index = (self.control_index + step) % len(self.control_names)
        self.refresh_all()

    def control_value(self, name: str) -> float:
        """The control's value: the one a key just set while the player's view does not
        show it yet (at most :data:`PENDING` s), else the view's (CCs move it too)."""
        shown = self.ctl.control_value(name)
        pending = self._pending.get(name)
        if pending is None:
            return shown
        value, when = pending
        if abs(shown - value) < 1e-9 or time.monotonic() - when > PENDING:
            del self._pending[name]
            return shown
        return value

    def action_nudge(self, steps: int) -> None:
        """Move the selected control by ``steps`` twentieths of its range, from the value
        the last key set (quick presses are never lost to a view not yet updated)."""
        name = self.control_names[self.control_index]
        spec = self.ctl.rig.controls[name]
        self.ctl.set_control(name, self.control_value(name) + steps * (spec.hi - spec.lo) / 20)
        self._pending[name] = (spec.value, time.monotonic())
        self.refresh_all()

    def action_mode(self) -> None:
        mode = self.ctl.cycle_mode(self.channel)
        self.ctl.say(f"channel {self.channel + 1}: {mode}")
        self.refresh_all()

    def action_mute_channel(self) -> None:
        self.ctl.toggle_mute(self.channel)
        self.refresh_all()

    def action_instrument(self) -> None:
        v = self.ctl.voice(self.channel)
        channel = self.channel

        def chosen(inst: int | None) -> None:
            if inst:
                self.ctl.set_inst(channel, inst)
                self.ctl.say(f"channel {channel + 1}: "
                             f"{ev.instrument_name(self.ctl.voice(channel).inst)}")  # type: ignore[union-attr]
                self.refresh_all()

        self.push_screen(InstrumentPicker(v.inst if v else None), chosen)

    def action_grid(self) -> None:
        self.ctl.cycle_grid()
        self.refresh_all()

    def action_swing(self) -> None:
        self.ctl.cycle_swing()
        self.refresh_all()

    def action_act(self, name: str) -> None:
        self.ctl.action(name)
        self.ctl.say(name)

    def action_preset(self, index: int) -> None:
        if self.ctl.book is None or index >= len(self.ctl.book.presets):
            self.ctl.say(f"no preset {index + 1}")
            return
        name = self.ctl.load_preset(index)
        self.sub_title = name
        self.refresh_all()

    def on_mixer_clicked(self, message: Mixer.Clicked) -> None:
        self.channel = message.channel
        if message.what == "mode":
            self.action_mode()
        elif message.what == "inst":
            self.action_instrument()
        else:
            self.refresh_all()
