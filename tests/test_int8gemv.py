"""The compiled batch-1 kernels (``engine/_int8gemv.c``): int8 GEMV, GLU + LayerNorm, tanh.

Skipped where the extension is not built or the CPU lacks AVX-512 VNNI (FastCore then
uses FBGEMM, which tests/test_fast.py covers).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from notochord_rt.engine.cores.quant import PackedLinear, c_kernels

K = c_kernels()
pytestmark = pytest.mark.skipif(K is None, reason="compiled VNNI kernels not available here")


def _exact_int8(w: torch.Tensor) -> torch.Tensor:
    """The weights the int8 kernel really multiplies by (per-row symmetric rounding)."""
    scale = (w.abs().amax(1) / 127.0).clamp_min(1e-12)
    return torch.round(w / scale[:, None]).clamp(-127, 127) * scale[:, None]


@pytest.mark.parametrize("out_f,in_f", [(1024, 512), (129, 512), (7, 70), (3, 1), (96, 256)])
def test_gemv_matches_float(out_f, in_f):
    """Odd sizes too (rows not a multiple of 4, inputs not of 64): only rounding differs."""
    g = torch.Generator().manual_seed(out_f * 1000 + in_f)
    w, b = torch.randn(out_f, in_f, generator=g), torch.randn(out_f, generator=g)
    lin = PackedLinear(w, b, "int8")
    assert lin._call == lin._int8_vnni
    for x in (torch.randn(1, in_f, generator=g), torch.rand(1, in_f, generator=g) + 3.0,
              -torch.rand(1, in_f, generator=g)):
        want = x @ _exact_int8(w).t() + b
        got = lin(x)
        # activations are rounded to 256 levels over their range: error <= range/510 each
        bound = (x.max() - x.min()) / 510 * _exact_int8(w).abs().sum(1) + 1e-4
        assert got.shape == (1, out_f)
        assert ((got - want).abs() <= bound * 1.01).all()
        out = torch.full((1, out_f), float("nan"))
        assert lin(x, out) is out and torch.equal(out, got)


def test_gemv_constant_and_zero_input():
    w, b = torch.randn(8, 64), torch.randn(8)
    lin = PackedLinear(w, b, "int8")
    assert torch.allclose(lin(torch.zeros(1, 64)), b[None])
    x = torch.full((1, 64), 0.5)
    assert torch.allclose(lin(x), x @ _exact_int8(w).t() + b, atol=1e-5)


def test_batches_use_fbgemm_and_agree():
    w, b = torch.randn(256, 128), torch.randn(256)
    lin = PackedLinear(w, b, "int8")
    x = torch.randn(5, 128)
    batched = lin(x)
    rows = torch.cat([lin(x[i : i + 1]) for i in range(5)])
    scale = (x @ w.t()).abs().max()
    assert (batched - rows).abs().max() < 0.05 * scale  # two int8 kernels, both rounded
    # non-contiguous rows go to FBGEMM too, with the same result as a contiguous copy
    xt = torch.randn(1, 256)[:, ::2]
    assert not xt.is_contiguous()
    assert (lin(xt) - lin(xt.contiguous())).abs().max() < 0.05 * scale


@pytest.mark.parametrize("norm", [True, False])
def test_glu_ln_matches_torch(norm):
    g = torch.Generator().manual_seed(1)
    for half in (512, 17, 1):
        x = torch.randn(1, 2 * half, generator=g) * 4
        w, b = torch.randn(half, generator=g), torch.randn(half, generator=g)
        y = torch.empty(1, half)
        K.glu_ln(x.data_ptr(), y.data_ptr(), w.data_ptr() if norm else 0,
                 b.data_ptr() if norm else 0, half, 1e-5)
        want = F.glu(x, -1)
        if norm:
            want = F.layer_norm(want, (half,), w, b, 1e-5)
        assert torch.allclose(y, want, atol=2e-5, rtol=1e-5)


def test_tanh_matches_torch():
    x = torch.cat([torch.linspace(-30, 30, 1001), torch.tensor([0.0, 1e-6, -1e-6])])[None]
    y = torch.empty_like(x)
    K.tanh(x.data_ptr(), y.data_ptr(), x.numel())
    assert torch.allclose(y, torch.tanh(x), atol=3e-7, rtol=0)


def test_bad_arguments_raise():
    x = torch.zeros(64)
    p = x.data_ptr()
    with pytest.raises(TypeError, match="expects 11 arguments"):
        K.gemv(1, 2, 3)
    with pytest.raises(ValueError, match="null pointer"):
        K.gemv(0, 0, 0, 0, 0, 0, 0, 4, 4, 64, 1)
    with pytest.raises(ValueError, match="multiple of 64"):
        K.gemv(p, p, p, 0, p, p, p, 4, 4, 32, 1)
    with pytest.raises(ValueError, match="must be > 0"):
        K.gemv(p, p, p, 0, p, p, p, 0, 4, 64, 1)
    with pytest.raises(ValueError, match="null pointer"):
        K.glu_ln(0, 0, 0, 0, 4, 1e-5)
    with pytest.raises(ValueError, match="null pointer"):
        K.glu_ln(p, p, p, 0, 4, 1e-5)  # a norm weight without its bias
    with pytest.raises(ValueError, match="null pointer"):
        K.tanh(0, 0, 4)
    with pytest.raises(TypeError):
        K.mixture_decode(p, 4, "a", 1.0, 1.0, 1.0)


def test_gru_cell_matches_torch_gru():
    g = torch.Generator().manual_seed(2)
    for H in (64, 37):
        cell = torch.nn.GRUCell(8, H)
        x, h = torch.randn(1, 8, generator=g), torch.randn(1, H, generator=g)
        with torch.no_grad():
            gi = x @ cell.weight_ih.t() + cell.bias_ih
            gh = h @ cell.weight_hh.t()
            gi[:, : 2 * H] += cell.bias_hh[: 2 * H]  # r/z biases folded, as FastCore does
            gh[:, 2 * H :] += cell.bias_hh[2 * H :]
            want = cell(x, h)
        out = torch.empty(1, H)
        K.gru_cell(gi.data_ptr(), gh.data_ptr(), h.data_ptr(), out.data_ptr(), H)
        assert torch.allclose(out, want, atol=1e-6, rtol=1e-5)


def test_mixture_decode_matches_torch():
    k = 32
    raw = torch.cat([torch.randn(k) * 5, torch.linspace(-12, 12, k),
                     torch.linspace(-30, 30, k)])[None]
    x = raw.clone()
    K.mixture_decode(x.data_ptr(), k, -10.0, 10.0, 1e-4, 2e3)
    want = raw.view(3, k).clone()
    want[0] = torch.log_softmax(want[0], -1)
    want[1] = want[1].clamp(-10.0, 10.0)
    want[2] = F.softplus(want[2]).clamp(1e-4, 2e3)
    assert torch.allclose(x.view(3, k), want, atol=1e-6, rtol=1e-6)
