"""The inference core: the network math the sampler needs, behind one small protocol.

The sampler (:mod:`notochord_rt.engine.sampling.sampler`) never touches ``nn.Module`` internals. It
talks to an :class:`InferenceCore`, so the plain PyTorch network (:class:`ModuleCore`, the
reference implementation here) and the fused batch-1 core in ``engine/cores/fast.py`` (packed,
bf16 or int8 weights) are interchangeable and can be tested against each other.

Contract
--------
Sub-events are named by their initials ``"i"``, ``"p"``, ``"t"``, ``"v"`` (as in order
strings such as ``"vtip"``).

``state``
    An opaque tensor holding the whole recurrent state (for a GRU: ``(layers, 1, hidden)``;
    the top layer *is* the top output). ``feed`` returns a **new** tensor and never modifies
    its argument, so the sampler may keep references to old states (``get_state``) without
    copying. Everything sampling needs is a function of the state: there is no hidden
    cache that could go stale after restoring an old state (docs/design.md §6.9).
``initial_state() -> Tensor``
    A fresh copy of the learned initial state (before the start event is fed).
``feed(state, inst, pitch, time, vel) -> Tensor``
    One recurrent step on the summed embeddings of a whole event. Inputs are already
    validated and finite (``time`` in [0, 10] s, ``vel`` in [0, 127]).
``context(state) -> Tensor[E]``
    The shared projection ``h_proj`` of the top output: the start of every head input.
``embed(sub, value) -> Tensor[E]``
    The input embedding of one sub-event value; the sampler adds it to the context after
    fixing that sub-event (additive conditioning, docs/design.md §4.2).
``head(sub, x) -> Tensor``
    ``tanh(x)`` then the sub-event's head. For ``"i"`` / ``"p"``: 321 / 129 logits. For
    ``"t"`` / ``"v"``: the *decoded* mixture, shape ``(3, K)``: row 0 normalised log
    weights, row 1 locations, row 2 sharpness (inverse logistic scale), i.e. after the
    distribution's bias, clamps and softplus.
``end_prob(state) -> float``
    P(the event just fed was the last one), from the end head on the top output.

All methods run without autograd; implementations should avoid per-call allocations
where easy. Inputs to ``embed`` are plain Python numbers.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

SUBS = "iptv"


@runtime_checkable
class InferenceCore(Protocol):
    """What the sampler needs from a network; see the module docstring for the contract."""

    def initial_state(self) -> Tensor: ...

    def feed(self, state: Tensor, inst: int, pitch: int, time: float, vel: float) -> Tensor: ...

    def context(self, state: Tensor) -> Tensor: ...

    def embed(self, sub: str, value: float) -> Tensor: ...

    def head(self, sub: str, x: Tensor) -> Tensor: ...

    def end_prob(self, state: Tensor) -> float: ...


def decode_mixture(dist, raw: Tensor) -> Tensor:
    """Decode raw head output ``(3K,)`` with a mixture object into ``(3, K)`` rows.

    ``dist`` is the network's ``time_dist`` / ``vel_dist``
    (:class:`~notochord_rt.model.distributions.CensoredLogisticMixture`), whose
    ``params(raw)`` returns ``(log_pi, loc, sharp)``.
    """
    log_pi, loc, sharp = dist.params(raw)
    return torch.stack((log_pi, loc, sharp))


class ModuleCore:
    """Reference :class:`InferenceCore` on a plain ``NotochordNet`` module (fp32, any device).

    Holds no state of its own besides a few reusable input tensors; the module is used in
    ``torch.inference_mode`` and should be in ``eval()`` mode (dropout off).
    """

    def __init__(self, model) -> None:
        self.model = model
        dev = next(model.parameters()).device
        self.device = dev
        self._idx = torch.zeros(1, 1, dtype=torch.long, device=dev)
        self._val = torch.zeros(1, 1, dtype=torch.float32, device=dev)
        self._heads = {
            "i": model.inst_head,
            "p": model.pitch_head,
            "t": model.time_head,
            "v": model.vel_head,
        }

    # -- recurrent state ------------------------------------------------------------------
    def initial_state(self) -> Tensor:
        with torch.inference_mode():
            return self.model.initial_state.detach().clone()

    def feed(self, state: Tensor, inst: int, pitch: int, time: float, vel: float) -> Tensor:
        m = self.model
        with torch.inference_mode():
            x = (
                self.embed("i", inst)
                + self.embed("p", pitch)
                + self.embed("t", time)
                + self.embed("v", vel)
            )
            _, new_state = m.rnn(x.view(1, 1, -1), state)
        return new_state

    def context(self, state: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.model.h_proj(state[-1, 0])

    # -- conditioning and heads -------------------------------------------------------------
    def embed(self, sub: str, value: float) -> Tensor:
        m = self.model
        with torch.inference_mode():
            if sub == "i":
                self._idx.fill_(int(value))
                return m.inst_emb(self._idx).view(-1)
            if sub == "p":
                self._idx.fill_(int(value))
                return m.pitch_emb(self._idx).view(-1)
            self._val.fill_(float(value))
            if sub == "t":
                return m.time_emb(self._val).view(-1)
            if sub == "v":
                return m.vel_emb(self._val).view(-1)
        raise ValueError(f"unknown sub-event {sub!r}")

    def head(self, sub: str, x: Tensor) -> Tensor:
        m = self.model
        with torch.inference_mode():
            out = self._heads[sub](torch.tanh(x))
            if sub == "t":
                return decode_mixture(m.time_dist, out)
            if sub == "v":
                return decode_mixture(m.vel_dist, out)
            return out

    def end_prob(self, state: Tensor) -> float:
        with torch.inference_mode():
            logits = self.model.end_head(state[-1, 0])
            return float(torch.softmax(logits, -1)[1])
