"""One browser tab's session: a real-time player running the play app's voices.

A :class:`WebSession` owns a :class:`~notochord_rt.apps.live.player.Player` (its own
scheduler thread and model stream) running
:class:`~notochord_rt.apps.play.policy.VoicesPolicy`, driven through the terminal UI's
own :class:`~notochord_rt.apps.play.policy.PlayController` — the same voices, modes,
presets, controls and actions as ``notochord-rt play``. Its :class:`WebSink` turns what
the player sends into ``note`` messages for the page (with their scheduled and actual
session times, and the id of the played note they answer); the player releases every
note it started on panic, reset and stop, and :meth:`WebSession.close` stops it (tab
closed, connection lost, idle timeout, server shutdown).

Thread model: :meth:`WebSession.handle` runs on the server's event loop (the "UI
thread" of the controller); the sink and the listener run on the player's scheduler
thread and hand messages to ``send``, which must be thread-safe.
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ... import events as ev
from ...errors import InputError, NotochordError, UserError
from ..live.player import Player, PlayerConfig, PlayerEvent
from ..play.policy import PlayController, VoicesPolicy, feed_prompt_file
from ..play.voices import Rig, instrument_groups, short_name
from .protocol import VERSION, Message, ProtocolError
from .recorder import Recorder

log = logging.getLogger(__name__)

WEB_PLAYER = PlayerConfig(spin=0.0005, pause_after_send=0.001)
"""The player's timing for the web: a short spin (many tabs' players share the CPU; the
page's own audio scheduling absorbs the rest), and 1 ms after each answer sent during
which the model does not compute, so the server's event loop (the "driver" here) takes
the interpreter lock and writes the answer to the WebSocket at once instead of between
the next voices' model calls: one tab's press to first answer in the page p50 / p99
4.4 / 10.4 and 4.3 / 11.6 ms without the pause, 3.7 / 7.3 and 3.9 / 9.2 ms with it
(0.5 ms: 8.9 and 10.5 ms p99; 2 ms: 8.0 and 9.5; docs/web.md)."""


def gm_program(inst: int, program: int | None = None) -> int:
    """The GM program a synth plays for ``inst`` (an anonymous id: ``program`` or 0)."""
    p = ev.program_of(inst)
    return p if p is not None else (program or 0)


def rig_message(rig: Rig, preset: str | None) -> dict[str, Any]:
    """The ``rig`` message: every voice (1-based channels) and the controls."""
    voices = []
    for ch, v in sorted(rig.voices.items()):
        voices.append({
            "channel": ch + 1, "inst": v.inst, "name": short_name(v.inst, 24),
            "mode": v.state, "source": None if v.source is None else v.source + 1,
            "range": list(v.range), "program": gm_program(v.inst, v.program),
            "drum": bool(ev.is_drum(v.inst))})
    controls = {k: {"value": s.value, "lo": s.lo, "hi": s.hi} for k, s in rig.controls.items()}
    return {"type": "rig", "preset": preset, "voices": voices, "controls": controls,
            "muted": rig.muted, "stopped": rig.stopped}


class WebSink:
    """The player's output for one tab (scheduler thread): each note becomes a message.

    ``sounding`` holds the model's notes sent on and not yet off (empty after every
    release: tests check it)."""

    def __init__(self, session: WebSession) -> None:
        self.s = session
        self.sounding: set[tuple[int, int]] = set()
        self.due: tuple[int, int, bool, float] | None = None  # the planned event
        self.answering: int | None = None  # id of the played note being answered
        self.inst_channel: dict[int, int] = {}

    def note(self, inst: int, pitch: int, vel: int) -> None:
        s = self.s
        now = s.clock()
        key = (int(inst), int(pitch))
        if vel > 0:
            self.sounding.add(key)
        else:
            self.sounding.discard(key)
        when = now
        if self.due is not None and self.due[:3] == (key[0], key[1], vel > 0):
            when, self.due = self.due[3], None
        v = s.policy.rig.voice_of(key[0])
        if v is not None:
            self.inst_channel[key[0]] = v.channel
        ch = self.inst_channel.get(key[0], ev.DRUM_CHANNEL if ev.is_drum(key[0]) else 0)
        s.recorder.add(key[0], key[1], vel, now)
        msg = {"type": "note", "ch": ch + 1, "inst": key[0], "pitch": key[1], "vel": int(vel),
               "time": round(when - s.t0, 6), "sent": round(now - s.t0, 6)}
        if self.answering is not None and vel > 0:
            msg["reply"] = self.answering
        s.send(msg)

    def panic(self) -> None:
        self.sounding.clear()
        self.s.send({"type": "panic", "sent": round(self.s.clock() - self.s.t0, 6)})


class WebSession:
    """One tab: player + voices policy + controller + recorder (see the module doc).

    ``model``: this tab's own sampler (see :mod:`.engine`); ``book``: the presets;
    ``send(msg)``: thread-safe delivery of a message dict to the page.
    """

    def __init__(self, sid: str, model: Any, book: Any, send: Callable[[dict], None], *,
                 preset: str | int = 0, clock: Callable[[], float] = time.perf_counter,
                 config: PlayerConfig | None = None) -> None:
        self.id = sid
        self.book = book
        self.send = send
        self.clock = clock
        self.t0 = clock()
        self.last_active = time.monotonic()
        self.recorder = Recorder()
        self.preset = book.find(preset).name
        self.policy = VoicesPolicy(book.rig(self.preset))
        self.sink = WebSink(self)
        self.player = Player(model, self.sink, self.policy, config or WEB_PLAYER, clock=clock)
        self.ctl = PlayController(self.player, self.policy, book)
        self.ctl.preset_name = self.preset
        self._ids: deque[int | None] = deque()  # ids of the notes handed to the player
        self._new_rig: Rig | None = None  # a prompt's rig, for the controller
        self.player.add_listener(self._on_event)
        self.closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.player.start()
        self.player.call(self.policy.start)

    def close(self) -> None:
        """Stop the player: every model note is released (idempotent). A second caller
        (the idle check racing the socket's own close) also waits for the player to stop,
        so that when any call returns, the session is silent."""
        first = not self.closed
        self.closed = True
        self.player.stop()
        if first:
            log.info("session %s closed", self.id)

    def welcome(self) -> dict[str, Any]:
        """The first message: protocol version, presets, instruments, the current rig."""
        return {"type": "welcome", "version": VERSION, "session": self.id,
                "presets": [{"name": p.name, "description": p.description}
                            for p in self.book.presets],
                "instruments": [{"group": g, "insts": [[i, short_name(i, 24)] for i in ids]}
                                for g, ids in instrument_groups()],
                "rig": rig_message(self.ctl.rig, self.preset)}

    # -- scheduler thread --------------------------------------------------------------------
    def _on_event(self, e: PlayerEvent) -> None:
        if e.kind == "input":
            self.sink.answering = self._ids.popleft() if self._ids else None
        elif e.kind == "planned":
            self.sink.answering = None
            self.sink.due = (e.inst, e.pitch, getattr(e.info, "is_note_on", e.vel > 0), e.t)
        elif e.kind in ("reset", "panic"):
            self.sink.answering = None
            if e.kind == "reset":
                self.send({"type": "reset"})
        elif e.kind == "error":
            self.send({"type": "error", "message": f"the player stopped: {e.info!r}"})

    # -- messages from the page (event loop) -------------------------------------------------
    def handle(self, msg: Message) -> list[dict[str, Any]]:
        """Act on a checked message; returns the replies (``ProtocolError`` for a refused
        one; the session is unchanged then), then the controller's notes to the person
        (``log`` messages, e.g. an instrument made anonymous because another voice has it)."""
        self.last_active = time.monotonic()
        try:
            return self._handle(msg)
        finally:
            while self.ctl.messages:
                self.send({"type": "log", "message": self.ctl.messages.popleft()})

    def _handle(self, msg: Message) -> list[dict[str, Any]]:
        t, a = msg.type, msg.args
        if t == "note":
            self._note(a)
            return []
        if t == "ping":
            return [{"type": "pong", "id": a["id"], "time": round(self.clock() - self.t0, 6)}]
        if t == "hello":
            return [self.welcome()]
        if t == "control":
            spec = self.ctl.rig.controls[a["name"]]
            if not spec.lo <= a["value"] <= spec.hi:
                raise ProtocolError(f"control: {a['name']} must be in {spec.lo:g}..{spec.hi:g} "
                                    f"in this preset, got {a['value']:g}", t)
            self.ctl.set_control(a["name"], a["value"])
            return []
        if t == "action":
            self.ctl.action(a["name"])
            if a["name"] in ("mute", "stop"):
                self.ctl.rig.muted ^= a["name"] == "mute"
                self.ctl.rig.stopped ^= a["name"] == "stop"
                return [self.rig()]
            return []
        if t == "voice":
            self._voice(a)
            return [self.rig()]
        if t == "preset":
            try:
                self.preset = self.ctl.load_preset(a["name"])
            except UserError as e:
                raise ProtocolError(f"preset: {e}", t) from None
            return [self.rig()]
        if t == "record":
            if a["on"]:
                self.recorder.start(self.clock())
            else:
                self.recorder.stop()
            return [{"type": "recording", "on": self.recorder.on, "events": len(self.recorder)}]
        if t == "export":
            if not len(self.recorder):
                raise ProtocolError("export: nothing recorded yet (press record, play, then "
                                    "download)", t)
            self._programs()
            data = self.recorder.midi()
            return [{"type": "midi", "name": "notochord-session.mid", "events": len(self.recorder),
                     "data": base64.b64encode(data).decode("ascii")}]
        if t == "prompt":
            self._prompt(a["name"], a["data"])
            return [{"type": "prompting", "name": a["name"]}]
        raise ProtocolError(f"unhandled message type {t!r}", t)  # pragma: no cover

    def rig(self) -> dict[str, Any]:
        return rig_message(self.ctl.rig, self.preset)

    def _programs(self) -> None:
        self.recorder.programs = {v.inst: v.program for v in self.ctl.rig.voices.values()
                                  if v.program is not None}

    def _note(self, a: dict[str, Any]) -> None:
        rig = self.ctl.rig
        inputs = rig.input_channels()
        if not inputs:
            raise ProtocolError("note: no voice is in input mode (set a channel's mode to "
                                "input to play)", "note")
        if a["channel"] is None:
            inst = next(iter(inputs.values()))
        elif a["channel"] - 1 in inputs:
            inst = inputs[a["channel"] - 1]
        else:
            raise ProtocolError(f"note: channel {a['channel']} is not an input voice", "note")
        now = self.clock()
        self.recorder.add(inst, a["pitch"], a["vel"], now)
        self._ids.append(a["id"])
        self.player.note_input(inst, a["pitch"], a["vel"], now)

    def _voice(self, a: dict[str, Any]) -> None:
        ch = a["channel"] - 1
        saved = self.ctl.rig.copy()
        try:
            v = self.ctl.voice(ch)
            if v is None and "mode" not in a and "inst" not in a:
                raise ProtocolError(f"voice: channel {ch + 1} has no voice yet (set its mode "
                                    "or instrument first)", "voice")
            if "source" in a or "range" in a:
                if v is None:
                    self.ctl.set_mode(ch, a.get("mode", "auto"))
                    v = self.ctl.voice(ch)
                if "source" in a:
                    v.source = a["source"] - 1  # type: ignore[union-attr]
                if "range" in a:
                    v.range = a["range"]  # type: ignore[union-attr]
                self.ctl.rig.validate()
            if "inst" in a:
                self.ctl.set_inst(ch, a["inst"])
            if "mode" in a:
                self.ctl.set_mode(ch, a["mode"])
            if "mode" not in a and "inst" not in a:
                self.ctl.push()
        except (InputError, ValueError) as e:
            self.ctl.rig = saved
            if isinstance(e, ProtocolError):
                raise
            raise ProtocolError(f"voice: {e}", "voice") from None

    def _prompt(self, name: str, data: bytes) -> None:
        """Feed a MIDI file as the prompt (on the scheduler thread, with the project's
        ingest); its instruments become the voices and reset returns to it."""
        self.player.panic()
        rig = self.ctl.rig.copy()

        def job(ctx: Any) -> None:
            fd, path = tempfile.mkstemp(suffix=".mid", prefix="notochord-web-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                try:
                    new, state, notes = feed_prompt_file(self.player.model, path, rig)
                except (NotochordError, OSError) as e:
                    self.send({"type": "error", "about": "prompt",
                               "message": f"prompt {name}: {e}".replace(path, name)})
                    self.player.reset()
                    return
            finally:
                os.unlink(path)
            self.policy.prompt_state = state
            self.policy.set_rig(ctx, new)
            self.player.reset()  # queued: releases, restores the prompt state, re-plans
            self._new_rig = new
            self.send({"type": "prompted", "name": name,
                       "notes": [n.replace(path, name) for n in notes],
                       "rig": rig_message(new, self.preset)})

        self.player.call(job)

    def adopt_prompt_rig(self) -> None:
        """Take the prompt's rig into the controller (event loop, after ``prompted``)."""
        new = self._new_rig
        if new is not None:
            self.ctl.rig = new.copy()
            self._new_rig = None
