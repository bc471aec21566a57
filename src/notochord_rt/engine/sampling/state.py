"""One stream's state and the feed policy, shared by the single and the batched sampler.

A performance stream is the recurrent state, the held notes (with onsets and the stream
clock), the step counter and the random generator. :class:`StreamState` holds all but
the recurrent state's storage: :class:`~.sampler.Notochord` keeps its one ``(layers, 1,
hidden)`` tensor in :attr:`StreamState.rnn`, :class:`~.streams.Streams` keeps the rows
of all its streams in one batched tensor. Everything else — validating a fed event
(:func:`check_feed`), the held-note repair policy with its warnings and ``strict=``
(:meth:`StreamState.check_repair`, :meth:`StreamState.advance`), snapshots
(:class:`SamplerState`) — is this module's, so both samplers behave the same.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ... import events as ev
from ...errors import InputError
from . import checks
from .held import HeldNotes

#: the feed policy's warnings name this logger (``notochord_rt.engine.sampling.sampler``) whichever
#: sampler fed the event, as they did before the state moved here
log = logging.getLogger(__name__.rsplit(".", 1)[0] + ".sampler")


@dataclass
class SamplerState:
    """Everything sampling depends on; from :meth:`Notochord.get_state` /
    :meth:`Streams.get_state` (interchangeable between them)."""

    rnn: torch.Tensor
    held: HeldNotes
    step: int
    rng: dict


def make_rng(seed: int | None, generator: Any) -> np.random.Generator | None:
    """A generator for one call: ``generator`` (numpy, or torch seeding a numpy one), else
    a fresh one seeded with ``seed``, else ``None`` (use the stream's own)."""
    if generator is not None:
        if isinstance(generator, np.random.Generator):
            return generator
        if isinstance(generator, torch.Generator):
            s = int(torch.randint(0, 2**62, (1,), generator=generator))
            return np.random.default_rng(s)
        raise InputError(f"generator must be a numpy or torch Generator, got {generator!r}")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be an int >= 0, got {seed!r}")
        return np.random.default_rng(int(seed))
    return None


_INT_TYPES = frozenset({int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                        np.uint32, np.uint64})
_NUM_TYPES = _INT_TYPES | {float, np.float16, np.float32, np.float64}
_TIME_TYPES = _NUM_TYPES - {int}  # a Python int may be too large for a float


def check_feed(inst: Any, pitch: Any, time: Any, vel: Any) -> tuple[int, int, float, float]:
    """A fed event checked and converted: ``InputError`` naming the bad argument.

    ``inst`` / ``pitch`` are ints (integral floats accepted); ``time`` is a finite number
    of seconds ``>= 0`` and ``vel`` a number in ``[0, 127]``. Text, bools and NaN are
    refused, never coerced. Public: the OSC protocol validates client events with it.
    """
    if (type(inst) in _INT_TYPES and type(pitch) in _INT_TYPES and type(time) in _TIME_TYPES
            and type(vel) in _NUM_TYPES and ev.FIRST_MELODIC <= inst <= ev.NUM_INSTRUMENTS
            and 0 <= pitch < ev.NUM_PITCHES and 0.0 <= time < math.inf
            and 0.0 <= vel <= ev.VEL_MAX):  # the common case, fast (NaN fails)
        return int(inst), int(pitch), float(time), float(vel)
    ids = []
    for name, v in (("inst", inst), ("pitch", pitch)):
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        ids.append(checks.integer(v, name, *((ev.FIRST_MELODIC, ev.NUM_INSTRUMENTS)
                                              if name == "inst" else (0, ev.NUM_PITCHES - 1))))
    time = checks.real(time, "time", 0.0, math.inf, finite=True)
    vel = checks.real(vel, "vel", 0.0, ev.VEL_MAX)
    return ids[0], ids[1], time, vel


class StreamState:
    """The mutable state of one stream (a plain object: ``nn.Module`` attribute writes
    are slow).

    ``rnn`` is the recurrent state of a single-stream sampler (``None`` before its first
    reset, and always in :class:`~.streams.Streams`, whose rows live in one batched
    tensor); ``ctx`` caches the context computed from ``ctx_of`` (the ``rnn`` tensor it
    belongs to, so a restored or newly fed state is never served a stale context).
    """

    __slots__ = ("held", "rng", "step", "rnn", "ctx", "ctx_of")

    def __init__(self, rng: np.random.Generator, track_grid: bool = False) -> None:
        self.held = HeldNotes(track_grid)
        self.rng = rng
        self.step = 0
        self.rnn: torch.Tensor | None = None
        self.ctx: torch.Tensor | None = None
        self.ctx_of: torch.Tensor | None = None

    def clear(self) -> None:
        """Back to the start of a stream: no held notes, step 0 (the generator is kept)."""
        self.held.clear()
        self.step = 0
        self.ctx_of = None

    def check_repair(self, inst: int, pitch: int, vel: float, strict: bool) -> None:
        """The feed policy for an event the held notes contradict: a note-on for a
        sounding note or a note-off for a silent one is logged as a warning (it is still
        fed: live input contains such messages), or raises ``InputError`` if ``strict``."""
        on = vel >= ev.NOTE_ON_MIN_VEL
        held = self.held.is_held(inst, pitch)
        if on and held or not (on or held):
            what = "note-on for a sounding note" if on else "note-off for a silent note"
            if strict:
                raise InputError(f"feed: {what} (inst {inst}, pitch {pitch})")
            log.warning("feed: %s (inst %d, pitch %d); fed as given", what, inst, pitch)

    def advance(self, inst: int, pitch: int, time: float, vel: float) -> None:
        """Account for a validated fed event: clock, held notes and step (not ``rnn``)."""
        self.held.advance(time)
        if vel >= ev.NOTE_ON_MIN_VEL:
            self.held.note_on(inst, pitch)
        else:
            self.held.note_off(inst, pitch)
        self.step += 1

    def snapshot(self, rnn: torch.Tensor) -> SamplerState:
        """A :class:`SamplerState` of this stream with recurrent state ``rnn``."""
        return SamplerState(rnn, self.held.copy(), self.step,
                            copy.deepcopy(self.rng.bit_generator.state))

    def restore(self, state: SamplerState, want: tuple[int, ...]) -> None:
        """Restore held notes, step and generator from ``state`` after checking that it is
        a :class:`SamplerState` whose ``rnn`` has shape ``want`` (the caller stores it)."""
        if not isinstance(state, SamplerState):
            raise InputError(f"state must be a SamplerState from get_state(), got "
                             f"{type(state).__name__}")
        if tuple(state.rnn.shape) != tuple(want):
            raise InputError(f"state.rnn has shape {tuple(state.rnn.shape)}, "
                             f"expected {tuple(want)}")
        self.held = state.held.copy()
        self.step = int(state.step)
        self.rng.bit_generator.state = copy.deepcopy(state.rng)
        self.ctx_of = None
