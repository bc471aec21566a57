"""Warming the model before the first played note is due.

The first ``feed`` and ``sample`` calls of a stream pay one-off costs (first use of the
core's code paths and buffers, constraint masks built for the first time, lazily
imported helpers): the first answer after start came 12-60 ms after the note against
6-11 ms later on (issue 16). :func:`warm_up` runs throw-away calls on a saved state and
restores it, so the stream — held notes, random generator, step — is exactly as before.
:func:`settle_memory` takes the garbage collector's first full pass before the music.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from ...engine.sampling.constraints import Constraints
from ...errors import NoPossibleEvents

log = logging.getLogger(__name__)

WARM_PITCHES = range(48, 72)


def warm_up(model: Any, rounds: int = 2) -> float:
    """Feed and sample ``rounds`` times on a snapshot of ``model``'s stream, then restore
    it; returns the seconds spent (logged at debug). A model without ``get_state`` is left
    alone. Never raises for a model that cannot sample these constraints."""
    if not hasattr(model, "get_state"):
        return 0.0
    t0 = time.perf_counter()
    state = model.get_state()
    try:
        for _ in range(rounds):
            for cons in (Constraints(note_on_map={1: WARM_PITCHES}, time=0.0),
                         Constraints(min_time=0.01)):
                try:
                    e = model.sample(cons)
                except NoPossibleEvents:
                    continue
                model.feed(e.inst, e.pitch, e.time, e.vel)
            model.feed(1, 60, 0.05, 0.0 if (1, 60) in model.held_notes else 64.0)
    except Exception:  # noqa: BLE001 - warming is optional; the stream is restored below
        log.debug("model warm-up failed", exc_info=True)
    finally:
        model.set_state(state)
    took = time.perf_counter() - t0
    log.debug("model warmed up in %.1f ms", took * 1e3)
    return took


def settle_memory() -> float:
    """One full garbage collection now, then everything alive frozen out of later ones.

    After a model load the collector's oldest generation is due: its first full pass
    (~0.2 s over ~170 k objects on a loaded 2-core machine, holding the GIL) would come
    with the first notes. Call at start, before any note is due; :func:`unsettle_memory`
    at the end. Returns the seconds spent."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    took = time.perf_counter() - t0
    log.debug("garbage collected and frozen in %.1f ms", took * 1e3)
    return took


def unsettle_memory() -> None:
    """Undo :func:`settle_memory` (frozen objects become collectable again)."""
    gc.unfreeze()


__all__ = ["settle_memory", "unsettle_memory", "warm_up"]
