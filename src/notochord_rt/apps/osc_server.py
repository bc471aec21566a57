"""The OSC server of ``notochord-rt serve``: a UDP socket in front of ``Sessions``.

One thread owns the socket and the model. It waits for a datagram, then takes every
datagram already waiting (up to ``max_batch``), parses them all
(:class:`~.osc_protocol.Parser`), serves them together (requests of different sessions
share batched network steps) and sends the replies from the same socket, so a client
sees replies come from the port it sends to. Replies go to the sender's host, at the
request's ``port`` if given, else the server's ``send_port`` if set, else the sender's
port.

Bad input never stops the server: a datagram that is not OSC is dropped and counted
(logged at most every few seconds, so a flood does not flood the log); a message that
parses but cannot be served gets an error reply ``/return/notochord/error address A
message M [handle H]`` (at most ``error_rate`` error replies per second per host, so the
server cannot be used to amplify a flood); an unexpected exception while serving is
logged and answered with an error reply, and the loop goes on.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections import Counter, deque
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from .osc_protocol import Parser, Request, RequestError, flatten
from .osc_sessions import ERROR_ADDRESS, Reply, Sessions, error_reply

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65535
LOG_EVERY = 5.0  # seconds between summaries of dropped packets


def build_message(address: str, args: list[Any]) -> bytes:
    """An OSC message; values python-osc cannot type are sent as strings."""
    b = OscMessageBuilder(address)
    for a in args:
        try:
            b.add_arg(a)
        except ValueError:
            b.add_arg(str(a))
    return b.build().dgram


class _RateLimit:
    """At most ``rate`` events per second per key (a one-second window)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._windows: dict[Any, list[float]] = {}

    def allow(self, key: Any, now: float) -> bool:
        w = self._windows.get(key)
        if w is None or now - w[0] >= 1.0:
            if len(self._windows) > 4096:
                self._windows.clear()
            self._windows[key] = [now, 1.0]
            return True
        w[1] += 1
        return w[1] <= self.rate


class OscServer:
    """Serve :class:`Sessions` over OSC/UDP on ``host:port`` (port 0 = any free port).

    Use :meth:`serve_forever` in the foreground, or :meth:`start` / :meth:`stop` for a
    background thread (tests, embedding). ``stats`` counts received datagrams, wake-ups
    (batches served; datagrams / wake-ups is the mean batch), requests, error replies,
    garbage datagrams, dropped error replies, requests refused as ``busy`` and the time
    spent serving (``serve_us``: parsing, the model, sending replies).

    Fairness: one wake-up serves at most ``per_session`` requests of each session; the
    rest wait in a backlog that is served first at the next wake-up (which does not wait
    for the network), so a client sending a burst delays the others by a few rounds, not
    by its whole burst. Beyond ``max_backlog`` waiting requests, new ones are refused
    with an error reply (``server busy``).
    """

    def __init__(self, sessions: Sessions, host: str = "127.0.0.1", port: int = 9999,
                 send_port: int | None = None, max_batch: int = 256, error_rate: int = 50,
                 session_timeout: float | None = 3600.0, per_session: int = 4,
                 max_backlog: int = 1024) -> None:
        self.sessions = sessions
        self.send_port = send_port
        self.max_batch = max_batch
        self.per_session = per_session
        self.max_backlog = max_backlog
        self._backlog: deque[Request] = deque()
        self.session_timeout = session_timeout
        self.parser = Parser()
        self.stats: Counter[str] = Counter()
        self._errors = _RateLimit(error_rate)
        self._last_log = 0.0
        self._logged = Counter()  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.settimeout(0.05)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        return self.sock.getsockname()[:2]

    # -- running -------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until :meth:`stop` (or KeyboardInterrupt in the caller's thread)."""
        last_expiry = time.monotonic()
        try:
            while not self._stop.is_set():
                batch = self._receive(wait=not self._backlog)
                if batch or self._backlog:
                    self.handle(batch)
                now = time.monotonic()
                if self.session_timeout is not None and now - last_expiry > 1.0:
                    last_expiry = now
                    self.sessions.expire(self.session_timeout)
        finally:
            self._summary(force=True)

    def start(self) -> OscServer:
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="notochord-osc",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (joins the thread if :meth:`start` made one) and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.sock.close()

    def __enter__(self) -> OscServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- receiving -----------------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Requests waiting for a later wake-up."""
        return len(self._backlog)

    def _receive(self, wait: bool = True) -> list[tuple[bytes, Any]]:
        if not wait and not select.select([self.sock], [], [], 0)[0]:
            return []
        try:
            first = self.sock.recvfrom(MAX_DATAGRAM)
        except TimeoutError:
            return []
        except OSError as e:  # e.g. ICMP port unreachable reported by some systems
            log.debug("recvfrom: %s", e)
            return []
        batch = [first]
        while len(batch) < self.max_batch and select.select([self.sock], [], [], 0)[0]:
            try:
                batch.append(self.sock.recvfrom(MAX_DATAGRAM))
            except OSError:
                break
        return batch

    def handle(self, batch: list[tuple[bytes, Any]]) -> None:
        """Parse, serve and answer datagrams ``[(data, (host, port)), ...]`` (after the
        backlog of earlier wake-ups)."""
        t0 = time.perf_counter()
        self.stats["datagrams"] += len(batch)
        self.stats["wakeups"] += 1
        new: list[Request] = []
        replies: list[Reply] = []
        for data, sender in batch:
            for req_or_err in self._parse(data, sender):
                if isinstance(req_or_err, Request):
                    new.append(req_or_err)
                else:
                    replies.append(req_or_err)
        self.stats["requests"] += len(new)
        for r in new:
            if r.op in ("status", "ping"):
                replies.append(self._status(r))
            else:
                self._backlog.append(r)
        served = self._take()
        try:
            replies += self.sessions.run(served)
        except Exception as e:  # a bug must not take the server down
            log.exception("internal error while serving %d requests", len(served))
            replies += [error_reply(r, f"internal error: {type(e).__name__}: {e}")
                        for r in served]
        for reply in replies:
            self._send(*reply)
        self.stats["serve_us"] += int((time.perf_counter() - t0) * 1e6)
        self._summary()

    def _take(self) -> list[Request]:
        """Requests to serve now (at most ``per_session`` per session, in order); the
        others stay in the backlog, which is then cut to ``max_backlog`` (newest refused)."""
        counts: Counter[Any] = Counter()
        take, keep = [], deque()
        for r in self._backlog:
            key = None if r.op == "session/open" else r.session
            if key is not None and counts[key] >= self.per_session:
                keep.append(r)
            else:
                counts[key] += 1
                take.append(r)
        while len(keep) > self.max_backlog:
            r = keep.pop()
            self.stats["busy"] += 1
            self._send(*error_reply(r, "server busy: too many requests waiting; request "
                                       "dropped"))
        self._backlog = keep
        return take

    def _parse(self, data: bytes, sender: Any) -> list[Request | Reply]:
        try:
            messages = OscPacket(data).messages
        except Exception as e:  # python-osc raises several types for garbage
            self.stats["garbage"] += 1
            self._logged["garbage"] += 1
            self._last_garbage = f"{sender[0]}:{sender[1]}: {type(e).__name__}: {e}"[:200]
            return []
        out: list[Request | Reply] = []
        for timed in messages:
            msg = timed.message
            try:
                req = self.parser.parse(msg.address, msg.params)
            except RequestError as e:
                req = Request("error", e.address, handle=e.handle)
                req.sender = sender[:2]
                out.append(error_reply(req, str(e)))
                continue
            req.sender = sender[:2]
            out.append(req)
        return out

    def _status(self, req: Request) -> Reply:
        if req.op == "ping":
            return req, req.reply_to, {"handle": req.handle}
        s = self.sessions
        return req, req.reply_to, {
            "sessions": s.open_count, "max_sessions": s.max_sessions,
            "checkpoint": s.checkpoint, "datagrams": self.stats["datagrams"],
            "wakeups": self.stats["wakeups"], "requests": self.stats["requests"],
            "errors": self.stats["errors"],
            "garbage": self.stats["garbage"], "busy": self.stats["busy"],
            "backlog": len(self._backlog), "serve_ms": self.stats["serve_us"] / 1e3,
            "handle": req.handle}

    # -- sending -------------------------------------------------------------------------
    def _send(self, req: Request, address: str, reply: dict[str, Any]) -> None:
        host = req.sender[0]
        port = req.port or self.send_port or req.sender[1]
        if address == ERROR_ADDRESS:
            self.stats["errors"] += 1
            log.info("error reply to %s:%s for %s: %s", host, port, reply.get("address"),
                     reply.get("message"))
            if not self._errors.allow(host, time.monotonic()):
                self.stats["errors_dropped"] += 1
                self._logged["errors_dropped"] += 1
                return
        try:
            self.sock.sendto(build_message(address, flatten(reply)), (host, port))
        except OSError as e:
            log.warning("cannot send %s to %s:%s: %s", address, host, port, e)

    def _summary(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._logged or (not force and now - self._last_log < LOG_EVERY):
            return
        self._last_log = now
        if self._logged["garbage"]:
            log.warning("dropped %d datagrams that are not OSC (last: %s)",
                        self._logged["garbage"], getattr(self, "_last_garbage", "?"))
        if self._logged["errors_dropped"]:
            log.warning("rate limit: %d error replies not sent", self._logged["errors_dropped"])
        self._logged.clear()
