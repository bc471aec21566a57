"""The player's side of a clock (:mod:`.clock`): constraints put on the beat, stop and start.

:class:`BeatSync` is what :class:`~.player.Player` holds when a live app runs with
``--clock``. On the scheduler thread it

* puts the next autonomous event on the beat: a policy's :class:`Constraints` that ask
  for a grid (``grid``, ``next_bar``, ``min_beats`` / ``max_beats``) get the clock's
  tempo (``bpm``) and the beat position at the model's last event (``beat``), so the
  sampler's grid constraint (:mod:`notochord_rt.engine.sampling.grid`) places the event;
  without a clock, :func:`free_time` drops those fields (free time, as before);
* pauses the autonomous voices while the clock is stopped (or lost) and, after a start,
  asks for the first event on the next bar line (``next_bar``);
* turns clock events into player actions (:meth:`BeatSync.action`): ``release`` every
  model note on stop / lost, ``replan`` on start, tempo and position changes.

Harmonizer answers (``sample_now``) are not touched: they answer a played note at once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from ...engine.sampling.constraints import Constraints
from .clock import BeatInfo, Clock, ClockEvent

log = logging.getLogger(__name__)

REPLAN_TEMPO = 0.01
"""A plan is redone when the tempo moved by more than this (relative) since it was made."""
_BEAT_FIELDS = {"grid": None, "swing": 0.0, "next_bar": False, "min_beats": 0.0,
                "max_beats": math.inf, "bpm": None, "beat": None, "inst_grid": None,
                "inst_swing": None}


def wants_beat(cons: Any) -> bool:
    """Whether ``cons`` (constraints from a policy) asks for the beat without a tempo."""
    return isinstance(cons, Constraints) and cons.bpm is None and (
        cons.grid is not None or cons.next_bar or cons.min_beats != 0.0
        or cons.max_beats != math.inf or bool(cons.inst_grid))


def free_time(cons: Any) -> Any:
    """``cons`` without its beat fields (no clock: the voices run in free time)."""
    if not wants_beat(cons):
        return cons
    return dataclasses.replace(cons, **_BEAT_FIELDS)


class BeatSync:
    """A :class:`~.clock.Clock` as the player uses it (see the module doc)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.on_bar = True  # the first event after a start waits for a bar line
        self.used_bpm: float | None = None  # the tempo the current plan was made at

    def info(self, t: float | None = None) -> BeatInfo:
        """The clock's reading at ``t`` (default now)."""
        return self.clock.info(t)

    def constraints(self, cons: Any, t_last: float) -> Any:
        """The policy's ``cons`` for an autonomous event of a stream whose last event was
        at ``t_last`` (``perf_counter`` time); ``None`` while the clock is stopped or has no
        tempo yet (the voices wait)."""
        if cons is None:
            return None
        info = self.clock.info(t_last)
        if not info.playing or info.bpm is None:
            return None
        if not wants_beat(cons):
            return cons
        self.used_bpm = info.bpm
        extra: dict[str, Any] = {"bpm": info.bpm, "beat": info.beat,
                                 "beats_per_bar": self.clock.per_bar}
        if self.on_bar:
            extra["next_bar"] = True
        return dataclasses.replace(cons, **extra)

    def played(self) -> None:
        """An autonomous event was played: the voices are in, no more waiting for a bar."""
        self.on_bar = False

    def action(self, event: ClockEvent) -> str | None:
        """What the player does about a clock event: ``"release"`` (every model note
        off, voices paused), ``"replan"`` or ``None``."""
        if event.kind in ("stop", "lost"):
            self.on_bar = True
            return "release"
        if event.kind in ("start", "continue"):
            self.on_bar = True
            return "replan"
        if event.kind == "position":
            return "replan"
        if event.kind == "tempo":  # a plan made at a tempo 1 % off is 1 % of a gap off
            bpm, used = event.info.bpm, self.used_bpm
            if bpm is not None and (used is None or abs(bpm / used - 1.0) > REPLAN_TEMPO):
                return "replan"
        return None


def run_with_clock(session: Any, args: Any, what: str) -> int:
    """:func:`~.session.run_session` with the clock of the ``--clock`` flags
    (:func:`~.clock.add_clock_arguments`): the clock (and ``--clock-out`` sender) is made
    before the session opens its ports, handed to the player, and closed after the
    session (which releases every note)."""
    from .clock import clock_from_args
    from .session import run_session

    clock, sender = clock_from_args(args, getattr(args, "client_name", "notochord-rt"))
    if clock is None:
        return run_session(session, args, what)
    session.opt.clock = clock
    try:
        clock.start()
        if sender is not None:
            sender.start()
        logging.getLogger("notochord_rt.startup").info("%s: clock %s", what,
                                                       clock.info().text())
        return run_session(session, args, what)
    finally:
        if sender is not None:
            sender.close()
        clock.close()
