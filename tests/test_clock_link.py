"""Ableton Link through aalink: two real peers in one process (loopback) agree."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("aalink")

from notochord_rt.apps.live.clock_link import LinkClock  # noqa: E402
from notochord_rt.errors import InputError, UserError  # noqa: E402


def wait(pred, timeout: float = 8.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.mark.slow
def test_two_link_peers_agree_on_tempo_and_beat():
    a = LinkClock(120, quantum=4).start()
    b = LinkClock(97, quantum=4).start()
    try:
        assert wait(lambda: a.peers >= 1 and b.peers >= 1), "the peers never met"
        a.set_tempo(133)
        assert wait(lambda: abs(b.info().bpm - 133) < 0.01), b.info()
        t = time.perf_counter()
        ia, ib = a.info(t), b.info(t)
        assert abs(ia.beat - ib.beat) < 0.01, (ia, ib)  # one session, one beat
        assert ia.playing and ib.playing and ia.source == "link"
        events = []
        a.subscribe(events.append)
        a.poll()
        b.close()  # the session drops: a keeps its tempo, reports it, does not stop
        assert wait(lambda: a.peers == 0)
        a.poll()
        assert events[-1].kind == "error" and "dropped" in events[-1].message
        assert a.info().bpm == pytest.approx(133, abs=0.01)
    finally:
        a.close()
        b.close()


def test_link_bad_values():
    with pytest.raises(InputError, match="^bpm"):
        LinkClock(0)
    with pytest.raises(UserError, match="quantum"):
        LinkClock(120, quantum=0)


@pytest.mark.slow
def test_link_start_stop_sync_starts_and_stops_us():
    """With start/stop sync a peer's transport drives ours: stop and start arrive as
    clock events (the player releases its notes on stop and comes back on the bar)."""
    ours = LinkClock(120, start_stop=True)
    peer = LinkClock(120, start_stop=True)
    events = []
    ours.subscribe(events.append)
    ours.start()
    peer.start()
    try:
        assert events[-1].kind == "position" and "waiting" in events[-1].message
        assert not ours.info().playing  # joining a stopped session does not start it
        assert wait(lambda: ours.peers >= 1 and peer.peers >= 1), "the peers never met"
        peer.set_playing(True)
        assert wait(lambda: ours.info().playing)
        assert wait(lambda: any(e.kind == "start" for e in events))
        peer.set_playing(False)
        assert wait(lambda: any(e.kind == "stop" for e in events))
        assert not ours.info().playing
    finally:
        ours.close()
        peer.close()
    plain = LinkClock(120)
    try:
        with pytest.raises(UserError, match="link-start-stop"):
            plain.set_playing(True)
    finally:
        plain.close()


def test_link_start_stop_flag_needs_link():
    from notochord_rt.apps.live.clock import make_clock

    with pytest.raises(UserError, match="--link-start-stop needs --clock link"):
        make_clock("internal", bpm=120, link_start_stop=True)
