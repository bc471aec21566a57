"""The harmonizer: a player's notes, plus notes the model adds in chosen voices.

:class:`Harmonizer` holds only the harmony logic (docs/design.md §7) and is shared by the
offline ``notochord-rt harmonize`` and the live app, so it does no I/O and keeps no clock:
callers pass the time since the previous event they gave it.

* On a player's note-on it feeds the note, then for each :class:`Voice` asks the model for
  one note-on of the voice's instrument at time 0 with the player's velocity, its pitch
  among ``played + lo .. played + hi`` minus the played pitch and the pitches the voice's
  instrument already sounds; the chosen note is fed back and remembered as a dependent of
  the player's note. A voice with no possible pitch adds nothing.
* On the player's note-off it feeds the note-off, then releases (and feeds, at time 0)
  every dependent note of that note.

Both return the events the caller must play, as :class:`VoiceEvent` (``vel == 0`` is a
note-off). :func:`harmonize_piece` runs a whole piece through it offline.

The model-free part — which constraints a voice note is sampled under, and which voice
notes depend on which played note — is :class:`HarmonyState`, for callers that own the
model calls themselves (the live player's policy samples through its own context).

Edge cases of live input are repaired rather than fed blindly, so that the model's held
notes always match what sounds: a note-on for a pitch the player already holds releases
the old note (and its dependents) first; a note-off for a pitch nobody holds is ignored;
if a voice uses the player's own instrument and holds the pitch the player now plays, the
voice note is released first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .. import events as ev
from ..errors import InputError, NoPossibleEvents

log = logging.getLogger(__name__)


class VoiceEvent(NamedTuple):
    """An event the caller must play: instrument, pitch, velocity (0 = note-off)."""

    inst: int
    pitch: int
    vel: int


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


class HarmonyState:
    """The harmony logic without a model: voice constraints and parent tracking.

    ``parent`` is the player's ``(inst, pitch)``; voice notes are ``(inst, pitch)``.
    """

    def __init__(self, voices: Sequence[Voice], pitch_temp: float = 1.0) -> None:
        self.voices = list(voices)
        self.pitch_temp = float(pitch_temp)
        self._dependents: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self._owner: dict[tuple[int, int], tuple[int, int]] = {}

    def allowed_pitches(self, voice: Voice, played: int, sounding: Iterable[int]) -> list[int]:
        """The voice's range around ``played`` minus ``played`` and the ``sounding``
        pitches of the voice's instrument."""
        busy = set(sounding)
        return [p for p in voice.pitches(played) if p != played and p not in busy]

    def constraints(self, voice: Voice, played: int, vel: int, sounding: Iterable[int]):
        """The :class:`~notochord_rt.engine.sampling.constraints.Constraints` for the voice's note:
        its instrument, time 0, velocity ``vel``, an allowed pitch. None if no pitch is
        free. ``sounding``: pitches the voice's instrument sounds now."""
        from ..engine.sampling.constraints import Constraints

        allowed = self.allowed_pitches(voice, played, sounding)
        if not allowed:
            return None
        return Constraints(note_on_map={voice.inst: allowed}, note_off_map={},
                           inst=voice.inst, time=0.0, vel=float(ev.note_on_velocity(vel)),
                           pitch_temp=self.pitch_temp, external={voice.inst})

    def attach(self, parent: tuple[int, int], note: tuple[int, int]) -> None:
        """Record that voice ``note`` sounds because of the player's ``parent`` note."""
        parent, note = (int(parent[0]), int(parent[1])), (int(note[0]), int(note[1]))
        self._dependents.setdefault(parent, []).append(note)
        self._owner[note] = parent

    def release(self, parent: tuple[int, int]) -> list[tuple[int, int]]:
        """Forget and return the voice notes of the player's ``parent`` note."""
        notes = self._dependents.pop((int(parent[0]), int(parent[1])), [])
        for n in notes:
            self._owner.pop(n, None)
        return notes

    def detach(self, note: tuple[int, int]) -> None:
        """Forget one voice note (released for another reason)."""
        parent = self._owner.pop(note, None)
        if parent is not None:
            deps = self._dependents.get(parent, [])
            if note in deps:
                deps.remove(note)
            if not deps:
                self._dependents.pop(parent, None)

    def is_voice_note(self, note: tuple[int, int]) -> bool:
        return (int(note[0]), int(note[1])) in self._owner

    def dependents(self, parent: tuple[int, int]) -> list[tuple[int, int]]:
        """The voice notes sounding because of the player's ``parent`` note."""
        return list(self._dependents.get((int(parent[0]), int(parent[1])), ()))

    def voice_notes(self) -> list[tuple[int, int]]:
        """Every voice note now sounding."""
        return sorted(self._owner)

    def clear(self) -> None:
        self._dependents.clear()
        self._owner.clear()


class Harmonizer:
    """Harmony logic driving one :class:`~notochord_rt.engine.sampling.sampler.Notochord` stream.

    ``pitch_temp`` is passed to the sampler (``<= 1`` nucleus, ``> 1`` temperature).
    The model is reset by :meth:`reset` (also at construction unless ``reset=False``).
    """

    def __init__(self, model, voices: Sequence[Voice], *, pitch_temp: float = 1.0,
                 seed: int | None = None, reset: bool = True) -> None:
        self.model = model
        self.state = HarmonyState(voices, pitch_temp)
        if reset:
            self.reset(seed)

    @property
    def voices(self) -> list[Voice]:
        return self.state.voices

    def reset(self, seed: int | None = None) -> None:
        """Start a new stream: forget every held note (the caller silences them first)."""
        self.model.reset(seed=seed)
        self.state.clear()

    def dependents(self, inst: int, pitch: int) -> list[tuple[int, int]]:
        """The voice notes ``(inst, pitch)`` sounding because of the player's note."""
        return self.state.dependents((inst, pitch))

    def sounding_voice_notes(self) -> list[tuple[int, int]]:
        """Every voice note now sounding, as ``(inst, pitch)``."""
        return self.state.voice_notes()

    # -- events --------------------------------------------------------------------------------
    def note_on(self, inst: int, pitch: int, vel: int, dt: float = 0.0,
                harmonize: bool = True) -> list[VoiceEvent]:
        """The player's note-on, ``dt`` seconds after the previous event.

        Returns the events to play besides the player's own note: releases forced by a
        repeated pitch (see the module doc) and the voice notes added (none if
        ``harmonize`` is false: the note is only fed, as context).
        """
        inst, pitch, vel = int(inst), int(pitch), int(vel)
        if vel < 1:
            return self.note_off(inst, pitch, dt)
        out: list[VoiceEvent] = []
        key = (inst, pitch)
        if self.state.is_voice_note(key):  # a voice of the same instrument holds this pitch
            self.state.detach(key)
            out.append(VoiceEvent(inst, pitch, 0))
            self._feed(inst, pitch, dt, 0)
            dt = 0.0
        elif key in self.model.held_notes:  # the player re-strikes a held note
            out.extend(self.note_off(inst, pitch, dt))
            dt = 0.0
        self._feed(inst, pitch, dt, vel)
        if harmonize:
            for voice in self.voices:
                added = self._add_voice_note(voice, pitch, vel)
                if added is not None:
                    self.state.attach(key, added)
                    out.append(VoiceEvent(added[0], added[1], vel))
        return out

    def note_off(self, inst: int, pitch: int, dt: float = 0.0) -> list[VoiceEvent]:
        """The player's note-off, ``dt`` seconds after the previous event.

        Returns the note-offs of its dependent voice notes (the player's own note-off is
        not included). A note-off for a note that does not sound is ignored.
        """
        key = (int(inst), int(pitch))
        if key not in self.model.held_notes or self.state.is_voice_note(key):
            log.debug("harmonizer: note-off for a silent note %s ignored", key)
            return []
        self._feed(key[0], key[1], dt, 0)
        out = []
        for v_inst, v_pitch in self.state.release(key):
            self._feed(v_inst, v_pitch, 0.0, 0)
            out.append(VoiceEvent(v_inst, v_pitch, 0))
        return out

    def release_all(self, dt: float = 0.0) -> list[VoiceEvent]:
        """Release every voice note (e.g. at the end of a piece); returns the note-offs."""
        out = []
        for k, note in enumerate(self.state.voice_notes()):
            self.state.detach(note)
            self._feed(note[0], note[1], dt if k == 0 else 0.0, 0)
            out.append(VoiceEvent(note[0], note[1], 0))
        return out

    # -- internals -----------------------------------------------------------------------------
    def _feed(self, inst: int, pitch: int, dt: float, vel: int) -> None:
        self.model.feed(inst, pitch, max(0.0, float(dt)), vel)

    def _add_voice_note(self, voice: Voice, played: int, vel: int) -> tuple[int, int] | None:
        """Sample and feed one voice note for a played pitch; None if none is possible."""
        sounding = self.model.held_map().get(voice.inst, set())
        cons = self.state.constraints(voice, played, vel, sounding)
        if cons is None:
            log.debug("harmonizer: no free pitch for voice %s around %d", voice, played)
            return None
        try:
            e = self.model.sample(cons)
        except NoPossibleEvents as err:  # only if the model's state disagrees with ours
            log.warning("harmonizer: voice %s skipped: %s", voice, err)
            return None
        self._feed(voice.inst, e.pitch, 0.0, vel)
        return (voice.inst, int(e.pitch))


def harmonize_piece(model, piece: ev.EventArrays, voices: Sequence[Voice],
                    parts: Iterable[int] | None = None, *, pitch_temp: float = 1.0,
                    seed: int | None = None) -> tuple[ev.EventArrays, int]:
    """Harmonize a whole piece offline: the input's events plus the voices' notes.

    Every input event is fed to the model as it occurs; note-ons of instruments in
    ``parts`` (``None``: all) get voice notes at the same instant, released with their
    parent. Returns ``(events, added)``: the input and harmony events in time order
    (absolute seconds) and the number of voice notes added.
    """
    voices = list(voices)
    if not voices:
        raise InputError("give at least one voice")
    chosen = None if parts is None else {int(p) for p in parts}
    harm = Harmonizer(model, voices, pitch_temp=pitch_temp, seed=seed)
    piece = piece.sorted()
    rows: list[tuple[int, int, float, int]] = []
    added = 0
    last = 0.0
    for i, p, t, v in zip(piece.inst.tolist(), piece.pitch.tolist(), piece.time.tolist(),
                          piece.vel.tolist()):
        dt, last = t - last, t
        if v > 0:
            out = harm.note_on(i, p, v, dt, harmonize=chosen is None or i in chosen)
        else:
            out = harm.note_off(i, p, dt)
        # the player's own event goes first, except releases that must precede it
        pre = [o for o in out if o.vel == 0 and (o.inst, o.pitch) == (i, p)]
        rows.extend((o.inst, o.pitch, t, o.vel) for o in pre)
        rows.append((i, p, t, v))
        rows.extend((o.inst, o.pitch, t, o.vel) for o in out if o not in pre)
        added += sum(1 for o in out if o.vel > 0)
    rows.extend((o.inst, o.pitch, last, 0) for o in harm.release_all())
    if not rows:
        return ev.EventArrays.empty(), 0
    return ev.EventArrays.build(*zip(*rows)), added


__all__ = ["HarmonyState", "Harmonizer", "Voice", "VoiceEvent", "harmonize_piece"]
