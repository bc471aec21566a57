"""Putting the app together and serving it: used by ``notochord-rt web``, the tests and
``benchmarks/web.py`` (a server on a background thread)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ...errors import UserError
from .engine import make_factory
from .protocol import MAX_FRAME
from .server import LOOPBACK_NAMES, WebApp, WebConfig
from .sessions import SessionManager

log = logging.getLogger(__name__)


SWITCH_INTERVAL = 0.0005
"""Seconds between the interpreter's forced thread switches while serving (Python's
default is 5 ms): a tab's player thread computing the next answer would otherwise keep
the event loop from sending the answer already made for up to 5 ms (measured with
``benchmarks/web.py``; the figures are in docs/web.md)."""


def fast_thread_switching() -> None:
    """Set :data:`SWITCH_INTERVAL` for this process (the web server's; call it from the
    program that serves, not from library code shared with other apps)."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def make_web_app(base: Any, book: Any = None, *, soundfont: Path | None = None,
                 precision: str = "fp32", engine: str = "per-tab", max_sessions: int = 16,
                 idle_timeout: float | None = 600.0, preset: str | int = 0,
                 seed: int | None = None, rate: float = 200.0, host: str = "127.0.0.1",
                 allow_origins: tuple[str, ...] = (), info: dict | None = None) -> WebApp:
    """The web app over the loaded sampler ``base`` (its weights are shared by the tabs,
    through ``engine``: see :data:`.engine.ENGINES`) and the presets ``book`` (default: the
    bundled presets)."""
    from ..play.presets import load_presets

    book = book if book is not None else load_presets(None)
    manager = SessionManager(make_factory(base, engine, max_sessions, precision), book,
                             max_sessions=max_sessions,
                             idle_timeout=idle_timeout, preset=preset, seed=seed)
    config = WebConfig(hosts=LOOPBACK_NAMES if loopback(host) else ("*",),
                       allow_origins=tuple(allow_origins), rate=rate, burst=2 * rate,
                       info=dict(info or {}))
    return WebApp(manager, soundfont, config)


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket, so the real port is known before serving (``port`` 0 =
    any free port). UserError when the address cannot be used.

    ``reuse_port``: set ``SO_REUSEPORT`` (where the system has it) so that more sockets
    can listen on the same port and the kernel spreads new connections over them (the
    worker processes of ``--workers``: :func:`.workers.worker_sockets`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    return sock


def uvicorn_server(web: WebApp) -> Any:
    """A uvicorn server for the app (frame size limit of the protocol, lifespan on).

    Per-message compression is off: the messages are JSON of a few hundred bytes, and
    deflating each one cost CPU on every answer's path (1.5 % of the server's profile with
    16 sessions) to save a few bytes on a loopback or local network."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(web.app, log_level="warning", ws_max_size=MAX_FRAME,
                                         lifespan="on", ws_ping_interval=20.0,
                                         ws_per_message_deflate=False))


class ServerThread:
    """Serve ``web`` on ``host:port`` from a background thread (tests, benchmarks).

    ``url`` is ``http://host:port``; :meth:`stop` shuts the server down (closing every
    session, so every model note is released)."""

    def __init__(self, web: WebApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.web = web
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn_server(web)
        self.server.config.install_signal_handlers = False  # not the main thread
        self._thread = threading.Thread(target=self._run, name="notochord-web", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self, timeout: float = 20.0) -> ServerThread:
        self._thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError("the web server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self.sock.close()
        self.web.manager.close_all()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
