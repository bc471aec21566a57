"""The voice configuration of ``notochord-rt play``: pure logic, no UI, no model calls.

A :class:`Rig` is what a musician sets up in the terminal UI (docs/design.md §7):

* one :class:`VoiceConfig` per MIDI channel used, each in a *mode*: ``input`` (the
  channel's notes are played by a person and fed to the model), ``auto`` (the model plays
  it on its own), ``follow`` (the model answers each note-on of a ``source`` channel with
  one note within ``transpose`` semitones of it and inside ``range``; the answer ends when
  the source note ends) or ``mute`` (silent and ignored; unmuting restores the mode);
* steering controls (:class:`ControlSpec`: ``steer_pitch``, ``steer_density``,
  ``steer_rate``, ``steer_velocity``, ``pitch_temp``, ``rhythm_temp``, ``timing_temp``),
  each with a range and the MIDI CCs that set it;
* actions (``reset``, ``query``, ``mute``, ``stop``, ``panic``) with their CCs.

:meth:`Rig.constraints` turns the auto voices and the controls into the
:class:`~notochord_rt.engine.sampling.constraints.Constraints` of the next autonomous event, and
:meth:`Rig.follow_constraints` gives those of a follow voice's answer. Channels are
0-based in code and 1-based in presets and on screen (as in :mod:`.ports`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ... import events as ev
from ...errors import InputError
from ...gm import DRUM_KIT_NAMES, FAMILY_NAMES
from ..live.controls import DEFAULT_CCS, ControlMap, check_cc
from ..musical import BALANCE_MARGIN, DEFAULTS, balance_weights  # noqa: F401 - re-exported
from ..steering import steering_fields

MODES: tuple[str, ...] = ("auto", "input", "follow", "mute")
"""The cycle order of the mode button (``mute`` keeps the previous mode for unmuting)."""
ACTIONS: tuple[str, ...] = ("reset", "query", "mute", "stop", "panic")
N_CHANNELS = 16


# -- instruments -----------------------------------------------------------------------------
def instrument_groups() -> list[tuple[str, list[int]]]:
    """The instrument picker's groups: 16 GM families, drum kits, anonymous melodic, anonymous
    drums (instrument ids, in order)."""
    groups = [(name, list(range(ev.FIRST_MELODIC + 8 * k, ev.FIRST_MELODIC + 8 * k + 8)))
              for k, name in enumerate(FAMILY_NAMES)]
    groups.append(("Drum kits", [ev.FIRST_DRUM + p for p in sorted(DRUM_KIT_NAMES)]))
    groups.append(("Anonymous", list(range(ev.FIRST_ANON, ev.LAST_ANON + 1))))
    groups.append(("Anonymous drums", list(range(ev.FIRST_ANON_DRUM, ev.LAST_ANON_DRUM + 1))))
    return groups


def short_name(inst: int, width: int = 12) -> str:
    """An instrument name cut to ``width`` characters for a channel strip."""
    name = ev.instrument_name(inst)
    if ev.FIRST_ANON <= inst <= ev.LAST_ANON:
        name = f"Anon {inst - ev.FIRST_ANON + 1}"
    elif inst >= ev.FIRST_ANON_DRUM:
        name = f"AnonDrums {inst - ev.FIRST_ANON_DRUM + 1}"
    return name if len(name) <= width else name[: width - 1] + "."


def parse_inst(value: object, what: str) -> int:
    """An instrument id from an int or a name (``ev.parse_instrument``); InputError if bad."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"{what}: instrument must be an id 1..320 or a GM name, got {value!r}")
    try:
        return ev.parse_instrument(value)
    except ValueError as e:
        raise InputError(f"{what}: {e}") from None


# -- voices ----------------------------------------------------------------------------------
def _pair(value: object, what: str, lo: float, hi: float, integer: bool) -> tuple:
    """A ``[low, high]`` pair within ``lo..hi`` (ints if ``integer``); InputError if bad."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"{what} must be a pair [low, high], got {value!r}")
    out = []
    for x in value:
        ok = isinstance(x, int) if integer else isinstance(x, (int, float))
        if isinstance(x, bool) or not ok or math.isnan(float(x)):
            kind = "integers" if integer else "numbers"
            raise InputError(f"{what} must be two {kind}, got {value!r}")
        out.append(int(x) if integer else float(x))
    if not (lo <= out[0] <= out[1] <= hi):
        raise InputError(f"{what} must satisfy {lo:g} <= low <= high <= {hi:g}, got {value!r}")
    return tuple(out)


@dataclass
class VoiceConfig:
    """One MIDI channel's voice. ``channel`` is 0-based.

    ``transpose`` (semitones relative to the followed note) and ``source`` apply to follow
    voices; ``range`` (absolute pitches), ``poly`` (min, max notes at once), ``duration``
    (min, max seconds per note) and ``vel`` (min, max note-on velocity) to the model's
    notes. ``program`` is the GM program (0..127) announced for an anonymous id.
    """

    channel: int
    inst: int
    mode: str = "auto"
    mute: bool = False
    source: int | None = None
    transpose: tuple[int, int] = (-12, 12)
    range: tuple[int, int] = (0, 127)
    poly: tuple[int, int] = (0, 4)
    duration: tuple[float, float] = (0.0, 8.0)
    vel: tuple[int, int] = (1, 127)
    program: int | None = None
    grid: str | None = None
    swing: float = 0.0

    KEYS = ("mode", "inst", "mute", "source", "transpose", "range", "poly", "duration",
            "vel", "program", "grid", "swing")

    @property
    def state(self) -> str:
        """The effective mode: ``"mute"`` when muted, else :attr:`mode`."""
        return "mute" if self.mute else self.mode

    def set_state(self, mode: str) -> None:
        """Set the effective mode (``"mute"`` mutes and keeps the mode for unmuting)."""
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "mute":
            self.mute = True
        else:
            self.mode, self.mute = mode, False

    def label(self) -> str:
        """The homunculus-style tag: ``-->NN`` input, ``NN`` auto, ``SS->NN`` follow."""
        ch = f"{self.channel + 1:02d}"
        if self.mode == "input":
            return f"-->{ch}"
        if self.mode == "follow":
            src = "??" if self.source is None else f"{self.source + 1:02d}"
            return f"{src}->{ch}"
        return ch

    def validate(self) -> VoiceConfig:
        """Raise :class:`InputError` naming the first bad field; return ``self``."""
        what = f"channel {self.channel + 1}"
        if not (isinstance(self.channel, int) and 0 <= self.channel < N_CHANNELS):
            raise InputError(f"channel must be 1..{N_CHANNELS}, got {self.channel!r}")
        if self.mode not in MODES[:3]:
            raise InputError(f"{what}: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.inst = parse_inst(self.inst, what)
        if not isinstance(self.mute, bool):
            raise InputError(f"{what}: mute must be true or false, got {self.mute!r}")
        if self.source is not None and not (
                isinstance(self.source, int) and 0 <= self.source < N_CHANNELS):
            raise InputError(f"{what}: source must be a channel 1..{N_CHANNELS}")
        if self.source == self.channel:
            raise InputError(f"{what}: a voice cannot follow itself")
        if self.mode == "follow" and self.source is None:
            raise InputError(f"{what}: a follow voice needs a source channel")
        self.transpose = _pair(self.transpose, f"{what}: transpose", -127, 127, True)
        self.range = _pair(self.range, f"{what}: range", 0, ev.NUM_PITCHES - 1, True)
        self.poly = _pair(self.poly, f"{what}: poly", 0, 128, True)
        self.duration = _pair(self.duration, f"{what}: duration", 0, math.inf, False)
        if self.duration[1] <= 0:
            raise InputError(f"{what}: duration's maximum must be > 0 seconds")
        self.vel = _pair(self.vel, f"{what}: vel", 1, 127, True)
        if self.program is not None and not (
                isinstance(self.program, int) and 0 <= self.program < ev.N_GM):
            raise InputError(f"{what}: program must be a GM program 0..127, got {self.program!r}")
        if self.grid is not None or self.swing:  # with a clock (--clock): the auto notes' grid
            from ...engine.sampling.constraints import Constraints

            try:
                Constraints(bpm=120.0, grid=self.grid, swing=self.swing).validate()
            except InputError as e:
                raise InputError(f"{what}: {e}") from None
        return self

    @classmethod
    def from_dict(cls, channel: int, data: Mapping[str, object],
                  base: VoiceConfig | None = None) -> VoiceConfig:
        """A voice from a preset table (1-based ``source``; ``mode = "mute"`` mutes) laid
        over ``base``. Unknown keys are an :class:`InputError` naming them."""
        unknown = sorted(set(data) - set(cls.KEYS))
        if unknown:
            raise InputError(f"channel {channel + 1}: unknown key {unknown[0]!r} "
                             f"(known: {', '.join(cls.KEYS)})")
        v = copy.deepcopy(base) if base is not None else cls(channel, 1)
        v.channel = channel
        for key, value in data.items():
            if key == "source":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise InputError(f"channel {channel + 1}: source must be a channel number "
                                     f"1..{N_CHANNELS}, got {value!r}")
                value = value - 1
            if key == "mode" and value == "mute":
                v.mute = True
                continue
            setattr(v, key, value)
        return v.validate()


# -- controls --------------------------------------------------------------------------------
@dataclass
class ControlSpec:
    """A continuous control: current ``value`` in ``[lo, hi]``, set by the MIDI ``ccs``."""

    name: str
    value: float
    lo: float = 0.0
    hi: float = 1.0
    ccs: tuple[int, ...] = ()

    def clip(self, value: float) -> float:
        return min(self.hi, max(self.lo, float(value)))

    def to_unit(self, value: float | None = None) -> float:
        """A value (default: the current one) as 0..1 of the range."""
        v = self.value if value is None else value
        return 0.0 if self.hi == self.lo else (self.clip(v) - self.lo) / (self.hi - self.lo)

    def from_unit(self, unit: float) -> float:
        """0..1 of the range as a value (clipped)."""
        return self.clip(self.lo + (self.hi - self.lo) * min(1.0, max(0.0, float(unit))))

    def from_cc(self, cc_value: int) -> float:
        """A CC value 0..127 as a control value (0 → low end, 127 → high end)."""
        return self.from_unit(int(cc_value) / 127)

    def validate(self) -> ControlSpec:
        for key in ("value", "lo", "hi"):
            x = getattr(self, key)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise InputError(f"control {self.name}: {key} must be a finite number, got {x!r}")
        if self.lo > self.hi:
            raise InputError(f"control {self.name}: range must be [low, high] with low <= high")
        if not self.lo <= self.value <= self.hi:
            raise InputError(f"control {self.name}: value {self.value:g} is outside its range "
                             f"[{self.lo:g}, {self.hi:g}]")
        bounds = CONTROL_BOUNDS[self.name]
        if self.lo < bounds[0] or self.hi > bounds[1]:
            raise InputError(f"control {self.name}: range must lie within "
                             f"[{bounds[0]:g}, {bounds[1]:g}], got [{self.lo:g}, {self.hi:g}]")
        self.ccs = check_ccs(self.ccs, f"control {self.name}")
        return self


CONTROL_BOUNDS: dict[str, tuple[float, float]] = {
    "steer_pitch": (0.0, 1.0), "steer_density": (0.0, 1.0), "steer_rate": (0.0, 1.0),
    "steer_velocity": (0.0, 1.0), "pitch_temp": (0.0, 10.0), "rhythm_temp": (0.0, 10.0),
    "timing_temp": (0.0, 10.0),
}
"""The names of the controls and the limits of their ranges (steering 0..1; temperatures
``<= 1`` are top-p, ``> 1`` temperatures, as in :class:`Constraints`)."""


CONTROL_START = {"steer_pitch": 0.5, "steer_density": 0.5, "steer_rate": 0.5,
                 "steer_velocity": 0.5, "timing_temp": 0.2, "rhythm_temp": 1.0,
                 "pitch_temp": DEFAULTS.pitch_temp}
"""Start values of the controls (ranges 0..1)."""


def default_controls() -> dict[str, ControlSpec]:
    """The controls with their default values, ranges and CCs (the CCs of every live app:
    :data:`~notochord_rt.apps.live.controls.DEFAULT_CCS`)."""
    return {name: ControlSpec(name, value, 0, 1, (DEFAULT_CCS[name],))
            for name, value in CONTROL_START.items()}


def default_actions() -> dict[str, tuple[int, ...]]:
    """Actions and the CCs that trigger them (on a rising edge past 64), the same as in
    every live app (:mod:`notochord_rt.apps.live.controls`)."""
    return {name: (DEFAULT_CCS[name],) for name in ACTIONS}


def check_ccs(value: object, what: str) -> tuple[int, ...]:
    """A CC number or list of CC numbers (0..119, not 64; :func:`~.controls.check_cc`)."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, (list, tuple)):
        raise InputError(f"{what}: cc must be a number or a list of numbers, got {value!r}")
    return tuple(check_cc(cc, what) for cc in items)


# -- the whole rig ---------------------------------------------------------------------------
@dataclass
class Rig:
    """Voices by (0-based) channel, controls, action CCs, and the global switches.

    ``max_time`` is a soft limit on the pause between autonomous events; ``muted`` (global
    mute: the model plays nothing, input is still heard) and ``stopped`` (auto voices
    stop; follow voices still answer) are the UI's ``m`` and ``x`` keys.
    """

    voices: dict[int, VoiceConfig] = field(default_factory=dict)
    controls: dict[str, ControlSpec] = field(default_factory=default_controls)
    actions: dict[str, tuple[int, ...]] = field(default_factory=default_actions)
    max_time: float = math.inf
    muted: bool = False
    stopped: bool = False

    def copy(self) -> Rig:
        return copy.deepcopy(self)

    def value(self, name: str) -> float:
        """The current value of a control (``KeyError`` for an unknown name)."""
        return self.controls[name].value

    def control_map(self) -> ControlMap:
        """The CCs of the controls and actions as the live apps' one :class:`ControlMap`."""
        return ControlMap.from_names({**{s.name: s.ccs for s in self.controls.values()},
                                      **self.actions})

    # -- validation and instrument layout ----------------------------------------------------
    def validate(self) -> Rig:
        """Check every voice and control, CCs used twice, follow sources; return ``self``."""
        for ch, v in self.voices.items():
            if v.channel != ch:
                raise InputError(f"voice of channel {ch + 1} says it is on {v.channel + 1}")
            v.validate()
            if v.mode == "follow" and v.source not in self.voices:
                raise InputError(f"channel {ch + 1} follows channel {v.source + 1}, "  # type: ignore[operator]
                                 "which has no voice")
        unknown = sorted(set(self.controls) - set(CONTROL_BOUNDS))
        if unknown:
            raise InputError(f"unknown control {unknown[0]!r} (known: "
                             f"{', '.join(CONTROL_BOUNDS)})")
        for spec in self.controls.values():
            spec.validate()
        for name in self.actions:
            if name not in ACTIONS:
                raise InputError(f"unknown action {name!r} (known: {', '.join(ACTIONS)})")
        seen: dict[int, str] = {}
        for name, ccs in [(s.name, s.ccs) for s in self.controls.values()] + list(
                self.actions.items()):
            for cc in check_ccs(ccs, name):
                if cc in seen:
                    raise InputError(f"CC {cc} is used by both {seen[cc]} and {name}")
                seen[cc] = name
        if math.isnan(self.max_time) or self.max_time <= 0:
            raise InputError(f"max_time must be > 0 seconds, got {self.max_time!r}")
        return self

    def dedupe(self) -> list[str]:
        """Give each channel its own instrument id: a later channel asking for an id already
        taken gets a free anonymous id of the same kind, announcing the requested GM program.
        Returns a message per change (the model tells instruments apart by id only)."""
        taken: set[int] = set()
        notes = []
        for ch in sorted(self.voices):
            v = self.voices[ch]
            if v.inst in taken:
                free = [i for i in ev.anonymous_like(v.inst)
                        if i not in taken and all(w.inst != i for w in self.voices.values())]
                if not free:
                    raise InputError(f"channel {ch + 1}: no free anonymous instrument left")
                old = v.inst
                v.program = ev.program_of(old) if v.program is None else v.program
                v.inst = free[0]
                notes.append(f"channel {ch + 1}: {ev.instrument_name(old)} is taken; "
                             f"using {ev.instrument_name(v.inst)}")
            taken.add(v.inst)
        return notes

    def channel_insts(self) -> dict[int, int]:
        """``{channel: instrument}`` of every voice (after :meth:`dedupe`)."""
        return {ch: v.inst for ch, v in sorted(self.voices.items())}

    def programs(self) -> dict[int, int]:
        """``{channel: GM program}`` announced for voices with anonymous ids."""
        return {ch: v.program for ch, v in self.voices.items() if v.program is not None}

    def input_channels(self) -> dict[int, int]:
        """``{channel: instrument}`` of the unmuted input voices (fed to the model)."""
        return {ch: v.inst for ch, v in sorted(self.voices.items()) if v.state == "input"}

    def voice_of(self, inst: int) -> VoiceConfig | None:
        for v in self.voices.values():
            if v.inst == inst:
                return v
        return None

    def followers(self, channel: int) -> list[VoiceConfig]:
        """Unmuted follow voices whose source is ``channel`` (none while globally muted)."""
        if self.muted:
            return []
        return [v for _, v in sorted(self.voices.items())
                if v.state == "follow" and v.source == channel]

    # -- constraints -------------------------------------------------------------------------
    def steering(self) -> dict[str, object]:
        """Constraints fields set by the controls (steering windows and temperatures)."""
        c = self.controls
        return dict(
            **steering_fields(c["steer_pitch"].value, c["steer_rate"].value,
                              c["steer_velocity"].value),
            steer_density=c["steer_density"].value,
            pitch_temp=c["pitch_temp"].value,
            rhythm_temp=c["rhythm_temp"].value,
            timing_temp=c["timing_temp"].value,
            **DEFAULTS.shaping(),
        )

    def auto_voices(self) -> list[VoiceConfig]:
        """Unmuted auto voices, or none while muted or stopped."""
        if self.muted or self.stopped:
            return []
        return [v for _, v in sorted(self.voices.items()) if v.state == "auto"]

    def constraints(self, recent: Mapping[int, int] | None = None):
        """The :class:`Constraints` of the next autonomous event, or None (no auto voice).

        Note-ons: each auto voice's instrument over its ``range``; note-offs: their held
        notes; per-instrument velocity, polyphony and duration limits from the voices;
        every other voice's instrument is ``external`` (the sampler never ends a person's
        note); steering windows and temperatures from the controls. ``recent`` (note-ons
        per instrument lately) gives :func:`balance_weights` so no auto voice goes quiet.
        """
        from ...engine.sampling.constraints import Constraints

        autos = self.auto_voices()
        if not autos:
            return None
        grids = {(v.grid, v.swing) for v in autos}
        beat: dict[str, object] = {}
        if len(grids) > 1:  # a grid per voice: the sampler draws the instrument first
            beat = {"inst_grid": {v.inst: v.grid for v in autos if v.grid is not None},
                    "inst_swing": {v.inst: v.swing for v in autos if v.grid and v.swing}}
        elif (shared := grids.pop())[0] is not None:  # one grid: the fast path
            beat = {"grid": shared[0], "swing": shared[1]}
        weights = balance_weights([v.inst for v in autos], recent or {})
        cons = Constraints(
            inst_weights=weights,
            note_on_map={v.inst: range(v.range[0], v.range[1] + 1) for v in autos},
            min_vel={v.inst: float(v.vel[0]) for v in autos},
            max_vel={v.inst: float(v.vel[1]) for v in autos},
            min_polyphony={v.inst: v.poly[0] for v in autos},
            max_polyphony={v.inst: v.poly[1] for v in autos},
            min_duration={v.inst: v.duration[0] for v in autos},
            max_duration={v.inst: v.duration[1] for v in autos},
            max_time=self.max_time,
            external={v.inst for v in self.voices.values() if v.state != "auto"},
            **self.steering(),  # type: ignore[arg-type]
            **beat,  # type: ignore[arg-type]
        )
        if not beat:
            return cons.validate()
        # the player's clock adds the tempo and beat (apps/live/beat.py); check the rest
        dataclasses.replace(cons, bpm=120.0).validate()
        return cons

    def follow_constraints(self, voice: VoiceConfig, played: int, vel: int,
                           sounding: Iterable[int]):
        """Constraints of ``voice``'s answer to a note-on of pitch ``played`` at velocity
        ``vel`` (:func:`~notochord_rt.apps.harmony.answer_constraints` with the voice's
        ``transpose`` offsets, ``range`` and velocity range, and the pitch steering).
        None when no pitch is free."""
        from ..harmony import answer_constraints

        steer = self.steering()
        return answer_constraints(
            voice.inst, played, vel, sounding, offsets=voice.transpose,
            pitch_range=voice.range, vel_range=voice.vel,
            pitch_temp=steer["pitch_temp"],
            truncate_quantile_pitch=steer["truncate_quantile_pitch"])


def names_for_picker() -> list[tuple[int, str]]:
    """Every pickable instrument as ``(id, "Group: Name")`` (for filtering by text)."""
    out = []
    for group, insts in instrument_groups():
        for i in insts:
            out.append((i, f"{group}: {ev.instrument_name(i)}"))
    return out

