"""The one inference API: ``Notochord`` = network + stream state + constrained sampler.

>>> model = Notochord(emb_size=16, rnn_hidden=32, rnn_layers=1, mlp_layers=1)
>>> model.reset(seed=0)
>>> e = model.sample(Constraints(note_on_map={1: range(60, 72)}))
>>> model.feed(e.inst, e.pitch, e.time, e.vel)

One instance is one performance stream (not thread-safe). It is a composition: the
network's weights (:attr:`Notochord.net`, a ``NotochordNet``; many streams may share one,
see :meth:`Notochord.from_net`) reached only through an :class:`~.core.InferenceCore`
(:meth:`use_core`); one :class:`~.state.StreamState` (the
recurrent state, the held notes with their onsets, elapsed time, the step counter and
the random generator), which :meth:`get_state` / :meth:`set_state` save and restore (the
context used for sampling is derived from the recurrent state, so it can never be stale
— docs/design.md §6.9); and the sampling loop :func:`~.event.draw_event`, the same one
that :class:`~.streams.Streams` runs for many streams at once.

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
heard. ``strict=True`` raises ``InputError`` for them instead. This policy and the
validation (:func:`~.state.check_feed`) are :mod:`.state`'s, shared with ``Streams.feed``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ... import events as ev
from ...errors import InputError
from ...model.network import NotochordNet
from ..cores.core import InferenceCore, ModuleCore
from .constraints import Constraints
from .event import EventDraw, SampledEvent, SingleOps, as_compiled, draw_event
from .state import SamplerState, StreamState, check_feed, make_rng
from .support import Compiled

__all__ = ["Notochord", "SampledEvent", "SamplerState", "check_feed"]


class Notochord:
    """One performance stream over a network: ``reset/feed/sample/query``.

    Build a new network like ``NotochordNet`` (``Notochord(config)`` or
    ``Notochord(emb_size=..., ...)``), load one with :meth:`load`, or sample from existing
    weights with :meth:`from_net` (shared, not copied: many streams, one network). The
    network is :attr:`net`; the few things of it a stream's user needs (``config``,
    ``device``, ``save``, ``score``, ``to``, ``state_dict`` ...) are passed through. The
    stream lives in ``self._s`` (a :class:`~.state.StreamState`) and the network is used
    only through :attr:`core`. ``seed`` seeds the stream's generator.
    """

    def __init__(self, config=None, *, net: NotochordNet | None = None,
                 seed: int | None = None, **overrides: Any) -> None:
        if net is None:
            net = NotochordNet(config, **overrides)
            net.eval()
        elif config is not None or overrides:
            raise InputError("give a network or a configuration, not both")
        self.net = net
        self._s = StreamState(np.random.default_rng(seed), bool(net.config.time_pulse_grid))
        self._core: InferenceCore | None = None

    @property
    def step_count(self) -> int:
        """Events fed since the last reset (the start event not counted)."""
        return self._s.step

    @classmethod
    def load(cls, path: Any, map_location: str | torch.device = "cpu", *,
             download: bool = False, seed: int | None = None) -> Notochord:
        """Load a checkpoint file, ``"default"`` or a registry model name (see
        ``notochord-rt models list``), in eval mode.

        A name whose model is not in the cache raises
        :class:`~notochord_rt.hub.NotCached` (a ``UserError`` naming the ``pull`` command)
        unless ``download=True``: nothing is downloaded otherwise.
        """
        from ...hub.resolve import resolve_checkpoint

        net = NotochordNet.load(resolve_checkpoint(path, download=download),
                                map_location=map_location)
        return cls(net=net, seed=seed)

    @classmethod
    def from_net(cls, net: NotochordNet, seed: int | None = None) -> Notochord:
        """A stream over ``net``'s weights (shared, not copied; ``net`` is put in eval
        mode), ready to sample."""
        if isinstance(net, Notochord):
            net = net.net
        if not isinstance(net, NotochordNet):
            raise InputError(f"net must be a NotochordNet, got {type(net).__name__}")
        net.eval()
        return cls(net=net, seed=seed)

    # -- the network (passed through) ----------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.net.config

    @property
    def device(self) -> torch.device:
        return self.net.device

    @property
    def training(self) -> bool:
        return self.net.training

    @property
    def initial_state(self) -> torch.Tensor:
        """The network's learned initial recurrent state (a parameter)."""
        return self.net.initial_state

    def save(self, path: Any, **metadata: str) -> None:
        """Save the network's weights (:meth:`NotochordNet.save`)."""
        self.net.save(path, **metadata)

    def score(self, *args: Any, **kw: Any) -> dict[str, torch.Tensor]:
        """Log-probabilities of a whole sequence (:meth:`NotochordNet.score`); the stream is
        not touched."""
        return self.net.score(*args, **kw)

    def to(self, *args: Any, **kw: Any) -> Notochord:
        """Move the network (the core is rebuilt on the next reset if it must be)."""
        self.net.to(*args, **kw)
        return self

    def eval(self) -> Notochord:
        self.net.eval()
        return self

    def train(self, mode: bool = True) -> Notochord:
        self.net.train(mode)
        return self

    def parameters(self, recurse: bool = True) -> Any:
        return self.net.parameters(recurse)

    def named_parameters(self, *args: Any, **kw: Any) -> Any:
        return self.net.named_parameters(*args, **kw)

    def state_dict(self, *args: Any, **kw: Any) -> dict[str, torch.Tensor]:
        return self.net.state_dict(*args, **kw)

    def load_state_dict(self, *args: Any, **kw: Any) -> Any:
        """Load weights into the network (call :meth:`use_core` again for a fast core)."""
        return self.net.load_state_dict(*args, **kw)

    # -- core --------------------------------------------------------------------------------
    @property
    def core(self) -> InferenceCore:
        if self._core is None:
            self._core = ModuleCore(self.net)
        return self._core

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
                core = ModuleCore(self.net)
            else:
                from ..cores.fast import FastCore

                core = FastCore(self.net, precision=core)
        elif not isinstance(core, InferenceCore):
            raise InputError(f"core must implement InferenceCore, got {type(core).__name__}")
        self._core = core
        self._s.ctx_of = None

    # -- stream state ------------------------------------------------------------------------
    def reset(self, start: bool = True, state: SamplerState | None = None,
              seed: int | None = None) -> None:
        """Start a new stream (feeding the start event unless ``start=False``) or restore one.

        ``seed`` re-seeds the stream's random generator.
        """
        if seed is not None:
            self._s.rng = make_rng(seed, None)  # type: ignore[assignment]
        if state is not None:
            self.set_state(state)
            return
        if isinstance(self._core, ModuleCore) and self._core.device != self.device:
            self._core = None
        self._s.clear()
        self._s.rnn = self.core.initial_state()
        if start:
            self._s.rnn = self.core.feed(self._s.rnn, ev.START_INST, self.config.start_pitch,
                                         0.0, 0.0)

    def _ensure_started(self) -> None:
        if self._s.rnn is None:
            self.reset()

    def get_state(self) -> SamplerState:
        """A snapshot of everything sampling depends on (cheap: the RNN state is immutable)."""
        self._ensure_started()
        return self._s.snapshot(self._s.rnn)  # type: ignore[arg-type]

    def set_state(self, state: SamplerState) -> None:
        """Restore a snapshot from :meth:`get_state` (of a model of the same shape)."""
        self._s.restore(state, tuple(self.initial_state.shape))
        self._s.rnn = state.rnn

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
        inst, pitch, time, vel = check_feed(inst, pitch, time, vel)
        self._ensure_started()
        self._s.check_repair(inst, pitch, vel, strict)
        self._s.advance(inst, pitch, time, vel)
        self._s.rnn = self.core.feed(self._s.rnn, inst, pitch, min(time, ev.TIME_MAX), vel)

    def _context(self) -> torch.Tensor:
        if self._s.ctx_of is not self._s.rnn:
            self._s.ctx = self.core.context(self._s.rnn)  # type: ignore[arg-type]
            self._s.ctx_of = self._s.rnn
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
        if constraints is not None and not isinstance(constraints, (Constraints, Compiled)):
            raise InputError(f"constraints must be a Constraints, got {type(constraints).__name__}")
        comp = as_compiled(constraints)
        rng = make_rng(seed, generator) or self._s.rng
        draw = EventDraw.start(comp, self._s.held, order, rng, self.config, return_params)
        draw_event(SingleOps(self.core), self._context(), (draw,))
        end = self.core.end_prob(self._s.rnn) if predict_end else 0.0  # type: ignore[arg-type]
        return draw.result(end, self._s.held)

    def query(self, **kw: Any) -> dict[str, Any]:
        """The reference's keyword ``query`` (see :mod:`.query` for the arguments).

        Unlike the reference it respects held notes (no duplicate note-on, no orphan
        note-off). Returns ``{inst, pitch, time, vel, end, step[, handle][, *_params]}``.
        """
        from .query import run_query

        return run_query(self, kw)
