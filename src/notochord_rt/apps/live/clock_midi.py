"""MIDI clock in and out (see :mod:`.clock`): follow a DAW or drum machine, or lead hardware.

* :class:`TempoEstimator` — the tempo from 24-ppqn tick times: a least-squares line
  through the last beat of ticks (jitter averages out: 2 ms of jitter moves 120 BPM by
  well under 1 BPM), restarted when the last half beat disagrees with it by more than
  :data:`CHANGE` (a tempo change is followed within one beat) or after a gap of more than
  four ticks (lost ticks); tempi outside 1..999 BPM are refused and reported.
* :class:`ClockFollower` — the MIDI clock state machine without I/O: start (``0xFA``,
  beat 0 at the next tick), stop (``0xFC``), continue (``0xFB``, from the song position),
  song position pointer (``0xF2``, sixteenths), ticks (``0xF8``). Beat position between
  ticks follows the fitted line. No tick for :data:`LOST_BEATS` beats while playing is a
  stop, reported as ``lost``. Unit-tested with synthetic times.
* :class:`MidiClock` — a :class:`ClockFollower` fed by an rtmidi input port, polled by a
  thread (no rtmidi callback: under JACK a Python callback inside JACK's process cycle
  can deadlock clients opened or closed meanwhile), with the backend's timestamps.
* :class:`ClockSender` — sends ticks, start and stop on an output port, following any
  :class:`~.clock.Clock` whose tempo is ours.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from ...engine.sampling.grid import BPM_MAX, BPM_MIN
from ...errors import UserError
from .clock import PPQN, BeatInfo, Clock

log = logging.getLogger(__name__)

TICK, START, CONTINUE, STOP, SPP = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2
CHANGE = 0.06
"""Relative disagreement of the last half beat with the fit that restarts the estimate."""
STRIKES = 4
"""Consecutive ticks that must show a change before the estimate restarts (bursts of
ticks make single disagreements)."""
LATE = 0.5
"""A tick later than this many periods above the fit's earliest quarter is left out."""
GAP_TICKS = 8.0
"""A silence of this many tick periods means lost ticks: the fit starts over."""
TEMPO_REPORT = 0.01
"""A relative tempo change larger than this is reported (a ``tempo`` event)."""
LOST_BEATS = 2.0
"""No tick for this many beats while playing: the clock is lost (treated as a stop)."""
MAX_SONG_BEATS = 16383 / 4
"""The furthest a song position pointer can point (14 bits of sixteenths)."""


class TempoEstimator:
    """Tempo (BPM) from MIDI clock tick times in seconds; see the module doc.

    Ticks are numbered; a silence of about ``k`` periods followed by regularly spaced
    ticks means ``k - 1`` ticks were lost (a busy transport drops messages), and the
    numbering skips them (:meth:`tick` returns how many) so the tempo and the beat stay
    right. A silence followed by a burst is a stall: nothing was lost.
    """

    def __init__(self, window: int = PPQN) -> None:
        self.window = window
        self._t: deque[float] = deque(maxlen=window + 1)
        self._x: deque[float] = deque(maxlen=window + 1)  # tick numbers
        self._next = 0.0
        self._suspect = 0  # ticks possibly lost in the gap before the last tick
        self.period: float | None = None  # seconds per tick
        self.refused: float | None = None  # the out-of-range tempo seen, while it lasts
        self._strikes = 0

    @property
    def bpm(self) -> float | None:
        """The current estimate (``None`` before three ticks)."""
        return None if self.period is None else 60.0 / (PPQN * self.period)

    def reset(self) -> None:
        """Forget the ticks (the estimate is kept until new ticks replace it)."""
        self._t.clear()
        self._x.clear()
        self._suspect = 0

    @staticmethod
    def _fit(ts: np.ndarray, x: np.ndarray | None = None) -> tuple[float, float]:
        """``(period, time of the last tick on the line)`` for ticks numbered ``x``
        (default 0, 1, ...): least squares, then again without the ticks that arrived
        late (a transport delivers late, never early: a stalled cycle or a burst of ticks
        delivered at once lies above the line)."""
        x = np.arange(len(ts), dtype=np.float64) if x is None else x
        keep = np.ones(len(ts), dtype=bool)
        slope, tm, xm = 0.0, float(ts.mean()), float(x.mean())
        for _ in range(3):
            xk, tk = x[keep], ts[keep]
            xm, tm = float(xk.mean()), float(tk.mean())
            den = float(((xk - xm) ** 2).sum())
            if den <= 0:
                break
            slope = float(((xk - xm) * (tk - tm)).sum() / den)
            late = ts - (tm + slope * (x - xm))
            keep = late <= np.percentile(late, 25) + LATE * abs(slope)
            if keep.sum() < max(3, len(ts) // 2):
                break
        return slope, tm + slope * (x[-1] - xm)

    def tick(self, t: float) -> int:
        """Account for a tick at time ``t`` (seconds, non-decreasing); returns the number
        of ticks found lost just before the previous one (usually 0)."""
        ts, xs, p = self._t, self._x, self.period
        settled = len(ts) > self.window // 2 and ts[-1] > ts[0]
        if settled:  # the window's own spacing (robust to a bad estimate)
            p = (ts[-1] - ts[0]) / (xs[-1] - xs[0])
        lost = 0
        if self._suspect and p is not None and ts and t - ts[-1] >= 0.7 * p:
            lost = self._suspect  # regular ticks after the silence: they were lost
            xs[-1] += lost
            self._next += lost
        self._suspect = 0
        if ts and p is not None:
            gap = t - ts[-1]
            if gap > GAP_TICKS * p:
                self.reset()  # a long silence: start over
                self._strikes = 0
            elif gap > 1.6 * p and settled and abs(gap / p - round(gap / p)) < 0.2:
                # a silence of whole periods (a delay that shifts later ticks is not): up to
                # a quarter beat lost, confirmed or not by the next tick's spacing
                self._suspect = min(round(gap / p) - 1, PPQN // 4)
        ts.append(t)
        xs.append(self._next)
        self._next += 1
        n = len(ts)
        if n < 3:
            return lost
        arr = np.fromiter(ts, dtype=np.float64, count=n)
        xa = np.fromiter(xs, dtype=np.float64, count=n)
        period, _ = self._fit(arr, xa)
        half = self.window // 2
        spacing = self.period or period
        if n > half + 2 and arr[-1] - arr[-2] >= 0.5 * spacing:
            # judged on regularly spaced ticks only: inside a burst of ticks delivered at
            # once the last half beat looks fast, and that is not a tempo change
            recent, _ = self._fit(arr[-(half + 1):], xa[-(half + 1):])
            changed = recent > 0 and abs(recent / period - 1.0) > CHANGE
            self._strikes = self._strikes + 1 if changed else 0
            if self._strikes >= STRIKES:  # a tempo change: keep only the last half beat
                while len(ts) > half + 1:
                    ts.popleft()
                    xs.popleft()
                period, self._strikes = recent, 0
        if period <= 0:
            return lost  # a burst of equal times: wait for more ticks
        bpm = 60.0 / (PPQN * period)
        if not BPM_MIN <= bpm <= BPM_MAX:
            if self.refused is None:
                log.warning("MIDI clock at %.0f BPM is out of range (%g..%g); ignored",
                            bpm, BPM_MIN, BPM_MAX)
            self.refused = bpm
            return lost
        self.refused = None
        self.period = period
        return lost

    def line_end(self) -> float | None:
        """Time of the last tick on the fitted line (a jitter-free phase), if fitted."""
        if len(self._t) < 3 or self.period is None:
            return self._t[-1] if self._t else None
        n = len(self._t)
        return self._fit(np.fromiter(self._t, dtype=np.float64, count=n),
                         np.fromiter(self._x, dtype=np.float64, count=n))[1]


class ClockFollower(Clock):
    """MIDI clock as a :class:`~.clock.Clock`, fed messages with :meth:`feed` (no I/O).

    ``length_beats`` bounds song positions (a pointer beyond it is reported and the
    position starts at 0); ``clock`` is the time source of :meth:`info` and the watchdog.
    """

    source = "midi"

    def __init__(self, per_bar: int = 4, length_beats: float | None = None,
                 clock: Any = time.perf_counter) -> None:
        super().__init__(per_bar)
        self.tempo = TempoEstimator()
        self.length = MAX_SONG_BEATS if length_beats is None else float(length_beats)
        self._now = clock
        self._playing = False
        self._pending: str | None = None  # "start"/"continue": the next tick is _pos
        self._pos = 0.0  # beat of the last tick
        self._last_t: float | None = None
        self._shown_bpm: float | None = None
        self._refusing = False

    # -- reading -------------------------------------------------------------------------------
    def info(self, t: float | None = None) -> BeatInfo:
        t = self._now() if t is None else t
        with self._lock:
            beat = self._pos
            period = self.tempo.period
            if self._playing and not self._pending and period and self._last_t is not None:
                end = self.tempo.line_end() or self._last_t
                ticks = (t - end) / period  # back in time too: the beat of a past event
                beat += min(ticks, 1.0) / PPQN  # never run more than a tick ahead
            return BeatInfo(self.source, self.tempo.bpm, beat,
                            self._playing and not self._pending, self.per_bar)

    # -- messages ------------------------------------------------------------------------------
    def feed(self, data: list[int] | bytes, t: float) -> None:
        """One MIDI message (bytes) received at time ``t``; anything else is ignored."""
        if not data:
            return
        kind = data[0]
        if kind == TICK:
            self._tick(t)
        elif kind == START:
            with self._lock:
                self._pos, self._playing, self._pending = 0.0, True, "start"
        elif kind == CONTINUE:
            with self._lock:  # from the song position: the next tick lands on it
                self._playing, self._pending = True, "continue"
        elif kind == STOP:
            self._stop("stop", "", t)
        elif kind == SPP:
            self._position(data, t)

    def _tick(self, t: float) -> None:
        emit = None
        with self._lock:
            lost = self.tempo.tick(t)
            if lost and self._playing and not self._pending:
                self._pos += lost / PPQN  # ticks the transport dropped: the beat goes on
            self._last_t = t
            if self._pending:
                emit, self._pending = self._pending, None
            elif self._playing:
                self._pos += 1.0 / PPQN
            bpm = self.tempo.bpm
        if emit:
            self._emit(emit, "", t)
        refused = self.tempo.refused
        if refused is not None and not self._refusing:
            self._emit("error", f"MIDI clock at {refused:.0f} BPM is out of range "
                                f"({BPM_MIN:g}..{BPM_MAX:g}); kept {bpm or 0:.1f} BPM", t)
        self._refusing = refused is not None
        if bpm is not None and (self._shown_bpm is None
                                or abs(bpm / self._shown_bpm - 1.0) > TEMPO_REPORT):
            self._shown_bpm = bpm
            self._emit("tempo", f"{bpm:.1f} BPM", t)

    def _position(self, data: list[int] | bytes, t: float) -> None:
        if len(data) < 3 or data[1] > 127 or data[2] > 127:
            self._emit("error", f"malformed song position pointer {list(data)!r}", t)
            return
        beat = ((data[2] << 7) | data[1]) / 4.0
        if beat > self.length:
            self._emit("error", f"song position beat {beat:g} is beyond the piece "
                                f"({self.length:g} beats); starting from beat 0", t)
            beat = 0.0
        with self._lock:
            self._pos = beat
        self._emit("position", f"beat {beat:g}", t)

    def _stop(self, kind: str, message: str, t: float) -> None:
        with self._lock:
            if not self._playing:
                return
            self._playing, self._pending = False, None
        self._emit(kind, message, t)

    def check(self, t: float | None = None) -> None:
        """The watchdog: a playing clock without a tick for :data:`LOST_BEATS` beats
        (1 s before any tempo) is treated as a stop and reported as ``lost``."""
        t = self._now() if t is None else t
        with self._lock:
            last, period = self._last_t, self.tempo.period
            waiting = self._playing
        if not waiting:
            return
        limit = LOST_BEATS * PPQN * period if period else 1.0
        if last is None or t - last > limit:
            self.tempo.reset()
            self._stop("lost", f"no MIDI clock for {LOST_BEATS:g} beats: stopped", t)


class MidiClock(ClockFollower):
    """:class:`ClockFollower` on an rtmidi input port named ``port`` (see the module doc)."""

    def __init__(self, port: str, api: str | None = None, per_bar: int = 4,
                 client_name: str = "notochord-rt-clock", poll: float = 0.0005,
                 length_beats: float | None = None) -> None:
        super().__init__(per_bar, length_beats)
        import rtmidi

        from .ports import find_port, rt_api

        self._rt = rtmidi.MidiIn(rt_api(api), name=client_name)
        try:
            self._rt.ignore_types(sysex=True, timing=False, active_sense=True)
            self.port = find_port(self._rt.get_ports(), port, "input")
            self._rt.open_port(self._rt.get_ports().index(self.port))
        except BaseException:
            self._rt.delete()
            raise
        self._poll = poll
        self._stop_flag = threading.Event()
        self._thread = threading.Thread(target=self._run, name="midi-clock", daemon=True)

    def start(self) -> MidiClock:
        if not self._thread.is_alive() and not self._stop_flag.is_set():
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop_flag.is_set():
            try:
                batch = []  # everything waiting, with the backend's spacing between them
                while (got := self._rt.get_message()) is not None:
                    batch.append(got)
                if not batch:
                    self.check()
                    time.sleep(self._poll)
                    continue
                # times from the wall clock at receipt (a backend's own clock can drift from
                # it under load), spaced as the backend stamped them within this batch
                now = time.perf_counter()
                ahead = sum(delta for _, delta in batch[1:])
                t = now - ahead
                for k, (msg, delta) in enumerate(batch):
                    t += delta if k else 0.0
                    self.feed(msg, min(t, now))
            except Exception:  # noqa: BLE001 - the clock thread must survive bad input
                log.exception("MIDI clock input failed on a message; going on")

    def close(self) -> None:
        if self._stop_flag.is_set():
            return
        self._stop_flag.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self._rt.close_port()
        self._rt.delete()


class ClockSender:
    """Send MIDI clock (24 ppqn), start and stop on the output port ``port`` following
    ``clock`` (internal or Link: a tempo that is ours). Ticks are sent at the clock's
    beat times; :meth:`close` sends stop."""

    def __init__(self, clock: Clock, port: str, api: str | None = None,
                 client_name: str = "notochord-rt-clock-out") -> None:
        import rtmidi

        from .ports import find_port, rt_api

        self.clock = clock
        self._rt = rtmidi.MidiOut(rt_api(api), name=client_name)
        try:
            self.port = find_port(self._rt.get_ports(), port, "output")
            self._rt.open_port(self._rt.get_ports().index(self.port))
        except BaseException:
            self._rt.delete()
            raise
        self._stop_flag = threading.Event()
        self._thread = threading.Thread(target=self._run, name="midi-clock-out", daemon=True)
        self.sent = 0

    def start(self) -> ClockSender:
        self._thread.start()
        return self

    def _run(self) -> None:
        playing = False
        last = -1  # index of the last tick sent (beat * 24)
        while not self._stop_flag.is_set():
            info = self.clock.info()
            if info.playing != playing:
                playing = info.playing
                if playing:
                    spp = max(0, min(16383, int(info.beat * 4)))
                    if spp:  # from a song position; else from the top
                        self._rt.send_message([SPP, spp & 0x7F, spp >> 7])
                    self._rt.send_message([CONTINUE if spp else START])
                    last = int(info.beat * PPQN + 1e-9) - 1  # the next tick is this one
                else:
                    self._rt.send_message([STOP])
            if info.bpm is None:
                time.sleep(0.01)
                continue
            k = int(info.beat * PPQN + 1e-9) + 1
            if last >= 0 and k - last <= PPQN:  # every tick, late ones at once (catch up)
                k = last + 1
            at = self.clock.time_at(k / PPQN)
            wait = 0.0 if at is None else at - time.perf_counter()
            if wait > 0.05:
                self._stop_flag.wait(0.05)
                continue
            if wait > 0:
                time.sleep(wait)
            self._rt.send_message([TICK])
            last = k
            self.sent += 1

    def close(self) -> None:
        """Stop sending (a stop message last); safe to call twice."""
        if self._stop_flag.is_set():
            return
        self._stop_flag.set()
        if self._thread.is_alive():
            self._thread.join(2)
        try:
            self._rt.send_message([STOP])
            time.sleep(0.05)  # let the backend deliver it before the port goes
        finally:
            self._rt.close_port()
            self._rt.delete()


def check_song_length(beats: float) -> float:
    """A piece length in beats for song position checks (UserError outside 0..4095.75)."""
    if not 0 < beats <= MAX_SONG_BEATS:
        raise UserError(f"a piece length must be 0..{MAX_SONG_BEATS:g} beats, got {beats!r}")
    return float(beats)
