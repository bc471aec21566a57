"""Censored, discretised mixtures of logistics: the time and velocity likelihoods.

A head emits ``3K`` raw numbers per position; with a learned bias they become
(:class:`MixtureParams`) normalised log weights ``log_pi``, locations ``loc`` (clamped to
``[lo - 10 res, hi + 10 res]``) and *sharpness* ``sharp`` = softplus(raw) clamped to
``sharp_bounds``; component k is a logistic with CDF ``F_k(x) = sigmoid((x - loc_k) sharp_k)``.

**Likelihood of a target** ``x`` (first clamped into ``[lo, hi]``), with half-bin
``d = res / 2``:

* interior: ``P_k = F_k(x + d) - F_k(x - d)``;
* lower censoring (``x <= lo + d``): ``P_k = F_k(x + d)`` (everything below);
* upper censoring (``x >= hi - d``): ``P_k = 1 - F_k(x - d)`` (everything above);
* ``log p(x) = logsumexp_k(log_pi_k + log P_k)``.

On the grid ``lo, lo + res, ..., hi`` these masses telescope, so the bins (both censored
atoms included) hold probability exactly 1. A target off the grid is scored by the bin of
width ``res`` centred on it (the reference's convention, kept for parity).

Everything is computed in log space from two stable identities (``sp`` = softplus)::

    log sigmoid(z)                         = -sp(-z)
    log(sigmoid(c + h) - sigmoid(c - h))   = -|c| + log(2 sinh h) - sp(-|c| - h) - sp(h - |c|)
    log(2 sinh h)                          = h + log(-expm1(-2h))

(the middle one is even in ``c``, so using ``|c|`` avoids cancellation in both tails).

The same objects give the continuous (uncensored) mixture's CDF, interval masses and a
truncated sampler, which the engine's constrained sampling builds on.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MixtureParams",
    "CensoredLogisticMixture",
    "log_logistic_bin",
    "log_logistic_interval",
]


class MixtureParams(NamedTuple):
    """Constrained parameters of a logistic mixture; each ``Tensor[..., K]``."""

    log_pi: Tensor
    """Normalised log mixture weights."""
    loc: Tensor
    """Component locations."""
    sharp: Tensor
    """Component sharpness = 1 / logistic scale."""


def _log2sinh(h: Tensor) -> Tensor:
    """``log(2 sinh h)`` for ``h >= 0``, accurate for tiny and large ``h`` (``-inf`` at 0)."""
    return h + torch.log(-torch.expm1(-2.0 * h))


def log_logistic_bin(centre: Tensor, half: Tensor) -> Tensor:
    """``log(sigmoid(centre + half) - sigmoid(centre - half))`` for ``half >= 0``, stably."""
    c = centre.abs()
    return -c + _log2sinh(half) - F.softplus(-c - half) - F.softplus(half - c)


def log_logistic_interval(za: Tensor, zb: Tensor) -> Tensor:
    """``log(sigmoid(zb) - sigmoid(za))`` for ``za <= zb``; either end may be infinite.

    Gradients stay finite: the branches that are not selected never see infinities.
    """
    za, zb = torch.broadcast_tensors(za, zb)
    lo_inf = torch.isneginf(za)
    hi_inf = torch.isposinf(zb)
    # empty or reversed intervals (za >= zb, incl. +inf/+inf and -inf/-inf) have no mass
    empty = (za >= zb) & ~(lo_inf & hi_inf)
    # finite stand-ins wherever a branch is not used, so no inf/nan reaches autograd
    za_f = torch.where(torch.isfinite(za) & ~empty, za, torch.zeros_like(za))
    zb_f = torch.where(torch.isfinite(zb) & ~empty, zb, torch.ones_like(zb))
    half = ((zb_f - za_f) * 0.5).clamp_min(0.0)
    middle = log_logistic_bin((za_f + zb_f) * 0.5, half)
    below = -F.softplus(-zb_f)  # log sigmoid(zb): za = -inf
    above = -F.softplus(za_f)  # log(1 - sigmoid(za)): zb = +inf
    out = torch.where(hi_inf, above, middle)
    out = torch.where(lo_inf, below, out)
    out = torch.where(lo_inf & hi_inf, torch.zeros_like(out), out)
    return torch.where(empty, torch.full_like(out, -math.inf), out)


class CensoredLogisticMixture(nn.Module):
    """A censored, discretised logistic mixture on ``[lo, hi]`` with bin width ``res``.

    ``loc_init`` sets the bias of the locations: ``"log"`` spaces them from ``res / 10``
    to ``hi`` logarithmically (the reference's time init: 1 ms .. 10 s), ``"linear"``
    spaces them from ``lo`` to ``hi``. Weights start at 0. ``sharp_init`` sets the
    sharpness biases: 0 (the reference) starts every component at softplus(0) = 0.69,
    a logistic scale of 1.4 s; a value ``r > 0`` starts component k at a scale of
    ``r * loc_k`` (clamped to ``sharp_bounds``), so each is narrow relative to where it
    sits. This matters because the sharpness is softplus of a raw output, nearly linear
    in it above 1: Adam moves a bias by about the learning rate per step, so from the flat
    init a component needs tens of thousands of steps to become as narrow as a 16th-note
    grid needs (a scale of a few ms), and a briefly trained model places onsets no better
    than chance (docs/model-card.md).

    Every method taking ``params`` accepts either a :class:`MixtureParams` or the raw head
    output ``Tensor[..., 3K]`` (then :meth:`params` is applied first).
    """

    def __init__(
        self,
        n_components: int,
        lo: float,
        hi: float,
        res: float,
        sharp_bounds: tuple[float, float],
        loc_init: str = "linear",
        sharp_init: float = 0.0,
    ) -> None:
        super().__init__()
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"bounds must be finite with lo < hi, got ({lo}, {hi})")
        self.n_components = int(n_components)
        self.lo = float(lo)
        self.hi = float(hi)
        self.res = float(res)
        self.sharp_bounds = (float(sharp_bounds[0]), float(sharp_bounds[1]))
        k = self.n_components
        if loc_init == "log":
            locs = torch.logspace(math.log10(self.res / 10), math.log10(self.hi), k)
        elif loc_init == "linear":
            locs = torch.linspace(self.lo, self.hi, k)
        else:
            raise ValueError(f"loc_init must be 'log' or 'linear', got {loc_init!r}")
        if not (math.isfinite(sharp_init) and 0.0 <= sharp_init <= 1.0):
            raise ValueError(f"sharp_init must be in [0, 1], got {sharp_init!r}")
        sharp = torch.zeros(k)
        if sharp_init > 0:
            scale = sharp_init * locs.abs().clamp(min=self.res)
            target = (1.0 / scale).clamp(*self.sharp_bounds)
            sharp = target + torch.log(-torch.expm1(-target))  # inverse of softplus
        self.bias = nn.Parameter(torch.cat((torch.zeros(k), locs, sharp)))

    def extra_repr(self) -> str:
        return (f"n_components={self.n_components}, lo={self.lo}, hi={self.hi}, "
                f"res={self.res}, sharp_bounds={self.sharp_bounds}")

    @property
    def n_params(self) -> int:
        """Raw numbers the head must emit per position (3 per component)."""
        return 3 * self.n_components

    # -- parameters --------------------------------------------------------------------------
    def params(self, raw: Tensor | MixtureParams) -> MixtureParams:
        """Constrained parameters from the raw head output ``Tensor[..., 3K]``."""
        if isinstance(raw, MixtureParams):
            return raw
        if raw.shape[-1] != self.n_params:
            raise ValueError(f"expected {self.n_params} raw parameters, got {raw.shape[-1]}")
        logit_pi, loc, raw_sharp = torch.chunk(raw + self.bias, 3, dim=-1)
        log_pi = torch.log_softmax(logit_pi, dim=-1)
        margin = 10.0 * self.res
        loc = loc.clamp(self.lo - margin, self.hi + margin)
        sharp = F.softplus(raw_sharp).clamp(*self.sharp_bounds)
        return MixtureParams(log_pi, loc, sharp)

    # -- likelihood --------------------------------------------------------------------------
    def component_log_prob(self, params: Tensor | MixtureParams, x: Tensor) -> Tensor:
        """``log P_k(x)`` of the censored discretised components, ``Tensor[..., K]``."""
        p = self.params(params)
        x = torch.as_tensor(x, dtype=p.loc.dtype, device=p.loc.device)
        x = x.clamp(self.lo, self.hi)[..., None]
        d = 0.5 * self.res
        z = (x - p.loc) * p.sharp
        sd = p.sharp * d
        interior = log_logistic_bin(z, sd)
        lower = -F.softplus(-(z + sd))  # log F(x + d)
        upper = -F.softplus(z - sd)  # log(1 - F(x - d))
        out = torch.where(x >= self.hi - d, upper, interior)
        return torch.where(x <= self.lo + d, lower, out)

    def log_prob(self, params: Tensor | MixtureParams, x: Tensor) -> Tensor:
        """Log-probability (nats) of the bin of ``x``; ``x`` broadcasts with ``params[..., 0]``."""
        p = self.params(params)
        return torch.logsumexp(p.log_pi + self.component_log_prob(p, x), dim=-1)

    def diagnostics(self, params: Tensor | MixtureParams) -> dict[str, Tensor]:
        """Scalars worth logging in training: sharpness and component-entropy summaries."""
        p = self.params(params)
        with torch.no_grad():
            pi = p.log_pi.exp()
            ent = -(pi * p.log_pi).sum(-1)
            marginal = pi.reshape(-1, pi.shape[-1]).mean(0)
            marginal_ent = -(marginal * marginal.clamp_min(1e-30).log()).sum()
            return {
                "max_sharpness": p.sharp.max(),
                "mean_sharpness": (p.sharp * pi).sum(-1).mean(),
                "mean_cmp_entropy": ent.mean(),
                "marginal_cmp_entropy": marginal_ent,
            }

    # -- the continuous mixture (no censoring) ------------------------------------------------
    def _z(self, p: MixtureParams, x: Tensor | float) -> Tensor:
        x = torch.as_tensor(x, dtype=p.loc.dtype, device=p.loc.device)
        return (x[..., None] - p.loc) * p.sharp

    def cdf(self, params: Tensor | MixtureParams, x: Tensor | float) -> Tensor:
        """``P(X <= x)`` of the continuous mixture; ``x`` broadcasts with ``params[..., 0]``.

        Values outside ``[lo, hi]`` are allowed (the censored variable puts the tails on
        the bounds; this is the underlying continuous CDF).
        """
        p = self.params(params)
        return (p.log_pi.exp() * torch.sigmoid(self._z(p, x))).sum(-1)

    def component_log_mass(
        self, params: Tensor | MixtureParams, a: Tensor | float, b: Tensor | float
    ) -> Tensor:
        """``log P_k(a < X <= b)`` per component, ``Tensor[..., K]``; ``a``/``b`` may be ±inf."""
        p = self.params(params)
        return log_logistic_interval(self._z(p, a), self._z(p, b))

    def log_mass(
        self, params: Tensor | MixtureParams, a: Tensor | float, b: Tensor | float
    ) -> Tensor:
        """``log P(a < X <= b)`` of the continuous mixture (stable in both tails)."""
        p = self.params(params)
        return torch.logsumexp(p.log_pi + self.component_log_mass(p, a, b), dim=-1)

    def mass(
        self, params: Tensor | MixtureParams, a: Tensor | float, b: Tensor | float
    ) -> Tensor:
        """``P(a < X <= b)``; see :meth:`log_mass`."""
        return self.log_mass(params, a, b).exp()

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        params: Tensor | MixtureParams,
        lo: Tensor | float | None = None,
        hi: Tensor | float | None = None,
        *,
        component_temp: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw from the mixture truncated to ``[lo, hi]``, then clamp into the support.

        The component is chosen with weight ``pi_k * P_k(lo < X <= hi)`` (computed in log
        space); the value by inverting the component's CDF between its values at the
        bounds, using the upper tail's survival function when the interval lies above the
        location so that far-tail intervals stay accurate. ``component_temp`` scales every
        component's width (0 returns the chosen component's location). As in the reference,
        sampling is continuous: the censoring atoms are reached only through the final
        clamp to ``[self.lo, self.hi]``. Returns ``Tensor[...]`` (``params`` without K).
        """
        p = self.params(params)
        dtype, device = p.loc.dtype, p.loc.device
        a = torch.as_tensor(-math.inf if lo is None else lo, dtype=dtype, device=device)
        b = torch.as_tensor(math.inf if hi is None else hi, dtype=dtype, device=device)
        if component_temp < 0:
            raise ValueError(f"component_temp must be >= 0, got {component_temp}")
        # work in float64: cheap at these sizes and keeps the inversion accurate
        loc, sharp = p.loc.double(), p.sharp.double()
        if component_temp > 0:
            sharp = sharp / component_temp
        a64, b64 = a.double(), b.double()
        za = (a64[..., None] - loc) * sharp
        zb = (b64[..., None] - loc) * sharp
        logw = p.log_pi.double() + log_logistic_interval(za, zb)
        # an interval with no mass at all (empty, or beyond float range): fall back on pi
        dead = torch.isneginf(logw).all(-1, keepdim=True)
        logw = torch.where(dead, p.log_pi.double(), logw)
        flat = logw.reshape(-1, logw.shape[-1])
        k = torch.multinomial(torch.softmax(flat, -1), 1, generator=generator)
        k = k.reshape(*logw.shape[:-1], 1)
        mu = loc.gather(-1, k)[..., 0]
        s = sharp.gather(-1, k)[..., 0]
        za_k = za.gather(-1, k)[..., 0]
        zb_k = zb.gather(-1, k)[..., 0]
        if component_temp == 0:
            x = mu
        else:
            u = torch.rand(mu.shape, dtype=torch.float64, device=device, generator=generator)
            upper_half = (za_k + zb_k) > 0
            # lower half: u between sigmoid(za), sigmoid(zb); upper: between survivals
            lo_u = torch.where(upper_half, torch.sigmoid(-zb_k), torch.sigmoid(za_k))
            hi_u = torch.where(upper_half, torch.sigmoid(-za_k), torch.sigmoid(zb_k))
            tiny = torch.finfo(torch.float64).tiny
            q = (lo_u + u * (hi_u - lo_u)).clamp(tiny, 1.0 - 1e-16)
            z = torch.logit(q)
            z = torch.where(upper_half, -z, z)
            x = mu + z / s
        x = x.clamp(self.lo, self.hi)
        x = torch.maximum(torch.minimum(x, b64), a64)
        return x.to(dtype)
