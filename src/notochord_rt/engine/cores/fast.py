"""The fused batch-1 inference core (:class:`FastCore`), in fp32, bf16, fp16 or int8.

Batch-1 Notochord inference is memory-bound: every step streams the GRU weights (44 MB in
fp32 for the default 17.7 M-parameter model) and every head streams its MLP. The plain
module path (:class:`~notochord_rt.engine.cores.core.ModuleCore`) adds per-call overhead on top:
fresh tensors per input, four embedding calls, a general ``nn.GRU`` call, separate
``Sequential`` layers. :class:`FastCore` does the same math with everything prepared once:

* **Weights packed once** per precision (:mod:`.quant`): transposed fp32 for ``addmm``,
  oneDNN-packed bf16, FBGEMM-packed fp16, or per-row int8 with dynamic activations.
* **First GRU layer folded into the embeddings.** The GRU's input map is linear, so
  ``W_ih (e_i + e_p + e_t + e_v)`` is computed from two precomputed gate tables (one row per
  instrument / pitch, ``W_ih @ emb``) plus one 256→3H map of the concatenated time and
  velocity sinusoids (``W_ih @ [P_t | P_v]``). This replaces a 512→3H product with a
  256→3H one and removes the embedding sum.
* **Biases folded**: the reset/update gate biases of the input and hidden maps are added
  once; only the candidate gate keeps its hidden bias inside ``r * (...)`` as GRU requires.
* **Hand-written GRU cell** on the packed products (one sigmoid for both gates).
* **Heads** as ``linear → GLU → F.layer_norm`` chains on packed weights; the mixture
  decoding (bias, log-softmax, clamps, softplus) is fused into the time/velocity heads;
  the end head is one dot product and a sigmoid.

All public methods follow :class:`~notochord_rt.engine.cores.core.InferenceCore` (batch 1). The
``*_batch`` methods do the same for ``B`` independent streams at once and are what
:mod:`.streams` builds on.

When the core is built, the fp32 packing is checked against the module on random inputs,
so a network whose layout this module misreads is refused (``InputError``) instead of
silently giving different numbers.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError
from ...events import CANONICAL_ORDER
from .quant import PRECISIONS, PackedLinear, available_precisions, c_kernels, pack_linear

log = logging.getLogger(__name__)

__all__ = ["FastCore", "PRECISIONS"]


# -- reading a network ------------------------------------------------------------------------
def _parts(model: nn.Module) -> dict:
    """The named pieces of a ``NotochordNet`` (a converted reference checkpoint is one)."""
    if hasattr(model, "inst_head"):
        return dict(
            inst_emb=model.inst_emb, pitch_emb=model.pitch_emb, time_emb=model.time_emb,
            vel_emb=model.vel_emb, rnn=model.rnn, initial_state=model.initial_state,
            h_proj=model.h_proj, heads=(model.inst_head, model.pitch_head, model.time_head,
                                        model.vel_head),
            end=model.end_head, time_dist=model.time_dist, vel_dist=model.vel_dist)
    raise InputError("model: not a Notochord network (no inst_head)")


def _sine_parts(module: nn.Module) -> tuple[Tensor, nn.Linear]:
    """Frequencies (radians per unit) and projection of a sine embedding module."""
    lins = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if len(lins) != 1:
        raise InputError(f"model: sine embedding {type(module).__name__} has {len(lins)} "
                         "linear layers, expected 1")
    lin = lins[0]
    f = getattr(module, "freqs", None)
    if not isinstance(f, Tensor):
        raise InputError(f"model: cannot find the frequencies of {type(module).__name__}")
    return f.detach().float().reshape(-1), lin


@dataclass
class _MlpSpec:
    layers: list  # (PackedLinear, ln_weight | None, ln_bias | None, eps)
    final: PackedLinear
    fused: tuple | None = None  # batch 1 with the compiled kernels: see _fuse


def _glu_mlp(module: nn.Module, precision: str, min_reduced: int | None,
             out_bias: Tensor | None = None) -> _MlpSpec:
    """Pack a GLU-MLP: ``[Linear → GLU → LayerNorm?] * L → Linear`` (dropout ignored).

    ``out_bias`` is added to the output layer's bias (the mixtures' learned bias).
    """
    mods = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.LayerNorm))]
    lins = [m for m in mods if isinstance(m, nn.Linear)]
    norms = [m for m in mods if isinstance(m, nn.LayerNorm)]
    if norms and len(norms) != len(lins) - 1:
        raise InputError(f"model: MLP with {len(lins)} linear and {len(norms)} norm layers")
    layers = []
    for k, lin in enumerate(lins[:-1]):
        ln = norms[k] if norms else None
        layers.append((
            pack_linear(lin.weight, lin.bias, precision, min_reduced),
            None if ln is None else ln.weight.detach().float().clone(),
            None if ln is None else ln.bias.detach().float().clone(),
            1e-5 if ln is None else float(ln.eps),
        ))
    last = lins[-1]
    bias = last.bias.detach().float() if last.bias is not None else torch.zeros(last.out_features)
    if out_bias is not None:
        bias = bias + out_bias
    return _MlpSpec(layers, pack_linear(last.weight, bias, precision, min_reduced))


def _run_mlp(spec: _MlpSpec, x: Tensor) -> Tensor:
    for lin, w, b, eps in spec.layers:
        x = F.glu(lin(x), -1)  # a * sigmoid(b) for the two halves, in one op
        if w is not None:
            x = F.layer_norm(x, w.shape, w, b, eps)
    return spec.final(x)


def _fuse(spec: _MlpSpec) -> None:
    """Prepare the batch-1 path on the compiled kernels: each hidden layer writes into its
    own preallocated buffers, GLU + LayerNorm are one C call (``glu_ln``), and layers on
    the compiled GEMV are called with their argument lists made here (no wrapper)."""
    fused = []
    for lin, w, b, eps in spec.layers:
        half = lin.out_features // 2
        pre, post = torch.empty(1, lin.out_features), torch.empty(1, half)
        fused.append((lin, lin.vnni_args(), pre, post, pre.data_ptr(), post.data_ptr(),
                      0 if w is None else w.data_ptr(), 0 if b is None else b.data_ptr(), half,
                      eps))
    spec.fused = (fused, spec.final.vnni_args())


def _run_mlp1(spec: _MlpSpec, x: Tensor, kernels) -> Tensor:
    """:func:`_run_mlp` for one contiguous float32 row ``(1, in)``; returns a fresh tensor."""
    if spec.fused is None:
        return _run_mlp(spec, x)
    layers, final = spec.fused
    glu_ln, gemv = kernels.glu_ln, kernels.gemv
    for lin, direct, pre, post, p_pre, p_post, p_w, p_b, half, eps in layers:
        if direct is None:
            lin(x, pre)
        else:
            gemv(*direct[0], x.data_ptr(), p_pre, *direct[1])
        glu_ln(p_pre, p_post, p_w, p_b, half, eps)
        x = post
    if final is None:
        return spec.final(x)
    y = torch.empty(1, spec.final.out_features)
    gemv(*final[0], x.data_ptr(), y.data_ptr(), *final[1])
    return y


def _twin_mlp(spec: _MlpSpec) -> _MlpSpec:
    """``spec`` over the same packed weights with its own scratch (see FastCore.twin)."""
    twin = _MlpSpec([(lin.twin(), w, b, eps) for lin, w, b, eps in spec.layers],
                    spec.final.twin())
    if spec.fused is not None:
        _fuse(twin)
    return twin


@dataclass
class _Mixture:
    bias: Tensor
    k: int
    loc_lo: float
    loc_hi: float
    sharp_lo: float
    sharp_hi: float


def _mixture(dist: nn.Module) -> _Mixture:
    k = int(getattr(dist, "n_components", getattr(dist, "n", 0)))
    lo, hi, res = float(dist.lo), float(dist.hi), float(dist.res)
    s_lo, s_hi = (float(v) for v in dist.sharp_bounds)
    return _Mixture(dist.bias.detach().float().clone(), k, lo - 10 * res, hi + 10 * res,
                    s_lo, s_hi)


# -- the core ----------------------------------------------------------------------------
class FastCore:
    """Fused :class:`~notochord_rt.engine.cores.core.InferenceCore` on packed weights.

    Args:
        model: a ``NotochordNet``, any weights (convert a reference checkpoint first).
        precision: ``"fp32"`` (matches the module to ~1e-6), ``"bf16"``, ``"fp16"`` (16-bit
            weights, fp32 activations) or ``"int8"`` (per-row int8 weights, dynamically
            quantised activations). See :mod:`.quant`.
        threads: if not None, ``torch.set_num_threads(threads)`` is called (a process-wide
            setting). One thread is fastest for batch 1 and avoids the multi-ms tails that
            intra-op thread hand-offs cause on small machines.
        check: compare the fp32 packing with the module on random inputs and refuse a
            network whose layout is not understood.
        min_reduced: layers with fewer weights stay fp32 whatever the precision (their
            reduced-precision kernel call costs more than streaming them; see
            :func:`~notochord_rt.engine.cores.quant.pack_linear`). 0 reduces every layer.

    The model is only read; the core keeps its own copies of the weights, which never
    require gradients, so the batch-1 methods record no autograd state and need no
    ``inference_mode`` (entering it ten times per event costs more than it saves, see
    docs/performance.md). A core is not
    thread-safe (it reuses small buffers): use one per thread.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", threads: int | None = 1,
                 check: bool = True, min_reduced: int | None = None) -> None:
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision not in available_precisions():
            raise InputError(f"precision {precision!r} has no kernel in this torch build "
                             f"(available: {', '.join(available_precisions())})")
        devices = {p.device.type for p in model.parameters()}
        if devices - {"cpu"}:
            raise InputError(f"model: FastCore is a CPU engine but the model is on "
                             f"{', '.join(sorted(devices))}; use model.cpu() or ModuleCore")
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.precision = precision
        self.min_reduced = None if min_reduced is None else int(min_reduced)
        with torch.inference_mode(False), torch.no_grad():
            self._pack(_parts(model), precision)
            if check:
                self._check(model)

    # -- packing ----------------------------------------------------------------------------
    def _pack(self, parts: dict, precision: str) -> None:
        rnn = parts["rnn"]
        if not isinstance(rnn, nn.GRU) or rnn.bidirectional or not rnn.bias:
            raise InputError("model: FastCore needs a unidirectional nn.GRU with biases")
        H, L = rnn.hidden_size, rnn.num_layers
        self.hidden, self.layers = H, L
        self._init = parts["initial_state"].detach().float().reshape(L, 1, H).clone()

        inst_tab = parts["inst_emb"].weight.detach().float()
        pitch_tab = parts["pitch_emb"].weight.detach().float()
        f_t, lin_t = _sine_parts(parts["time_emb"])
        f_v, lin_v = _sine_parts(parts["vel_emb"])
        self.emb_size = inst_tab.shape[1]
        # embeddings for conditioning the heads (sampler adds them to the context)
        self._inst_tab, self._pitch_tab = inst_tab.clone(), pitch_tab.clone()
        self._f_t, self._f_v = f_t.clone(), f_v.clone()
        self._n_t = f_t.numel()

        # GRU layer 0 folded into the embeddings
        w_ih0 = rnn.weight_ih_l0.detach().float()
        b_ih = [getattr(rnn, f"bias_ih_l{k}").detach().float() for k in range(L)]
        b_hh = [getattr(rnn, f"bias_hh_l{k}").detach().float() for k in range(L)]
        self._gate_inst = inst_tab @ w_ih0.t()  # (n_inst, 3H), fp32: only one row is read
        self._gate_pitch = pitch_tab @ w_ih0.t()
        sines_w = torch.cat((lin_t.weight.detach().float(), lin_v.weight.detach().float()), 1)
        emb_bias = lin_t.bias.detach().float() + lin_v.bias.detach().float()
        folded_b = [self._gate_bias(b_ih[k], b_hh[k], H) for k in range(L)]
        folded_b[0] = folded_b[0] + w_ih0 @ emb_bias
        mr = getattr(self, "min_reduced", None)
        self._emb_t = pack_linear(lin_t.weight, lin_t.bias, precision, mr)
        self._emb_v = pack_linear(lin_v.weight, lin_v.bias, precision, mr)
        self._in0 = pack_linear(w_ih0 @ sines_w, folded_b[0], precision, mr)
        self._f_cat = torch.cat((f_t, f_v))
        self._phase = torch.zeros(1, self._f_cat.numel())
        self._phase_t, self._phase_v = self._phase[0, : self._n_t], self._phase[0, self._n_t:]
        self._in = [None] + [
            pack_linear(getattr(rnn, f"weight_ih_l{k}"), folded_b[k], precision, mr)
            for k in range(1, L)
        ]
        hid_b = []
        for k in range(L):
            b = torch.zeros(3 * H)
            b[2 * H:] = b_hh[k][2 * H:]
            hid_b.append(b)
        self._hid = [pack_linear(getattr(rnn, f"weight_hh_l{k}"), hid_b[k], precision, mr)
                     for k in range(L)]

        self._proj = _glu_mlp(parts["h_proj"], precision, mr)
        self._mix = {"t": _mixture(parts["time_dist"]), "v": _mixture(parts["vel_dist"])}
        self._heads = {}  # the mixtures' bias is folded into the t / v output layers
        for sub, h in zip(CANONICAL_ORDER, parts["heads"]):
            mix = self._mix.get(sub)
            self._heads[sub] = _glu_mlp(h, precision, mr, None if mix is None else mix.bias)
        # batch 1 on the compiled kernels (int8 with AVX-512 VNNI): fused GLU + LayerNorm
        self._k = c_kernels() if precision == "int8" else None
        self._tanh_buf = None
        if self._k is not None:
            for spec in (self._proj, *self._heads.values()):
                _fuse(spec)
            self._tanh_buf = torch.empty(1, self.emb_size)
        end = parts["end"]
        ew, eb = end.weight.detach().float(), end.bias.detach().float()
        self._end_w = (ew[1] - ew[0]).contiguous()  # softmax of 2 logits = sigmoid of diff
        self._end_b = float(eb[1] - eb[0])

    def twin(self) -> FastCore:
        """A core over this one's packed weights with its own scratch buffers.

        A core is not thread-safe because of its few scratch buffers; its packed weights
        are read-only. A twin shares them (no copy, no packing, no check: microseconds) and
        can run on another thread beside this core, so many streams on many threads read
        one copy of the weights, which stays in the CPU's caches (the web playground's
        tabs). Its numbers are this core's."""
        t = copy.copy(self)
        t._phase = torch.zeros_like(self._phase)
        t._phase_t, t._phase_v = t._phase[0, : self._n_t], t._phase[0, self._n_t:]
        t._emb_t, t._emb_v, t._in0 = self._emb_t.twin(), self._emb_v.twin(), self._in0.twin()
        t._in = [None] + [lin.twin() for lin in self._in[1:]]
        t._hid = [lin.twin() for lin in self._hid]
        t._proj = _twin_mlp(self._proj)
        t._heads = {sub: _twin_mlp(spec) for sub, spec in self._heads.items()}
        if self._tanh_buf is not None:
            t._tanh_buf = torch.empty_like(self._tanh_buf)
        return t

    @staticmethod
    def _gate_bias(b_ih: Tensor, b_hh: Tensor, H: int) -> Tensor:
        b = b_ih.clone()
        b[: 2 * H] += b_hh[: 2 * H]
        return b

    def _check(self, model: nn.Module) -> None:
        """Compare an fp32 packing of this layout with ModuleCore-style math on the module."""
        ref = FastCore.__new__(FastCore)
        if self.precision == "fp32":
            ref = self
        else:
            ref.precision = "fp32"
            ref._pack(_parts(model), "fp32")
        p = _parts(model)
        gen = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            was_training = model.training
            model.eval()
            try:
                state = ref._init + 0.5 * torch.randn(ref._init.shape, generator=gen)
                args = (3, 64, 0.25, 80.0)
                x = (p["inst_emb"].weight[args[0]] + p["pitch_emb"].weight[args[1]]
                     + p["time_emb"](torch.tensor([args[2]])).reshape(-1)
                     + p["vel_emb"](torch.tensor([args[3]])).reshape(-1))
                _, want_state = nn.GRU.forward(p["rnn"], x.view(1, 1, -1), state)
                got_state = ref.feed(state, *args)
                want_ctx = p["h_proj"](want_state[-1, 0])
                got_ctx = ref.context(got_state)
                cx = torch.randn(self.emb_size, generator=gen)
                want_heads = [h(torch.tanh(cx)) for h in p["heads"]]
                want_heads[2] = want_heads[2] + p["time_dist"].bias  # folded in ours
                want_heads[3] = want_heads[3] + p["vel_dist"].bias
                got_heads = [ref._head_raw(s, cx[None])[0] for s in CANONICAL_ORDER]
            finally:
                model.train(was_training)
        pairs = [("GRU step", got_state, want_state), ("h_proj", got_ctx, want_ctx)]
        pairs += [(f"head {s}", g, w) for s, g, w in zip(CANONICAL_ORDER, got_heads, want_heads)]
        for name, got, want in pairs:
            err = float((got - want).abs().max())
            scale = 1.0 + float(want.abs().max())
            if not math.isfinite(err) or err > 1e-4 * scale:
                raise InputError(f"model: fused {name} differs from the module by {err:.3g}; "
                                 "the network layout is not what FastCore expects")

    # -- batched building blocks (B streams) --------------------------------------------------
    def initial_state_batch(self, n: int) -> Tensor:
        """``(layers, n, hidden)`` copies of the learned initial state."""
        return self._init.expand(self.layers, n, self.hidden).clone()

    def feed_batch(self, state: Tensor, inst: Tensor, pitch: Tensor, time: Tensor,
                   vel: Tensor) -> Tensor:
        """One step for ``B`` streams: ``state (L, B, H)``, inputs ``(B,)``; returns a new state."""
        n = inst.shape[0]
        phase = torch.cat((time.float()[:, None] * self._f_t, vel.float()[:, None] * self._f_v),
                          1)
        gi = self._in0(phase.sin_())
        gi += self._gate_inst.index_select(0, inst)
        gi += self._gate_pitch.index_select(0, pitch)
        new = torch.empty(self.layers, n, self.hidden)
        for k in range(self.layers):
            if k:
                gi = self._in[k](new[k - 1])
            self._cell(gi, self._hid[k](state[k]), state[k], new[k])
        return new

    def _cell(self, gi: Tensor, gh: Tensor, h: Tensor, out: Tensor) -> None:
        H = self.hidden
        if (self._k is not None and gi.shape[0] == 1 and h.is_contiguous()
                and h.dtype == torch.float32 and gh.is_contiguous()):
            self._k.gru_cell(gi.data_ptr(), gh.data_ptr(), h.data_ptr(), out.data_ptr(), H)
            return
        rz = gi[:, : 2 * H].add_(gh[:, : 2 * H]).sigmoid_()
        cand = torch.addcmul(gi[:, 2 * H:], rz[:, :H], gh[:, 2 * H:]).tanh_()
        # h' = (1 - z) * n + z * h = n + z * (h - n)
        torch.addcmul(cand, rz[:, H:], torch.sub(h, cand), out=out)

    def context_batch(self, state: Tensor) -> Tensor:
        """``h_proj`` of the top layer for every stream: ``(B, E)``."""
        return _run_mlp(self._proj, state[-1])

    def embed_batch(self, sub: str, values: Tensor) -> Tensor:
        """Input embeddings of ``B`` values of one sub-event: ``(B, E)``."""
        if sub == "i":
            return self._inst_tab.index_select(0, values.long())
        if sub == "p":
            return self._pitch_tab.index_select(0, values.long())
        if sub == "t":
            return self._emb_t(torch.sin(values.float()[:, None] * self._f_t))
        if sub == "v":
            return self._emb_v(torch.sin(values.float()[:, None] * self._f_v))
        raise InputError(f"sub must be one of 'i', 'p', 't', 'v', got {sub!r}")

    def _head_raw(self, sub: str, x: Tensor) -> Tensor:
        k = self._k
        if k is not None and x.shape == (1, self.emb_size) and x.dtype == torch.float32:
            x = x.contiguous()  # batch 1 on the compiled kernels
            k.tanh(x.data_ptr(), self._tanh_buf.data_ptr(), self.emb_size)
            return _run_mlp1(self._heads[sub], self._tanh_buf, k)
        return _run_mlp(self._heads[sub], torch.tanh(x))

    def head_batch(self, sub: str, x: Tensor) -> Tensor:
        """Heads for ``B`` inputs ``(B, E)``: logits ``(B, n)`` or mixtures ``(B, 3, K)``."""
        raw = self._head_raw(sub, x)
        mix = self._mix.get(sub)
        if mix is None:
            return raw
        if self._k is not None and raw.shape[0] == 1:
            self._k.mixture_decode(raw.data_ptr(), mix.k, mix.loc_lo, mix.loc_hi,
                                   mix.sharp_lo, mix.sharp_hi)
            return raw.view(1, 3, mix.k)
        out = raw.view(-1, 3, mix.k)  # bias already folded into the output layer
        out[:, 0] = torch.log_softmax(out[:, 0], -1)  # cheaper than logsumexp here
        out[:, 1].clamp_(mix.loc_lo, mix.loc_hi)
        out[:, 2] = F.softplus(out[:, 2]).clamp_(mix.sharp_lo, mix.sharp_hi)
        return out

    def end_prob_batch(self, state: Tensor) -> Tensor:
        """P(end) for every stream: ``(B,)``."""
        return torch.sigmoid(torch.mv(state[-1], self._end_w) + self._end_b)

    # -- InferenceCore (batch 1) -------------------------------------------------------------
    def initial_state(self) -> Tensor:
        """A fresh ``(layers, 1, hidden)`` copy of the learned initial state."""
        return self._init.clone()

    def feed(self, state: Tensor, inst: int, pitch: int, time: float, vel: float) -> Tensor:
        """One GRU step on the event's summed embeddings; returns a new state tensor."""
        torch.mul(self._f_t, float(time), out=self._phase_t)
        torch.mul(self._f_v, float(vel), out=self._phase_v)
        gi = self._in0(self._phase.sin_())
        gi += self._gate_inst[int(inst)]
        gi += self._gate_pitch[int(pitch)]
        new = torch.empty(self.layers, 1, self.hidden)
        for k in range(self.layers):
            if k:
                gi = self._in[k](new[k - 1])
            self._cell(gi, self._hid[k](state[k]), state[k], new[k])
        return new

    def context(self, state: Tensor) -> Tensor:
        """``h_proj`` of the top GRU output: ``Tensor[E]``."""
        return _run_mlp1(self._proj, state[-1].float().contiguous(), self._k).view(-1)

    def embed(self, sub: str, value: float) -> Tensor:
        """Embedding of one sub-event value (a fresh tensor): ``Tensor[E]``."""
        if sub == "i":
            return self._inst_tab[int(value)].clone()
        if sub == "p":
            return self._pitch_tab[int(value)].clone()
        if sub == "t":
            return self._emb_t(torch.sin(self._f_t * float(value))[None])[0]
        if sub == "v":
            return self._emb_v(torch.sin(self._f_v * float(value))[None])[0]
        raise InputError(f"sub must be one of 'i', 'p', 't', 'v', got {sub!r}")

    def head(self, sub: str, x: Tensor) -> Tensor:
        """``tanh(x)`` then the head: logits, or the decoded ``(3, K)`` mixture for t/v."""
        if sub not in self._heads:
            raise InputError(f"sub must be one of 'i', 'p', 't', 'v', got {sub!r}")
        out = self.head_batch(sub, x.view(1, -1))
        return out[0]

    def end_prob(self, state: Tensor) -> float:
        """P(the event just fed was the last one)."""
        z = float(torch.dot(state[-1, 0], self._end_w)) + self._end_b
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def weight_bytes(self) -> int:
        """Bytes of packed weights streamed for one full event (feed + context + 4 heads)."""
        lins = [self._in0, *self._in[1:], *self._hid]
        for spec in (self._proj, *self._heads.values()):
            lins += [lay[0] for lay in spec.layers] + [spec.final]
        return sum(lin.weight_bytes() for lin in lins)
