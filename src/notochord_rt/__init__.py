"""notochord_rt: a fast, tested implementation of the Notochord model of MIDI performance.

Heavy parts (torch) are imported lazily so that ``import notochord_rt`` and the CLI's
``--help`` stay quick.
"""

from __future__ import annotations

from .errors import (
    CheckpointError,
    InputError,
    MidiError,
    NoPossibleEvents,
    NotochordError,
    UserError,
)
from .events import START_EVENT, Event

__version__ = "0.1.0"

# name -> module: imported on first access (module __getattr__), so that importing the
# package does not import torch. ``Event`` is the plain event 4-tuple of ``events``;
# ``SampledEvent`` is what ``Notochord.sample`` returns (values + log-probabilities).
_LAZY = {
    "Notochord": "notochord_rt.engine.sampling.sampler",
    "SampledEvent": "notochord_rt.engine.sampling.sampler",
    "Constraints": "notochord_rt.engine.sampling.constraints",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'notochord_rt' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "Constraints",
    "Event",
    "InputError",
    "MidiError",
    "NoPossibleEvents",
    "Notochord",
    "NotochordError",
    "START_EVENT",
    "SampledEvent",
    "UserError",
    "__version__",
]
