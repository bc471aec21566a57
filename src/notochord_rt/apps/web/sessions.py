"""The open tabs' sessions: a bounded number, each with its own sampler; idle ones expire."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from .session import WebSession

log = logging.getLogger(__name__)


class SessionsFull(RuntimeError):
    """No session can be opened: :attr:`SessionManager.max_sessions` are open."""


class SessionManager:
    """Opens (:meth:`open`) and closes tab sessions; at most ``max_sessions`` at once.

    ``factory.new(seed)`` gives each session its own sampler (see :mod:`.engine`);
    ``book`` is the presets; ``seed`` seeds the sessions reproducibly (session k gets
    ``seed + k``), None draws fresh seeds.
    """

    def __init__(self, factory: Any, book: Any, max_sessions: int = 16,
                 idle_timeout: float | None = 600.0, preset: str | int = 0,
                 seed: int | None = None) -> None:
        self.factory, self.book = factory, book
        self.max_sessions = int(max_sessions)
        self.idle_timeout = idle_timeout
        self.preset = preset
        self.seed = seed
        self._opened = 0
        self._lock = threading.Lock()
        self.sessions: dict[str, WebSession] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    def open(self, send: Callable[[dict], None]) -> WebSession:
        """A new started session (blocking: builds a sampler; call it off the event loop).
        :class:`SessionsFull` when the limit is reached."""
        with self._lock:
            if len(self.sessions) >= self.max_sessions:
                raise SessionsFull(f"{self.max_sessions} sessions are open: close a tab or "
                                   "start the server with a larger --max-sessions")
            sid = secrets.token_urlsafe(9)
            seed = None if self.seed is None else self.seed + self._opened
            self._opened += 1
            self.sessions[sid] = None  # type: ignore[assignment]  # reserve the slot
        model = None
        try:
            model = self.factory.new(seed)
            sess = WebSession(sid, model, self.book, send, preset=self.preset)
            sess.start()
        except BaseException:
            with self._lock:
                self.sessions.pop(sid, None)
            if model is not None:
                self.factory.release(model)
            raise
        with self._lock:
            self.sessions[sid] = sess
        log.info("session %s opened (%d open)", sid, len(self.sessions))
        return sess

    def close(self, sess: WebSession) -> None:
        """Close a session (its player releases every note); blocking, idempotent."""
        try:
            sess.close()
        finally:
            with self._lock:
                gone = self.sessions.pop(sess.id, None) is not None
            if gone:  # once: the slot goes back to the factory
                self.factory.release(sess.player.model)

    def idle(self, now: float | None = None) -> list[WebSession]:
        """Sessions without a message for longer than ``idle_timeout``."""
        if not self.idle_timeout:
            return []
        now = time.monotonic() if now is None else now
        with self._lock:
            live = [s for s in self.sessions.values() if s is not None]
        return [s for s in live if now - s.last_active > self.idle_timeout]

    def close_all(self) -> None:
        with self._lock:
            live = [s for s in self.sessions.values() if s is not None]
        for s in live:
            self.close(s)
