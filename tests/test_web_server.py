"""The web server running for real (uvicorn on a loopback port, tiny model): static
route safety, Host and Origin checks, WebSocket fuzz, two-tab isolation, session limit,
idle expiry, rate and size limits, release on disconnect."""

from __future__ import annotations

import http.client
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tiny import tiny_model

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
ws_client = pytest.importorskip("websockets.sync.client")

from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from notochord_rt.apps.web.protocol import MAX_FRAME  # noqa: E402
from notochord_rt.apps.web.serve import ServerThread, make_web_app  # noqa: E402
from notochord_rt.apps.web.soundfont import HOW_TO_GET  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    servers = []

    def start(**kw) -> ServerThread:
        kw.setdefault("preset", "follows")
        idle_check = kw.pop("idle_check", None)
        web = make_web_app(tiny_model(0), **kw)
        if idle_check is not None:
            web.config.idle_check = idle_check
        srv = ServerThread(web).start()
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.stop()


def connect(srv: ServerThread, origin: str | None = "own", **kw):
    o = f"http://127.0.0.1:{srv.port}" if origin == "own" else origin
    return ws_client.connect(f"ws://127.0.0.1:{srv.port}/ws", origin=o, proxy=None,
                             open_timeout=10, **kw)


def recv_until(ws, pred: Callable[[dict], bool], timeout: float = 10.0) -> list[dict]:
    """Messages up to and including the first that satisfies ``pred``."""
    out = []
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        assert left > 0, f"timed out; last messages {out[-5:]}"
        m = json.loads(ws.recv(timeout=left))
        out.append(m)
        if pred(m):
            return out


def drain(ws, quiet: float = 0.3) -> list[dict]:
    out = []
    while True:
        try:
            out.append(json.loads(ws.recv(timeout=quiet)))
        except TimeoutError:
            return out


def get(srv: ServerThread, path: str, host: str | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    c.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        c.putheader("Host", host)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def test_static_route_serves_only_its_files(serve, tmp_path) -> None:
    srv = serve()
    status, body = get(srv, "/")
    assert status == 200 and b"/static/app.js" in body
    assert get(srv, "/static/app.js")[0] == 200
    secret = "import uvicorn"  # text of serve.py, next to the static folder
    for path in ["/static/../serve.py", "/static/..%2fserve.py", "/static/%2e%2e/serve.py",
                 "/static/%2e%2e%2fserve.py", "/static/..%5cserve.py", "/static//etc/passwd",
                 "/static/%2fetc%2fpasswd", "/../serve.py", "/static/app.js%00.png",
                 "/static/", "/static/.", "/static/..", "/etc/passwd", "/serve.py",
                 "/static/../../web/serve.py", "/static/....//serve.py",
                 "/static/%252e%252e%252fserve.py", "/soundfont/../serve.py"]:
        status, body = get(srv, path)
        assert status in (400, 404), (path, status)
        assert secret.encode() not in body and b"root:" not in body, path


def test_host_header_must_name_the_server(serve) -> None:
    srv = serve()
    assert get(srv, "/api/info", host="evil.example")[0] == 400
    assert get(srv, "/api/info", host=f"localhost:{srv.port}")[0] == 200


def test_soundfont_route(serve, tmp_path) -> None:
    srv = serve(soundfont=None)
    status, body = get(srv, "/soundfont")
    assert status == 404 and json.loads(body)["error"] == HOW_TO_GET
    assert json.loads(get(srv, "/api/info")[1])["soundfont_help"] == HOW_TO_GET
    sf = tmp_path / "mini.sf2"
    sf.write_bytes(b"RIFF" + bytes(range(256)) * 10)
    srv2 = serve(soundfont=sf)
    status, body = get(srv2, "/soundfont")
    assert status == 200 and body == sf.read_bytes()


def test_websocket_origin_is_checked(serve) -> None:
    srv = serve()
    for bad in ("http://evil.example", f"http://127.0.0.1:{srv.port + 1}", "null"):
        with pytest.raises(InvalidStatus) as e:
            connect(srv, origin=bad)
        assert e.value.response.status_code == 403
    with connect(srv) as ws:  # the page's own origin
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
    with connect(srv, origin=None) as ws:  # not a browser
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"


def test_messages_are_not_compressed(serve) -> None:
    srv = serve()
    with connect(srv) as ws:  # the client offers permessage-deflate, as browsers do
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"


def _garbage(rng: random.Random) -> str:
    """One message the protocol must refuse."""
    kind = rng.randrange(8)
    if kind == 0:
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(1, 60)))
    if kind == 1:
        return json.dumps(rng.choice([None, 1, "x", [1, 2], 3.5, True, {"typ": "note"}]))
    if kind == 2:
        return json.dumps({"type": rng.choice(["", "NOTE", "notes", "__init__", "x" * 40, 7])})
    if kind == 3:
        return json.dumps({"type": "note", "pitch": rng.choice([-1, 128, 1e9, "60", None,
                                                                 60.5, [60]]), "vel": 64})
    if kind == 4:
        return json.dumps({"type": "control", "name": "steer_pitch",
                           "value": rng.choice([-0.1, 1.1, "0.5", None, 1e308 * 10])})
    if kind == 5:
        return json.dumps({"type": "voice", "channel": rng.choice([0, 17, -3, "1", None])})
    if kind == 6:
        return json.dumps({"type": "action", "name": rng.choice(["PANIC", "", "rm -rf"])})
    return json.dumps({"type": "prompt", "name": "x.mid", "data": "%%%notbase64%%%"})


def test_fuzz_is_answered_with_errors_and_leaves_sessions_working(serve) -> None:
    srv = serve(rate=5000)
    rng = random.Random(15)
    with connect(srv) as a, connect(srv) as b:
        recv_until(a, lambda m: m["type"] == "welcome")
        recv_until(b, lambda m: m["type"] == "welcome")
        bad = [_garbage(rng) for _ in range(300)]
        for text in bad:
            a.send(text)
            m = recv_until(a, lambda m: m["type"] == "error")[-1]
            assert m["message"]
        a.send(b"\x00\x01binary")
        assert "binary" in recv_until(a, lambda m: m["type"] == "error")[-1]["message"]
        # both sessions still play
        for ws, nid in ((a, 1), (b, 2)):
            ws.send(json.dumps({"type": "note", "pitch": 62, "vel": 90, "id": nid}))
            got = recv_until(ws, lambda m, nid=nid: m.get("reply") == nid)
            assert got[-1]["type"] == "note"
        assert not [m for m in drain(b) if m["type"] == "error"]
    assert _eventually(lambda: len(srv.web.manager) == 0)


def _eventually(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.mark.parametrize("engine", ["per-tab", "batched"])
def test_two_tabs_are_isolated(serve, engine) -> None:
    srv = serve(engine=engine)
    with connect(srv) as a, connect(srv) as b:
        wa = recv_until(a, lambda m: m["type"] == "welcome")[-1]
        wb = recv_until(b, lambda m: m["type"] == "welcome")[-1]
        assert wa["session"] != wb["session"]
        b.send(json.dumps({"type": "preset", "name": "solo"}))
        assert recv_until(b, lambda m: m["type"] == "rig")[-1]["preset"] == "solo"
        a.send(json.dumps({"type": "note", "pitch": 60, "vel": 100, "id": 9}))
        answers = [m for m in recv_until(a, lambda m: m.get("reply") == 9)
                   if m["type"] == "note"]
        assert answers
        a.send(json.dumps({"type": "action", "name": "panic"}))
        recv_until(a, lambda m: m["type"] == "panic")
        # b saw none of a's notes, replies or panic; its preset stayed its own
        seen_b = drain(b, 0.5)
        assert not [m for m in seen_b if m.get("reply") == 9 or m["type"] == "panic"]
        assert all(m["ch"] == 1 and m["inst"] == 1 for m in seen_b if m["type"] == "note")
        a.send(json.dumps({"type": "hello", "version": 1}))
        assert recv_until(a, lambda m: m["type"] == "welcome")[-1]["rig"]["preset"] == "follows"


def test_batches_only_for_a_client_that_asks(serve) -> None:
    srv = serve()
    with connect(srv) as plain, connect(srv) as batched:
        recv_until(plain, lambda m: m["type"] == "welcome")
        recv_until(batched, lambda m: m["type"] == "welcome")
        batched.send(json.dumps({"type": "hello", "version": 1, "batch": True}))
        recv_until(batched, lambda m: m["type"] == "welcome")
        for ws in (plain, batched):
            for k in range(200):  # a burst: replies wait together for the sender
                ws.send(json.dumps({"type": "ping", "id": k}))
        frames = {}
        for name, ws in (("plain", plain), ("batched", batched)):
            got, end = [], time.monotonic() + 20
            while sum(len(f) if isinstance(f, list) else 1 for f in got) < 200:
                got.append(json.loads(ws.recv(timeout=end - time.monotonic())))
            frames[name] = got
        assert all(isinstance(f, dict) for f in frames["plain"])
        assert [f["id"] for f in frames["plain"]] == list(range(200))
        flat = [m for f in frames["batched"] for m in (f if isinstance(f, list) else [f])]
        assert [m["id"] for m in flat] == list(range(200))  # every reply, in order
        assert all(len(f) >= 2 for f in frames["batched"] if isinstance(f, list))
        assert len(frames["batched"]) < 200  # the burst's replies were packed


def test_session_count_is_bounded(serve) -> None:
    srv = serve(max_sessions=2)
    with connect(srv) as a, connect(srv) as b:
        recv_until(a, lambda m: m["type"] == "welcome")
        recv_until(b, lambda m: m["type"] == "welcome")
        with connect(srv) as c:
            m = json.loads(c.recv(timeout=10))
            assert m["type"] == "error" and "2 sessions are open" in m["message"]
            with pytest.raises(ConnectionClosed) as e:
                c.recv(timeout=10)
            assert e.value.rcvd.code == 1013
    assert _eventually(lambda: len(srv.web.manager) == 0)
    with connect(srv) as d:  # slots come back
        assert json.loads(d.recv(timeout=10))["type"] == "welcome"


def test_idle_sessions_are_closed(serve) -> None:
    srv = serve(idle_timeout=0.5, idle_check=0.1)
    with connect(srv) as ws:
        recv_until(ws, lambda m: m["type"] == "welcome")
        sess = next(iter(srv.web.manager.sessions.values()))
        assert recv_until(ws, lambda m: m["type"] == "closing")[-1]["reason"] == "idle"
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
    assert _eventually(lambda: len(srv.web.manager) == 0)
    assert not sess.player.running and sess.sink.sounding == set()


def test_rate_and_size_limits(serve) -> None:
    srv = serve(rate=20)
    with connect(srv, max_size=None) as a, connect(srv) as b:
        recv_until(a, lambda m: m["type"] == "welcome")
        recv_until(b, lambda m: m["type"] == "welcome")
        for k in range(300):
            a.send(json.dumps({"type": "ping", "id": k}))
        got = drain(a, 1.0)
        pongs = [m for m in got if m["type"] == "pong"]
        errors = [m for m in got if m["type"] == "error"]
        # the burst (2 x rate) and what refilled while the server worked through them
        assert 40 <= len(pongs) < 200, len(pongs)
        assert errors and "too many messages" in errors[0]["message"]
        assert len(errors) <= 3  # one error a second, not one per dropped message
        time.sleep(1.0)
        a.send(json.dumps({"type": "ping", "id": 1000}))
        assert recv_until(a, lambda m: m["type"] == "pong")[-1]["id"] == 1000
        a.send("x" * (MAX_FRAME + 10))  # larger than any message: the connection closes
        with pytest.raises(ConnectionClosed) as e:
            while True:
                a.recv(timeout=10)
        assert e.value.rcvd is None or e.value.rcvd.code == 1009
        b.send(json.dumps({"type": "ping", "id": 5}))  # the other session is untouched
        assert recv_until(b, lambda m: m["type"] == "pong")[-1]["id"] == 5


@pytest.mark.parametrize("engine", ["per-tab", "batched"])
def test_disconnect_releases_every_model_note(serve, engine) -> None:
    srv = serve(preset="band", engine=engine)
    with connect(srv) as ws:
        recv_until(ws, lambda m: m["type"] == "welcome")
        for name in ("steer_rate", "steer_density"):
            ws.send(json.dumps({"type": "control", "name": name, "value": 1.0}))
        sess = next(iter(srv.web.manager.sessions.values()))
        assert _eventually(lambda: bool(sess.sink.sounding))  # the band is playing
    assert _eventually(lambda: len(srv.web.manager) == 0)
    assert not sess.player.running and sess.closed
    assert sess.sink.sounding == set()
    assert sess.player.sounding() == set()
    if engine == "batched":  # the stream slot went back, its held notes cleared
        # (the manager forgets the session first, then gives the slot back: wait for that)
        assert _eventually(lambda: sess.player.model.index in srv.web.manager.factory.engine._free)
        assert sess.player.model.held_notes == {}


def test_the_command_serves_and_warns_off_loopback(tmp_path) -> None:
    """``notochord-rt web`` as a user runs it: the URL is printed, the page is served,
    a non-loopback --host prints a warning; SIGTERM stops it."""
    import os
    import re
    import signal
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        proc = subprocess.Popen([sys.executable, "-m", "notochord_rt", "web", "--host", host,
                                 "--port", "0", "--soundfont", str(_sf(tmp_path))],
                                stderr=subprocess.PIPE, text=True, env=env)
        try:
            line = proc.stderr.readline()
            text = line
            while "Ctrl-C" not in line:
                line = proc.stderr.readline()
                assert line, text
                text += line
            assert ("WARNING" in text) == warned, text
            port = int(re.search(r":(\d+)/", text).group(1))
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/api/info", headers={"Host": f"127.0.0.1:{port}"})
            r = c.getresponse()
            assert r.status == 200 and json.loads(r.read())["soundfont"] == "mini.sf2"
        finally:
            proc.send_signal(signal.SIGTERM)
            # uvicorn shuts down (sessions closed), then re-raises the signal it caught
            assert proc.wait(30) in (0, -signal.SIGTERM)


def _sf(tmp_path):
    sf = tmp_path / "mini.sf2"
    sf.write_bytes(b"RIFF" + bytes(64))
    return sf


def _workers_of(pid: int) -> list[int]:
    """The spawned worker processes of ``pid`` (not multiprocessing's resource tracker)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmd:
            out.append(int(p.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_serve_restart_and_stop(tmp_path) -> None:
    """``--workers 2``: two processes serve the port (each session answered), a worker that
    dies is started again, SIGTERM to the parent stops every worker."""
    import os
    import re
    import signal
    import subprocess
    import sys

    from tiny import tiny_net

    ckpt = tmp_path / "tiny.safetensors"
    tiny_net(0).save(ckpt)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "notochord_rt", "web", "--port", "0",
                             "--workers", "2", "--checkpoint", str(ckpt), "--preset",
                             "follows"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        text = ""
        while "Ctrl-C" not in text:
            line = proc.stderr.readline()
            assert line, text
            text += line
        assert "2 worker processes" in text
        port = int(re.search(r":(\d+)/", text).group(1))
        url = f"http://127.0.0.1:{port}"
        assert _eventually(lambda: len(_workers_of(proc.pid)) == 2, timeout=60)

        def play(k: int) -> None:
            deadline = time.monotonic() + 60
            while True:  # the workers may still be loading: connection refused until then
                try:
                    ws = ws_client.connect(f"ws://127.0.0.1:{port}/ws", origin=url,
                                           open_timeout=10)
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            with ws:
                recv_until(ws, lambda m: m["type"] == "welcome", timeout=30)
                ws.send(json.dumps({"type": "note", "pitch": 60, "vel": 100, "id": k}))
                recv_until(ws, lambda m: m.get("reply") == k and m["type"] == "note",
                           timeout=30)

        for k in range(4):
            play(k)
        first = _workers_of(proc.pid)
        os.kill(first[0], signal.SIGKILL)
        assert _eventually(lambda: len(set(_workers_of(proc.pid)) - set(first)) == 1,
                           timeout=60)
        assert _eventually(lambda: len(_workers_of(proc.pid)) == 2, timeout=60)
        for k in range(4, 8):
            play(k)
        workers = _workers_of(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]
