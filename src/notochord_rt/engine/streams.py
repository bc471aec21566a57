"""Many independent streams advanced together: one batched network step for N streams.

A server playing for many users, or an app with many autonomous voices that each have
their own model state, would otherwise run N batch-1 steps, each streaming all the
weights from memory. :class:`Streams` keeps the recurrent states of N streams in one
``(layers, N, hidden)`` tensor and runs the GRU step, the shared projection and each head
once for the whole batch (:class:`~notochord_rt.engine.fast.FastCore`'s ``*_batch``
methods), so the weights are read once per step instead of N times.

Everything else stays per stream and reuses the single-stream sampler's code: each
stream has its own held notes (:class:`~notochord_rt.engine.held.HeldNotes`), random
generator and step count, and each sample builds that stream's support from its own
:class:`~notochord_rt.engine.constraints.Constraints` (``build_support``) and draws each
sub-event with ``draw_sub_event``. The only new logic is the scheduling: in each of the
four rounds every stream picks its next sub-event (fixed ones first, then its order, as
in :meth:`Notochord.sample`), streams wanting the same head are grouped into one batched
head call, and the chosen values' embeddings are added to each stream's context in
batches.

With the same weights, seeds and inputs, stream ``k`` produces the same events as a
single ``Notochord`` (on the fp32 fast core) fed the same way — tested.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import events as ev
from ..errors import InputError, NoPossibleEvents
from .constraints import Constraints, check_order
from .fast import FastCore
from .guards import forced_breaks
from .held import HeldNotes
from .sampler import SampledEvent, SamplerState, _check_feed
from .subevents import draw_sub_event
from .support import Compiled, Support, build_support, compile_constraints


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
        model: a ``NotochordNet`` (or ``Notochord``) whose weights are packed.
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
        self.config = model.config
        self.core = core if core is not None else FastCore(model, precision=precision)
        self._rngs = _rngs(seed, self.n)
        self._held = [HeldNotes() for _ in range(self.n)]
        self.step_count = np.zeros(self.n, dtype=np.int64)
        self._default: Compiled | None = None
        with torch.inference_mode():
            self._state = self.core.initial_state_batch(self.n)
            self._start(np.arange(self.n))

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

    def _start(self, idx: np.ndarray) -> None:
        k = len(idx)
        start = torch.full((k,), ev.START_INST, dtype=torch.long)
        pitch = torch.full((k,), self.config.start_pitch, dtype=torch.long)
        zero = torch.zeros(k)
        self._write(idx, self.core.feed_batch(self._rows(idx), start, pitch, zero, zero))

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

        ``seed`` (an int, or one per stream) reseeds those streams' generators.
        """
        idx = self._index(i)
        with torch.inference_mode():
            self._state[:, torch.from_numpy(idx)] = self.core.initial_state_batch(len(idx))
            if start:
                self._start(idx)
        for k in idx:
            self._held[k].clear()
        self.step_count[idx] = 0
        if seed is not None:
            for k, g in zip(idx, _rngs(seed, len(idx))):
                self._rngs[k] = g

    def state(self, i: int) -> Tensor:
        """Recurrent state of stream ``i`` as ``(layers, 1, hidden)`` (a copy)."""
        return self._state[:, int(i): int(i) + 1].clone()

    def get_state(self, i: int) -> SamplerState:
        """Snapshot of stream ``i`` (recurrent state, held notes, step, generator), in the
        form of ``Notochord.get_state`` so it can be restored into any stream."""
        k = int(self._index(i)[0])
        return SamplerState(self.state(k), self._held[k].copy(), int(self.step_count[k]),
                            copy.deepcopy(self._rngs[k].bit_generator.state))

    def set_state(self, i: int, state: SamplerState) -> None:
        """Restore stream ``i`` from a snapshot of :meth:`get_state` (or of a ``Notochord``
        of the same shape)."""
        k = int(self._index(i)[0])
        if not isinstance(state, SamplerState):
            raise InputError(f"state must be a SamplerState, got {type(state).__name__}")
        want = (self._state.shape[0], 1, self._state.shape[2])
        if tuple(state.rnn.shape) != want:
            raise InputError(f"state.rnn has shape {tuple(state.rnn.shape)}, expected {want}")
        with torch.inference_mode():
            self._state[:, k] = state.rnn[:, 0].to(self._state.dtype)
        self._held[k] = state.held.copy()
        self.step_count[k] = int(state.step)
        self._rngs[k].bit_generator.state = copy.deepcopy(state.rng)

    def held_notes(self, i: int) -> dict[tuple[int, int], float]:
        """``{(inst, pitch): age}`` of stream ``i``."""
        return self._held[int(i)].as_dict()

    # -- feeding -------------------------------------------------------------------------
    def feed(self, idx: Any, inst: Any, pitch: Any, time: Any, vel: Any) -> None:
        """Feed one event to each stream in ``idx`` (arrays of the same length).

        Each event is validated like ``Notochord.feed`` (``InputError``); nothing is fed if
        any is invalid. Held notes follow the same policy as the single-stream sampler.
        """
        idx = self._index(idx)
        cols = [np.atleast_1d(np.asarray(x)) for x in (inst, pitch, time, vel)]
        if any(len(c) != len(idx) for c in cols):
            raise InputError(f"feed: idx has {len(idx)} streams but the event arrays have "
                             f"lengths {[len(c) for c in cols]}")
        events = [_check_feed(*e) for e in zip(*cols)]
        for k, (i, p, t, v) in zip(idx, events):
            held = self._held[k]
            held.advance(t)
            if v >= ev.NOTE_ON_MIN_VEL:
                held.note_on(i, p)
            else:
                held.note_off(i, p)
        self.step_count[idx] += 1
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
        orders, sups = [], []
        for k, c in zip(idx, cons):
            o = check_order(order or c.cons.order or "vtip")
            if o == "random":
                o = "".join(np.array(list("iptv"))[self._rngs[k].permutation(4)])
            orders.append(o)
            sup = build_support(c, self._held[k])
            sup.autoset()
            sups.append(sup)
        with torch.inference_mode():
            rows = self._rows(idx)
            ctx = self.core.context_batch(rows)
            done, logp, params = self._draw_all(idx, ctx, cons, orders, sups, return_params)
            end = (self.core.end_prob_batch(rows).tolist() if predict_end
                   else [0.0] * len(idx))
        out = []
        for j, sup in enumerate(sups):
            f, lp = sup.fixed, logp[j]
            i, p, t, v = int(f["i"]), int(f["p"]), float(f["t"]), float(f["v"])
            broken = sup.broken if sup.forced is None else forced_breaks(
                cons[j], self._held[idx[j]], i, p, t, v)
            out.append(SampledEvent(
                i, p, t, v, float(end[j]), lp.get("i"), lp.get("p"), lp.get("t"),
                lp.get("v"), done[j], broken, sup.forced,
                params[j] if return_params else None))
        return out

    def _constraints(self, constraints, k: int) -> list[Compiled]:
        """One compiled constraint set per stream; each distinct object compiled once."""
        if constraints is None or isinstance(constraints, (Constraints, Compiled)):
            return [self._compile(constraints, {})] * k
        cons = list(constraints)
        if len(cons) != k:
            raise InputError(f"constraints: expected {k} (one per stream), got {len(cons)}")
        seen: dict[int, Compiled] = {}
        return [self._compile(c, seen) for c in cons]

    def _compile(self, c, seen: dict[int, Compiled]) -> Compiled:
        if c is None:
            if self._default is None:
                self._default = compile_constraints(Constraints())
            return self._default
        if isinstance(c, Compiled):
            return c
        if not isinstance(c, Constraints):
            raise InputError(f"constraints must be Constraints or None, got {type(c).__name__}")
        if id(c) not in seen:
            seen[id(c)] = compile_constraints(c)
        return seen[id(c)]

    def _draw_all(self, idx: np.ndarray, ctx: Tensor, cons: list[Compiled],
                  orders: list[str], sups: list[Support], return_params: bool):
        """Four rounds: per stream pick the next sub-event, batch the heads, draw, embed."""
        k = len(idx)
        done = [""] * k
        logp: list[dict[str, float]] = [{} for _ in range(k)]
        params: list[dict[str, np.ndarray]] = [{} for _ in range(k)]
        for rnd in range(4):
            pick: list[str] = []
            need: dict[str, list[int]] = {}
            for j in range(k):
                todo = [m for m in orders[j] if m not in done[j]]
                fixed = [m for m in todo if m in sups[j].fixed]
                m = (fixed or todo)[0]
                pick.append(m)
                if m not in sups[j].fixed:
                    need.setdefault(m, []).append(j)
            for m, js in need.items():
                heads = self.core.head_batch(m, ctx[js]).double().numpy()
                for row, j in enumerate(js):
                    sup = sups[j]
                    if not sup.atoms:
                        raise NoPossibleEvents(f"stream {idx[j]}: no possible event left "
                                               "while sampling")
                    out = heads[row]
                    if return_params:
                        params[j][m] = out
                    value, logp[j][m] = draw_sub_event(m, out, sup, cons[j],
                                                       self._rngs[idx[j]], self.config)
                    sup.fix(m, value)
                    sup.autoset()
            for j in range(k):
                done[j] += pick[j]
            if rnd == 3:
                break
            by_sub: dict[str, list[int]] = {}
            for j in range(k):
                by_sub.setdefault(pick[j], []).append(j)
            for m, js in by_sub.items():
                vals = [sups[j].fixed[m] for j in js]
                if m == "t":
                    vals = [min(v, ev.TIME_MAX) for v in vals]
                emb = self.core.embed_batch(m, torch.tensor(vals, dtype=torch.float64))
                ctx[js] += emb
        return done, logp, params
