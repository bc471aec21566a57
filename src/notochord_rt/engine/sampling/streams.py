"""Many independent streams advanced together: one batched network step for N streams.

A server playing for many users, or an app with many autonomous voices that each have
their own model state, would otherwise run N batch-1 steps, each streaming all the
weights from memory. :class:`Streams` keeps the recurrent states of N streams in one
``(layers, N, hidden)`` tensor and runs the GRU step, the shared projection and each head
once for the whole batch (:class:`~notochord_rt.engine.cores.fast.FastCore`'s ``*_batch``
methods), so the weights are read once per step instead of N times.

Everything else is the single-stream sampler's code: each stream has its own
:class:`~notochord_rt.engine.sampling.state.StreamState` (held notes, random generator, step
count; its recurrent state is its row of the batched tensor), fed events are validated
and meet the same held-note policy (warnings, ``strict=``), and sampling runs the one
loop :func:`~notochord_rt.engine.sampling.event.draw_event` through
:class:`~notochord_rt.engine.sampling.event.BatchOps`: in each of the four rounds every stream
picks its next sub-event, streams wanting the same head share one batched head call,
and the chosen values' embeddings are added to the contexts in batches.

A reset copies one start state computed once at batch 1 (not recomputed at the batch
size of the reset), so it is the same whichever streams are reset.

With the same weights, seeds and inputs, stream ``k`` produces the same events as a
single ``Notochord`` (on the fp32 fast core) fed the same way — tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ... import events as ev
from ...errors import InputError
from ..cores.fast import FastCore
from .constraints import Constraints
from .event import BatchOps, EventDraw, SampledEvent, as_compiled, draw_event
from .sampler import Notochord
from .state import SamplerState, StreamState, check_feed
from .support import Compiled


def _rngs(seed: Any, n: int) -> list[np.random.Generator]:
    """One generator per stream: from a list of seeds/generators, or spawned from one seed."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != n:
            raise InputError(f"seed: expected {n} seeds or generators, got {len(seed)}")
        return [s if isinstance(s, np.random.Generator) else np.random.default_rng(s)
                for s in seed]
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


class Streams:
    """``n`` independent Notochord streams sharing one network and one batched step.

    Args:
        model: a ``NotochordNet``, or a ``Notochord`` (its network), whose weights are packed.
        n: number of streams.
        precision: precision of the packed weights (see :class:`FastCore`).
        seed: an int (each stream gets an independent generator spawned from it), or a
            list of ``n`` seeds / ``numpy.random.Generator`` objects, one per stream.
        core: an already built :class:`FastCore` to share (then ``precision`` is ignored).

    Streams start after their start event, like ``Notochord.reset()``.
    """

    def __init__(self, model, n: int, precision: str = "fp32", seed: Any = None,
                 core: FastCore | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"n must be a positive number of streams, got {n!r}")
        self.n = int(n)
        if isinstance(model, Notochord):  # a single stream's sampler: its network
            model = model.net
        self.config = model.config
        self.core = core if core is not None else FastCore(model, precision=precision)
        self._streams = [StreamState(g, bool(self.config.time_pulse_grid))
                         for g in _rngs(seed, self.n)]
        with torch.inference_mode():
            # computed once, at batch 1, and copied into every stream that is (re)started:
            # a reset gives the same state whichever and however many streams are reset
            self._init = self.core.initial_state_batch(1)
            one = torch.ones(1, dtype=torch.long)
            zero = torch.zeros(1)
            self._start = self.core.feed_batch(self._init, one * ev.START_INST,
                                               one * self.config.start_pitch, zero, zero)
            self._state = self._start.expand(-1, self.n, -1).clone()

    @property
    def step_count(self) -> np.ndarray:
        """Events fed to each stream since its last reset (a fresh array)."""
        return np.fromiter((s.step for s in self._streams), dtype=np.int64, count=self.n)

    # -- state ---------------------------------------------------------------------------
    def _index(self, idx: Any) -> np.ndarray:
        if idx is None:
            return np.arange(self.n)
        a = np.atleast_1d(np.asarray(idx))
        if a.dtype.kind not in "iu" or a.ndim != 1:
            raise InputError(f"idx must be stream indices (ints), got {idx!r}")
        if a.size and (a.min() < 0 or a.max() >= self.n):
            raise InputError(f"idx must be in 0..{self.n - 1}, got {a.tolist()}")
        if len(np.unique(a)) != a.size:
            raise InputError(f"idx has repeated streams: {a.tolist()}")
        return a.astype(np.int64)

    def _rows(self, idx: np.ndarray) -> Tensor:
        if len(idx) == self.n and (idx == np.arange(self.n)).all():
            return self._state
        return self._state[:, torch.from_numpy(idx)]

    def _write(self, idx: np.ndarray, new: Tensor) -> None:
        if len(idx) == self.n and (idx == np.arange(self.n)).all():
            self._state = new
        else:
            self._state[:, torch.from_numpy(idx)] = new

    def reset(self, i: Any = None, start: bool = True, seed: Any = None) -> None:
        """Restart stream(s) ``i`` (default all): initial state, no held notes, step 0.

        The recurrent state is a copy of one cached state (after the start event unless
        ``start=False``), the same whichever streams are reset. ``seed`` (an int, or one
        per stream) reseeds those streams' generators.
        """
        idx = self._index(i)
        with torch.inference_mode():
            self._state[:, torch.from_numpy(idx)] = self._start if start else self._init
        for k in idx:
            self._streams[k].clear()
        if seed is not None:
            for k, g in zip(idx, _rngs(seed, len(idx))):
                self._streams[k].rng = g

    def state(self, i: int) -> Tensor:
        """Recurrent state of stream ``i`` as ``(layers, 1, hidden)`` (a copy)."""
        return self._state[:, int(i): int(i) + 1].clone()

    def get_state(self, i: int) -> SamplerState:
        """Snapshot of stream ``i`` (recurrent state, held notes, step, generator), in the
        form of ``Notochord.get_state`` so it can be restored into any stream."""
        k = int(self._index(i)[0])
        return self._streams[k].snapshot(self.state(k))

    def set_state(self, i: int, state: SamplerState) -> None:
        """Restore stream ``i`` from a snapshot of :meth:`get_state` (or of a ``Notochord``
        of the same shape)."""
        k = int(self._index(i)[0])
        self._streams[k].restore(state, (self._state.shape[0], 1, self._state.shape[2]))
        with torch.inference_mode():
            self._state[:, k] = state.rnn[:, 0].to(self._state.dtype)

    def held_notes(self, i: int) -> dict[tuple[int, int], float]:
        """``{(inst, pitch): age}`` of stream ``i``."""
        return self._streams[int(i)].held.as_dict()

    # -- feeding -------------------------------------------------------------------------
    def feed(self, idx: Any, inst: Any, pitch: Any, time: Any, vel: Any, *,
             strict: bool = False) -> None:
        """Feed one event to each stream in ``idx`` (arrays of the same length).

        Each event is validated like ``Notochord.feed`` (``InputError``) and meets the same
        held-note policy (a note-on for a sounding note or a note-off for a silent one is
        fed and logged as a warning, or refused with ``strict=True``); nothing is fed if
        any event is refused.
        """
        idx = self._index(idx)
        cols = [np.atleast_1d(np.asarray(x)) for x in (inst, pitch, time, vel)]
        if any(len(c) != len(idx) for c in cols):
            raise InputError(f"feed: idx has {len(idx)} streams but the event arrays have "
                             f"lengths {[len(c) for c in cols]}")
        events = [check_feed(*e) for e in zip(*cols)]
        streams = [self._streams[k] for k in idx]
        for st, (i, p, _, v) in zip(streams, events):
            st.check_repair(i, p, v, strict)
        for st, e in zip(streams, events):
            st.advance(*e)
        if not events:
            return
        i, p, t, v = zip(*events)
        with torch.inference_mode():
            new = self.core.feed_batch(
                self._rows(idx), torch.tensor(i), torch.tensor(p),
                torch.tensor(t, dtype=torch.float32).clamp_(max=ev.TIME_MAX),
                torch.tensor(v, dtype=torch.float32))
            self._write(idx, new)

    def feed_events(self, idx: Any, events: Sequence[Any]) -> None:
        """Feed ``events`` (``Event``/``SampledEvent`` objects, one per stream in ``idx``)."""
        if not events:
            return
        self.feed(idx, *zip(*((e.inst, e.pitch, e.time, e.vel) for e in events)))

    # -- sampling ------------------------------------------------------------------------
    def sample(self, constraints: Constraints | Compiled | Sequence[Constraints | Compiled | None]
               | None = None,
               idx: Any = None, order: str | None = None, predict_end: bool = True,
               return_params: bool = False) -> list[SampledEvent]:
        """Sample the next event of each stream in ``idx`` (default all), without feeding.

        ``constraints`` is one :class:`Constraints` for every stream or a list with one per
        stream (``None`` = unconstrained); ``compile_constraints(c)`` results are accepted
        too and skip re-validation. Each stream samples from its own support with its own
        generator; ``order`` as in ``Notochord.sample``.
        """
        idx = self._index(idx)
        cons = self._constraints(constraints, len(idx))
        streams = [self._streams[k] for k in idx]
        draws = [EventDraw.start(c, st.held, order, st.rng, self.config, return_params,
                                 f"stream {k}: ")
                 for k, c, st in zip(idx, cons, streams)]
        with torch.inference_mode():
            rows = self._rows(idx)
            draw_event(BatchOps(self.core), self.core.context_batch(rows), draws)
            end = (self.core.end_prob_batch(rows).tolist() if predict_end
                   else [0.0] * len(idx))
        return [d.result(float(e), st.held) for d, e, st in zip(draws, end, streams)]

    def _constraints(self, constraints, k: int) -> list[Compiled]:
        """One compiled constraint set per stream; each distinct object compiled once."""
        if constraints is None or isinstance(constraints, (Constraints, Compiled)):
            return [as_compiled(constraints)] * k
        cons = list(constraints)
        if len(cons) != k:
            raise InputError(f"constraints: expected {k} (one per stream), got {len(cons)}")
        seen: dict[int, Compiled] = {}
        return [as_compiled(c, seen) for c in cons]
