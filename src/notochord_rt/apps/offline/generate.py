"""Offline generation: sample a piece from a model, optionally continuing a prompt.

:func:`generate` runs the plain sampling loop of the inference API — ``sample`` under
:class:`~notochord_rt.engine.sampling.constraints.Constraints`, then ``feed`` what was sampled —
until a length in seconds of music or in events is reached, and returns the whole piece
(prompt + continuation) as :class:`~notochord_rt.events.EventArrays` with absolute times.

Why the guards in :class:`GenerateOptions`: a random or weak model happily holds a note
for ever or stacks dozens of notes on one instrument. ``max_note_seconds`` (the sampler's
``max_duration`` guarantee) releases any note that sounds too long, ``max_polyphony``
caps the notes one instrument holds, ``max_total_polyphony`` the notes of all instruments
together (at the cap only note-offs may be sampled; 12 by default: with chords struck
together, ``chord_spread``, the model otherwise piles 15-note clusters across its
instruments, and one piece in 30 ran above 40 notes a second at 24), and ``max_gap`` is
a *soft* upper bound on the time between events so a piece does not fall silent for ten
seconds at a time. Notes still
sounding when generation stops are released at the end, so the output never has a stuck
note.

Instruments: without a prompt or an explicit list, any instrument may play: the named
ones (GM programs and drum kits) and the anonymous ones (``allow_anonymous``, the
default). Anonymous ids carry the corpus's scores without a GM program (folk tunes,
chorales: most of its pieces); leaving them out left the model only its band music and
pieces far busier than the test split (docs/model-card.md). They have no sound of their
own: written without a program change, a GM synth plays them as piano. Once
``max_instruments`` different instruments have played, only those may start notes — a
weak model otherwise spreads a piece over dozens of instruments.

Prompting: the prompt (events from :func:`notochord_rt.midi.ingest.load_midi`) is fed
event by event, then sampling continues from the prompt's last event, by default with the
prompt's own instruments (``instruments`` overrides that).

Tempo and grid: with ``bpm``, ``grid`` (``"1/16"``, ``"1/8t"`` ...), ``swing`` and
``grid_strength`` (1 = hard) every event time is sampled on the beat grid by the
sampler's grid constraint (:mod:`notochord_rt.engine.sampling.grid`; nothing is moved
afterwards). Beat 0 is the start of the piece (of the prompt, when there is one); write
the file with ``tempo_bpm=options.bpm`` so a DAW shows the same bars.

Nothing here prints; progress is reported through the ``progress`` callback.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time as _time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ... import events as ev
from ...errors import InputError, NoPossibleEvents
from ..musical import DEFAULTS, RAW, InstrumentBalance, melodic_min_durations
from ..steering import steer_window, steering_fields

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, float], None]
"""``progress(events_so_far, music_seconds_so_far)``, called after every generated event."""

DRUM_MAX_NOTE_SECONDS = 1.0
"""Drum notes are released after at most this long (their length makes no sound in GM,
but held drum notes would count against the polyphony caps)."""

RELEASE_TAIL = 0.5
"""Seconds after the last event at which notes still held are released (``events`` mode)."""


@dataclass
class GenerateOptions:
    """What to generate and how.

    Length: ``seconds`` of music after the prompt, or ``events`` generated events (if
    both are given, whichever comes first). ``instruments`` restricts which instruments
    may start notes (``None``: the prompt's instruments if there is a prompt, else every
    instrument, the anonymous ones only if ``allow_anonymous``, the default);
    ``max_instruments`` caps how many different instruments that free choice uses.
    Temperatures follow :class:`~notochord_rt.engine.sampling.constraints.Constraints`
    (``<= 1`` nucleus, ``> 1`` temperature). Steering values are in [0, 1] (0.5 = none):
    ``steer_pitch`` high → higher pitches, ``steer_rate`` high → shorter gaps (more
    events), ``steer_velocity`` high → louder, ``steer_density`` high → more note-ons
    relative to note-offs (more simultaneous notes).

    Musical defaults (:mod:`.musical`): temperatures, ``steer_density`` (notes end a little
    sooner than the raw model ends them), ``min_duration`` (seconds, melodic
    notes; a soft limit) and ``balance`` (instrument weights steered against the running
    share of note-ons, so that no instrument takes over and every named one is heard)
    default to :data:`~.musical.DEFAULTS`; :meth:`raw` samples the model as it is.

    Tempo (see the module doc): ``bpm`` (free time when ``None``), ``grid``, ``swing``
    (0..1), ``grid_strength`` (0..1, 1 = hard) and ``beats_per_bar``, checked as the
    :class:`~notochord_rt.engine.sampling.constraints.Constraints` fields of those names.
    """

    seconds: float | None = 30.0
    events: int | None = None
    seed: int | None = None
    instruments: list[int] | None = None
    allow_anonymous: bool = True
    max_instruments: int | None = 6
    pitch_temp: float = DEFAULTS.pitch_temp
    rhythm_temp: float = 1.0
    timing_temp: float = 1.0
    inst_temp: float = DEFAULTS.inst_temp
    vel_temp: float = DEFAULTS.vel_temp
    pulse_weight: float = DEFAULTS.pulse_weight
    motif_weight: float = DEFAULTS.motif_weight
    chord_spread: float = DEFAULTS.chord_spread
    max_stuck: int = DEFAULTS.max_stuck
    min_duration: float = DEFAULTS.min_duration
    balance: bool = DEFAULTS.balance
    steer_density: float = DEFAULTS.density
    steer_pitch: float | None = None
    steer_rate: float | None = None
    steer_velocity: float | None = None
    max_note_seconds: float = 5.0
    max_polyphony: int = 8
    max_total_polyphony: int = 12
    max_gap: float = 3.0
    order: str | None = None
    bpm: float | None = None
    grid: str | None = None
    swing: float = 0.0
    grid_strength: float = 1.0
    beats_per_bar: int = 4

    @classmethod
    def raw(cls, **values) -> GenerateOptions:
        """Options that sample the model as it is (no musical defaults), with ``values``."""
        base = dict(pitch_temp=RAW.pitch_temp, inst_temp=RAW.inst_temp,
                    vel_temp=RAW.vel_temp, **RAW.shaping(),
                    min_duration=RAW.min_duration, balance=RAW.balance,
                    steer_density=RAW.density)
        return cls(**{**base, **values})

    def validate(self) -> GenerateOptions:
        """Raise :class:`InputError` naming the first bad option; return ``self``."""
        if self.seconds is None and self.events is None:
            raise InputError("give a length: seconds or events")
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise InputError(f"seconds must be a number > 0, got {self.seconds!r}")
        if self.events is not None and (not isinstance(self.events, int) or self.events < 1):
            raise InputError(f"events must be an integer >= 1, got {self.events!r}")
        if not (math.isfinite(self.max_note_seconds) and self.max_note_seconds > 0):
            raise InputError(f"max_note_seconds must be > 0, got {self.max_note_seconds!r}")
        if not (isinstance(self.max_polyphony, int) and self.max_polyphony >= 1):
            raise InputError(f"max_polyphony must be an integer >= 1, got {self.max_polyphony!r}")
        if not (isinstance(self.max_total_polyphony, int) and self.max_total_polyphony >= 1):
            raise InputError("max_total_polyphony must be an integer >= 1, got "
                             f"{self.max_total_polyphony!r}")
        if self.max_instruments is not None and not (
                isinstance(self.max_instruments, int) and self.max_instruments >= 1):
            raise InputError(f"max_instruments must be an integer >= 1, got "
                             f"{self.max_instruments!r}")
        if not (self.max_gap > 0):
            raise InputError(f"max_gap must be > 0, got {self.max_gap!r}")
        if not (isinstance(self.min_duration, (int, float))
                and 0 <= self.min_duration < self.max_note_seconds):
            raise InputError("min_duration must be >= 0 and below max_note_seconds, got "
                             f"{self.min_duration!r}")
        if self.instruments is not None:
            if not self.instruments:
                raise InputError("instruments must not be empty (None means any)")
            for i in self.instruments:
                if not ev.is_valid_instrument(i):
                    raise InputError(f"instrument ids are 1..{ev.NUM_INSTRUMENTS}, got {i!r}")
        for name in ("steer_pitch", "steer_rate", "steer_velocity"):
            steer_window(getattr(self, name))
        return self


@dataclass
class Generated:
    """The result of :func:`generate`.

    ``events``: the whole piece, prompt first, absolute seconds, every note released.
    It is in time order but not re-sorted: the sampled order is kept at equal times, so a
    note-on sampled just before its own note-off (a zero-length note) stays paired.
    ``prompt_events`` / ``prompt_end``: how many of the events (and seconds) came from
    the prompt; the continuation starts at ``prompt_end``. ``released_at_end``
    counts the note-offs appended for notes still held when generation stopped.
    ``stopped`` says why generation stopped (``"seconds"``, ``"events"`` or the reason it
    could not go on). ``wall_seconds`` is the time the sampling loop took.
    """

    events: ev.EventArrays
    prompt_events: int = 0
    prompt_end: float = 0.0
    generated: int = 0
    released_at_end: int = 0
    forced: int = 0
    stopped: str = ""
    wall_seconds: float = 0.0
    instruments: list[int] = field(default_factory=list)
    """The instruments that started notes in the generated part."""

    @property
    def music_seconds(self) -> float:
        """Seconds of music generated after the prompt."""
        return max(0.0, self.events.duration - self.prompt_end)


def build_constraints(options: GenerateOptions, instruments: Iterable[int] | None,
                      release_only: bool = False):
    """The :class:`Constraints` used for every step of a generation (see the module doc).

    ``release_only``: the variant used at the total polyphony cap (note-offs only).
    """
    from ...engine.sampling.constraints import Constraints

    on_map = None
    if instruments is not None:
        on_map = {int(i): range(ev.NUM_PITCHES) for i in sorted(set(instruments))}
    off_map = np.zeros((ev.N_INST_CLASSES, ev.N_PITCH_CLASSES), dtype=bool)
    off_map[ev.FIRST_MELODIC:, : ev.NUM_PITCHES] = True  # any held note may end
    return Constraints(
        note_on_map=on_map,
        note_off_map=off_map,
        max_time=float(options.max_gap),
        max_polyphony=int(options.max_polyphony),
        max_duration=_max_durations(options.max_note_seconds),
        min_duration=melodic_min_durations(options.min_duration),
        inst_temp=options.inst_temp,
        pitch_temp=options.pitch_temp,
        rhythm_temp=options.rhythm_temp,
        timing_temp=options.timing_temp,
        vel_temp=options.vel_temp,
        pulse_weight=options.pulse_weight,
        motif_weight=options.motif_weight,
        chord_spread=options.chord_spread,
        max_stuck=options.max_stuck,
        steer_density=options.steer_density,
        **steering_fields(options.steer_pitch, options.steer_rate, options.steer_velocity),
        order=options.order,
        vel=0.0 if release_only else None,
        bpm=options.bpm, grid=options.grid, swing=options.swing,
        grid_strength=options.grid_strength, beats_per_bar=options.beats_per_bar,
    ).validate()


def _max_durations(seconds: float) -> dict[int, float]:
    drums = min(float(seconds), DRUM_MAX_NOTE_SECONDS)
    out = {i: float(seconds) for i in range(ev.FIRST_MELODIC, ev.NUM_INSTRUMENTS + 1)}
    out.update((i, drums) for i in out if ev.is_drum(i))
    return out


def feed_prompt(model: Any, prompt: ev.EventArrays,
                progress: Callable[[int], None] | None = None, every: int = 64) -> None:
    """Feed a (sorted, absolute-time) piece to ``model`` event by event: the one prompt
    feeding loop of the apps (``generate``, ``play --prompt``).

    Delta times are taken from the absolute times and clipped at 0 (ties after sorting).
    ``progress(n)`` is called with the number of events fed so far, every ``every``
    events and once at the end (never twice with the same ``n``).
    """
    n = 0
    for n, (i, p, dt, v) in enumerate(zip(prompt.inst.tolist(), prompt.pitch.tolist(),
                                          prompt.deltas().tolist(), prompt.vel.tolist()), 1):
        model.feed(i, p, max(0.0, dt), v)
        if progress is not None and n % every == 0:
            progress(n)
    if progress is not None and (n == 0 or n % every):
        progress(n)


def _note_vel(v: float) -> int:
    """A sampled velocity as a MIDI velocity: note-ons are 1..127, note-offs 0."""
    return ev.midi_velocity(v)


def generate(model, options: GenerateOptions, prompt: ev.EventArrays | None = None,
             progress: ProgressFn | None = None,
             prompt_progress: Callable[[int], None] | None = None) -> Generated:
    """Generate a piece with ``model`` (a :class:`~notochord_rt.engine.sampling.sampler.Notochord`).

    The model is reset (seeded with ``options.seed``), the prompt fed, then events are
    sampled and fed until the length is reached. An event that would start after
    ``prompt_end + seconds`` is not kept. If the constraints cannot be met
    (:class:`NoPossibleEvents`), generation stops there with the reason in
    ``Generated.stopped`` instead of failing. ``progress`` / ``prompt_progress`` report
    generated events (and music seconds) and prompt events fed.
    """
    options.validate()
    prompt = ev.EventArrays.empty() if prompt is None else prompt.sorted()
    palette = _Palette(options, prompt)

    model.reset(seed=options.seed)
    feed_prompt(model, prompt, prompt_progress)
    prompt_end = prompt.duration
    end_time = prompt_end + options.seconds if options.seconds is not None else math.inf
    max_events = options.events if options.events is not None else math.inf

    rows: list[tuple[int, int, float, int]] = []
    now = prompt_end
    forced = 0
    stopped = "events" if options.events is not None else "seconds"
    t0 = _time.perf_counter()
    while len(rows) < max_events:
        full = len(model.held_notes) >= options.max_total_polyphony
        try:
            e = model.sample(palette.release_only if full else palette.balanced())
        except NoPossibleEvents as err:
            stopped = f"no possible event: {err}"
            log.warning("generation stopped early after %d events: %s", len(rows), err)
            break
        if now + e.time > end_time:
            stopped = "seconds"
            break
        model.feed(e.inst, e.pitch, e.time, e.vel)
        now += e.time
        forced += e.forced is not None
        if e.vel >= ev.NOTE_ON_MIN_VEL:
            palette.played(e.inst)
        rows.append((e.inst, e.pitch, now, _note_vel(e.vel)))
        if progress is not None:
            progress(len(rows), now - prompt_end)
    wall = _time.perf_counter() - t0

    release_at = end_time if math.isfinite(end_time) else now + RELEASE_TAIL
    held = sorted(model.held_notes)
    rows.extend((i, p, release_at, 0) for i, p in held)
    new = ev.EventArrays.build(*zip(*rows)) if rows else ev.EventArrays.empty()
    piece = ev.EventArrays(*(np.concatenate([a, b]) for a, b in zip(prompt, new)))
    return Generated(
        events=piece, prompt_events=len(prompt), prompt_end=prompt_end,
        generated=len(rows) - len(held), released_at_end=len(held), forced=forced,
        stopped=stopped, wall_seconds=wall,
        instruments=sorted(palette.used))


def _balance(options: GenerateOptions, prompt: ev.EventArrays) -> InstrumentBalance:
    """Equal shares for named instruments; a prompt's own shares for its continuation."""
    if options.instruments is not None:
        return InstrumentBalance(options.instruments)
    ons = prompt.inst[prompt.vel > 0]
    if not len(ons):
        return InstrumentBalance()
    ids, counts = np.unique(ons, return_counts=True)
    balance = InstrumentBalance({int(i): float(c) for i, c in zip(ids, counts)})
    for i in ons[-256:].tolist():  # start from the prompt's recent history
        balance.played(i)
    return balance


class _Palette:
    """The instruments that may start notes, and the compiled constraints for them."""

    def __init__(self, options: GenerateOptions, prompt: ev.EventArrays) -> None:
        self.options = options
        insts = options.instruments
        if insts is None and len(prompt):
            insts = sorted({int(i) for i in np.unique(prompt.inst)})
        elif insts is None and not options.allow_anonymous:
            insts = list(range(ev.FIRST_MELODIC, ev.LAST_DRUM + 1))
        self.allowed = insts
        self.capped = options.instruments is None and not len(prompt)  # not chosen by hand
        self.used: set[int] = set()
        self.balance = _balance(options, prompt) if options.balance else None
        self._balanced = None
        self._compile(insts)

    def _compile(self, insts: list[int] | None) -> None:
        from ...engine.sampling.support import compile_constraints

        self.comp = compile_constraints(build_constraints(self.options, insts))
        self.release_only = compile_constraints(
            build_constraints(self.options, insts, release_only=True))
        self._balanced = None

    def balanced(self):
        """``comp`` with the instrument balance's current weights (cached until a note-on)."""
        if self.balance is None:
            return self.comp
        if self._balanced is None:
            lw = self.balance.log_weights()
            self._balanced = self.comp if lw is None else dataclasses.replace(
                self.comp, inst_log_weights=lw)
        return self._balanced

    def played(self, inst: int) -> None:
        """Note an instrument's note-on; at the instrument cap, keep only the ones used."""
        if self.balance is not None:
            self.balance.played(inst)
            self._balanced = None
        if inst in self.used:
            return
        self.used.add(inst)
        cap = self.options.max_instruments
        if self.capped and cap is not None and len(self.used) >= cap and (
                self.allowed is None or len(self.allowed) > len(self.used)):
            self.allowed = sorted(self.used)
            self._compile(self.allowed)
            log.debug("instrument cap reached: only %s from now on", self.allowed)
