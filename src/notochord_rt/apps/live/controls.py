"""The one map of MIDI controllers (CCs) of the live apps: ``harmonize --live``,
``improvise`` and ``play``.

Every app reads the same table, so a knob means the same thing everywhere:

* **Steering controls** (continuous; value 0..127 → 0..1 of the control's range):
  CC 20..26 (``steer_pitch`` .. ``timing_temp``).
* **Actions** (``reset``, ``query``, ``mute``, ``stop``, ``panic``): CC 102..106, fired
  once each time the value rises from below :data:`THRESHOLD` (64) to 64 or more: a
  button sending 127 then 0 fires once per press; a fader moved about above 64 fires
  once.

The defaults sit on controllers the MIDI specification leaves undefined (20..31,
102..119), so a keyboard's mod wheel, volume fader, expression or sustain pedal never
steers or stops the model. CCs are heard only on the *player channels* (the channels
you play); an app with none (``improvise --player none``, a ``play`` preset without
input voices) hears them on every channel. Each app uses the part of the map that means
something to it (:data:`APP_USES`); the rest is ignored. The sustain pedal (CC 64) is no
control: it holds the model's answers (see :mod:`notochord_rt.apps.harmony`).

:class:`ControlMap` is the table (``--cc NAME=CC`` and ``play``'s presets change it);
:class:`Edges` detects rising edges and pedal changes per channel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ...errors import InputError

THRESHOLD = 64
"""An action fires when its CC goes from below this value to this value or above."""
SUSTAIN = 64
"""The sustain pedal: down at values >= :data:`THRESHOLD`."""

CONTROLS: dict[str, str] = {
    "steer_pitch": "higher: higher pitches",
    "steer_density": "higher: more notes at once",
    "steer_rate": "higher: shorter gaps between events",
    "steer_velocity": "higher: louder",
    "pitch_temp": "pitch temperature (<= 1 top-p; higher: freer)",
    "rhythm_temp": "rhythm temperature",
    "timing_temp": "timing temperature (0: exact model timing)",
}
"""The steering controls, in CC order, with what raising them does."""

ACTIONS: dict[str, str] = {
    "reset": "release every note, start the model afresh",
    "query": "draw the next event again (re-plan)",
    "mute": "mute / unmute the model's voices",
    "stop": "stop / restart the auto voices (play)",
    "panic": "release every sounding note now",
}
"""The actions, in CC order."""

ALIASES = {"replan": "query"}
"""Older names still accepted."""

DEFAULT_CCS: dict[str, int] = {
    **{name: 20 + k for k, name in enumerate(CONTROLS)},
    **{name: 102 + k for k, name in enumerate(ACTIONS)},
}
"""The default controller of every control and action (undefined in MIDI)."""

APP_USES: dict[str, frozenset[str]] = {
    "play": frozenset(CONTROLS) | frozenset(ACTIONS),
    "improvise": frozenset({"steer_pitch", "steer_density", "steer_rate",
                            "reset", "query", "mute", "panic"}),
    "harmonize": frozenset({"steer_pitch", "pitch_temp", "reset", "mute", "panic"}),
}
"""The controls and actions each app acts on."""


def check_cc(cc: object, what: str) -> int:
    """A controller number usable in the map: 0..119 (120..127 are channel mode
    messages) and not the sustain pedal. :class:`InputError` naming ``what`` if not."""
    if isinstance(cc, bool) or not isinstance(cc, int) or not 0 <= cc <= 119:
        raise InputError(f"{what}: CC numbers must be 0..119, got {cc!r}")
    if cc == SUSTAIN:
        raise InputError(f"{what}: CC 64 is the sustain pedal (it holds the model's answers)")
    return cc


@dataclass(frozen=True)
class ControlMap:
    """Controller number → control or action name (one map; see the module doc)."""

    controls: Mapping[int, str] = field(default_factory=dict)
    actions: Mapping[int, str] = field(default_factory=dict)
    threshold: int = THRESHOLD

    @classmethod
    def default(cls, app: str | None = None) -> ControlMap:
        """The default map, restricted to what ``app`` uses (all of it for None)."""
        return cls.from_names({n: (cc,) for n, cc in DEFAULT_CCS.items()}).only(app)

    @classmethod
    def from_names(cls, ccs: Mapping[str, Iterable[int]]) -> ControlMap:
        """A map from ``{name: CCs}``; :class:`InputError` for an unknown name, a bad CC or
        a CC given to two names."""
        controls: dict[int, str] = {}
        actions: dict[int, str] = {}
        for name, numbers in ccs.items():
            name = ALIASES.get(name, name)
            if name not in CONTROLS and name not in ACTIONS:
                raise InputError(f"unknown control {name!r} (known: "
                                 f"{', '.join([*CONTROLS, *ACTIONS])})")
            for cc in numbers:
                check_cc(cc, name)
                other = controls.get(cc) or actions.get(cc)
                if other is not None and other != name:
                    raise InputError(f"CC {cc} is used by both {other} and {name}")
                (controls if name in CONTROLS else actions)[cc] = name
        return cls(controls, actions)

    def only(self, app: str | None) -> ControlMap:
        """The part of the map that ``app`` (a key of :data:`APP_USES`) acts on."""
        if app is None:
            return self
        uses = APP_USES[app]
        return ControlMap({c: n for c, n in self.controls.items() if n in uses},
                          {c: n for c, n in self.actions.items() if n in uses}, self.threshold)

    def ccs(self) -> dict[str, tuple[int, ...]]:
        """``{name: CCs}`` (the inverse of :meth:`from_names`)."""
        out: dict[str, tuple[int, ...]] = {}
        for cc, name in sorted({**self.controls, **self.actions}.items()):
            out[name] = out.get(name, ()) + (cc,)
        return out

    def with_spec(self, spec: str | None) -> ControlMap:
        """This map changed by ``"NAME=CC,NAME=CC+CC,NAME=off"`` (the ``--cc`` flag): each
        named control moves to the CCs given (``off``: none). :class:`InputError` if bad."""
        if not spec:
            return self
        ccs = dict(self.ccs())
        for item in spec.split(","):
            name, sep, value = item.strip().partition("=")
            name = ALIASES.get(name.strip(), name.strip())
            if not sep or not name:
                raise InputError(f"--cc: {item.strip()!r} must be NAME=CC (e.g. steer_pitch=20)")
            if value.strip().lower() in ("off", "none", ""):
                numbers: tuple[int, ...] = ()
            else:
                try:
                    numbers = tuple(int(x) for x in value.split("+"))
                except ValueError:
                    raise InputError(f"--cc: {item.strip()!r}: CC must be a number 0..119 "
                                     "(several joined by '+', or 'off')") from None
            ccs[name] = numbers
        return ControlMap.from_names(ccs)

    def lines(self) -> list[str]:
        """The map for ``--help`` and the docs: a heading and one line per control,
        then per action."""
        out = ["steering (value 0..127 -> low..high):"]
        out += [f"  CC {cc:3d}  {name:<14} {CONTROLS[name]}"
                for cc, name in sorted(self.controls.items())] or ["  (none)"]
        out.append(f"actions (fire once when the value rises from below {self.threshold} "
                   f"to {self.threshold} or more):")
        out += [f"  CC {cc:3d}  {name:<14} {ACTIONS[name]}"
                for cc, name in sorted(self.actions.items())] or ["  (none)"]
        return out

    def action_legend(self, width: int = 44) -> str:
        """The actions' CCs in lines of at most ``width`` characters (the TUI's legend
        under the controls)."""
        import textwrap

        acts = ", ".join(f"{cc} {n}" for cc, n in sorted(self.actions.items())) or "none"
        return "\n".join(textwrap.wrap(f"action cc (on rising past {self.threshold - 1}): "
                                        f"{acts}", width))

    def summary(self) -> str:
        """The whole map in one line (the start-up log line, the TUI's legend)."""
        ctl = ", ".join(f"{cc} {n}" for cc, n in sorted(self.controls.items())) or "none"
        act = ", ".join(f"{cc} {n}" for cc, n in sorted(self.actions.items())) or "none"
        return f"CC controls: {ctl}; actions (rising past {self.threshold - 1}): {act}"


class Edges:
    """Per-channel memory of controller values: rising edges of actions, pedal changes.

    Called from MIDI input callbacks (one per input port); each update is one dict
    assignment, safe under the GIL.
    """

    def __init__(self, threshold: int = THRESHOLD) -> None:
        self.threshold = int(threshold)
        self._last: dict[tuple[int, int], int] = {}

    def rising(self, channel: int, cc: int, value: int) -> bool:
        """Record ``value``; True when it crossed the threshold upwards (an unknown
        previous value counts as 0, so the first press fires)."""
        prev = self._last.get((channel, cc), 0)
        self._last[(channel, cc)] = int(value)
        return prev < self.threshold <= value

    def pedal(self, channel: int, value: int) -> bool | None:
        """Record a sustain value; True when the pedal went down, False when it came up,
        None when its state did not change (half-pedal wiggles)."""
        was = self._last.get((channel, SUSTAIN), 0) >= self.threshold
        self._last[(channel, SUSTAIN)] = int(value)
        down = value >= self.threshold
        return None if down == was else down


def help_epilog(app: str, cmap: ControlMap | None = None) -> str:
    """The CC map of ``app`` as ``--help`` shows it (for an argparse epilog with
    ``RawDescriptionHelpFormatter``)."""
    cmap = (cmap or ControlMap.default()).only(app)
    pedal = ("passed to the output with --thru" if app == "improvise" else
             "holds the model's answers until the pedal lifts (and passes with --thru)")
    where = "the input voices' channels" if app == "play" else "the player channels"
    text = [f"MIDI controls, heard on {where} (on every channel when there are none):",
            *("  " + s for s in cmap.lines()), f"  sustain (CC 64): {pedal}"]
    if app != "play":
        text.append("  --cc NAME=CC[,NAME=CC...] moves them (NAME=off drops one).")
    else:
        text.append("  [[control]] / [[action]] tables of a presets file move them.")
    return "\n".join(text)


SUSTAIN_PREFIX = "sustain:"


def sustain_name(inst: int) -> str:
    """The control name under which the pedal of player instrument ``inst`` reaches the
    policies (``Policy.on_control(ctx, "sustain:1", 1.0)``: down; ``0.0``: up)."""
    return f"{SUSTAIN_PREFIX}{int(inst)}"


def sustain_inst(name: str) -> int | None:
    """The instrument of a :func:`sustain_name`, or None for any other control."""
    if not name.startswith(SUSTAIN_PREFIX):
        return None
    try:
        return int(name[len(SUSTAIN_PREFIX):])
    except ValueError:
        return None


__all__ = ["ACTIONS", "APP_USES", "CONTROLS", "DEFAULT_CCS", "SUSTAIN", "THRESHOLD",
           "ControlMap", "Edges", "check_cc", "help_epilog", "sustain_inst", "sustain_name"]
