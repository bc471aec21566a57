"""The MIDI ports of a :class:`~.session.LiveSession`: opening them under names a user can
find, and what happens when a connection, a peer or the MIDI server goes away.

* Names: outputs on client ``NAME`` (``NAME:out``), inputs on client ``NAME-in``
  (``NAME-in:in``; rtmidi makes one client per port, :func:`.ports.port_client`), where
  ``NAME`` is ``--client-name``, or ``NAME-2``, ``NAME-3``... when another app already
  runs under it (JACK). :meth:`PortsMixin.port_lines` are the lines to print at start.
* A connection of one of our outputs that goes away (``jack_disconnect``, a patchbay, a
  synth that quits): the notes sounding then are released through ``Player.panic()``
  (note-offs sent and fed: the model stays in step), in one log line. A connection that
  appears (a synth connected later, or again) gets the programs and the controller state
  (:meth:`.ports.MidiOut.announce_state`), and the note-offs it missed.
* The MIDI server dying is one log line; every note is released, then the app exits
  (``on_server_loss="exit"``) or waits for the server and opens its ports again
  (``"wait"``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .jackgraph import JackGraph, open_graph
from .ports import MidiOut, OpenedPort, open_ports, port_client, rt_api
from .portwatch import PortWatch

log = logging.getLogger(__name__)
startup_log = logging.getLogger("notochord_rt.startup")

SERVER_RETRY = 1.0
"""Seconds between tries to reach a MIDI server that went away (``on_server_loss="wait"``)."""


class PortsMixin:
    """Port handling of :class:`~.session.LiveSession` (which provides ``opt``, ``out``,
    ``player``, ``router``, ``lost``, ``lost_ports``, ``_inputs``, ``_outputs``,
    ``_watch``)."""

    opt: Any
    out: MidiOut | None
    player: Any
    router: Any
    lost: threading.Event
    lost_ports: list[tuple[str, str]]
    _inputs: list[OpenedPort]
    _outputs: list[OpenedPort]
    _watch: PortWatch | None
    server_lost: str | None = None
    """Why the MIDI server went away (None while it runs)."""

    def _open_ports(self) -> None:
        """Graph client, watch, outputs, inputs (no callbacks yet; see the ports module)."""
        o = self.opt
        self._api = rt_api(o.api)
        graph = open_graph(f"{o.client_name}-graph") if self._api_is_jack() else None
        n_in, n_out = len(o.inputs) + len(o.virtual_in), len(o.outputs) + len(o.virtual_out)
        base = o.client_name
        if graph is not None:  # our names must all be free, or JACK renames them
            k = 1
            while any(graph.client_exists(port_client(base, kind, i))
                      for kind, n in (("output", n_out), ("input", n_in)) for i in range(n)):
                k += 1
                base = f"{o.client_name}-{k}"
        self._base = base
        try:
            self._watch = PortWatch(self._api, base, o.watch_interval, on_lost=self._on_lost,
                                    on_back=self._on_back, graph=graph,
                                    on_connect=self._on_connect,
                                    on_disconnect=self._on_disconnect,
                                    on_server_lost=self._on_server_lost)
        except BaseException:
            if graph is not None:
                graph.close()
            raise
        self._outputs = open_ports("output", self._api, o.outputs, o.virtual_out, base,
                                   self._watch.listers["output"])
        own_out = [port_client(base, "output", k) for k in range(n_out)]
        self._inputs = open_ports("input", self._api, o.inputs, o.virtual_in, base,
                                  self._watch.listers["input"], own=own_out)

    def _api_is_jack(self) -> bool:
        import rtmidi

        return self._api == rtmidi.API_UNIX_JACK

    def _listen_and_watch(self) -> None:
        """Input callbacks last, then the watch starts."""
        assert self._watch is not None
        for p in self._inputs:
            p.listen(self.router)
        self._watch.watch(self._inputs + self._outputs)
        self._watch.start()

    def port_lines(self) -> list[str]:
        """``in: NAME-in:in`` / ``out: NAME:out -> synth:in`` — one line per port, with the
        names the MIDI system shows (for ``jack_connect``, aconnect, a patchbay)."""
        lines = []
        for kind, ports in (("in", self._inputs), ("out", self._outputs)):
            for p in ports:
                peer = "" if p.virtual else (f" <- {p.name}" if kind == "in" else f" -> {p.name}")
                lines.append(f"{kind}: {p.own_name}{peer}")
        return lines

    def _report_ports(self) -> None:
        for line in self.port_lines():
            startup_log.info("%s", line)

    # -- events from the watch thread ---------------------------------------------------------
    def _on_back(self, name: str, kind: str) -> None:
        graph = self._watch.graph if self._watch is not None else None
        if kind == "output" and self.out is not None and graph is None:
            self.out.announce_state()  # a re-plugged synth needs its programs again

    def _on_lost(self, name: str, kind: str) -> None:
        self.lost_ports.append((name, kind))
        if self.opt.on_port_loss == "exit":
            self.lost.set()
        elif kind == "input" and self.player is not None:
            self.player.panic()  # nobody may be left to send the note-offs

    def _on_disconnect(self, port: OpenedPort, peers: set[str]) -> None:
        names = ", ".join(sorted(peers))
        if port.kind == "output" and self.out is not None and self.player is not None:
            n = self.out.disconnected()
            self.player.panic()  # note-offs sent and fed: the model stays in step
            log.warning("MIDI out %s: connection to %s lost; %d sounding notes released",
                        port.own_name, names, n)
        elif port.kind == "input" and self.player is not None:
            self.player.panic()  # its note-offs can no longer come
            log.warning("MIDI in %s: connection from %s lost; notes released",
                        port.own_name, names)

    def _on_connect(self, port: OpenedPort, peers: set[str]) -> None:
        if port.kind == "output" and self.out is not None:
            self.out.announce_state()
            log.info("MIDI out %s: connected to %s; programs and controllers sent",
                     port.own_name, ", ".join(sorted(peers)))

    def _on_server_lost(self, reason: str) -> None:
        self.server_lost = reason or "server stopped"
        wait = self.opt.on_server_loss == "wait"
        log.error("MIDI server stopped (%s): every note released; %s", self.server_lost,
                  "waiting for it to come back" if wait else "exiting")
        if self.player is not None:
            self.player.panic()
        for p in self._inputs + self._outputs:  # sends are dropped, libjack is left alone
            p.abandon()
        if wait:
            threading.Thread(target=self._await_server, name="midi-server-wait",
                             daemon=True).start()
        else:
            self.lost_ports.append((f"MIDI server ({self.server_lost})", "server"))
            self.lost.set()

    def _await_server(self) -> None:
        """Until the server is back (or the session closes): then new clients under the
        same names, callbacks last, programs and controllers announced."""
        while not self._closing:
            time.sleep(SERVER_RETRY)
            graph = open_graph(f"{self._base}-graph")
            if graph is None:
                continue
            try:
                self._reopen(graph)
            except Exception as e:  # noqa: BLE001 - e.g. a named peer is not back yet
                graph.close()
                log.debug("reopening the MIDI ports failed: %s", e)
                continue
            log.warning("MIDI server is back; ports reopened: %s", "; ".join(self.port_lines()))
            return

    def _reopen(self, graph: JackGraph) -> None:
        o = self.opt
        old_watch, old_in, old_out = self._watch, self._inputs, self._outputs
        watch = PortWatch(self._api, self._base, o.watch_interval, on_lost=self._on_lost,
                          on_back=self._on_back, graph=graph, on_connect=self._on_connect,
                          on_disconnect=self._on_disconnect, on_server_lost=self._on_server_lost)
        outs: list[OpenedPort] = []
        try:
            outs = open_ports("output", self._api, o.outputs, o.virtual_out, self._base,
                              watch.listers["output"])
            own = [p.own_name.split(":")[0] for p in outs]
            ins = open_ports("input", self._api, o.inputs, o.virtual_in, self._base,
                             watch.listers["input"], own=own)
        except BaseException:
            for p in outs:
                p.close()
            watch.close()
            raise
        for p in old_in + old_out:
            p.abandon()
        if old_watch is not None:
            old_watch.close()
        self._watch, self._inputs, self._outputs = watch, ins, outs
        if self.out is not None:
            self.out.ports = list(outs)
        self.server_lost = None
        if self._closing:
            return
        self._listen_and_watch()
        if self.out is not None:
            self.out.announce_state()

    _closing = False

    def _close_ports(self) -> None:
        """Inputs first (no more callbacks), then the player (releases notes), then outputs;
        on a dead server the clients are only forgotten."""
        self._closing = True
        if self._watch is not None:
            self._watch.stop()
        dead = self.server_lost is not None
        for p in self._inputs:
            if dead:
                p.abandon()
            else:
                p.deafen()
        for p in self._inputs:
            try:
                p.close()
            except Exception:  # noqa: BLE001
                log.debug("closing input %s failed", p.name, exc_info=True)
        self._inputs = []
        if self.player is not None:
            self.player.stop()
        if dead:
            for p in self._outputs:
                p.abandon()
        if self.out is not None:
            self.out.close()
            self.out = None
        else:
            for p in self._outputs:
                p.close()
        self._outputs = []
        if self._watch is not None:
            self._watch.close()
            self._watch = None


__all__ = ["PortsMixin", "SERVER_RETRY"]
