"""Tiny random models for tests: fast, with far-from-uniform weights so tests can fail."""

from __future__ import annotations

import torch

from notochord_rt.engine.sampler import Notochord

TINY = {"emb_size": 16, "rnn_hidden": 32, "rnn_layers": 1, "mlp_layers": 1, "dropout": 0.0}


def tiny_model(seed: int = 0, **overrides) -> Notochord:
    """A :data:`TINY` sampler (config overridable) with N(0, 0.5) weights from ``seed``."""
    torch.manual_seed(seed)
    m = Notochord(**{**TINY, **overrides})
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    return m
