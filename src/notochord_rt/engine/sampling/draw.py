"""Drawing one sub-event value from a head's output, restricted to the support (numpy).

* :func:`categorical` — instrument / pitch: mask, log weights, top-p or temperature,
  ordinal quantile window, or the n-th most likely; never returns a masked class (no NaN
  fallback: docs/design.md §6.7).
* :func:`mixture_mass` / :func:`sample_mixture` — time / velocity from a decoded logistic
  mixture ``(3, K)`` (log weights, locations, sharpness) truncated to an interval, with
  component top-p ("rhythm"), component temperature ("timing") and a quantile window.
* :func:`mixture_log_prob` — the censored, discretised log-likelihood of a value (what
  training optimises), reported with every sampled sub-event.

Everything runs in float64 with tail-aware logistic differences, so tiny interval masses
stay accurate and no NaN can appear.
"""

from __future__ import annotations

import math

import numpy as np

from ...model.pulse import MIN_IOI

QUANTILE_K = 128


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _logit(u: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(u) - np.log1p(-u)  # u in [0, 1]: +-inf at the ends, never NaN


def _logit1(u: float) -> float:
    """Scalar logit; +-inf at 0 and 1."""
    if u <= 0.0:
        return -math.inf
    if u >= 1.0:
        return math.inf
    return math.log(u) - math.log1p(-u)


def reweight(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Top-p (``top_p <= 1``) or temperature (``top_p > 1``) on unnormalised ``probs``."""
    if top_p == 1.0:
        return probs
    total = probs.sum()
    if total <= 0:
        return probs
    p = probs / total
    if top_p > 1.0:
        return p ** (1.0 / top_p)
    order = np.argsort(-p, kind="stable")
    csum = np.cumsum(p[order])
    n_keep = int(np.searchsorted(csum, top_p - 1e-12)) + 1
    out = np.zeros_like(p)
    keep = order[:n_keep]
    out[keep] = p[keep]
    return out


def nucleus(logits: np.ndarray, allowed: np.ndarray, top_p: float) -> np.ndarray | None:
    """Boolean mask of the classes that top-p ``top_p`` (< 1) keeps of ``logits`` among
    ``allowed``; None when no allowed class has a finite logit."""
    x = np.where(allowed, logits, -np.inf)
    if not np.isfinite(x).any():
        return None
    return reweight(np.exp(x - x.max()), top_p) > 0


def truncate_quantile(probs: np.ndarray, q_lo: float, q_hi: float) -> np.ndarray:
    """Keep only the mass between the ``q_lo`` and ``q_hi`` quantiles (ordinal classes)."""
    total = probs.sum()
    if total <= 0 or (q_lo <= 0.0 and q_hi >= 1.0):
        return probs
    p = probs / total
    hi_edge = np.cumsum(p)
    lo_edge = hi_edge - p
    kept = np.clip(np.minimum(hi_edge, q_hi) - np.maximum(lo_edge, q_lo), 0.0, None)
    return kept


def _pick(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to ``weights`` (some weight must be > 0)."""
    c = weights.cumsum()
    idx = int(c.searchsorted(rng.random() * c[-1], side="right"))
    if idx >= len(weights) or weights[idx] <= 0:
        idx = int(np.flatnonzero(weights > 0)[-1])
    return idx


def _pick_many(weights: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` indices drawn like :func:`_pick`."""
    if n == 1:
        return np.array([_pick(weights, rng)])
    c = np.cumsum(weights)
    idx = np.searchsorted(c, rng.random(n) * c[-1], side="right")
    last = int(np.flatnonzero(weights > 0)[-1])
    idx = np.minimum(idx, last)
    bad = weights[idx] <= 0
    if bad.any():
        idx[bad] = last
    return idx


def log_softmax_at(logits: np.ndarray, idx: int) -> float:
    m = logits.max()
    return float(logits[idx] - m - math.log(np.exp(logits - m).sum()))


def categorical(logits: np.ndarray, allowed: np.ndarray, rng: np.random.Generator, *,
                log_weights: np.ndarray | None = None, top_p: float = 1.0,
                quantile: tuple[float, float] | None = None,
                index: int | None = None) -> int:
    """Draw a class among ``allowed`` (boolean, at least one True) from ``logits``."""
    x = logits if log_weights is None else logits + log_weights
    x = np.where(allowed, x, -np.inf)
    if not np.isfinite(x).any():  # all allowed classes got weight 0: fall back to the mask
        x = np.where(allowed, 0.0, -np.inf)
    if index is not None:
        order = np.argsort(-x, kind="stable")
        n_allowed = int(np.isfinite(x).sum())
        return int(order[min(index, n_allowed - 1)])
    p = np.exp(x - x.max())
    p = reweight(p, top_p)
    if quantile is not None:
        p = truncate_quantile(p, *quantile)
    if not p.sum() > 0:
        p = np.where(allowed, 1.0, 0.0)
    return _pick(p, rng)


# -- logistic mixtures ----------------------------------------------------------------------
def _masses(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-component masses of intervals from edge values ``z`` of shape ``(2n, K)``.

    Rows ``2j, 2j+1`` are the lower / upper edge of interval ``j`` (already scaled by
    sharpness). Returns ``(mass (n, K), F (2n, K), S (2n, K))`` with ``F = sigmoid(z)`` and
    ``S = 1 - F`` computed separately so both tails stay accurate.
    """
    n2 = len(z)
    sig = _sigmoid(np.concatenate((z, -z)))
    f, s = sig[:n2], sig[n2:]
    upper = z[0::2] > 0
    mass = np.where(upper, s[0::2] - s[1::2], f[1::2] - f[0::2])
    return np.maximum(mass, 0.0), f, s


TOGETHER = MIN_IOI
"""Seconds: time components located closer than this to the previous event are the
model's "now" (notes it means to play together: chord notes, a note-off and the next
note-on); the threshold that makes two note-ons distinct onsets in the pulse history."""


def narrow_together(mix: np.ndarray, spread: float, below: float = TOGETHER) -> np.ndarray:
    """The mixture with the widths of its components located under ``below`` seconds
    multiplied by ``spread`` (``Constraints.chord_spread``); a new array. Weights and
    locations are unchanged: only how far apart the model's "together" notes land."""
    out = np.array(mix, dtype=np.float64, copy=True)
    if spread != 1.0:
        out[2, out[1] < below] /= max(spread, 1e-6)  # 0: at the location itself
    return out


def mixture_mass(mix: np.ndarray, a: float, b: float) -> float:
    """Probability of ``[a, b]`` (``-inf``/``inf`` allowed) under the mixture."""
    z = (np.array([[a], [b]]) - mix[1]) * mix[2]
    return float(_masses(z)[0][0] @ np.exp(mix[0]))


def sample_pieces(mix: np.ndarray, bounds: np.ndarray, weights: np.ndarray,
                  rng: np.random.Generator) -> tuple[int, tuple]:
    """Pick one interval ``bounds[k] = (a, b)`` with probability ∝ mass x weight.

    Returns ``k`` and what :func:`sample_mixture` can reuse for that interval
    (``pre=(pi, component masses, z, F, S)``).
    """
    z = (bounds.reshape(-1, 1) - mix[1]) * mix[2]
    cm, f, sf = _masses(z)
    pi = np.exp(mix[0])
    k = 0
    if len(bounds) > 1:
        w = (cm @ pi) * weights
        if not w.sum() > 0:  # the model puts no representable mass anywhere allowed
            w = weights.astype(np.float64) if weights.sum() > 0 else np.ones(len(weights))
        k = _pick(w, rng)
    r = slice(2 * k, 2 * k + 2)
    return k, (pi, cm[k], z[r], f[r], sf[r])


def sample_mixture(mix: np.ndarray, a: float, b: float, clip_lo: float, clip_hi: float,
                   rng: np.random.Generator, *, top_p: float = 1.0, temp: float = 1.0,
                   quantile: tuple[float, float] | None = None,
                   pre: tuple | None = None) -> float:
    """Sample from the mixture truncated to ``[a, b]``, then clip to ``[clip_lo, clip_hi]``.

    ``a``/``b`` may be infinite (censored ends); ``top_p`` reweights the truncated
    component weights, ``temp`` scales every component's width (0 = its location),
    ``quantile`` keeps only a rank window of ``QUANTILE_K`` draws. ``pre`` (from
    :func:`sample_pieces` for this same interval) saves recomputing the component
    masses when ``temp == 1``.
    """
    log_pi, loc, sharp = mix
    n = QUANTILE_K if quantile is not None else 1
    pi = np.exp(log_pi) if pre is None else pre[0]
    if temp == 0.0:
        w = pi * ((loc >= a) & (loc <= b))
        if not w.sum() > 0:
            w = pi * _masses((np.array([[a], [b]]) - loc) * sharp)[0][0]
        w = reweight(w, top_p)
        if not w.sum() > 0:
            return _uniform(a, b, clip_lo, clip_hi, rng)
        xs = loc[_pick_many(w, rng, n)]
    else:
        s = sharp if temp == 1.0 else sharp / temp
        if pre is not None and temp == 1.0:
            _, comp_mass, z, f, sf = pre
        else:
            z = (np.array([[a], [b]]) - loc) * s
            cm, f, sf = _masses(z)
            comp_mass = cm[0]
        w = reweight(pi * comp_mass, top_p)
        if not w.sum() > 0:
            return _uniform(a, b, clip_lo, clip_hi, rng)
        if n == 1:  # the common case, in scalar arithmetic
            k = _pick(w, rng)
            u = rng.random()
            if z[0, k] > 0:  # upper tail: S = Sb + u (Sa - Sb), x = loc - logit(S) / s
                q = sf[1, k] + u * (sf[0, k] - sf[1, k])
                zz = -_logit1(q)
            else:
                q = f[0, k] + u * (f[1, k] - f[0, k])
                zz = _logit1(q)
            x = float(loc[k]) + zz / float(s[k])
            return min(max(x, a, clip_lo), b, clip_hi)
        ks = _pick_many(w, rng, n)
        u = rng.random(n)
        upper = z[0, ks] > 0
        fa, fb, sa, sb = f[0, ks], f[1, ks], sf[0, ks], sf[1, ks]
        # lower side: F = Fa + u (Fb - Fa); upper side: S = Sb + u (Sa - Sb), S = 1 - F
        zz = np.where(upper, -_logit(sb + u * (sa - sb)), _logit(fa + u * (fb - fa)))
        xs = loc[ks] + zz / s[ks]
    xs = np.clip(xs, max(a, clip_lo), min(b, clip_hi))
    if quantile is None:
        return float(xs[0])
    xs.sort()
    lo_rank = min(int(math.floor(quantile[0] * n)), n - 1)
    hi_rank = max(int(math.ceil(quantile[1] * n)), lo_rank + 1)
    return float(xs[rng.integers(lo_rank, hi_rank)])


def _uniform(a: float, b: float, clip_lo: float, clip_hi: float,
             rng: np.random.Generator) -> float:
    lo, hi = max(a, clip_lo), min(b, clip_hi)
    return lo if hi <= lo else float(lo + (hi - lo) * rng.random())


def mixture_log_prob(mix: np.ndarray, x: float, lo: float, hi: float, res: float) -> float:
    """Censored, discretised log-likelihood of ``x`` (bins of width ``res`` on [lo, hi])."""
    d = 0.5 * res
    x = min(max(x, lo), hi)
    a = -math.inf if x <= lo + d else x - d
    b = math.inf if x >= hi - d else x + d
    m = mixture_mass(mix, a, b)
    return math.log(m) if m > 0 else -math.inf
