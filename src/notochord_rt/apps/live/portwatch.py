"""Watching the live apps' MIDI ports: peers that vanish, connections that come and go,
a MIDI server that dies.

:class:`PortWatch` polls, from its own thread, every ``interval`` seconds:

* the port lists: a port we connected to (``--midi-in/--midi-out``) that disappears is
  reported once (``on_lost``) and reopened on its existing client when it is back
  (``on_back``);
* with a :class:`~.jackgraph.JackGraph` (JACK), the connections of each of our own
  ports: ``on_connect(port, added)`` and ``on_disconnect(port, removed)`` with the peer
  names, whoever made or broke them (``jack_connect``, a patchbay, a synth that quit);
* the server: ``on_server_lost(reason)`` once when JACK goes away (polling stops).

Make it (it creates its listing clients) *before* any input callback runs (the JACK rule
in :mod:`.ports`). Callbacks run on the watch thread and must be quick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .jackgraph import JackGraph
from .ports import OpenedPort, _new_client

log = logging.getLogger(__name__)


class PortWatch:
    """Poll ports, connections and the server (see the module doc)."""

    def __init__(self, api: int, client_name: str, interval: float = 0.25,
                 on_lost: Callable[[str, str], None] | None = None,
                 on_back: Callable[[str, str], None] | None = None, *,
                 graph: JackGraph | None = None,
                 on_connect: Callable[[OpenedPort, set[str]], None] | None = None,
                 on_disconnect: Callable[[OpenedPort, set[str]], None] | None = None,
                 on_server_lost: Callable[[str], None] | None = None) -> None:
        self.listers: dict[str, Any] = {
            "input": _new_client("input", api, f"{client_name}-watch"),
            "output": _new_client("output", api, f"{client_name}-watch")}
        self.graph = graph
        self.ports: list[OpenedPort] = []
        self.interval = float(interval)
        self.on_lost, self.on_back = on_lost, on_back
        self.on_connect, self.on_disconnect = on_connect, on_disconnect
        self.on_server_lost = on_server_lost
        self.lost: set[str] = set()
        self.server_lost = False
        self.connections: dict[str, set[str]] = {}  # our port's full name -> its peers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="midi-port-watch", daemon=True)

    def watch(self, ports: list[OpenedPort]) -> None:
        """Watch these ports (their connections now are the starting point)."""
        self.ports.extend(ports)
        for p in ports:
            self.connections[p.own_name] = self._peers(p)

    def _peers(self, p: OpenedPort) -> set[str]:
        return self.graph.connections(p.own_name) if self.graph is not None else set()

    def start(self) -> PortWatch:
        if self.graph is not None or any(not p.virtual for p in self.ports):
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (the listing clients stay until :meth:`close`)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def close(self) -> None:
        """Close the listing clients; call after every input callback is cancelled."""
        self.stop()
        dead = self.server_lost or (self.graph is not None and self.graph.dead.is_set())
        if not dead:  # on a dead server closing only waits for it and prints its errors
            for rt in self.listers.values():
                rt.delete()
        self.listers = {}
        if self.graph is not None:
            self.graph.close()

    def _port_names(self, kind: str) -> set[str]:
        return set(self.listers[kind].get_ports())

    def check(self) -> None:
        """One poll (the watch thread calls it every ``interval``)."""
        if self.server_lost:
            return
        if self.graph is not None and self.graph.dead.is_set():
            self.server_lost = True
            if self.on_server_lost:
                self.on_server_lost(self.graph.reason)
            return
        names: dict[str, set[str]] = {}
        for p in self.ports:
            if p.virtual:
                continue
            if p.kind not in names:
                try:
                    names[p.kind] = self._port_names(p.kind)
                except Exception as e:  # noqa: BLE001 - the MIDI system itself is gone
                    log.warning("cannot list MIDI ports: %s", e)
                    return
            present = p.name in names[p.kind]
            if not present and p.name not in self.lost:
                self.lost.add(p.name)
                log.warning("MIDI %s port %r disappeared", p.kind, p.name)
                if self.on_lost:
                    self.on_lost(p.name, p.kind)
            elif present and p.name in self.lost and p.reopen():
                self.lost.discard(p.name)
                log.warning("MIDI %s port %r is back; reconnected", p.kind, p.name)
                if self.on_back:
                    self.on_back(p.name, p.kind)
        if self.graph is not None:
            self._check_connections()

    def _check_connections(self) -> None:
        for p in self.ports:
            now = self._peers(p)
            before = self.connections.get(p.own_name, set())
            self.connections[p.own_name] = now
            gone, new = before - now, now - before
            if gone and self.on_disconnect:
                self.on_disconnect(p, gone)
            if new and self.on_connect:
                self.on_connect(p, new)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:
                log.exception("MIDI port watch failed")
            if self.server_lost:
                return


__all__ = ["PortWatch"]
