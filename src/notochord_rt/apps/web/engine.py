"""Per-tab samplers that share one set of weights.

Each browser tab gets its own real-time :class:`~notochord_rt.apps.live.player.Player`,
whose scheduler thread owns one model stream. The weights are loaded once (through
:func:`notochord_rt.apps.loading.load_sampler`) and every tab's ``Notochord`` is built
over the base model's network (``Notochord.from_net``: no copy). The weights are packed
once too: a :class:`~notochord_rt.engine.cores.fast.FastCore` reuses small scratch
buffers and is not thread-safe, and the tabs' players run on their own threads, so each
tab gets a :meth:`~notochord_rt.engine.cores.fast.FastCore.twin` of one packed core (its
own scratch, the same packed weights: 16 tabs read one copy, which stays in the CPU's
caches, instead of 16).

The other way, :mod:`.batched`, serves every tab from one batched many-stream engine
(:class:`~notochord_rt.engine.sampling.streams.Streams`, as the OSC sessions); see
``ENGINES``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ...engine.cores.precisions import MODULE_CORE

log = logging.getLogger(__name__)

AUTO = "auto"
"""The web server's default ``--precision``: see :func:`resolve_precision`."""


def resolve_precision(choice: str, engine: str) -> str:
    """The sessions' core for ``--precision choice`` with ``engine``: ``auto`` is
    ``int8`` for the ``batched`` engine where this CPU runs the compiled int8 kernel
    (AVX-512 VNNI; :func:`~notochord_rt.engine.cores.quant.c_kernels`), else ``fp32``.
    Measured with ``benchmarks/web.py`` (docs/web.md), p50 / p99 of key press to first
    answer: 16 sessions on the batched engine and two workers 4.40 / 15.1 and 4.95 / 18.1
    ms in int8 against 6.85 / 25.4 and 8.15 / 34.3 in fp32; one tab on the per-tab
    engine 4.75 / 22.2 and 4.80 / 22.1 ms in int8 against 3.80 / 8.01 and 3.60 / 7.90 in
    fp32. int8 adds 0.004 nats/event of test NLL. Without the kernel int8 runs on
    FBGEMM, slower than fp32 at batch 1. Anything else is returned as is."""
    if choice != AUTO:
        return choice
    if engine != "batched":
        return "fp32"
    from ...engine.cores.quant import c_kernels

    return "int8" if c_kernels() is not None else "fp32"


ENGINES = ("per-tab", "batched")
"""How the tabs' samplers are made: ``per-tab`` (the default: :class:`SamplerFactory`) or
``batched`` (one ``Streams`` for every tab, calls combined into batched steps:
:mod:`.batched`). A batch of one costs more than a single stream's call, so a lone tab
is answered sooner by per-tab; with 16 busy sessions batched answered about 5x faster
(measured in docs/web.md). Per-tab is the default, the one-tab case being the common
one."""


def make_factory(base: Any, engine: str, max_sessions: int, precision: str = "fp32") -> Any:
    """The sessions' sampler source of kind ``engine`` (see :data:`ENGINES`)."""
    if engine == "batched":
        from .batched import BatchedFactory

        return BatchedFactory(base, max_sessions, "fp32" if precision == MODULE_CORE
                              else precision)
    if engine == "per-tab":
        return SamplerFactory(base, precision)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")


class SamplerFactory:
    """Makes a fresh sampler (its own stream and core) over the shared weights of ``base``.

    ``base``: a loaded ``Notochord``; ``precision``: the core of each new sampler
    (``"module"`` for the plain module core, else a FastCore precision).
    """

    def __init__(self, base: Any, precision: str = "fp32") -> None:
        self.base = base
        self.precision = precision
        self._core: Any = None  # the packed core the tabs' cores are twins of
        self._lock = threading.Lock()

    def new(self, seed: int | None = None) -> Any:
        """A ``Notochord`` sharing the base model's parameters, with its own core and
        stream (seeded with ``seed`` when given)."""
        from ...engine.sampling.sampler import Notochord

        model = Notochord.from_net(self.base.net, seed=seed)  # the weights are shared
        if self.precision and self.precision != MODULE_CORE:
            with self._lock:
                if self._core is None:
                    from ...engine.cores.fast import FastCore

                    self._core = FastCore(self.base.net, self.precision)
                core = self._core.twin()
            model.use_core(core)
        return model

    def release(self, model: Any) -> None:
        """Nothing to give back: the sampler is the session's alone."""
