"""Training-time augmentation of a piece, or of a run of consecutive events of one.

Follows the reference (docs/design.md §5.3), vectorised with numpy over the events:

1. transpose melodic parts (never drums) by one uniform integer in ``±transpose``, limited so
   every melodic pitch stays in 0..127;
2. instrument remap: the anonymous ids get a random permutation of their 32 slots (melodic
   and drum kinds separately), and each named instrument becomes a fresh, unused anonymous
   id of its kind with probability ``anon_prob`` (all its events alike);
3. tempo: absolute times × (1 + U(−speed, speed));
4. timing jitter *after* tempo scaling: note-ons + U(0, jitter), note-offs − U(0, jitter).
   This is the current reference sign (models before May 2025 had it reversed, and
   jittered before scaling). We keep it because at a shared instant it puts a note's
   release before the next attack, the order a player hears. Times are clamped at 0 and a
   note-off is clamped to come strictly after its own note-on, so jitter never breaks a note;
5. velocity dequantisation: + U(−0.5, 0.5) for 0 < v < 127; note-ons stay ≥ 0.5;
6. random velocity curve for note-ons: (v − 0.5)/126.5 → x^γ, γ = 2^(N(0,1)·curve), back;
7. stable sort by time, note-offs first at equal times.

``aug_speed`` means what the reference *code* does (factor 1 ± speed), not its docstring.

Randomness comes in two parts so a window of a long piece can be augmented alone and still
give exactly the events that augmenting the whole piece would give there (see
:attr:`Augment.reorder_gap`): per-item choices (:class:`Draws`) and per-event uniforms taken
from a counter-based Philox stream keyed by the event's index in the piece. Transposition
limits and the set of instruments are those of the events given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import events as ev
from ..errors import InputError

_EVENT_DRAWS = 4  # uniforms per event in the Philox stream: jitter, dequantisation, 2 spare
_VEL_SPAN = ev.VEL_MAX - ev.NOTE_ON_MIN_VEL  # 126.5


@dataclass(frozen=True)
class Augment:
    """Which augmentations to apply, and how strongly; each is off at 0 / False."""

    transpose: int = 5
    """Largest transposition in semitones of melodic parts."""
    speed: float = 0.1
    """Tempo factor range: times × (1 + U(−speed, speed)); must be < 1."""
    remap: bool = True
    """Permute the anonymous slots and sometimes anonymise named instruments."""
    anon_prob: float = 0.1
    """Probability that a named instrument becomes anonymous (with ``remap``)."""
    jitter: float = 1e-3
    """Seconds of timing noise: note-ons later, note-offs earlier."""
    dequantize: bool = True
    """Add U(−0.5, 0.5) to velocities strictly between 0 and 127."""
    curve: float = 1 / 3
    """Standard deviation of log2(γ) of the random velocity curve."""

    def __post_init__(self) -> None:
        if not isinstance(self.transpose, (int, np.integer)) or not 0 <= self.transpose <= 127:
            raise InputError(
                f"Augment.transpose must be an integer in 0..127, got {self.transpose!r}")
        for name, lo, hi in (("speed", 0.0, 1.0), ("anon_prob", 0.0, 1.0 + 1e-12),
                             ("jitter", 0.0, 1.0), ("curve", 0.0, 10.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value < hi):
                raise InputError(f"Augment.{name} must be in [{lo}, {hi}), got {value!r}")

    @classmethod
    def none(cls) -> Augment:
        """Every augmentation switched off: the events come back unchanged."""
        return cls(transpose=0, speed=0.0, remap=False, jitter=0.0, dequantize=False, curve=0.0)

    @property
    def enabled(self) -> bool:
        """True if anything at all can change."""
        return bool(self.transpose or self.speed or self.remap or self.jitter
                    or self.dequantize or self.curve)

    @property
    def reorder_gap(self) -> float:
        """Events further apart than this (in seconds, before augmentation) never swap.

        After scaling by at least 1 − speed, two events can only change order if they were
        less than 2·jitter/(1 − speed) apart. A window whose edges lie in gaps wider than
        this sorts exactly as it would inside the whole piece.
        """
        return 2.0 * self.jitter / (1.0 - self.speed)

    def draw(self, rng: np.random.Generator) -> Draws:
        """The per-item random choices, always drawn in the same order."""
        key = rng.integers(0, 2**64, size=2, dtype=np.uint64)
        tempo = 1.0 + rng.uniform(-self.speed, self.speed) if self.speed else 1.0
        gamma = 2.0 ** (rng.standard_normal() * self.curve) if self.curve else 1.0
        perm_melodic = rng.permutation(ev.N_ANON)
        perm_drum = rng.permutation(ev.N_ANON)
        anon_u = rng.random(ev.N_INST_CLASSES)
        transpose_u = rng.random()
        return Draws(key, tempo, gamma, perm_melodic, perm_drum, anon_u, transpose_u)


@dataclass(frozen=True)
class Draws:
    """Random choices shared by all events of one item."""

    event_key: np.ndarray  # 2 × uint64 Philox key of the per-event stream
    tempo: float
    gamma: float
    perm_melodic: np.ndarray  # slot permutation of the anonymous melodic ids
    perm_drum: np.ndarray  # slot permutation of the anonymous drum ids
    anon_u: np.ndarray  # one uniform per instrument id: anonymise if < anon_prob
    transpose_u: float


class Augmented(NamedTuple):
    """Augmented events: int64 ids, float64 *absolute* seconds, float64 velocity (0 = off)."""

    inst: np.ndarray
    pitch: np.ndarray
    time: np.ndarray
    vel: np.ndarray


def as_augmented(piece: ev.EventArrays) -> Augmented:
    """The events unchanged, in the augmented dtypes."""
    return Augmented(piece.inst.astype(np.int64), piece.pitch.astype(np.int64),
                     piece.time.astype(np.float64), piece.vel.astype(np.float64))


def event_uniforms(key: np.ndarray, first: int, n: int) -> np.ndarray:
    """(n, 4) uniforms of events ``first .. first+n-1``: the same numbers for an event
    whether the whole piece or a window of it is augmented."""
    gen = np.random.Generator(np.random.Philox(key=key, counter=first))
    return gen.random(n * _EVENT_DRAWS).reshape(n, _EVENT_DRAWS)


def transpose_pitches(inst: np.ndarray, pitch: np.ndarray, limit: int, u: float) -> np.ndarray:
    """Shift melodic pitches by one integer uniform over the range that stays in 0..127."""
    melodic = ev.is_melodic(inst)
    if limit == 0 or not melodic.any():
        return pitch
    lowest, highest = int(pitch[melodic].min()), int(pitch[melodic].max())
    down = max(0, min(limit, lowest))
    up = max(0, min(limit, ev.NUM_PITCHES - 1 - highest))
    choices = up + down + 1
    shift = min(int(u * choices), choices - 1) - down
    return pitch + shift * melodic


def remap_instruments(inst: np.ndarray, draws: Draws, anon_prob: float) -> np.ndarray:
    """Permute anonymous slots and anonymise some named instruments, consistently per id.

    Works through a 321-entry lookup table, so the cost does not grow with the number of
    distinct instruments; anonymised named ids take the free slots in permuted order.
    """
    present = np.zeros(ev.N_INST_CLASSES, dtype=bool)
    present[inst] = True
    table = np.arange(ev.N_INST_CLASSES, dtype=inst.dtype)
    for first, last, named_lo, named_hi, perm in (
        (ev.FIRST_ANON, ev.LAST_ANON, ev.FIRST_MELODIC, ev.LAST_MELODIC, draws.perm_melodic),
        (ev.FIRST_ANON_DRUM, ev.LAST_ANON_DRUM, ev.FIRST_DRUM, ev.LAST_DRUM, draws.perm_drum),
    ):  # the two kinds, not a loop over events
        slots = first + perm
        table[first:last + 1] = slots
        taken = np.zeros(ev.N_INST_CLASSES, dtype=bool)
        taken[slots[present[first:last + 1]]] = True
        free = slots[~taken[slots]]
        named = slice(named_lo, named_hi + 1)
        chosen = named_lo + np.flatnonzero(present[named] & (draws.anon_u[named] < anon_prob))
        take = min(len(chosen), len(free))
        table[chosen[:take]] = free[:take]
    return table[inst]


def note_on_partners(inst: np.ndarray, pitch: np.ndarray, is_on: np.ndarray) -> np.ndarray:
    """For each note-off, the index of the note-on it ends (the previous event of the same
    instrument and pitch, if that is a note-on); -1 for note-ons and unmatched note-offs."""
    key = inst.astype(np.int64) * ev.N_PITCH_CLASSES + pitch
    order = np.argsort(key, kind="stable")
    partner = np.full(len(key), -1, dtype=np.int64)
    if len(key) < 2:
        return partner
    cur, prev = order[1:], order[:-1]
    match = (key[cur] == key[prev]) & is_on[prev] & ~is_on[cur]
    partner[cur[match]] = prev[match]
    return partner


def jitter_times(time: np.ndarray, is_on: np.ndarray, partner: np.ndarray, u: np.ndarray,
                 amount: float) -> np.ndarray:
    """Note-ons later and note-offs earlier by up to ``amount`` seconds, clamped at 0 and so
    that a note-off stays strictly after its own note-on."""
    out = np.maximum(time + np.where(is_on, u, -u) * amount, 0.0)
    paired = partner >= 0
    after_on = np.nextafter(out[partner[paired]], np.inf)
    out[paired] = np.maximum(out[paired], after_on)
    return out


def dequantize_velocity(vel: np.ndarray, is_on: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Add U(−0.5, 0.5) to velocities in (0, 127); note-ons stay ≥ 0.5, note-offs 0."""
    inner = (vel > 0) & (vel < ev.VEL_MAX)
    out = vel + (u - 0.5) * inner
    return np.where(is_on, np.clip(out, ev.NOTE_ON_MIN_VEL, ev.VEL_MAX), 0.0)


def curve_velocity(vel: np.ndarray, is_on: np.ndarray, gamma: float) -> np.ndarray:
    """Map note-on velocities through x ↦ x^γ on (v − 0.5)/126.5; note-offs untouched."""
    x = np.clip((vel - ev.NOTE_ON_MIN_VEL) / _VEL_SPAN, 0.0, 1.0)
    return np.where(is_on, x**gamma * _VEL_SPAN + ev.NOTE_ON_MIN_VEL, vel)


def sort_events(events: Augmented) -> Augmented:
    """Stable sort by time, note-offs before note-ons at equal times."""
    order = np.lexsort((events.vel >= ev.NOTE_ON_MIN_VEL, events.time))
    return Augmented(*(a[order] for a in events))


def apply(piece: ev.EventArrays, opts: Augment, draws: Draws, first: int = 0) -> Augmented:
    """Augment ``piece`` (or events ``first, first+1, ...`` of a longer piece) and sort it."""
    out = as_augmented(piece)
    n = len(piece)
    if not opts.enabled or n == 0:
        return out
    inst, pitch, time, vel = out
    is_on = piece.vel > 0
    u = event_uniforms(draws.event_key, first, n) if (opts.jitter or opts.dequantize) else None
    if opts.transpose:
        pitch = transpose_pitches(inst, pitch, opts.transpose, draws.transpose_u)
    if opts.remap:
        inst = remap_instruments(inst, draws, opts.anon_prob)
    if opts.speed:
        time = time * draws.tempo
    if opts.jitter:
        partner = note_on_partners(out.inst, out.pitch, is_on)
        time = jitter_times(time, is_on, partner, u[:, 0], opts.jitter)
    if opts.dequantize:
        vel = dequantize_velocity(vel, is_on, u[:, 1])
    if opts.curve:
        vel = curve_velocity(vel, is_on, draws.gamma)
    return sort_events(Augmented(inst, pitch, time, vel))
