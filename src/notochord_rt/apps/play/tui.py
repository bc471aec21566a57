"""The terminal UI of ``notochord-rt play`` (textual), in the spirit of the reference's
homunculus (docs/design.md §7): a 16-channel mixer (mode and instrument per channel), the
steering controls, the next predicted event, the sounding notes, timing, and a log.

The app holds no music logic: keys and clicks call a
:class:`~notochord_rt.apps.play.policy.PlayController`, which tells the player; a timer polls the
controller for the player's events. Keys::

    left/right  channel          o  cycle mode (auto, input, follow, mute)
    up/down     control          i  instrument picker      space  mute the channel
    + / -       move control     m  mute all (model)       x  stop/start auto voices
    r  reset (release all, new stream)   q  query again    p  panic (release all now)
    1..9, 0     presets          ctrl+q, ctrl+c  quit (every note is released)
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Static

from ... import events as ev
from .policy import PlayController
from .voices import N_CHANNELS, short_name
from .widgets import (
    ControlPanel,
    InstrumentPicker,
    LogPane,
    Mixer,
    describe_event,
    describe_sounding,
    describe_timing,
    set_text,
)

log = logging.getLogger(__name__)

CSS = """
Screen { layout: vertical; }
#main { height: 1fr; }
#left { width: 3fr; }
Mixer { height: 9; border: round $panel; }
ControlPanel { height: 9; padding: 0 1; }
#right { width: 2fr; padding: 0 1; }
#status { height: 2; }
#next { height: 2; }
#sounding { height: 10; }
#timing { height: 6; }
#log { height: 1fr; min-height: 4; border: round $panel; }
InstrumentPicker { align: center middle; }
#picker { width: 70; height: 24; border: thick $accent; background: $surface; }
#picker-list { height: 1fr; }
"""


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
        Binding("q", "act('query')", "query"),
        Binding("p", "act('panic')", "panic"),
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

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        # left: what the musician sets up; right: what happens (so that the frequent updates
        # on the right repaint only that column)
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Mixer(id="mixer")
                yield ControlPanel(id="controls")
            with Vertical(id="right"):
                yield Static(id="status", markup=False)
                yield Static(id="next", markup=False)
                yield Static(id="sounding", markup=False)
                yield Static(id="timing", markup=False)
                yield LogPane(id="log")
        yield Footer()

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
                            [self.ctl.control_value(n) for n in self.control_names],
                            self.control_index, self.ctl.rig.control_map().action_legend())
        view = self.ctl.policy.view
        flags = [f for f, on in (("MUTED", view.muted), ("STOPPED", view.stopped)) if on]
        v = self.ctl.voice(self.channel)
        about = "no voice" if v is None else (
            f"{v.label()} {v.state} {ev.instrument_name(v.inst)} range {v.range[0]}-{v.range[1]}")
        set_text(self._status,
            f"channel {self.channel + 1}: {about}\n{' '.join(flags) or 'playing'}")

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
                lines.append(f"{e.kind:<6} {what} {short_name(e.inst, 16):<16} {e.pitch:3d} "
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
            set_text(self._timing, describe_timing(self.ctl.timing()))
        if self.ctl.player.error is not None:
            self.exit_message = f"player stopped: {self.ctl.player.error}"
            self.exit(1)
        elif self.check is not None:
            stop = self.check()
            if stop is not None:
                self.exit_message = stop[1]
                self.exit(stop[0])

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

    def action_nudge(self, steps: int) -> None:
        name = self.control_names[self.control_index]
        self.ctl.nudge(name, steps)
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
