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

__all__ = [
    "CheckpointError",
    "Event",
    "InputError",
    "MidiError",
    "NoPossibleEvents",
    "NotochordError",
    "START_EVENT",
    "UserError",
    "__version__",
]
