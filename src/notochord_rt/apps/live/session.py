"""Live MIDI sessions: ports + channel maps + the :class:`~.player.Player`.

:class:`LiveSession` wires everything a live app needs and tears it down in the safe
order (inputs closed, then the player stopped — which releases every note — then the
outputs closed), on normal exit, Ctrl-C, a player error, or a lost port with
``on_port_loss="exit"``. :class:`InputRouter` is the MIDI-input callback: it only stamps
and enqueues (notes of the player channels, steering CCs, reset/panic actions).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mido

from ... import events as ev
from ...errors import InputError, UserError
from .connections import PortsMixin
from .controls import SUSTAIN, ControlMap, Edges, sustain_name
from .noise import backend_noise
from .player import Player, PlayerConfig, Policy
from .ports import ChannelMap, FeedbackFilter, MidiOut, OpenedPort
from .portwatch import PortWatch
from .warmup import settle_memory, unsettle_memory

log = logging.getLogger(__name__)

startup_log = logging.getLogger("notochord_rt.startup")
"""Lines a user should see when an app starts (the ports, the CC map, "running"): the
CLI shows this logger at INFO even without ``-v``."""

DEFAULT_CONTROLS = dict(ControlMap.default("improvise").controls)
DEFAULT_ACTIONS = dict(ControlMap.default("improvise").actions)


@dataclass
class LiveOptions:
    """Ports and behaviour of a :class:`LiveSession` (CLI flags map onto these)."""

    api: str | None = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    virtual_in: list[str] = field(default_factory=list)
    virtual_out: list[str] = field(default_factory=list)
    client_name: str = "notochord-rt"
    thru: bool = False
    suppress_feedback: float | None = None
    send_programs: bool = True
    on_port_loss: str = "wait"
    on_server_loss: str = "exit"
    """When the MIDI server dies: ``"exit"``, or ``"wait"`` for it and reopen the ports."""
    watch_interval: float = 0.25
    controls: Mapping[int, str] = field(default_factory=lambda: dict(DEFAULT_CONTROLS))
    actions: Mapping[int, str] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))
    player: PlayerConfig = field(default_factory=PlayerConfig)
    clock: Any = None
    """An ``apps.live.clock.Clock`` (``--clock``) the player follows; None = free time."""


class InputRouter:
    """mido input callback: stamp each message and hand it to the player (never blocks).

    Only the player channels (``cmap``) are heard: their notes become
    ``player.note_input``; CCs in ``controls`` become ``player.control(name, value /
    127)``; CCs in ``actions`` trigger ``reset``, ``panic`` or ``player.control(action,
    1)`` (the policy handles ``mute``/``query``/``stop``) once per rising edge past
    ``threshold`` (:class:`~.controls.Edges`); the sustain pedal (CC 64) becomes
    ``player.control("sustain:INST", 1 or 0)`` when it goes down or up. With no player
    channels at all, CCs are heard on every channel. ``thru`` (a :class:`MidiOut`) gets
    every channel message of the player channels (notes, sustain, expression, pitch bend,
    pressure; not the CCs of the map), on the instrument's output channel.
    """

    def __init__(self, player: Player, cmap: ChannelMap, *, controls: Mapping[int, str],
                 actions: Mapping[int, str], feedback: FeedbackFilter | None = None,
                 thru: MidiOut | None = None, threshold: int = 64) -> None:
        self.player, self.cmap = player, cmap
        self.controls, self.actions = dict(controls), dict(actions)
        self.feedback, self.thru = feedback, thru
        self.edges = Edges(threshold)
        self.ignored = 0

    def __call__(self, msg: mido.Message) -> None:
        t = self.player.clock()
        try:
            if self.feedback is not None and self.feedback.is_echo(msg.bytes()):
                return
            inst = self.cmap.inst_of(msg.channel) if hasattr(msg, "channel") else None
            if msg.type in ("note_on", "note_off") and inst is not None:
                vel = msg.velocity if msg.type == "note_on" else 0
                self.player.note_input(inst, msg.note, vel, t)
            elif msg.type == "control_change" and (inst is not None or not self.cmap.inst):
                if self._control(msg.channel, inst, msg.control, msg.value):
                    return  # ours: not passed thru
            else:
                self.ignored += 1
                if inst is None:
                    return
            if self.thru is not None and inst is not None:
                ch = self.thru.cmap.channel_of(inst)
                self.thru.send(msg if ch is None or ch == msg.channel else msg.copy(channel=ch))
        except Exception:  # a callback must never raise into rtmidi's thread
            log.exception("MIDI input handling failed for %s", msg)

    def _control(self, channel: int, inst: int | None, cc: int, value: int) -> bool:
        """Handle one CC; True when it belongs to the control map."""
        if cc in self.controls:
            self.player.control(self.controls[cc], value / 127)
        elif cc in self.actions:
            if self.edges.rising(channel, cc, value):
                action = self.actions[cc]
                if action == "reset":
                    self.player.reset()
                elif action == "panic":
                    self.player.panic()
                else:
                    self.player.control(action, 1.0)
        else:
            if cc == SUSTAIN and inst is not None:
                down = self.edges.pedal(channel, value)
                if down is not None:
                    self.player.control(sustain_name(inst), 1.0 if down else 0.0)
            else:
                self.ignored += 1
            return False
        return True


class LiveSession(PortsMixin):
    """Open ports, start a :class:`Player` with ``policy``; close everything on exit.
    Ports, connections and the MIDI server are watched (:mod:`.connections`).

    ``cmap_in``: player channels → instruments fed as input; ``cmap_out``: instruments the
    model plays → output channels. Use as a context manager, then :meth:`wait`.
    """

    def __init__(self, model: Any, policy: Policy, cmap_in: ChannelMap, cmap_out: ChannelMap,
                 options: LiveOptions | None = None) -> None:
        self.model, self.policy = model, policy
        self.cmap_in, self.cmap_out = cmap_in, cmap_out
        self.opt = options or LiveOptions()
        if self.opt.on_port_loss not in ("wait", "exit"):
            raise UserError(f"on_port_loss must be 'wait' or 'exit', got {self.opt.on_port_loss!r}")
        if self.opt.on_server_loss not in ("wait", "exit"):
            raise UserError("on_server_loss must be 'wait' or 'exit', "
                            f"got {self.opt.on_server_loss!r}")
        self.lost = threading.Event()
        self.lost_ports: list[tuple[str, str]] = []
        self.out: MidiOut | None = None
        self.player: Player | None = None
        self.router: InputRouter | None = None
        self._inputs: list[OpenedPort] = []
        self._outputs: list[OpenedPort] = []
        self._watch: PortWatch | None = None
        self._announce: threading.Timer | None = None

    def __enter__(self) -> LiveSession:
        try:
            with backend_noise():  # ALSA/libjack chatter: one summary line
                self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _open(self) -> None:
        # JACK: every client first, input callbacks last (see the ports module doc)
        o = self.opt
        if not (o.outputs or o.virtual_out):
            raise UserError("no MIDI output: give --midi-out NAME or --virtual-out NAME")
        fb = FeedbackFilter(o.suppress_feedback) if o.suppress_feedback else None
        self._open_ports()
        out_map = self.cmap_out.merged(self.cmap_in) if o.thru else self.cmap_out
        self.out = MidiOut(self._outputs, out_map, fb, send_programs=o.send_programs)
        self.player = Player(self.model, self.out, self.policy, o.player, beat_clock=o.clock)
        self.router = InputRouter(self.player, self.cmap_in, controls=o.controls,
                                  actions=o.actions, feedback=fb,
                                  thru=self.out if o.thru else None)
        settle_memory()  # the collector's first full pass now, not with the first notes
        self.player.start()
        self._listen_and_watch()
        self._report_ports()
        # a fresh JACK connection may lose what is sent before it is active: say it again
        self._announce = threading.Timer(0.5, self.out.announce)
        self._announce.daemon = True
        self._announce.start()

    def wait(self, duration: float | None = None, poll: float = 0.05) -> int:
        """Block until ``duration`` passes, a port is lost (``on_port_loss="exit"``), the
        player fails, or Ctrl-C; returns an exit status (0 ok, 1 player error, 3 lost port
        or MIDI server)."""
        end = None if duration is None else time.monotonic() + duration
        while True:
            if self.player is not None and self.player.error is not None:
                return 1
            if self.lost.is_set():
                if self.server_lost is None:
                    names = ", ".join(n for n, _ in self.lost_ports)
                    log.warning("exiting: MIDI port lost (%s)", names)
                return 3
            if end is not None and time.monotonic() >= end:
                return 0
            time.sleep(poll)

    def close(self) -> None:
        """Inputs first (no more callbacks), then the player (releases notes), then outputs."""
        if self._announce is not None:
            self._announce.cancel()
            self._announce.join()
        self._close_ports()
        unsettle_memory()


def voice_channels(insts: list[int], taken: set[int], spec: str | None = None) -> ChannelMap:
    """Output channels for model instruments: ``spec`` ("2=violin,...") or the first free
    channels (drum kits on channel 10 when free), skipping ``taken``."""
    if spec:
        cmap = ChannelMap.parse(spec)
        missing = [i for i in insts if cmap.channel_of(i) is None]
        if missing:
            raise UserError("no output channel for " + ", ".join(ev.instrument_name(i)
                                                                 for i in missing))
        return cmap
    free = [c for c in range(16) if c not in taken and c != ev.DRUM_CHANNEL]
    mapping: dict[int, int] = {}
    for inst in dict.fromkeys(insts):
        if ev.is_drum(inst) and ev.DRUM_CHANNEL not in taken and ev.DRUM_CHANNEL not in mapping:
            mapping[ev.DRUM_CHANNEL] = inst
            continue
        if not free:
            raise UserError("more model instruments than free MIDI channels")
        mapping[free.pop(0)] = inst
    return ChannelMap(mapping)


def options_from_args(args: Any, app: str | None = None) -> LiveOptions:
    """:class:`LiveOptions` from the flags of :func:`.live_args.add_live_arguments`; the
    CC map is ``app``'s part of the default map (:mod:`.controls`) changed by ``--cc``."""
    virtual_in = list(args.virtual_in or [])
    virtual_out = list(args.virtual_out or [])
    if not (args.midi_in or virtual_in):
        virtual_in = ["in"]
    if not (args.midi_out or virtual_out):
        virtual_out = ["out"]
    try:
        cmap = ControlMap.default().with_spec(getattr(args, "cc", None)).only(app)
    except InputError as e:
        raise UserError(f"--cc: {str(e).removeprefix('--cc: ')}") from None
    return LiveOptions(
        controls=dict(cmap.controls), actions=dict(cmap.actions),
        api=args.midi_api, inputs=list(args.midi_in or []), outputs=list(args.midi_out or []),
        virtual_in=virtual_in, virtual_out=virtual_out, client_name=args.client_name,
        thru=args.thru, suppress_feedback=args.suppress_feedback or None,
        send_programs=not args.no_program_change, on_port_loss=args.on_port_loss,
        on_server_loss=getattr(args, "on_server_loss", "exit"),
        player=PlayerConfig(lookahead=args.lookahead / 1000))


def load_live_model(args: Any) -> Any:
    """The model named by ``args.checkpoint`` on the CPU core chosen by ``args.precision``
    (``args.threads`` torch threads; 1 is best for one live stream)."""
    from ..loading import load_sampler

    return load_sampler(getattr(args, "checkpoint", None) or "default",
                        getattr(args, "precision", "fp32"),
                        int(getattr(args, "threads", 1) or 1),
                        download=bool(getattr(args, "download", False)))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C (every note
    released); the app then exits with :data:`EXIT_SIGTERM`."""


EXIT_SIGINT = 130
"""Exit status after Ctrl-C (128 + SIGINT), the same in every live app."""
EXIT_SIGTERM = 143
"""Exit status after SIGTERM (128 + SIGTERM), the same in every live app."""


def _interrupt(signum: int, frame: Any) -> None:
    raise Terminated


def run_session(session: LiveSession, args: Any, what: str) -> int:
    """Run until done; log a timing summary (and write it to ``--stats-json``).

    SIGTERM is handled like Ctrl-C (in the main thread), so a killed app still releases
    every note; the status is then 143 (130 after Ctrl-C).
    """
    import signal

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _interrupt)
    o = session.opt
    status = 0
    try:
        with session:
            startup_log.info("%s: %s", what, ControlMap(o.controls, o.actions).summary())
            startup_log.info("%s: running (Ctrl-C to stop)", what)
            status = session.wait(args.duration)
    except KeyboardInterrupt as e:
        status = EXIT_SIGTERM if isinstance(e, Terminated) else EXIT_SIGINT
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        if session.player is not None:
            summary = session.player.stats.summary()
            summary["lost_ports"] = session.lost_ports
            log.info("timing: %s", summary)
            if getattr(args, "stats_json", None):
                with open(args.stats_json, "w") as f:
                    json.dump(summary, f, indent=1)
    if session.player is not None and session.player.error is not None:
        raise UserError(f"{what} stopped: {session.player.error}")
    return status


__all__ = ["EXIT_SIGINT", "EXIT_SIGTERM", "InputRouter", "LiveOptions", "LiveSession",
           "Terminated", "load_live_model", "options_from_args", "run_session", "startup_log",
           "voice_channels"]
