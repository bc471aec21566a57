"""The OSC server of ``notochord-rt serve``: a UDP socket in front of ``Sessions``.

One thread owns the socket and the model. It waits for a datagram, then takes the
datagrams already waiting (up to ``max_batch``), and for each one, every stage guarded:

1. *admit*: a sender (host, port) over its rate (:class:`~.osc_fair.Buckets`) is dropped
   before its datagram is even parsed (counted, no reply);
2. *parse* with the strict, bounded parser of :mod:`.osc_wire` (not OSC: dropped and
   counted; a message outside ``/notochord/``: ignored), then *check* each message
   (:class:`~.osc_protocol.Parser`; a bad one gets an error reply);
3. *queue* per sender (:class:`~.osc_fair.FairQueue`), then *take* a fair share: rounds
   over the senders, at most ``per_session`` requests of a session per wake-up;
4. *run* them together (:meth:`Sessions.run`: batched network steps; a bad request gets
   its own error reply and affects no other);
5. *build* each reply (a value OSC cannot carry becomes an error reply) and *send* it to
   the sender's address (its ``port`` key only with ``allow_reply_port``).

An exception at any stage costs that datagram or that reply, never the loop: error
replies are limited per host (``error_rate`` a second), logs are summarised at most
every few seconds, and ``status`` counts everything dropped.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections import Counter
from typing import Any

from . import wire as osc_wire
from .fair import Buckets, FairQueue
from .protocol import PREFIX, SHARED, Parser, Request, RequestError, flatten
from .sessions import ERROR_ADDRESS, Reply, Sessions, error_reply, failure

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65535
LOG_EVERY = 5.0  # seconds between summaries of dropped packets


def build_message(address: str, args: list[Any]) -> bytes:
    """An OSC message (:func:`osc_wire.build`; raises :class:`osc_wire.Unsendable`)."""
    return osc_wire.build(address, args)


class OscServer:
    """Serve :class:`Sessions` over OSC/UDP on ``host:port`` (port 0 = any free port).

    Use :meth:`serve_forever` in the foreground, or :meth:`start` / :meth:`stop` for a
    background thread (tests, embedding). ``stats`` counts received datagrams, wake-ups,
    requests, error replies (sent and dropped), garbage datagrams, datagrams dropped by
    the rate limit (``limited``), requests refused as ``busy``, replies that could not be
    built or sent, internal errors, and the time spent serving (``serve_us``).

    Args:
        sessions: the session table and engine.
        host, port: where to listen.
        send_port: send every reply to this port of the sender's host.
        allow_reply_port: honour a request's ``port`` key (else it is an error).
        max_batch: datagrams taken per wake-up.
        error_rate: error replies per second per host.
        session_timeout: seconds after which an idle session closes (None = never).
        per_session: requests of one session served per wake-up.
        per_sender: requests of one sender that may wait; beyond, ``server busy``.
        max_take: requests served per wake-up in all.
        rate, burst: messages per second one sender may send, and its burst.
        limits: bounds on one datagram (:class:`osc_wire.WireLimits`).
    """

    def __init__(self, sessions: Sessions, host: str = "127.0.0.1", port: int = 9999,
                 send_port: int | None = None, allow_reply_port: bool = False,
                 max_batch: int = 256, error_rate: int = 50,
                 session_timeout: float | None = 3600.0, per_session: int = 1,
                 per_sender: int = 64, max_take: int = 64, rate: float = 1000.0,
                 burst: float = 200.0,
                 limits: osc_wire.WireLimits = osc_wire.DEFAULT_LIMITS) -> None:
        self.sessions = sessions
        self.send_port = send_port
        self.allow_reply_port = allow_reply_port
        self.max_batch = max_batch
        self.per_session = per_session
        self.max_take = max_take
        self.limits = limits
        self.session_timeout = session_timeout
        self.parser = Parser()
        self.queue = FairQueue(per_sender=per_sender)
        self.stats: Counter[str] = Counter()
        self._rate = Buckets(rate, burst)
        self._errors = Buckets(error_rate, error_rate)
        self._last_log = 0.0
        self._logged: Counter[str] = Counter()
        self._last_garbage = ""
        self._last_internal = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.settimeout(0.05)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        return self.sock.getsockname()[:2]

    @property
    def backlog(self) -> int:
        """Requests waiting for a later wake-up."""
        return len(self.queue)

    # -- running -------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until :meth:`stop` (or KeyboardInterrupt in the caller's thread)."""
        last_expiry = time.monotonic()
        try:
            while not self._stop.is_set():
                busy = bool(self.queue) or self.sessions.feeding
                batch = self._receive(wait=not busy)
                if batch or busy or self.sessions.working:
                    self.handle(batch)
                now = time.monotonic()
                if self.session_timeout is not None and now - last_expiry > 1.0:
                    last_expiry = now
                    try:
                        self._send_all(self.sessions.expire(self.session_timeout))
                    except Exception as e:
                        self._internal("expire", e)
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

    def _internal(self, stage: str, e: BaseException) -> None:
        """Count an unexpected exception of one stage (logged in the summary)."""
        self.stats["internal"] += 1
        self._logged["internal"] += 1
        self._last_internal = f"{stage}: {type(e).__name__}: {e}"[:200]

    # -- receiving -----------------------------------------------------------------------
    def _receive(self, wait: bool = True) -> list[tuple[bytes, Any]]:
        batch: list[tuple[bytes, Any]] = []
        try:
            if not wait and not select.select([self.sock], [], [], 0)[0]:
                return batch
            batch.append(self.sock.recvfrom(MAX_DATAGRAM))
            while len(batch) < self.max_batch and select.select([self.sock], [], [], 0)[0]:
                batch.append(self.sock.recvfrom(MAX_DATAGRAM))
        except (TimeoutError, BlockingIOError):
            pass
        except (OSError, ValueError) as e:  # ICMP errors reported by some systems; closed
            log.debug("recvfrom: %s", e)
        return batch

    def handle(self, batch: list[tuple[bytes, Any]]) -> None:
        """Admit, parse, queue, serve and answer datagrams ``[(data, (host, port)), ...]``
        (after the requests still waiting from earlier wake-ups); never raises."""
        t0 = time.perf_counter()
        now = time.monotonic()
        self.stats["datagrams"] += len(batch)
        self.stats["wakeups"] += 1
        for data, sender in batch:
            try:
                self._admit(data, (str(sender[0]), int(sender[1])), now)
            except Exception as e:
                self._internal("parse", e)
        served: list[Request] = []
        replies: list[Reply] = []
        try:
            served = self.queue.take(self.max_take, self.per_session, _session_key)
            replies += self.sessions.run(served)
        except Exception as e:  # Sessions.run answers each request itself; a bug here
            self._internal("run", e)
            replies += [failure(r, e) for r in served]
        try:
            replies += self.sessions.poll()
        except Exception as e:
            self._internal("poll", e)
        self._send_all(replies)
        self.stats["serve_us"] += int((time.perf_counter() - t0) * 1e6)
        self._summary()

    def _admit(self, data: bytes, sender: tuple[str, int], now: float) -> None:
        if not self._rate.take(sender, now):
            self.stats["limited"] += 1
            self._logged["limited"] += 1
            return
        try:
            messages = osc_wire.parse(data, self.limits)
        except osc_wire.WireError as e:
            self.stats["garbage"] += 1
            self._logged["garbage"] += 1
            self._last_garbage = f"{sender[0]}:{sender[1]}: {e}"[:200]
            return
        if len(messages) > 1:  # a bundle counts per message
            self._rate.take(sender, now, cost=len(messages) - 1, debt=True)
        for address, params in messages:
            if not address.startswith(PREFIX + "/"):  # not for us: no reply (as others do)
                self.stats["ignored"] += 1
                continue
            try:
                req = self.parser.parse(address, params)
            except RequestError as e:
                req = Request("error", e.address, handle=e.handle, sender=sender)
                self._send_all([error_reply(req, str(e))])
                continue
            req.sender = sender
            self.stats["requests"] += 1
            if req.port is not None and not self.allow_reply_port:
                self._send_all([error_reply(req, "port: this server replies only to the "
                                                 "sender's port (see --allow-reply-port)")])
            elif req.op in ("status", "ping"):
                self._send_all([self._status(req)])
            elif not self.queue.push(sender, req):
                self.stats["busy"] += 1
                self._send_all([error_reply(req, "server busy: too many requests waiting; "
                                                 "request dropped")])

    def _status(self, req: Request) -> Reply:
        if req.op == "ping":
            return req, req.reply_to, {"handle": req.handle}
        s = self.sessions
        out: dict[str, Any] = {"sessions": s.open_count, "backlog": len(self.queue)}
        if s.clock is not None:  # serve --clock: "120.0 BPM  3:2  midi"
            out["clock"] = s.clock.info().text()
        if req.args.get("detail"):
            out.update({"max_sessions": s.max_sessions, "checkpoint": s.checkpoint[-128:],
                        **{k: self.stats[k] for k in (
                            "datagrams", "wakeups", "requests", "errors", "errors_dropped",
                            "garbage", "ignored", "limited", "busy", "unsendable",
                            "internal")},
                        "serve_ms": self.stats["serve_us"] / 1e3})
        out["handle"] = req.handle
        return req, req.reply_to, out

    # -- sending -------------------------------------------------------------------------
    def _send_all(self, replies: list[Reply]) -> None:
        for reply in replies:
            try:
                self._send(*reply)
            except Exception as e:
                self._internal("send", e)

    def _send(self, req: Request, address: str, reply: dict[str, Any]) -> None:
        host = req.sender[0]
        port = (req.port if self.allow_reply_port and req.port else None) or \
            self.send_port or req.sender[1]
        if not host or not port:
            return
        if address == ERROR_ADDRESS:
            self.stats["errors"] += 1
            if not self._errors.take(host, time.monotonic()):
                self.stats["errors_dropped"] += 1
                self._logged["errors_dropped"] += 1
                return
        try:
            data = build_message(address, flatten(reply))
        except osc_wire.Unsendable as e:
            self.stats["unsendable"] += 1
            if address == ERROR_ADDRESS:
                data = build_message(address, ["address", str(reply.get("address"))[:64],
                                               "message", "error reply cannot be sent"])
            else:
                self._send(req, *error_reply(req, f"reply cannot be sent: {e}")[1:])
                return
        try:
            self.sock.sendto(data, (host, port))
        except OSError as e:
            self.stats["send_failed"] += 1
            log.debug("cannot send %s to %s:%s: %s", address, host, port, e)

    def _summary(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._logged or (not force and now - self._last_log < LOG_EVERY):
            return
        self._last_log = now
        if self._logged["garbage"]:
            log.warning("dropped %d datagrams that are not OSC (last: %s)",
                        self._logged["garbage"], self._last_garbage)
        if self._logged["limited"]:
            log.warning("rate limit: dropped %d datagrams", self._logged["limited"])
        if self._logged["errors_dropped"]:
            log.warning("rate limit: %d error replies not sent", self._logged["errors_dropped"])
        if self._logged["internal"]:
            log.error("%d internal errors (last: %s)", self._logged["internal"],
                      self._last_internal)
        self._logged.clear()


def _session_key(req: Request) -> Any:
    """The fairness key of a request: its session (None for one that opens a session)."""
    return None if req.op == "session/open" else req.session


__all__ = ["OscServer", "build_message", "PREFIX", "SHARED"]
