"""FastCore (engine/cores/fast.py, engine/cores/quant.py) against the plain module core."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_net
from torch import nn

from notochord_rt.engine.cores.core import InferenceCore, ModuleCore
from notochord_rt.engine.cores.fast import FastCore
from notochord_rt.engine.cores.quant import (
    PRECISIONS,
    PackedLinear,
    available_precisions,
    default_min_reduced,
    pack_linear,
)
from notochord_rt.errors import InputError
from notochord_rt.model.network import NotochordNet

EVENTS = [(0, 128, 0.0, 0.0), (5, 60, 0.25, 80.0), (300, 12, 3.0, 0.0), (1, 127, 0.001, 127.0),
          (129, 36, 9.99, 33.5), (41, 70, 0.0, 0.0)]


MULTI_LAYER = dict(rnn_layers=2, mlp_layers=2)  # every stacked-layer path of the core


def _net(seed: int = 0, scale: float = 0.3, **kw) -> NotochordNet:
    """A tiny net with every weight perturbed, so that heads are far from their tiny init."""
    return tiny_net(seed, init=scale, **{**MULTI_LAYER, **kw})


def _compare(a, b, events=EVENTS) -> dict[str, float]:
    """Max relative error of every core output along a fed sequence."""
    errs: dict[str, float] = {}

    def rec(name, x, y):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        assert x.shape == y.shape, name
        e = float((x - y).abs().max() / (1.0 + y.abs().max()))
        errs[name] = max(errs.get(name, 0.0), e)

    sa, sb = a.initial_state(), b.initial_state()
    rec("initial", sa, sb)
    for e in events:
        sa, sb = a.feed(sa, *e), b.feed(sb, *e)
        rec("state", sa, sb)
        ca, cb = a.context(sa), b.context(sb)
        rec("context", ca, cb)
        for sub, val in zip("iptv", e):
            rec(f"head {sub}", a.head(sub, ca), b.head(sub, cb))
            rec(f"embed {sub}", a.embed(sub, val), b.embed(sub, val))
            ca, cb = ca + a.embed(sub, val), cb + b.embed(sub, val)
        rec("end", a.end_prob(sa), b.end_prob(sb))
    return errs


@pytest.mark.parametrize("kw", [
    {},
    dict(rnn_layers=1, mlp_layers=0, norm=None),
    dict(rnn_layers=3, mlp_layers=1, emb_size=24, rnn_hidden=40),
    dict(time_pulse=2, pitch_copy=2),
])
def test_fp32_equals_module_core(kw):
    net = _net(**kw)
    fast = FastCore(net, "fp32")
    assert isinstance(fast, InferenceCore)
    errs = _compare(fast, ModuleCore(net))
    assert max(errs.values()) < 1e-5, errs


def test_fp32_default_size_matches_module():
    net = NotochordNet().eval()  # the 17.7 M default architecture, its own init
    errs = _compare(FastCore(net, "fp32"), ModuleCore(net), EVENTS[:3])
    assert max(errs.values()) < 1e-5, errs


@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p != "fp32"])
def test_reduced_precision_close(precision):
    if precision not in available_precisions():
        pytest.skip(f"{precision} kernels not in this torch build")
    net = _net(scale=0.1)
    fast, ref = FastCore(net, precision, min_reduced=0), ModuleCore(net)
    errs = _compare(fast, ref)
    tol = {"bf16": 0.05, "fp16": 0.01, "int8": 0.1}[precision]
    assert max(errs.values()) < tol, errs
    # and it really is a different computation (not the fp32 path in disguise)
    assert max(errs.values()) > 1e-7


def test_feed_does_not_modify_its_argument():
    fast = FastCore(_net())
    s0 = fast.initial_state()
    copy = s0.clone()
    s1 = fast.feed(s0, 5, 60, 0.1, 64.0)
    assert torch.equal(s0, copy) and not torch.equal(s1, s0)
    assert fast.initial_state() is not fast.initial_state()


def test_batched_methods_match_batch_one():
    net = _net()
    fast = FastCore(net)
    n = 5
    g = torch.Generator().manual_seed(1)
    hidden = net.config.rnn_hidden
    state = fast.initial_state_batch(n) + 0.3 * torch.randn(2, n, hidden, generator=g)
    inst = torch.tensor([0, 5, 300, 1, 129])
    pitch = torch.tensor([128, 60, 12, 127, 36])
    time = torch.tensor([0.0, 0.25, 3.0, 0.001, 9.99])
    vel = torch.tensor([0.0, 80.0, 0.0, 127.0, 33.5])
    new = fast.feed_batch(state, inst, pitch, time, vel)
    ctx = fast.context_batch(new)
    ends = fast.end_prob_batch(new)
    for k in range(n):
        one = fast.feed(state[:, k:k + 1].clone(), int(inst[k]), int(pitch[k]), float(time[k]),
                        float(vel[k]))
        torch.testing.assert_close(new[:, k:k + 1], one, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ctx[k], fast.context(one), atol=1e-5, rtol=1e-5)
        assert abs(float(ends[k]) - fast.end_prob(one)) < 1e-5
    for sub, vals in zip("iptv", (inst, pitch, time, vel)):
        embs = fast.embed_batch(sub, vals)
        heads = fast.head_batch(sub, ctx)
        for k in range(n):
            torch.testing.assert_close(embs[k], fast.embed(sub, float(vals[k])),
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(heads[k], fast.head(sub, ctx[k]), atol=1e-5, rtol=1e-5)


def test_mixture_heads_are_decoded():
    net = _net()
    fast = FastCore(net)
    ctx = fast.context(fast.feed(fast.initial_state(), 0, 128, 0.0, 0.0))
    for sub, dist in (("t", net.time_dist), ("v", net.vel_dist)):
        out = fast.head(sub, ctx)
        k = dist.n_components
        assert out.shape == (3, k)
        torch.testing.assert_close(out[0].exp().sum(), torch.tensor(1.0))
        assert float(out[2].min()) >= dist.sharp_bounds[0] - 1e-6
        assert float(out[2].max()) <= dist.sharp_bounds[1] + 1e-3
        margin = 10 * dist.res
        assert dist.lo - margin - 1e-5 <= float(out[1].min())
        assert float(out[1].max()) <= dist.hi + margin + 1e-5


def test_bad_arguments_raise_input_error():
    net = _net()
    with pytest.raises(InputError, match="precision"):
        FastCore(net, "fp8")
    with pytest.raises(InputError, match="model"):
        FastCore(nn.Linear(3, 3))
    fast = FastCore(net)
    with pytest.raises(InputError, match="sub"):
        fast.embed("x", 1)
    with pytest.raises(InputError, match="sub"):
        fast.head("q", torch.zeros(16))


def test_misread_layout_is_refused():
    """A network whose GLU halves are swapped computes something else: the check catches it."""
    net = _net()

    class SwappedGLU(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.linear, self.norm = layer.linear, layer.norm

        def forward(self, x):
            a, b = self.linear(x).chunk(2, -1)
            return self.norm(b * torch.sigmoid(a))

    net.pitch_head.layers[0] = SwappedGLU(net.pitch_head.layers[0])
    with pytest.raises(InputError, match="head p"):
        FastCore(net)


def test_packed_linear_all_precisions():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(96, 64, generator=g), torch.randn(96, generator=g)
    x = torch.randn(3, 64, generator=g)
    want = x @ w.t() + b
    for p in available_precisions():
        lin = PackedLinear(w, b, p)
        got = lin(x)
        assert got.dtype == torch.float32 and got.shape == (3, 96)
        tol = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 2e-2, "int8": 3e-2}[p]
        err = float((got - want).abs().max() / want.abs().max())
        assert err < tol, (p, err)
        out = torch.empty(3, 96)
        assert lin(x, out=out) is out and torch.equal(out, got)
    assert "fp32" in available_precisions()


def test_hugepage_copy_is_an_exact_contiguous_copy():
    import mmap
    import sys

    from notochord_rt.engine.cores.quant import hugepage_copy

    w = torch.randn(512, 1024)
    h = hugepage_copy(w.t())
    assert h.is_contiguous() and torch.equal(h, w.t()) and h.data_ptr() != w.data_ptr()
    if sys.platform.startswith("linux") and hasattr(mmap, "MADV_HUGEPAGE"):
        assert h.data_ptr() % (2 << 20) == 0  # aligned for 2 MB pages
    small = torch.randn(4, 4)
    assert torch.equal(hugepage_copy(small), small)


def test_small_layers_stay_fp32():
    tiny, small, big = torch.randn(16, 512), torch.randn(129, 512), torch.randn(1024, 512)
    for p in available_precisions():
        assert pack_linear(tiny, None, p).precision == "fp32"
        # with the compiled int8 kernel (~1 µs a call) the 512→129 layer is worth int8
        want = p if default_min_reduced(p) <= small.numel() else "fp32"
        assert pack_linear(small, None, p).precision == want
        assert pack_linear(big, None, p).precision == p
        assert pack_linear(small, None, p, min_reduced=0).precision == p
        assert pack_linear(big, None, p, min_reduced=10**9).precision == "fp32"


def test_int8_worst_case_does_not_saturate():
    """Every activation and weight at its maximum: the int8 kernel must still add up right."""
    if "int8" not in available_precisions():
        pytest.skip("no int8 kernels in this torch build")
    n = 512
    w = torch.cat([torch.ones(4, n), -torch.ones(4, n)])
    lin = PackedLinear(w, None, "int8")
    y = lin(torch.ones(1, n))
    torch.testing.assert_close(y, torch.tensor([[n] * 4 + [-n] * 4], dtype=torch.float32),
                               rtol=1e-2, atol=0.0)
    y = lin(torch.linspace(-3, 5, n)[None])
    torch.testing.assert_close(y, torch.linspace(-3, 5, n)[None] @ w.t(), rtol=2e-2, atol=2.0)


def test_sampler_with_fast_core_matches_module_core():
    from notochord_rt.engine.sampling.sampler import Notochord

    net = _net(scale=0.1)
    a, b = Notochord.from_net(net), Notochord.from_net(net)
    b.use_core("fp32")
    assert isinstance(b.core, FastCore)
    a.reset(seed=3)
    b.reset(seed=3)
    for _ in range(20):
        ea, eb = a.sample(), b.sample()
        assert (ea.inst, ea.pitch, ea.vel) == (eb.inst, eb.pitch, eb.vel)
        assert abs(ea.time - eb.time) < 1e-4
        a.feed(**ea.as_dict())
        b.feed(**ea.as_dict())


def _run_sequence(core, events, out: list) -> None:
    s = core.initial_state()
    for e in events:
        s = core.feed(s, *e)
        c = core.context(s)
        out.append((s.clone(), *(core.head(sub, c) for sub in "iptv")))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_twin_shares_the_weights_and_runs_beside_its_core(precision):
    import threading

    if precision not in available_precisions():
        pytest.skip(f"{precision} kernels not in this torch build")
    fast = FastCore(_net(scale=0.1), precision, min_reduced=0)
    twin = fast.twin()
    assert twin._phase is not fast._phase and twin._phase_t.data_ptr() == twin._phase.data_ptr()
    for a, b in ((fast._hid[0], twin._hid[0]), (fast._in0, twin._in0),
                 (fast._heads["p"].final, twin._heads["p"].final)):
        if getattr(a, "_q_buf", None) is None:
            assert a is b  # nothing to keep apart: the very same packed layer
        else:  # the compiled int8 kernel: same weights, own quantised-input buffer
            assert a._q is b._q and a._q_buf.data_ptr() != b._q_buf.data_ptr()
            assert b._call.__self__ is b
    assert max(_compare(twin, fast).values()) < 1e-6
    # two threads, one core each, different inputs at once: each gets what it gets alone
    rng = torch.Generator().manual_seed(0)
    seqs = [[(int(torch.randint(0, 300, (1,), generator=rng)),
              int(torch.randint(0, 128, (1,), generator=rng)),
              float(torch.rand(1, generator=rng)), float(torch.rand(1, generator=rng)) * 127)
             for _ in range(300)] for _ in range(2)]
    alone: list[list] = [[], []]
    for k, core in enumerate((fast, twin)):
        _run_sequence(core, seqs[k], alone[k])
    together: list[list] = [[], []]
    start = threading.Barrier(2)

    def go(k, core):
        start.wait()
        _run_sequence(core, seqs[k], together[k])

    threads = [threading.Thread(target=go, args=(k, c)) for k, c in enumerate((fast, twin))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        for x, y in zip(alone[k], together[k], strict=True):
            for a, b in zip(x, y):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
