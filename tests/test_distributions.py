"""Censored discretised logistic mixtures: numerics against float64 / high-precision truth."""

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from notochord_rt.model.distributions import (
    CensoredLogisticMixture,
    MixtureParams,
    log_logistic_interval,
)

torch.set_num_threads(1)


def time_dist():
    return CensoredLogisticMixture(32, 0.0, 10.0, 0.01, (1e-4, 2e3), loc_init="log")


def vel_dist():
    return CensoredLogisticMixture(16, 0.0, 127.0, 1.0, (1e-3, 128.0), loc_init="linear")


def expit_mp(z):
    return 1 / (1 + mpmath.exp(-z))


def random_params(dist, batch, scale=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(batch, dist.n_params, generator=g, dtype=dtype) * scale
    with torch.no_grad():
        return dist.params(raw)


def direct_log_prob(p: MixtureParams, x: float, lo, hi, res):
    """Reference formula evaluated naively in float64 (probabilities, then log)."""
    pi = p.log_pi.exp().numpy()
    loc, s = p.loc.numpy(), p.sharp.numpy()
    d = res / 2
    x = min(max(x, lo), hi)
    upper = special.expit((x + d - loc) * s)
    lower = special.expit((x - d - loc) * s)
    if x <= lo + d:
        comp = upper
    elif x >= hi - d:
        comp = 1 - lower
    else:
        comp = upper - lower
    return np.log((pi * comp).sum(-1))


@pytest.mark.parametrize("make", [time_dist, vel_dist])
def test_log_prob_matches_naive_float64(make):
    dist = make()
    p = random_params(dist, 4, scale=1.0, seed=1)
    xs = [dist.lo, dist.lo + 0.3 * dist.res, dist.lo + dist.res, 0.37 * dist.hi,
          dist.hi - dist.res, dist.hi, dist.hi + 5.0]
    for x in xs:
        ours = dist.log_prob(p, torch.full((4,), x, dtype=torch.float64)).numpy()
        want = direct_log_prob(p, x, dist.lo, dist.hi, dist.res)
        np.testing.assert_allclose(ours, want, rtol=1e-9, atol=1e-9, err_msg=f"x={x}")


def test_interior_bin_equals_integral_of_density():
    dist = vel_dist()
    p = random_params(dist, 1, seed=2)
    log_pi, loc, s = (t[0].numpy() for t in p)
    pi = np.exp(log_pi)

    def density(x):
        z = (x - loc) * s
        return float((pi * s * special.expit(z) * special.expit(-z)).sum())

    for x in (3.0, 40.0, 64.0, 100.0):
        mass, _ = integrate.quad(density, x - 0.5, x + 0.5, epsabs=1e-13, epsrel=1e-11)
        ours = dist.log_prob(p, torch.tensor([x], dtype=torch.float64)).item()
        assert ours == pytest.approx(math.log(mass), abs=1e-8)


@pytest.mark.parametrize("make", [time_dist, vel_dist])
@pytest.mark.parametrize("scale", [0.5, 3.0, 30.0])
def test_bins_and_atoms_sum_to_one(make, scale):
    dist = make()
    p = random_params(dist, 3, scale=scale, seed=3)
    n = round((dist.hi - dist.lo) / dist.res)
    grid = torch.linspace(dist.lo, dist.hi, n + 1, dtype=torch.float64)
    lp = dist.log_prob(MixtureParams(*(t[:, None, :] for t in p)), grid[None, :])
    assert torch.isfinite(lp).all()
    total = torch.logsumexp(lp, dim=-1)
    np.testing.assert_allclose(total.numpy(), 0.0, atol=1e-9)


def test_float32_stable_at_extreme_sharpness_and_tails():
    """Float32 results stay finite and agree with an mpmath evaluation far in the tails."""
    dist = time_dist()
    k = dist.n_components
    # one dominant component, very sharp, far from the targets
    logit = torch.full((k,), -30.0)
    logit[0] = 30.0
    raw = torch.cat([logit, torch.zeros(k), torch.full((k,), 5000.0)]) - dist.bias.detach()
    with torch.no_grad():
        p32 = dist.params(raw.float())
    assert p32.sharp.max().item() == pytest.approx(2e3)
    mpmath.mp.dps = 60
    for x in (0.5, 3.0, 9.0):  # interior bins hundreds of logistic scales away
        got = dist.log_prob(p32, torch.tensor(x)).item()
        assert math.isfinite(got)
        pis = [mpmath.mpf(v) for v in p32.log_pi.double().exp().tolist()]
        locs = [mpmath.mpf(v) for v in p32.loc.double().tolist()]
        s = [mpmath.mpf(v) for v in p32.sharp.double().tolist()]
        total = mpmath.fsum(
            # symmetric form (x is above every location): no cancellation in mpmath either
            w * (expit_mp(-(x - 0.005 - m) * sk) - expit_mp(-(x + 0.005 - m) * sk))
            for w, m, sk in zip(pis, locs, s))
        want = float(mpmath.log(total))
        assert got == pytest.approx(want, rel=2e-5), x


def test_log_logistic_interval_against_mpmath_and_infinities():
    mpmath.mp.dps = 50
    cases = [(-3.0, 2.0), (40.0, 41.0), (-80.0, -79.5), (5.0, 5.0 + 1e-6), (-1e-7, 1e-7)]
    for a, b in cases:
        got = log_logistic_interval(torch.tensor(a, dtype=torch.float64),
                                    torch.tensor(b, dtype=torch.float64)).item()
        want = float(mpmath.log(expit_mp(b) - expit_mp(a)))
        assert got == pytest.approx(want, rel=1e-9), (a, b)
    inf = math.inf
    za = torch.tensor([-inf, -inf, 2.0, 1.0, inf], dtype=torch.float64, requires_grad=True)
    zb = torch.tensor([inf, 2.0, inf, 1.0, inf], dtype=torch.float64)
    out = log_logistic_interval(za, zb)
    assert out[0].item() == 0.0
    assert out[1].item() == pytest.approx(math.log(special.expit(2.0)))
    assert out[2].item() == pytest.approx(math.log(special.expit(-2.0)))
    assert out[3].item() == -inf and out[4].item() == -inf
    out[:3].sum().backward()
    assert torch.isfinite(za.grad).all()


def test_log_prob_gradients_finite_at_bounds():
    dist = vel_dist()
    raw = torch.randn(5, dist.n_params, requires_grad=True)
    x = torch.tensor([0.0, 0.4, 64.0, 126.6, 127.0])
    dist.log_prob(raw, x).sum().backward()
    assert torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0
    assert torch.isfinite(dist.bias.grad).all()


def test_params_constraints():
    dist = time_dist()
    raw = torch.randn(10, dist.n_params) * 1e4
    p = dist.params(raw)
    assert torch.allclose(p.log_pi.exp().sum(-1), torch.ones(10))
    assert p.loc.min() >= -0.1 - 1e-6 and p.loc.max() <= 10.1 + 1e-6
    assert p.sharp.min() >= 1e-4 and p.sharp.max() <= 2e3
    with pytest.raises(ValueError):
        dist.params(torch.zeros(3))


def test_cdf_and_mass_consistency():
    dist = vel_dist()
    p = random_params(dist, 2, seed=5)
    a, b = torch.tensor([10.0, 50.0], dtype=torch.float64), torch.tensor([30.0, 51.0],
                                                                          dtype=torch.float64)
    np.testing.assert_allclose(dist.mass(p, a, b).numpy(),
                               (dist.cdf(p, b) - dist.cdf(p, a)).numpy(), rtol=1e-10)
    assert torch.allclose(dist.mass(p, -math.inf, math.inf), torch.ones(2, dtype=torch.float64))
    xs = torch.linspace(-20, 150, 200, dtype=torch.float64)
    c = dist.cdf(MixtureParams(*(t[:1, None, :] for t in p)), xs[None])
    assert (c.diff(dim=-1) >= 0).all()


def test_truncated_sampling_matches_truncated_cdf():
    dist = vel_dist()
    p = random_params(dist, 1, seed=6)
    a, b = 20.0, 90.0
    rep = MixtureParams(*(t.expand(4000, -1) for t in p))
    g = torch.Generator().manual_seed(0)
    x = dist.sample(rep, a, b, generator=g).numpy()
    assert x.min() >= a and x.max() <= b
    fa, fb = dist.cdf(p, a).item(), dist.cdf(p, b).item()

    def trunc_cdf(v):
        v = torch.as_tensor(v, dtype=torch.float64)
        return ((dist.cdf(MixtureParams(*(t[:, None, :] for t in p)), v[None]) - fa)
                / (fb - fa))[0].numpy()

    assert stats.kstest(x, trunc_cdf).pvalue > 1e-3


def test_far_tail_truncation_is_accurate():
    """An interval far above a sharp component: samples spread inside it (not stuck at a bound)."""
    dist = time_dist()
    k = dist.n_components
    logit = torch.full((k,), -50.0)
    logit[0] = 50.0
    loc = torch.zeros(k)
    raw = torch.cat([logit, loc, torch.full((k,), 30.0)]) - dist.bias.detach()
    with torch.no_grad():
        p = dist.params(raw.expand(2000, -1))
    a, b = 4.0, 4.05  # 100+ logistic scales above component 0
    x = dist.sample(p, a, b, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(x).all() and x.min() >= a and x.max() <= b
    # the truncated logistic there is close to exponential with rate s=30 on [a, b]
    s = 30.0
    mean_want = a + 1 / s - (b - a) * math.exp(-s * (b - a)) / (1 - math.exp(-s * (b - a)))
    assert x.double().mean().item() == pytest.approx(mean_want, abs=2e-3)
    assert x.std() > 0.005


def test_component_temperature_zero_returns_location():
    dist = vel_dist()
    p = random_params(dist, 50, seed=7, dtype=torch.float32)
    x = dist.sample(p, component_temp=0.0, generator=torch.Generator().manual_seed(0))
    locs = p.loc.clamp(0, 127)
    assert torch.isclose(x[:, None], locs).any(-1).all()


def test_sample_equal_bounds_and_censoring_clamp():
    dist = vel_dist()
    p = random_params(dist, 8, seed=8, dtype=torch.float32)
    x = dist.sample(p, 64.0, 64.0)
    assert (x == 64.0).all()
    y = dist.sample(p)
    assert (y >= 0).all() and (y <= 127).all()


def test_sharp_init_scales_components_relative_to_their_location():
    flat = CensoredLogisticMixture(32, 0.0, 10.0, 0.01, (1e-4, 2e3), loc_init="log")
    rel = CensoredLogisticMixture(32, 0.0, 10.0, 0.01, (1e-4, 2e3), loc_init="log",
                                  sharp_init=0.03)
    raw = torch.zeros(3 * 32)
    p_flat, p_rel = flat.params(raw), rel.params(raw)
    assert torch.allclose(p_flat.loc, p_rel.loc)
    assert torch.allclose(p_flat.sharp, torch.full((32,), math.log(2.0)))  # the reference
    scale = 1.0 / p_rel.sharp
    free = (p_rel.sharp > 1e-4 * 1.01) & (p_rel.sharp < 2e3 * 0.99)  # not at a clamp
    assert free.sum() > 20
    torch.testing.assert_close(scale[free], 0.03 * p_rel.loc[free], rtol=1e-3, atol=0.0)
    assert float(p_rel.sharp[0].detach()) == pytest.approx(2e3)  # the 1 ms component hits the bound
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="sharp_init"):
            CensoredLogisticMixture(4, 0.0, 10.0, 0.01, (1e-4, 2e3), sharp_init=bad)


def test_config_time_sharp_init_reaches_the_network():
    from notochord_rt.model.config import NotochordConfig
    from notochord_rt.model.network import NotochordNet

    small = dict(emb_size=8, rnn_hidden=8, rnn_layers=1, mlp_layers=0)
    cfg = NotochordConfig(**small, time_sharp_init=0.0)
    assert NotochordConfig.from_dict(cfg.to_dict()) == cfg
    k = cfg.time_components
    flat = NotochordNet(cfg).time_dist.bias[2 * k:]
    assert torch.count_nonzero(flat) == 0
    rel = NotochordNet(NotochordConfig(**small)).time_dist.bias[2 * k:]
    assert NotochordConfig().time_sharp_init > 0 and rel.min() > 1.0
    with pytest.raises(ValueError, match="time_sharp_init"):
        NotochordConfig(**small, time_sharp_init="wide")
