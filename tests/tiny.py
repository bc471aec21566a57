"""The one tiny model of the tests: :data:`TINY`, overridable per test.

``tiny_model`` builds a sampler (``engine.sampler.Notochord``), ``tiny_net`` the bare
network (``model.network.NotochordNet``, in eval mode), ``tiny_config`` the keyword
arguments (for ``TrainConfig.model``, checkpoints, …). Weights, chosen by ``init``:

* ``"wide"`` (default): every parameter drawn from N(0, 0.5), far from uniform so that a
  test of sampling can fail;
* ``"default"``: the network's own initialisation;
* a float ``s``: the network's own initialisation plus N(0, s) noise.

All of it is seeded (``torch.manual_seed(seed)`` first), so a test gets the same model on
every run. Tests that need another size pass it as an override (``rnn_layers=2``: the
multi-layer paths) instead of defining their own model.
"""

from __future__ import annotations

from typing import Any

import torch

from notochord_rt.engine.sampling.sampler import Notochord
from notochord_rt.model.network import NotochordNet

TINY: dict[str, Any] = {"emb_size": 16, "rnn_hidden": 32, "rnn_layers": 1, "mlp_layers": 1,
                        "dropout": 0.0}


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """The keyword arguments of the tiny model, with ``overrides``."""
    return {**TINY, **overrides}


def _init(net: torch.nn.Module, init: str | float) -> None:
    with torch.no_grad():
        if init == "default":
            return
        if init == "wide":
            for p in net.parameters():
                p.normal_(0.0, 0.5)
            return
        if isinstance(init, (int, float)) and not isinstance(init, bool):
            for p in net.parameters():
                p.add_(torch.randn_like(p) * float(init))
            return
    raise ValueError(f"init must be 'wide', 'default' or a float, got {init!r}")


def tiny_net(seed: int = 0, *, init: str | float = "wide", **overrides: Any) -> NotochordNet:
    """A tiny ``NotochordNet`` (eval mode) with weights from ``seed`` (see the module doc)."""
    torch.manual_seed(seed)
    net = NotochordNet(**tiny_config(**overrides))
    _init(net, init)
    return net.eval()


def tiny_model(seed: int = 0, *, init: str | float = "wide", sampler_seed: int | None = None,
               **overrides: Any) -> Notochord:
    """A tiny sampler with weights from ``seed`` and its sampling RNG from ``sampler_seed``."""
    torch.manual_seed(seed)
    model = Notochord(seed=sampler_seed, **tiny_config(**overrides))
    _init(model, init)
    return model

FEW_FEATURES: dict[str, Any] = {"time_sines": 8, "vel_sines": 8, "time_components": 4,
                                "vel_components": 3}
"""Override for checkpoint and network tests: few sinusoids and mixture components keep
the files small and the shapes easy to tell apart."""
