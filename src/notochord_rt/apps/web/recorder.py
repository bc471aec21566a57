"""Recording a tab's session (the person's notes and the model's) as a MIDI file.

Events are kept with their session times (seconds) while recording is on; :meth:`midi`
writes them with the project's own exporter (:func:`notochord_rt.midi.export.midi_bytes`),
notes still sounding ending at the last event. Thread-safe: the player's scheduler
thread adds the model's notes, the server's loop the person's.
"""

from __future__ import annotations

import threading

from ... import events as ev

MAX_EVENTS = 200_000
"""Events one recording keeps (about an hour of dense playing); later ones are dropped."""


class Recorder:
    """Notes with times, while :attr:`on`; ``programs`` maps anonymous ids to GM programs."""

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.max_events = max_events
        self._lock = threading.Lock()
        self._events: list[tuple[int, int, float, int]] = []
        self._t0 = 0.0
        self.on = False
        self.dropped = 0
        self.programs: dict[int, int] = {}

    def start(self, now: float) -> None:
        """Begin a new recording at clock time ``now`` (the previous one is discarded)."""
        with self._lock:
            self._events, self._t0, self.on, self.dropped = [], now, True, 0

    def stop(self) -> None:
        with self._lock:
            self.on = False

    def add(self, inst: int, pitch: int, vel: int, now: float) -> None:
        """Record a note-on (``vel`` > 0) or note-off at clock time ``now``."""
        if not self.on:
            return
        with self._lock:
            if len(self._events) >= self.max_events:
                self.dropped += 1
                return
            self._events.append((int(inst), int(pitch), max(0.0, now - self._t0), int(vel)))

    def __len__(self) -> int:
        return len(self._events)

    def midi(self) -> bytes:
        """The recording as the bytes of a type-1 MIDI file (empty recording: no notes)."""
        from ...midi.export import midi_bytes

        with self._lock:
            events = list(self._events)
        arrays = ev.EventArrays.build(*zip(*events)) if events else ev.EventArrays.empty()
        return midi_bytes(arrays, program_for=dict(self.programs) or None)
