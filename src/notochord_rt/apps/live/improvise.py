"""The improviser: model voices that play on their own and listen to the player.

The player's channels are fed to the model as they are played (the player does that);
the model plays only its own instruments, one event at a time, each planned at or after
"now" and re-planned whenever the player plays (docs/design.md §7, without predicting the
player). Steering controls (0..1, from the MIDI CCs of :mod:`.controls`):

* ``steer_pitch``: the pitch quantile window, centred on the value (0.5 = no steering);
* ``steer_rate``: the time quantile window, centred on ``1 - value`` (higher = sooner);
* ``steer_density``: the sampler's note-on/note-off balance (``Constraints.steer_density``).

``mute`` toggles the voices (their notes are released at once); ``query`` (or ``replan``)
re-samples.
Model notes are released after ``max_duration`` and kept within ``max_polyphony`` by the
sampler's guarantees, so nothing hangs.

With a clock (``--clock``), ``grid`` holds the beat fields of the voices' constraints
(``grid``, ``swing``, ``grid_strength``): the player adds the clock's tempo and beat
(:mod:`.beat`), so the voices' onsets are sampled on the grid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ... import events as ev
from ...engine.sampling.constraints import Constraints
from ..musical import DEFAULTS, MusicalDefaults, VoiceBalance
from ..steering import steering_fields
from .player import PlayerContext, Policy

log = logging.getLogger(__name__)


@dataclass
class Steering:
    """The steering controls, each 0..1 (0.5 = neutral for pitch and rate)."""

    pitch: float = 0.5
    density: float = 0.5
    rate: float = 0.5


class ImprovisePolicy(Policy):
    """Autonomous voices on ``model_insts`` that hear ``player_insts``.

    ``ranges`` optionally limits a model instrument's pitches (``{inst: (lo, hi)}``).
    ``max_time`` (soft) keeps the voices from pausing longer than that. ``musical``: the
    sampling defaults of :mod:`.musical` (``pitch_temp`` given here overrides its own).
    """

    CONTROLS = {"steer_pitch": "pitch", "steer_density": "density", "steer_rate": "rate"}

    def __init__(self, model_insts: Sequence[int], player_insts: Sequence[int] = (), *,
                 ranges: Mapping[int, tuple[int, int]] | None = None, max_polyphony: int = 4,
                 max_duration: float = 5.0, max_time: float = math.inf,
                 pitch_temp: float | None = None, rhythm_temp: float = 1.0,
                 timing_temp: float = 1.0, musical: MusicalDefaults = DEFAULTS,
                 grid: Mapping[str, Any] | None = None) -> None:
        if not model_insts:
            raise ValueError("the improviser needs at least one model instrument")
        self.model_insts = [int(i) for i in model_insts]
        self.player_insts = {int(i) for i in player_insts}
        self.ranges = dict(ranges or {})
        self.max_polyphony, self.max_duration = int(max_polyphony), float(max_duration)
        self.max_time = float(max_time)
        if pitch_temp is None:
            pitch_temp = musical.pitch_temp
        self.temps = (float(pitch_temp), float(rhythm_temp), float(timing_temp))
        self.musical = musical
        self.grid = dict(grid or {})
        self.steer = Steering()
        self.muted = False
        self._cons: Constraints | None = None
        # every voice heard: a voice lagging behind the busiest is favoured (--raw: off)
        self.balance = VoiceBalance(self.model_insts, margin=2) if musical.balance else None

    def constraints(self) -> Constraints:
        """The constraints of the next event under the current steering (cached)."""
        if self._cons is None:
            on = {}
            for inst in self.model_insts:
                lo, hi = self.ranges.get(inst, (0, ev.NUM_PITCHES - 1))
                on[inst] = range(int(lo), int(hi) + 1)
            self._cons = Constraints(
                note_on_map=on, max_polyphony=self.max_polyphony,
                inst_weights=self.balance.weights() if self.balance is not None else {},
                max_duration=self.max_duration, max_time=self.max_time,
                external=set(self.player_insts),
                **steering_fields(pitch=self.steer.pitch, rate=self.steer.rate),
                steer_density=min(1.0, max(0.0, self.steer.density)),
                pitch_temp=self.temps[0], rhythm_temp=self.temps[1], timing_temp=self.temps[2],
                vel_temp=self.musical.vel_temp, **self.musical.shaping(),
                min_duration=self.musical.min_durations(self.model_insts), **self.grid)
        return self._cons

    def next_constraints(self, ctx: PlayerContext) -> Constraints | None:
        return None if self.muted else self.constraints()

    def on_played(self, ctx: PlayerContext, event: Any) -> None:
        if self.balance is not None and event.vel > 0 and self.balance.played(event.inst):
            self._cons = None  # the balance weights changed

    def on_reset(self, ctx: PlayerContext) -> None:
        if self.balance is not None:
            self.balance.clear()
        self._cons = None

    def on_control(self, ctx: PlayerContext, name: str, value: float) -> None:
        if name in self.CONTROLS:
            setattr(self.steer, self.CONTROLS[name], min(1.0, max(0.0, value)))
            self._cons = None
        elif name == "mute":
            self.muted = not self.muted
            log.info("improviser %s", "muted" if self.muted else "unmuted")
            if self.muted:
                for inst, pitch in sorted(ctx.sounding()):
                    ctx.play_now(inst, pitch, 0)
            else:
                ctx.resume()
        elif name not in ("replan", "query"):
            log.debug("improviser: unknown control %r ignored", name)
