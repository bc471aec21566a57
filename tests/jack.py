"""A JACK server for tests and benchmarks that send real MIDI through real ports.

:func:`jack_server` starts ``jackd --no-realtime -d dummy`` under a server name no other
running test uses (so parallel test runs do not share one), points
``JACK_DEFAULT_SERVER`` at it for every JACK client this process opens (python-rtmidi
reads it), and stops it afterwards (SIGINT: a clean exit, see :func:`_stop`). If
``JACK_DEFAULT_SERVER`` already names a running server, that one is used and left alone.
:func:`jack_or_skip` is the pytest flavour: it skips when ``jackd`` or python-rtmidi's
JACK API is missing (install ``jackd2``; see scripts/apt-packages.txt).

:class:`Probe` is a test-side JACK MIDI client: a virtual output to play into the app
and a virtual input that timestamps everything the app sends. Its ports live in a child
process (:class:`JackChild`), so an rtmidi crash on closing them cannot end a test run.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

SERVER_VAR = "JACK_DEFAULT_SERVER"


def _running(name: str) -> bool:
    if not shutil.which("jack_lsp"):
        return False
    r = subprocess.run(["jack_lsp", "-s", name], capture_output=True, timeout=10)
    return r.returncode == 0


def _die_with_parent() -> None:
    """In the child: get SIGINT when the parent dies (no orphaned jackd after a kill)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def jack_available() -> str | None:
    """None if JACK MIDI can work here, else why not."""
    if not shutil.which("jackd"):
        return "jackd is not installed (apt-get install jackd2)"
    try:
        import rtmidi
    except ImportError:
        return "python-rtmidi is not installed"
    if rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api():
        return "python-rtmidi was built without JACK (rebuild it with libjack-jackd2-dev)"
    return None


NAMES = tuple(f"nrt-test-{k}" for k in range(4))
"""Server names tried in turn. A fixed few, because JACK keeps a registry of 8 servers and
reclaims a dead server's entry only when a server of the same name starts again."""


def _start(name: str, period: int, rate: int) -> subprocess.Popen | None:
    """Start a server called ``name``; None if that name is taken (try another).

    Its output goes to a temporary file, never a pipe: jackd reports every xrun, and a
    full pipe nobody reads would block the server.
    """
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        ["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", str(rate), "-p", str(period)],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    proc.log = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + 15
    while not _running(name):
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace")
            log.close()
            if "already active" in err:
                return None
            raise RuntimeError(f"jackd exited with {proc.returncode}: {err[-500:]}")
        if time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError("jackd did not start within 15 s")
        time.sleep(0.1)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT first: only a clean exit frees the server's entry in JACK's registry."""
    import signal

    for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    log = getattr(proc, "log", None)
    if log is not None:
        log.close()


@contextlib.contextmanager
def jack_server(period: int = 64, rate: int = 48000) -> Iterator[str]:
    """Run a dummy-driver JACK server for the duration; yields its name."""
    why = jack_available()
    if why:
        raise RuntimeError(why)
    existing = os.environ.get(SERVER_VAR)
    if existing and _running(existing):
        yield existing
        return
    proc, name = None, ""
    for name in NAMES:
        if _running(name):
            continue  # another test run's server
        proc = _start(name, period, rate)
        if proc is not None:
            break
    if proc is None:
        raise RuntimeError(f"no free JACK server name among {', '.join(NAMES)}")
    old = os.environ.get(SERVER_VAR)
    os.environ[SERVER_VAR] = name
    try:
        yield name
    finally:
        if old is None:
            os.environ.pop(SERVER_VAR, None)
        else:
            os.environ[SERVER_VAR] = old
        _stop(proc)


def wait_until(pred, timeout: float = 20.0) -> bool:
    """Whether ``pred()`` comes true within ``timeout`` seconds (polled every 2 ms): for
    what a JACK client's own threads do a little after the event a test caused."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred():
        time.sleep(0.002)
    return pred()


def jack_or_skip(period: int = 1024):
    """For a pytest fixture: ``yield from jack_or_skip()``.

    Tests use a long period (21 ms): a non-realtime JACK on a loaded machine misses
    cycles, and MIDI written by a client that finishes a cycle late is silently lost —
    which would look like a stuck note. Timing is measured in ``benchmarks/live.py``.
    """
    import pytest

    why = jack_available()
    if why:
        pytest.skip(why)
    with jack_server(period=period) as name:
        yield name


class JackChild:
    """JACK MIDI ports held by a child process (``jack_child.py``), for test-side clients.

    The child opens the ports, sends on command and streams back what it receives; the
    parent never loads rtmidi's JACK client. :meth:`close` ends the child without closing
    its ports (the server removes a dead client's ports) and waits until they are gone:
    closing an rtmidi JACK port in this process once crashed the whole test run.
    """

    def __init__(self, spec: dict, on_report=None) -> None:
        self._on_report = on_report or (lambda obj: None)
        self._ports = [f"{c}:{p}" for c, p in filter(None, (spec.get("out"), spec.get("inp")))]
        self._replies: queue.Queue[dict] = queue.Queue()
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("jack_child.py")), json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
            bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._reply("ready", 20)
        except RuntimeError:
            self.close()
            raise

    def _read(self) -> None:
        for line in self.proc.stdout:
            obj = json.loads(line)
            if "sent" in obj or "ready" in obj:
                self._replies.put(obj)
            else:
                self._on_report(obj)
        self._replies.put({"eof": 1})

    def _reply(self, key: str, timeout: float) -> dict:
        try:
            obj = self._replies.get(timeout=timeout)
        except queue.Empty:
            obj = {}
        if key not in obj:
            self._err.seek(0)
            err = self._err.read().decode(errors="replace")[-800:]
            raise RuntimeError(f"JACK test client gave no {key!r} (exit {self.proc.poll()}): "
                               f"{err}")
        return obj

    def command(self, **cmd) -> None:
        """Send a command that has no answer."""
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def send(self, data: list[int]) -> float:
        """Send one MIDI message now; returns when it was sent (``perf_counter``)."""
        self.command(send=data)
        return self._reply("sent", 10)["sent"]

    def close(self) -> None:
        """End the child and wait until JACK has removed its ports; safe to call twice."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        self._err.close()
        name = os.environ.get(SERVER_VAR)
        if not name or not shutil.which("jack_lsp"):
            return
        end = time.monotonic() + 10
        while time.monotonic() < end:
            r = subprocess.run(["jack_lsp", "-s", name], capture_output=True, text=True,
                               timeout=10)
            if not set(self._ports) & set(r.stdout.split()):
                return
            time.sleep(0.02)


class Probe:
    """A JACK MIDI client standing in for a keyboard and a synth.

    ``CLIENT-keys:to_app`` (virtual output; :attr:`out_port`) is what the app listens to
    and ``CLIENT-synth:from_app`` (virtual input; :attr:`in_port`) where it plays. Both
    live in a child process (:class:`JackChild`). Arrival times come from rtmidi's JACK
    timestamps (exact spacing), anchored to ``time.perf_counter`` by the earliest poll —
    so they are exact up to one common offset of at most the poll period plus the pipe
    from the child, which never makes an arrival look earlier than it was polled.
    ``timing=True`` keeps MIDI clock messages (ignored by default).
    """

    def __init__(self, client: str = "probe", timing: bool = False) -> None:
        self.client = client
        self._rows: list[tuple[float, float, list[int]]] = []  # (poll time, jack time, msg)
        self._lock = threading.Lock()
        self._child = JackChild({"out": [f"{client}-keys", "to_app"],
                                 "inp": [f"{client}-synth", "from_app"], "timing": timing},
                                self._report)

    def _report(self, obj: dict) -> None:
        if "m" in obj:
            t, tj, msg = obj["m"]
            with self._lock:
                self._rows.append((t, tj, msg))

    @property
    def in_port(self) -> str:
        """Full name of our input port (where the app should send)."""
        return f"{self.client}-synth:from_app"

    @property
    def out_port(self) -> str:
        """Full name of our output port (what the app should listen to)."""
        return f"{self.client}-keys:to_app"

    def send(self, *data: int) -> float:
        """Send one MIDI message; returns the send time."""
        return self._child.send(list(data))

    def messages(self) -> list[tuple[float, list[int]]]:
        """``[(arrival time, message bytes)]`` so far."""
        with self._lock:
            rows = list(self._rows)
        if not rows:
            return []
        offset = min(tp - tj for tp, tj, _ in rows)
        return [(tj + offset, m) for _, tj, m in rows]

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def wait_for(self, pred, timeout: float = 2.0) -> bool:
        """Wait until ``pred(messages)`` is true; returns whether it became true."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self.messages()):
                return True
            time.sleep(0.005)
        return pred(self.messages())

    def close(self) -> None:
        """Remove both clients (their ports vanish); safe to call twice."""
        self._child.close()


def sounding_after(messages: list[tuple[float, list[int]]],
                   all_notes_off: bool = True) -> set[tuple[int, int]]:
    """(channel, pitch) of the notes still on after ``messages``; CC 120/123 end a
    channel's notes only when ``all_notes_off``."""
    on: set[tuple[int, int]] = set()
    for _, m in messages:
        kind, ch = m[0] & 0xF0, m[0] & 0x0F
        if kind == 0x90 and m[2] > 0:
            on.add((ch, m[1]))
        elif kind == 0x80 or (kind == 0x90 and m[2] == 0):
            on.discard((ch, m[1]))
        elif all_notes_off and kind == 0xB0 and m[1] in (120, 123):
            on = {n for n in on if n[0] != ch}
    return on
