"""The JACK graph as the live apps need it: connections, client names, server death.

python-rtmidi opens one JACK client per port and tells nothing about connections, so a
pulled cable (``jack_disconnect``), a synth connected later, a taken client name or a
dead server are invisible through it. :class:`JackGraph` is a port-less JACK client
opened through ``ctypes`` on the *same* libjack python-rtmidi uses (its wheel bundles
one; else the system's), which answers those questions by polling.

ctypes releases the GIL during every libjack call, so this client can never be the one
that deadlocks a JACK client open/close against a Python input callback (see the
:mod:`.ports` module doc). It has no process callback; the only callback it installs is
JACK's shutdown notice, which merely sets an event.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import logging
import os
import threading

log = logging.getLogger(__name__)

_NO_START_SERVER = 0x01
_PORT_IS_INPUT, _PORT_IS_OUTPUT = 0x1, 0x2
_INFO_SHUTDOWN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_lib: ctypes.CDLL | None = None


def _libjack() -> ctypes.CDLL:
    """libjack, preferring the copy inside python-rtmidi's wheel (one instance with rtmidi's
    clients); OSError when there is none."""
    global _lib
    if _lib is not None:
        return _lib
    paths: list[str] = []
    try:
        import rtmidi

        base = os.path.dirname(os.path.dirname(rtmidi.__file__))
        paths += sorted(glob.glob(os.path.join(base, "python_rtmidi*", "libjack*.so*")))
    except ImportError:
        pass
    found = ctypes.util.find_library("jack")
    paths += [found] if found else []
    paths.append("libjack.so.0")
    err: OSError | None = None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError as e:
            err = e
    else:
        raise OSError(f"libjack not found ({err})")
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    lib.jack_client_open.restype = vp
    lib.jack_client_open.argtypes = [cp, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.jack_client_close.argtypes = [vp]
    lib.jack_activate.argtypes = [vp]
    lib.jack_on_info_shutdown.argtypes = [vp, _INFO_SHUTDOWN, vp]
    lib.jack_port_by_name.restype = vp
    lib.jack_port_by_name.argtypes = [vp, cp]
    lib.jack_port_get_all_connections.restype = ctypes.POINTER(cp)
    lib.jack_port_get_all_connections.argtypes = [vp, vp]
    lib.jack_get_ports.restype = ctypes.POINTER(cp)
    lib.jack_get_ports.argtypes = [vp, cp, cp, ctypes.c_ulong]
    lib.jack_get_uuid_for_client_name.restype = vp
    lib.jack_get_uuid_for_client_name.argtypes = [vp, cp]
    lib.jack_free.argtypes = [vp]
    _lib = lib
    return lib


class JackGraph:
    """A port-less JACK client for reading the graph (see the module doc).

    Raises OSError when libjack is missing or no JACK server runs. :attr:`dead` is set
    when the server goes away (:attr:`reason` says why); after that every query answers
    as if the graph were empty, without calling libjack.
    """

    def __init__(self, name: str = "notochord-rt-graph") -> None:
        self.lib = _libjack()
        status = ctypes.c_int(0)
        client = self.lib.jack_client_open(name.encode(), _NO_START_SERVER, ctypes.byref(status))
        if not client:
            raise OSError(f"no JACK server to connect to (status 0x{status.value:x})")
        self.client: int | None = client
        self.dead = threading.Event()
        self.reason = ""
        self._on_shutdown = _INFO_SHUTDOWN(self._shutdown)  # kept: libjack holds the pointer
        self.lib.jack_on_info_shutdown(client, self._on_shutdown, None)
        if self.lib.jack_activate(client) != 0:
            self.lib.jack_client_close(client)
            raise OSError("cannot activate the JACK graph client")

    def _shutdown(self, code: int, reason: bytes | None, arg: object) -> None:
        # on a libjack thread: set the flag, nothing else
        self.reason = (reason or b"").decode(errors="replace") or "server stopped"
        self.dead.set()

    def _strings(self, array: ctypes.Array | None) -> list[str]:
        if not array:
            return []
        out, k = [], 0
        while array[k]:
            out.append(array[k].decode(errors="replace"))
            k += 1
        self.lib.jack_free(ctypes.cast(array, ctypes.c_void_p))
        return out

    def connections(self, port: str) -> set[str]:
        """Full names of the ports connected to ``port`` (empty if it does not exist)."""
        if self.client is None or self.dead.is_set():
            return set()
        p = self.lib.jack_port_by_name(self.client, port.encode())
        if not p:
            return set()
        return set(self._strings(self.lib.jack_port_get_all_connections(self.client, p)))

    def ports(self, kind: str | None = None) -> list[str]:
        """Every MIDI port; ``kind="input"`` only those that receive (a synth's),
        ``"output"`` only those that send (a keyboard's)."""
        if self.client is None or self.dead.is_set():
            return []
        flags = {"input": _PORT_IS_INPUT, "output": _PORT_IS_OUTPUT}.get(kind or "", 0)
        return self._strings(self.lib.jack_get_ports(self.client, None, b"midi", flags))

    def client_exists(self, name: str) -> bool:
        """Whether a JACK client of exactly this name runs (with or without ports)."""
        if self.client is None or self.dead.is_set():
            return False
        uuid = self.lib.jack_get_uuid_for_client_name(self.client, name.encode())
        if uuid:
            self.lib.jack_free(uuid)
        return bool(uuid)

    def close(self) -> None:
        """Close the client (only forgotten when the server is dead: nothing to talk to)."""
        client, self.client = self.client, None
        if client is not None and not self.dead.is_set():
            self.lib.jack_client_close(client)


def open_graph(name: str) -> JackGraph | None:
    """A :class:`JackGraph`, or None (logged at debug) where JACK cannot be reached."""
    try:
        return JackGraph(name)
    except OSError as e:
        log.debug("no JACK graph client: %s", e)
        return None


__all__ = ["JackGraph", "open_graph"]
