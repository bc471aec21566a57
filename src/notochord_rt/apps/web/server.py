"""The web playground's ASGI app (starlette): the page, the SoundFont and ``/ws``.

Routes: ``/`` (the page), ``/static/{name}`` (the bundle: only the files listed at
startup, see :mod:`.static`), ``/soundfont`` (the one SoundFont file chosen at startup,
404 with instructions when there is none), ``/api/info`` and the WebSocket ``/ws`` (one
session per connection; protocol in :mod:`.protocol` and docs/web.md).

Guards: the Host header must name the server (DNS rebinding), a WebSocket's Origin must
be the page's own origin (or one given with ``allow_origins``), frames are size-limited
(by the WebSocket server) and rate-limited per connection, every bad message gets an
error reply and leaves the session open, the number of sessions is bounded and idle
sessions are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .limits import TokenBucket
from .protocol import MAX_BATCH, VERSION, ProtocolError, dumps, frames, parse
from .sessions import SessionManager, SessionsFull
from .soundfont import HOW_TO_GET
from .static import StaticFile, load_static

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_OUTBOX = 5000
"""Messages queued for a page that does not read them before its session is closed."""

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": ("default-src 'self'; connect-src 'self'; img-src 'self' "
                                "data: blob:; style-src 'self'; "
                                "script-src 'self' 'wasm-unsafe-eval'; "
                                "object-src 'none'; frame-ancestors 'none'"),
}


@dataclass
class Framing:
    """How one connection's messages are framed: ``batch`` (asked for in ``hello``) lets
    the sender pack the messages waiting for it into one frame."""

    batch: bool = False


@dataclass
class WebConfig:
    """The server's limits and names (see ``notochord-rt web --help``)."""

    hosts: tuple[str, ...] = LOOPBACK_NAMES
    """Host names the Host header may carry ("*" for any)."""
    allow_origins: tuple[str, ...] = ()
    """Origins accepted besides the page's own (``http://host:port``)."""
    rate: float = 200.0
    """Messages per second one connection may send (bursts of ``burst``)."""
    burst: float = 400.0
    idle_check: float = 5.0
    """Seconds between idle checks."""
    info: dict[str, Any] = field(default_factory=dict)
    """Extra fields of ``/api/info`` (model name ...)."""


def origin_ok(origin: str | None, host: str | None, config: WebConfig) -> bool:
    """A WebSocket Origin is accepted when absent (not a browser), when it is the page's
    own origin (same host and port as the request's Host header) or an allowed one."""
    if origin is None:
        return True
    if origin in config.allow_origins:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and host is not None and parts.netloc == host


class WebApp:
    """The app's state: sessions, static files, the SoundFont; :attr:`app` is the ASGI app."""

    def __init__(self, manager: SessionManager, soundfont: Path | None,
                 config: WebConfig | None = None, static: dict[str, StaticFile] | None = None
                 ) -> None:
        self.manager = manager
        self.soundfont = soundfont
        self.config = config or WebConfig()
        self.static = static if static is not None else load_static()
        self.sockets: dict[str, WebSocket] = {}
        routes = [Route("/", self.index), Route("/static/{name}", self.static_file),
                  Route("/soundfont", self.soundfont_file), Route("/api/info", self.info),
                  WebSocketRoute("/ws", self.websocket)]
        hosts = list(self.config.hosts)
        self.app = Starlette(routes=routes, lifespan=self._lifespan,
                             middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])

    # -- HTTP --------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        page = self.static.get("index.html")
        if page is None:
            return Response("the page's bundle is missing (scripts/build-web.sh)", 500)
        return Response(page.body, media_type=page.media_type, headers=SECURITY_HEADERS)

    async def static_file(self, request: Request) -> Response:
        f = self.static.get(request.path_params["name"])
        if f is None:
            return Response("not found", 404, media_type="text/plain")
        return Response(f.body, media_type=f.media_type, headers=SECURITY_HEADERS)

    async def soundfont_file(self, request: Request) -> Response:
        if self.soundfont is None:
            return JSONResponse({"error": HOW_TO_GET}, 404)
        return FileResponse(self.soundfont, media_type="application/octet-stream",
                            headers={"Cache-Control": "max-age=3600", **SECURITY_HEADERS})

    async def info(self, request: Request) -> Response:
        return JSONResponse({
            "version": VERSION, "sessions": len(self.manager),
            "max_sessions": self.manager.max_sessions,
            "soundfont": self.soundfont.name if self.soundfont else None,
            "soundfont_help": None if self.soundfont else HOW_TO_GET, **self.config.info})

    # -- lifespan: idle sessions ---------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        from ..live.warmup import settle_memory, unsettle_memory

        settle_memory()  # the model and the server, loaded: out of later full collections
        task = asyncio.create_task(self._reap())
        try:
            yield
        finally:
            task.cancel()
            unsettle_memory()
            await asyncio.get_running_loop().run_in_executor(None, self.manager.close_all)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.config.idle_check)
            for sess in self.manager.idle():
                ws = self.sockets.get(sess.id)
                log.info("closing idle session %s", sess.id)
                if ws is not None:
                    with contextlib.suppress(Exception):
                        await ws.send_text(dumps({"type": "closing", "reason": "idle"}))
                        await ws.close(code=1000, reason="idle")
                await asyncio.get_running_loop().run_in_executor(None, self.manager.close, sess)

    # -- WebSocket ---------------------------------------------------------------------------
    async def websocket(self, ws: WebSocket) -> None:
        if not origin_ok(ws.headers.get("origin"), ws.headers.get("host"), self.config):
            log.warning("WebSocket from origin %r refused", ws.headers.get("origin"))
            await ws.close(code=1008)  # before accept: an HTTP 403
            return
        await ws.accept()
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue[dict] = asyncio.Queue()
        overflow = asyncio.Event()

        def put(msg: dict) -> None:
            if outbox.qsize() >= MAX_OUTBOX:
                overflow.set()
            else:
                outbox.put_nowait(msg)

        def send(msg: dict) -> None:  # any thread
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
                loop.call_soon_threadsafe(put, msg)

        try:
            sess = await loop.run_in_executor(None, self.manager.open, send)
        except SessionsFull as e:
            await ws.send_text(dumps({"type": "error", "message": str(e)}))
            await ws.close(code=1013, reason="too many sessions")
            return
        self.sockets[sess.id] = ws
        framing = Framing()
        sender = asyncio.create_task(self._send_loop(ws, sess, outbox, framing))
        try:
            await ws.send_text(dumps(sess.welcome()))
            await self._receive_loop(ws, sess, send, overflow, framing)
        except WebSocketDisconnect:
            pass
        except Exception:  # noqa: BLE001 - one session's failure closes only it
            log.exception("session %s failed", sess.id)
        finally:
            self.sockets.pop(sess.id, None)
            await loop.run_in_executor(None, self.manager.close, sess)
            sender.cancel()
            with contextlib.suppress(Exception):
                await ws.close()

    async def _send_loop(self, ws: WebSocket, sess: Any, outbox: asyncio.Queue,
                         framing: Framing) -> None:
        with contextlib.suppress(Exception):
            while True:
                msgs = [await outbox.get()]
                while framing.batch and len(msgs) < MAX_BATCH and not outbox.empty():
                    msgs.append(outbox.get_nowait())  # what is already waiting, no more
                for msg in msgs:
                    if msg.get("type") == "prompted":
                        sess.adopt_prompt_rig()
                for text in frames(msgs, framing.batch):
                    await ws.send_text(text)

    async def _receive_loop(self, ws: WebSocket, sess: Any, send: Any,
                            overflow: asyncio.Event, framing: Framing) -> None:
        bucket = TokenBucket(self.config.rate, self.config.burst)
        last_warned = 0.0
        while True:
            frame = await ws.receive()
            if frame["type"] == "websocket.disconnect":
                return
            if overflow.is_set():
                log.warning("session %s does not read its messages: closed", sess.id)
                await ws.close(code=1008, reason="not reading")
                return
            if not bucket.take():
                now = time.monotonic()
                if now - last_warned > 1.0:  # one error a second, not one per message
                    last_warned = now
                    send({"type": "error", "message": "too many messages: "
                          f"at most {self.config.rate:g} a second (dropped)"})
                continue
            text = frame.get("text")
            try:
                if text is None:
                    raise ProtocolError("binary frames are not part of the protocol")
                msg = parse(text)
                if msg.type == "hello":
                    framing.batch = msg.args["batch"]
                for reply in sess.handle(msg):
                    send(reply)
            except ProtocolError as e:
                send({"type": "error", "message": str(e), "about": e.about})
            except Exception as e:  # noqa: BLE001 - a bug must not end the other sessions
                log.exception("session %s: message failed", sess.id)
                send({"type": "error", "message": f"internal error: {type(e).__name__}"})
