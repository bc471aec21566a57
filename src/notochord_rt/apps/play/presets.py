"""Presets of ``notochord-rt play`` in TOML, and voices made from a MIDI prompt.

A presets file (the bundled one is ``notochord_rt/assets/presets.toml``)::

    [defaults]                    # optional, under every preset
    max_time = 4.0                # soft longest pause between autonomous events (s)
    voice = {poly = [0, 4], duration = [0, 8]}   # defaults of every voice

    [[control]]                   # optional: CCs, ranges and start values of controls
    name = "steer_pitch"
    cc = [1, 74]
    value = 0.5
    range = [0, 1]

    [[action]]                    # optional: CCs of actions (reset, query, mute, stop, panic)
    name = "reset"
    cc = [8, 81]

    [[preset]]
    name = "duet"
    description = "you play piano, the model answers on strings"
    controls = {steer_rate = 0.6} # start values for this preset
    channel.1 = {mode = "input", inst = "Acoustic Grand Piano"}
    channel.2 = {mode = "auto", inst = "violin", range = [55, 96]}
    channel.3 = {mode = "follow", source = 2, inst = 43, transpose = [-15, -3]}

Channels are 1..16; instruments are ids 1..320 or names (``"violin"``, ``"drums"``,
``"anon3"``); see :class:`~.voices.VoiceConfig` for the voice keys. Every preset is
checked when the file is loaded: a mistake is a :class:`~notochord_rt.errors.UserError`
naming the file, the preset, the channel and the key.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from ... import events as ev
from ...errors import InputError, UserError
from .voices import ACTIONS, CONTROL_BOUNDS, N_CHANNELS, Rig, VoiceConfig, check_ccs

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

DEFAULT_PRESETS = "presets.toml"
TOP_KEYS = ("defaults", "control", "action", "preset")
PRESET_KEYS = ("name", "description", "controls", "channel", "max_time")


@dataclass
class Preset:
    """One named setup: voice tables by 0-based channel, control start values, max_time."""

    name: str
    description: str = ""
    channels: dict[int, dict[str, Any]] = field(default_factory=dict)
    controls: dict[str, float] = field(default_factory=dict)
    max_time: float | None = None


@dataclass
class PresetBook:
    """The presets of one file and the base rig (controls, actions, defaults) under them."""

    presets: list[Preset]
    base: Rig
    voice_defaults: dict[str, Any]
    source: str

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.presets]

    def find(self, key: str | int) -> Preset:
        """A preset by name (case-insensitive) or 0-based index; UserError if none."""
        if isinstance(key, int):
            if not 0 <= key < len(self.presets):
                raise UserError(f"{self.source}: there is no preset number {key + 1} "
                                f"({len(self.presets)} presets)")
            return self.presets[key]
        for p in self.presets:
            if p.name.lower() == key.lower():
                return p
        raise UserError(f"{self.source}: no preset named {key!r} "
                        f"(presets: {', '.join(self.names) or 'none'})")

    def rig(self, key: str | int) -> Rig:
        """The rig of a preset: its voices over the defaults, its control values."""
        return build_rig(self.find(key), self.base, self.voice_defaults)


def build_rig(preset: Preset, base: Rig, voice_defaults: Mapping[str, Any]) -> Rig:
    """The :class:`Rig` of ``preset`` on ``base`` (InputError naming the bad key)."""
    rig = base.copy()
    rig.voices = {}
    template = VoiceConfig.from_dict(0, voice_defaults) if voice_defaults else None
    for ch, table in sorted(preset.channels.items()):
        rig.voices[ch] = VoiceConfig.from_dict(ch, table, template)
    for name, value in preset.controls.items():
        if name not in rig.controls:
            raise InputError(f"unknown control {name!r} (known: {', '.join(CONTROL_BOUNDS)})")
        spec = rig.controls[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                spec.lo <= value <= spec.hi):
            raise InputError(f"control {name}: value must be a number in "
                             f"[{spec.lo:g}, {spec.hi:g}], got {value!r}")
        spec.value = float(value)
    if preset.max_time is not None:
        rig.max_time = preset.max_time
    rig.dedupe()
    return rig.validate()


# -- parsing ---------------------------------------------------------------------------------
def default_presets_path() -> str:
    """Path of the bundled presets file."""
    return str(resources.files("notochord_rt").joinpath("assets", DEFAULT_PRESETS))


def load_presets(path: str | os.PathLike | None = None) -> PresetBook:
    """Read and check a presets file (the bundled one when ``path`` is None)."""
    path = default_presets_path() if path is None else os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read presets file {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: a presets file must be UTF-8 text") from None
    return parse_presets(text, os.path.basename(path))


def parse_presets(text: str, source: str = "presets") -> PresetBook:
    """Parse and check presets TOML; UserError ``"<source>: <where>: <what>"`` if bad."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{source}: not valid TOML: {e}") from None
    try:
        return _book(doc, source)
    except InputError as e:
        raise UserError(f"{source}: {e}") from None


def _expect(value: object, kind: type | tuple, what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        names = {"dict": "a table", "list": "an array", "str": "a string"}.get(names, names)
        raise InputError(f"{what} must be {names}, got {value!r}")
    return value


def _unknown(table: Mapping, known: tuple[str, ...], what: str) -> None:
    extra = sorted(set(table) - set(known))
    if extra:
        raise InputError(f"{what}: unknown key {extra[0]!r} (known: {', '.join(known)})")


def _max_time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or value <= 0:
        raise InputError(f"{what}: max_time must be a number of seconds > 0, got {value!r}")
    return float(value)


def _book(doc: dict, source: str) -> PresetBook:
    _unknown(doc, TOP_KEYS, "top level")
    base = Rig()
    defaults = _expect(doc.get("defaults", {}), dict, "[defaults]")
    _unknown(defaults, ("max_time", "voice"), "[defaults]")
    if "max_time" in defaults:
        base.max_time = _max_time(defaults["max_time"], "[defaults]")
    voice_defaults = dict(_expect(defaults.get("voice", {}), dict, "[defaults] voice"))
    for bad in ("mode", "inst", "source"):
        if bad in voice_defaults:
            raise InputError(f"[defaults] voice: {bad!r} cannot have a default")
    if voice_defaults:
        try:
            VoiceConfig.from_dict(0, voice_defaults)
        except InputError as e:
            raise InputError(f"[defaults] voice: {str(e).removeprefix('channel 1: ')}") from None
    for k, item in enumerate(_expect(doc.get("control", []), list, "[[control]]")):
        _control(base, _expect(item, dict, f"[[control]] #{k + 1}"), k)
    for k, item in enumerate(_expect(doc.get("action", []), list, "[[action]]")):
        item = _expect(item, dict, f"[[action]] #{k + 1}")
        _unknown(item, ("name", "cc"), f"[[action]] #{k + 1}")
        name = item.get("name")
        if name not in ACTIONS:
            raise InputError(f"[[action]] #{k + 1}: name must be one of {', '.join(ACTIONS)}, "
                             f"got {name!r}")
        base.actions[name] = check_ccs(item.get("cc", []), f"action {name}")
    base.validate()
    presets = []
    for k, item in enumerate(_expect(doc.get("preset", []), list, "[[preset]]")):
        presets.append(_preset(_expect(item, dict, f"[[preset]] #{k + 1}"), k))
    names = [p.name.lower() for p in presets]
    for n in names:
        if names.count(n) > 1:
            raise InputError(f"two presets are named {n!r}")
    book = PresetBook(presets, base, voice_defaults, source)
    for p in presets:
        try:
            book.rig(p.name)
        except InputError as e:
            raise InputError(f"preset {p.name!r}: {e}") from None
    return book


def _control(base: Rig, item: dict, k: int) -> None:
    _unknown(item, ("name", "cc", "value", "range"), f"[[control]] #{k + 1}")
    name = item.get("name")
    if name not in base.controls:
        raise InputError(f"[[control]] #{k + 1}: name must be one of "
                         f"{', '.join(CONTROL_BOUNDS)}, got {name!r}")
    spec = base.controls[name]
    if "range" in item:
        r = item["range"]
        if not (isinstance(r, list) and len(r) == 2):
            raise InputError(f"control {name}: range must be [low, high], got {r!r}")
        spec.lo, spec.hi = r
        if not isinstance(spec.value, (int, float)) or not spec.lo <= spec.value <= spec.hi:
            spec.value = spec.lo if spec.value < spec.lo else spec.hi
    if "value" in item:
        spec.value = item["value"]
    if "cc" in item:
        spec.ccs = check_ccs(item["cc"], f"control {name}")
    spec.validate()
    spec.lo, spec.hi, spec.value = float(spec.lo), float(spec.hi), float(spec.value)


def _preset(item: dict, k: int) -> Preset:
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"[[preset]] #{k + 1}: needs a name (a non-empty string)")
    what = f"preset {name!r}"
    _unknown(item, PRESET_KEYS, what)
    desc = _expect(item.get("description", ""), str, f"{what}: description")
    controls = _expect(item.get("controls", {}), dict, f"{what}: controls")
    channels: dict[int, dict[str, Any]] = {}
    for key, table in _expect(item.get("channel", {}), dict, f"{what}: channel").items():
        if not key.isdigit() or not 1 <= int(key) <= N_CHANNELS:
            raise InputError(f"{what}: channel numbers are 1..{N_CHANNELS}, got {key!r}")
        channels[int(key) - 1] = dict(_expect(table, dict, f"{what}: channel {key}"))
        if "inst" not in table:
            raise InputError(f"{what}: channel {key} needs an inst")
    max_time = _max_time(item["max_time"], what) if "max_time" in item else None
    return Preset(name.strip(), desc, channels, dict(controls), max_time)


# -- voices from a prompt --------------------------------------------------------------------
def prompt_rig(rig: Rig, events: ev.EventArrays, parts: list[Any]) -> tuple[Rig, list[str]]:
    """The rig for playing on from a MIDI prompt: the prompt's instruments become auto
    voices (on the channel of their largest part when free, drums on channel 10; else the
    first free channel), each with the pitch range and velocities it used in the prompt.
    The rig's *input* voices are kept on their channels. Returns the rig and messages
    (instruments that found no channel)."""
    out = rig.copy()
    keep = {ch: v for ch, v in out.voices.items() if v.mode == "input"}
    kept_insts = {v.inst for v in keep.values()}
    home: dict[int, tuple[int, int]] = {}  # inst -> (notes, channel) of its largest part
    for p in parts:
        if p.merged_into is None and p.notes > home.get(p.inst, (-1, 0))[0]:
            home[p.inst] = (p.notes, p.channel)
    insts = sorted({int(i) for i in np.unique(events.inst)} - kept_insts,
                   key=lambda i: (home.get(i, (0, 99))[1], -home.get(i, (0, 0))[0], i))
    voices = dict(keep)
    notes = []
    template = next(iter(rig.voices.values()), None)
    for inst in insts:
        want = ev.DRUM_CHANNEL if ev.is_drum(inst) else home.get(inst, (0, 0))[1]
        free = [c for c in range(N_CHANNELS) if c not in voices]
        if not free:
            notes.append(f"no free channel for {ev.instrument_name(inst)}; it is not played")
            continue
        ch = want if want in free else next((c for c in free if c != ev.DRUM_CHANNEL), free[0])
        on = (events.inst == inst) & (events.vel > 0)
        pitches, vels = events.pitch[on], events.vel[on]
        v = VoiceConfig(ch, inst, "auto")
        if template is not None:
            v.poly, v.duration = template.poly, template.duration
        if len(pitches):
            v.range = (int(pitches.min()), int(pitches.max()))
            v.vel = (max(1, int(vels.min())), int(vels.max()))
        if ev.is_anonymous(inst):
            v.program = next((p.program for p in parts if p.inst == inst and p.program is not None),
                             None)
        voices[ch] = v.validate()
    out.voices = dict(sorted(voices.items()))
    return out.validate(), notes
