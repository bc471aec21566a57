"""Where the beat comes from: one :class:`Clock` interface for the live apps (issue 14).

A clock maps the wall clock (``time.perf_counter`` seconds) to a beat position (quarter
notes since the song's start) at a tempo, and says whether the music is playing. Sources:

* ``internal`` (:class:`InternalClock`) — our own tempo, ``--bpm N``; playing from start;
* ``midi`` (:class:`~.clock_midi.MidiClock`) — follows MIDI clock (24 ppqn, start / stop /
  continue, song position pointer) on an input port, the tempo estimated from the ticks
  (:class:`~.clock_midi.TempoEstimator`: smoothed against jitter, following a change
  within one beat); no tick for two beats is a stop, reported as ``lost``;
* ``link`` (:class:`~.clock_link.LinkClock`) — an Ableton Link peer (PyPI ``aalink``):
  tempo, beat and phase shared with every Link app on the network, quantum settable.

Without ``--clock`` the apps run in free time, as before: nothing changes unless asked.
:class:`~.clock_midi.ClockSender` sends MIDI clock and start / stop on an output port
when the tempo is ours (internal or Link), so hardware follows us.

Changes (start, stop, continue, tempo, position, lost, errors) are reported to the
callbacks given to :meth:`Clock.subscribe` as :class:`ClockEvent` s, from the clock's own
thread: a subscriber only enqueues (the player's thread acts on them). Bad values — a
tempo of 0, negative or over 999 BPM, a song position beyond the piece — are
:class:`~notochord_rt.errors.InputError` / :class:`~notochord_rt.errors.UserError` when
given by the user, and reported (logged, an ``error`` event) when they arrive on a wire;
they never stop the clock thread.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...engine.sampling.grid import BPM_MAX, BPM_MIN, check_bpm
from ...errors import UserError

log = logging.getLogger(__name__)

SOURCES = ("internal", "midi", "link")
"""The ``--clock`` choices (no ``--clock``: free time)."""
PPQN = 24
"""MIDI clock ticks per quarter note."""


@dataclass(frozen=True)
class BeatInfo:
    """A clock's reading at one instant.

    ``beat`` counts quarter-note beats from the song's start (0 = its first downbeat);
    ``bpm`` is ``None`` while a followed clock has no tempo yet; ``playing`` is False
    while stopped (or lost); ``per_bar`` beats make a bar.
    """

    source: str
    bpm: float | None
    beat: float
    playing: bool
    per_bar: int = 4

    @property
    def bar_beat(self) -> tuple[int, int]:
        """``(bar, beat)``, both counted from 1 as musicians do (``1:1`` = the start)."""
        whole = math.floor(self.beat + 1e-9)
        return whole // self.per_bar + 1, whole % self.per_bar + 1

    def text(self) -> str:
        """One status line: ``"120.0 BPM  3:2  midi"`` (``stopped`` when not playing)."""
        bar, beat = self.bar_beat
        tempo = "--- BPM" if self.bpm is None else f"{self.bpm:.1f} BPM"
        state = "" if self.playing else "  stopped"
        return f"{tempo}  {bar}:{beat}  {self.source}{state}"


@dataclass(frozen=True)
class ClockEvent:
    """A change of a clock: ``kind`` is one of ``start``, ``stop``, ``continue``,
    ``tempo``, ``position``, ``lost`` (a followed clock went silent: treated as a stop)
    or ``error`` (something unusable arrived; ``message`` says what)."""

    kind: str
    info: BeatInfo
    message: str = ""


Subscriber = Callable[[ClockEvent], None]


class Clock:
    """The interface of every clock source (see the module doc). Thread-safe reads."""

    source = "clock"

    def __init__(self, per_bar: int = 4) -> None:
        if isinstance(per_bar, bool) or not isinstance(per_bar, int) or not 1 <= per_bar <= 64:
            raise UserError(f"beats per bar must be an integer in 1..64, got {per_bar!r}")
        self.per_bar = per_bar
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    # -- what every source provides ----------------------------------------------------------
    def info(self, t: float | None = None) -> BeatInfo:
        """The reading at ``perf_counter`` time ``t`` (default now)."""
        raise NotImplementedError

    def time_at(self, beat: float) -> float | None:
        """The ``perf_counter`` time at which ``beat`` is reached at the current tempo
        (``None`` without a tempo)."""
        now = time.perf_counter()
        i = self.info(now)
        if i.bpm is None:
            return None
        return now + (beat - i.beat) * 60.0 / i.bpm

    def start(self) -> Clock:
        """Start following / running; returns ``self``."""
        return self

    def close(self) -> None:
        """Stop the clock's threads and ports; safe to call twice."""

    # -- events --------------------------------------------------------------------------------
    def subscribe(self, fn: Subscriber) -> None:
        """Call ``fn(ClockEvent)`` on every change (from the clock's thread)."""
        self._subscribers.append(fn)

    def _emit(self, kind: str, message: str = "", t: float | None = None) -> None:
        event = ClockEvent(kind, self.info(t), message)
        if kind in ("lost", "error"):
            log.warning("clock %s: %s", self.source, message or kind)
        else:
            log.info("clock %s: %s %s", self.source, kind, message)
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:  # noqa: BLE001 - a subscriber must never stop the clock
                log.exception("clock subscriber failed on %s", kind)

    def next_downbeat(self, t: float | None = None) -> float:
        """The beat of the next bar line at or after the reading at ``t``."""
        b = self.info(t).beat
        return math.ceil(b / self.per_bar - 1e-9) * self.per_bar


class InternalClock(Clock):
    """Our own tempo: beat 0 at :meth:`start`, playing until :meth:`stop`.

    :meth:`set_tempo` keeps the beat position continuous. Tempo outside 1..999 BPM is an
    ``InputError`` naming ``bpm``.
    """

    source = "internal"

    def __init__(self, bpm: float, per_bar: int = 4,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(per_bar)
        self._bpm = check_bpm(bpm)
        self._now = clock
        self._t0 = clock()
        self._beat0 = 0.0
        self._playing = False

    def info(self, t: float | None = None) -> BeatInfo:
        t = self._now() if t is None else t
        with self._lock:
            beat = self._beat0
            if self._playing:
                beat += (t - self._t0) * self._bpm / 60.0
            return BeatInfo(self.source, self._bpm, beat, self._playing, self.per_bar)

    def start(self) -> InternalClock:
        with self._lock:
            if self._playing:
                return self
            self._t0, self._beat0, self._playing = self._now(), 0.0, True
        self._emit("start")
        return self

    def stop(self) -> None:
        """Stop where we are (the position is kept)."""
        t = self._now()
        with self._lock:
            if not self._playing:
                return
            self._beat0 += (t - self._t0) * self._bpm / 60.0
            self._playing = False
        self._emit("stop")

    def set_tempo(self, bpm: float) -> None:
        """A new tempo from now on, the beat position continuous."""
        bpm = check_bpm(bpm)
        t = self._now()
        with self._lock:
            if self._playing:
                self._beat0 += (t - self._t0) * self._bpm / 60.0
                self._t0 = t
            self._bpm = bpm
        self._emit("tempo", f"{bpm:g} BPM")

    def close(self) -> None:
        self.stop()


def make_clock(source: str | None, *, bpm: float | None = None, port: str | None = None,
               api: str | None = None, quantum: float = 4.0, per_bar: int = 4,
               client_name: str = "notochord-rt-clock",
               link_start_stop: bool = False) -> Clock | None:
    """The clock of a ``--clock`` choice (``None``: free time) — not started yet.

    ``internal`` needs ``bpm``; ``midi`` needs the input ``port`` (``api`` as the live apps'
    ``--midi-api``); ``link`` starts at ``bpm`` (default 120) unless the session has a
    tempo, with ``quantum`` beats per phase cycle (``link_start_stop``: the session's
    transport starts and stops us). Raises :class:`UserError` with one clear line for
    anything missing or out of range.
    """
    from ...errors import InputError

    if link_start_stop and source != "link":
        raise UserError("--link-start-stop needs --clock link")
    if source is None:
        if bpm is not None:
            raise UserError("--bpm needs --clock internal or --clock link")
        return None
    if source not in SOURCES:
        raise UserError(f"--clock must be one of {', '.join(SOURCES)}, got {source!r}")
    try:
        if bpm is not None:
            bpm = check_bpm(bpm, "--bpm")
    except InputError as e:
        raise UserError(f"{e} (a tempo is {BPM_MIN:g}..{BPM_MAX:g} BPM)") from None
    if source == "internal":
        if bpm is None:
            raise UserError("--clock internal needs --bpm N")
        return InternalClock(bpm, per_bar)
    if source == "midi":
        if not port:
            raise UserError("--clock midi needs --clock-in PORT (the port sending MIDI clock)")
        from .clock_midi import MidiClock

        return MidiClock(port, api=api, per_bar=per_bar, client_name=client_name)
    from .clock_link import LinkClock

    return LinkClock(bpm if bpm is not None else 120.0, quantum=quantum, per_bar=per_bar,
                     start_stop=link_start_stop)


def add_clock_arguments(parser: Any, grid: bool = True) -> None:
    """``--clock``, ``--bpm``, ``--clock-in``, ``--clock-out``, ``--quantum``,
    ``--beats-per-bar`` and (``grid``) the grid flags of the autonomous voices."""
    g = parser.add_argument_group("tempo and clock (default: free time)")
    g.add_argument("--clock", choices=SOURCES, default=None,
                   help="where the beat comes from: our own tempo (internal --bpm N), MIDI "
                        "clock on --clock-in, or an Ableton Link session")
    g.add_argument("--bpm", type=float, default=None,
                   help="tempo for --clock internal (and the starting tempo of link)")
    g.add_argument("--clock-in", default=None, metavar="PORT",
                   help="input port that sends MIDI clock (--clock midi)")
    g.add_argument("--clock-out", default=None, metavar="PORT",
                   help="send MIDI clock, start and stop to this output port (internal "
                        "or link)")
    g.add_argument("--quantum", type=float, default=4.0,
                   help="Link quantum: beats of the phase cycle peers align (default 4)")
    g.add_argument("--link-start-stop", action="store_true",
                   help="Link start/stop sync: the session's transport starts and stops the "
                        "voices (--clock link)")
    g.add_argument("--beats-per-bar", type=int, default=4, help="beats per bar (default 4)")
    if grid:
        g.add_argument("--grid", default="1/16", metavar="1/N[t]",
                       help="with --clock: the grid of the improvising voices' onsets "
                            "(default 1/16; triplets 1/8t...; 'off' = free timing)")
        g.add_argument("--swing", type=float, default=0.0,
                       help="0 straight .. 1 triplet swing")
        g.add_argument("--grid-strength", type=float, default=1.0,
                       help="1 = every onset on the grid, below 1 a softer pull")


def grid_fields(args: Any) -> dict[str, Any]:
    """The Constraints grid fields of parsed :func:`add_clock_arguments` flags (empty
    without ``--clock`` or with ``--grid off``); UserError naming a bad flag."""
    from ...engine.sampling.constraints import Constraints
    from ...errors import InputError

    if getattr(args, "clock", None) is None or getattr(args, "grid", "off") == "off":
        return {}
    out = {"grid": args.grid, "swing": args.swing, "grid_strength": args.grid_strength}
    try:
        Constraints(bpm=120.0, **out).validate()
    except InputError as e:
        raise UserError(f"--{str(e).replace('_', '-')}") from None
    return out


def clock_from_args(args: Any, client_name: str = "notochord-rt") -> tuple[Clock | None, Any]:
    """``(clock, clock sender or None)`` from :func:`add_clock_arguments` flags; neither
    started. UserError for anything missing or out of range."""
    clock = make_clock(args.clock, bpm=args.bpm, port=args.clock_in,
                       api=getattr(args, "midi_api", None), quantum=args.quantum,
                       per_bar=args.beats_per_bar, client_name=f"{client_name}-clock",
                       link_start_stop=getattr(args, "link_start_stop", False))
    sender = None
    if args.clock_out:
        if clock is None or clock.source == "midi":
            if clock is not None:
                clock.close()
            raise UserError("--clock-out needs a tempo of ours: --clock internal or link")
        from .clock_midi import ClockSender

        try:
            sender = ClockSender(clock, args.clock_out, api=getattr(args, "midi_api", None),
                                 client_name=f"{client_name}-clock-out")
        except BaseException:
            clock.close()
            raise
    return clock, sender
