"""The event representation: the one place that knows the instrument id space.

A Notochord *event* is a 4-tuple of sub-events:

========  ============================================  ==============================
field     meaning                                       domain
========  ============================================  ==============================
``inst``  instrument id (see below)                      0..320 (0 = start token)
``pitch`` MIDI note number (GM drum key for drum kits)   0..127 (128 = start token)
``time``  seconds since the previous event               0..10 (longer is censored)
``vel``   velocity; **0 means note-off**                 0..127
========  ============================================  ==============================

Instrument ids (321 classes)::

      0         start-of-sequence token, never sampled
      1..128    General MIDI melodic programs (GM program + 1)
    129..256    drum kits (GM program on channel 10 + 129; 129 = standard kit)
    257..288    32 anonymous melodic instruments
    289..320    32 anonymous drum kits

Anonymous ids stand for parts with no program change, for a second part that uses the
same program as another one, and for voices that are not a known GM sound.

Every other module imports these names instead of repeating the numbers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .gm import DRUM_KIT_NAMES, FAMILY_NAMES, PROGRAM_NAMES, drum_kit_name

# -- sub-events ---------------------------------------------------------------------------
SUB_EVENTS: tuple[str, ...] = ("inst", "pitch", "time", "vel")
"""The sub-events' names in canonical (index) order: conditioning masks, heads and
per-sub-event results are indexed in this order."""

CANONICAL_ORDER = "iptv"
"""The initials of :data:`SUB_EVENTS` in the same order. An *order* is a permutation of
these letters (:func:`~notochord_rt.model.validate.check_order`). Also the order of the
teacher-forced likelihoods that training, ``eval`` and fine-tuning report, so their
figures are comparable."""

SAMPLING_ORDER = "vtip"
"""The default order of sampling (``sample``, the many-stream engine, OSC ``sample``, the
rhythm test) when neither the call nor the constraints give one: velocity first, so
note-on or note-off is decided before the instrument and pitch (design.md §6.6)."""

SCORE_ORDER = "itpv"
"""The default order of :meth:`~notochord_rt.model.network.NotochordNet.score`, kept as it
always was (its callers and benchmarks pass it). Every order gives a valid likelihood;
pass :data:`CANONICAL_ORDER` for figures comparable with training's."""

SUB_EVENT_NAMES: dict[str, str] = dict(zip(CANONICAL_ORDER, SUB_EVENTS))
"""Initial → name (``"i"`` → ``"inst"``, …)."""

# -- instruments --------------------------------------------------------------------------
START_INST = 0
N_GM = 128
N_ANON = 32
FIRST_MELODIC, LAST_MELODIC = 1, N_GM  # 1..128
FIRST_DRUM, LAST_DRUM = N_GM + 1, 2 * N_GM  # 129..256
FIRST_ANON, LAST_ANON = 2 * N_GM + 1, 2 * N_GM + N_ANON  # 257..288
FIRST_ANON_DRUM, LAST_ANON_DRUM = LAST_ANON + 1, LAST_ANON + N_ANON  # 289..320
NUM_INSTRUMENTS = LAST_ANON_DRUM  # 320 real instruments
N_INST_CLASSES = NUM_INSTRUMENTS + 1  # 321 with the start token
STANDARD_KIT = FIRST_DRUM
DRUM_CHANNEL = 9  # 0-based MIDI channel 10

# -- pitch --------------------------------------------------------------------------------
NUM_PITCHES = 128
START_PITCH = NUM_PITCHES  # 128
N_PITCH_CLASSES = NUM_PITCHES + 1  # 129 with the start token

# -- time and velocity --------------------------------------------------------------------
TIME_MIN, TIME_MAX = 0.0, 10.0  # seconds; the model's time support
TIME_RES = 0.01  # 10 ms bins in the time likelihood
VEL_MIN, VEL_MAX = 0.0, 127.0
VEL_RES = 1.0
NOTE_ON_MIN_VEL = 0.5  # a continuous velocity below this is a note-off
MIDI_VEL_MIN, MIDI_VEL_MAX = 1, 127  # a MIDI note-on's velocity range


def note_on_velocity(vel: float) -> int:
    """A velocity as a MIDI note-on velocity: rounded (half to even) and clamped to 1..127.

    For a value known to be a note-on (a played note, a voice's velocity); use
    :func:`midi_velocity` where the value may be a note-off."""
    return min(MIDI_VEL_MAX, max(MIDI_VEL_MIN, int(round(vel))))


def midi_velocity(vel: float) -> int:
    """A model velocity as a MIDI velocity: 0 for a note-off (below
    :data:`NOTE_ON_MIN_VEL`), else :func:`note_on_velocity`. The one clamp that every
    path from a sampled event to MIDI uses, so they all agree on the edges."""
    return 0 if vel < NOTE_ON_MIN_VEL else note_on_velocity(vel)


def midi_velocities(vel: np.ndarray) -> np.ndarray:
    """:func:`midi_velocity` of an array (floats, same rounding and clamp)."""
    vel = np.asarray(vel)
    return np.where(vel >= NOTE_ON_MIN_VEL, np.clip(np.rint(vel), MIDI_VEL_MIN, MIDI_VEL_MAX), 0)


class Event(NamedTuple):
    """One event: instrument id, pitch, delta time in seconds, velocity (0 = note-off)."""

    inst: int
    pitch: int
    time: float
    vel: float

    @property
    def is_note_on(self) -> bool:
        return self.vel >= NOTE_ON_MIN_VEL

    @property
    def is_note_off(self) -> bool:
        return not self.is_note_on


START_EVENT = Event(START_INST, START_PITCH, 0.0, 0.0)


# -- predicates (scalars or numpy arrays) -------------------------------------------------
def is_drum(inst):
    """True for drum kits, named (129..256) or anonymous (289..320). Works on arrays."""
    inst = np.asarray(inst) if not isinstance(inst, (int, np.integer)) else inst
    return ((inst >= FIRST_DRUM) & (inst <= LAST_DRUM)) | (inst >= FIRST_ANON_DRUM)


def is_anonymous(inst):
    """True for the anonymous melodic and drum ids (257..320). Works on arrays."""
    inst = np.asarray(inst) if not isinstance(inst, (int, np.integer)) else inst
    return inst >= FIRST_ANON


def is_melodic(inst):
    """True for melodic instruments, named or anonymous. Works on arrays."""
    inst = np.asarray(inst) if not isinstance(inst, (int, np.integer)) else inst
    return (inst >= FIRST_MELODIC) & ~is_drum(inst)


def is_valid_instrument(inst: int) -> bool:
    """True for a real (non-start) instrument id."""
    return FIRST_MELODIC <= int(inst) <= NUM_INSTRUMENTS


# -- conversions --------------------------------------------------------------------------
def instrument_from_program(program: int, drum: bool = False) -> int:
    """Instrument id of a 0-based MIDI program, on the drum channel or not."""
    if not 0 <= program < N_GM:
        raise ValueError(f"program must be in 0..127, got {program}")
    return program + (FIRST_DRUM if drum else FIRST_MELODIC)


def program_of(inst: int) -> int | None:
    """0-based GM program of a named instrument id; None for anonymous ids and start."""
    inst = int(inst)
    if FIRST_MELODIC <= inst <= LAST_MELODIC:
        return inst - FIRST_MELODIC
    if FIRST_DRUM <= inst <= LAST_DRUM:
        return inst - FIRST_DRUM
    return None


def anonymous_melodic(k: int) -> int:
    """The k-th anonymous melodic id (k in 0..31)."""
    if not 0 <= k < N_ANON:
        raise ValueError(f"anonymous slot must be in 0..{N_ANON - 1}, got {k}")
    return FIRST_ANON + k


def anonymous_drum(k: int) -> int:
    """The k-th anonymous drum-kit id (k in 0..31)."""
    if not 0 <= k < N_ANON:
        raise ValueError(f"anonymous slot must be in 0..{N_ANON - 1}, got {k}")
    return FIRST_ANON_DRUM + k


def anonymous_like(inst: int) -> range:
    """The anonymous ids of the same kind (melodic or drum) as ``inst``."""
    if is_drum(inst):
        return range(FIRST_ANON_DRUM, LAST_ANON_DRUM + 1)
    return range(FIRST_ANON, LAST_ANON + 1)


# -- names --------------------------------------------------------------------------------
def instrument_name(inst: int) -> str:
    """Human-readable name of an instrument id."""
    inst = int(inst)
    if inst == START_INST:
        return "start"
    if FIRST_MELODIC <= inst <= LAST_MELODIC:
        return PROGRAM_NAMES[inst - FIRST_MELODIC]
    if FIRST_DRUM <= inst <= LAST_DRUM:
        return drum_kit_name(inst - FIRST_DRUM)
    if FIRST_ANON <= inst <= LAST_ANON:
        return f"Anonymous {inst - FIRST_ANON + 1}"
    if FIRST_ANON_DRUM <= inst <= LAST_ANON_DRUM:
        return f"Anonymous Drums {inst - FIRST_ANON_DRUM + 1}"
    raise ValueError(f"instrument id must be in 0..{NUM_INSTRUMENTS}, got {inst}")


def _normalise(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def parse_instrument(spec: str | int) -> int:
    """Instrument id from a number or a name.

    Accepts an id (``"41"`` or ``41``), a GM program name or unique prefix
    (``"violin"``, ``"acoustic grand"``), a drum-kit name (``"standard kit"``, ``"jazz kit"``),
    a GM family name (``"piano"``, ``"guitar"``, ``"bass"``: its first program),
    ``"drums"`` (standard kit), ``"anon"``/``"anon3"`` and ``"anondrums"``/``"anondrums2"``.
    Raises ``ValueError`` naming the unknown spec.
    """
    if isinstance(spec, (int, np.integer)):
        if not is_valid_instrument(int(spec)):
            raise ValueError(f"instrument id must be in 1..{NUM_INSTRUMENTS}, got {spec}")
        return int(spec)
    text = spec.strip()
    if text.lstrip("-").isdigit():
        return parse_instrument(int(text))
    key = _normalise(text)
    if key in ("drums", "drum", "drumkit", "kit", "percussion"):
        return STANDARD_KIT
    for prefix, first in (("anondrums", FIRST_ANON_DRUM), ("anon", FIRST_ANON)):
        if key.startswith(prefix) and (key[len(prefix):].isdigit() or key == prefix):
            k = int(key[len(prefix):] or 1) - 1
            if not 0 <= k < N_ANON:
                raise ValueError(f"unknown instrument {spec!r}: anonymous slots are 1..{N_ANON}")
            return first + k
    candidates: dict[str, int] = {}
    for program, name in enumerate(PROGRAM_NAMES):
        candidates[_normalise(name)] = FIRST_MELODIC + program
    for program, name in DRUM_KIT_NAMES.items():
        candidates[_normalise(name)] = FIRST_DRUM + program
    if key in candidates:
        return candidates[key]
    families = {_normalise(name): FIRST_MELODIC + 8 * k for k, name in enumerate(FAMILY_NAMES)}
    if key in families:  # "piano", "guitar", "bass", "strings": the family's first program
        return families[key]
    matches = sorted({v for k, v in candidates.items() if k.startswith(key)})
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(f"unknown instrument {spec!r}: not an id 1..320 or a GM name")
    names = ", ".join(instrument_name(m) for m in matches[:6])
    raise ValueError(f"ambiguous instrument {spec!r}: could be {names}")


# -- a whole piece as arrays --------------------------------------------------------------
class EventArrays(NamedTuple):
    """A piece as parallel numpy arrays with **absolute** times in seconds.

    ``inst`` int16, ``pitch`` int16, ``time`` float64 (seconds from the start), ``vel``
    int16 (0 = note-off). This is what MIDI ingest produces, what preprocessing stores,
    and what augmentation works on before converting to delta times.
    """

    inst: np.ndarray
    pitch: np.ndarray
    time: np.ndarray
    vel: np.ndarray

    @classmethod
    def empty(cls) -> EventArrays:
        return cls.build([], [], [], [])

    @classmethod
    def build(cls, inst, pitch, time, vel) -> EventArrays:
        """Make arrays of the canonical dtypes from any sequences."""
        return cls(
            np.asarray(inst, dtype=np.int16),
            np.asarray(pitch, dtype=np.int16),
            np.asarray(time, dtype=np.float64),
            np.asarray(vel, dtype=np.int16),
        )

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.inst.shape[0])

    @property
    def duration(self) -> float:
        return float(self.time[-1]) if len(self) else 0.0

    def sorted(self) -> EventArrays:
        """Deterministic order: by time, note-offs before note-ons, then instrument, pitch."""
        order = np.lexsort((self.pitch, self.inst, self.vel > 0, self.time))
        return EventArrays(*(a[order] for a in self))

    def deltas(self) -> np.ndarray:
        """Delta times in seconds; the first is the time of the first event."""
        return np.diff(self.time, prepend=0.0)

    def to_events(self) -> list[Event]:
        """The piece as a list of :class:`Event` with delta times."""
        return [
            Event(int(i), int(p), float(t), float(v))
            for i, p, t, v in zip(self.inst, self.pitch, self.deltas(), self.vel)
        ]

    @classmethod
    def from_events(cls, events) -> EventArrays:
        """Inverse of :meth:`to_events`: accumulate delta times into absolute times."""
        events = list(events)
        if not events:
            return cls.empty()
        inst, pitch, dt, vel = zip(*events)
        return cls.build(inst, pitch, np.cumsum(np.asarray(dt, dtype=np.float64)), vel)
