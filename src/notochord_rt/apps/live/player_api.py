"""The plain types of the player's API: sinks, policies, events, configuration, timing.

Split from :mod:`.player` (which re-exports all of them) so that the scheduler module
holds only the scheduler. See :mod:`.player` for how they fit together.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

import numpy as np

Clock = Callable[[], float]


class Sink(Protocol):
    """Where the player's notes go (MIDI out, a test recorder, ...)."""

    def note(self, inst: int, pitch: int, vel: int) -> None:
        """Start (``vel > 0``) or end (``vel == 0``) a note of instrument ``inst``."""

    def panic(self) -> None:
        """Silence everything this sink may have started (all-notes-off and the like)."""


@dataclass(frozen=True)
class NoteIn:
    """A played note handed to the player: instrument id, pitch, velocity (0 = off) and
    the clock time it arrived (``Player.clock`` seconds)."""

    inst: int
    pitch: int
    vel: int
    t: float


@dataclass(frozen=True)
class PlayerEvent:
    """What observers (UI, logs, tests) are told, on the scheduler thread.

    ``kind`` is ``"input"``, ``"output"`` (sent and fed), ``"planned"`` (sampled, due at
    ``t``), ``"replanned"`` (a plan was discarded), ``"reset"``, ``"panic"``, ``"clock"``
    (``info`` is the clock's ``ClockEvent``: start, stop, tempo, lost...) or ``"error"``.
    """

    kind: str
    inst: int = 0
    pitch: int = 0
    vel: int = 0
    t: float = 0.0
    info: Any = None


class Policy:
    """What an app decides; every method runs on the scheduler thread. Default: silent.

    Subclass and override what you need. The context gives the current time, the held
    notes and the ways to make sound at once (see :class:`PlayerContext`).
    """

    def next_constraints(self, ctx: PlayerContext) -> Any:
        """Constraints (or compiled constraints) for the next *autonomous* event, or None
        for none. The player raises ``min_time`` to "now + lookahead" itself."""
        return None

    def on_input(self, ctx: PlayerContext, note: NoteIn) -> None:
        """A played note was just fed to the model; react (e.g. harmonize) here.

        The player repairs input before this: a note-off always ends a note the player
        holds, and a note-on never finds its pitch sounding (a re-strike arrives as a
        note-off first)."""

    def on_played(self, ctx: PlayerContext, event: Any) -> None:
        """An autonomous event (a ``SampledEvent``) was just sent and fed."""

    def on_control(self, ctx: PlayerContext, name: str, value: float) -> None:
        """A steering control changed (``Player.control``). The plan is redone after."""

    def on_reset(self, ctx: PlayerContext) -> None:
        """The model was reset and every note released."""


class PlayerContext(Protocol):
    """The scheduler-thread view of the player handed to policies."""

    def now(self) -> float: ...
    def held_notes(self) -> dict[tuple[int, int], float]: ...
    def sounding(self) -> set[tuple[int, int]]: ...
    def sample_now(self, constraints: Any, t_in: float | None = None) -> Any: ...
    def play_now(self, inst: int, pitch: int, vel: int, t_in: float | None = None) -> None: ...
    def send_now(self, inst: int, pitch: int, vel: int, t_in: float | None = None) -> None: ...
    def replan(self) -> None: ...
    def yield_to_driver(self) -> None: ...
    def reset_model(self, state: Any = None) -> None: ...
    def resume(self) -> None: ...
    def beat_info(self) -> Any: ...


@dataclass
class PlayerConfig:
    """Timing knobs (seconds)."""

    lookahead: float = 0.004
    """An autonomous event is never planned earlier than this after the sampling starts
    (covers the sample call itself; lateness is recorded when it did not)."""
    adaptive_lookahead: bool = True
    """Raise the lookahead to 1.25 × the 95th percentile of the last 64 planning samples
    (a loaded machine samples slower; an event planned sooner would be sent late)."""
    max_lookahead: float = 0.03
    """Upper bound of the adaptive lookahead."""
    spin: float = 0.0015
    """The last stretch before a due time is waited with short yields, not one sleep."""
    pause_after_send: float = 0.002
    """Sleep this long after sending a planned event or an answer, before the model
    computes again: without realtime scheduling, a MIDI driver thread (JACK's) may
    otherwise wait for a CPU while the model runs, delaying delivery (measured in
    docs/performance.md). 0 = off."""
    resume_within: float = 0.4
    """After :meth:`PlayerContext.resume` (unmute, preset change, start, reset) the next
    autonomous event is due within this many seconds (the model picks when, inside it)."""
    late_margin: float = 0.05
    """An event sent later than this is fed with its real delta, not the planned one."""
    idle_wait: float = 0.05
    """How long the scheduler sleeps when nothing is planned (input wakes it at once)."""
    history: int = 100_000
    """Measurements kept per series."""


class TimingStats:
    """Bounded, thread-safe series of timings in seconds, with percentile summaries."""

    SERIES = ("lateness", "latency", "sample", "feed")

    def __init__(self, maxlen: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, deque[float]] = {k: deque(maxlen=maxlen) for k in self.SERIES}
        self.counts: dict[str, int] = {"late_fed_real": 0, "replans": 0, "inputs": 0,
                                       "outputs": 0, "errors": 0}

    def add(self, series: str, value: float) -> None:
        with self._lock:
            self._data[series].append(value)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def values(self, series: str) -> np.ndarray:
        with self._lock:
            return np.array(self._data[series], dtype=np.float64)

    def recent(self, series: str, n: int) -> np.ndarray:
        """The last ``n`` values, oldest first: a bounded copy, so the lock (which the
        scheduler takes for every :meth:`add`) is held only briefly — for displays that
        refresh while the music plays (the whole history can be 100 000 values)."""
        with self._lock:
            last = list(islice(reversed(self._data[series]), n))
        return np.array(last[::-1], dtype=np.float64)

    def clear(self) -> None:
        with self._lock:
            for d in self._data.values():
                d.clear()

    def summary(self) -> dict[str, Any]:
        """``{series: {n, p50_ms, p99_ms, max_ms}}`` plus the counters."""
        out: dict[str, Any] = {}
        for k in self.SERIES:
            v = self.values(k)
            if len(v):
                p50, p99 = np.percentile(v, [50, 99]) * 1e3
                out[k] = {"n": len(v), "p50_ms": float(p50), "p99_ms": float(p99),
                          "max_ms": float(v.max() * 1e3)}
            else:
                out[k] = {"n": 0}
        with self._lock:
            out["counts"] = dict(self.counts)
        return out
