"""The player on a clock (apps/live/beat.py, Player.set_beat_clock): improvising voices on
the grid, stop releasing every note and pausing the voices, start coming back on the next
bar line, harmonizer answers staying immediate, and free time when there is no clock."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from tiny import tiny_model

from notochord_rt import Constraints
from notochord_rt.apps.live.beat import BeatSync, free_time, wants_beat
from notochord_rt.apps.live.clock import ClockEvent, InternalClock
from notochord_rt.apps.live.improvise import ImprovisePolicy
from notochord_rt.apps.live.player import Player, PlayerConfig

torch.set_num_threads(1)
VIOLIN = 41
TIMEOUT = 10.0


class Sink:
    def __init__(self) -> None:
        self.notes: list[tuple[float, int, int, int]] = []
        self.panics = 0
        self.lock = threading.Lock()

    def note(self, inst: int, pitch: int, vel: int) -> None:
        with self.lock:
            self.notes.append((time.perf_counter(), inst, pitch, vel))

    def panic(self) -> None:
        self.panics += 1

    def sounding(self) -> set[tuple[int, int]]:
        on: set[tuple[int, int]] = set()
        with self.lock:
            for _, i, p, v in self.notes:
                (on.add if v > 0 else on.discard)((i, p))
        return on


def wait_for(pred, timeout: float = TIMEOUT) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def improviser(**grid):
    return ImprovisePolicy([VIOLIN], max_polyphony=2, max_duration=0.6, max_time=0.3,
                           grid={"grid": "1/16", **grid})


def off_grid(beat: float, step: float) -> float:
    return abs(beat / step - round(beat / step)) * step


@pytest.mark.slow
def test_improvised_onsets_are_planned_on_the_clocks_grid():
    clock = InternalClock(150.0)
    outs = []
    player = Player(tiny_model(0, init="default", sampler_seed=0), Sink(), improviser(),
                    PlayerConfig(), beat_clock=clock)
    player.add_listener(lambda e: outs.append(e) if e.kind == "output" else None)
    clock.start()
    with player:
        assert wait_for(lambda: len(outs) >= 12)
        info = player.beat_info()
    assert info.source == "internal" and info.bpm == 150.0
    for e in outs[:12]:
        assert off_grid(clock.info(e.t).beat, 0.25) < 1e-6, clock.info(e.t)
    assert off_grid(clock.info(outs[0].t).beat, 4.0) < 1e-6  # came in on a bar line


@pytest.mark.slow
def test_clock_stop_releases_every_note_and_start_comes_back_on_the_bar():
    clock = InternalClock(240.0, per_bar=4)
    sink = Sink()
    events = []
    player = Player(tiny_model(1, init="default", sampler_seed=1), sink,
                    improviser(), PlayerConfig(), beat_clock=clock)
    player.add_listener(events.append)
    clock.start()
    with player:
        assert wait_for(lambda: bool(sink.sounding()))
        clock.stop()
        t_stop = time.perf_counter()
        assert wait_for(lambda: any(e.kind == "clock" and e.info.kind == "stop"
                                    for e in events))
        assert not sink.sounding() and sink.panics >= 1
        released = max(t for t, *_ in sink.notes)
        assert released - t_stop < 0.05  # measured tighter (10 ms goal) in benchmarks/clock.py
        n = len(sink.notes)
        time.sleep(0.4)  # stopped: the voices wait
        assert len(sink.notes) == n
        t0 = time.perf_counter()
        clock.start()
        assert wait_for(lambda: len(sink.notes) > n)
        first = sink.notes[n][0]
        assert clock.info(first).beat % 4 < 0.1 or clock.info(first).beat % 4 > 3.9
        assert first - t0 < 60 / 240 * 4 + 0.2
    assert not sink.sounding()


def test_beat_sync_pieces():
    clock = InternalClock(120.0)
    sync = BeatSync(clock)
    cons = Constraints(grid="1/8", note_on_map={VIOLIN: range(60, 72)})
    assert sync.constraints(cons, time.perf_counter()) is None  # not started: voices wait
    clock.start()
    got = sync.constraints(cons, time.perf_counter())
    assert got.bpm == 120.0 and got.next_bar and got.beat is not None
    sync.played()
    assert not sync.constraints(cons, time.perf_counter()).next_bar
    plain = Constraints(note_on_map={VIOLIN: [60]})
    assert sync.constraints(plain, time.perf_counter()) is plain  # answers stay immediate
    info = clock.info()
    assert sync.action(ClockEvent("stop", info)) == "release" and sync.on_bar
    assert sync.action(ClockEvent("tempo", info)) is None  # the plan's own tempo
    clock.set_tempo(121.0)  # under 1 %: the plan stands
    assert sync.action(ClockEvent("tempo", clock.info())) is None
    clock.set_tempo(130.0)
    assert sync.action(ClockEvent("tempo", clock.info())) == "replan"
    assert sync.action(ClockEvent("error", info)) is None
    assert wants_beat(cons) and not wants_beat(plain)
    assert free_time(cons).grid is None and free_time(plain) is plain


def test_without_a_clock_grid_voices_play_in_free_time():
    outs = []
    player = Player(tiny_model(2, init="default", sampler_seed=2), Sink(), improviser(),
                    PlayerConfig())
    player.add_listener(lambda e: outs.append(e) if e.kind == "output" else None)
    with player:
        assert wait_for(lambda: len(outs) >= 3)
    assert player.error is None and player.beat_info() is None
