"""The real-time player every live app shares: one scheduler thread owns the model.

Threads and ownership
---------------------
MIDI callbacks, the UI and OSC handlers only *enqueue* (:meth:`Player.note_input`,
:meth:`Player.control`, :meth:`Player.call`, :meth:`Player.reset`, :meth:`Player.panic`).
One scheduler thread drains that queue and is the only code that touches the model: it
feeds input with wall-clock deltas, asks the app's :class:`Policy` what may come next,
samples with ``min_time`` at or after *now*, waits precisely for the due time (a blocking
wait on the input queue until ``PlayerConfig.spin`` before it, then short yields) and sends
+ feeds the event then. Input that arrives
before a planned event is due discards the plan; the next event is sampled again from
the updated state (*replanning*). This module holds the one model call site of the apps.

Policies (harmonizer, improviser, the TUI's voices) are plain objects, called on the
scheduler thread with a :class:`PlayerContext`; they return :class:`Constraints` for the
next autonomous event, and may play notes at once in reaction to input with
:meth:`PlayerContext.sample_now` / :meth:`PlayerContext.play_now`.

Output goes to a :class:`Sink` (``note(inst, pitch, vel)`` and ``panic()``); the MIDI
one is :class:`notochord_rt.apps.live.ports.MidiOut`. The player remembers every note it has
sent and releases all of them (and calls ``sink.panic()``) on :meth:`Player.stop`,
Ctrl-C in the owning program (stop is called from ``finally``), reset, panic, and any error
in the scheduler thread (which then stops; :attr:`Player.error` holds the exception).

Timing is measured, not assumed: :attr:`Player.stats` records the lateness of every
planned event (actual send - due time), the input-to-output latency of every response
played by :meth:`PlayerContext.sample_now`, and model feed/sample durations.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ... import events as ev
from ...engine.sampling.constraints import Constraints
from ...errors import NoPossibleEvents
from .beat import BeatSync, free_time
from .player_api import (
    Clock,
    NoteIn,
    PlayerConfig,
    PlayerContext,
    PlayerEvent,
    Policy,
    Sink,
    TimingStats,
)
from .warmup import warm_up

log = logging.getLogger(__name__)

__all__ = ["Clock", "NoteIn", "Player", "PlayerConfig", "PlayerContext",
           "PlayerEvent", "Policy", "Sink", "TimingStats"]


_STOP = object()


def _midi_vel(e: Any) -> int:
    """MIDI velocity of a sampled event: 0 for a note-off, 1..127 for a note-on."""
    return ev.midi_velocity(e.vel)


class Player:
    """Real-time scheduler around one ``Notochord`` model (see the module docstring).

    ``model``: a ``notochord_rt.Notochord`` (the player resets it on start unless
    ``reset_on_start=False``, e.g. after prompting); ``sink``: a :class:`Sink`;
    ``policy``: a :class:`Policy`. Use as a context manager or call :meth:`start` /
    :meth:`stop`. Thread-safe methods: ``note_input, control, call, reset, panic,
    set_policy, stop, add_listener``; the rest is for policies on the scheduler thread.
    """

    def __init__(self, model: Any, sink: Sink, policy: Policy | None = None,
                 config: PlayerConfig | None = None, *, clock: Clock = time.perf_counter,
                 reset_on_start: bool = True, beat_clock: Any = None) -> None:
        self.model = model
        self.sink = sink
        self.policy = policy or Policy()
        self.config = config or PlayerConfig()
        self.clock = clock
        self.stats = TimingStats(self.config.history)
        self.error: BaseException | None = None
        self._reset_on_start = reset_on_start
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[PlayerEvent], None]] = []
        self._sounding: dict[tuple[int, int], None] = {}  # notes this player started
        self._t_last = 0.0  # clock time of the last fed event, on the model's timeline
        self._plan: tuple[float, Any] | None = None  # (due time, SampledEvent)
        self._dirty = True  # the plan must be (re)made
        self._stopping = False
        self._offline = False  # process() has started the stream on the caller's thread
        self._plan_times: deque[float] = deque(maxlen=64)
        self._resume = True  # the next autonomous event comes within config.resume_within
        self.beat: BeatSync | None = None  # the beat of a --clock (apps/live/beat.py)
        if beat_clock is not None:
            self.set_beat_clock(beat_clock)

    # -- thread-safe API ---------------------------------------------------------------------
    def start(self) -> Player:
        """Start the scheduler thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stopping = False
        self.error = None
        self._thread = threading.Thread(target=self._run, name="notochord-player", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the scheduler, releasing every sounding note; safe to call twice."""
        t = self._thread
        if t is None:
            self._release_all("stop")
            return
        if t.is_alive():
            self._stopping = True
            self._q.put((_STOP,))
            t.join(timeout)
            if t.is_alive():  # stuck in a model call: release from here
                log.error("player thread did not stop within %.1f s", timeout)
                self._release_all("stop (thread stuck)")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Player:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def note_input(self, inst: int, pitch: int, vel: int, t: float | None = None) -> None:
        """Hand a played note to the player (from a MIDI callback); ``t`` defaults to now."""
        self._q.put(("in", NoteIn(int(inst), int(pitch), int(vel),
                                  self.clock() if t is None else float(t))))

    def control(self, name: str, value: float) -> None:
        """Set a steering control; the policy sees it and the next event is re-planned."""
        self._q.put(("ctl", name, float(value)))

    def call(self, fn: Callable[[PlayerContext], Any]) -> None:
        """Run ``fn(ctx)`` on the scheduler thread (UI actions that change the policy)."""
        self._q.put(("call", fn))

    def reset(self) -> None:
        """Release every note, reset the model (new stream) and re-plan."""
        self._q.put(("reset",))

    def panic(self) -> None:
        """Release every note at once (and the sink's all-notes-off); the model keeps going."""
        self._q.put(("panic",))

    def set_policy(self, policy: Policy) -> None:
        """Swap the policy (takes effect on the scheduler thread, with a re-plan)."""
        self.call(lambda ctx: setattr(self, "policy", policy))

    def set_beat_clock(self, clock: Any) -> None:
        """Follow ``clock`` (an ``apps.live.clock.Clock``): autonomous events that ask for
        a grid go on its beat, the voices pause while it is stopped and come back on the
        next bar line (:mod:`.beat`). Call before :meth:`start`."""
        self.beat = BeatSync(clock)
        clock.subscribe(lambda e: self._q.put(("clock", e)))

    def beat_info(self) -> Any:
        """The clock's reading now (tempo, bar:beat, source: a ``BeatInfo``); None in
        free time."""
        return None if self.beat is None else self.beat.info()

    def add_listener(self, fn: Callable[[PlayerEvent], None]) -> None:
        """Call ``fn(PlayerEvent)`` on the scheduler thread for everything that happens.
        Keep it quick (a UI should hand the event to its own loop)."""
        self._listeners.append(fn)

    def process(self, note: NoteIn) -> None:
        """Handle one played note now, on the caller's thread: the offline way to drive
        the player (``apps.harmony.harmonize_piece`` feeds a file through the live
        harmonizer's policy on a virtual clock). Planned events are not played; call
        :meth:`stop` at the end to release what sounds. Not while the thread runs."""
        if self.running:
            raise RuntimeError("Player.process is for offline use; the scheduler thread runs")
        if not self._offline:
            self._start_stream()
            self._offline = True
        self._on_input(note)

    # -- PlayerContext (scheduler thread) ----------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def held_notes(self) -> dict[tuple[int, int], float]:
        """The model's sounding notes (input and output) with their ages."""
        return self.model.held_notes

    def sounding(self) -> set[tuple[int, int]]:
        """Notes this player started and has not ended."""
        return set(self._sounding)

    def reset_model(self, state: Any = None) -> None:
        """Reset the model to a new stream, or to ``state`` (from ``model.get_state()``, e.g.
        after a prompt); the timeline restarts now and the next event is re-planned."""
        self.model.reset(state=state)
        self._t_last = self.clock()
        self._dirty = True

    def send_now(self, inst: int, pitch: int, vel: int, t_in: float | None = None) -> None:
        """Send a note without feeding it (a note the model must not hear)."""
        self._send(inst, pitch, vel)
        if t_in is not None and vel > 0:
            self.stats.add("latency", self.clock() - t_in)
        self._emit(PlayerEvent("output", inst, pitch, vel, self.clock()))

    def yield_to_driver(self) -> None:
        """Sleep ``config.pause_after_send`` so the MIDI driver can deliver what was just
        sent before the model takes the CPU again (see :class:`PlayerConfig`)."""
        if self.config.pause_after_send > 0:
            time.sleep(self.config.pause_after_send)

    def replan(self) -> None:
        """Discard the planned event; a new one is sampled before waiting again."""
        self._dirty = True

    def resume(self) -> None:
        """Voices come back (unmute, a new preset, start): re-plan, and let the next
        autonomous event come within ``config.resume_within`` of now instead of at the
        gap the model expects after its last note, however long ago that was."""
        self._resume = True
        self._dirty = True

    def sample_now(self, constraints: Any, t_in: float | None = None) -> Any:
        """Sample an event at time 0 (now) under ``constraints``, send and feed it at once.

        Returns the ``SampledEvent``, or None when the constraints allow no event (logged;
        e.g. a harmony voice with no free pitch in its range). A :class:`Constraints` gets
        ``time=0``; compiled constraints must fix ``time=0`` themselves. ``t_in`` (the
        arrival time of the input this answers) records an input-to-output latency.
        """
        cons = constraints
        if isinstance(cons, Constraints) and (cons.time != 0.0 or cons.min_time != 0.0):
            cons = dataclasses.replace(cons, time=0.0, min_time=0.0)
        t0 = self.clock()
        try:
            e = self.model.sample(cons)
        except NoPossibleEvents as err:
            log.info("nothing to play now: %s", err)
            return None
        self.stats.add("sample", self.clock() - t0)
        vel = _midi_vel(e)
        self._send(e.inst, e.pitch, vel)
        if t_in is not None:
            self.stats.add("latency", self.clock() - t_in)
        self.yield_to_driver()
        self._feed(e.inst, e.pitch, 0.0, e.vel)
        self._dirty = True
        self._emit(PlayerEvent("output", e.inst, e.pitch, vel, self._t_last, e))
        return e

    def play_now(self, inst: int, pitch: int, vel: int, t_in: float | None = None) -> None:
        """Send and feed a given note now (e.g. the note-off of a harmony voice)."""
        self._send(inst, pitch, vel)
        if t_in is not None:
            self.stats.add("latency", self.clock() - t_in)
        now = self.clock()
        self._feed(inst, pitch, max(0.0, now - self._t_last), vel)
        self._t_last = max(self._t_last, now)
        self._dirty = True
        self._emit(PlayerEvent("output", inst, pitch, vel, self._t_last))

    # -- internals ---------------------------------------------------------------------------
    def _emit(self, e: PlayerEvent) -> None:
        for fn in self._listeners:
            try:
                fn(e)
            except Exception:
                log.exception("player listener failed")

    def _send(self, inst: int, pitch: int, vel: int) -> None:
        key = (inst, pitch)
        if vel > 0:
            if key in self._sounding:  # restart: end the old one first, as MIDI would
                self.sink.note(inst, pitch, 0)
            self._sounding[key] = None
        else:
            self._sounding.pop(key, None)
        self.sink.note(inst, pitch, vel)

    def _feed(self, inst: int, pitch: int, dt: float, vel: float) -> None:
        t0 = self.clock()
        self.model.feed(inst, pitch, dt, vel)
        self.stats.add("feed", self.clock() - t0)

    def _release_all(self, why: str) -> None:
        """Note-offs for every note we started (fed to the model when it is ours to feed)."""
        notes = list(self._sounding)
        for inst, pitch in notes:
            try:
                self.sink.note(inst, pitch, 0)
            except Exception:
                log.exception("could not send the note-off of (%d, %d)", inst, pitch)
        self._sounding.clear()
        try:
            self.sink.panic()
        except Exception:
            log.exception("sink panic failed")
        if notes:
            log.info("released %d sounding notes (%s)", len(notes), why)

    def _start_stream(self) -> None:
        self._resume = True
        if self._reset_on_start:
            self.model.reset()
        warm_up(self.model)  # the first played note must not pay first-call costs
        self._t_last = self.clock()
        self._plan = None
        self._dirty = True

    def _handle(self, item: tuple) -> bool:
        """Process one queued item; False means stop."""
        kind = item[0]
        if kind is _STOP:
            return False
        if kind == "in":
            self._on_input(item[1])
        elif kind == "ctl":
            self.policy.on_control(self, item[1], item[2])
            self._dirty = True
        elif kind == "call":
            item[1](self)
            self._dirty = True
        elif kind == "clock":
            self._on_clock(item[1])
        elif kind == "panic":
            self._release_notes_fed("panic")
            self._emit(PlayerEvent("panic"))
        elif kind == "reset":
            self._release_all("reset")
            self.model.reset()
            self._t_last = self.clock()
            self._resume = True
            self.policy.on_reset(self)
            self._dirty = True
            self._emit(PlayerEvent("reset"))
        return True

    def _on_clock(self, event: Any) -> None:
        """A clock event: stop / lost sends every note-off at once, then feeds them (the
        voices wait, :class:`BeatSync`); start, tempo and position re-plan."""
        act = self.beat.action(event) if self.beat is not None else None
        if act == "release":
            notes = list(self._sounding)
            self._release_all(f"clock {event.kind}")
            now = self.clock()
            for inst, pitch in notes:
                self._feed(inst, pitch, max(0.0, now - self._t_last), 0)
                self._t_last = max(self._t_last, now)
        if act is not None:
            self._plan = None
            self._dirty = True
        self._emit(PlayerEvent("clock", info=event))

    def _release_notes_fed(self, why: str) -> None:
        """Panic that keeps the model in step: every note-off is also fed."""
        for inst, pitch in list(self._sounding):
            self.play_now(inst, pitch, 0)
        self._release_all(why)
        self._dirty = True

    def _on_input(self, note: NoteIn) -> None:
        """A played note: repaired so the model's held notes match what sounds, fed, and
        handed to the policy.

        A note-off for a note that is not the player's (silent, or a model note) is
        dropped. A note-on for a pitch that already sounds ends that note first: the
        model's own note by :meth:`play_now`, the player's held note by a note-off handed
        on like a played one (so the policy releases its answers).
        """
        self.stats.count("inputs")
        if self._plan is not None:
            self.stats.count("replans")
            self._emit(PlayerEvent("replanned", info=self._plan[1]))
        self._plan = None
        self._dirty = True
        key = (note.inst, note.pitch)
        held = key in self.model.held_notes
        if note.vel < 1:
            if not held or key in self._sounding:
                log.debug("note-off for a note the player does not hold %s: dropped", key)
                return
        elif held:
            if key in self._sounding:  # a model voice of the same instrument holds it
                self.play_now(note.inst, note.pitch, 0)
            else:  # the player re-strikes a held note
                self._accept(NoteIn(note.inst, note.pitch, 0, note.t), played=False)
        self._accept(note)

    def _accept(self, note: NoteIn, played: bool = True) -> None:
        """Feed a note of the player's and hand it to the policy; listeners hear of it
        when it was ``played`` (not a note-off the repair added)."""
        self._feed(note.inst, note.pitch, max(0.0, note.t - self._t_last), note.vel)
        self._t_last = max(self._t_last, note.t)
        if played:
            self._emit(PlayerEvent("input", note.inst, note.pitch, note.vel, note.t))
        self.policy.on_input(self, note)

    def _make_plan(self) -> None:
        self._dirty = False
        self._plan = None
        cons = self.policy.next_constraints(self)
        cons = free_time(cons) if self.beat is None else self.beat.constraints(cons, self._t_last)
        if cons is None:
            return
        t0 = self.clock()
        earliest = t0 + self.lookahead() - self._t_last
        if isinstance(cons, Constraints) and earliest > cons.min_time and cons.time is None:
            cons = dataclasses.replace(cons, min_time=min(earliest, ev.TIME_MAX))
        if self._resume and self.beat is None and isinstance(cons, Constraints) \
                and cons.time is None:
            soon = max(cons.min_time, earliest) + self.config.resume_within
            if soon < cons.max_time:
                cons = dataclasses.replace(cons, max_time=soon)
        try:
            e = self.model.sample(cons)
        except NoPossibleEvents as err:
            log.info("no autonomous event possible now: %s", err)
            return
        took = self.clock() - t0
        self.stats.add("sample", took)
        self._plan_times.append(took)
        due = self._t_last + e.time
        self._plan = (due, e)
        self._emit(PlayerEvent("planned", e.inst, e.pitch, int(round(e.vel)), due, e))

    def lookahead(self) -> float:
        """The current lookahead: the configured one, or (adaptive) 1.25 × the 95th
        percentile of recent planning sample times, up to ``max_lookahead``."""
        cfg = self.config
        if not cfg.adaptive_lookahead or len(self._plan_times) < 8:
            return cfg.lookahead
        recent = sorted(self._plan_times)
        p95 = recent[min(len(recent) - 1, int(0.95 * len(recent)))]
        return min(cfg.max_lookahead, max(cfg.lookahead, 1.25 * p95))

    def _play_plan(self) -> None:
        due, e = self._plan  # type: ignore[misc]
        self._plan = None
        self._dirty = True
        self._resume = False
        vel = _midi_vel(e)
        self._send(e.inst, e.pitch, vel)
        sent = self.clock()
        late = sent - due
        self.stats.add("lateness", late)
        self.stats.count("outputs")
        self.yield_to_driver()
        if late > self.config.late_margin:
            self.stats.count("late_fed_real")
            self._feed(e.inst, e.pitch, sent - self._t_last, e.vel)
            self._t_last = sent
        else:
            self._feed(e.inst, e.pitch, e.time, e.vel)
            self._t_last = due
        self._emit(PlayerEvent("output", e.inst, e.pitch, vel, due, e))
        if self.beat is not None:
            self.beat.played()
        self.policy.on_played(self, e)

    def _wait(self) -> tuple | None:
        """Wait for input or the plan's due time; the queued item, or None when due."""
        cfg = self.config
        if self._plan is None:
            try:
                return self._q.get(timeout=cfg.idle_wait)
            except queue.Empty:
                return ("idle",)
        due = self._plan[0]
        while True:
            left = due - self.clock()
            if left <= 0:
                return None
            if left > cfg.spin:
                try:
                    return self._q.get(timeout=left - cfg.spin)
                except queue.Empty:
                    continue
            try:
                return self._q.get_nowait()
            except queue.Empty:
                time.sleep(0)

    def _run(self) -> None:
        why = "stop"
        try:
            self._start_stream()
            while True:
                while True:  # drain everything queued before planning
                    try:
                        item = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if not self._handle(item):
                        return
                if self._dirty and not self._stopping:
                    self._make_plan()
                item = self._wait()
                if item is None:
                    self._play_plan()
                elif item[0] == "idle":  # nothing planned: ask the policy again
                    self._dirty = True
                elif not self._handle(item):
                    return
        except BaseException as e:  # noqa: BLE001 - any error must release the notes
            why = f"error: {e!r}"
            self.error = e
            self.stats.count("errors")
            log.exception("player stopped by an error")
            self._emit(PlayerEvent("error", info=e))
        finally:
            self._release_all(why)
