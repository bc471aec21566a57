"""The ``unmute`` scenario of ``benchmarks/live.py`` (issue 16): dead air after unmute.

The improviser (``ImprovisePolicy``, two voices, the app defaults) plays on the real
:class:`~notochord_rt.apps.live.player.Player` with the given model for 3 s, is muted
(the ``mute`` control, as CC or TUI key) for ``mute`` seconds, then unmuted; the time
from the unmute to the first note-on the player sends is measured. Each case runs with
the player's resume window (``PlayerConfig.resume_within``, the default) and without it
(``inf``: the next event at the gap the model expects after its last note, the old
behaviour), interleaved. In-process, with a sink that records send times: the MIDI port
adds the same small delay to both. Goal: <= 0.5 s at the default density.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from notochord_rt.apps.live.improvise import ImprovisePolicy
from notochord_rt.apps.live.player import Player, PlayerConfig
from notochord_rt.apps.musical import DEFAULTS

VOICES = (41, 43)  # violin, cello


class _Sink:
    def __init__(self) -> None:
        self.ons: list[float] = []
        self.cond = threading.Condition()

    def note(self, inst: int, pitch: int, vel: int) -> None:
        if vel > 0:
            with self.cond:
                self.ons.append(time.perf_counter())
                self.cond.notify_all()

    def panic(self) -> None:
        pass


def run_unmute(model, mutes=(1.0, 3.0, 5.0, 8.0, 12.0), repeats: int = 2) -> dict:
    """Every mute length ``repeats`` times, with and without the resume window."""
    cases = (("resume window (default)", True), ("no window (old)", False))
    out: dict = {label: {} for label, _ in cases}
    for mute in mutes:
        for _ in range(repeats):
            for label, resume in cases:
                got = measure(model, mute, resume)
                out[label].setdefault(f"{mute:g} s", []).append(
                    None if got is None else round(got, 3))
    for label in out:
        vals = [v for vs in out[label].values() for v in vs if v is not None]
        missed = sum(v is None for vs in out[label].values() for v in vs)
        out[label]["p50_s"] = round(float(np.median(vals)), 3) if vals else None
        out[label]["max_s"] = round(float(np.max(vals)), 3) if vals else None
        out[label]["none_within_15_s"] = missed
    return out


def measure(model, mute: float, resume: bool, timeout: float = 15.0) -> float | None:
    """Seconds from unmute to the first note-on (None: none within ``timeout``)."""
    sink = _Sink()
    config = PlayerConfig() if resume else PlayerConfig(resume_within=math.inf)
    player = Player(model, sink, ImprovisePolicy(list(VOICES), musical=DEFAULTS), config)
    with player:
        time.sleep(3.0)
        player.control("mute", 1.0)  # toggles: muted (its notes are released)
        time.sleep(mute)
        t0 = time.perf_counter()
        player.control("mute", 1.0)  # unmuted
        with sink.cond:
            sink.cond.wait_for(lambda: any(t >= t0 for t in sink.ons), timeout)
            after = [t for t in sink.ons if t >= t0]
    return after[0] - t0 if after else None
