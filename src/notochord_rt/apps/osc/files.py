"""Files for ``/notochord/prompt`` and ``/notochord/load``: one folder, checked, off-thread.

The server reads files only when it was started with ``--allow-files DIR``, and only
inside that folder. :class:`FileRoot` resolves a requested path (symbolic links and
``..`` included) and refuses anything that does not end up inside the folder with the
*same* message whether or not it exists, so replies reveal nothing outside it. Inside
it, only regular files up to a size limit are read (a FIFO, a device or ``/dev/zero``
linked into the folder is refused before it is opened for reading; the file is opened
non-blocking and checked again on its descriptor).

:class:`FileJob` runs one read (and parse) on a worker thread, so a slow or large file
never stops the serving thread; the server polls it and gives up after a time limit
(the thread cannot be killed; its result is then dropped, and no new job starts until it
has finished).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from ...errors import InputError

MIDI_MAX_BYTES = 4 << 20  # MIDI prompts (an 800 KB file is already a long piece)
CHECKPOINT_MAX_BYTES = 256 << 20
READ_TIMEOUT = 10.0  # seconds for one job (read + parse / load)
MAX_PROMPT_EVENTS = 20000  # events of one prompt (fed a few at a time between requests)


class FileRoot:
    """The folder the server may read (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, midi_max_bytes: int = MIDI_MAX_BYTES,
                 checkpoint_max_bytes: int = CHECKPOINT_MAX_BYTES,
                 timeout: float = READ_TIMEOUT) -> None:
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise InputError(f"--allow-files: {root} is not a folder")
        self.root = real
        self.midi_max_bytes = midi_max_bytes
        self.checkpoint_max_bytes = checkpoint_max_bytes
        self.timeout = timeout

    def resolve(self, path: Any, max_bytes: int) -> str:
        """The real path of a regular file inside the root, at most ``max_bytes`` long;
        raises :class:`InputError` (the same one for every path outside the root)."""
        if not isinstance(path, str) or not path or len(path) > 1024 or "\x00" in path:
            raise InputError("path must be a non-empty string of at most 1024 characters")
        real = os.path.realpath(os.path.join(self.root, path))
        if os.path.commonpath([self.root, real]) != self.root:
            raise InputError("path is not inside the folder this server may read "
                             "(--allow-files)")
        shown = os.path.relpath(real, self.root)
        try:
            st = os.stat(real)
        except OSError as e:
            raise InputError(f"{shown}: {e.strerror or 'cannot read'}") from None
        self._check(st, shown, max_bytes)
        return real

    @staticmethod
    def _check(st: os.stat_result, shown: str, max_bytes: int) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{shown}: not a regular file")
        if st.st_size > max_bytes:
            raise InputError(f"{shown}: {st.st_size} bytes; at most {max_bytes} may be read")

    def read(self, path: Any, max_bytes: int, deadline: float) -> bytes:
        """The bytes of a file inside the root (see :meth:`resolve`), read by chunks until
        ``deadline`` (``time.monotonic()``) at the latest."""
        real = self.resolve(path, max_bytes)
        shown = os.path.relpath(real, self.root)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(real, flags)
        except OSError as e:
            raise InputError(f"{shown}: {e.strerror or 'cannot open'}") from None
        try:
            self._check(os.fstat(fd), shown, max_bytes)
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise InputError(f"{shown}: reading took too long")
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > max_bytes:
                    raise InputError(f"{shown}: more than {max_bytes} bytes")
                chunks.append(chunk)
        except OSError as e:
            raise InputError(f"{shown}: {e.strerror or 'cannot read'}") from None
        finally:
            os.close(fd)


class FileJob:
    """``fn()`` on a daemon thread; :meth:`poll` gives its result once done.

    ``poll`` returns None while it runs, then ``("ok", value)`` or ``("error",
    exception)``; after ``timeout`` seconds it returns ``("error", InputError(...))``
    and the late result is dropped (:attr:`running` stays true until the thread ends).
    """

    def __init__(self, fn: Callable[[], Any], timeout: float, what: str) -> None:
        self.what = what
        self.deadline = time.monotonic() + timeout
        self._result: tuple[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True,
                                        name="notochord-osc-file")
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._result = ("ok", fn())
        except Exception as e:  # delivered to the serving thread as an error reply
            self._result = ("error", e)

    @property
    def running(self) -> bool:
        """Whether the thread is still working (even after its time limit)."""
        return self._thread.is_alive()

    def poll(self) -> tuple[str, Any] | None:
        """The result, an error, a time-out error, or None (still running)."""
        if self._result is not None:
            return self._result
        if time.monotonic() > self.deadline:
            return ("error", InputError(f"{self.what}: took longer than the time limit"))
        return None


def default_loader(path: str):
    """``NotochordNet.load`` (imported when first needed)."""
    from ...model.network import NotochordNet

    return NotochordNet.load(path)


def read_prompt(data: bytes, merge: bool) -> tuple[list[tuple], dict[str, Any]]:
    """MIDI bytes → events to feed (``[([inst], [pitch], [time], [vel]), ...]``) and the
    reply's summary; :class:`InputError` beyond :data:`MAX_PROMPT_EVENTS` events."""
    from ...midi.ingest import load_midi

    ing = load_midi(data, merge=merge)
    if len(ing.events) > MAX_PROMPT_EVENTS:
        raise InputError(f"the prompt has {len(ing.events)} events; at most "
                         f"{MAX_PROMPT_EVENTS}")
    events = [([e.inst], [e.pitch], [e.time], [e.vel]) for e in ing.events.to_events()]
    insts: dict[int, dict[str, Any]] = {}
    for part in ing.parts:
        d = insts.setdefault(part.inst, {"channels": [], "notes": 0})
        d["notes"] += part.notes
        if part.channel + 1 not in d["channels"]:
            d["channels"].append(part.channel + 1)
    return events, {"events": len(ing.events), "duration": float(ing.events.duration),
                    "instruments": insts}
