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
