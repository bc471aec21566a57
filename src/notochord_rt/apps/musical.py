"""Musical defaults of the apps, in one place, and the instrument balance.

The model's raw distribution is what it learned; what a listener hears also depends on
how it is sampled. The figures below were chosen with ``notochord-rt stats`` against the
test split of the project corpus (``docs/model-card.md`` has the table and the commands):

* ``min_duration``: melodic notes shorter than this are avoided (a soft constraint: a
  note-off younger than this is only sampled when nothing else can happen). Without it a
  small model plays swarms of near-zero-length notes, which sound like clicks.
* ``pitch_temp`` / ``inst_temp``: nucleus (top-p) truncation of the pitch and instrument
  distributions. The tails of a small model's pitch distribution are mostly out-of-key
  notes; cutting them keeps the key, and with a model that copies motifs
  (:mod:`~notochord_rt.model.motif`) a pitch top-p of 0.5 lets the riffs it starts come
  back (repeated 4-note figures 0.06 -> 0.32 of the test split's 0.77, notes in key 0.86
  -> 0.96 of its 0.96; docs/model-card.md).
* ``vel_temp``: narrower velocity components (less random loudness).
* ``harmony_pitch_temp``: the harmonizer's voices answer a melody, where a wrong note is
  heard at once, so they are truncated at least as hard (top-p 0.7 -> 0.5 took the voice
  notes in key from 0.78 to 0.83 on 13 test pieces with the current model).
* ``pulse_weight``: the odds of the model's own pulse components (the next lines of the
  grid it tracks through the music, :mod:`~notochord_rt.model.grid_track`) against its
  free time components, x3. Nothing is imposed or moved; the model keeps the pulse it
  has been playing more firmly: onsets on the best 16th grid 0.80 -> 0.86 (test split
  0.97), continuations on the prompt's grid 0.44 -> 0.57 (docs/model-card.md).
* ``motif_weight``: the odds of every pitch the model's motif copying proposes for the
  instrument (its recent pitches, what followed their earlier occurrences), x3. Nothing
  is copied: the candidates and their gates are the model's own; its riffs come back
  more often: repeated 4-note figures 0.30 -> 0.38 alone (test split 0.77).
* ``chord_spread``: the width of the time components the model places within 10 ms of
  the previous event (its "now": chord notes, a note-off and the next note-on) x0.1.
  The model learned the humanised spread of its training songs (chord notes up to
  ~30 ms apart); sampled as is, every smeared chord is a cluster of onsets off the
  grid, and a continuation loses the prompt's grid. Weights are unchanged (as often
  "now" as before), only tighter: continuations on the prompt's grid 0.57 -> 0.65 with
  the motif weight and ``generate``'s cap of 12 notes sounding at once
  (docs/model-card.md).

* ``density``: ``generate``'s note-on/note-off balance (``Constraints.steer_density``),
  0.3: the odds of ending a held note against starting one x1.74. Sampled as is, the
  model ends its notes late: free-running pieces held a median of 5.8 melodic notes at
  a time (test split 1.2) with notes twice as long (median 0.51 s against 0.25); at 0.3,
  with the instrument balance's band rule below, 2.7 and 0.39 s, repeated 4-note figures
  0.52 -> 0.67 and mean feature overlap 0.59 -> 0.63 (docs/model-card.md). The live
  apps keep 0.5 as the centre of their density control.

* ``max_stuck``: the stuck-pitch guard (:mod:`~notochord_rt.engine.sampling.variety`):
  a melodic instrument plays at most 16 note-ons in a row on one or two pitches, 32 on
  three. With the truncation and the motif weight, solo lines otherwise fell into
  two-pitch loops of hundreds of notes; 95 % of the training split's melodic parts never
  reach these limits (docs/model-card.md).

Every app takes ``--raw`` to sample the model as it is (all of these at 1 / 0, and no
instrument balance), which is what evaluations of the model itself should use.

:class:`InstrumentBalance` keeps every instrument that was asked for audible and stops
any one instrument (drums included) from taking over a free-running ensemble, while a
free-running piece keeps the band its first note-ons set (a solo stays a solo; late
arrivals are rare): it tracks the recent share of note-ons of each instrument and gives
the sampler per-instrument weights that pull those shares toward fair ones. It only
re-weights the model's own choice of instrument; pitch, timing and velocity are
untouched.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .. import events as ev
from ..errors import InputError


@dataclass(frozen=True)
class MusicalDefaults:
    """Sampling settings the apps use unless told otherwise (see the module doc)."""

    min_duration: float = 0.05
    """Seconds; melodic notes only (drum notes have no audible length)."""
    pitch_temp: float = 0.5
    inst_temp: float = 0.95
    vel_temp: float = 0.5
    harmony_pitch_temp: float = 0.5
    pulse_weight: float = 3.0
    """Multiplies the weight of the model's pulse components (``Constraints.pulse_weight``:
    the model keeps the pulse it tracks through the music more firmly)."""
    motif_weight: float = 3.0
    """Multiplies the odds of the pitches the model's motif copying proposes
    (``Constraints.motif_weight``: its riffs and figures come back more often), inside
    the pitch top-p's nucleus of the model's own distribution."""
    chord_spread: float = 0.1
    """Multiplies the width of the model's time components for notes it plays together
    (``Constraints.chord_spread``: chords struck together rather than smeared)."""
    max_stuck: int = 16
    """Note-ons a melodic instrument may play in a row on one or two pitches (twice as
    many on three: ``Constraints.max_stuck``, the stuck-pitch guard)."""
    density: float = 0.3
    """``generate``'s ``steer_density`` (0.5 = none): the odds of a note-off against a
    note-on x1.74, so notes end about as soon as in the music the model learned from."""
    balance: bool = True
    """Steer instrument weights against the running share (:class:`InstrumentBalance`)."""

    @classmethod
    def raw(cls) -> MusicalDefaults:
        """The model as it is: no truncation, no minimum duration, no balance."""
        return cls(min_duration=0.0, pitch_temp=1.0, inst_temp=1.0, vel_temp=1.0,
                   harmony_pitch_temp=1.0, pulse_weight=1.0, motif_weight=1.0,
                   chord_spread=1.0, max_stuck=0, density=0.5, balance=False)

    def shaping(self) -> dict[str, float]:
        """The :class:`Constraints` fields that re-weight the model's own pulse, motif
        and "now" components and guard against stuck pitches, as keyword arguments (one
        place for every app)."""
        return {"pulse_weight": self.pulse_weight, "motif_weight": self.motif_weight,
                "chord_spread": self.chord_spread, "max_stuck": self.max_stuck}

    def min_durations(self, insts: Iterable[int] | None = None) -> dict[int, float]:
        """``min_duration`` as a per-instrument map (see :func:`melodic_min_durations`)."""
        return melodic_min_durations(self.min_duration, insts)


SOLO_SHARE = 0.05
"""A melodic instrument with at least this recent share of note-ons is part of the
ensemble that :class:`InstrumentBalance` keeps from being taken over."""

_IDS = np.arange(ev.N_INST_CLASSES)
_REAL = _IDS > 0
"""Instrument ids, not the start token, as a ``(321,)`` mask."""
_DRUMS = ev.is_drum(_IDS) & _REAL
"""Drum-kit instrument ids (named and anonymous), as a ``(321,)`` mask."""
_MELODIC = _REAL & ~_DRUMS
"""Melodic instrument ids (named and anonymous), as a ``(321,)`` mask."""


def melodic_min_durations(seconds: float, insts: Iterable[int] | None = None
                          ) -> dict[int, float]:
    """A minimum note duration for the melodic ones of ``insts`` (default: every
    instrument id); drum notes have no audible length. Empty when ``seconds <= 0``."""
    if seconds <= 0:
        return {}
    ids = range(ev.FIRST_MELODIC, ev.NUM_INSTRUMENTS + 1) if insts is None else insts
    return {int(i): float(seconds) for i in ids if not _DRUMS[int(i)]}


DEFAULTS = MusicalDefaults()
RAW = MusicalDefaults.raw()


def defaults_for(raw: bool) -> MusicalDefaults:
    """:data:`RAW` when ``raw`` (the apps' ``--raw`` flag), else :data:`DEFAULTS`."""
    return RAW if raw else DEFAULTS


class InstrumentBalance:
    """Per-instrument sampling weights that keep the note-on shares fair.

    ``targets``: the instruments that should all be heard (e.g. the ones a user named):
    each gets an equal share of the note-ons, or the share given when ``targets`` maps
    instruments to shares (e.g. a prompt's own shares, so a continuation keeps its
    instrumentation). With no targets (free choice), the drum share is held near
    ``drum_share``, no single melodic instrument may take more than ``max_share`` of an
    ensemble (a solo, where one melodic instrument has all of the recent note-ons, stays
    a solo), and once the piece's first ``opening`` note-ons have set its band, an
    instrument not heard yet gets odds x ``newcomer_weight``: the model otherwise keeps
    bringing in instruments for a handful of notes each, and its pieces had a median of
    six instruments against the test split's one (docs/model-card.md). Shares are
    exponentially weighted over about
    ``memory`` recent note-ons, and a weight is ``(wanted / share) ** strength`` clipped
    to ``[1 / max_weight, max_weight]``: mild where the model already plays fairly,
    firm where one instrument crowds out the rest (a small model gives an instrument
    that does not fit its context odds of 1e-3 or less, and one that copies motifs
    below 1e-4 — a named cello stayed silent for 60 s under a clip of 1e3 — hence the
    wide clip). ``strength`` 3: at 1.5, with the steadier, sparser music of a model
    that keeps a pulse, a named cello played 8 notes a minute on average and one of five
    named instruments fell under 5 notes in a piece (docs/model-card.md).
    """

    def __init__(self, targets: Iterable[int] | Mapping[int, float] | None = None, *,
                 drum_share: float = 0.35,
                 max_share: float = 0.6, memory: int = 64, strength: float = 3.0,
                 max_weight: float = 1e5, newcomer_weight: float = 0.01,
                 opening: int = 12) -> None:
        if targets is None:
            targets = {}
        elif not isinstance(targets, Mapping):
            targets = dict.fromkeys(targets, 1.0)
        for i, w in targets.items():
            if not ev.is_valid_instrument(i):
                raise InputError(f"instrument ids are 1..{ev.NUM_INSTRUMENTS}, got {i!r}")
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
                raise InputError(f"the share of instrument {i} must be > 0, got {w!r}")
        total = float(sum(targets.values()))
        self.targets = sorted(int(i) for i in targets)
        self.wanted = np.array([targets[i] / total for i in self.targets])
        for name, value, lo, hi in (("drum_share", drum_share, 0.0, 1.0),
                                    ("max_share", max_share, 0.0, 1.0),
                                    ("strength", strength, 0.0, 10.0),
                                    ("newcomer_weight", newcomer_weight, 0.0, 1.0)):
            if not (isinstance(value, (int, float)) and lo < value <= hi):
                raise InputError(f"{name} must be in ({lo}, {hi}], got {value!r}")
        if not (isinstance(memory, int) and memory >= 1):
            raise InputError(f"memory must be an integer >= 1, got {memory!r}")
        if not (isinstance(opening, int) and opening >= 0):
            raise InputError(f"opening must be an integer >= 0, got {opening!r}")
        if not (isinstance(max_weight, (int, float)) and max_weight >= 1):
            raise InputError(f"max_weight must be >= 1, got {max_weight!r}")
        self.drum_share, self.max_share = float(drum_share), float(max_share)
        self.decay = 1.0 - 1.0 / memory
        self.strength, self.max_weight = float(strength), float(max_weight)
        self.newcomer_weight, self.opening = float(newcomer_weight), int(opening)
        self.counts = np.zeros(ev.N_INST_CLASSES)
        self.total = 0.0
        self.heard = np.zeros(ev.N_INST_CLASSES, dtype=bool)
        self.note_ons = 0

    def played(self, inst: int) -> None:
        """Count one note-on of ``inst`` (older note-ons fade)."""
        self.counts *= self.decay
        self.total = self.total * self.decay + 1.0
        self.counts[int(inst)] += 1.0
        self.heard[int(inst)] = True
        self.note_ons += 1

    def shares(self) -> np.ndarray:
        """The recent share of note-ons of each instrument id (sums to 1 once any played)."""
        return self.counts / self.total if self.total > 0 else self.counts.copy()

    def log_weights(self) -> np.ndarray | None:
        """``(321,)`` log weights for the sampler, or ``None`` while nothing is to correct.

        Nothing is corrected before a handful of note-ons, when shares mean little.
        """
        if self.total < 4.0:
            return None
        share = self.shares()
        lw = np.zeros(ev.N_INST_CLASSES)
        cap = math.log(self.max_weight)
        if self.targets:
            wanted, idx = self.wanted, np.asarray(self.targets)
            ratio = wanted / np.maximum(share[idx], wanted / self.max_weight)
            lw[idx] = self.strength * np.log(ratio)
        else:
            drum_total = float(share[_DRUMS].sum())
            if drum_total > self.drum_share:
                lw[_DRUMS] = self.strength * math.log(self.drum_share / drum_total)
            if np.count_nonzero(_MELODIC & (share >= SOLO_SHARE)) >= 2:  # an ensemble
                over = _MELODIC & (share > self.max_share)
                lw[over] = self.strength * np.log(self.max_share / share[over])
            if self.note_ons >= self.opening and self.newcomer_weight < 1.0:
                lw[~self.heard & _REAL] += math.log(self.newcomer_weight)
        np.clip(lw, -cap, cap, out=lw)
        return lw if np.any(lw) else None


BALANCE_MARGIN = 8
"""Note-ons an auto voice may lag behind the busiest one before it is favoured."""


def balance_weights(insts: Iterable[int], recent: Mapping[int, int],
                    margin: int = BALANCE_MARGIN) -> dict[int, float]:
    """Instrument weights that favour voices which have played less lately (as the
    reference's homunculus): ``e ** max(0, most - count - margin)`` where ``count`` is an
    instrument's recent note-ons and ``most`` the largest count. Weights of 1 are left out;
    an empty dict means no reweighting."""
    insts = list(insts)
    if len(insts) < 2:
        return {}
    counts = {i: int(recent.get(i, 0)) for i in insts}
    most = max(counts.values())
    return {i: math.exp(min(30, most - c - margin)) for i, c in counts.items()
            if most - c - margin > 0}


class VoiceBalance:
    """The recent note-ons of a few model voices and the :func:`balance_weights` that
    keep every voice heard (``improvise --voices 2=violin,3=cello``: without them one
    instrument may take most of the notes). ``window``: note-ons remembered."""

    def __init__(self, insts: Iterable[int], window: int = 32,
                 margin: int = BALANCE_MARGIN) -> None:
        self.insts = [int(i) for i in insts]
        self.margin = int(margin)
        self.recent: deque[int] = deque(maxlen=int(window))

    def weights(self) -> dict[int, float]:
        """``inst_weights`` for the next event's constraints (empty: no reweighting)."""
        return balance_weights(self.insts, Counter(self.recent), self.margin)

    def played(self, inst: int) -> bool:
        """Count a note-on of ``inst``; True when the weights changed (they change only
        when a lag passes the margin, so constraints are rebuilt only then)."""
        if int(inst) not in self.insts:
            return False
        before = self.weights()
        self.recent.append(int(inst))
        return self.weights() != before

    def clear(self) -> None:
        self.recent.clear()
