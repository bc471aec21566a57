"""Widgets of the ``notochord-rt play`` terminal UI (textual): channel strips, control bars,
the prediction / sounding / timing panels and the instrument picker.

They only display state handed to them and report clicks; the app
(:mod:`notochord_rt.apps.play.tui`) decides what a click or key does.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from ... import events as ev
from .voices import ControlSpec, VoiceConfig, names_for_picker, short_name

PITCH_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def pitch_name(pitch: int, inst: int) -> str:
    """``E4`` for melodic instruments, the pitch number for drum kits."""
    if ev.is_drum(inst):
        return str(pitch)
    return f"{PITCH_NAMES[pitch % 12]}{pitch // 12 - 1}"


def abbreviate(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters, still telling instruments apart: the
    words but the last cut to two letters, the last one cut to fit, a number or a
    ``(variant)`` kept short at the end (``Acoustic Grand Piano`` → ``AcGrPian``,
    ``Electric Bass (finger)`` → ``ElBa(fi)``, ``Electric Piano 1`` → ``ElPiano1`` at 8)."""
    if len(name) <= width:
        return name
    words, suffix = name.split(), ""
    if len(words) > 1 and words[-1].startswith("("):
        suffix = "(" + words.pop().strip("()")[:2] + ")"
    elif len(words) > 1 and words[-1].isdigit():
        suffix = words.pop()
    prefix = "".join(w[:2] for w in words[:-1])
    room = width - len(prefix) - len(suffix)
    if room < 2:
        return name[: width - 1] + "."
    return prefix + words[-1][:room] + suffix


def set_text(widget: Static, text: str, layout: bool = False) -> None:
    """Update a Static only when its text changes, without a layout pass unless asked
    (the panels have fixed sizes; layout passes cost the model's thread the GIL)."""
    if getattr(widget, "shown_text", None) != text:
        widget.shown_text = text  # type: ignore[attr-defined]
        widget.update(text, layout=layout)


class Mixer(Static):
    """The 16 channels in two rows of 8 cells, drawn as one widget (many small widgets made
    every repaint cost tens of milliseconds of the GIL on a loaded machine).

    A cell shows the channel number (``03<01``: channel 3 follows channel 1) with a
    ``*`` per sounding note (up to 3), its mode and its instrument (abbreviated to the
    cell, :func:`abbreviate`; struck out when muted). Clicking a cell's mode line or
    instrument line posts :class:`Mixer.Clicked`; :attr:`cells` holds what is shown.
    """

    ROWS, LINES = 2, 3  # rows of channels; lines per cell (tag, mode, instrument)

    class Clicked(Message):
        """A cell was clicked: ``what`` is ``"mode"``, ``"inst"`` or ``"select"``."""

        def __init__(self, channel: int, what: str) -> None:
            super().__init__()
            self.channel, self.what = channel, what

    def __init__(self, **kw: Any) -> None:
        super().__init__(markup=False, **kw)
        self.cells: dict[int, tuple[str, str, str]] = {}
        self.selected = 0
        self._shown: tuple | None = None

    @property
    def cell_width(self) -> int:
        return max(4, (self.content_region.width or 96) // 8)  # always fits: 8 cells a row

    def show(self, voices: dict[int, VoiceConfig], selected: int,
             sounding: dict[int, int]) -> None:
        """Display the voices (by channel), the selected channel and the number of sounding
        notes per instrument."""
        cells = {}
        for ch in range(16):
            v = voices.get(ch)
            if v is None:
                cells[ch] = (f"{ch + 1:02d}", "--", "--")
            else:
                tag = f"{ch + 1:02d}"
                if v.mode == "follow":
                    tag += "<" + ("??" if v.source is None else f"{v.source + 1:02d}")
                stars = "*" * min(sounding.get(v.inst, 0), 3)
                name = abbreviate(short_name(v.inst, 40), self.cell_width - 1)
                cells[ch] = (f"{tag} {stars}".rstrip(), v.state, name)
        muted = tuple(ch for ch, v in voices.items() if v.mute)
        shown = (tuple(cells.items()), selected, muted, self.cell_width)
        if shown == self._shown:
            return
        self._shown, self.cells, self.selected = shown, cells, selected
        w = self.cell_width
        text = Text(no_wrap=True, overflow="crop")
        for row in range(self.ROWS):
            if row:
                text.append("\n" + "-" * (8 * w) + "\n")
            for line in range(self.LINES):
                if line:
                    text.append("\n")
                for ch in range(row * 8, row * 8 + 8):
                    style = "reverse" if ch == selected else ""
                    if line == 2 and ch in muted:
                        style += " strike dim"
                    text.append(cells[ch][line][: w - 1].center(w - 1), style=style.strip())
                    text.append("|")
        self.update(text, layout=False)

    def on_click(self, event: Any) -> None:
        at = event.get_content_offset(self)
        if at is None:  # on the border
            return
        w = self.cell_width
        col, y = at.x // w, at.y
        row, line = divmod(y, self.LINES + 1)
        if not (0 <= col < 8 and 0 <= row < self.ROWS and line < self.LINES):
            return
        what = ("select", "mode", "inst")[line]
        self.post_message(self.Clicked(row * 8 + col, what))


class LogPane(Static):
    """The last lines of the log in a fixed-size pane. Not a scrolling log on purpose: a
    growing scroll region re-lays out the whole screen on each write, which held the GIL
    long enough to delay the model's thread (docs/performance.md)."""

    def __init__(self, keep: int = 500, **kw: Any) -> None:
        super().__init__(markup=False, **kw)
        self.lines: deque[str] = deque(maxlen=keep)

    def write(self, text: str) -> None:
        """Add one or more lines (separated by newlines)."""
        self.lines.extend(text.split("\n"))
        rows = max(1, self.content_region.height or 10)
        set_text(self, "\n".join(list(self.lines)[-rows:]))


class ControlPanel(Static):
    """The steering controls, one line each: name, a bar of the value within its range,
    the value and its CCs; the selected one is marked with ``>``. One widget for all (a
    repaint costs per widget)."""

    WIDTH = 12

    def __init__(self, **kw: Any) -> None:
        super().__init__(markup=False, **kw)
        self.lines: dict[str, str] = {}

    def show(self, specs: list[ControlSpec], values: list[float], selected: int,
             legend: str = "") -> None:
        """Draw the controls; ``legend`` (e.g. the action CCs) is a last line."""
        lines = {}
        for k, (spec, value) in enumerate(zip(specs, values)):
            filled = int(round(spec.to_unit(value) * self.WIDTH))
            ccs = ",".join(str(c) for c in spec.ccs) or "-"
            mark = ">" if k == selected else " "
            lines[spec.name] = (f"{mark} {spec.name:<14} [{'#' * filled}"
                                f"{'.' * (self.WIDTH - filled)}] {value:5.2f} cc{ccs}")
        self.lines = lines
        set_text(self, "\n".join([*lines.values(), legend] if legend else lines.values()))


def describe_event(e: Any, now: float) -> str:
    """The next predicted event as a line: instrument, pitch, time from now, velocity, end."""
    if e is None or e.t < now - 0.25:  # none, or a plan that was dropped
        return "next: (nothing planned)"
    sampled = e.info
    vel = "off" if e.vel == 0 else f"vel {e.vel}"
    end = getattr(sampled, "end", 0.0)
    ms = getattr(sampled, "time", 0.0) * 1000  # the predicted delta, not a countdown
    return (f"next: {abbreviate(short_name(e.inst, 40), 12)} {pitch_name(e.pitch, e.inst)} "
            f"({e.pitch}) {vel}\n  after {ms:.0f} ms  end {end:.3f}")


def describe_sounding(sounding: dict[tuple[int, int], int], limit: int = 12) -> str:
    """Sounding notes as lines ``Instrument  E4 (64) v80``."""
    if not sounding:
        return "sounding: none"
    lines = [f"sounding: {len(sounding)}"]
    for (inst, pitch), vel in sorted(sounding.items())[:limit]:
        lines.append(f"  {abbreviate(short_name(inst, 40), 16):<16} "
                     f"{pitch_name(pitch, inst):>4} ({pitch:3d}) v{vel}")
    if len(sounding) > limit:
        lines.append(f"  ... and {len(sounding) - limit} more")
    return "\n".join(lines)


def describe_timing(summary: dict[str, Any]) -> str:
    """Latency (input → answer) and lateness of planned events (p50/p99 ms), counts."""
    lines = []
    for key, label in (("latency", "answer"), ("lateness", "late  ")):
        s = summary.get(key, {})
        if s.get("n"):
            lines.append(f"{label} p50 {s['p50_ms']:5.1f} p99 {s['p99_ms']:5.1f} ms")
        else:
            lines.append(f"{label} p50     - p99     - ms")
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
        self.items = names_for_picker()

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
