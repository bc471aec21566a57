"""Ableton Link as a :class:`~.clock.Clock` (the PyPI package ``aalink``, extra ``link``).

A :class:`LinkClock` is a real Link peer: tempo, beat and phase are shared with every Link
app on the local network (Ableton Live, Bitwig, phone apps...). ``quantum`` is the number
of beats of the phase cycle that peers align (4 = bars of 4/4). aalink needs an asyncio
loop; the clock runs one on a daemon thread of its own, so the live apps stay threaded.
Peers joining and leaving are reported (``position`` events with the peer count); a
session that drops keeps our own tempo running, so nothing stops or sticks.

With ``start_stop`` (``--link-start-stop``) Link's start/stop sync is on: the session's
transport is shared, so a peer pressing stop stops our voices (every model note is
released) and start brings them back on the next bar; joining a stopped session does not
start it (the voices wait and say so), and :meth:`LinkClock.set_playing` starts or stops
the transport for every peer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from typing import Any

from ...engine.sampling.grid import check_bpm
from ...errors import UserError
from .clock import BeatInfo, Clock

log = logging.getLogger(__name__)


def _aalink() -> Any:
    try:
        import aalink
    except ImportError as e:
        raise UserError("--clock link needs the aalink package: "
                        "pip install 'notochord-rt[link]'") from e
    return aalink


class LinkClock(Clock):
    """A Link peer at ``bpm`` (adopts the session's tempo when there is one).

    ``playing`` is always True unless ``start_stop`` (Link's start/stop sync, see the
    module doc): a Link session has a beat whenever it exists.
    """

    source = "link"

    def __init__(self, bpm: float = 120.0, quantum: float = 4.0, per_bar: int = 4,
                 start_stop: bool = False) -> None:
        super().__init__(per_bar)
        bpm = check_bpm(bpm)
        if not (isinstance(quantum, (int, float)) and math.isfinite(quantum)
                and 1 <= quantum <= 64):
            raise UserError(f"--quantum must be 1..64 beats, got {quantum!r}")
        aalink = _aalink()
        self.quantum = float(quantum)
        self._start_stop = start_stop
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="link",
                                        daemon=True)
        self._thread.start()

        async def make() -> Any:
            link = aalink.Link(bpm)
            link.quantum = self.quantum
            link.start_stop_sync_enabled = start_stop
            if start_stop:
                link.set_start_stop_callback(self._transport)
            return link

        self.link = asyncio.run_coroutine_threadsafe(make(), self._loop).result(10)
        self._peers = 0
        self._closed = False

    def start(self) -> LinkClock:
        self.link.enabled = True
        if not self._start_stop:
            self._emit("start", "Link enabled")
        elif self.link.playing:
            self._emit("start", "Link enabled: the session is playing")
        else:
            self._emit("position", "Link enabled: waiting for the session's transport to "
                                   "start (start/stop sync)")
        asyncio.run_coroutine_threadsafe(self._watch(), self._loop)
        return self

    def _transport(self, playing: bool) -> None:
        """aalink's start/stop callback (on the Link thread): a peer started or stopped."""
        if not self._closed:
            self._emit("start" if playing else "stop",
                       "the Link session started" if playing else "the Link session stopped")

    def set_playing(self, playing: bool) -> None:
        """Start or stop the shared transport (with ``start_stop``; every peer follows)."""
        if not self._start_stop:
            raise UserError("starting and stopping a Link session needs start/stop sync "
                            "(--link-start-stop)")
        self.link.playing = bool(playing)

    async def _watch(self, every: float = 0.5) -> None:
        """Report peers joining and leaving, on the Link thread, until closed."""
        while not self._closed:
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the watch must not die on a report
                log.exception("Link peer watch failed")
            await asyncio.sleep(every)

    def info(self, t: float | None = None) -> BeatInfo:
        link = self.link
        beat, bpm = float(link.beat), float(link.tempo)
        if t is not None:
            beat += (t - time.perf_counter()) * bpm / 60.0
        playing = bool(link.playing) if self._start_stop else True
        return BeatInfo(self.source, bpm, beat, playing, self.per_bar)

    @property
    def peers(self) -> int:
        """Other Link peers in the session now."""
        return int(self.link.num_peers)

    def poll(self) -> None:
        """Report peers joining or leaving (call now and then, e.g. from the UI)."""
        n = self.peers
        if n != self._peers:
            kind = "position" if n else "error"
            msg = f"{n} Link peer(s)" if n else "the Link session dropped: keeping our tempo"
            self._peers = n
            self._emit(kind, msg)

    def set_tempo(self, bpm: float) -> None:
        """Propose a tempo to the session (every peer follows)."""
        self.link.tempo = check_bpm(bpm)
        self._emit("tempo", f"{bpm:g} BPM")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.link.enabled = False
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(2)
