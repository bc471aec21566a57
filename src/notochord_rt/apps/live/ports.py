"""MIDI in and out for the live apps: ``python-rtmidi`` ports, ``mido`` messages.

Ports are rtmidi objects used directly (not through mido's backend) because of one JACK
rule: creating or closing a JACK client blocks, holding the GIL, until every client has
finished its process cycle — and a client whose Python input callback is waiting for
the GIL never does (a deadlock; mido creates a client for every port listing). So every
client is created up front, input callbacks are installed last, the port watch lists
ports through clients made before any callback, and a lost port is reconnected on its
existing client.

* Ports are found by exact name or a unique case-insensitive part of it, or created as
  virtual ports (ALSA and JACK have them; Windows does not — use loopMIDI there).
  ``api`` picks the rtmidi API: ``"jack"``, ``"alsa"`` or ``None`` (rtmidi's default).
* :class:`ChannelMap` maps MIDI channels to instrument ids both ways, and makes the
  program changes (and drum/melodic bank selects) that announce them.
* :class:`MidiOut` is the player's :class:`~notochord_rt.apps.live.player.Sink`: it turns
  ``(inst, pitch, vel)`` into note messages on the mapped channel, remembers what sounds
  and sends note-offs + all-notes-off on :meth:`MidiOut.panic`.
* :class:`FeedbackFilter` drops input identical to something we sent within a short
  window, for loopback setups where our output comes back in.
* :class:`~.portwatch.PortWatch` (in :mod:`.portwatch`) polls the port list and the
  connections of our ports.

Channels are 0-based in code and 1-based in anything a user types.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import mido

from ... import events as ev
from ...errors import UserError

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25
"""How long an output port stays open after its last message, so the backend sends it."""

APIS = {"jack": "UNIX_JACK", "alsa": "LINUX_ALSA", "coremidi": "MACOSX_CORE",
        "winmm": "WINDOWS_MM"}
ALL_NOTES_OFF, ALL_SOUND_OFF, SUSTAIN = 123, 120, 64
PITCH_BEND = -1
"""Key of the pitch bend in :class:`MidiOut`'s controller state."""
NOT_STATE = frozenset({0, 32, *range(120, 128)})
"""Controllers that are not state to repeat to a new synth: bank select (the program
messages carry it) and the channel mode messages (all notes off...)."""


def rt_api(api: str | None = None) -> int:
    """The rtmidi API constant for ``api`` (a key of :data:`APIS` or an rtmidi API name);
    UserError if it is not compiled in. ``None`` picks the first compiled API that can
    start a client here (e.g. JACK on a Linux box without an ALSA sequencer)."""
    try:
        import rtmidi
    except ImportError as e:  # pragma: no cover - depends on the install
        raise UserError("live MIDI needs python-rtmidi: pip install 'notochord-rt[live]'") from e
    compiled = rtmidi.get_compiled_api()
    if api is None:
        errors = []
        for value in compiled:
            try:
                rtmidi.MidiOut(value, name="notochord-rt-probe").delete()
                return value
            except Exception as e:  # noqa: BLE001 - rtmidi raises its own error types
                errors.append(f"{rtmidi.get_api_name(value)}: {e}")
        raise UserError("no MIDI system is running (" + "; ".join(errors or ["none compiled"])
                        + "); start JACK or load the ALSA sequencer")
    name = APIS.get(api.lower(), api)
    value = getattr(rtmidi, f"API_{name}", None)
    if value is None or value not in compiled:
        have = ", ".join(rtmidi.get_api_name(a) for a in compiled) or "none"
        raise UserError(f"MIDI API {api!r} is not compiled into python-rtmidi here "
                        f"(available: {have})")
    return value


def _new_client(kind: str, api: int, name: str) -> Any:
    import rtmidi

    cls = rtmidi.MidiIn if kind == "input" else rtmidi.MidiOut
    try:
        return cls(api, name=name)
    except (rtmidi.SystemError, RuntimeError) as e:
        raise UserError(f"cannot start a MIDI client ({e})") from None


def find_port(available: Iterable[str], wanted: str, kind: str) -> str:
    """The port named ``wanted``: exact, else the one whose name contains it (any case)."""
    names = list(available)
    if wanted in names:
        return wanted
    hits = [n for n in names if wanted.lower() in n.lower()]
    if len(hits) == 1:
        return hits[0]
    listed = ", ".join(names) or "none"
    if not hits:
        raise UserError(f"no MIDI {kind} port matches {wanted!r} (available: {listed})")
    raise UserError(f"MIDI {kind} port {wanted!r} is ambiguous: {', '.join(hits)}")


# -- channels and instruments ------------------------------------------------------------------
class ChannelMap:
    """MIDI channel (0..15) ↔ instrument id (1..320), one instrument per channel.

    ``programs`` optionally gives the GM program (0..127) to announce for a channel whose
    instrument is anonymous (default 0); named instruments announce their own program.
    """

    def __init__(self, mapping: Mapping[int, int], programs: Mapping[int, int] | None = None):
        self.inst: dict[int, int] = {}
        for ch, inst in mapping.items():
            if not 0 <= int(ch) < 16:
                raise UserError(f"MIDI channel must be 1..16, got {int(ch) + 1}")
            if not ev.is_valid_instrument(int(inst)):
                raise UserError(f"instrument id must be 1..{ev.NUM_INSTRUMENTS}, got {inst}")
            self.inst[int(ch)] = int(inst)
        self.channel: dict[int, int] = {}
        for ch, inst in sorted(self.inst.items()):
            if inst in self.channel:
                raise UserError(f"instrument {ev.instrument_name(inst)!r} is on two channels "
                                f"({self.channel[inst] + 1} and {ch + 1})")
            self.channel[inst] = ch
        self.programs = {int(k): int(v) for k, v in (programs or {}).items()}

    @classmethod
    def parse(cls, spec: str | None, default: Mapping[int, int] | None = None) -> ChannelMap:
        """``"1=piano,2=violin,10=drums"`` (1-based channels, names or ids)."""
        if not spec:
            return cls(default or {})
        mapping: dict[int, int] = {}
        for item in spec.split(","):
            ch, sep, name = item.partition("=")
            if not sep or not ch.strip().isdigit():
                raise UserError(f"channel map item {item!r} must be CHANNEL=INSTRUMENT")
            try:
                mapping[int(ch) - 1] = ev.parse_instrument(name)
            except ValueError as e:
                raise UserError(str(e)) from None
        return cls(mapping)

    def merged(self, other: ChannelMap) -> ChannelMap:
        """Both maps in one (a channel or instrument used twice is an error)."""
        both = dict(self.inst)
        for ch, inst in other.inst.items():
            if ch in both:
                raise UserError(f"MIDI channel {ch + 1} is used twice")
            both[ch] = inst
        return ChannelMap(both, {**self.programs, **other.programs})

    def inst_of(self, channel: int) -> int | None:
        return self.inst.get(channel)

    def channel_of(self, inst: int) -> int | None:
        return self.channel.get(inst)

    def program_messages(self) -> list[mido.Message]:
        """Bank select + program change announcing each channel's instrument."""
        out = []
        for ch, inst in sorted(self.inst.items()):
            prog = ev.program_of(inst)
            if prog is None:
                prog = self.programs.get(ch, 0)
            drum = bool(ev.is_drum(inst))
            out.append(mido.Message("control_change", channel=ch, control=0,
                                    value=1 if drum else 0))
            out.append(mido.Message("control_change", channel=ch, control=32, value=0))
            out.append(mido.Message("program_change", channel=ch, program=prog))
        return out


# -- feedback suppression ----------------------------------------------------------------------
class FeedbackFilter:
    """Recognise our own output coming back in (loopback setups).

    :meth:`sent` records each outgoing message; :meth:`is_echo` says whether an incoming
    one equals a message sent less than ``window`` seconds ago (and consumes that record,
    so a real repeat after the echo is let through).
    """

    def __init__(self, window: float = 0.03, clock: Callable[[], float] = time.perf_counter):
        self.window = float(window)
        self.clock = clock
        self._sent: deque[tuple[float, bytes]] = deque()
        self._lock = threading.Lock()
        self.dropped = 0

    def sent(self, data: bytes) -> None:
        with self._lock:
            self._sent.append((self.clock(), bytes(data)))

    def is_echo(self, data: bytes) -> bool:
        now = self.clock()
        data = bytes(data)
        with self._lock:
            while self._sent and now - self._sent[0][0] > self.window:
                self._sent.popleft()
            for k, (_, d) in enumerate(self._sent):
                if d == data:
                    del self._sent[k]
                    self.dropped += 1
                    return True
        return False


# -- output --------------------------------------------------------------------------------------
class MidiOut:
    """A :class:`~notochord_rt.apps.live.player.Sink` over one or more mido output ports."""

    def __init__(self, ports: list[Any], cmap: ChannelMap,
                 feedback: FeedbackFilter | None = None, send_programs: bool = True) -> None:
        self.ports = list(ports)
        self.cmap = cmap
        self.feedback = feedback
        self._lock = threading.Lock()
        self._sounding: set[tuple[int, int]] = set()  # (channel, pitch)
        self._unmapped: set[int] = set()
        self._controls: dict[tuple[int, int], int] = {}  # (channel, cc or PITCH_BEND) -> value
        self._unheard: set[tuple[int, int]] = set()  # released while a connection was down
        self.sent = 0
        self.send_programs = send_programs
        self.announce()

    def announce(self) -> None:
        """Send the bank selects and program changes of every channel (if enabled)."""
        if self.send_programs:
            for msg in self.cmap.program_messages():
                self.send(msg)

    def announce_state(self) -> None:
        """Programs (if enabled) and the controller state — the last value sent of every
        controller and the pitch bend of every channel — for a synth that just connected;
        with the note-offs of notes released while a connection was down."""
        self.announce()
        with self._lock:
            state = sorted(self._controls.items())
            offs = sorted(self._unheard - self._sounding)
            self._unheard.clear()
        for (ch, cc), value in state:
            if cc == PITCH_BEND:
                self.send(mido.Message("pitchwheel", channel=ch, pitch=value))
            else:
                self.send(mido.Message("control_change", channel=ch, control=cc, value=value))
        for ch, pitch in offs:
            self.send(mido.Message("note_off", channel=ch, note=pitch, velocity=0))

    def disconnected(self) -> int:
        """A connection went down: remember what sounds now, so that a synth connecting
        again gets those note-offs (:meth:`announce_state`); returns how many."""
        with self._lock:
            self._unheard |= self._sounding
            return len(self._sounding)

    def send(self, msg: mido.Message) -> None:
        """Send to every port; a port that fails is logged, the others still get it."""
        data = bytes(msg.bytes())
        with self._lock:
            if msg.type == "control_change" and msg.control not in NOT_STATE:
                self._controls[(msg.channel, msg.control)] = msg.value
            elif msg.type == "pitchwheel":
                self._controls[(msg.channel, PITCH_BEND)] = msg.pitch
            if self.feedback is not None:
                self.feedback.sent(data)
            for port in self.ports:
                try:
                    port.send(msg)
                except Exception as e:  # a vanished port must not stop the music elsewhere
                    log.warning("MIDI out %s: send failed: %s", getattr(port, "name", port), e)
            self.sent += 1

    def note(self, inst: int, pitch: int, vel: int) -> None:
        ch = self.cmap.channel_of(inst)
        if ch is None:
            if inst not in self._unmapped:
                self._unmapped.add(inst)
                log.warning("instrument %d (%s) has no output channel; its notes are dropped",
                            inst, ev.instrument_name(inst))
            return
        if vel > 0:
            self._sounding.add((ch, pitch))
            self.send(mido.Message("note_on", channel=ch, note=pitch, velocity=int(vel)))
        else:
            self._sounding.discard((ch, pitch))
            self.send(mido.Message("note_off", channel=ch, note=pitch, velocity=0))

    def panic(self) -> None:
        """Note-off for every note we started, then sustain off, all-notes-off and
        all-sound-off on every mapped channel."""
        for ch, pitch in sorted(self._sounding):
            self.send(mido.Message("note_off", channel=ch, note=pitch, velocity=0))
        self._sounding.clear()
        for ch in sorted(self.cmap.inst):
            for cc in (SUSTAIN, ALL_NOTES_OFF, ALL_SOUND_OFF):
                self.send(mido.Message("control_change", channel=ch, control=cc, value=0))

    def close(self) -> None:
        for port in self.ports:
            try:
                port.close()
            except Exception:  # noqa: BLE001 - closing must not mask the real error
                log.debug("closing %s failed", getattr(port, "name", port), exc_info=True)


# -- ports ---------------------------------------------------------------------------------------
class OpenedPort:
    """One rtmidi port (its own client) that can be reconnected after its peer vanished.

    ``name`` is the peer port's full name for a connection, or the port's own name for a
    virtual port; :attr:`own_name` is our port's full name (``client:port``, as JACK
    lists it; ALSA adds the numbers). Input callbacks are installed by :meth:`listen`,
    after every client exists. ``send`` and ``close`` are safe to call from any thread.
    """

    def __init__(self, kind: str, api: int, name: str, virtual: bool, client_name: str,
                 port_name: str | None = None) -> None:
        self.kind, self.name, self.virtual = kind, name, virtual
        self.port_name = name if virtual else (port_name or ("in" if kind == "input" else "out"))
        self.own_name = f"{client_name}:{self.port_name}"
        self.rt = _new_client(kind, api, client_name)
        self.callback: Callable[[mido.Message], None] | None = None
        self.closed = False
        self._last_send = -1e9
        self._lock = threading.Lock()
        if kind == "input":
            self.rt.ignore_types(sysex=True, timing=True, active_sense=True)
        try:
            self._open()
        except BaseException:
            self.rt.delete()
            raise

    def _open(self) -> None:
        if self.virtual:
            self.rt.open_virtual_port(self.name)
            return
        names = self.rt.get_ports()
        if self.name not in names:
            raise UserError(f"MIDI {self.kind} port {self.name!r} is not there")
        try:
            self.rt.open_port(names.index(self.name), self.port_name)
        except Exception as e:  # rtmidi raises its own error types
            raise UserError(f"cannot open MIDI {self.kind} {self.name!r}: {e}") from None

    def deafen(self) -> None:
        """Stop input callbacks (before any client of this process is closed)."""
        if self.kind == "input" and not self.closed:
            self.rt.cancel_callback()

    def listen(self, callback: Callable[[mido.Message], None]) -> None:
        """Start delivering parsed messages to ``callback`` (from rtmidi's thread)."""
        self.callback = callback
        self.rt.set_callback(self._on_message)

    def _on_message(self, event: tuple, data: Any = None) -> None:
        cb = self.callback
        if cb is None:
            return
        try:
            msg = mido.Message.from_bytes(event[0])
        except (ValueError, TypeError):
            return  # not a complete channel message we know
        cb(msg)

    def reopen(self) -> bool:
        """Reconnect to the named peer on the same client; False if it is not there."""
        with self._lock:
            try:
                self.rt.close_port()  # (python-rtmidi drops the callback here)
                self._open()
                if self.kind == "input" and self.callback is not None:
                    self.rt.set_callback(self._on_message)
                return True
            except UserError as e:
                log.warning("%s", e)
                return False

    def send(self, msg: mido.Message) -> None:
        with self._lock:
            if not self.closed:
                self.rt.send_message(msg.bytes())
                self._last_send = time.monotonic()

    def abandon(self) -> None:
        """Forget the client without a word to the MIDI server (it is dead: closing would
        wait on it and print its errors)."""
        with self._lock:
            self.closed = True

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            # A backend such as JACK delivers queued messages on its own process cycle:
            # closing right after the final note-offs would drop them. Give it time.
            wait = self._last_send + FLUSH_SECONDS - time.monotonic()
            if self.kind == "output" and wait > 0:
                time.sleep(wait)
            if self.kind == "input":
                self.rt.cancel_callback()
            self.rt.close_port()
            self.rt.delete()


def port_client(base: str, kind: str, k: int) -> str:
    """The client of our ``k``-th (0-based) port of ``kind``: outputs on ``base``,
    ``base-out2``...; inputs on ``base-in``, ``base-in2``... (rtmidi makes one client per
    port, and JACK would rename clashing names ``base-01``...)."""
    if kind == "output":
        return base if k == 0 else f"{base}-out{k + 1}"
    return f"{base}-in" if k == 0 else f"{base}-in{k + 1}"


def is_own(port: str, clients: Iterable[str]) -> bool:
    """Whether ``port`` (a full name from a port list) belongs to one of ``clients``."""
    return any(port.startswith(f"{c}:") for c in clients)


def open_ports(kind: str, api: int, names: list[str], virtual: list[str],
               client_name: str, lister: Any, own: Iterable[str] = ()) -> list[OpenedPort]:
    """Connect to named ports (matched with :func:`find_port` against ``lister``'s view,
    where the ports of the ``own`` clients count only by their exact name) and create
    virtual ones, each on its client :func:`port_client`; no callbacks yet."""
    out: list[OpenedPort] = []
    own = list(own) + [port_client(client_name, kind, k) for k in range(len(names) + len(virtual))]
    try:
        every = lister.get_ports() if names else []
        available = [p for p in every if not is_own(p, own)]
        for wanted in names:  # our own port only by its exact name (a deliberate loopback)
            name = wanted if wanted in every else find_port(available, wanted, kind)
            client = port_client(client_name, kind, len(out))
            out.append(OpenedPort(kind, api, name, False, client))
        for name in virtual:
            client = port_client(client_name, kind, len(out))
            out.append(OpenedPort(kind, api, name, True, client))
    except BaseException:
        for p in out:
            p.close()
        raise
    return out
