"""Clock sources without ports (apps/live/clock.py, clock_midi.py): the tempo estimator on
jittered, bursty and gappy tick times, the MIDI clock state machine, the internal clock and
the ``--clock`` choices' errors."""

from __future__ import annotations

import numpy as np
import pytest

from notochord_rt.apps.live.clock import BeatInfo, InternalClock, make_clock
from notochord_rt.apps.live.clock_midi import (
    CONTINUE,
    SPP,
    START,
    STOP,
    TICK,
    ClockFollower,
    TempoEstimator,
)
from notochord_rt.errors import InputError, UserError


def ticks(bpm: float, n: int, t0: float = 0.0) -> np.ndarray:
    return t0 + np.arange(n) * 60.0 / (24 * bpm)


def estimates(times) -> list[float | None]:
    est = TempoEstimator()
    out = []
    for t in times:
        est.tick(float(t))
        out.append(est.bpm)
    return out


# -- tempo estimator ------------------------------------------------------------------------
def test_jittered_ticks_give_a_steady_tempo():
    rng = np.random.default_rng(0)
    times = np.sort(ticks(120, 24 * 8) + rng.normal(0, 0.002, 24 * 8))  # 2 ms jitter
    got = np.array(estimates(times)[48:])
    assert np.abs(got - 120).max() < 1.5, np.abs(got - 120).max()
    assert np.std(got) < 0.5
    # the raw tick intervals jitter by ~20 %; the estimate by well under 1 %
    raw = 60 / (24 * np.diff(times[48:]))
    assert np.std(raw) > 10 * np.std(got)


def test_bursty_ticks_average_out():
    times = ticks(100, 24 * 8)
    bursty = np.repeat(times[3::4], 4)[: len(times)]  # four ticks at once, then a gap
    got = np.array(estimates(bursty)[72:])
    assert np.abs(got - 100).max() < 3.0, got


@pytest.mark.parametrize("new", [90.0, 150.0])
def test_a_tempo_change_is_followed_within_one_beat(new):
    before = ticks(120, 24 * 4)
    after = ticks(new, 24 * 2, before[-1] + 60.0 / (24 * new))
    rng = np.random.default_rng(1)
    times = np.concatenate((before, after)) + rng.normal(0, 0.001, len(before) + len(after))
    got = estimates(np.sort(times))
    k = len(before) + 24 - 1  # one beat of the new tempo
    assert abs(got[k] - new) / new < 0.02, got[len(before):k + 1]
    assert all(abs(g - new) / new < 0.02 for g in got[k:])


def test_lost_ticks_do_not_halve_the_tempo():
    times = ticks(120, 24 * 6)
    gappy = np.delete(times, np.arange(60, 72))  # half a beat of ticks lost
    got = estimates(gappy)
    assert all(abs(g - 120) < 2 for g in got[80:]), got[60:90]


def test_absurd_tempo_is_refused_and_never_reported_as_the_tempo():
    est = TempoEstimator()
    seen = []
    for t in ticks(120, 30):
        est.tick(float(t))
    start = ticks(120, 30)[-1]
    for t in start + np.arange(1, 60) * 1e-4:  # 25 000 BPM
        est.tick(float(t))
        seen.append(est.bpm)
    assert est.refused is not None and all(1 <= b <= 999 for b in seen)
    for t in start + 0.01 + ticks(120, 48):  # a sane clock again: followed again
        est.tick(float(t))
    assert est.refused is None and est.bpm == pytest.approx(120, abs=1)


# -- the MIDI clock state machine ---------------------------------------------------------------
class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def follower(**kw):
    now = FakeTime()
    f = ClockFollower(clock=now, **kw)
    events = []
    f.subscribe(events.append)
    return f, now, events


def play(f, now, bpm: float, beats: float, start: float | None = None) -> float:
    t = now.t if start is None else start
    for k in range(int(beats * 24)):
        now.t = t + k * 60 / (24 * bpm)
        f.feed([TICK], now.t)
    return now.t


def test_start_ticks_stop_and_beat_position():
    f, now, events = follower()
    play(f, now, 120, 1)  # ticks before start: a tempo, no position
    assert not f.info().playing and f.info().bpm == pytest.approx(120)
    f.feed([START], now.t)
    last = play(f, now, 120, 2, now.t + 1 / 48)
    info = f.info(last)
    assert info.playing and info.beat == pytest.approx(2 - 1 / 24)
    assert f.info(last + 0.25).beat == pytest.approx(2 - 1 / 24 + 1 / 24)  # at most a tick ahead
    f.feed([STOP], last + 0.01)
    assert not f.info().playing
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["tempo", "start"] and kinds[-1] == "stop"


def test_continue_from_a_song_position():
    f, now, events = follower(per_bar=4)
    f.feed([SPP, 32 & 0x7F, 32 >> 7], 0.0)  # sixteenth 32 = beat 8
    f.feed([CONTINUE], 0.0)
    play(f, now, 120, 1, 0.01)
    assert f.info(now.t).beat == pytest.approx(8 + 23 / 24)
    assert f.info(now.t).bar_beat == (3, 1)
    assert [e.kind for e in events if e.kind != "tempo"] == ["position", "continue"]


def test_bad_song_positions_are_reported_not_fatal():
    f, now, events = follower(length_beats=16)
    f.feed([SPP, 0, 10], 0.0)  # beat 320: beyond a 16-beat piece
    assert f.info().beat == 0 and "beyond the piece" in events[-2].message
    f.feed([SPP, 200, 1], 0.0)  # not a 7-bit data byte
    assert events[-1].kind == "error" and "malformed" in events[-1].message
    f.feed([SPP], 0.0)
    assert events[-1].kind == "error"


def test_a_silent_clock_is_lost_after_two_beats():
    f, now, events = follower()
    f.feed([START], 0.0)
    last = play(f, now, 120, 2, 0.0)
    f.check(last + 0.9)  # under two beats (1 s at 120)
    assert f.info(last).playing
    f.check(last + 1.05)
    assert not f.info().playing and events[-1].kind == "lost"
    f.check(last + 5)  # reported once
    assert [e.kind for e in events].count("lost") == 1


def test_absurd_ticks_report_an_error_and_keep_running():
    f, now, events = follower()
    f.feed([START], 0.0)
    last = play(f, now, 120, 2, 0.0)
    for k in range(1, 40):
        f.feed([TICK], last + k * 1e-4)
    errors = [e for e in events if e.kind == "error"]
    assert len(errors) == 1 and "out of range" in errors[0].message  # once, not per tick
    assert 1 <= f.info().bpm <= 999


# -- internal clock and the choices -------------------------------------------------------------
def test_internal_clock_tempo_change_keeps_the_beat_continuous():
    now = FakeTime()
    c = InternalClock(120, per_bar=3, clock=now).start()
    now.t = 1.0
    assert c.info().beat == pytest.approx(2.0)
    c.set_tempo(60)
    now.t = 2.0
    assert c.info().beat == pytest.approx(3.0) and c.info().bar_beat == (2, 1)
    assert c.next_downbeat() == 3.0
    c.stop()
    now.t = 5.0
    assert c.info().beat == pytest.approx(3.0) and not c.info().playing


@pytest.mark.parametrize("bpm", [0, -10, 1000, float("nan"), float("inf")])
def test_bad_tempo_is_a_typed_error(bpm):
    with pytest.raises(InputError, match="^bpm"):
        InternalClock(bpm)
    with pytest.raises(UserError, match="--bpm"):
        make_clock("internal", bpm=bpm)


def test_clock_choices_name_what_is_missing():
    assert make_clock(None) is None
    for kw, needle in (({"source": "internal"}, "--bpm"), ({"source": "midi"}, "--clock-in"),
                       ({"source": "sundial"}, "--clock must be"),
                       ({"source": None, "bpm": 120}, "--clock")):
        with pytest.raises(UserError, match=needle):
            make_clock(**kw)


def test_beat_info_text():
    assert BeatInfo("midi", 120.0, 9.5, True).text() == "120.0 BPM  3:2  midi"
    assert "stopped" in BeatInfo("link", None, 0.0, False).text()


def test_stalled_delivery_stays_near_the_tempo():
    """A loaded machine's MIDI transport stalls now and then (20-80 ms) and then delivers
    the held ticks at once: those late ticks are left out of the fit."""
    rng = np.random.default_rng(0)
    times = ticks(120, 24 * 8)
    deliver, k = times.copy(), 0
    while k < len(times):
        if rng.random() < 0.1:
            until = times[k] + rng.uniform(0.02, 0.08)
            j = k
            while j < len(times) and times[j] < until:
                deliver[j] = until
                j += 1
            k = j
        else:
            k += 1
    got = np.array(estimates(np.maximum.accumulate(deliver))[48:], dtype=float)
    assert np.abs(got - 120).max() < 8, (got.min(), got.max())


def test_lost_ticks_do_not_shift_the_beat():
    """Two ticks dropped by the transport (then regular ticks again): the beat position
    counts them, where a stall (a silence, then a burst) counts nothing extra."""
    f, now, _ = follower()
    f.feed([START], 0.0)
    times = ticks(120, 48)
    for k, t in enumerate(times):
        if k in (30, 31):
            continue  # lost
        now.t = float(t)
        f.feed([TICK], now.t)
    assert f.info(now.t).beat == pytest.approx(47 / 24, abs=1e-6)
    g, now2, _ = follower()
    g.feed([START], 0.0)
    for k, t in enumerate(times):
        if k in (30, 31):
            continue
        now2.t = float(times[32]) if k == 32 else float(t)  # 30, 31 held, then at once
        if k == 32:
            for _ in range(3):
                g.feed([TICK], now2.t)
            continue
        g.feed([TICK], now2.t)
    assert g.info(now2.t).beat == pytest.approx(47 / 24, abs=1e-6)
