"""Motif copying: pitch candidates taken from an instrument's own recent notes.

Music repeats itself: riffs, bass lines, drum patterns and melodies come back. On the
test split of our corpus, 71 % of an instrument's next note-on pitches are one of a few
*candidates* read off that instrument's earlier notes, while a small GRU trained for
hours on a CPU hardly ever repeats a 4-note figure (docs/model-card.md). So, as for
time (:mod:`.pulse`), the network is given the candidates and learns only how much to
trust each: the pitch head emits, after its 129 logits, one *gate* per candidate kind,
added to the logit of that candidate's pitch (a copy mechanism, like an induction head).

Candidates for the instrument ``I`` of the event being predicted, from ``I``'s note-on
pitches so far ``P[0..n-1]`` (``J`` = ``pitch_copy``):

* kinds ``0..J-1``: ``P[n-1-j]``, the pitch ``j + 1`` notes back;
* ``J``, ``J+1``, ``J+2`` (*induction*): what followed the previous occurrence of the last
  1, 2 or 3 pitches: ``P[m + 1]`` for the largest ``m < n - 1`` with ``P[m-k+1..m]`` equal
  to ``P[n-k..n-1]``;
* ``J+3`` (*interval induction*): the last pitch moved by the interval that followed the
  previous occurrence of the last interval (transposed repetition).

A candidate is valid when it exists and is a pitch (0-127). Candidates need the
instrument, so they are used only when the pitch is predicted knowing it (the default
sampling order ``vtip``; in training, where the conditioning mask says so).

The same class, :class:`MotifHistory`, computes candidates for the live sampler and
(per sequence) for training, so the two cannot drift apart.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .. import events as ev

INDUCTION = 3
"""Induction kinds: after the last 1, 2 and 3 pitches."""
KEEP = 1024
"""Notes kept per instrument (more than any training crop holds); older are dropped."""


def n_candidates(pitch_copy: int) -> int:
    """Candidate kinds (and gate outputs of the pitch head) for ``pitch_copy``."""
    return int(pitch_copy) + INDUCTION + 1 if pitch_copy else 0


class _Voice:
    """One instrument's note-on pitches and the last index of every recent n-gram."""

    __slots__ = ("p", "last", "prev")

    def __init__(self) -> None:
        self.p: list[int] = []
        self.last: dict[tuple, int] = {}  # n-gram (or ("i", interval)) -> its last end index
        self.prev: list[int | None] = [None] * (INDUCTION + 1)  # previous ends of the last ones

    def add(self, pitch: int) -> None:
        if len(self.p) >= KEEP:
            self._rebase()
        p = self.p
        p.append(pitch)
        n = len(p)
        keys: list[tuple] = [tuple(p[n - k:]) for k in range(1, INDUCTION + 1) if n >= k]
        if n >= 2:
            keys.append(("i", pitch - p[-2]))
        prev: list[int | None] = [None] * (INDUCTION + 1)
        for j, key in enumerate(keys):
            slot = j if key[0] != "i" else INDUCTION
            prev[slot] = self.last.get(key)
            self.last[key] = n - 1
        self.prev = prev

    def _rebase(self) -> None:
        keep = self.p[-(KEEP // 2):]
        self.p, self.last, self.prev = [], {}, [None] * (INDUCTION + 1)
        for x in keep:
            self.add(x)

    def copy(self) -> _Voice:
        v = _Voice.__new__(_Voice)
        v.p, v.last, v.prev = list(self.p), dict(self.last), list(self.prev)
        return v


class MotifHistory:
    """The note-on pitches of one stream, per instrument, with their candidates."""

    __slots__ = ("voices",)

    def __init__(self) -> None:
        self.voices: dict[int, _Voice] = {}

    def note_on(self, inst: int, pitch: int) -> None:
        v = self.voices.get(inst)
        if v is None:
            v = self.voices[inst] = _Voice()
        v.add(int(pitch))

    def candidates(self, inst: int, pitch_copy: int) -> tuple[np.ndarray, np.ndarray]:
        """(pitches ``[C]``, valid ``[C]``) for a next note of ``inst`` (module docstring)."""
        c = n_candidates(pitch_copy)
        cand = np.zeros(c, dtype=np.int64)
        valid = np.zeros(c, dtype=bool)
        v = self.voices.get(inst)
        if v is None or not v.p:
            return cand, valid
        p, n = v.p, len(v.p)
        for j in range(min(pitch_copy, n)):
            cand[j], valid[j] = p[n - 1 - j], True
        for k in range(INDUCTION):
            m = v.prev[k]
            if m is not None:
                cand[pitch_copy + k], valid[pitch_copy + k] = p[m + 1], True
        m = v.prev[INDUCTION]
        if m is not None:
            x = p[-1] + p[m + 1] - p[m]
            if 0 <= x < ev.NUM_PITCHES:
                cand[-1], valid[-1] = x, True
        return cand, valid

    def pitches(self, inst: int) -> list[int]:
        """The recent note-on pitches of ``inst``, oldest first (at least the last
        ``KEEP // 2``; do not modify)."""
        v = self.voices.get(inst)
        return v.p if v is not None else []

    def clear(self) -> None:
        self.voices.clear()

    def copy(self) -> MotifHistory:
        h = MotifHistory()
        h.voices = {i: v.copy() for i, v in self.voices.items()}
        return h


def apply(out: np.ndarray, cand: np.ndarray, valid: np.ndarray, weight: float = 1.0
          ) -> np.ndarray:
    """The pitch logits: head output ``out`` (logits then one gate per candidate kind)
    with each valid candidate's gate added to its pitch's logit, and the odds of every
    distinct candidate pitch multiplied by ``weight`` (a sampling setting,
    ``Constraints.motif_weight``; 1 = the model as it is, 0 = never a candidate)."""
    c = len(cand)
    logits = out[:len(out) - c].copy()
    if c:
        np.add.at(logits, cand[valid], out[len(out) - c:][valid])
    return weigh(logits, cand, valid, weight)


def weigh(logits: np.ndarray, cand: np.ndarray, valid: np.ndarray, weight: float
          ) -> np.ndarray:
    """``logits`` (pitch logits, gates already added) with the odds of every distinct
    valid candidate pitch multiplied by ``weight``; ``logits`` itself when there is
    nothing to change, else a new array."""
    if weight == 1.0 or not valid.any():
        return logits
    out = logits.copy()
    out[np.unique(cand[valid])] += math.log(weight) if weight > 0 else -np.inf
    return out


# -- training sequences ------------------------------------------------------------------
def sequence_candidates(inst: Tensor, pitch: Tensor, vel: Tensor, pitch_copy: int
                        ) -> tuple[Tensor, Tensor]:
    """(pitches ``[B, T-1, C]``, valid) of the candidates for events ``1..T-1`` of
    ``[B, T]`` sequences, each from the history of its own instrument before it."""
    b, t = inst.shape
    c = n_candidates(pitch_copy)
    cand = np.zeros((b, max(t - 1, 0), c), dtype=np.int64)
    valid = np.zeros((b, max(t - 1, 0), c), dtype=bool)
    ii, pp = inst.cpu().numpy(), pitch.cpu().numpy()
    on = (vel.cpu().numpy() >= ev.NOTE_ON_MIN_VEL) & (ii > ev.START_INST)
    for row in range(b):
        h = MotifHistory()
        i_row, p_row, on_row = ii[row].tolist(), pp[row].tolist(), on[row].tolist()
        for s in range(t):
            if s:
                cand[row, s - 1], valid[row, s - 1] = h.candidates(i_row[s], pitch_copy)
            if on_row[s]:
                h.note_on(i_row[s], p_row[s])
    return (torch.from_numpy(cand).to(inst.device), torch.from_numpy(valid).to(inst.device))


def apply_logits(raw: Tensor, cand: Tensor, valid: Tensor) -> Tensor:
    """Torch :func:`apply` over ``[..., 129 + C]`` head outputs (``valid`` already
    masked where the instrument is not known)."""
    c = cand.shape[-1]
    logits, gates = raw[..., :raw.shape[-1] - c], raw[..., raw.shape[-1] - c:]
    return logits.scatter_add(-1, cand, gates * valid.to(gates.dtype))


def widen_pitch_head(net, pitch_copy: int):
    """A copy of ``net`` with motif candidates: the pitch head's new gate outputs start
    at zero (the network behaves exactly as before until trained)."""
    from dataclasses import replace

    from .network import NotochordNet

    if net.config.pitch_copy:
        raise ValueError(f"the network already copies motifs (pitch_copy="
                         f"{net.config.pitch_copy})")
    new = NotochordNet(replace(net.config, pitch_copy=int(pitch_copy)))
    add = n_candidates(pitch_copy)
    state = {name: v.clone() for name, v in net.state_dict().items()}
    for suffix in ("weight", "bias"):
        w = state[f"pitch_head.out.{suffix}"]
        state[f"pitch_head.out.{suffix}"] = torch.cat(
            [w, torch.zeros(add, *w.shape[1:], dtype=w.dtype)])
    new.load_state_dict(state)
    return new
