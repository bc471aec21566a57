"""The logic of ``notochord-rt play`` between the terminal UI and the real-time player.

* :class:`VoicesPolicy` is the :class:`~.player.Policy` the player runs (on its scheduler
  thread, the one place that calls the model): auto voices are sampled under
  :meth:`Rig.constraints <.voices.Rig.constraints>`; every note-on of a voice (played or
  sampled) is answered by the voices that follow it (chains included), and their notes end
  when the note they answer ends; controls and the mute/stop/query actions arrive as
  ``player.control(name, value)`` (from the UI or a MIDI CC through
  :class:`~.live.InputRouter`, values 0..1 of the control's range).
* :class:`PlayController` is what the UI calls (UI thread): it edits its own copy of the
  :class:`~.voices.Rig` and hands a copy to the policy through ``player.call``; it never
  touches the model. It collects the player's events for display (next predicted event,
  sounding notes, log) and reads the timing statistics.
* :func:`layout_hook` keeps the MIDI channel maps (input routing, output channels,
  program changes) in step with the voices; :func:`feed_prompt_file` prepares a prompt.

Every sounding note is released by the player on reset, panic, stop and error; voices
that change (instrument, mode, mute) release their own notes first.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ... import events as ev
from ..harmony import HarmonyState, PedalHold
from ..live.player import NoteIn, Player, PlayerContext, PlayerEvent, Policy
from ..offline.generate import feed_prompt
from .voices import MODES, N_CHANNELS, Rig, VoiceConfig, balance_weights

log = logging.getLogger(__name__)

TOGGLES = ("mute", "stop")
RECENT = 32  # autonomous note-ons counted for balancing the auto voices
QUERY = ("query", "replan")
GRIDS: tuple[str | None, ...] = (None, "1/4", "1/8", "1/8t", "1/16", "1/16t")
"""The grids the ``g`` key cycles through (``None``: free time)."""
SWINGS = (0.0, 0.15, 0.3, 0.5)
"""The swing amounts the ``s`` key cycles through."""


@dataclass(frozen=True)
class PolicyView:
    """What the UI shows of the policy's state: control values and the global switches."""

    values: dict[str, float] = field(default_factory=dict)
    muted: bool = False
    stopped: bool = False
    changes: int = 0  # configurations applied so far


class VoicesPolicy(Policy):
    """Auto, input and follow voices of a :class:`Rig` (scheduler thread only).

    ``on_layout(rig)`` is called after each new configuration, once the notes of changed
    voices are released (to update the MIDI channel maps). ``prompt_state`` (a model state
    after a prompt) is where the stream starts and where reset returns to; with one, the
    voices stay silent until :meth:`start` has restored it.
    """

    def __init__(self, rig: Rig, on_layout: Callable[[Rig], None] | None = None,
                 prompt_state: Any = None) -> None:
        self.rig = rig.copy().validate()
        self.on_layout = on_layout
        self.prompt_state = prompt_state
        self.follow = HarmonyState()  # follow notes by the note they answer
        self.pedal = PedalHold()  # follow notes held by an input voice's sustain pedal
        self._cons: Any = None
        self._recent: deque[int] = deque(maxlen=RECENT)  # instruments of recent note-ons
        self._ready = prompt_state is None
        self._changes = 0
        self.view = self._make_view()

    def _make_view(self) -> PolicyView:
        return PolicyView({k: s.value for k, s in self.rig.controls.items()}, self.rig.muted,
                          self.rig.stopped, self._changes)

    def _changed(self) -> None:
        self._cons = None
        self.view = self._make_view()

    # -- Policy ------------------------------------------------------------------------------
    def start(self, ctx: PlayerContext) -> None:
        """Begin the stream: restore the prompt state if there is one."""
        if self.prompt_state is not None:
            ctx.reset_model(self.prompt_state)
        self._ready = True
        ctx.replan()

    def next_constraints(self, ctx: PlayerContext) -> Any:
        if not self._ready:
            return None
        if self._cons is None:
            self._cons = self.rig.constraints(Counter(self._recent)) or False
        return self._cons or None

    def on_input(self, ctx: PlayerContext, note: NoteIn) -> None:
        v = self.rig.voice_of(note.inst)
        key = (note.inst, note.pitch)
        if note.vel < 1:  # the player repairs input: this note sounded, and is ending
            if self.pedal.is_down(note.inst):  # the answers sound on until the pedal lifts
                self.pedal.hold(note.inst, self.follow.release(key))
            else:
                self._release_answers(ctx, key)
        elif v is not None:
            self._answer(ctx, v.channel, note.pitch, note.vel, key, note.t, 0)

    def on_played(self, ctx: PlayerContext, event: Any) -> None:
        key = (int(event.inst), int(event.pitch))
        self._release_answers(ctx, key)
        v = self.rig.voice_of(key[0])
        if event.is_note_on:
            self._count(key[0])
        if event.is_note_on and v is not None:
            vel = ev.note_on_velocity(event.vel)
            self._answer(ctx, v.channel, key[1], vel, key, None, 0)

    def _count(self, inst: int) -> None:
        """Remember an autonomous note-on; the balance weights change only at a new max
        lag, so the constraints are rebuilt only when they would differ."""
        before = balance_weights(self._auto_insts(), Counter(self._recent))
        self._recent.append(inst)
        if balance_weights(self._auto_insts(), Counter(self._recent)) != before:
            self._cons = None

    def _auto_insts(self) -> list[int]:
        return [v.inst for v in self.rig.auto_voices()]

    def on_control(self, ctx: PlayerContext, name: str, value: float) -> None:
        lifted = self.pedal.on_control(name, value)
        if lifted is not None:  # a sustain pedal ("sustain:INST")
            for note in lifted:
                self._end(ctx, note)
            return
        if name in self.rig.controls:
            spec = self.rig.controls[name]
            spec.value = spec.from_unit(value)
        elif name in TOGGLES:
            attr = "muted" if name == "mute" else "stopped"
            setattr(self.rig, attr, not getattr(self.rig, attr))
            log.info("%s %s", "model" if name == "mute" else "auto voices",
                     ("muted" if self.rig.muted else "unmuted") if name == "mute"
                     else ("stopped" if self.rig.stopped else "playing"))
            self._release_silenced(ctx, self.rig)
            if not (self.rig.muted or self.rig.stopped):
                ctx.resume()
        elif name in QUERY:
            ctx.replan()
        else:
            log.warning("unknown control %r ignored", name)
            return
        self._changed()

    def on_reset(self, ctx: PlayerContext) -> None:
        self.follow.clear()
        self.pedal.clear()
        self._recent.clear()
        self._cons = None
        if self.prompt_state is not None:
            ctx.reset_model(self.prompt_state)

    # -- configuration -----------------------------------------------------------------------
    def set_rig(self, ctx: PlayerContext, rig: Rig, controls: bool = False) -> None:
        """Take a new configuration: the voices (and with ``controls`` the control values,
        CCs, actions and switches). Notes of voices that changed are released first."""
        new = rig.copy()
        if not controls:
            new.controls, new.actions = self.rig.controls, self.rig.actions
            new.muted, new.stopped = self.rig.muted, self.rig.stopped
        new.validate()
        old_input = {v.inst for v in self.rig.voices.values() if v.state == "input"}
        changed = {v.inst for ch, v in self.rig.voices.items() if new.voices.get(ch) != v}
        for inst, pitch in sorted(ctx.held_notes()):  # input notes the player still holds
            if inst in old_input and inst in changed:
                self._end(ctx, (inst, pitch), model_note=False)
        for note in sorted(ctx.sounding()):
            if note[0] in changed:
                self._end(ctx, note)
        self._release_silenced(ctx, new)
        self.rig = new
        self._changes += 1
        self._changed()
        if self.on_layout is not None:
            self.on_layout(new)
        ctx.resume()

    # -- follow voices -----------------------------------------------------------------------
    def _answer(self, ctx: PlayerContext, channel: int, pitch: int, vel: int,
                parent: tuple[int, int], t_in: float | None, depth: int) -> None:
        """Let every voice following ``channel`` answer a note-on (recursively)."""
        if depth >= N_CHANNELS:  # a cycle of follow voices: stop somewhere
            return
        for f in self.rig.followers(channel):
            sounding = [p for (i, p) in ctx.held_notes() if i == f.inst]
            cons = self.rig.follow_constraints(f, pitch, vel, sounding)
            if cons is None:
                continue
            e = ctx.sample_now(cons, t_in)
            if e is None:
                continue
            note = (int(e.inst), int(e.pitch))
            self.follow.attach(parent, note)
            self.pedal.forget(note)
            self._answer(ctx, f.channel, note[1], vel, note, t_in, depth + 1)

    def _release_answers(self, ctx: PlayerContext, parent: tuple[int, int]) -> None:
        for note in self.follow.release(parent):
            self._end(ctx, note)

    def _end(self, ctx: PlayerContext, note: tuple[int, int], model_note: bool = True) -> None:
        """End a sounding note (sent and fed) and, recursively, the notes answering it."""
        if (model_note and note in ctx.sounding()) or (
                not model_note and note in ctx.held_notes()):
            ctx.play_now(note[0], note[1], 0)
        self.follow.detach(note)
        self._release_answers(ctx, note)

    def _release_silenced(self, ctx: PlayerContext, rig: Rig) -> None:
        """End the model's notes that ``rig`` silences (global mute; stopped auto voices)."""
        autos = {v.inst for v in rig.voices.values() if v.state == "auto"}
        for note in sorted(ctx.sounding()):
            if rig.muted or (rig.stopped and note[0] in autos):
                self._end(ctx, note)


def layout_hook(router: Any, out: Any, send_programs: bool = True) -> Callable[[Rig], None]:
    """An ``on_layout`` that points the input router at the input voices' channels and the
    MIDI output at every voice's channel, announcing changed instruments (program change)."""
    from ..live.ports import ChannelMap

    def hook(rig: Rig) -> None:
        cmap = ChannelMap(rig.channel_insts(), rig.programs())
        if out is not None:
            if send_programs:
                changed = {ch: i for ch, i in cmap.inst.items() if out.cmap.inst.get(ch) != i}
                for msg in ChannelMap(changed, rig.programs()).program_messages():
                    out.send(msg)
            out.cmap = cmap
        if router is not None:
            router.cmap = ChannelMap(rig.input_channels())

    return hook


def feed_prompt_file(model: Any, path: str, rig: Rig,
                     progress: Callable[[int, int], None] | None = None
                     ) -> tuple[Rig, Any, list[str]]:
    """Run a MIDI file through ``model`` (shared ingest). Returns the rig whose voices are the
    prompt's instruments (input voices kept), the model state after it, and messages."""
    from ...errors import MidiError, UserError
    from ...midi.ingest import load_midi
    from .presets import prompt_rig

    try:
        ing = load_midi(path)
    except MidiError as e:
        raise UserError(f"prompt {path}: {e}") from None
    new, notes = prompt_rig(rig, ing.events, ing.parts)
    events = ing.events.sorted()
    model.reset()
    n = len(events)
    feed_prompt(model, events, None if progress is None else lambda k: progress(k, n), every=1)
    notes.insert(0, f"prompt: {n} events, {len(new.voices)} voices from {path}")
    return new, model.get_state(), notes


# -- the UI's side ---------------------------------------------------------------------------
class PlayController:
    """The UI's handle on a running player and its :class:`VoicesPolicy` (UI thread).

    Voice edits change :attr:`rig` and are handed to the policy with ``player.call``;
    controls and actions go through ``player.control``/``reset``/``panic``. The player's
    events are collected by a listener (a thread-safe deque) and consumed by :meth:`poll`.
    """

    def __init__(self, player: Player, policy: VoicesPolicy, book: Any = None) -> None:
        self.player, self.policy, self.book = player, policy, book
        self.rig = policy.rig.copy()
        self.messages: deque[str] = deque(maxlen=500)
        self.next_event: PlayerEvent | None = None
        self.sounding: dict[tuple[int, int], int] = {}  # (inst, pitch) -> velocity
        self.counts = {"input": 0, "output": 0}
        self.preset_name: str | None = None
        self._events: deque[PlayerEvent] = deque(maxlen=10_000)
        player.add_listener(self._events.append)

    # -- voices ------------------------------------------------------------------------------
    def voice(self, channel: int) -> VoiceConfig | None:
        return self.rig.voices.get(channel)

    def _ensure(self, channel: int) -> VoiceConfig:
        v = self.rig.voices.get(channel)
        if v is None:
            inst = ev.STANDARD_KIT if channel == ev.DRUM_CHANNEL else ev.FIRST_MELODIC
            v = self.rig.voices[channel] = VoiceConfig(channel, inst, "auto")
        return v

    def _default_source(self, channel: int) -> int | None:
        others = [c for c in sorted(self.rig.voices) if c != channel]
        inputs = [c for c in others if self.rig.voices[c].mode == "input"]
        lower = [c for c in others if c < channel]
        return (inputs or lower[-1:] or others or [None])[0]

    def set_mode(self, channel: int, mode: str) -> None:
        """Set a channel's mode (``auto``/``input``/``follow``/``mute``); a channel without a
        voice gets one. A follow voice without a source follows the first input voice."""
        v = self._ensure(channel)
        if mode == "follow" and v.source is None:
            v.source = self._default_source(channel)
            if v.source is None:
                self.say(f"channel {channel + 1}: no other voice to follow")
                return
        v.set_state(mode)
        self.push()

    def cycle_mode(self, channel: int) -> str:
        """Next mode in :data:`MODES` order (skipping follow when nothing can be followed)."""
        v = self.rig.voices.get(channel)
        if v is None:
            self.set_mode(channel, "auto")
            return "auto"
        mode = MODES[(MODES.index(v.state) + 1) % len(MODES)]
        if mode == "follow" and v.source is None and self._default_source(channel) is None:
            mode = "mute"
        self.set_mode(channel, mode)
        return self.rig.voices[channel].state

    def toggle_mute(self, channel: int) -> None:
        v = self._ensure(channel)
        v.mute = not v.mute
        self.push()

    def set_inst(self, channel: int, inst: int) -> None:
        """Give a channel's voice another instrument (a taken id becomes anonymous)."""
        v = self._ensure(channel)
        v.inst, v.program = int(inst), None
        self.push()

    def beat_grid(self) -> tuple[str | None, float]:
        """(grid, swing) of the first auto voice (``g`` / ``s`` give every voice the same),
        ``(None, 0)`` without any."""
        autos = [v for v in self.rig.voices.values() if v.mode == "auto"]
        return (autos[0].grid, autos[0].swing) if autos else (None, 0.0)

    def cycle_grid(self) -> str | None:
        """Give every voice the next grid of :data:`GRIDS` (presets may give voices grids of
        their own; it applies with a clock, ``--clock``); a triplet grid takes the swing
        off. Returns it."""
        grid = GRIDS[(GRIDS.index(g) + 1) % len(GRIDS) if (g := self.beat_grid()[0]) in GRIDS
                     else 0]
        triplet = grid is not None and grid.endswith("t")
        for v in self.rig.voices.values():
            v.grid = grid
            if triplet:
                v.swing = 0.0
        self.push()
        self.say(f"grid {grid or 'off (free time)'}{self._clock_note()}")
        return grid

    def cycle_swing(self) -> float:
        """Give every voice the next swing of :data:`SWINGS` (straight grids only: without
        a grid or with a triplet one it stays 0 and says so); returns it."""
        grid, now = self.beat_grid()
        if grid is None or grid.endswith("t"):
            self.say("swing needs a grid first (g)" if grid is None
                     else f"swing applies to straight grids, not {grid}")
            return now
        swing = min((s for s in SWINGS if s > now + 1e-9), default=SWINGS[0])
        for v in self.rig.voices.values():
            v.swing = swing
        self.push()
        self.say(f"swing {swing:g}{self._clock_note()}")
        return swing

    def _clock_note(self) -> str:
        return "" if self.player.beat_info() is not None else " (applies with --clock)"

    def push(self, controls: bool = False) -> None:
        """Hand a copy of the rig to the policy (on the scheduler thread)."""
        for note in self.rig.dedupe():
            self.say(note)
        self.rig.validate()
        rig = self.rig.copy()
        self.next_event = None  # the player drops its plan too
        self.player.call(lambda ctx: self.policy.set_rig(ctx, rig, controls))

    def load_preset(self, key: str | int) -> str:
        """Load a preset by name or index (controls included); returns its name."""
        preset = self.book.find(key)
        self.rig = self.book.rig(preset.name)
        self.preset_name = preset.name
        self.push(controls=True)
        self.say(f"preset {preset.name}: {preset.description}".rstrip(": "))
        return preset.name

    # -- controls and actions ----------------------------------------------------------------
    def control_value(self, name: str) -> float:
        """The control's value as the policy has it (CCs may have moved it)."""
        return self.policy.view.values.get(name, self.rig.value(name))

    def set_control(self, name: str, value: float) -> None:
        spec = self.rig.controls[name]
        spec.value = spec.clip(value)
        self.player.control(name, spec.to_unit())

    def nudge(self, name: str, steps: int) -> float:
        """Move a control by ``steps`` twentieths of its range; returns the new value."""
        spec = self.rig.controls[name]
        self.set_control(name, self.control_value(name) + steps * (spec.hi - spec.lo) / 20)
        return spec.value

    def action(self, name: str) -> None:
        """``reset``, ``panic``, ``query``, ``mute`` (toggle) or ``stop`` (toggle)."""
        if name == "reset":
            self.player.reset()
        elif name == "panic":
            self.player.panic()
        elif name in TOGGLES or name in QUERY:
            self.player.control(name, 1.0)
        else:
            raise ValueError(f"unknown action {name!r}")

    # -- what the UI shows -------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.messages.append(text)

    def poll(self) -> list[PlayerEvent]:
        """Consume the player's events since the last call, updating :attr:`next_event`,
        :attr:`sounding` and the counters."""
        out = []
        while self._events:
            e = self._events.popleft()
            out.append(e)
            if e.kind == "planned":
                self.next_event = e
            elif e.kind in ("output", "input"):
                self.counts[e.kind] += 1
                if self.next_event is not None and e.kind == "output" and e.info is \
                        self.next_event.info:
                    self.next_event = None
                if e.vel > 0:
                    self.sounding[(e.inst, e.pitch)] = e.vel
                else:
                    self.sounding.pop((e.inst, e.pitch), None)
            elif e.kind in ("reset", "error"):
                self.sounding.clear()
                self.next_event = None
                self.say("reset: every note released" if e.kind == "reset"
                         else f"player error: {e.info!r}")
            elif e.kind == "panic":
                self.say("panic: every note released")
            elif e.kind == "replanned":
                self.next_event = None
        return out

    def timing(self) -> dict[str, Any]:
        """The player's timing summary (latency, lateness, sample, feed; ms)."""
        return self.player.stats.summary()
