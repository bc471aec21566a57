"""``serve --clock``: OSC sample requests that ask for the beat take the server clock's
tempo and beat (a real UDP server, a tiny model, an internal clock)."""

from __future__ import annotations

import socket

import pytest
from tiny import tiny_net

pytest.importorskip("pythonosc")

from pythonosc.osc_message import OscMessage  # noqa: E402

from notochord_rt.apps.live.clock import InternalClock  # noqa: E402
from notochord_rt.apps.osc import wire as osc_wire  # noqa: E402
from notochord_rt.apps.osc.server import OscServer  # noqa: E402
from notochord_rt.apps.osc.sessions import Sessions  # noqa: E402
from notochord_rt.engine.sampling.grid import grid_points  # noqa: E402


def ask(sock, target, address, *args) -> tuple[str, dict]:
    sock.sendto(osc_wire.build(address, list(args), strict=False), target)
    data, _ = sock.recvfrom(65535)
    msg = OscMessage(data)
    return msg.address, dict(zip(msg.params[0::2], msg.params[1::2]))


def test_grid_requests_take_the_server_clock():
    sessions = Sessions(tiny_net(0, init=0.1), max_sessions=1, seed=0)
    clock = InternalClock(100.0)
    srv = OscServer(sessions, port=0)
    srv.parser.clocked = True
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    try:
        srv.start()
        addr, r = ask(sock, srv.address, "/notochord/sample", "grid", "1/8")
        assert "clock has no tempo" in r["message"], (addr, r)  # no clock yet: a clear error
        sessions.clock = clock.start()
        for _ in range(6):
            before = clock.info().beat
            addr, r = ask(sock, srv.address, "/notochord/sample", "grid", "1/8", "feed", 1)
            assert addr == "/return/notochord/sample", r
            after = clock.info().beat
            # the onset lies on the 1/8 grid of the clock's beat at the request
            on = [p for p in grid_points(before - 0.1, after - before + 0.2 + r["time"] * 100 / 60,
                                         0.5)]
            beat_at = [b + r["time"] * 100 / 60 for b in (before, after)]
            assert any(beat_at[0] - 1e-6 <= p <= beat_at[1] + 1e-6 for p in on), (r, beat_at)
        for _ in range(3):  # a grid of the instrument's own, the server's clock again
            before = clock.info().beat
            addr, r = ask(sock, srv.address, "/notochord/sample", "inst", 1,
                          "inst_grid", '{"1": "1/4"}', "feed", 1)
            assert addr == "/return/notochord/sample", r
            after = clock.info().beat
            beat_at = [b + r["time"] * 100 / 60 for b in (before, after)]
            on = grid_points(beat_at[0] - 1e-6, beat_at[1] - beat_at[0] + 2e-6, 1.0)
            assert len(on), (r, beat_at)  # a quarter-note line at the onset
        _, st = ask(sock, srv.address, "/notochord/status")
        assert "100.0 BPM" in st["clock"] and "internal" in st["clock"]
    finally:
        srv.stop()
        sock.close()
        clock.close()
