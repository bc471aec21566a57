"""Serving from several processes: ``notochord-rt web --workers N``.

One server process runs its Python one thread at a time: the event loop and every tab's
player thread take turns holding the interpreter lock, so a busy server uses about one
core however many the machine has (docs/web.md has the measurements). Sessions share
nothing but the weights, so they can live in separate processes: the parent binds the
listening socket, then starts ``N`` worker processes (``spawn``: no threads or torch state
forked) that each load the model, build the app and serve connections. Where the system
spreads connections over sockets that share a port (Linux's ``SO_REUSEPORT``: the CLI
binds with it), each worker listens on its own socket of that port, made by the parent
(:func:`worker_sockets`), and the kernel deals new connections out over them by a hash
of their addresses. Elsewhere they share the one socket and whichever accepts first
gets the connection, which on Linux gave one worker 15 of 16 sessions while the other
idled (docs/web.md).

The workers run in their own process group, so a Ctrl-C in the terminal reaches only the
parent, which then asks each worker once (SIGTERM) to shut down the way a single server
does: every session closed, every model note released. A worker that dies is logged and
started again (its tabs reconnect and get new sessions).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESTART_PAUSE = 5.0
"""Seconds at least between two starts of a worker that keeps dying."""


@dataclass(frozen=True)
class WebSettings:
    """Everything a process needs to build the web app (picklable: sent to the workers)."""

    checkpoint: str
    soundfont: Path | None = None
    presets: str | None = None
    preset: str | int = 0
    precision: str = "fp32"
    engine: str = "per-tab"
    max_sessions: int = 16
    idle_timeout: float | None = 600.0
    seed: int | None = None
    rate: float = 200.0
    host: str = "127.0.0.1"
    allow_origins: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


def build_app(settings: WebSettings, base: Any = None, book: Any = None) -> Any:
    """The :class:`~.server.WebApp` for ``settings`` (``base``: the loaded model and
    ``book``: the loaded presets, each loaded from ``settings`` when not given)."""
    from ..loading import load_sampler
    from ..play.presets import load_presets
    from .serve import make_web_app

    if base is None:
        base = load_sampler(settings.checkpoint, "module")
    if book is None:
        book = load_presets(settings.presets)
    return make_web_app(base, book, soundfont=settings.soundfont,
                        precision=settings.precision, engine=settings.engine,
                        max_sessions=settings.max_sessions,
                        idle_timeout=settings.idle_timeout, preset=settings.preset,
                        seed=settings.seed, rate=settings.rate, host=settings.host,
                        allow_origins=settings.allow_origins, info=settings.info)


def serve_one(web: Any, sock: socket.socket) -> None:
    """Serve ``web`` on ``sock`` in this process until SIGINT / SIGTERM, then close every
    session (every model note released)."""
    from .serve import fast_thread_switching, uvicorn_server

    fast_thread_switching()
    try:
        uvicorn_server(web).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        web.manager.close_all()


def _worker(settings: WebSettings, sock: socket.socket, seed_offset: int) -> None:
    os.setpgrp()  # the terminal's Ctrl-C goes to the parent only, which asks once
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if settings.seed is not None:  # each worker its own sessions' seeds
        settings = replace(settings, seed=settings.seed + seed_offset)
    serve_one(build_app(settings), sock)


def worker_sockets(sock: socket.socket, n: int) -> list[socket.socket]:
    """``n`` listening sockets for ``n`` workers: ``sock`` and ``n - 1`` more on its port
    when ``sock`` has ``SO_REUSEPORT`` set on Linux (the kernel then balances new
    connections over them), else ``sock`` ``n`` times (shared)."""
    from .serve import bind

    shared = [sock] * n
    if n < 2 or not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        return shared
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
        return shared
    host, port = sock.getsockname()[:2]
    return [sock] + [bind(host, port, reuse_port=True) for _ in range(n - 1)]


class Workers:
    """``n`` worker processes serving ``settings`` on the bound ``sock`` (each on its own
    socket of the same port where :func:`worker_sockets` can make them)."""

    def __init__(self, settings: WebSettings, sock: socket.socket, n: int) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.settings, self.sock, self.n = settings, sock, n
        self.socks = worker_sockets(sock, n)
        self._ctx = mp.get_context("spawn")
        self.procs: list[Any] = [None] * n
        self._started = [0.0] * n
        self._stopping = False

    def _start(self, k: int) -> None:
        p = self._ctx.Process(target=_worker, name=f"notochord-web-{k}",
                              args=(self.settings, self.socks[k], 100_000 * k), daemon=False)
        p.start()
        self.procs[k], self._started[k] = p, time.monotonic()

    def start(self) -> Workers:
        for k in range(self.n):
            self._start(k)
        return self

    def watch(self, poll: float = 0.2) -> None:
        """Wait until :meth:`stop` is called (from a signal handler), starting again any
        worker that died."""
        while not self._stopping:
            time.sleep(poll)
            for k, p in enumerate(self.procs):
                if self._stopping or p.is_alive():
                    continue
                log.error("web worker %d (pid %s) exited with %s: starting it again", k,
                          p.pid, p.exitcode)
                time.sleep(max(0.0, RESTART_PAUSE - (time.monotonic() - self._started[k])))
                if not self._stopping:
                    self._start(k)

    def stop(self) -> None:
        """Ask the watch loop to end (safe from a signal handler)."""
        self._stopping = True

    def shutdown(self, timeout: float = 30.0) -> None:
        """SIGTERM each worker once (each closes its sessions), wait, kill what is left."""
        self._stopping = True
        for p in self.procs:
            if p is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        for p in self.procs:
            if p is not None:
                p.join(max(0.0, end - time.monotonic()))
                if p.is_alive():
                    log.error("web worker pid %s did not stop in %.0f s: killed", p.pid,
                              timeout)
                    p.kill()
                    p.join(5)
        for extra in self.socks[1:]:  # the sockets made here (not the caller's)
            if extra is not self.sock:
                extra.close()


def serve_workers(settings: WebSettings, sock: socket.socket, n: int) -> None:
    """Serve from ``n`` worker processes until SIGINT / SIGTERM reaches this process."""
    workers = Workers(settings, sock, n).start()
    old = {s: signal.signal(s, lambda *_: workers.stop()) for s in (signal.SIGINT,
                                                                  signal.SIGTERM)}
    try:
        workers.watch()
    finally:
        workers.shutdown()
        for s, h in old.items():
            signal.signal(s, h)
