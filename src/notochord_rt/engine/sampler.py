"""The one inference API: ``Notochord`` = network + stream state + constrained sampler.

>>> model = Notochord(emb_size=16, rnn_hidden=32, rnn_layers=1, mlp_layers=1)
>>> model.reset(seed=0)
>>> e = model.sample(Constraints(note_on_map={1: range(60, 72)}))
>>> model.feed(e.inst, e.pitch, e.time, e.vel)

One instance is one performance stream (not thread-safe). The stream state is the
recurrent state, the held notes with their onsets, elapsed time, the step counter and
the random generator; :meth:`get_state` / :meth:`set_state` save and restore all of it
(the context used for sampling is derived from the recurrent state, so it can never be
stale — docs/design.md §6.9).

Guarantees of :meth:`sample` (tested by property tests): no note-on for a sounding
(inst, pitch) and no note-off for a silent one; a non-external note that reached its
``max_duration`` is released; an instrument above ``max_polyphony`` gets a note-off;
soft constraints break in order of cost; an impossible request raises
``NoPossibleEvents`` naming the constraints; sampled times are finite and inside the
model's time support ``[0, 10]`` s, so nothing non-finite reaches the network; everything
an event breaks is named in its ``broken``.

Feeding policy: :meth:`feed` validates its arguments (``InputError`` naming the
argument for a bad type, range or NaN; text such as ``"0.1"`` is refused, not parsed; a
time must be finite and ``>= 0``). A time beyond the model's time support (10 s) reaches
the network as 10 s; the stream clock (held-note ages, :attr:`current_time`) advances by
at most an hour per event (``held.MAX_CLOCK_STEP``), so it never overflows and
``max_duration`` keeps releasing notes whatever is fed. A note-on for a note that
already sounds restarts it (onset = now), a note-off for a silent note changes no held
note; both are fed to the network unchanged and logged as warnings — live input does
contain such messages, and dropping them would desynchronise the model from what was
heard. ``strict=True`` raises ``InputError`` for them instead.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import events as ev
from ..errors import InputError, NoPossibleEvents
from ..model.network import NotochordNet
from . import checks
from .constraints import Constraints, check_order
from .core import InferenceCore, ModuleCore
from .guards import forced_breaks
from .held import HeldNotes
from .subevents import draw_sub_event
from .support import Compiled, Support, build_support, compile_constraints

log = logging.getLogger(__name__)

_DEFAULT: Compiled | None = None


def _default_compiled() -> Compiled:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = compile_constraints(Constraints())
    return _DEFAULT


@dataclass
class SampledEvent:
    """A sampled event with what the sampler knows about it.

    ``end`` is P(the previously fed event ended the piece). ``*_logp`` is the model's
    log-probability of the value, conditioned on the sub-events before it in ``order``
    (censored, discretised for time and velocity); ``None`` where the value was fixed by
    the constraints rather than sampled. ``broken`` names the constraints this event
    breaks: the soft ones that had to be broken (least cost first), and, for an event
    forced by ``forced`` (the constraint or guarantee that forced it, if any), every
    constraint it breaks, hard or soft.
    ``params`` holds the head outputs when asked for (``return_params``).
    """

    inst: int
    pitch: int
    time: float
    vel: float
    end: float = 0.0
    inst_logp: float | None = None
    pitch_logp: float | None = None
    time_logp: float | None = None
    vel_logp: float | None = None
    order: str = "vtip"
    broken: tuple[str, ...] = ()
    forced: str | None = None
    params: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def is_note_on(self) -> bool:
        return self.vel >= ev.NOTE_ON_MIN_VEL

    @property
    def event(self) -> ev.Event:
        """As the package's plain :class:`~notochord_rt.events.Event`."""
        return ev.Event(self.inst, self.pitch, self.time, self.vel)

    def as_dict(self) -> dict[str, Any]:
        """``{inst, pitch, time, vel, end}`` (splat it into :meth:`Notochord.feed`)."""
        return {"inst": self.inst, "pitch": self.pitch, "time": self.time, "vel": self.vel,
                "end": self.end}


@dataclass
class SamplerState:
    """Everything sampling depends on; from :meth:`Notochord.get_state`."""

    rnn: torch.Tensor
    held: HeldNotes
    step: int
    rng: dict


def _make_rng(seed: int | None, generator: Any) -> np.random.Generator | None:
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


def _check_feed(inst: Any, pitch: Any, time: Any, vel: Any) -> tuple[int, int, float, float]:
    """A fed event checked and converted: ``InputError`` naming the bad argument.

    ``inst`` / ``pitch`` are ints (integral floats accepted); ``time`` is a finite number
    of seconds ``>= 0`` and ``vel`` a number in ``[0, 127]``. Text, bools and NaN are
    refused, never coerced.
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


class _Stream:
    """The mutable per-stream state (a plain object: ``nn.Module`` attribute writes are slow)."""

    __slots__ = ("core", "held", "rng", "state", "ctx", "ctx_of", "step")

    def __init__(self, seed: int | None) -> None:
        self.core: InferenceCore | None = None
        self.held = HeldNotes()
        self.rng = np.random.default_rng(seed)
        self.state: torch.Tensor | None = None
        self.ctx: torch.Tensor | None = None
        self.ctx_of: torch.Tensor | None = None
        self.step = 0


class Notochord(NotochordNet):
    """``NotochordNet`` plus the stream state and ``reset/feed/sample/query``.

    Build like the network (``Notochord(config)`` or ``Notochord(emb_size=..., ...)``),
    or wrap trained weights with :meth:`from_net`. ``seed`` seeds the stream's generator.
    """

    def __init__(self, config=None, *, seed: int | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.eval()
        self._s = _Stream(seed)

    @property
    def step_count(self) -> int:
        """Events fed since the last reset (the start event not counted)."""
        return self._s.step

    @classmethod
    def load(cls, path: Any, map_location: str | torch.device = "cpu", *,
             download: bool = False) -> Notochord:
        """Load a checkpoint file, ``"default"`` or a registry model name (see
        ``notochord-rt models list``), in eval mode.

        A name whose model is not in the cache raises
        :class:`~notochord_rt.hub.NotCached` (a ``UserError`` naming the ``pull`` command)
        unless ``download=True``: nothing is downloaded otherwise.
        """
        from ..hub.resolve import resolve_checkpoint

        return super().load(resolve_checkpoint(path, download=download),
                            map_location=map_location)

    @classmethod
    def from_net(cls, net: NotochordNet, seed: int | None = None) -> Notochord:
        """A ``Notochord`` with the weights of ``net`` (copied), ready to sample."""
        model = cls(net.config, seed=seed)
        model.load_state_dict(net.state_dict())
        return model.to(net.device)

    # -- core --------------------------------------------------------------------------------
    @property
    def core(self) -> InferenceCore:
        if self._s.core is None:
            self._s.core = ModuleCore(self)
        return self._s.core

    def use_core(self, core: InferenceCore | str) -> None:
        """Select the inference core: an object, ``"module"``, or a precision of the fast core.

        Precisions (``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"``) build
        ``engine.fast.FastCore`` from the current weights (a copy: call ``use_core`` again
        after changing the weights). The recurrent state is kept. ``"module"`` runs the
        network's own modules, in whatever train/eval mode the model is in (a new
        ``Notochord`` is in eval mode).
        """
        if isinstance(core, str):
            if core == "module":
                core = ModuleCore(self)
            else:
                from .fast import FastCore

                core = FastCore(self, precision=core)
        elif not isinstance(core, InferenceCore):
            raise InputError(f"core must implement InferenceCore, got {type(core).__name__}")
        self._s.core = core
        self._s.ctx_of = None

    # -- stream state ------------------------------------------------------------------------
    def reset(self, start: bool = True, state: SamplerState | None = None,
              seed: int | None = None) -> None:
        """Start a new stream (feeding the start event unless ``start=False``) or restore one.

        ``seed`` re-seeds the stream's random generator.
        """
        if seed is not None:
            self._s.rng = _make_rng(seed, None)  # type: ignore[assignment]
        if state is not None:
            self.set_state(state)
            return
        if isinstance(self._s.core, ModuleCore) and self._s.core.device != self.device:
            self._s.core = None
        self._s.held.clear()
        self._s.step = 0
        self._s.state = self.core.initial_state()
        self._s.ctx_of = None
        if start:
            self._s.state = self.core.feed(self._s.state, ev.START_INST, self.config.start_pitch,
                                         0.0, 0.0)

    def _ensure_started(self) -> None:
        if self._s.state is None:
            self.reset()

    def get_state(self) -> SamplerState:
        """A snapshot of everything sampling depends on (cheap: the RNN state is immutable)."""
        self._ensure_started()
        return SamplerState(self._s.state, self._s.held.copy(), self.step_count,  # type: ignore[arg-type]
                            copy.deepcopy(self._s.rng.bit_generator.state))

    def set_state(self, state: SamplerState) -> None:
        """Restore a snapshot from :meth:`get_state` (of a model of the same shape)."""
        if not isinstance(state, SamplerState):
            raise InputError(f"state must be a SamplerState from get_state(), got "
                             f"{type(state).__name__}")
        want = tuple(self.initial_state.shape)
        if tuple(state.rnn.shape) != want:
            raise InputError(f"state.rnn has shape {tuple(state.rnn.shape)}, expected {want}")
        self._s.state = state.rnn
        self._s.held = state.held.copy()
        self._s.step = int(state.step)
        self._s.rng.bit_generator.state = copy.deepcopy(state.rng)
        self._s.ctx_of = None

    @property
    def held_notes(self) -> dict[tuple[int, int], float]:
        """``{(inst, pitch): age in seconds}`` of the sounding notes."""
        return self._s.held.as_dict()

    def held_map(self) -> dict[int, set[int]]:
        """``{inst: {pitches}}`` of the sounding notes."""
        return self._s.held.held_map()

    @property
    def current_time(self) -> float:
        """Seconds fed since the last reset."""
        return self._s.held.elapsed

    # -- feeding -------------------------------------------------------------------------------
    def feed(self, inst: int, pitch: int, time: float, vel: float, *, strict: bool = False,
             **ignored: Any) -> None:
        """Advance the stream by one event (see the module doc for the repair policy).

        Extra keyword arguments (``end``, ``step``, ``handle`` ...) are ignored so that the
        result of ``sample(...).as_dict()`` or ``query(...)`` can be splatted back in.
        """
        inst, pitch, time, vel = _check_feed(inst, pitch, time, vel)
        self._ensure_started()
        on = vel >= ev.NOTE_ON_MIN_VEL
        held = self._s.held.is_held(inst, pitch)
        if on and held or not (on or held):
            what = "note-on for a sounding note" if on else "note-off for a silent note"
            if strict:
                raise InputError(f"feed: {what} (inst {inst}, pitch {pitch})")
            log.warning("feed: %s (inst %d, pitch %d); fed as given", what, inst, pitch)
        self._s.held.advance(time)
        if on:
            self._s.held.note_on(inst, pitch)
        else:
            self._s.held.note_off(inst, pitch)
        self._s.state = self.core.feed(self._s.state, inst, pitch, min(time, ev.TIME_MAX), vel)
        self._s.step += 1

    def _context(self) -> torch.Tensor:
        if self._s.ctx_of is not self._s.state:
            self._s.ctx = self.core.context(self._s.state)  # type: ignore[arg-type]
            self._s.ctx_of = self._s.state
        return self._s.ctx  # type: ignore[return-value]

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, constraints: Constraints | Compiled | None = None,
               order: str | None = None, *,
               seed: int | None = None, generator: Any = None, predict_end: bool = True,
               return_params: bool = False) -> SampledEvent:
        """Sample the next event under ``constraints`` (does not feed it).

        ``order`` is a permutation of ``"iptv"`` or ``"random"`` (default: the constraints'
        order, else ``"vtip"``); values fixed by the constraints, or left with a single
        possibility, are processed first. ``constraints`` may also be the result of
        ``compile_constraints(c)``, which skips re-validating and re-building the parts
        that do not depend on held notes when the same constraints are used repeatedly.
        ``seed`` / ``generator`` make this call reproducible without touching the
        stream's own generator.
        """
        self._ensure_started()
        if constraints is None:
            comp = _default_compiled()
        elif isinstance(constraints, Constraints):
            comp = compile_constraints(constraints)
        elif isinstance(constraints, Compiled):
            comp = constraints
        else:
            raise InputError(f"constraints must be a Constraints, got {type(constraints).__name__}")
        rng = _make_rng(seed, generator) or self._s.rng
        order = check_order(order or comp.cons.order or "vtip")
        if order == "random":
            order = "".join(np.array(list("iptv"))[rng.permutation(4)])
        sup = build_support(comp, self._s.held)
        sup.autoset()
        return self._sample_support(sup, comp, order, rng, predict_end, return_params)

    def _sample_support(self, sup: Support, comp: Compiled, order: str,
                        rng: np.random.Generator, predict_end: bool,
                        return_params: bool) -> SampledEvent:
        core = self.core
        ctx = self._context()
        logp: dict[str, float] = {}
        params: dict[str, np.ndarray] | None = {} if return_params else None
        done = ""
        while len(done) < 4:
            todo = [m for m in order if m not in done]
            fixed = [m for m in todo if m in sup.fixed]
            m = (fixed or todo)[0]
            if m not in sup.fixed:
                if not sup.atoms:
                    raise NoPossibleEvents("no possible event left while sampling")
                raw = core.head(m, ctx)
                out = (raw if raw.device.type == "cpu" else raw.cpu()).numpy().astype(np.float64)
                if params is not None:
                    params[m] = out
                value, logp[m] = draw_sub_event(m, out, sup, comp, rng, self.config)
                sup.fix(m, value)
                sup.autoset()
            done += m
            if len(done) < 4:
                v = sup.fixed[m]
                ctx = ctx + core.embed(m, min(v, ev.TIME_MAX) if m == "t" else v)
        f = sup.fixed
        end = core.end_prob(self._s.state) if predict_end else 0.0  # type: ignore[arg-type]
        i, p, t, v = int(f["i"]), int(f["p"]), float(f["t"]), float(f["v"])
        broken = sup.broken if sup.forced is None else forced_breaks(
            comp, self._s.held, i, p, t, v)
        return SampledEvent(i, p, t, v, end, logp.get("i"), logp.get("p"), logp.get("t"),
                            logp.get("v"), done, broken, sup.forced, params)

    def query(self, **kw: Any) -> dict[str, Any]:
        """The reference's keyword ``query`` (see :mod:`.query` for the arguments).

        Unlike the reference it respects held notes (no duplicate note-on, no orphan
        note-off). Returns ``{inst, pitch, time, vel, end, step[, handle][, *_params]}``.
        """
        from .query import run_query

        return run_query(self, kw)
