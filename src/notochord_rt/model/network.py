"""The Notochord network: embeddings, GRU backbone, projection, heads, and scoring.

An event is four sub-events (instrument, pitch, delta time, velocity). The network:

1. embeds each sub-event (lookup tables for instrument and pitch, sine embeddings for
   time and velocity) and feeds their **sum** to a GRU started from a learned state;
2. maps the GRU output ``h_t`` through a shared GLU-MLP ``h_proj``;
3. predicts sub-event ``m`` of event ``t+1`` from
   ``c_m = tanh(h_proj(h_t) + sum_{k in S} emb_k(x_{t+1,k}))`` where ``S`` is any set of
   already-known sub-events of event ``t+1``: any order, or any subset, with one network;
4. predicts "the event just fed was the last of the piece" with ``end_head`` on ``h_t``.

Instrument and pitch are categoricals; time and velocity are censored discretised
logistic mixtures (:mod:`.distributions`); the time mixture may also hold pulse
components, placed on the grids of recent onsets (:mod:`.pulse`).

**Conditioning masks** are boolean ``[..., 4, 4]`` with ``cond[..., m, k]`` = "target
``m`` conditions on sub-event ``k``" in the canonical order i, p, t, v (the transpose of
the reference's ``ar_mask``). The diagonal is ignored (a sub-event never sees itself).

This module holds only the network and teacher-forced scoring; stateful inference
(reset/feed/sample) lives in the engine, which holds a :class:`NotochordNet`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import events as ev
from ..errors import InputError
from . import motif, pulse
from . import validate as V
from .config import NotochordConfig
from .distributions import CensoredLogisticMixture, MixtureParams

log = logging.getLogger(__name__)

SUB_EVENT_KEYS = ev.SUB_EVENTS
_INITIALS = ev.CANONICAL_ORDER  # index order of the sub-events: inst, pitch, time, vel


# -- building blocks -----------------------------------------------------------------------
class SineEmbedding(nn.Module):
    """``x -> Linear(sin(2 pi x / w_k))`` for ``n_sines`` wavelengths ``w_k`` in ``[w_min, w_max]``.

    ``spacing="log"`` spaces the wavelengths geometrically (time: 1 ms .. 30 s) and
    ``"linear"`` evenly (velocity: 2 .. 512). The angular frequencies are a buffer so that
    converted checkpoints keep the exact values they were trained with.
    """

    def __init__(self, n_sines: int, out: int, w_min: float, w_max: float, spacing: str) -> None:
        super().__init__()
        if spacing == "log":
            wavelengths = torch.linspace(math.log(w_min), math.log(w_max), n_sines).exp()
        elif spacing == "linear":
            wavelengths = torch.linspace(w_min, w_max, n_sines)
        else:
            raise ValueError(f"spacing must be 'log' or 'linear', got {spacing!r}")
        self.register_buffer("freqs", 2 * math.pi / wavelengths)
        self.proj = nn.Linear(n_sines, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.sin(x[..., None] * self.freqs))


class GLULayer(nn.Module):
    """Dropout -> Linear(in -> 2 hidden) -> GLU (``a * sigmoid(b)``) -> LayerNorm or nothing."""

    def __init__(self, n_in: int, hidden: int, dropout: float, norm: str | None) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(n_in, 2 * hidden)
        self.norm = nn.LayerNorm(hidden) if norm == "layer" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(F.glu(self.linear(self.dropout(x)), dim=-1))


class GLUMLP(nn.Module):
    """``n_layers`` GLU layers then a linear output whose initial weights are × ``out_scale``.

    With ``n_layers == 0`` the output layer reads the input directly (the reference sized
    it ``hidden`` wide there, which could not run when ``n_in != hidden``).
    """

    def __init__(self, n_in: int, hidden: int, n_out: int, n_layers: int, dropout: float,
                 norm: str | None, out_scale: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            GLULayer(n_in if i == 0 else hidden, hidden, dropout, norm) for i in range(n_layers))
        self.out = nn.Linear(hidden if n_layers else n_in, n_out)
        with torch.no_grad():
            self.out.weight.mul_(out_scale)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


# -- conditioning masks --------------------------------------------------------------------
def order_mask(order: str, device: torch.device | str | None = None) -> Tensor:
    """Bool ``[4, 4]`` mask of an order such as ``"vtip"``: m sees the sub-events before it."""
    order = V.check_order(order)
    rank = [order.index(c) for c in _INITIALS]
    m = torch.tensor([[rank[k] < rank[t] for k in range(4)] for t in range(4)], dtype=torch.bool)
    return m.to(device) if device is not None else m


def random_cond_mask(shape: Sequence[int], device: torch.device | str | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
    """Bool ``[*shape, 4, 4]``: each other sub-event known with probability 1/2, independently.

    This is the training distribution over conditioning sets (docs/design.md §4.3): arbitrary
    subsets, not necessarily consistent permutations.
    """
    m = torch.randint(0, 2, (*shape, 4, 4), device=device, generator=generator).bool()
    return m & ~torch.eye(4, dtype=torch.bool, device=device)


# -- the network ---------------------------------------------------------------------------
class NotochordNet(nn.Module):
    """The Notochord network (see the module docstring). Build with a config or overrides.

    ``NotochordNet()`` has the reference's default size; ``NotochordNet(emb_size=16, ...)``
    or ``NotochordNet(NotochordConfig(...))`` a custom one.
    """

    def __init__(self, config: NotochordConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = NotochordConfig(**overrides)
        elif overrides:
            raise TypeError("pass either a config or keyword overrides, not both")
        self.config = config
        c = config
        E, H = c.emb_size, c.rnn_hidden
        self.time_dist = CensoredLogisticMixture(
            c.time_mixture_components, *c.time_bounds, c.time_res, c.time_sharp_bounds,
            loc_init="log", sharp_init=c.time_sharp_init)
        if c.time_pulse:  # pulse components start about 3 ms wide (their locations are computed)
            pulse.init_bias(self.time_dist, pulse.n_components(c.time_pulse), c.time_pulse_gain)
        self.vel_dist = CensoredLogisticMixture(
            c.vel_components, *c.vel_bounds, c.vel_res, c.vel_sharp_bounds, loc_init="linear")
        self.inst_emb = nn.Embedding(c.n_inst_classes, E)
        self.pitch_emb = nn.Embedding(c.n_pitch_classes, E)
        self.time_emb = SineEmbedding(c.time_sines, E, *c.time_wavelengths, spacing="log")
        self.vel_emb = SineEmbedding(c.vel_sines, E, *c.vel_wavelengths, spacing="linear")
        self.rnn = nn.GRU(E, H, num_layers=c.rnn_layers, batch_first=True,
                          dropout=c.dropout if c.rnn_layers > 1 else 0.0)
        self.initial_state = nn.Parameter(torch.randn(c.rnn_layers, 1, H) * H ** -0.5)

        def mlp(n_in: int, n_out: int, scale: float) -> GLUMLP:
            return GLUMLP(n_in, E, n_out, c.mlp_layers, c.dropout, c.norm, scale)

        self.h_proj = mlp(H, E, 1e-2)
        # head outputs start ×1e-4 (the reference scales them ×0.01 twice)
        self.inst_head = mlp(E, c.n_inst_classes, 1e-4)
        self.pitch_head = mlp(E, c.pitch_head_outputs, 1e-4)
        self.time_head = mlp(E, self.time_dist.n_params, 1e-4)
        self.vel_head = mlp(E, self.vel_dist.n_params, 1e-4)
        self.end_head = nn.Linear(H, 2)
        with torch.no_grad():  # the reference meant to do this but its multiply was a no-op
            self.end_head.weight.mul_(1e-2)

    # -- small accessors --------------------------------------------------------------------
    @property
    def heads(self) -> tuple[GLUMLP, GLUMLP, GLUMLP, GLUMLP]:
        """The four sub-event heads in canonical order i, p, t, v."""
        return (self.inst_head, self.pitch_head, self.time_head, self.vel_head)

    @property
    def device(self) -> torch.device:
        return self.initial_state.device

    def start_event(self) -> ev.Event:
        """The start-of-sequence event of this vocabulary."""
        return ev.Event(ev.START_INST, self.config.start_pitch, 0.0, 0.0)

    # -- embeddings and recurrence ----------------------------------------------------------
    def _embeddings(self, inst: Tensor, pitch: Tensor, time: Tensor, vel: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dtype = self.time_emb.proj.weight.dtype
        device = self.device
        return (
            self.inst_emb(torch.as_tensor(inst, device=device).long()),
            self.pitch_emb(torch.as_tensor(pitch, device=device).long()),
            self.time_emb(torch.as_tensor(time, device=device).to(dtype)),
            self.vel_emb(torch.as_tensor(vel, device=device).to(dtype)),
        )

    def embed(self, inst: Tensor, pitch: Tensor, time: Tensor, vel: Tensor) -> Tensor:
        """The four sub-event embeddings, ``Tensor[..., 4, E]`` in order i, p, t, v."""
        return torch.stack(self._embeddings(inst, pitch, time, vel), dim=-2)

    def embed_sum(self, inst: Tensor, pitch: Tensor, time: Tensor, vel: Tensor) -> Tensor:
        """Sum of the four embeddings, ``Tensor[..., E]``: the GRU input of an event."""
        e_i, e_p, e_t, e_v = self._embeddings(inst, pitch, time, vel)
        return e_i + e_p + e_t + e_v

    def initial_hidden(self, batch: int = 1) -> Tensor:
        """The learned initial GRU state broadcast to ``Tensor[layers, batch, H]``."""
        return self.initial_state.expand(-1, batch, -1).contiguous()

    def step(self, emb_sum: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """One GRU step: ``emb_sum[B, E]``, ``h[layers, B, H]`` -> (top ``[B, H]``, new h)."""
        out, h = self.rnn(emb_sum[:, None, :], h)
        return out[:, 0], h

    def head_inputs(self, top: Tensor, embs: Tensor, cond: Tensor) -> Tensor:
        """Head inputs ``c[..., m, :] = tanh(h_proj(top) + sum_k cond[..., m, k] embs[..., k, :])``.

        ``top[..., H]`` is the GRU output before the event, ``embs[..., 4, E]`` the
        embeddings of the event being predicted, ``cond[..., 4, 4]`` (bool) what is known.
        Returns ``Tensor[..., 4, E]``.
        """
        known = (cond & ~torch.eye(4, dtype=torch.bool, device=cond.device)).to(embs.dtype)
        return torch.tanh(self.h_proj(top)[..., None, :] + known @ embs)

    def end_log_probs(self, top: Tensor) -> Tensor:
        """``log [P(not end), P(end)]`` from a GRU output, ``Tensor[..., 2]``."""
        return torch.log_softmax(self.end_head(top), dim=-1)

    # -- pulse components ---------------------------------------------------------------------
    def pulse_inputs(self, inst: Tensor, time: Tensor, vel: Tensor
                     ) -> tuple[Tensor, Tensor] | None:
        """Pulse-component (locations, valid) ``[B, T-1, 3k]`` for the predictions of
        events ``1..T-1`` of ``[B, T]`` sequences, or ``None`` without pulse components."""
        k = self.config.time_pulse
        if not k:
            return None
        if self.config.time_pulse_grid:
            loc, valid = (torch.as_tensor(a, device=self.device) for a in pulse.sequence_grid_lines(
                *(torch.as_tensor(x).cpu().numpy() for x in (inst, time, vel)),
                pulse.n_components(k)))
            return loc[:, :-1], valid[:, :-1]
        loc, valid = pulse.sequence_candidates(
            torch.as_tensor(inst, device=self.device), torch.as_tensor(time, device=self.device),
            torch.as_tensor(vel, device=self.device), *pulse.grid_options(self.config))
        return loc[:, :-1], valid[:, :-1]

    def time_params(self, raw: Tensor, pulse_in: tuple[Tensor, Tensor] | None
                    ) -> MixtureParams:
        """The time mixture from the time head's raw output, with the pulse components
        placed by ``pulse_in`` (from :meth:`pulse_inputs`; ``None`` without them)."""
        p = self.time_dist.params(raw)
        return p if pulse_in is None else pulse.fill_params(p, *pulse_in,
                                                            self.config.time_pulse_gain)

    def motif_inputs(self, inst: Tensor, pitch: Tensor, vel: Tensor
                     ) -> tuple[Tensor, Tensor] | None:
        """Motif candidates (pitches, valid) ``[B, T-1, C]`` for events ``1..T-1`` of
        ``[B, T]`` sequences (:mod:`.motif`), or ``None`` without motif copying."""
        if not self.config.pitch_copy:
            return None
        cand, valid = motif.sequence_candidates(
            torch.as_tensor(inst), torch.as_tensor(pitch), torch.as_tensor(vel),
            self.config.pitch_copy)
        return cand.to(self.device), valid.to(self.device)

    def pitch_logits(self, raw: Tensor, motif_in: tuple[Tensor, Tensor] | None,
                     knows_inst: Tensor) -> Tensor:
        """Pitch logits from the pitch head's raw output: with motif candidates
        (``motif_in`` from :meth:`motif_inputs`), each valid candidate's gate is added to
        its pitch where ``knows_inst`` (broadcasting to ``[B, T-1]``) says the
        instrument is known."""
        if motif_in is None:
            return raw
        cand, valid = motif_in
        return motif.apply_logits(raw, cand, valid & knows_inst.expand(valid.shape[:-1])[..., None])

    # -- teacher-forced likelihood ----------------------------------------------------------
    def _cond(self, cond: str | Tensor, batch: int, steps: int) -> Tensor:
        if isinstance(cond, str):
            if cond == "random":
                return random_cond_mask((batch, steps), device=self.device)
            return order_mask(cond, self.device)
        if not isinstance(cond, Tensor) or cond.shape[-2:] != (4, 4) or cond.ndim not in (2, 4):
            raise InputError("cond must be 'random', an order string, or a bool tensor "
                             "[4, 4] or [B, T-1, 4, 4]")
        if cond.ndim == 4 and cond.shape[:2] != (batch, steps):
            raise InputError(f"cond has shape {tuple(cond.shape)}, expected "
                             f"({batch}, {steps}, 4, 4)")
        return cond.to(self.device).bool()

    def forward(self, inst: Tensor, pitch: Tensor, time: Tensor, vel: Tensor, *,
                end: Tensor | None = None, cond: str | Tensor = "random",
                diagnostics: bool = False,
                motif_in: tuple[Tensor, Tensor] | None = None,
                pulse_in: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """Teacher-forced log-likelihoods (nats) of events ``1..T-1`` given their past.

        Inputs are ``[B, T]`` (instrument and pitch ids, delta seconds, velocity) with
        the context, e.g. the start event, at position 0. The GRU starts from the learned
        initial state. Output ``[:, t-1]`` scores event ``t``: keys ``inst``, ``pitch``,
        ``time``, ``vel``, each sub-event conditioned on the GRU state after events
        ``0..t-1`` and on the sub-events of event ``t`` that ``cond`` says are known
        (``"random"`` = training subsets, an order string like ``"vtip"``, or a bool mask
        ``[4, 4]`` / ``[B, T-1, 4, 4]``, see the module docstring).

        With ``end`` (``[B, T]``, 1 from the last real event of the piece on, else 0) the
        key ``end`` holds ``log P(end[:, t])`` from the state *after* feeding event ``t``:
        "was the event just fed the last one?". With ``diagnostics`` the time and velocity
        mixtures' summaries are added as ``time_*`` / ``vel_*`` scalars. ``motif_in``:
        the motif candidates of these sequences if already computed (:meth:`motif_inputs`,
        e.g. by the trainer's data-loader workers: they are Python per event), else they
        are computed here. ``pulse_in``: the same for the pulse components
        (:meth:`pulse_inputs`; with ``time_pulse_grid`` the loader computes them).
        """
        if inst.ndim != 2:
            raise InputError(f"inst must be [batch, time], got shape {tuple(inst.shape)}")
        for name, x in (("pitch", pitch), ("time", time), ("vel", vel), ("end", end)):
            if x is not None and tuple(x.shape) != tuple(inst.shape):
                raise InputError(f"{name} has shape {tuple(x.shape)}, inst {tuple(inst.shape)}")
        batch, length = inst.shape
        if length < 2:
            raise InputError("sequences need at least 2 positions (context + one event)")
        embs = self.embed(inst, pitch, time, vel)  # B, T, 4, E
        top, _ = self.rnn(embs.sum(-2), self.initial_hidden(batch))
        mask = self._cond(cond, batch, length - 1)
        ctx = self.head_inputs(top[:, :-1], embs[:, 1:], mask)
        inst_raw, pitch_raw, time_raw, vel_raw = (
            head(ctx[..., k, :]) for k, head in enumerate(self.heads))
        inst_t = inst[:, 1:].to(self.device).long()
        pitch_t = pitch[:, 1:].to(self.device).long()
        time_t = time[:, 1:].to(self.device, ctx.dtype)
        vel_t = vel[:, 1:].to(self.device, ctx.dtype)
        if pulse_in is None:
            pulse_in = self.pulse_inputs(inst, time, vel)
        else:
            pulse_in = (pulse_in[0].to(self.device), pulse_in[1].to(self.device))
        time_p = self.time_params(time_raw, pulse_in)
        if motif_in is None:
            motif_in = self.motif_inputs(inst, pitch, vel)
        else:
            motif_in = (motif_in[0].to(self.device), motif_in[1].to(self.device))
        pitch_raw = self.pitch_logits(pitch_raw, motif_in, mask[..., 1, 0])
        vel_p = self.vel_dist.params(vel_raw)
        out = {
            "inst": torch.log_softmax(inst_raw, -1).gather(-1, inst_t[..., None])[..., 0],
            "pitch": torch.log_softmax(pitch_raw, -1).gather(-1, pitch_t[..., None])[..., 0],
            "time": self.time_dist.log_prob(time_p, time_t),
            "vel": self.vel_dist.log_prob(vel_p, vel_t),
        }
        if end is not None:
            end_t = end[:, 1:].to(self.device).long()
            out["end"] = self.end_log_probs(top[:, 1:]).gather(-1, end_t[..., None])[..., 0]
        if diagnostics:
            for prefix, dist, p in (("time", self.time_dist, time_p),
                                    ("vel", self.vel_dist, vel_p)):
                out.update({f"{prefix}_{k}": v for k, v in dist.diagnostics(p).items()})
        return out

    # -- scoring a single sequence ----------------------------------------------------------
    def _check_sequence(self, inst: Any, pitch: Any, time: Any, vel: Any
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        c = self.config
        arrays = [(n, V.as_1d(n, x)) for n, x in
                  (("inst", inst), ("pitch", pitch), ("time", time), ("vel", vel))]
        n = V.check_same_length(arrays)
        if n == 0:
            raise InputError("inst is empty: score needs at least one event")
        a = dict(arrays)
        return (
            V.check_ids("inst", a["inst"], 1, c.num_instruments),
            V.check_ids("pitch", a["pitch"], 0, c.num_pitches - 1),
            V.check_range("time", a["time"], 0.0, math.inf),
            V.check_range("vel", a["vel"], *c.vel_bounds),
        )

    @staticmethod
    def _end_targets(end: Any, n: int) -> np.ndarray:
        if end is None:
            return np.zeros(n, dtype=np.int64)
        if isinstance(end, str):
            if end != "last":
                raise InputError(f"end must be None, 'last' or a 0/1 sequence, got {end!r}")
            flags = np.zeros(n, dtype=np.int64)
            flags[-1] = 1
            return flags
        flags = V.check_ids("end", V.as_1d("end", end), 0, 1)
        if len(flags) != n:
            raise InputError(f"end has length {len(flags)} but inst has length {n}")
        return flags

    def score(self, inst: Any, pitch: Any, time: Any, vel: Any, order: str = ev.SCORE_ORDER,
              end: Any = None) -> dict[str, Tensor]:
        """Per-event log-likelihoods (nats) of one piece, teacher-forced from the start.

        ``inst``, ``pitch``, ``time`` (delta seconds), ``vel`` are 1-D sequences of length
        N (lists, numpy arrays or tensors) of real events; the start event is prepended
        and the GRU starts from the learned initial state. Each sub-event is conditioned
        on the past and on the sub-events before it in ``order`` (a permutation of
        ``"iptv"``; default :data:`~notochord_rt.events.SCORE_ORDER`, ``"itpv"``).
        ``end``: ``None`` = the piece goes on after these events (every end target 0),
        ``"last"`` = the last event ends it, or explicit 0/1 flags.

        Returns ``{"inst", "pitch", "time", "vel", "end"}`` -> ``Tensor[N]`` (float32, on
        the model's device), computed in eval mode without gradients. Bad input raises
        :class:`~notochord_rt.errors.InputError` naming the argument.
        """
        order = V.check_order(order)
        i, p, t, v = self._check_sequence(inst, pitch, time, vel)
        e = self._end_targets(end, len(i))
        start = self.start_event()
        seq = [np.concatenate([[s], x]) for s, x in zip(start, (i, p, t, v))]
        e = np.concatenate([[0], e])
        dev = self.device
        dtype = self.time_emb.proj.weight.dtype
        tensors = [torch.as_tensor(seq[0], device=dev)[None],
                   torch.as_tensor(seq[1], device=dev)[None],
                   torch.as_tensor(seq[2], device=dev, dtype=dtype)[None],
                   torch.as_tensor(seq[3], device=dev, dtype=dtype)[None]]
        was_training = self.training
        try:
            self.eval()
            with torch.no_grad():
                r = self.forward(*tensors, end=torch.as_tensor(e, device=dev)[None],
                                 cond=order_mask(order, dev))
        finally:
            self.train(was_training)
        return {k: r[k][0] for k in (*SUB_EVENT_KEYS, "end")}

    # -- checkpoints ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | PathLike, map_location: str | torch.device = "cpu") -> NotochordNet:
        """Load ours (``.safetensors``), a reference checkpoint, or ``"default"`` (see
        :mod:`.checkpoint`); returns an instance of ``cls`` in eval mode."""
        from .checkpoint import load_model

        return load_model(cls, path, map_location=map_location)

    def save(self, path: str | PathLike, **metadata: str) -> None:
        """Write weights and config to ``path`` (``.safetensors``), atomically."""
        from .checkpoint import save_model

        save_model(self, path, **metadata)
