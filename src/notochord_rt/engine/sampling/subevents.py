"""Draw one sub-event from its head output, restricted to the support's marginal.

Instrument: whitelist + ``inst_weights`` + ``inst_temp``. Pitch: whitelist + ``pitch_temp``
+ quantile steering (skipped for drum kits and external instruments) or ``index_pitch``.
Time and velocity: first pick one of the disjoint allowed pieces with probability
proportional to (model mass in the piece) x (piece weight) — for velocity, note-off and
note-on pieces are also weighted by ``steer_density`` — then sample the mixture
truncated to that piece. With default temperatures this is exact sampling from the
model's conditional restricted to the marginal. Velocities of note-ons are integers:
the piece ``[k_lo, k_hi]`` is sampled on ``[k_lo - 0.5, k_hi + 0.5]`` and rounded, which
matches the 1-unit bins of the likelihood.
"""

from __future__ import annotations

import math

import numpy as np

from ... import events as ev
from .constraints import Constraints
from .draw import (
    categorical,
    log_softmax_at,
    mixture_log_prob,
    nucleus,
    sample_mixture,
    sample_pieces,
)
from .support import Compiled, Support

_NO_QUANTILE = (0.0, 1.0)


def _quantile(q: tuple[float, float], steer: bool) -> tuple[float, float] | None:
    q = (float(q[0]), float(q[1]))
    return None if (not steer or q == _NO_QUANTILE) else q


def _steerable(sup: Support, cons: Constraints) -> bool:
    i = sup.fixed.get("i")
    return i is None or int(i) not in cons.external


def _time_bounds(lo: float, hi: float, t_lo: float, t_hi: float, res: float
                 ) -> tuple[float, float]:
    """Mass interval of a time piece: censored ends extend to infinity; points get a bin."""
    if hi - lo < res:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - 0.5 * res, mid + 0.5 * res
    return (-math.inf if lo <= t_lo else lo), (math.inf if hi >= t_hi else hi)


def _time_bounds_many(pieces: np.ndarray, t_lo: float, t_hi: float, res: float
                      ) -> np.ndarray:
    """:func:`_time_bounds` of every row of ``pieces`` (``(n, 2)``)."""
    lo, hi = pieces[:, 0], pieces[:, 1]
    narrow = hi - lo < res
    mid = 0.5 * (lo + hi)
    lo = np.where(narrow, mid - 0.5 * res, lo)
    hi = np.where(narrow, mid + 0.5 * res, hi)
    return np.stack((np.where(lo <= t_lo, -math.inf, lo), np.where(hi >= t_hi, math.inf, hi)), 1)


def draw_time(mix: np.ndarray, sup: Support, cons: Constraints, rng: np.random.Generator,
              config) -> float:
    t_lo, t_hi = config.time_bounds
    res = config.time_res
    pieces = sup.time_pieces()
    if len(pieces) <= 4:
        bounds = np.array([_time_bounds(lo, hi, t_lo, t_hi, res) for lo, hi, _ in pieces])
    else:  # a grid: many pieces, the same bounds computed at once
        bounds = _time_bounds_many(pieces, t_lo, t_hi, res)
    k, pre = sample_pieces(mix, bounds, pieces[:, 2], rng)
    lo, hi = float(pieces[k, 0]), float(pieces[k, 1])
    if lo == hi:
        return lo
    a, b = bounds[k]
    q = _quantile(cons.truncate_quantile_time, _steerable(sup, cons))
    t = sample_mixture(mix, a, b, lo, hi, rng, top_p=cons.rhythm_temp,
                       temp=cons.timing_temp, quantile=q, pre=pre)
    # the pieces lie in the model's time support; a non-finite head output (a broken
    # network) must still not produce a NaN time
    return t if lo <= t <= hi else lo


def draw_vel(mix: np.ndarray, sup: Support, cons: Constraints, rng: np.random.Generator,
             config) -> float:
    has_off, on = sup.vel_pieces()
    v_hi = config.vel_bounds[1]
    w_on = 1.0 if cons.steer_density is None else 2.0 ** (2.0 * cons.steer_density - 1.0)
    bounds = [(-math.inf, ev.NOTE_ON_MIN_VEL)] if has_off else []
    weights = [1.0 / w_on] if has_off else []
    for k_lo, k_hi, w in on:
        bounds.append((k_lo - 0.5, math.inf if k_hi >= v_hi else k_hi + 0.5))
        weights.append(w * w_on)
    k, pre = sample_pieces(mix, np.array(bounds), np.array(weights), rng)
    if has_off and k == 0:
        return 0.0
    k_lo, k_hi, _ = on[k - 1 if has_off else k]
    a, b = bounds[k]
    q = _quantile(cons.truncate_quantile_vel, _steerable(sup, cons))
    x = sample_mixture(mix, a, b, k_lo - 0.5, k_hi + 0.5, rng, temp=cons.vel_temp, quantile=q,
                       pre=pre)
    if not math.isfinite(x):  # only from a non-finite head output; stay inside the piece
        x = k_lo
    return float(min(max(math.floor(x + 0.5), k_lo), k_hi))


def draw_sub_event(m: str, out: np.ndarray, sup: Support, comp: Compiled,
                   rng: np.random.Generator, config,
                   pitch_own: np.ndarray | None = None) -> tuple[float, float]:
    """``(value, model log-probability of the value)`` for sub-event ``m``.

    ``pitch_own``: the model's own pitch logits when ``out`` re-weights them (the
    sampler's motif weight): a pitch top-p then takes its nucleus from them, and the
    pitch is drawn from ``out`` inside it, so the weight chooses among the pitches the
    model finds plausible."""
    cons = comp.cons
    if m == "i":
        i = categorical(out, sup.marginal_inst(), rng, log_weights=comp.inst_log_weights,
                        top_p=cons.inst_temp)
        return i, log_softmax_at(out, i)
    if m == "p":
        inst = sup.fixed.get("i")
        steer = _steerable(sup, cons) and not (inst is not None and ev.is_drum(int(inst)))
        allowed, top_p = sup.marginal_pitch(), cons.pitch_temp
        if pitch_own is not None and top_p < 1.0:
            keep = nucleus(pitch_own, allowed, top_p)
            if keep is not None:
                allowed, top_p = allowed & keep, 1.0
        p = categorical(out, allowed, rng, top_p=top_p,
                        quantile=_quantile(cons.truncate_quantile_pitch, steer),
                        index=cons.index_pitch)
        return p, log_softmax_at(out, p)
    if m == "t":
        t = draw_time(out, sup, cons, rng, config)
        return t, mixture_log_prob(out, t, *config.time_bounds, config.time_res)
    v = draw_vel(out, sup, cons, rng, config)
    return v, mixture_log_prob(out, v, *config.vel_bounds, config.vel_res)
