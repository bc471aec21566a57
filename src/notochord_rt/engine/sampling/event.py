"""The one sampling loop: pick a sub-event, draw it, fix it, embed it — for 1 or N streams.

Sampling an event is four rounds. In each, every stream being sampled picks its next
sub-event (values already fixed by its support first, then its order), draws it from
the head's output under its support unless it is already fixed, and adds the chosen
value's embedding to its context for the next round (additive conditioning,
docs/design.md §4.2). :func:`draw_event` runs those rounds for a sequence of
:class:`EventDraw` (one per stream): streams wanting the same head in a round share one
head call, and embeddings of one sub-event are added in one call, through a small
adapter over the inference core — :class:`SingleOps` (any
:class:`~.core.InferenceCore`, one stream: what :meth:`Notochord.sample` uses) or
:class:`BatchOps` (the batched methods of :class:`~.fast.FastCore`: what
:meth:`Streams.sample` uses). Everything else — the order, the support, the draws, the
result with its log-probabilities and broken constraints — is :class:`EventDraw`'s, so
a stream of :class:`~.streams.Streams` samples exactly as a single ``Notochord`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ... import events as ev
from ...errors import InputError, NoPossibleEvents
from ...model import motif, pulse
from ..cores.core import InferenceCore
from .constraints import Constraints, check_order
from .draw import narrow_together
from .grid import inst_retimer, place
from .guards import forced_breaks
from .held import HeldNotes
from .subevents import draw_sub_event
from .support import Compiled, Support, build_support, compile_constraints
from .variety import stuck_pitches


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
    order: str = ev.SAMPLING_ORDER
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


_DEFAULT: Compiled | None = None


def as_compiled(c: Any, seen: dict[int, Compiled] | None = None) -> Compiled:
    """``c`` compiled: ``None`` is the (cached) unconstrained set, a :class:`Compiled`
    is used as is, a :class:`Constraints` is compiled — once per object when ``seen``
    (``id -> Compiled``) is given; anything else is an ``InputError``."""
    global _DEFAULT
    if c is None:
        if _DEFAULT is None:
            _DEFAULT = compile_constraints(Constraints())
        return _DEFAULT
    if isinstance(c, Compiled):
        return c
    if not isinstance(c, Constraints):
        raise InputError(f"constraints must be Constraints or None, got {type(c).__name__}")
    if seen is None:
        return compile_constraints(c)
    got = seen.get(id(c))
    if got is None:
        got = seen[id(c)] = compile_constraints(c)
    return got


def inst_before_time(order: str) -> str:
    """``order`` with ``i`` moved just before ``t`` if it came after it."""
    i, t = order.index("i"), order.index("t")
    if i < t:
        return order
    rest = order.replace("i", "")
    return rest.replace("t", "it")


class EventDraw:
    """One stream's event being sampled: its support, order, generator and results.

    Built by :meth:`start` (which resolves the order and builds the support from the
    stream's held notes); advanced by :func:`draw_event`; turned into a
    :class:`SampledEvent` by :meth:`result`. ``where`` prefixes error messages (the
    batched engine names the stream).
    """

    __slots__ = ("sup", "comp", "order", "rng", "config", "done", "logp", "params", "where",
                 "onsets_of", "motifs", "history")

    def __init__(self, sup: Support, comp: Compiled, order: str, rng: np.random.Generator,
                 config: Any, return_params: bool, where: str = "",
                 held: HeldNotes | None = None,
                 motifs: motif.MotifHistory | None = None,
                 history: motif.MotifHistory | None = None) -> None:
        self.sup = sup
        self.comp = comp
        self.order = order
        self.rng = rng
        self.config = config
        self.done = ""
        self.logp: dict[str, float] = {}
        self.params: dict[str, np.ndarray] | None = {} if return_params else None
        self.where = where
        self.onsets_of = held  # the stream's held notes (its onsets: pulse components)
        self.motifs = motifs
        self.history = history  # each instrument's pitches (the stuck-pitch guard)

    @classmethod
    def start(cls, comp: Compiled, held: HeldNotes, order: str | None,
              rng: np.random.Generator, config: Any, return_params: bool = False,
              where: str = "") -> EventDraw:
        """Resolve ``order`` (argument, else the constraints', else ``"vtip"``,
        :data:`~notochord_rt.events.SAMPLING_ORDER`;
        ``"random"`` draws a permutation from ``rng``), build the support and, for a
        network with pulse components, place them from ``held``'s recent onsets (motif
        candidates are read from ``held`` when the pitch is drawn)."""
        order = check_order(order or comp.cons.order or ev.SAMPLING_ORDER)
        if order == "random":
            order = "".join(np.array(list(ev.CANONICAL_ORDER))[rng.permutation(4)])
        per_inst = comp.inst_beats is not None and comp.cons.time is None
        if per_inst:  # a grid per instrument: the instrument first, then its grid
            order = inst_before_time(order)
        elif comp.beat is not None:
            comp = place(comp, held.elapsed)  # the time pieces on the grid, for this event
        sup = build_support(comp, held)
        if per_inst and sup.forced is None:
            sup.retime = inst_retimer(comp, held.elapsed)
        sup.autoset()
        pulse_held = held if getattr(config, "time_pulse", 0) else None
        motifs = held.motifs if getattr(config, "pitch_copy", 0) else None
        history = held.motifs if comp.cons.max_stuck else None
        return cls(sup, comp, order, rng, config, return_params, where, pulse_held, motifs,
                   history)

    def pick(self) -> str:
        """The next sub-event (the first fixed one left in order, else the first left),
        marked done; :meth:`needs_head` says whether it must still be drawn."""
        done, fixed = self.done, self.sup.fixed
        m = ""
        for c in self.order:
            if c not in done:
                if c in fixed:
                    m = c
                    break
                if not m:
                    m = c
        self.done = done + m
        return m

    def needs_head(self, m: str) -> bool:
        """Whether sub-event ``m`` is not fixed yet (so it is drawn from its head)."""
        return m not in self.sup.fixed

    def draw(self, m: str, out: np.ndarray) -> None:
        """Draw sub-event ``m`` from its head output ``out`` (float64) and fix it."""
        sup = self.sup
        if not sup.atoms:
            raise NoPossibleEvents(f"{self.where}no possible event left while sampling")
        if m == "t":
            if self.onsets_of is not None:
                h = self.onsets_of
                if h.onsets.tracker is not None:
                    loc_valid = h.onsets.tracker.lines(
                        h.elapsed, pulse.n_components(self.config.time_pulse))
                else:
                    loc_valid = pulse.candidates(h.onsets.onsets, h.elapsed,
                                                 *pulse.grid_options(self.config))
                out = pulse.fill_rows(out, *loc_valid, self.config.time_pulse_gain,
                                      self.comp.cons.pulse_weight)
            if self.comp.cons.chord_spread != 1.0:
                out = narrow_together(out, self.comp.cons.chord_spread)
        own = None
        if m == "p":
            if self.history is not None:
                out = self._unstick(out)
            if self.motifs is not None:
                out, own = self._pitch_logits(out)
        if self.params is not None:
            self.params[m] = out
        value, self.logp[m] = draw_sub_event(m, out, sup, self.comp, self.rng, self.config,
                                             own)
        sup.fix(m, value)
        sup.autoset()

    def _unstick(self, out: np.ndarray) -> np.ndarray:
        """The pitch head output with the pitches that would keep a melodic instrument
        stuck removed (``Constraints.max_stuck``, :mod:`.variety`; the instrument must be
        fixed already; if only those pitches are allowed, the draw falls back to them)."""
        inst = self.sup.fixed.get("i")
        if inst is None or ev.is_drum(int(inst)):
            return out
        bad = stuck_pitches(self.history.pitches(int(inst)), self.comp.cons.max_stuck)
        if not bad:
            return out
        out = out.copy()
        out[bad] = -np.inf
        return out

    def _pitch_logits(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(The pitch logits with the motif gates added and the motif weight applied,
        the model's own logits where a pitch top-p must take its nucleus from them, or
        None). Candidates need the instrument fixed (they are per instrument, as in
        training). The nucleus is the model's own so that the weight chooses among the
        pitches the model finds plausible rather than narrowing them to its candidates
        (which looped solo lines on two pitches, docs/model-card.md); with weight 0 (no
        candidate at all) it is the nucleus of the rest."""
        k = self.config.pitch_copy
        inst = self.sup.fixed.get("i")
        if inst is None:
            return out[:len(out) - motif.n_candidates(k)], None
        cand, valid = self.motifs.candidates(int(inst), k)
        own = motif.apply(out, cand, valid)
        weight = self.comp.cons.motif_weight
        logits = motif.weigh(own, cand, valid, weight)
        return logits, (own if logits is not own and weight > 0 else None)

    def embed_value(self, m: str) -> float:
        """The fixed value of ``m`` as the network takes it (time clamped to its support)."""
        v = self.sup.fixed[m]
        return min(v, ev.TIME_MAX) if m == "t" else v

    def result(self, end: float, held: HeldNotes) -> SampledEvent:
        """The finished event; ``held`` (the stream's held notes) names what a forced
        event breaks."""
        f, lp, sup = self.sup.fixed, self.logp, self.sup
        i, p, t, v = int(f["i"]), int(f["p"]), float(f["t"]), float(f["v"])
        broken = sup.broken if sup.forced is None else forced_breaks(
            self.comp, held, i, p, t, v)
        return SampledEvent(i, p, t, v, end, lp.get("i"), lp.get("p"), lp.get("t"),
                            lp.get("v"), self.done, broken, sup.forced, self.params)


class HeadOps(Protocol):
    """How :func:`draw_event` reaches the network for the rows ``js`` of its context."""

    def heads(self, m: str, ctx: Tensor, js: list[int]) -> Sequence[np.ndarray]:
        """Head ``m`` outputs (float64) for the context rows ``js``, in that order."""
        ...

    def embed(self, m: str, ctx: Tensor, js: list[int], values: list[float]) -> Tensor:
        """``ctx`` with the embeddings of ``values`` added to rows ``js``."""
        ...


class SingleOps:
    """:class:`HeadOps` for one stream on any :class:`~.core.InferenceCore`; the context
    is a ``Tensor[E]`` that is never modified in place (the sampler caches it)."""

    __slots__ = ("core",)

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def heads(self, m: str, ctx: Tensor, js: list[int]) -> Sequence[np.ndarray]:
        raw = self.core.head(m, ctx)
        return ((raw if raw.device.type == "cpu" else raw.cpu()).numpy().astype(np.float64),)

    def embed(self, m: str, ctx: Tensor, js: list[int], values: list[float]) -> Tensor:
        return ctx + self.core.embed(m, values[0])


class BatchOps:
    """:class:`HeadOps` for ``B`` streams on the batched methods of a
    :class:`~.fast.FastCore`; the context is a fresh ``(B, E)`` tensor updated in place."""

    __slots__ = ("core",)

    def __init__(self, core: Any) -> None:
        self.core = core

    def heads(self, m: str, ctx: Tensor, js: list[int]) -> Sequence[np.ndarray]:
        return self.core.head_batch(m, ctx[js]).double().numpy()

    def embed(self, m: str, ctx: Tensor, js: list[int], values: list[float]) -> Tensor:
        ctx[js] += self.core.embed_batch(m, torch.tensor(values, dtype=torch.float64))
        return ctx


_ROW0 = [0]


def draw_event(ops: HeadOps, ctx: Tensor, draws: Sequence[EventDraw]) -> None:
    """Sample one event for each of ``draws`` from the context ``ctx`` (row ``j`` for
    ``draws[j]``): four rounds of pick, batched heads and draws, batched embeddings.
    Call under ``torch.inference_mode`` for a batched core."""
    if len(draws) == 1:  # the same rounds without the grouping (the live, batch-1 path)
        d = draws[0]
        for rnd in range(4):
            m = d.pick()
            if d.needs_head(m):
                d.draw(m, ops.heads(m, ctx, _ROW0)[0])
            if rnd < 3:
                ctx = ops.embed(m, ctx, _ROW0, [d.embed_value(m)])
        return
    for rnd in range(4):
        need: dict[str, list[int]] = {}
        for j, d in enumerate(draws):
            m = d.pick()
            if d.needs_head(m):
                need.setdefault(m, []).append(j)
        for m, js in need.items():
            outs = ops.heads(m, ctx, js)
            for row, j in enumerate(js):
                draws[j].draw(m, outs[row])
        if rnd == 3:
            return
        by_sub: dict[str, list[int]] = {}
        for j, d in enumerate(draws):
            by_sub.setdefault(d.done[-1], []).append(j)
        for m, js in by_sub.items():
            ctx = ops.embed(m, ctx, js, [draws[j].embed_value(m) for j in js])
