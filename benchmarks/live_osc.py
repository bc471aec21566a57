"""OSC query round trip of ``notochord-rt serve``: p50 / p99 for 1 and 32 concurrent clients.

The server runs as its own process (``python -m notochord_rt serve``, as a user would
start it) with the reference's default 17.7 M-parameter architecture and *random* weights
(seeded; saved to a temporary ``.safetensors``), or a checkpoint given with
``--checkpoint``. Clients are UDP sockets in this process driven by one ``select`` loop,
closed loop: each client sends a request, waits for its reply (matched by ``handle``),
and sends the next one at once. Every client opens its own session, so concurrent
clients are independent streams served by the batched engine.

Scenarios: ``query`` (``/notochord/query``, unconstrained: the state does not advance)
and ``query_feed`` (``/notochord/query_feed``: sample and feed, the state advances).
Reported per scenario and client count: round trip p50 / p99 / max in ms, requests/s,
the mean number of datagrams the server served per wake-up (its batch size) and the mean
time the server spent serving one wake-up (parse, model, replies). For
comparison, the same model's engine alone (``Streams.sample`` / ``feed`` in this process,
no OSC) is timed for batches of 1 and of the largest client count: the difference is
what the OSC layer and the server's scheduling add.

Run on a quiet machine: ``python benchmarks/live_osc.py`` (about a minute; ``--quick``
for a smoke run; ``--json PATH`` also writes the numbers). The server is started with
``--rate 100000`` here (closed-loop clients may send more than the default 1000 messages
a second) and ``--sessions-per-host`` large enough for every client.

``--hostile`` runs the hostile-traffic measurement instead: the server with its default
limits, a well-behaved client (its own session, a query every 2 ms, closed loop: it waits
for each reply) measured unloaded and while other processes flood the server with
garbage (random bytes and the malformed packets of issue 10, 4 senders), valid queries
on the shared session 0 (4 senders), bundles of 16 session-0 queries (2 senders), and
all three at once, each at ``--flood-rate`` messages a second; an unloaded run before
each flood is its baseline. Then the bytes of each reply against its request, and
whether the server still answers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name, machine_line
from pythonosc.osc_message import OscMessage

from notochord_rt.apps.osc.server import build_message
from notochord_rt.engine.sampling.query import query_constraints
from notochord_rt.engine.sampling.streams import Streams
from notochord_rt.engine.sampling.support import compile_constraints
from notochord_rt.model.network import NotochordNet

torch.set_num_threads(1)


def machine_info() -> dict:
    cpu = cpu_name()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}


def start_server(checkpoint: str, max_sessions: int, precision: str,
                 extra: tuple[str, ...] = ("--rate", "100000")) -> tuple:
    """``notochord-rt serve`` in its own process; returns it and its (host, port)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "notochord_rt", "serve", "--checkpoint", checkpoint, "--port",
         "0", "--max-sessions", str(max_sessions), "--precision", precision, "--seed", "0",
         "--sessions-per-host", str(max(max_sessions, 1)), *extra],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([proc.stderr], [], [], 1.0)[0]:
            line = proc.stderr.readline()
            if not line:
                break
            m = re.search(r"listening on ([\d.]+):(\d+)", line)
            if m:
                return proc, (m.group(1), int(m.group(2)))
    proc.kill()
    raise SystemExit("the server did not start")


class Clients:
    """``n`` UDP clients, each with its own session, driven by one select loop."""

    def __init__(self, target, n: int) -> None:
        self.target = target
        self.socks = []
        self.sessions = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.settimeout(10)
            s.sendto(build_message("/notochord/session/open", []), target)
            p = OscMessage(s.recvfrom(65535)[0]).params
            reply = dict(zip(p[0::2], p[1::2]))
            if "session" not in reply:
                raise SystemExit(f"cannot open a session: {reply}")
            self.sessions.append(reply["session"])
            s.setblocking(False)
            self.socks.append(s)

    def status(self) -> dict:
        s = self.socks[0]
        s.setblocking(True)
        s.sendto(build_message("/notochord/status", ["detail", True]), self.target)
        p = OscMessage(s.recvfrom(65535)[0]).params
        s.setblocking(False)
        return dict(zip(p[0::2], p[1::2]))

    def run(self, address: str, per_client: int) -> list[float]:
        """Closed loop: ``per_client`` round trips per client; returns seconds."""
        n = len(self.socks)
        sent_at = [0.0] * n
        left = [per_client] * n
        seq = [0] * n
        rtts: list[float] = []
        by_fd = {s.fileno(): k for k, s in enumerate(self.socks)}

        def send(k: int) -> None:
            seq[k] += 1
            msg = build_message(address, ["session", self.sessions[k], "handle", seq[k]])
            sent_at[k] = time.perf_counter()
            self.socks[k].sendto(msg, self.target)

        for k in range(n):
            send(k)
        pending = n
        while pending:
            ready, _, _ = select.select(self.socks, [], [], 10.0)
            if not ready:
                raise SystemExit(f"no reply within 10 s ({pending} clients waiting)")
            now = time.perf_counter()
            for s in ready:
                k = by_fd[s.fileno()]
                data = s.recv(65535)
                p = OscMessage(data).params
                r = dict(zip(p[0::2], p[1::2]))
                if r.get("handle") != seq[k]:
                    raise SystemExit(f"client {k}: reply {r} does not match request {seq[k]}")
                rtts.append(now - sent_at[k])
                left[k] -= 1
                if left[k]:
                    send(k)
                else:
                    pending -= 1
        return rtts

    def close(self) -> None:
        for s in self.socks:
            s.close()


def pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "n": int(a.size)}


def engine_only(net, n: int, reps: int, precision: str) -> dict:
    """In-process times of one batched sample, and sample + feed, for ``n`` streams."""
    st = Streams(net, n, precision=precision, seed=0)
    cons, order = query_constraints({})
    cons.order = order
    comp = compile_constraints(cons)
    idx = list(range(n))
    sample, sample_feed = [], []
    for k in range(reps + 5):
        t0 = time.perf_counter()
        events = st.sample([comp] * n, idx=idx)
        t1 = time.perf_counter()
        st.feed_events(idx, events)
        t2 = time.perf_counter()
        if k >= 5:
            sample.append(t1 - t0)
            sample_feed.append(t2 - t0)
    return {"streams": n, "sample": pct(sample), "sample_feed": pct(sample_feed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="a checkpoint (default: the 17.7 M default "
                                         "architecture with random weights)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--requests", type=int, default=2000,
                    help="timed round trips per scenario and client count (split between "
                         "the clients; default 2000)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--quick", action="store_true", help="a smoke run (few requests)")
    ap.add_argument("--json", help="also write the numbers to this file")
    ap.add_argument("--hostile", action="store_true",
                    help="measure a good client under floods instead (live_osc_hostile.py)")
    ap.add_argument("--flood-rate", type=float, default=2000.0,
                    help="--hostile: messages per second of each flood in all (default 2000)")
    ap.add_argument("--seconds", type=float, default=6.0,
                    help="--hostile: seconds each scenario is measured (default 6)")
    ap.add_argument("--flood", help=argparse.SUPPRESS)  # a flooding child process
    ap.add_argument("--target", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flood:
        flood(args.flood, args.target, args.flood_rate, args.seconds)
        return
    if args.hostile:
        run_hostile(args)
        return
    total = 64 if args.quick else args.requests
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            ckpt, model_desc = args.checkpoint, args.checkpoint
            net = NotochordNet.load(ckpt)
        else:
            torch.manual_seed(0)
            net = NotochordNet()
            n_params = sum(p.numel() for p in net.parameters())
            ckpt = str(Path(tmp) / "random.safetensors")
            net.save(ckpt)
            model_desc = f"default architecture, random weights ({n_params / 1e6:.1f} M)"
        proc, target = start_server(ckpt, sum(args.clients), args.precision)
        results = []
        try:
            for n in args.clients:
                clients = Clients(target, n)
                try:
                    for scenario in ("query", "query_feed"):
                        address = f"/notochord/{scenario}"
                        clients.run(address, max(2, 50 // n))  # warm-up
                        before = clients.status()
                        per = max(1, total // n)
                        t0 = time.perf_counter()
                        rtts = clients.run(address, per)
                        wall = time.perf_counter() - t0
                        after = clients.status()
                        dg = after["datagrams"] - before["datagrams"] - 1
                        wk = after["wakeups"] - before["wakeups"] - 1
                        serve = after["serve_ms"] - before["serve_ms"]
                        row = {"scenario": scenario, "clients": n, **pct(rtts),
                               "requests_per_s": len(rtts) / wall,
                               "datagrams_per_wakeup": dg / max(wk, 1),
                               "server_ms_per_wakeup": serve / max(wk, 1)}
                        results.append(row)
                        print(f"{scenario:11s} clients {n:3d}: p50 {row['p50_ms']:7.3f} ms  "
                              f"p99 {row['p99_ms']:7.3f} ms  max {row['max_ms']:7.2f} ms  "
                              f"{row['requests_per_s']:8.0f} req/s  "
                              f"batch {row['datagrams_per_wakeup']:.1f}  server "
                              f"{row['server_ms_per_wakeup']:.2f} ms/wake-up", flush=True)
                finally:
                    clients.close()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    engine = []
    for n in sorted({1, max(args.clients)}):
        row = engine_only(net, n, 20 if args.quick else (200 if n == 1 else 60),
                          args.precision)
        engine.append(row)
        print(f"engine only, {n:3d} streams: sample p50 {row['sample']['p50_ms']:7.3f} ms  "
              f"p99 {row['sample']['p99_ms']:7.3f} ms; sample+feed p50 "
              f"{row['sample_feed']['p50_ms']:7.3f} ms  p99 {row['sample_feed']['p99_ms']:7.3f}"
              " ms", flush=True)
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"model: {model_desc}; server precision {args.precision}, 1 torch thread")
    print("machine:", json.dumps(info))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "model": model_desc,
                                               "results": results, "engine_only": engine},
                                              indent=2))




# -- hostile traffic ------------------------------------------------------------------------------
def _osc_string(text: str) -> bytes:
    raw = text.encode() + b"\x00"
    return raw + b"\x00" * (-len(raw) % 4)


def _bundle(*elements: bytes, size: int | None = None) -> bytes:
    return b"#bundle\x00" + b"\x00" * 8 + b"".join(
        struct.pack(">i", len(e) if size is None else size) + e for e in elements)


def flood_payloads(kind: str, rng: np.random.Generator) -> list[bytes]:
    """What one flood sends, cycled: garbage, session-0 queries or bundles of 16 of them."""
    if kind == "garbage":
        ping = _osc_string("/notochord/ping") + _osc_string(",")
        hostile = [_bundle(ping, size=-4), _bundle(ping, size=2**31 - 1),
                   _osc_string("/notochord/ping") + _osc_string(",sb") +
                   _osc_string("handle") + b"\x00" * 4,
                   build_message("/notochord/sample", ["note_on_map", "[" * 1000]),
                   build_message("/notochord/sample", ["time", "1e39"]),
                   build_message("/notochord/query", ["include_pitch", "abc"])]
        return hostile + [rng.integers(0, 256, int(rng.integers(8, 400)),
                                       dtype=np.uint8).tobytes() for _ in range(200)]
    queries = [build_message("/notochord/query", ["handle", k]) for k in range(16)]
    return [_bundle(*queries)] if kind == "bundles" else queries


def flood(kind: str, target: str, rate: float, seconds: float) -> None:
    """A flooding child process: ``rate`` messages a second (bundles count 16) for
    ``seconds``, from several sockets; replies are read and dropped."""
    host, port = target.rsplit(":", 1)
    addr = (host, int(port))
    per_packet = 16 if kind == "bundles" else 1
    socks = []
    for _ in range(2 if kind == "bundles" else 4):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    payloads = flood_payloads(kind, np.random.default_rng(1))
    print("ready", flush=True)  # the parent measures only once every flood runs
    t0 = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - t0 < seconds:
        due = int((now - t0) * rate / per_packet)
        while sent < due:
            socks[sent % len(socks)].sendto(payloads[sent % len(payloads)], addr)
            sent += 1
        for s in socks:
            with contextlib.suppress(OSError):
                while s.recv(65535):
                    pass
        time.sleep(0.004)


def good_client(target, seconds: float, pause: float = 0.002) -> tuple[list[float], int]:
    """A well-behaved client: its own session, a query, wait for its reply, ``pause``,
    again; returns round trips (s) and the number of requests left without a reply
    (after 1 s)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2.0)
    s.sendto(build_message("/notochord/session/open", []), target)
    p = OscMessage(s.recvfrom(65535)[0]).params
    sid = dict(zip(p[0::2], p[1::2]))["session"]
    rtts, lost, seq = [], 0, 0
    t_end = time.perf_counter() + seconds
    s.settimeout(1.0)
    while time.perf_counter() < t_end:
        seq += 1
        t0 = time.perf_counter()
        s.sendto(build_message("/notochord/query", ["session", sid, "handle", seq]), target)
        try:
            while True:
                p = OscMessage(s.recvfrom(65535)[0]).params
                if dict(zip(p[0::2], p[1::2])).get("handle") == seq:
                    rtts.append(time.perf_counter() - t0)
                    break
        except TimeoutError:
            lost += 1
        time.sleep(pause)
    s.sendto(build_message("/notochord/session/close", ["session", sid]), target)
    s.close()
    return rtts, lost


def ask_once(target, data: bytes, replies: int = 1) -> list[bytes]:
    """Send ``data`` from a fresh socket; the replies that arrive within 0.5 s."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.5)
    s.sendto(data, target)
    out = []
    with contextlib.suppress(TimeoutError):
        while len(out) < replies:
            out.append(s.recvfrom(65535)[0])
    s.close()
    return out


def amplification(target) -> list[dict]:
    """Reply bytes and packets against request bytes for requests that ask for no
    parameters (``return_params`` last, for comparison)."""
    b = build_message
    cases = [("ping", b("/notochord/ping", [])), ("query", b("/notochord/query", [])),
             ("query + handle", b("/notochord/query", ["handle", 1])),
             ("sample", b("/notochord/sample", [])),
             ("feed + handle", b("/notochord/feed", [1, 60, 0.1, 90, "handle", 1])),
             ("reset", b("/notochord/reset", [])), ("held", b("/notochord/held", [])),
             ("status", b("/notochord/status", [])),
             ("session/open", b("/notochord/session/open", [])),
             ("unknown address", b("/notochord/x", [])),
             ("bad value", b("/notochord/sample", ["time", "1e39"])),
             ("bundle of 16 queries", _bundle(*[b("/notochord/query", [])] * 16)),
             ("query return_params (asks)", b("/notochord/query", ["return_params", True]))]
    rows = []
    for name, data in cases:
        got = ask_once(target, data, 16 if name.startswith("bundle") else 1)
        size = sum(len(g) for g in got)
        rows.append({"request": name, "request_bytes": len(data), "reply_bytes": size,
                     "replies": len(got), "ratio": size / len(data)})
    return rows


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_hostile(args) -> None:
    """The ``--hostile`` measurement (see the module docstring)."""
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            ckpt, model_desc = args.checkpoint, args.checkpoint
        else:
            torch.manual_seed(0)
            net = NotochordNet()
            ckpt = str(Path(tmp) / "random.safetensors")
            net.save(ckpt)
            model_desc = "default architecture, random weights"
        proc, target = start_server(ckpt, 8, args.precision, extra=())  # default limits
        rows, results = [], {}
        try:
            good_client(target, 1.0)  # warm-up
            for kind in ("garbage", "query0", "bundles", "mixed"):
                base, lost0 = good_client(target, args.seconds)
                kinds = ("garbage", "query0", "bundles") if kind == "mixed" else (kind,)
                floods = [subprocess.Popen(
                    [sys.executable, __file__, "--flood", k, "--target",
                     f"{target[0]}:{target[1]}", "--flood-rate", str(args.flood_rate),
                     "--seconds", "600"], stdout=subprocess.PIPE, text=True) for k in kinds]
                for f in floods:  # started (imports take seconds on a busy machine)
                    if f.stdout is None or f.stdout.readline().strip() != "ready":
                        raise SystemExit("a flooding process did not start")
                time.sleep(0.5)
                probe = Clients(target, 1)
                st0, cpu0, t0 = probe.status(), cpu_seconds(proc.pid), time.perf_counter()
                rtts, lost = good_client(target, args.seconds)
                st1, cpu1 = probe.status(), cpu_seconds(proc.pid)
                wall = time.perf_counter() - t0
                probe.close()
                for f in floods:
                    f.terminate()
                    f.wait(timeout=60)
                for name, xs, n_lost in ((f"unloaded (before {kind})", base, lost0),
                                         (f"flood: {kind}", rtts, lost)):
                    row = {"scenario": name, **pct(xs), "lost": n_lost}
                    rows.append(row)
                    print(f"{name:28s} p50 {row['p50_ms']:7.3f} ms  p99 {row['p99_ms']:7.3f} ms"
                          f"  max {row['max_ms']:7.2f} ms  n {row['n']:5d}  lost {n_lost}",
                          flush=True)
                ratio = rows[-1]["p99_ms"] / rows[-2]["p99_ms"]
                counts = {k: st1[k] - st0[k] for k in ("datagrams", "requests", "garbage",
                                                       "busy", "limited")}
                rows[-1].update(server_cpu_share=(cpu1 - cpu0) / wall, **counts)
                results[kind] = ratio
                print(f"{'':28s} p99 ratio to unloaded: {ratio:.2f} (goal <= 2); server CPU "
                      f"{(cpu1 - cpu0) / wall:.0%} of a core; received {counts}", flush=True)
            amp = amplification(target)
            for r in amp:
                print(f"reply size: {r['request']:28s} request {r['request_bytes']:5d} B  "
                      f"reply {r['reply_bytes']:6d} B in {r['replies']:2d} packet(s)  "
                      f"x{r['ratio']:.2f}", flush=True)
            st = Clients(target, 1).status()
            alive = bool(ask_once(target, build_message("/notochord/ping", [])))
            print("server still answers:", alive, "; counters:",
                  {k: st.get(k) for k in ("datagrams", "requests", "garbage", "limited",
                                          "busy", "errors", "errors_dropped", "internal")})
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    info["loadavg_end"] = os.getloadavg()
    print(f"model: {model_desc}; server precision {args.precision}, default limits; "
          f"flood rate {args.flood_rate:g} messages/s each")
    print("machine:", machine_line(), "| start:", json.dumps(info))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "model": model_desc,
                                               "good_client": rows, "p99_ratio": results,
                                               "amplification": amp}, indent=2))


if __name__ == "__main__":
    main()
