"""The real-time player without MIDI hardware: a tiny model and a recording sink.

Covers planning at or after now, replanning on input, wall-clock deltas, note release on
stop / reset / panic / error, the harmonize and improvise policies, and the pure helpers
of the ports module (channel maps, feedback filter, MIDI out) with fake ports.

No test sleeps to let the player work: each waits for what it needs to see (a player
event, a note at the sink, a call run on the scheduler thread), with a timeout. Tests of
the policies answering input run on an injected :class:`TickClock`, so the model's
timeline is the one the test writes; the tests of autonomous playing keep the real clock,
because timing (due times, lateness, lookahead) is what they check.
"""

from __future__ import annotations

import threading
import time

import mido
import numpy as np
import pytest
import torch
from tiny import tiny_model

from notochord_rt import Constraints, Notochord
from notochord_rt.apps.harmony import HarmonyPolicy, Voice
from notochord_rt.apps.live.improvise import ImprovisePolicy
from notochord_rt.apps.live.player import Player, PlayerConfig, Policy, TimingStats
from notochord_rt.apps.live.ports import ChannelMap, FeedbackFilter, MidiOut, find_port
from notochord_rt.apps.live.session import InputRouter, voice_channels
from notochord_rt.apps.steering import steer_window, steering_fields
from notochord_rt.errors import InputError, UserError

torch.set_num_threads(1)

VIOLIN, CELLO, PIANO = 41, 43, 1
TIMEOUT = 10.0  # seconds; only reached when something is wrong


def tiny(seed: int = 0) -> Notochord:
    return tiny_model(seed, init="default", sampler_seed=seed)


class TickClock:
    """An injected clock: ``advance(dt)`` moves it, and every read adds 1 µs (time never
    stands still, so latencies are positive). Thread-safe."""

    def __init__(self, start: float = 100.0) -> None:
        self.t = start
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.t += 1e-6
            return self.t

    def advance(self, dt: float) -> None:
        with self.lock:
            self.t += dt


class Recorder:
    """A sink that records ``(time, inst, pitch, vel)`` and panics, and (as a player
    listener) every :class:`PlayerEvent`; :meth:`until` waits for a condition on them."""

    def __init__(self) -> None:
        self.notes: list[tuple[float, int, int, int]] = []
        self.events: list = []
        self.panics = 0
        self.cond = threading.Condition()

    def note(self, inst: int, pitch: int, vel: int) -> None:
        with self.cond:
            self.notes.append((time.perf_counter(), inst, pitch, vel))
            self.cond.notify_all()

    def panic(self) -> None:
        with self.cond:
            self.panics += 1
            self.cond.notify_all()

    def __call__(self, event) -> None:  # player listener
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def kinds(self, kind: str) -> list:
        with self.cond:
            return [e for e in self.events if e.kind == kind]

    def until(self, predicate, timeout: float = TIMEOUT) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), "timed out waiting for the player"

    def sounding(self) -> set[tuple[int, int]]:
        on: set[tuple[int, int]] = set()
        with self.cond:
            notes = list(self.notes)
        for _, i, p, v in notes:
            (on.add if v > 0 else on.discard)((i, p))
        return on


def player_with(model, policy, config=None, **kw) -> tuple[Player, Recorder]:
    sink = Recorder()
    player = Player(model, sink, policy, config, **kw)
    player.add_listener(sink)
    return player, sink


def sync(player: Player) -> None:
    """Return once the scheduler thread has handled everything queued before this call."""
    done = threading.Event()
    player.call(lambda ctx: done.set())
    assert done.wait(TIMEOUT), "the scheduler thread did not run the call"


class Auto(Policy):
    """Violin notes in one octave, quick, short."""

    def __init__(self, **kw) -> None:
        self.cons = Constraints(note_on_map={VIOLIN: range(60, 72)}, max_time=0.1,
                                max_duration=0.15, max_polyphony=3, **kw)

    def next_constraints(self, ctx):
        return self.cons


# -- autonomous playing (real clock: timing is the subject) --------------------------------------
def test_autonomous_events_are_played_at_their_planned_times_and_released_on_stop():
    player, sink = player_with(tiny(), Auto())
    with player:
        sink.until(lambda: len(sink.kinds("output")) >= 4)
    outs = sink.kinds("output")
    assert all(e.inst == VIOLIN and 60 <= e.pitch < 72 for e in outs)
    # every output was planned first, and sent no earlier than planned
    planned = sink.kinds("planned")
    assert len(planned) >= len(outs)
    late = player.stats.values("lateness")
    assert len(late) == len(outs) and (late >= 0).all()
    # the model's timeline advanced by the planned times of what was played
    assert player.stats.summary()["counts"]["outputs"] == len(outs)
    # nothing left sounding after stop, and the sink's panic ran
    assert sink.sounding() == set()
    assert sink.panics >= 1
    assert not player.running


def test_min_time_is_never_before_now():
    """Every planned due time is at or after the moment its sampling started."""
    player, sink = player_with(tiny(1), Auto(), PlayerConfig(lookahead=0.003))
    starts: list[float] = []
    real_sample = player.model.sample

    def timed_sample(*a, **kw):
        starts.append(player.clock())
        return real_sample(*a, **kw)

    player.model.sample = timed_sample  # the player's only model call goes through here
    with player:
        sink.until(lambda: len(sink.kinds("planned")) >= 3)
    dues = [e.t for e in sink.kinds("planned")]
    # planned events are sampled in _make_plan: each due >= its sampling start + lookahead
    # (1 ms slack: the player reads its clock just before this wrapper does)
    assert all(d >= s + 0.003 - 0.001 for s, d in zip(starts, dues))


def test_lookahead_adapts_to_slow_sampling():
    """With sampling made 10 ms slower, plans move later and events are not sent late."""
    player, sink = player_with(tiny(2), Auto(), PlayerConfig(lookahead=0.002))
    real_sample = player.model.sample

    def slow_sample(*a, **kw):
        time.sleep(0.01)  # the subject of the test: a slower model
        return real_sample(*a, **kw)

    player.model.sample = slow_sample
    with player:
        sink.until(lambda: len(sink.kinds("output")) >= 40)
    assert player.lookahead() >= 1.25 * 0.01
    late = player.stats.values("lateness")[10:]  # after the first plans are measured
    assert len(late) >= 20
    # without the adaptation every event would be about 10 ms late; a busy machine (CI
    # shares its cores) makes some late anyway, so only most must be on time
    assert np.mean(late > 0.003) < 0.5


def test_input_replans_and_is_fed_with_wall_clock_deltas():
    class Slow(Policy):  # plans far ahead so that input always comes first
        def next_constraints(self, ctx):
            return Constraints(note_on_map={VIOLIN: range(60, 72)}, time_ranges=[(1.5, 2.0)])

    clock = TickClock()
    model = tiny()
    player, sink = player_with(model, Slow(), clock=clock)
    with player:
        sink.until(lambda: sink.kinds("planned"))
        t0 = player.clock()
        player.note_input(PIANO, 60, 100, t0)
        player.note_input(PIANO, 60, 0, t0 + 0.25)
        sink.until(lambda: len(sink.kinds("input")) == 2)
        sync(player)
        fed_after = model.current_time
    kinds = [e.kind for e in sink.events]
    assert kinds.count("replanned") >= 1
    assert player.stats.summary()["counts"]["replans"] >= 1
    assert "output" not in kinds  # the far plan never came due
    # the two inputs are 0.25 s apart on the model's timeline
    ins = sink.kinds("input")
    assert [e.vel for e in ins] == [100, 0]
    assert ins[1].t - ins[0].t == pytest.approx(0.25)
    assert fed_after >= 0.25
    assert (PIANO, 60) not in model.held_notes


def test_error_in_policy_stops_the_player_and_releases_every_note():
    class Boom(Auto):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def on_played(self, ctx, event):
            self.n += 1
            if self.n == 3:
                raise RuntimeError("policy bug")

    player, sink = player_with(tiny(), Boom())
    with player:
        sink.until(lambda: sink.kinds("error"))
    assert not player.running
    assert isinstance(player.error, RuntimeError)
    assert sink.sounding() == set() and sink.panics >= 1


def test_panic_and_reset_release_notes_and_keep_the_model_in_step():
    class Held(Policy):  # long notes, so some are sounding when we panic
        def next_constraints(self, ctx):
            return Constraints(note_on_map={VIOLIN: range(60, 72)}, note_off_map={},
                               max_time=0.02, max_polyphony=12)

    model = tiny()
    player, sink = player_with(model, Held())
    with player:
        sink.until(lambda: len(sink.sounding()) >= 2)
        player.call(lambda ctx: setattr(player, "policy", Policy()))  # stop playing
        player.panic()
        sink.until(lambda: sink.kinds("panic"))
        assert sink.sounding() == set()
        assert model.held_map().get(VIOLIN, set()) == set()  # note-offs were fed
        player.reset()
        sink.until(lambda: sink.kinds("reset"))
        assert model.current_time < 0.2  # a fresh stream
    assert sink.panics >= 2


def test_stop_twice_and_without_start_is_safe():
    player, sink = player_with(tiny(), Auto())
    player.stop()
    player.start()
    sink.until(lambda: sink.kinds("planned"))
    player.stop()
    player.stop()
    assert sink.sounding() == set()


# -- policies --------------------------------------------------------------------------------------
def test_harmonize_policy_answers_each_note_within_range_and_releases_with_it():
    voices = [Voice(VIOLIN, -12, -3), Voice(CELLO, -24, -13)]
    clock = TickClock()
    player, sink = player_with(tiny(), HarmonyPolicy(voices), clock=clock)
    played = [60, 64, 67, 72, 55]
    with player:
        for p in played:
            player.note_input(PIANO, p, 90)
            clock.advance(0.02)
        sink.until(lambda: len(sink.sounding()) == 2 * len(played))
        for p in played:
            player.note_input(PIANO, p, 0)
        sink.until(lambda: len(sink.kinds("input")) == 2 * len(played))
        sync(player)
        assert sink.sounding() == set()
    ons = [(i, p, v) for _, i, p, v in sink.notes if v > 0]
    assert len(ons) == 2 * len(played)
    by_voice = {VIOLIN: [], CELLO: []}
    for i, p, v in ons:
        assert v == 90
        by_voice[i].append(p)
    for voice in voices:
        for src, got in zip(played, by_voice[voice.inst]):
            assert src + voice.lo <= got <= src + voice.hi
    lat = player.stats.values("latency")
    assert len(lat) == 2 * len(played) and (lat > 0).all()


def test_harmonize_restruck_note_keeps_output_and_model_consistent():
    """A held note played again (no note-off between) and voices on narrow ranges, so
    a voice note is often re-sampled on the pitch whose release is still pending."""
    voices = [Voice(VIOLIN, -2, -1)]
    clock = TickClock()
    model = tiny(3)
    player, sink = player_with(model, HarmonyPolicy(voices), clock=clock)
    with player:
        for _ in range(8):
            player.note_input(PIANO, 60, 80)
            clock.advance(0.02)
        sink.until(lambda: len(sink.kinds("input")) == 8)
        sync(player)
        sounding = sink.sounding()
        held = model.held_map().get(VIOLIN, set())
        player.note_input(PIANO, 60, 0)
        sink.until(lambda: len(sink.kinds("input")) == 9)
        sync(player)
        after = sink.sounding()
    assert len(sounding) == 1 and {p for _, p in sounding} == held  # sink == model
    assert after == set()
    # every note-on of the voice was preceded by the note-off of the previous one
    on: set[int] = set()
    for _, _inst, pitch, vel in sink.notes:
        if vel > 0:
            assert pitch not in on
            on.add(pitch)
        else:
            on.discard(pitch)


def test_improvise_plays_only_model_instruments_and_follows_steering():
    policy = ImprovisePolicy([VIOLIN], [PIANO], max_polyphony=2, max_duration=0.2,
                             max_time=0.1)
    player, sink = player_with(tiny(), policy)
    with player:
        for k in range(5):
            player.note_input(PIANO, 48 + k, 80)
        sink.until(lambda: len(sink.kinds("input")) == 5)
        player.control("steer_pitch", 1.0)
        player.control("steer_rate", 0.9)
        sync(player)
        assert policy.constraints().truncate_quantile_pitch == steer_window(1.0)
        assert policy.constraints().truncate_quantile_time == pytest.approx(
            steer_window(0.1))
        sink.until(lambda: len(sink.kinds("output")) >= 2)  # it plays on its own
        player.control("mute", 1.0)
        sync(player)
        sink.until(lambda: sink.sounding() == set())
        n_muted = len(sink.notes)
        time.sleep(0.2)  # the subject: nothing is played while muted
        assert len(sink.notes) == n_muted  # muted: silent
    assert {i for _, i, _, _ in sink.notes} == {VIOLIN}
    assert player.stats.summary()["counts"]["inputs"] == 5


def test_steering_is_one_mapping_that_raises_on_bad_values():
    assert steer_window(0.5) == (0.0, 1.0)
    assert steer_window(1.0) == (0.5, 1.0)
    assert steering_fields(rate=1.0)["truncate_quantile_time"] == (0.0, 0.5)
    for bad in (-3, 1.5, float("nan")):
        with pytest.raises(InputError):
            steer_window(bad)
        with pytest.raises(InputError):
            steering_fields(rate=bad)


def test_timing_stats_summary_matches_numpy():
    s = TimingStats(maxlen=100)
    rng = np.random.default_rng(0)
    data = rng.exponential(0.002, 300)
    for x in data:
        s.add("latency", float(x))
    kept = data[-100:]
    got = s.summary()["latency"]
    assert got["n"] == 100
    assert got["p99_ms"] == pytest.approx(np.percentile(kept, 99) * 1e3)
    assert s.summary()["lateness"] == {"n": 0}


# -- ports helpers (no MIDI system needed) -------------------------------------------------------
class FakePort:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[mido.Message] = []
        self.fail = fail
        self.name = "fake"

    def send(self, msg: mido.Message) -> None:
        if self.fail:
            raise OSError("port vanished")
        self.sent.append(msg)

    def close(self) -> None:
        pass


def test_channel_map_parse_and_errors():
    cmap = ChannelMap.parse("1=acoustic grand,2=violin,10=drums")
    assert cmap.inst_of(0) == PIANO and cmap.channel_of(VIOLIN) == 1
    assert cmap.inst_of(9) == 129
    with pytest.raises(UserError, match="CHANNEL=INSTRUMENT"):
        ChannelMap.parse("piano")
    with pytest.raises(UserError, match="1..16"):
        ChannelMap.parse("17=violin")
    with pytest.raises(UserError, match="two channels"):
        ChannelMap.parse("1=violin,2=violin")
    with pytest.raises(UserError, match="unknown instrument"):
        ChannelMap.parse("1=nosuchthing")
    with pytest.raises(UserError, match="used twice"):
        cmap.merged(ChannelMap({0: VIOLIN + 1}))
    progs = [m for m in cmap.program_messages() if m.type == "program_change"]
    assert [(m.channel, m.program) for m in progs] == [(0, 0), (1, 40), (9, 0)]
    banks = {m.channel: m.value for m in cmap.program_messages()
             if m.type == "control_change" and m.control == 0}
    assert banks == {0: 0, 1: 0, 9: 1}


def test_voice_channels_skip_player_and_put_drums_on_10():
    cmap = voice_channels([VIOLIN, 129, CELLO], taken={0})
    assert cmap.channel_of(VIOLIN) == 1 and cmap.channel_of(CELLO) == 2
    assert cmap.channel_of(129) == 9
    with pytest.raises(UserError, match="no output channel"):
        voice_channels([VIOLIN, CELLO], {0}, "2=violin")


def test_find_port():
    names = ["synth:in", "probe-synth:from_app", "other:midi"]
    assert find_port(names, "synth:in", "output") == "synth:in"
    assert find_port(names, "FROM_APP", "output") == "probe-synth:from_app"
    with pytest.raises(UserError, match="ambiguous"):
        find_port(names, "synth", "output")
    with pytest.raises(UserError, match="no MIDI output port matches 'x'"):
        find_port(names, "x", "output")


def test_feedback_filter_drops_echoes_once_within_the_window():
    now = [0.0]
    fb = FeedbackFilter(0.03, clock=lambda: now[0])
    on = bytes([0x91, 60, 100])
    fb.sent(on)
    now[0] = 0.01
    assert fb.is_echo(on)
    assert not fb.is_echo(on)  # consumed: a real repeat passes
    fb.sent(on)
    now[0] = 0.05
    assert not fb.is_echo(on)  # too late to be our echo
    assert fb.dropped == 1


def test_midi_out_maps_channels_and_panic_releases_everything():
    good, bad = FakePort(), FakePort(fail=True)
    out = MidiOut([good, bad], ChannelMap({1: VIOLIN, 2: CELLO}), send_programs=True)
    assert sum(m.type == "program_change" for m in good.sent) == 2
    good.sent.clear()
    out.note(VIOLIN, 60, 100)
    out.note(CELLO, 48, 90)
    out.note(VIOLIN, 60, 0)
    out.note(CELLO, 50, 70)
    out.note(PIANO, 60, 100)  # unmapped: dropped, logged
    assert [(m.type, m.channel, m.note) for m in good.sent] == [
        ("note_on", 1, 60), ("note_on", 2, 48), ("note_off", 1, 60), ("note_on", 2, 50)]
    good.sent.clear()
    out.panic()
    offs = {(m.channel, m.note) for m in good.sent if m.type == "note_off"}
    assert offs == {(2, 48), (2, 50)}
    ccs = {(m.channel, m.control) for m in good.sent if m.type == "control_change"}
    assert {(1, 123), (2, 123), (1, 120), (2, 120), (1, 64)} <= ccs


def test_input_router_routes_notes_controls_and_actions():
    calls = []

    class FakePlayer:
        clock = staticmethod(time.perf_counter)

        def note_input(self, *a):
            calls.append(("note",) + a[:3])

        def control(self, name, value):
            calls.append(("ctl", name, round(value, 3)))

        def reset(self):
            calls.append(("reset",))

        def panic(self):
            calls.append(("panic",))

    fb = FeedbackFilter(0.03)
    router = InputRouter(FakePlayer(), ChannelMap({0: PIANO}), controls={1: "steer_pitch"},
                         actions={4: "reset", 7: "panic", 6: "mute"}, feedback=fb)
    router(mido.Message("note_on", channel=0, note=60, velocity=99))
    router(mido.Message("note_off", channel=0, note=60))
    router(mido.Message("note_on", channel=5, note=60, velocity=99))  # not a player channel
    router(mido.Message("control_change", channel=0, control=1, value=127))
    router(mido.Message("control_change", channel=0, control=4, value=127))
    router(mido.Message("control_change", channel=0, control=7, value=127))
    router(mido.Message("control_change", channel=0, control=6, value=127))
    echo = mido.Message("note_on", channel=0, note=61, velocity=5)
    fb.sent(bytes(echo.bytes()))
    router(echo)  # our own output coming back: dropped
    assert calls == [("note", PIANO, 60, 99), ("note", PIANO, 60, 0),
                     ("ctl", "steer_pitch", 1.0), ("reset",), ("panic",), ("ctl", "mute", 1.0)]
    assert router.ignored == 1 and fb.dropped == 1


def test_improvise_cli_rejects_bad_maps(capsys):
    from notochord_rt.cli import main

    assert main(["improvise", "--voices", "2=nosuchinstrument"]) == 2
    assert "unknown instrument" in capsys.readouterr().err
    assert main(["improvise", "--voices", "1=violin", "--player", "1=1"]) == 2
    assert "both a player and a model channel" in capsys.readouterr().err


# -- resuming voices -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("within", [0.4, None])
def test_unmuted_voices_come_back_within_resume_window(within):
    """Voices muted for 8 s, then unmuted: the next note is planned within
    ``resume_within`` of now, not at the gap the model expects after its last event
    (which it counts from 8 s ago). ``None``: the window off, to show it is what acts."""
    import math

    clock = TickClock()
    config = PlayerConfig(resume_within=math.inf if within is None else within)
    policy = ImprovisePolicy([VIOLIN], max_time=30.0)
    policy.muted = True
    dues = []
    for seed in range(4):
        player, sink = player_with(tiny(seed), policy, config, clock=clock)
        policy.muted = True
        with player:
            sync(player)
            clock.advance(8.0)
            now = clock()
            player.control("mute", 1.0)  # toggles: unmuted
            sink.until(lambda s=sink: s.kinds("planned"))
            dues.append(sink.kinds("planned")[0].t - now)
    if within is not None:
        assert max(dues) <= within + 0.05, dues
    else:  # without the window the model's own gap after 8 s of silence is much longer
        assert max(dues) > 1.0, dues
