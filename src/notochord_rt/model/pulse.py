"""Pulse components: time-mixture components placed on the grids of recent onsets.

Music that keeps a pulse repeats its inter-onset intervals (IOIs): on the test split of
our corpus, 64 % of next onsets fall within 12 ms of "the last IOI again", and 96 % near
one of the candidates below built from the last 8 IOIs. A GRU fed delta times can learn
this only by integrating them precisely, which a small model trained for hours on a CPU
does not (docs/model-card.md: its sampled onsets landed on the piece's grid at chance
rate). So the time mixture gets, besides its ``time_components`` free components,
``3 * time_pulse`` components whose *locations are computed* from the stream's history;
the network only learns their weights and widths (the heads' outputs for their
locations are ignored).

Definitions (``k`` = ``time_pulse``; times in seconds):

* A *note-on* is an event with ``inst > 0`` and ``vel >= NOTE_ON_MIN_VEL``. A *distinct
  onset* is a note-on at least :data:`MIN_IOI` after the previous note-on (closer ones
  belong to the same chord or strum).
* After an event at stream time ``now``, let ``o_1 > o_2 > ... > o_{k+1}`` be the most
  recent distinct onsets and ``g_j = o_j - o_{j+1}`` the last ``k`` IOIs. For each ``j``
  (a grid of period ``g`` and phase ``o_1``, ``next(g) = o_1 + g * (floor((now - o_1) / g
  + EDGE) + 1) - now``, the delta time to its next line after ``now``):

  - component ``j``: ``next(g_j)``;
  - component ``k + j``: ``next(g_j) + g_j`` (the line after that);
  - component ``2k + j``: ``next(g_j / 2)`` (the half grid).

  With ``time_pulse_fit = F > 0`` each grid is *fitted* instead of anchored on ``o_1``
  alone, so the jitter of one humanised onset does not shift (or, carried forward by a
  model continuing its own music, drift) the pulse: the last ``F`` onsets within
  ``FIT_TOL`` of a line of the grid ``(o_1, g_j)`` get their line's index ``m`` and a
  least-squares line ``o ≈ o_1 + a + b m`` gives the phase ``o_1 + a`` and period ``b``
  used above (kept at ``o_1``, ``g_j`` when fewer than two lines are hit or ``b`` moves
  by more than 25 %); a line within ``FIT_EDGE`` of a period after ``now`` counts as now.
  With ``time_pulse_vote`` the grid is anchored not on ``o_1`` but on the onset ``o_r``
  (of the last ``F``) that most of the last ``F`` lie on a grid ``(o_r, g_j)`` with
  (ties: the most recent): one late onset, such as a spread chord of the model's own,
  then neither moves the grids of the intact periods nor wins the vote with its own.

  A component is *valid* when ``o_{j+1}`` exists and ``MIN_IOI <= g_j <= MAX_IOI``;
  invalid ones get no weight (the mixture is renormalised over the rest), so at the
  start of a stream the mixture is the free components alone.

The same definitions are computed two ways: batched over ``[B, T]`` training sequences
with torch (:func:`sequence_candidates`), and for one live stream from a short list of
onsets with numpy (:class:`OnsetHistory`, :func:`candidates`); tests check they agree.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .. import events as ev
from .distributions import MixtureParams
from .grid_track import GridTracker

MIN_IOI = 0.01
"""Seconds: note-ons closer than this to the previous one belong to the same onset."""
MAX_IOI = 4.0
"""Seconds: longer inter-onset intervals are not used as grid periods."""
EDGE = 1e-3
"""Fraction of a period: a grid line this close after ``now`` counts as ``now`` itself."""
FIT_EDGE = 0.1
"""The same for fitted grids (whose lines may fall a little after the last onset)."""
FIT_TOL = 0.2
"""Fraction of a period: onsets this close to a line of a grid are fitted to it."""
MAX_FIT = 32
"""Most onsets a grid may be fitted to (``time_pulse_fit``)."""
SHARP_INIT = 300.0
"""Initial sharpness (1 / logistic scale, about 3 ms) of new pulse components."""
SHARP_MAX = 2000.0
"""Largest sharpness of a pulse component (a logistic scale of 0.5 ms)."""


def n_components(time_pulse: int) -> int:
    """Pulse components of the time mixture for ``time_pulse`` recent IOIs."""
    return 3 * int(time_pulse)


def grid_options(config) -> tuple[int, int, bool]:
    """``(k, fit, vote)`` of a ``NotochordConfig`` as :func:`candidates` and
    :func:`sequence_candidates` take them (one reading for training and sampling)."""
    return int(config.time_pulse), int(config.time_pulse_fit), bool(config.time_pulse_vote)


# -- one live stream ---------------------------------------------------------------------
class OnsetHistory:
    """The recent distinct onsets of one stream (most recent last), O(1) per event; with
    ``track`` also the stream's tracked grid (:mod:`.grid_track`, for models with
    ``time_pulse_grid``)."""

    __slots__ = ("keep", "onsets", "last_on", "tracker")

    def __init__(self, keep: int = MAX_FIT + 1, track: bool = False) -> None:
        self.keep = keep
        self.onsets: list[float] = []
        self.last_on = -math.inf
        self.tracker = GridTracker() if track else None

    def note_on(self, now: float) -> None:
        """Account for a note-on at stream time ``now``."""
        if now - self.last_on >= MIN_IOI:
            self.onsets.append(now)
            if len(self.onsets) > self.keep:
                del self.onsets[0]
            if self.tracker is not None:
                self.tracker.add(now)
        self.last_on = now

    def clear(self) -> None:
        self.onsets.clear()
        self.last_on = -math.inf
        if self.tracker is not None:
            self.tracker.clear()

    def copy(self) -> OnsetHistory:
        h = OnsetHistory(self.keep)
        h.onsets = list(self.onsets)
        h.last_on = self.last_on
        h.tracker = None if self.tracker is None else self.tracker.copy()
        return h


def candidates(onsets: list[float], now: float, k: int, fit: int = 0, vote: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """(delta-time locations ``[3k]``, valid ``[3k]``) of the pulse components after an
    event at ``now``, from ``onsets`` (ascending stream times; see the module docstring;
    ``fit`` > 0: grids fitted to the last ``fit`` onsets, from the last onset or, with
    ``vote``, from the one most of them agree with)."""
    loc = np.ones(3 * k)
    valid = np.zeros(3 * k, dtype=bool)
    n = max(k + 1, fit)
    recent = onsets[::-1][:n]
    if len(recent) < 2:
        return loc, valid
    o = np.zeros(n)
    ok_o = np.zeros(n, dtype=bool)
    o[:len(recent)] = recent
    ok_o[:len(recent)] = True
    g = o[:k] - o[1:k + 1]
    ok = ok_o[1:k + 1] & (g >= MIN_IOI) & (g <= MAX_IOI)
    g = np.where(ok, g, 1.0)
    anchor, period = np.full(k, o[0]), g
    if fit:
        of, okf = o[:fit], ok_o[:fit]
        ref = np.full(k, o[0])
        if vote:  # the onset most of the last F lie on a grid with (each row's period)
            q = (of[None, None, :] - of[None, :, None]) / g[:, None, None]  # [k, R, F]
            on = okf[None, None, :] & (np.abs(q - np.round(q)) <= FIT_TOL)
            votes = np.where(okf[None, :], on.sum(-1), -1)  # [k, R]
            ref = of[np.argmax(votes, axis=1)]  # ties: the most recent
        d = of[None, :] - ref[:, None]  # [k, F]
        q = d / g[:, None]
        kk = np.round(q)
        w = (okf[None, :] & (np.abs(q - kk) <= FIT_TOL)).astype(np.float64)
        anchor, period = _fit_lines(w, kk, d, g, ref)
    edge = FIT_EDGE if fit else EDGE
    since = now - anchor
    nxt = anchor + period * (np.floor(since / period + edge) + 1) - now
    half = 0.5 * period
    hnx = anchor + half * (np.floor(since / half + edge) + 1) - now
    loc = np.where(np.concatenate([ok, ok, ok]), np.concatenate([nxt, nxt + period, hnx]), 1.0)
    return loc, np.concatenate([ok, ok, ok])


def _fit_lines(w, kk, d, g, o1):
    """Least-squares lines ``d ≈ a + b k`` over the weighted points of each row (numpy or
    torch, broadcasting over leading axes): (anchor ``o1 + a``, period ``b``); rows with
    fewer than two distinct grid indices, or a period off by more than 25 %, keep the last
    onset and ``g``."""
    n = w.sum(-1)
    sk, sd = (w * kk).sum(-1), (w * d).sum(-1)
    skk, skd = (w * kk * kk).sum(-1), (w * kk * d).sum(-1)
    var = n * skk - sk * sk
    safe = var > 0.5  # at least two distinct integer indices
    den = var + (~safe) * 1.0
    b = (n * skd - sk * sd) / den
    a = (sd - b * sk) / (n + (n == 0) * 1.0)
    good = safe & (b >= 0.8 * g) & (b <= 1.25 * g)
    period = b * good + g * ~good
    anchor = o1 + a * good
    return anchor, period


def fill_rows(rows: np.ndarray, loc: np.ndarray, valid: np.ndarray, gain: float = 0.0,
              weight: float = 1.0) -> np.ndarray:
    """Decoded time-mixture rows ``(3, K)`` (log weights, locations, sharpness; the last
    ``len(loc)`` columns are the pulse components) with the pulse locations put in, their
    sharpness read with ``gain`` (:func:`pulse_sharpness`), their weights multiplied by
    ``weight`` (a sampling setting, ``Constraints.pulse_weight``) and the weights
    renormalised over the valid components. Returns a new array."""
    out = rows.copy()
    n = len(loc)
    if n == 0:
        return out
    out[1, -n:] = loc
    if gain:
        out[2, -n:] = np.minimum(np.exp(np.minimum(gain * out[2, -n:], 50.0)), SHARP_MAX)
    lp = out[0]
    if weight != 1.0:
        lp[-n:] += math.log(weight) if weight > 0 else -np.inf
    lp[-n:][~valid] = -np.inf
    top = lp.max()
    lp -= top + math.log(np.exp(lp - top).sum())
    return out


# -- training sequences ------------------------------------------------------------------
def sequence_candidates(inst: Tensor, time: Tensor, vel: Tensor, k: int, fit: int = 0,
                        vote: bool = False) -> tuple[Tensor, Tensor]:
    """(locations ``[B, T, 3k]``, valid ``[B, T, 3k]``) of the pulse components after
    each event of ``[B, T]`` sequences (``time`` = delta seconds; the history starts at
    the start of each sequence)."""
    dtype = torch.float64
    abs_t = time.to(dtype).cumsum(1)
    b, t = inst.shape
    ar = torch.arange(t, device=inst.device).expand(b, t)
    on = (inst > ev.START_INST) & (vel >= ev.NOTE_ON_MIN_VEL)
    last_on = torch.where(on, ar, -1).cummax(1).values  # last note-on index <= i
    prev_on = torch.cat([torch.full_like(last_on[:, :1], -1), last_on[:, :-1]], 1)
    prev_t = abs_t.gather(1, prev_on.clamp(min=0))
    distinct = on & ((prev_on < 0) | (abs_t - prev_t >= MIN_IOI))
    count = distinct.long().cumsum(1)  # distinct onsets at or before i
    table = torch.zeros(b, t + 1, dtype=dtype, device=inst.device)
    slot = torch.where(distinct, count - 1, t)
    table.scatter_(1, slot, abs_t)
    n = max(k + 1, fit)
    js = torch.arange(n, device=inst.device)
    rank = count[..., None] - 1 - js  # [B, T, n]: index of o_{j+1} in the table
    o = table.gather(1, rank.clamp(min=0).reshape(b, -1)).reshape(b, t, n)
    ok_o = rank >= 0
    g = o[..., :k] - o[..., 1:k + 1]
    ok = ok_o[..., 1:k + 1] & (g >= MIN_IOI) & (g <= MAX_IOI)
    g = torch.where(ok, g, torch.ones_like(g))
    anchor, period = o[..., :1].expand_as(g), g
    if fit:
        of, okf = o[..., :fit], ok_o[..., :fit]  # [B, T, F]
        ref = o[..., :1].expand_as(g)  # [B, T, k]
        if vote:
            q = (of[..., None, None, :] - of[..., None, :, None]) / g[..., :, None, None]
            on = okf[..., None, None, :] & ((q - torch.round(q)).abs() <= FIT_TOL)
            votes = torch.where(okf[..., None, :], on.sum(-1), -1)  # [B, T, k, R]
            best = _first_argmax(votes)
            ref = of.gather(-1, best)
        d = of[..., None, :] - ref[..., None]  # [B, T, k, F]
        q = d / g[..., None]
        kk = torch.round(q)
        w = (okf[..., None, :] & ((q - kk).abs() <= FIT_TOL)).to(dtype)
        anchor, period = _fit_lines(w, kk, d, g, ref)
    edge = FIT_EDGE if fit else EDGE
    now = abs_t[..., None]
    since = now - anchor
    nxt = anchor + period * (torch.floor(since / period + edge) + 1) - now
    half = 0.5 * period
    hnx = anchor + half * (torch.floor(since / half + edge) + 1) - now
    loc = torch.cat([nxt, nxt + period, hnx], -1)
    valid = torch.cat([ok, ok, ok], -1)
    return torch.where(valid, loc, torch.ones_like(loc)), valid


def sequence_grid_lines(inst: np.ndarray, time: np.ndarray, vel: np.ndarray, n: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(locations ``[B, T, n]`` float64, valid ``[B, T, n]``) of the tracked grid's next
    ``n`` lines after each event of ``[B, T]`` sequences (``time`` = delta seconds; each
    sequence's history starts at its start), for models with ``time_pulse_grid``
    (:mod:`.grid_track`): each sequence is fed to an :class:`OnsetHistory` with a tracker
    as a live stream's events are, so the two agree exactly."""
    inst, time, vel = (np.asarray(a) for a in (inst, time, vel))
    b, t = inst.shape
    loc = np.ones((b, t, n))
    valid = np.zeros((b, t, n), dtype=bool)
    on = (inst > ev.START_INST) & (vel >= ev.NOTE_ON_MIN_VEL)
    for row in range(b):
        h = OnsetHistory(track=True)
        now = 0.0
        dts = time[row].astype(np.float64).tolist()
        ons = on[row].tolist()
        for i in range(t):
            now += dts[i]
            if ons[i]:
                h.note_on(now)
            if h.tracker.ready:
                loc[row, i], valid[row, i] = h.tracker.lines(now, n)
    return loc, valid


def _first_argmax(x: Tensor) -> Tensor:
    """Index of the first maximum along the last axis (``torch.argmax`` does not promise
    which of equal maxima it returns)."""
    n = x.shape[-1]
    ar = torch.arange(n, device=x.device)
    top = x.max(-1, keepdim=True).values
    return torch.where(x == top, ar, n).min(-1).values


def pulse_sharpness(decoded: Tensor, gain: float) -> Tensor:
    """The pulse components' sharpness from the head's decoded value ``x`` (softplus of
    its raw output): ``x`` itself with ``gain`` 0, else ``exp(gain * x)`` (at most
    :data:`SHARP_MAX`). Why: softplus is nearly linear, so Adam moves a sharpness of a
    few hundred by about the learning rate per step and a component started 3 ms wide
    stays so for tens of thousands of steps; read exponentially, its width changes by a
    factor per step and can follow the data (wider where onsets are humanised)."""
    if not gain:
        return decoded
    return torch.exp((gain * decoded).clamp(max=50.0)).clamp(max=SHARP_MAX)


def fill_params(p: MixtureParams, loc: Tensor, valid: Tensor, gain: float = 0.0
                ) -> MixtureParams:
    """``p`` (the last ``loc.shape[-1]`` components are pulse components) with their
    locations set to ``loc``, their sharpness read with ``gain`` and the weights
    renormalised over the valid components."""
    n = loc.shape[-1]
    if n == 0:
        return p
    free = p.log_pi.shape[-1] - n
    mask = torch.cat([torch.ones_like(valid[..., :1]).expand(*valid.shape[:-1], free), valid],
                     -1)
    log_pi = torch.log_softmax(p.log_pi.masked_fill(~mask, -math.inf), -1)
    new_loc = torch.cat([p.loc[..., :free], loc.to(p.loc.dtype)], -1)
    sharp = p.sharp if not gain else torch.cat(
        [p.sharp[..., :free], pulse_sharpness(p.sharp[..., free:], gain)], -1)
    return MixtureParams(log_pi, new_loc, sharp)


# -- adding pulse components to a trained network ----------------------------------------
def _sharp_bias(gain: float, sharp: Tensor) -> Tensor:
    """The raw bias whose decoded sharpness (softplus, then :func:`pulse_sharpness`) is
    ``sharp``."""
    x = torch.log(sharp) / gain if gain else sharp
    return x + torch.log(-torch.expm1(-x))  # inverse softplus


@torch.no_grad()
def init_bias(dist, n: int, gain: float) -> None:
    """Start the last ``n`` components of a new time mixture ``dist`` as pulse components:
    weight bias 0, location 1 (ignored), sharpness :data:`SHARP_INIT`."""
    bias = dist.bias.view(3, -1)
    bias[0, -n:] = 0.0
    bias[1, -n:] = 1.0
    bias[2, -n:] = _sharp_bias(gain, torch.tensor(SHARP_INIT))


def widen_time_mixture(net, time_pulse: int):
    """A copy of ``net`` (a ``NotochordNet`` without pulse components) with
    ``3 * time_pulse`` new pulse components: the time head's new outputs start at zero,
    the new components' weight bias at the mean of the free ones' and their sharpness
    at :data:`SHARP_INIT`. Everything else is copied unchanged."""
    from dataclasses import replace

    from .network import NotochordNet

    old = net.config
    if old.time_pulse:
        raise ValueError(f"the network already has pulse components (time_pulse="
                         f"{old.time_pulse})")
    new = NotochordNet(replace(old, time_pulse=int(time_pulse)))
    k_old, k_new = old.time_components, new.time_dist.n_components
    add = k_new - k_old
    state = {name: v.clone() for name, v in net.state_dict().items()}
    bias = state["time_dist.bias"].view(3, k_old)
    sharp = _sharp_bias(0.0, torch.tensor(SHARP_INIT, dtype=bias.dtype))
    new_bias = torch.stack([
        torch.cat([bias[0], bias[0].mean().expand(add)]),
        torch.cat([bias[1], torch.ones(add, dtype=bias.dtype)]),
        torch.cat([bias[2], sharp.expand(add)]),
    ])
    state["time_dist.bias"] = new_bias.reshape(-1)
    last = "time_head.out"
    for suffix in ("weight", "bias"):
        w = state[f"{last}.{suffix}"]
        w3 = w.view(3, k_old, *w.shape[1:])
        pad = torch.zeros(3, add, *w.shape[1:], dtype=w.dtype)
        state[f"{last}.{suffix}"] = torch.cat([w3, pad], 1).reshape(3 * k_new, *w.shape[1:])
    new.load_state_dict(state)
    return new



def exponential_widths(net, gain: float):
    """A copy of ``net`` (with pulse components) whose pulse components' sharpness is read
    exponentially with ``gain`` (:func:`pulse_sharpness`), starting where they are on
    average: their sharpness biases are set so that ``exp(gain * x)`` is the mean current
    sharpness, and the head's context-dependent part of it restarts at zero."""
    from dataclasses import replace

    from .network import NotochordNet

    c = net.config
    if not c.time_pulse:
        raise ValueError("the network has no pulse components (time_pulse=0)")
    if not (math.isfinite(gain) and gain > 0):
        raise ValueError(f"gain must be > 0, got {gain!r}")
    new = NotochordNet(replace(c, time_pulse_gain=float(gain)))
    k_all, n = c.time_mixture_components, n_components(c.time_pulse)
    state = {name: v.clone() for name, v in net.state_dict().items()}
    bias = state["time_dist.bias"].view(3, k_all)
    now = torch.nn.functional.softplus(bias[2, -n:]).mean()
    if c.time_pulse_gain:
        now = pulse_sharpness(now, c.time_pulse_gain)
    bias[2, -n:] = _sharp_bias(gain, now.clamp(1.0, SHARP_MAX))
    for suffix in ("weight", "bias"):
        w = state[f"time_head.out.{suffix}"]
        w.view(3, k_all, *w.shape[1:])[2, -n:] = 0.0
    new.load_state_dict(state)
    return new
