"""Fuzzing the OSC server with malformed datagrams, for a bounded time.

Random bytes, mutated valid packets (flipped bytes, cuts, corrupted size fields, spliced
bundles) and the hostile packets of issue 10: first straight into the parser (only its
own error type may come out), then as real UDP datagrams on 127.0.0.1 into a running
server, which must still answer a ping afterwards with no internal error counted.
``NOTOCHORD_FUZZ_SECONDS`` (default 12, split between the two) and
``NOTOCHORD_FUZZ_SEED`` (default 0) change the budget and the seed.
"""

from __future__ import annotations

import os
import struct
import time

import numpy as np
import pytest
from test_osc import Client, net  # noqa: F401  (fixture)

from notochord_rt.apps.osc import wire as osc_wire
from notochord_rt.apps.osc.protocol import Parser, RequestError
from notochord_rt.apps.osc.server import OscServer
from notochord_rt.apps.osc.sessions import Sessions

SECONDS = float(os.environ.get("NOTOCHORD_FUZZ_SECONDS", "12"))
SEED = int(os.environ.get("NOTOCHORD_FUZZ_SEED", "0"))


def _bundle(*elements: bytes) -> bytes:
    return b"#bundle\x00" + b"\x00" * 8 + b"".join(struct.pack(">i", len(e)) + e
                                                    for e in elements)


def corpus() -> list[bytes]:
    """Valid datagrams of every kind the server understands, and the issue's packets."""
    b = osc_wire.build
    msgs = [
        b("/notochord/ping", ["handle", b""]),
        b("/notochord/query", ["include_pitch", "[60, 64, 67]", "handle", 1]),
        b("/notochord/query", ["include_inst", [1, 2, 3], "min_time", 0.1]),
        b("/notochord/sample", ["note_on_map", '{"violin": [60, 62]}', "feed", True]),
        b("/notochord/sample", ["time", "1e39"]),
        b("/notochord/sample", ["note_on_map", "[" * 1000]),
        b("/notochord/sample", ["time", "inf", "feed", True]),
        b("/notochord/feed", [1, 60, 0.1, 90, "handle", "x"]),
        b("/notochord/feed_sample", [1, 60, 0.1, 90, "max_polyphony", 2]),
        b("/notochord/session/open", []),
        b("/notochord/status", ["detail", True]),
        b("/notochord/held", []),
        b("/notochord/reset", ["start", False]),
        b("/notochord/prompt", ["/dev/zero"]),
        b("/notochord/load", ["/etc/passwd"]),
    ]
    msgs += [b("/notochord/query", [k, v]) for k, v in (
        ("include_pitch", "abc"), ("min_time", "abc"), ("include_inst", "violin"),
        ("min_vel", "abc"), ("port", 1), ("session", "nope"))]
    out = list(msgs)
    out += [_bundle(*msgs[k:k + 3]) for k in range(0, len(msgs), 3)]
    out.append(_bundle(_bundle(msgs[0], msgs[1]), msgs[2]))
    neg = _bundle(msgs[0])
    out.append(neg[:16] + struct.pack(">i", -4) + neg[20:])
    return out


def mutate(data: bytes, rng: np.random.Generator, pool: list[bytes]) -> bytes:
    """One random change: flip bytes, cut, corrupt an aligned int32, splice two packets."""
    buf = bytearray(data)
    kind = rng.integers(6)
    if kind == 0 and buf:
        for _ in range(int(rng.integers(1, 5))):
            buf[int(rng.integers(len(buf)))] = int(rng.integers(256))
    elif kind == 1 and buf:
        buf = buf[:int(rng.integers(len(buf)))]
    elif kind == 2 and len(buf) >= 4:
        pos = int(rng.integers(len(buf) // 4)) * 4
        value = int(rng.choice([-1, -4, -2**31, 0, 2**31 - 1, 4, 8, 65536,
                                int(rng.integers(-2**31, 2**31))]))
        buf[pos:pos + 4] = struct.pack(">i", value)
    elif kind == 3:
        other = pool[int(rng.integers(len(pool)))]
        buf = buf[:int(rng.integers(len(buf) + 1))] + other[int(rng.integers(len(other) + 1)):]
    elif kind == 4:  # type tags changed for others
        i = buf.find(b",")
        if i >= 0:
            for j in range(i + 1, min(len(buf), i + 8)):
                if buf[j]:
                    buf[j] = ord(rng.choice(list("ifsbhdtcrmTFNI[]x")))
    else:
        buf += rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    return bytes(buf)


def packets(rng: np.random.Generator, pool: list[bytes]):
    """An endless mix: a third random bytes, the rest mutated (sometimes twice) or intact."""
    while True:
        r = rng.random()
        if r < 0.3:
            n = int(rng.integers(0, 300))
            head = rng.choice([b"", b"/", b"#bundle\x00", b"/notochord/"])
            yield head + rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        elif r < 0.9:
            data = mutate(pool[int(rng.integers(len(pool)))], rng, pool)
            yield mutate(data, rng, pool) if rng.random() < 0.3 else data
        else:
            yield pool[int(rng.integers(len(pool)))]


@pytest.mark.slow
def test_fuzz_the_parser_in_process():
    rng = np.random.default_rng(SEED)
    pool = corpus()
    parser = Parser()
    deadline = time.monotonic() + SECONDS / 3
    n = parsed = 0
    for data in packets(rng, pool):
        if time.monotonic() > deadline:
            break
        n += 1
        try:
            messages = osc_wire.parse(data)
        except osc_wire.WireError:
            continue
        parsed += 1
        for address, params in messages:
            try:
                parser.parse(address, params)
            except RequestError:
                pass
    assert n > 1000 and parsed > n // 10  # both paths were exercised


@pytest.mark.slow
def test_fuzz_a_running_server_over_udp(net):  # noqa: F811
    srv = OscServer(Sessions(net, max_sessions=4, seed=0), port=0, rate=1e6,
                    burst=1e6, error_rate=1000).start()
    clients = [Client(srv.address) for _ in range(4)]
    rng = np.random.default_rng(SEED + 1)
    try:
        deadline = time.monotonic() + SECONDS * 2 / 3
        sent = 0
        for data in packets(rng, corpus()):
            if time.monotonic() > deadline:
                break
            c = clients[sent % len(clients)]
            try:
                c.sock.sendto(data, srv.address)
            except OSError:  # e.g. a datagram over the size limit
                pass
            sent += 1
            if sent % 200 == 0:  # keep the exchange modest and drain replies
                time.sleep(0.02)
                for cl in clients:
                    while not cl.nothing(0.001):
                        pass
        assert sent > 1000
        assert srv._thread is not None and srv._thread.is_alive()
        for k in range(10):  # the kernel may drop a datagram of the backlog: retry
            clients[0].send("/notochord/ping", "handle", f"after{k}")
            try:
                while True:
                    addr, r = clients[0].recv(timeout=2.0)
                    if addr == "/return/notochord/ping" and r["handle"] == f"after{k}":
                        break
                break
            except TimeoutError:
                continue
        else:
            pytest.fail("no ping reply after the fuzz")
        assert srv.stats["internal"] == 0, srv._last_internal
        assert srv.stats["garbage"] > 100 and srv.stats["requests"] > 100
    finally:
        for c in clients:
            c.close()
        srv.stop()
