"""Per-tab samplers that share one set of weights.

Each browser tab gets its own real-time :class:`~notochord_rt.apps.live.player.Player`,
whose scheduler thread owns one model stream. The weights are loaded once (through
:func:`notochord_rt.apps.loading.load_sampler`) and every tab's ``Notochord`` is built
with ``load_state_dict(..., assign=True)``, so its parameters *are* the base model's
tensors (no copy). The packed inference core is per tab: a
:class:`~notochord_rt.engine.cores.fast.FastCore` reuses small scratch buffers and is not
thread-safe, and the tabs' players run on their own threads (for the default model a
core is a few MB and builds in milliseconds).

The batched many-stream engine (:class:`~notochord_rt.engine.sampling.streams.Streams`,
used by the OSC sessions) would need one thread stepping all tabs together; the player
samples synchronously on its own thread, so the tabs use one stream each instead.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ...engine.cores.precisions import MODULE_CORE

log = logging.getLogger(__name__)


class SamplerFactory:
    """Makes a fresh sampler (its own stream and core) over the shared weights of ``base``.

    ``base``: a loaded ``Notochord``; ``precision``: the core of each new sampler
    (``"module"`` for the plain module core, else a FastCore precision).
    """

    def __init__(self, base: Any, precision: str = "fp32") -> None:
        self.base = base
        self.precision = precision
        self._lock = threading.Lock()  # state_dict() of the shared base from one thread

    def new(self, seed: int | None = None) -> Any:
        """A ``Notochord`` sharing the base model's parameters, with its own core and
        stream (seeded with ``seed`` when given)."""
        from ...engine.sampling.sampler import Notochord

        with self._lock:
            model = Notochord(self.base.config, seed=seed)
            model.load_state_dict(self.base.state_dict(), assign=True)
        model.eval()
        if self.precision and self.precision != MODULE_CORE:
            model.use_core(self.precision)
        return model
