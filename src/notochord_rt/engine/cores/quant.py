"""Pre-packed linear layers for the fast batch-1 path, in several precisions.

At batch 1 a Notochord step is a chain of matrix-vector products whose cost is the time
to stream the weights from memory, so the weight format decides the latency. Each
:class:`PackedLinear` packs its weights once, in the layout the fastest CPU kernel for
that precision wants, and then only runs that kernel:

``fp32``
    weights stored transposed (``in × out``) and used through ``addmm`` with a preallocated
    output; this streams the weights faster than ``F.linear`` on the ``out × in`` layout
    (figures in docs/performance.md).
``bf16``
    bfloat16 weights pre-packed for oneDNN (``mkldnn._linear_pointwise``); activations are
    rounded to bfloat16 on the way in, results come back as float32. Falls back to
    ``F.linear`` on bfloat16 tensors where oneDNN is not built in.
``fp16``
    half-precision weights packed for FBGEMM with float32 activations
    (``fbgemm_linear_fp16_weight_fp32_activation``): half the bytes of fp32 and no
    rounding of activations; the fastest of the 16-bit formats on the development CPU.
``int8``
    int8 weights, one scale per output row, with dynamically quantised activations
    (FBGEMM ``quantized::linear_dynamic``): a quarter of the fp32 bytes, so the whole
    default model (17.7 M parameters) fits in a 32 MB L3 cache. Activations use the full
    8-bit range where the CPU's kernels cannot saturate (:func:`int8_reduce_range`).

Which kernels exist depends on how torch was built; :func:`available_precisions` reports
what works here, and asking for one that does not raises :class:`~notochord_rt.errors.InputError`.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import mmap
import os
import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F

from ...errors import InputError
from .precisions import PRECISIONS

log = logging.getLogger(__name__)



class PackedLinear:
    """``y = x @ W.T + b`` for float32 ``x`` of shape ``(B, in)``, returning float32 ``(B, out)``.

    ``weight`` is ``(out, in)`` as in :class:`torch.nn.Linear`; ``bias`` may be None.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        weight = weight.detach().float().contiguous()
        self.out_features, self.in_features = weight.shape
        self.precision = precision
        bias = (
            torch.zeros(self.out_features)
            if bias is None
            else bias.detach().float().reshape(-1).contiguous()
        )
        self._bias = bias
        if precision == "fp32":
            self._wt = hugepage_copy(weight.t())
            self._bias2 = bias.unsqueeze(0).contiguous()
            self._call = self._fp32
        elif precision == "bf16":
            self._setup_bf16(weight, bias)
        elif precision == "fp16":
            self._setup_fp16(weight, bias)
        else:
            self._setup_int8(weight)
        if precision in ("fp16", "int8"):
            # torch warns once per process on the first call of these kernels; do it here
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._call(torch.zeros(1, self.in_features), None)

    # -- setup ------------------------------------------------------------------------
    def _setup_bf16(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self._wb = weight.to(torch.bfloat16)
        self._bb = bias.to(torch.bfloat16)
        self._call = self._bf16_plain
        if torch.backends.mkldnn.is_available():
            try:
                self._wb = torch.ops.mkldnn._reorder_linear_weight(self._wb, 1)
                self._call = self._bf16_mkldnn
                self._bf16_mkldnn(torch.zeros(1, self.in_features), None)
            except (RuntimeError, AttributeError) as e:  # pragma: no cover - build dependent
                log.info("oneDNN bf16 packing unavailable (%s); using F.linear", e)
                self._wb = weight.to(torch.bfloat16)
                self._call = self._bf16_plain

    def _setup_fp16(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        # torch.fbgemm_* is flagged deprecated since torch 2.10 but was ~25 % faster here
        # than quantized::linear_dynamic_fp16, the same FBGEMM kernel behind another API;
        # fall back to the latter when the former is gone.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._packed = torch.fbgemm_pack_gemm_matrix_fp16(weight)
            self._call = self._fp16
        except (AttributeError, RuntimeError):  # pragma: no cover - future torch
            self._packed = torch.ops.quantized.linear_prepack_fp16(weight, bias)
            self._call = self._fp16_quantized

    def _setup_int8(self, weight: torch.Tensor) -> None:
        scale = (weight.abs().amax(1) / 127.0).clamp_min(1e-12).double()
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # torch >= 2.10 flags the quantised-tensor constructors as deprecated; they are
            # still the only CPU int8 GEMM with dynamic activation quantisation in torch.
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qweight, self._bias)
        self._reduce_range = int8_reduce_range()
        self._call = self._int8
        kernel = c_kernels()
        if kernel is not None:
            # rows padded to 64 bytes for the VNNI kernel; with the row sums it adds back
            # the offset of the activations' 8-bit range
            pad = -self.in_features % 64
            q = qweight.int_repr()
            self._q = hugepage_copy(_interleave4(F.pad(q, (0, pad))), min_bytes=1 << 20)
            self._q_scale = scale.float().contiguous()
            self._q_rowsum = q.to(torch.int32).sum(1, dtype=torch.int32).contiguous()
            self._q_buf = torch.zeros(self.in_features + pad, dtype=torch.uint8)
            self._q_args = (self._q.data_ptr(), self._q_scale.data_ptr(),
                            self._q_rowsum.data_ptr(), self._bias.data_ptr())
            self._q_sizes = (self._q_buf.data_ptr(), self.out_features, self.in_features,
                             self.in_features + pad)
            self._gemv = kernel.gemv
            self._call = self._int8_vnni

    # -- kernels ----------------------------------------------------------------------
    def _fp32(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        if out is None:
            return torch.addmm(self._bias2, x, self._wt)
        return torch.addmm(self._bias2, x, self._wt, out=out)

    def _bf16_mkldnn(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self._wb, self._bb,
                                               "none", [], "")
        return _into(y, out)

    def _bf16_plain(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        return _into(F.linear(x.to(torch.bfloat16), self._wb, self._bb), out)

    def _fp16(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        y = torch.fbgemm_linear_fp16_weight_fp32_activation(x, self._packed, self._bias)
        return _into(y, out)

    def _fp16_quantized(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        return _into(torch.ops.quantized.linear_dynamic_fp16(x, self._packed), out)

    def _int8(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self._packed, self._reduce_range)
        return _into(y, out)

    def _int8_vnni(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        if (x.dim() != 2 or x.shape[0] != 1 or x.shape[1] != self.in_features
                or not x.is_contiguous() or x.dtype != torch.float32):
            return self._int8(x, out)  # batches: FBGEMM reads the weights once for all rows
        if (out is None or not out.is_contiguous() or out.dtype != torch.float32
                or out.numel() != self.out_features):
            y = torch.empty(1, self.out_features)
            self._gemv(*self._q_args, x.data_ptr(), y.data_ptr(), *self._q_sizes, 1)
            return y if out is None else out.copy_(y)
        self._gemv(*self._q_args, x.data_ptr(), out.data_ptr(), *self._q_sizes, 1)
        return out

    def vnni_args(self) -> tuple[tuple, tuple] | None:
        """``(before, after)``: the compiled kernel's call is ``gemv(*before, x, y, *after)``
        with ``x`` / ``y`` the data pointers of a float32 ``(1, in)`` input and ``(1, out)``
        output. None when this layer does not run on the compiled kernel."""
        if self._call != self._int8_vnni:
            return None
        return self._q_args, (*self._q_sizes, 1)

    def twin(self) -> PackedLinear:
        """This layer over the same packed weights with its own scratch, for another thread.

        Only the compiled int8 kernel has scratch (its quantised input); every other layer
        is read-only once packed and is returned as it is."""
        if getattr(self, "_q_buf", None) is None:
            return self
        t = copy.copy(self)
        t._q_buf = torch.zeros_like(self._q_buf)
        t._q_sizes = (t._q_buf.data_ptr(), *self._q_sizes[1:])
        t._call = getattr(t, self._call.__name__)  # bound to the twin, not to this layer
        return t

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the layer; with ``out`` the result is written there (and returned)."""
        return self._call(x, out)

    def weight_bytes(self) -> int:
        """Bytes of weights streamed per call (what batch-1 latency is proportional to)."""
        per = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}[self.precision]
        return self.in_features * self.out_features * per


_HUGE = 2 << 20  # bytes in an x86-64 transparent huge page


def hugepage_copy(t: torch.Tensor, min_bytes: int = 1 << 20) -> torch.Tensor:
    """A contiguous copy of ``t`` in memory backed by transparent huge pages, where possible.

    Streaming a weight matrix at batch 1 is limited by memory bandwidth, and the CPU's
    hardware prefetchers stop at every 4 KB page boundary; on 2 MB pages they run on. On the
    development VM this raised the single-core GEMV bandwidth by roughly 10-20 %. Linux
    only hands out huge pages for 2 MB-aligned private anonymous memory that asked for them
    (``madvise(MADV_HUGEPAGE)``, the default ``transparent_hugepage=madvise`` policy) and
    that is first touched afterwards, so the copy lives in its own ``mmap``. Elsewhere, or
    for tensors under ``min_bytes``, this is ``t.contiguous()``. The tensor keeps its
    mapping alive.
    """
    nbytes = t.numel() * t.element_size()
    if nbytes < min_bytes or not hasattr(mmap, "MADV_HUGEPAGE") or t.device.type != "cpu":
        return t.contiguous()
    try:
        mm = mmap.mmap(-1, nbytes + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        offset = (-addr) % _HUGE
        mm.madvise(mmap.MADV_HUGEPAGE, offset, nbytes)
        out = torch.frombuffer(mm, dtype=t.dtype, count=t.numel(), offset=offset)
    except (OSError, ValueError, AttributeError) as e:  # pragma: no cover - platform dependent
        log.info("no huge-page copy (%s)", e)
        return t.contiguous()
    return out.view(t.shape).copy_(t)


def _interleave4(q: torch.Tensor) -> torch.Tensor:
    """int8 ``(out, in)`` (``in`` a multiple of 64) in the VNNI kernel's layout.

    Rows go in blocks of 4 (zero rows pad the last block); inside a block the 64-byte
    pieces of the 4 rows alternate, so the kernel reads the matrix as one sequential stream.
    """
    out, n = q.shape
    q = F.pad(q, (0, 0, 0, -out % 4))
    return q.view(-1, 4, n // 64, 64).transpose(1, 2).contiguous().view(-1, n)


@lru_cache(maxsize=1)
def c_kernels():
    """The compiled batch-1 kernels (module ``_int8gemv``: ``gemv``, ``glu_ln``, ``tanh``,
    ``gru_cell``, ``mixture_decode``) when built and this CPU has AVX-512 VNNI, else None.

    ``NOTOCHORD_RT_INT8_KERNEL=fbgemm`` in the environment keeps FBGEMM for every call
    (read on the first call; ``c_kernels.cache_clear()`` reads it again).
    """
    if os.environ.get("NOTOCHORD_RT_INT8_KERNEL", "").lower() == "fbgemm":
        return None
    try:
        from .. import _int8gemv
    except ImportError as e:
        log.info("int8: compiled VNNI kernel not built (%s); using FBGEMM", e)
        return None
    if not _int8gemv.available():
        log.info("int8: this CPU has no AVX-512 VNNI; using FBGEMM")
        return None
    return _int8gemv


MIN_REDUCED = 100_000
"""Layers with fewer weights than this stay fp32 in every precision (see :func:`pack_linear`)."""


MIN_REDUCED_VNNI = 16_384
"""The same threshold for int8 when the compiled VNNI kernel is used (a much cheaper call)."""


def default_min_reduced(precision: str) -> int:
    """Smallest layer (in weights) worth a reduced-precision kernel call in ``precision``."""
    if precision == "int8" and c_kernels() is not None:
        return MIN_REDUCED_VNNI
    return MIN_REDUCED


def pack_linear(weight: torch.Tensor, bias: torch.Tensor | None, precision: str,
                min_reduced: int | None = None) -> PackedLinear:
    """A :class:`PackedLinear` in ``precision``, or fp32 for layers under ``min_reduced`` weights.

    A call of a library reduced-precision kernel has a fixed cost before it touches a
    weight (activation conversion or quantisation, oneDNN/FBGEMM dispatch) far above that
    of fp32 ``addmm``, and for a small layer that cost exceeds what streaming fewer bytes
    saves: below :data:`MIN_REDUCED` weights (e.g. the 512→129 pitch logits) fp32 is both
    faster and exact. The compiled VNNI int8 kernel's call is much cheaper, so with it only
    layers under :data:`MIN_REDUCED_VNNI` weights stay fp32 (measurements in
    docs/performance.md). ``None`` picks the threshold for ``precision``
    (:func:`default_min_reduced`).
    """
    if min_reduced is None:
        min_reduced = default_min_reduced(precision)
    if precision != "fp32" and weight.numel() < min_reduced:
        precision = "fp32"
    return PackedLinear(weight, bias, precision)


def _into(y: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if y.dtype != torch.float32:
        y = y.float()
    if out is None:
        return y
    return out.copy_(y)


@lru_cache(maxsize=1)
def int8_reduce_range() -> bool:
    """Whether int8 activations must use 7 bits (``reduce_range``) on this CPU.

    Without VNNI instructions the x86 int8 kernels add pairs of u8×s8 products in 16 bits,
    which saturates for full-range activations; 7-bit activations avoid that at the cost
    of about 1.5× the rounding error. Checked once on a worst case (every activation and
    weight at its maximum): if full range gives the exact answer, it is used.
    """
    n = 256
    w = torch.ones(4, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(w, torch.full((4,), 1 / 127, dtype=torch.double),
                                       torch.zeros(4, dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(q, None)
        try:
            y = torch.ops.quantized.linear_dynamic(torch.ones(1, n), packed, False)
        except RuntimeError:  # pragma: no cover - build dependent
            return True
    full_ok = bool(torch.allclose(y, torch.full_like(y, float(n)), rtol=1e-2))
    log.info("int8 activations: %s range", "full 8-bit" if full_ok else "reduced 7-bit")
    return not full_ok


@lru_cache(maxsize=1)
def available_precisions() -> tuple[str, ...]:
    """The precisions whose kernels run in this torch build (checked once, on a tiny layer)."""
    ok = []
    w, b, x = torch.randn(8, 16), torch.randn(8), torch.randn(1, 16)
    for p in PRECISIONS:
        try:
            y = PackedLinear(w, b, p)(x)
            if torch.allclose(y, F.linear(x, w, b), atol=0.2, rtol=0.1):
                ok.append(p)
        except (RuntimeError, AttributeError, NotImplementedError) as e:
            log.info("precision %s unavailable: %s", p, e)
    return tuple(ok)
