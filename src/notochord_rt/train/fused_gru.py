"""A faster GRU for training on CPUs, numerically the same function as ``nn.GRU``.

PyTorch's CPU GRU records every time step's cell in autograd, so the backward pass
computes the recurrent weight gradient as one small ``(H x B) @ (B x 3H)`` product per
step (and adds it into the 3H x H gradient each time). This layer instead keeps the
gate activations of the whole sequence in time-major buffers and, in a hand-written
backward, does only the unavoidable per-step product (the gradient flowing back through
the hidden state) inside the loop; the weight and input gradients then come from one
large matrix product each over all steps. The forward writes its per-step products
straight into those buffers. Same equations as ``nn.GRU``::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

:class:`TrainingGRU` is an ``nn.GRU`` (same parameters and state-dict keys) that takes
this path when it helps — CPU tensors, gradients enabled, no autocast — and falls back
to ``nn.GRU`` otherwise (CUDA has cuDNN, inference needs no saved activations, autocast
has its own lower-precision kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _GRULayer(torch.autograd.Function):
    """One GRU layer over a whole ``[B, T, I]`` sequence, batch first."""

    @staticmethod
    def forward(ctx, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                b_hh: Tensor) -> tuple[Tensor, Tensor]:
        B, T, _ = x.shape
        H = h0.shape[-1]
        xt = x.transpose(0, 1).reshape(T * B, -1)  # time-major rows
        gi = torch.addmm(b_ih, xt, w_ih.t()).view(T, B, 3 * H)
        w_hh_t = w_hh.t()
        hs = x.new_empty(T + 1, B, H)  # hs[t] is the state before step t
        hs[0] = h0
        gh = x.new_empty(T, B, 3 * H)
        rz = x.new_empty(T, B, 2 * H)
        n = x.new_empty(T, B, H)
        for t in range(T):
            torch.addmm(b_hh, hs[t], w_hh_t, out=gh[t])
            torch.sigmoid(gi[t, :, : 2 * H] + gh[t, :, : 2 * H], out=rz[t])
            torch.tanh(torch.addcmul(gi[t, :, 2 * H:], rz[t, :, :H], gh[t, :, 2 * H:]), out=n[t])
            torch.addcmul(n[t], rz[t, :, H:], hs[t] - n[t], out=hs[t + 1])
        ctx.save_for_backward(xt, w_ih, w_hh, hs, gh, rz, n)
        return hs[1:].transpose(0, 1), hs[T].clone()

    @staticmethod
    def backward(ctx, d_out: Tensor | None, d_last: Tensor | None):
        xt, w_ih, w_hh, hs, gh, rz, n = ctx.saved_tensors
        T, B, H = n.shape
        d_seq = d_out.transpose(0, 1) if d_out is not None else None
        d_gi = xt.new_empty(T, B, 3 * H)  # gradient of the input-side gate pre-activations
        d_ghn = xt.new_empty(T, B, H)  # of W_hn h + b_hn (differs from the input side by r)
        dh = d_last.clone() if d_last is not None else xt.new_zeros(B, H)
        for t in range(T - 1, -1, -1):
            if d_seq is not None:
                dh = dh + d_seq[t]
            r, z, nt = rz[t, :, :H], rz[t, :, H:], n[t]
            dn = dh * (1 - z) * (1 - nt * nt)
            d_gi[t, :, 2 * H:] = dn
            d_gi[t, :, H: 2 * H] = dh * (hs[t] - nt) * z * (1 - z)
            d_gi[t, :, :H] = dn * gh[t, :, 2 * H:] * r * (1 - r)
            torch.mul(dn, r, out=d_ghn[t])
            d_gh = torch.cat([d_gi[t, :, : 2 * H], d_ghn[t]], -1)
            dh = torch.addmm(dh * z, d_gh, w_hh)
        need = ctx.needs_input_grad
        d_gi2 = d_gi.view(T * B, 3 * H)
        dx = (d_gi2 @ w_ih).view(T, B, -1).transpose(0, 1) if need[0] else None
        dw_ih = d_gi2.t() @ xt if need[2] else None
        db_ih = d_gi2.sum(0) if need[4] else None
        dw_hh = db_hh = None
        if need[3] or need[5]:
            d_gh2 = torch.cat([d_gi[..., : 2 * H], d_ghn], -1).view(T * B, 3 * H)
            dw_hh = d_gh2.t() @ hs[:-1].reshape(T * B, H) if need[3] else None
            db_hh = d_gh2.sum(0) if need[5] else None
        return dx, dh if need[1] else None, dw_ih, dw_hh, db_ih, db_hh


class TrainingGRU(nn.GRU):
    """``nn.GRU`` (batch first) with the fused CPU training path of this module."""

    def _fused_ok(self, x: Tensor) -> bool:
        return (
            self.batch_first and not self.bidirectional and self.bias and self.proj_size == 0
            and x.dim() == 3 and x.device.type == "cpu" and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and x.dtype == torch.float32
        )

    def forward(self, input: Tensor, hx: Tensor | None = None):  # noqa: A002 (nn.GRU's name)
        if not self._fused_ok(input):
            return super().forward(input, hx)
        if hx is None:
            hx = input.new_zeros(self.num_layers, input.shape[0], self.hidden_size)
        x, last = input, []
        for k in range(self.num_layers):
            if k > 0 and self.dropout > 0 and self.training:
                x = F.dropout(x, self.dropout, training=True)
            x, h = _GRULayer.apply(x, hx[k], getattr(self, f"weight_ih_l{k}"),
                                   getattr(self, f"weight_hh_l{k}"),
                                   getattr(self, f"bias_ih_l{k}"), getattr(self, f"bias_hh_l{k}"))
            last.append(h)
        return x, torch.stack(last)


def fuse_gru(model: nn.Module, name: str = "rnn") -> bool:
    """Replace ``model.<name>`` (an ``nn.GRU``) by a :class:`TrainingGRU` with the same
    parameters. Call before creating the optimizer. Returns False if not applicable."""
    old = getattr(model, name, None)
    if type(old) is not nn.GRU or not old.batch_first or old.bidirectional or not old.bias:
        return False
    new = TrainingGRU(old.input_size, old.hidden_size, old.num_layers, batch_first=True,
                      dropout=old.dropout)
    new.load_state_dict(old.state_dict())
    new.to(next(old.parameters()).device)
    for p_new, p_old in zip(new.parameters(), old.parameters()):
        p_new.requires_grad_(p_old.requires_grad)
    setattr(model, name, new)
    return True
