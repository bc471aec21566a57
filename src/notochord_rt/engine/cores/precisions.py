"""The names of the inference cores' precisions: the one list every flag is built from.

Kept in a module of its own, free of torch, so that command-line parsers can offer the
choices without importing the engine (``cli/`` builds parsers before anything heavy).
What each precision does is in :mod:`.quant`, which packs the weights.
"""

from __future__ import annotations

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8")
"""Precisions of the fused CPU core (:class:`~notochord_rt.engine.cores.fast.FastCore`)."""

MODULE_CORE = "module"
"""Not a precision: the plain torch module as the core (reference, any device)."""

CORE_CHOICES: tuple[str, ...] = (MODULE_CORE, *PRECISIONS)
"""What a ``--precision`` flag that may also pick the plain module accepts."""

DEFAULT_PRECISION = "fp32"
"""The default of every ``--precision`` flag: the fused core, matching the module."""
