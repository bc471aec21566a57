"""The harmonizer: a player's notes, plus notes the model adds in chosen voices.

One answer path for every model voice that answers a played note (docs/design.md §7):

* :func:`answer_constraints` is the one "answer this note" constraint builder: a note-on
  of the voice's instrument *now*, its pitch within the voice's offsets of the played
  pitch (and inside an absolute range), never the played pitch nor a pitch the voice's
  instrument already sounds, its velocity the player's clipped to the voice's range. The
  live harmonizer, ``notochord-rt harmonize`` on a file and ``play``'s follow voices all
  build their constraints here.
* :class:`HarmonyPolicy` is the harmonizer as a :class:`~.live.player_api.Policy` of the
  real-time player: each voice answers a played note-on through ``ctx.sample_now`` (sample
  now, send, feed), and the answers are released (``ctx.play_now``) with the played note.
  The player has already fed the played note and repaired contradictory input (a
  re-struck note is ended first; a note-off for a silent note is dropped).
* :func:`harmonize_piece` runs a whole MIDI piece through the same policy and the same
  :class:`~.live.player.Player`, synchronously on a virtual clock — the offline
  ``notochord-rt harmonize`` is the live harmonizer fed from a file.

:class:`HarmonyState` remembers which voice notes answer which played note;
:class:`PedalHold` keeps them sounding past the key-up while the player's sustain pedal
is down (``harmonize --live`` and ``play``'s follow voices).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import events as ev
from ..engine.sampling.constraints import Constraints
from ..errors import InputError
from .live.controls import sustain_inst
from .live.player import NoteIn, Player, PlayerConfig, PlayerContext, PlayerEvent, Policy
from .steering import steering_fields

log = logging.getLogger(__name__)

Note = tuple[int, int]
"""A sounding note as ``(inst, pitch)``."""


@dataclass(frozen=True)
class Voice:
    """One harmony voice: an instrument and a pitch range relative to the played note.

    ``lo``/``hi`` are semitones (inclusive), e.g. ``Voice(41, -12, -3)``: a violin note
    between an octave and a minor third below each played note.
    """

    inst: int
    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not ev.is_valid_instrument(self.inst):
            raise InputError(f"voice instrument must be in 1..{ev.NUM_INSTRUMENTS}, "
                             f"got {self.inst!r}")
        if not (isinstance(self.lo, int) and isinstance(self.hi, int)) or self.lo > self.hi:
            raise InputError(f"voice range must be integers lo <= hi, got {self.lo!r}..{self.hi!r}")

    @classmethod
    def parse(cls, spec: str) -> Voice:
        """``"INST:LO:HI"`` with INST a GM name or id (``"violin:-12:-3"``, ``"41:3:12"``).

        Raises ``ValueError`` naming what is wrong.
        """
        parts = spec.rsplit(":", 2)
        if len(parts) != 3:
            raise ValueError(f"voice {spec!r} must be INST:LO:HI (e.g. violin:-12:-3)")
        name, lo, hi = parts
        try:
            lo_i, hi_i = int(lo), int(hi)
        except ValueError:
            raise ValueError(f"voice {spec!r}: LO and HI must be integers (semitones)") from None
        if lo_i > hi_i:
            raise ValueError(f"voice {spec!r}: LO must not be above HI")
        inst = ev.parse_instrument(name)
        return cls(inst, lo_i, hi_i)

    def pitches(self, played: int) -> range:
        """The voice's range around ``played``, clipped to MIDI pitches."""
        return range(max(0, played + self.lo), min(ev.NUM_PITCHES - 1, played + self.hi) + 1)


def answer_constraints(inst: int, played: int, vel: int, sounding: Iterable[int], *,
                       offsets: tuple[int, int], pitch_range: tuple[int, int] = (0, 127),
                       vel_range: tuple[int, int] = (1, 127),
                       **fields: Any) -> Constraints | None:
    """The :class:`Constraints` of instrument ``inst``'s answer to a played note-on.

    A note-on now (``time=0``) whose pitch lies within ``offsets`` (semitones, inclusive)
    of ``played`` and inside ``pitch_range``, and is neither ``played`` nor one of the
    ``sounding`` pitches of ``inst``; velocity ``vel`` clipped to ``vel_range``;
    ``external={inst}`` so the answer never ends the player's notes. ``fields`` are further
    :class:`Constraints` fields (e.g. ``pitch_temp``, ``truncate_quantile_pitch``). None
    when no pitch is free.
    """
    lo = max(pitch_range[0], played + offsets[0], 0)
    hi = min(pitch_range[1], played + offsets[1], ev.NUM_PITCHES - 1)
    busy = set(sounding)
    busy.add(played)
    allowed = [p for p in range(lo, hi + 1) if p not in busy]
    if not allowed:
        return None
    v = min(vel_range[1], max(vel_range[0], ev.note_on_velocity(vel)))
    return Constraints(note_on_map={inst: allowed}, note_off_map={}, inst=inst, time=0.0,
                       vel=float(v), external={inst}, **fields)


class HarmonyState:
    """Which voice notes answer which played note (no model, no I/O).

    A voice note belongs to one parent at a time: attaching it again (the same pitch
    answering a later note) moves it.
    """

    def __init__(self) -> None:
        self._dependents: dict[Note, list[Note]] = {}
        self._owner: dict[Note, Note] = {}

    def attach(self, parent: Note, note: Note) -> None:
        """Record that voice ``note`` sounds because of the player's ``parent`` note."""
        parent, note = (int(parent[0]), int(parent[1])), (int(note[0]), int(note[1]))
        self.detach(note)
        self._dependents.setdefault(parent, []).append(note)
        self._owner[note] = parent

    def release(self, parent: Note) -> list[Note]:
        """Forget and return the voice notes of the player's ``parent`` note."""
        notes = self._dependents.pop((int(parent[0]), int(parent[1])), [])
        for n in notes:
            self._owner.pop(n, None)
        return notes

    def detach(self, note: Note) -> None:
        """Forget one voice note (released for another reason)."""
        parent = self._owner.pop(note, None)
        if parent is not None:
            deps = self._dependents.get(parent, [])
            if note in deps:
                deps.remove(note)
            if not deps:
                self._dependents.pop(parent, None)

    def dependents(self, parent: Note) -> list[Note]:
        """The voice notes sounding because of the player's ``parent`` note."""
        return list(self._dependents.get((int(parent[0]), int(parent[1])), ()))

    def voice_notes(self) -> list[Note]:
        """Every voice note, sorted."""
        return sorted(self._owner)

    def clear(self) -> None:
        self._dependents.clear()
        self._owner.clear()


class PedalHold:
    """The sustain pedal of each player instrument and the voice notes it holds.

    A policy hands over the answers of a key released while the pedal is down
    (:meth:`hold`) and ends them when the pedal lifts (:meth:`on_control` returns them).
    """

    def __init__(self) -> None:
        self.down: set[int] = set()
        self.held: dict[int, list[Note]] = {}

    def is_down(self, inst: int) -> bool:
        return int(inst) in self.down

    def hold(self, inst: int, notes: Iterable[Note]) -> None:
        """Keep ``notes`` sounding until the pedal of player instrument ``inst`` lifts."""
        self.held.setdefault(int(inst), []).extend(notes)

    def forget(self, note: Note) -> None:
        """``note`` answers a new played note now: the pedal no longer ends it."""
        for notes in self.held.values():
            if note in notes:
                notes.remove(note)

    def on_control(self, name: str, value: float) -> list[Note] | None:
        """Take a ``sustain:INST`` control (1 down, 0 up): the notes to end now (those
        held when the pedal lifts). None when ``name`` is not a pedal."""
        inst = sustain_inst(name)
        if inst is None:
            return None
        if value >= 0.5:
            self.down.add(inst)
            return []
        self.down.discard(inst)
        return self.held.pop(inst, [])

    def clear(self) -> None:
        self.held.clear()


class HarmonyPolicy(Policy):
    """Answer each played note-on with one note per :class:`Voice`, released with it (or,
    while that instrument's sustain pedal is down, when the pedal lifts).

    ``pitch_temp`` goes to the sampler (``<= 1`` nucleus, ``> 1`` temperature); ``parts``
    limits the instruments harmonized (None: all). Controls: ``mute`` toggles the answers
    (played notes are still fed as context); ``steer_pitch`` (0..1, 0.5 neutral) moves
    the answers' pitch window; ``pitch_temp`` (0..1) sets the top-p of the answers.
    """

    def __init__(self, voices: Sequence[Voice], *, pitch_temp: float = 1.0,
                 parts: Iterable[int] | None = None) -> None:
        self.voices = list(voices)
        self.pitch_temp = float(pitch_temp)
        self.steer_pitch = 0.5
        self.parts = None if parts is None else {int(p) for p in parts}
        self.state = HarmonyState()
        self.pedal = PedalHold()
        self.muted = False

    def on_input(self, ctx: PlayerContext, note: NoteIn) -> None:
        parent = (note.inst, note.pitch)
        if note.vel < 1:
            notes = self.state.release(parent)
            if self.pedal.is_down(note.inst):
                self.pedal.hold(note.inst, notes)
            else:
                self._end(ctx, notes)
            return
        if self.muted or (self.parts is not None and note.inst not in self.parts):
            return
        steer = {} if self.steer_pitch == 0.5 else {
            "truncate_quantile_pitch": steering_fields(pitch=self.steer_pitch)[
                "truncate_quantile_pitch"]}
        for voice in self.voices:
            held = [p for (i, p) in ctx.held_notes() if i == voice.inst]
            cons = answer_constraints(voice.inst, note.pitch, note.vel, held,
                                      offsets=(voice.lo, voice.hi), pitch_temp=self.pitch_temp,
                                      **steer)
            if cons is None:
                log.debug("harmony: no free pitch for %s around %d", voice, note.pitch)
                continue
            e = ctx.sample_now(cons, t_in=note.t)
            if e is not None:
                answer = (int(e.inst), int(e.pitch))
                self.state.attach(parent, answer)
                self.pedal.forget(answer)

    @staticmethod
    def _end(ctx: PlayerContext, notes: Iterable[Note]) -> None:
        sounding = ctx.sounding()
        for n in notes:
            if n in sounding:
                ctx.play_now(n[0], n[1], 0)

    def on_control(self, ctx: PlayerContext, name: str, value: float) -> None:
        lifted = self.pedal.on_control(name, value)
        if lifted is not None:
            self._end(ctx, lifted)
        elif name == "mute":
            self.muted = not self.muted
            log.info("harmony %s", "muted" if self.muted else "unmuted")
        elif name == "steer_pitch":
            self.steer_pitch = min(1.0, max(0.0, float(value)))
        elif name == "pitch_temp":
            self.pitch_temp = min(1.0, max(0.0, float(value)))

    def on_reset(self, ctx: PlayerContext) -> None:
        self.state.clear()
        self.pedal.clear()


class _Collect:
    """Sink and listener of an offline run: every played and answered event, in order."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.rows: list[tuple[int, int, float, int]] = []
        self.added = 0

    def note(self, inst: int, pitch: int, vel: int) -> None:
        self.rows.append((inst, pitch, self.clock[0], vel))
        self.added += vel > 0

    def panic(self) -> None:
        pass

    def heard(self, e: PlayerEvent) -> None:
        if e.kind == "input":
            self.rows.append((e.inst, e.pitch, self.clock[0], e.vel))


def harmonize_piece(model: Any, piece: ev.EventArrays, voices: Sequence[Voice],
                    parts: Iterable[int] | None = None, *, pitch_temp: float = 1.0,
                    seed: int | None = None) -> tuple[ev.EventArrays, int]:
    """Harmonize a whole piece offline with :class:`HarmonyPolicy` on a :class:`Player`.

    Every input event is handed to the player at its own time (a virtual clock, no
    thread); note-ons of instruments in ``parts`` (None: all) get voice notes at the same
    instant, released with their parent; the voices still sounding at the end are
    released at the last event's time. Returns ``(events, added)``: input and voice
    events in time order (absolute seconds) and the number of voice notes added.
    """
    voices = list(voices)
    if not voices:
        raise InputError("give at least one voice")
    model.reset(seed=seed)
    clock = [0.0]
    out = _Collect(clock)
    player = Player(model, out, HarmonyPolicy(voices, pitch_temp=pitch_temp, parts=parts),
                    PlayerConfig(pause_after_send=0.0), clock=lambda: clock[0],
                    reset_on_start=False)
    player.add_listener(out.heard)
    for i, p, t, v in zip(*(a.tolist() for a in piece.sorted())):
        clock[0] = t
        player.process(NoteIn(i, p, v, t))
    player.stop()  # releases every voice note still sounding, at the last time
    if not out.rows:
        return ev.EventArrays.empty(), 0
    return ev.EventArrays.build(*zip(*out.rows)), out.added


__all__ = ["HarmonyPolicy", "HarmonyState", "PedalHold", "Voice", "answer_constraints",
           "harmonize_piece"]
