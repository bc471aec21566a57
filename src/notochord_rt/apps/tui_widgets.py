"""Widgets of the ``notochord-rt play`` terminal UI (textual): channel strips, control bars,
the prediction / sounding / timing panels and the instrument picker.

They only display state handed to them and report clicks; the app
(:mod:`notochord_rt.apps.tui`) decides what a click or key does.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, OptionList, Static
from textual.widgets.option_list import Option

from .. import events as ev
from .voices import ControlSpec, VoiceConfig, instrument_groups, short_name

PITCH_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def pitch_name(pitch: int, inst: int) -> str:
    """``E4`` for melodic instruments, the pitch number for drum kits."""
    if ev.is_drum(inst):
        return str(pitch)
    return f"{PITCH_NAMES[pitch % 12]}{pitch // 12 - 1}"


def set_text(widget: Static, text: str) -> None:
    """Update a Static only when its text changes (each update costs a layout pass)."""
    if getattr(widget, "shown_text", None) != text:
        widget.shown_text = text  # type: ignore[attr-defined]
        widget.update(text)


class ChannelStrip(Vertical):
    """One MIDI channel: its tag (``-->01``, ``02``, ``01->03``), mode and instrument."""

    class Clicked(Message):
        """The mode (``what="mode"``) or instrument (``"inst"``) button was clicked."""

        def __init__(self, channel: int, what: str) -> None:
            super().__init__()
            self.channel, self.what = channel, what

    def __init__(self, channel: int) -> None:
        super().__init__(id=f"strip-{channel + 1}", classes="strip")
        self.channel = channel
        n = channel + 1
        self.tag = Static(f"ch {n:2d}", id=f"tag-{n}", classes="tag")
        self.mode = Button("--", id=f"mode-{n}", classes="mode")
        self.inst = Button("--", id=f"inst-{n}", classes="inst")
        self.mode.can_focus = self.inst.can_focus = False
        self._shown: tuple | None = None

    def compose(self) -> ComposeResult:
        yield self.tag
        yield self.mode
        yield self.inst

    def show(self, voice: VoiceConfig | None, selected: bool, sounding: int) -> None:
        """Display ``voice`` (None: unused channel) and how many of its notes sound."""
        if voice is None:
            shown = (f"ch {self.channel + 1:2d}", "--", "--", False, selected)
        else:
            shown = (f"{voice.label():>6} {'*' * min(sounding, 6)}", voice.state,
                     short_name(voice.inst), voice.mute, selected)
        if shown == self._shown:
            return
        self._shown = shown
        self.tag.update(shown[0])
        self.mode.label, self.inst.label = shown[1], shown[2]
        self.set_class(shown[3], "muted")
        self.set_class(selected, "selected")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        what = "mode" if event.button.has_class("mode") else "inst"
        self.post_message(self.Clicked(self.channel, what))


class ControlBar(Static):
    """A control's name, a bar of its value within its range, the value and its CCs."""

    WIDTH = 20

    def show(self, spec: ControlSpec, value: float, selected: bool) -> None:
        frac = spec.to_unit(value)
        filled = int(round(frac * self.WIDTH))
        ccs = ",".join(str(c) for c in spec.ccs) or "-"
        mark = ">" if selected else " "
        self.set_class(selected, "selected")
        set_text(self, f"{mark} {spec.name:<15}[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                       f"{value:5.2f}  cc {ccs}")


def describe_event(e: Any, now: float) -> str:
    """The next predicted event as a line: instrument, pitch, time from now, velocity, end."""
    if e is None or e.t < now - 0.25:  # none, or a plan that was dropped
        return "next: (nothing planned)"
    sampled = e.info
    vel = "off" if e.vel == 0 else f"vel {e.vel}"
    end = getattr(sampled, "end", 0.0)
    ms = (e.t - now) * 1000
    return (f"next: {short_name(e.inst, 22)}  {pitch_name(e.pitch, e.inst)} ({e.pitch})  "
            f"in {ms:6.0f} ms  {vel}  end {end:.3f}")


def describe_sounding(sounding: dict[tuple[int, int], int], limit: int = 12) -> str:
    """Sounding notes as lines ``Instrument  E4 (64) v80``."""
    if not sounding:
        return "sounding: none"
    lines = [f"sounding: {len(sounding)}"]
    for (inst, pitch), vel in sorted(sounding.items())[:limit]:
        lines.append(f"  {short_name(inst, 16):<16} {pitch_name(pitch, inst):>4} ({pitch:3d}) "
                     f"v{vel}")
    if len(sounding) > limit:
        lines.append(f"  ... and {len(sounding) - limit} more")
    return "\n".join(lines)


def describe_timing(summary: dict[str, Any]) -> str:
    """Latency (input → answer), lateness of planned events, model call times (ms)."""
    lines = ["timing (ms)      p50     p99"]
    for key, label in (("latency", "input->answer"), ("lateness", "lateness"),
                       ("sample", "sample"), ("feed", "feed")):
        s = summary.get(key, {})
        if s.get("n"):
            lines.append(f"{label:<14} {s['p50_ms']:7.2f} {s['p99_ms']:7.2f}")
        else:
            lines.append(f"{label:<14}       -       -")
    counts = summary.get("counts", {})
    lines.append(f"in {counts.get('inputs', 0)}  out {counts.get('outputs', 0)}  "
                 f"replans {counts.get('replans', 0)}")
    return "\n".join(lines)


class InstrumentPicker(ModalScreen[int | None]):
    """Pick an instrument: type to filter (any part of "Family: Name"), Enter takes the
    highlighted one, Escape cancels. Dismisses with the instrument id or None."""

    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, current: int | None = None) -> None:
        super().__init__()
        self.current = current
        self.items = [(i, f"{group}: {ev.instrument_name(i)}")
                      for group, insts in instrument_groups() for i in insts]

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Static("instrument (type to filter, Enter to choose, Esc to cancel)")
            yield Input(placeholder="filter", id="picker-filter")
            yield OptionList(*self._options(""), id="picker-list")

    def _options(self, text: str) -> list[Option]:
        words = text.lower().split()
        return [Option(f"{i:3d}  {label}", id=str(i)) for i, label in self.items
                if all(w in label.lower() or w == str(i) for w in words)]

    def on_mount(self) -> None:
        self.query_one(Input).focus()
        options = self.query_one(OptionList)
        if self.current is not None:
            for k, (i, _) in enumerate(self.items):
                if i == self.current:
                    options.highlighted = k

    def on_input_changed(self, event: Input.Changed) -> None:
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options(self._options(event.value))
        if options.option_count:
            options.highlighted = 0

    def on_input_submitted(self, event: Input.Submitted) -> None:
        options = self.query_one(OptionList)
        k = options.highlighted
        if k is None and options.option_count:
            k = 0
        self.dismiss(None if k is None else int(options.get_option_at_index(k).id or 0))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or 0))

    def on_key(self, event: Any) -> None:
        if event.key in ("up", "down"):  # move in the list while typing in the filter
            options = self.query_one(OptionList)
            if options.option_count:
                k = options.highlighted or 0
                k = max(0, min(options.option_count - 1, k + (1 if event.key == "down" else -1)))
                options.highlighted = k
            event.stop()

    def action_cancel(self) -> None:
        self.dismiss(None)
