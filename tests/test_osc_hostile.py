"""Hostile input against a running OSC server (issue 10): every packet of the findings.

Real UDP packets on 127.0.0.1 against a server thread with a tiny model and the default
limits; each test ends by checking that the server still answers a ping. Loops are
bounded and every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import struct
import time

import pytest
from midifiles import notes_track, simple_song, write_midi_bytes
from test_osc import Client, net  # noqa: F401  (fixture)

from notochord_rt.apps.osc import wire as osc_wire
from notochord_rt.apps.osc.files import FileRoot
from notochord_rt.apps.osc.server import OscServer
from notochord_rt.apps.osc.sessions import Sessions
from notochord_rt.engine.sampling.streams import Streams
from notochord_rt.errors import InputError

ERROR = "/return/notochord/error"


def _s(text: str) -> bytes:
    """An OSC string."""
    raw = text.encode() + b"\x00"
    return raw + b"\x00" * (-len(raw) % 4)


def _bundle(*elements: bytes, sizes: list[int] | None = None) -> bytes:
    out = b"#bundle\x00" + b"\x00" * 7 + b"\x01"
    for k, e in enumerate(elements):
        out += struct.pack(">i", len(e) if sizes is None else sizes[k]) + e
    return out


PING = _s("/notochord/ping") + _s(",")


@pytest.fixture
def server(net):  # noqa: F811
    srv = OscServer(Sessions(net, max_sessions=4, seed=0, per_host=3), port=0).start()
    yield srv
    srv.stop()
    assert srv.stats["internal"] == 0  # no stage failed unexpectedly


@pytest.fixture
def client(server):
    c = Client(server.address)
    yield c
    c.close()


def alive(c: Client, tries: int = 5) -> None:
    """The server answers a ping (a few tries, for datagrams the kernel may drop)."""
    for k in range(tries):
        c.send("/notochord/ping", "handle", f"alive{k}")
        try:
            while True:
                addr, r = c.recv(timeout=1.0)
                if addr == "/return/notochord/ping" and r["handle"] == f"alive{k}":
                    return
        except TimeoutError:
            continue
    pytest.fail("the server does not answer a ping")


def status(c: Client) -> dict:
    c.send("/notochord/status", "detail", True)
    for _ in range(50):
        addr, r = c.recv()
        if addr == "/return/notochord/status":
            return r
    raise AssertionError("no status reply")


# -- the findings, one by one ---------------------------------------------------------------
def test_empty_blob_handle_is_echoed(client):
    client.sock.sendto(_s("/notochord/ping") + _s(",sb") + _s("handle") + b"\x00" * 4,
                       client.target)
    addr, r = client.recv()
    assert addr == "/return/notochord/ping" and r["handle"] == b""
    alive(client)


def test_oversized_handle_is_refused_without_echo(client):
    addr, r = client.ask("/notochord/query", "handle", "h" * 500)
    assert addr == ERROR and "handle" in r["message"] and "handle" not in r
    alive(client)


@pytest.mark.parametrize("key", ["note_on_map", "include_pitch", "session", "handle"])
def test_deeply_nested_json_is_an_error(client, key):
    address = "/notochord/sample" if key == "note_on_map" else "/notochord/query"
    addr, r = client.ask(address, key, "[" * 1000 + "]" * 1000, "handle", 5)
    assert addr == ERROR and r["address"] == address
    if key not in ("session", "handle"):  # those are not decoded: wrong type / too long
        assert "nested" in r["message"]
    addr, r = client.ask("/notochord/sample", "note_on_map", "[" * 30 + "]" * 30)
    assert addr == ERROR and "nested" in r["message"]
    alive(client)


@pytest.mark.parametrize("args, name", [
    (["time", "1e39"], "time"), (["time", 1e39], "time"), (["min_time", "1e39"], "min_time"),
    (["vel", "Infinity"], "vel"), (["time", "NaN"], "time"), (["time", "inf", "feed", True],
                                                              "time")])
def test_values_out_of_range_are_errors(client, args, name):
    addr, r = client.ask("/notochord/sample", *args)
    assert addr == ERROR and name in r["message"]
    alive(client)


def test_a_reply_value_that_cannot_be_sent_is_an_error_reply(server, client, monkeypatch):
    real = Sessions._event_reply

    def huge(r, s, e, step):
        return {**real(r, s, e, step), "time": 1e39}

    monkeypatch.setattr(Sessions, "_event_reply", staticmethod(huge))
    addr, r = client.ask("/notochord/sample", "handle", 3)
    assert addr == ERROR and "cannot be sent" in r["message"] and r["handle"] == 3
    monkeypatch.undo()
    assert client.ask("/notochord/sample")[0] == "/return/notochord/sample"
    assert server.stats["unsendable"] == 1


QUERY_VARIANTS = [("include_pitch", "abc"), ("min_time", "abc"), ("include_inst", "violin"),
                  ("min_vel", "abc"), ("exclude_pitch", "abc"), ("max_time", "abc"),
                  ("next_inst", "abc"), ("next_pitch", "abc"), ("next_time", "abc"),
                  ("next_vel", "abc"), ("exclude_inst", "abc"), ("include_drum", "abc"),
                  ("pitch_temp", "abc"), ("truncate_quantile_time", "abc"),
                  ("index_pitch", "abc"), ("max_vel", "abc"), ("allow_anon", "abc"),
                  ("instrument_temp", [1, "x"]), ("include_pitch", '{"a": 1}'),
                  ("include_pitch", [1e300]), ("next_time", "1e39")]


@pytest.mark.parametrize("key, value", QUERY_VARIANTS)
def test_wrong_query_types_get_a_reply(client, key, value):
    addr, r = client.ask("/notochord/query", key, value, "handle", "q")
    assert r["handle"] == "q"
    if value in ("abc", "1e39", '{"a": 1}'):
        assert addr == ERROR and r["address"] == "/notochord/query"
    else:  # a name the engine may accept: then a query reply
        assert addr in (ERROR, "/return/notochord/query")
    alive(client)


@pytest.mark.parametrize("data", [
    _bundle(PING, sizes=[-4]),
    _bundle(PING, sizes=[-2**31]),
    _bundle(PING, sizes=[0]),
    _bundle(PING, sizes=[2**31 - 1]),
    _bundle(PING, sizes=[6]),
    _bundle(*[PING] * 17),  # over the message limit
    b"#bundle\x00" + b"\x00" * 4,  # short header
    _s("/notochord/ping") + _s(",b") + struct.pack(">i", -8),
    _s("/notochord/ping") + _s(",b") + struct.pack(">i", 2**31 - 1),
    _s("/notochord/ping") + _s(",[[[[[[[[[[") ,
    _s("/notochord/ping") + _s(",i"),
    _s("/notochord/ping") + _s(",]"),
    _s("/notochord/ping") + _s(",x"),
    _s("/notochord/ping") + _s(",s") + b"abcd",
])
def test_malformed_packets_are_dropped(client, data):
    before = status(client)["garbage"]
    client.sock.sendto(data, client.target)
    alive(client)
    assert status(client)["garbage"] == before + 1


def test_nested_bundles_are_bounded(client):
    inner = PING
    for _ in range(3):
        inner = _bundle(inner)
    client.sock.sendto(inner, client.target)  # depth 3: served
    assert client.recv()[0] == "/return/notochord/ping"
    for _ in range(3):
        inner = _bundle(inner)
    before = status(client)["garbage"]
    client.sock.sendto(inner, client.target)  # depth 6: refused
    alive(client)
    assert status(client)["garbage"] == before + 1


# -- one request's failure is its own --------------------------------------------------------
def test_a_failing_request_does_not_spoil_the_others_in_its_batch(net, monkeypatch):  # noqa: F811
    real = Streams.feed

    def picky(self, idx, inst, pitch, time, vel):
        if any(float(t) == 5.0 for t in time):
            raise InputError("time too large for this engine")
        return real(self, idx, inst, pitch, time, vel)

    monkeypatch.setattr(Streams, "feed", picky)
    server = OscServer(Sessions(net, max_sessions=4, seed=0), port=0)  # fed by hand
    a, b, c = (Client(server.address) for _ in range(3))
    try:
        for cl in (b, c):
            server.handle([(osc_wire.build("/notochord/session/open", []),
                            ("127.0.0.1", cl.port))])
        sb, sc = b.recv()[1]["session"], c.recv()[1]["session"]
        batch = [(osc_wire.build("/notochord/sample", ["time", 5.0, "feed", True,
                                                       "handle", "bad"]),
                  ("127.0.0.1", a.port)),
                 (osc_wire.build("/notochord/feed_sample", [1, 60, 0.1, 80, "session", sb,
                                                            "feed", True, "handle", "b"]),
                  ("127.0.0.1", b.port)),
                 (osc_wire.build("/notochord/feed", [1, 62, 0.1, 80, "session", sc,
                                                     "handle", "c"]),
                  ("127.0.0.1", c.port))]
        server.handle(batch)
        addr, r = a.recv()
        assert addr == ERROR and "too large" in r["message"] and r["handle"] == "bad"
        addr, r = b.recv()
        assert addr == "/return/notochord/sample" and r["handle"] == "b" and r["step"] == 1
        assert c.recv()[1] == {"step": 1, "handle": "c"}
        for cl, sid, steps in ((b, sb, 2), (c, sc, 1)):  # their events were fed
            server.handle([(osc_wire.build("/notochord/query", ["session", sid]),
                            ("127.0.0.1", cl.port))])
            assert cl.recv()[1]["step"] == steps
    finally:
        for cl in (a, b, c):
            cl.close()
        server.stop()


# -- sessions belong to someone ----------------------------------------------------------------
def test_session_tokens_and_per_host_limit(client):
    tokens = [client.ask("/notochord/session/open")[1]["session"] for _ in range(3)]
    assert len(set(tokens)) == 3 and all(isinstance(t, str) and len(t) >= 16 for t in tokens)
    addr, r = client.ask("/notochord/session/open")
    assert addr == ERROR and "from this host" in r["message"]
    for guess in (1, 2, "1", tokens[0][:-1] + ("A" if tokens[0][-1] != "A" else "B")):
        addr, r = client.ask("/notochord/query", "session", guess)
        assert addr == ERROR and "session" in r["message"]
    assert client.ask("/notochord/query", "session", tokens[0])[0] == "/return/notochord/query"
    client.ask("/notochord/session/close", "session", tokens[0])
    addr, r = client.ask("/notochord/query", "session", tokens[0])
    assert addr == ERROR and "no such session" in r["message"]
    assert client.ask("/notochord/session/open")[0] == "/return/notochord/session/open"


@pytest.mark.slow
def test_an_expired_session_tells_its_owner(net):  # noqa: F811
    srv = OscServer(Sessions(net, max_sessions=2, seed=0), port=0, session_timeout=0.3).start()
    c = Client(srv.address)
    try:
        sid = c.ask("/notochord/session/open")[1]["session"]
        c.send("/notochord/feed", 1, 60, 0.0, 90, "session", sid)
        addr, r = c.recv(timeout=5.0)
        assert addr == "/return/notochord/session/expired"
        assert r == {"session": sid, "held": 1}  # the client should release its note
        assert srv.sessions.open_count == 1
    finally:
        c.close()
        srv.stop()


# -- fairness ------------------------------------------------------------------------------------
def test_a_session_0_flood_does_not_starve_another_session_0_client(net):  # noqa: F811
    server = OscServer(Sessions(net, max_sessions=1, seed=0), port=0)  # fed by hand
    flood, good = Client(server.address), Client(server.address)
    try:
        # 4 bundles of 16 queries: the bundle counts per message, one fair queue per sender
        msgs = [osc_wire.build("/notochord/query", ["handle", k]) for k in range(16)]
        batch = [(_bundle(*msgs), ("127.0.0.1", flood.port)) for _ in range(4)]
        batch.append((osc_wire.build("/notochord/query", ["handle", "good"]),
                      ("127.0.0.1", good.port)))
        server.handle(batch)
        for _ in range(2):
            if not good.nothing(0.05):
                break
            server.handle([])
        else:
            pytest.fail("the good client was not served within 2 wake-ups")
        assert server.backlog >= 50  # the flood waits its turn
    finally:
        flood.close()
        good.close()
        server.stop()


def test_a_fast_sender_is_rate_limited_before_parsing(net):  # noqa: F811
    srv = OscServer(Sessions(net, max_sessions=0), port=0, rate=100, burst=20)
    flood, good = Client(srv.address), Client(srv.address)
    try:
        srv.handle([(PING, ("127.0.0.1", flood.port)) for _ in range(500)]
                   + [(PING, ("127.0.0.1", good.port))])
        assert srv.stats["limited"] >= 450
        got = 0
        while not flood.nothing(0.1):
            got += 1
        assert got <= 25
        assert good.recv()[0] == "/return/notochord/ping"
    finally:
        flood.close()
        good.close()
        srv.stop()


# -- amplification ---------------------------------------------------------------------------------
@pytest.mark.parametrize("address, args, limit", [
    ("/notochord/ping", [], 4.0), ("/notochord/status", [], 4.0),
    ("/notochord/reset", [], 4.0), ("/notochord/session/open", [], 4.0),
    ("/notochord/feed", [1, 60, 0.1, 90, "handle", 1], 4.0), ("/notochord/held", [], 4.0),
    ("/notochord/x", [], 4.0), ("/notochord/query", ["pitch_temp", 1], 4.0),
    ("/notochord/query", ["include_pitch", "[" * 40 + "]" * 40], 4.0),
    ("/notochord/query", [], 4.4),  # the reference's fixed reply: 104 bytes for 24
    ("/notochord/sample", [], 4.6),  # 108 bytes for 24
])
def test_reply_bytes_are_bounded(client, address, args, limit):
    data = osc_wire.build(address, args)
    client.sock.sendto(data, client.target)
    reply, _ = client.sock.recvfrom(65535)
    assert len(reply) <= limit * len(data), (len(reply), len(data))


def test_port_redirection_is_refused_by_default(client):
    other = Client(client.target)
    try:
        addr, r = client.ask("/notochord/ping", "port", other.port)
        assert addr == ERROR and other.nothing(0.2)
    finally:
        other.close()


# -- files -----------------------------------------------------------------------------------------
def test_files_are_off_by_default_and_say_nothing_about_paths(client):
    replies = {client.ask(a, p)[1]["message"] for a in ("/notochord/prompt", "/notochord/load")
               for p in ("/etc/passwd", "/no/such/file", "/dev/zero")}
    assert len(replies) == 2 and all("reads no files" in m for m in replies)


@pytest.fixture
def file_server(net, tmp_path):  # noqa: F811
    root = tmp_path / "root"
    root.mkdir()
    srv = OscServer(Sessions(net, max_sessions=2, seed=0,
                             files=FileRoot(root, midi_max_bytes=64 << 10, timeout=5.0)),
                    port=0).start()
    c = Client(srv.address)
    yield srv, c, root
    c.close()
    srv.stop()


def test_paths_outside_the_folder_look_the_same_whether_they_exist(file_server, tmp_path):
    _, c, root = file_server
    (tmp_path / "secret.mid").write_bytes(simple_song())
    os.symlink(tmp_path / "secret.mid", root / "link.mid")
    os.symlink("/dev/zero", root / "zero.mid")
    messages = set()
    for path in ("/etc/passwd", "/etc/no-such-file", str(tmp_path / "secret.mid"),
                 "../secret.mid", "../nothing.mid", "link.mid", "zero.mid", "/dev/zero",
                 "/proc/self/environ"):
        for address in ("/notochord/prompt", "/notochord/load"):
            addr, r = c.ask(address, path)
            assert addr == ERROR
            messages.add(r["message"])
    assert len(messages) == 1 and "not inside" in messages.pop()
    alive(c)


def test_special_and_large_files_are_refused_and_never_block(file_server):
    srv, c, root = file_server
    os.mkfifo(root / "fifo.mid")
    t0 = time.monotonic()
    addr, r = c.ask("/notochord/prompt", "fifo.mid")
    assert addr == ERROR and "not a regular file" in r["message"]
    assert time.monotonic() - t0 < 2.0
    (root / "big.mid").write_bytes(b"\x00" * (65 << 10))
    addr, r = c.ask("/notochord/prompt", "big.mid")
    assert addr == ERROR and "at most" in r["message"]
    addr, r = c.ask("/notochord/prompt", "sub")
    assert addr == ERROR and "no such file" in r["message"].lower()
    alive(c)


@pytest.mark.slow
def test_a_long_prompt_does_not_stop_other_clients(file_server):
    srv, c, root = file_server
    q = 96
    notes = [(k * q, q // 2, 40 + k % 48, 80) for k in range(3000)]
    (root / "long.mid").write_bytes(write_midi_bytes([notes_track(notes, program=0)], q))
    other = Client(srv.address)
    try:
        c.send("/notochord/prompt", "long.mid", "handle", "p")
        waits = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            other.send("/notochord/ping")
            other.recv(timeout=5.0)
            waits.append(time.perf_counter() - t0)
            if not c.nothing(0.01):
                break
        assert len(waits) >= 3  # the prompt took a while, and others were served meanwhile
        assert max(waits) < 0.5
        addr, r = c.ask("/notochord/held")  # the session is free again, after the prompt
        assert addr == "/return/notochord/held"
        _, r = c.ask("/notochord/query")
        assert r["step"] == 6000
        # while a session is being prompted, its other requests get a clear error
        c.send("/notochord/prompt", "long.mid")
        addr, r = c.ask("/notochord/query", "handle", 1)
        assert addr == ERROR and "busy" in r["message"]
    finally:
        other.close()


def test_cli_non_loopback_host_warns_and_disables_files(ckpt, tmp_path, monkeypatch, capsys):
    from notochord_rt import cli
    from notochord_rt.apps.osc import server as osc_server
    from notochord_rt.cli import serve

    assert serve._loopback("127.0.0.1") and serve._loopback("::1")
    assert not serve._loopback("0.0.0.0") and not serve._loopback("192.168.1.2")
    seen = {}

    class Fake:
        def __init__(self, sessions, host, port, **kw):
            self.sessions = sessions
            self.parser = osc_server.Parser()

        address = ("0.0.0.0", 9999)

        def serve_forever(self):
            seen["files"] = self.sessions.files
            raise KeyboardInterrupt

        def stop(self):
            pass

    monkeypatch.setattr(osc_server, "OscServer", Fake)
    assert cli.main(["serve", "--checkpoint", str(ckpt), "--allow-files", str(tmp_path),
                     "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "not a loopback" in err and "--allow-files is ignored" in err
    assert seen["files"] is None


@pytest.fixture(scope="module")
def ckpt(net, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    net.save(path)
    return path


def test_status_detail_counts(client):
    r = status(client)
    assert {"garbage", "limited", "busy", "unsendable", "internal", "errors"} <= set(r)
    assert json.dumps(r)  # plain values


def test_bundles_count_per_message_against_the_rate(net):  # noqa: F811
    srv = OscServer(Sessions(net, max_sessions=0), port=0, rate=10, burst=20)
    c = Client(srv.address)
    try:
        bundle = _bundle(*[PING] * 16)
        srv.handle([(bundle, ("127.0.0.1", c.port)) for _ in range(4)])
        # a burst of 20: the first bundle costs 16 of them, the second the other 4 and
        # puts the sender 12 in debt, so the next two are dropped unread, as are single
        # messages until the debt is paid (a second at 10 a second)
        got = 0
        while not c.nothing(0.1):
            got += 1
        assert got == 32 and srv.stats["limited"] == 2
        srv.handle([(PING, ("127.0.0.1", c.port))])
        assert c.nothing(0.1) and srv.stats["limited"] == 3
    finally:
        c.close()
        srv.stop()


@pytest.mark.slow
def test_a_slow_load_times_out_without_blocking(net, tmp_path):  # noqa: F811
    (tmp_path / "slow.safetensors").write_bytes(b"x")

    def slow(path):
        time.sleep(1.5)
        return net

    srv = OscServer(Sessions(net, max_sessions=0, loader=slow,
                             files=FileRoot(tmp_path, timeout=0.5)), port=0).start()
    c = Client(srv.address)
    try:
        c.send("/notochord/load", "slow.safetensors", "handle", "L")
        t0 = time.monotonic()
        assert c.ask("/notochord/query")[0] == "/return/notochord/query"  # not blocked
        assert time.monotonic() - t0 < 0.4
        addr, r = c.recv()
        assert addr == ERROR and "time limit" in r["message"] and r["handle"] == "L"
        addr, r = c.ask("/notochord/load", "slow.safetensors")  # its thread still runs
        assert addr == ERROR and "busy" in r["message"]
        time.sleep(1.2)
        c.send("/notochord/load", "slow.safetensors")
        assert c.recv(timeout=2.0)[0] == ERROR  # timed out again: the limit holds
    finally:
        c.close()
        srv.stop()


ISSUE_PACKETS = [
    _s("/notochord/ping") + _s(",sb") + _s("handle") + b"\x00" * 4,
    osc_wire.build("/notochord/query", ["note_on_map", "[" * 1000 + "]" * 1000]),
    osc_wire.build("/notochord/sample", ["time", "1e39"]),
    osc_wire.build("/notochord/sample", ["note_on_map", "[" * 1000 + "]" * 1000]),
    *[osc_wire.build("/notochord/query", [k, v]) for k, v in QUERY_VARIANTS
      if isinstance(v, str)],
    _bundle(PING, sizes=[-4]),
    osc_wire.build("/notochord/prompt", ["/dev/zero"]),
    osc_wire.build("/notochord/load", ["/etc/passwd"]),
    osc_wire.build("/notochord/sample", ["time", "inf", "feed", True]),
    osc_wire.build("/notochord/query", ["port", 9]),
]


@pytest.mark.slow
def test_the_cli_server_survives_the_issue_packets(ckpt):
    import re
    import select
    import signal
    import subprocess
    import sys

    # Ctrl-C must reach the server even when this suite runs with SIGINT ignored (a
    # background job of a non-interactive shell, e.g. `nohup bash .ci/run &`): a child
    # inherits an ignored signal, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "notochord_rt", "serve", "--checkpoint",
                             str(ckpt), "--port", "0"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        m, deadline = None, time.monotonic() + 60
        while m is None and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1.0)[0]:
                line = proc.stderr.readline()
                if not line:
                    break
                m = re.search(r"listening on ([\d.]+):(\d+).*files off", line)
        assert m, "the server did not start (with files off)"
        c = Client((m.group(1), int(m.group(2))))
        for data in ISSUE_PACKETS:
            c.sock.sendto(data, c.target)
        alive(c)
        assert proc.poll() is None
        c.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
