"""Spool files: where ``prep`` workers put the events of the pieces they ingest.

A worker appends every piece it ingests to its own spool file in ``DEST/.prep`` and sends
the parent only where the piece is, ``(file name, byte offset, number of events)``, so the
events never travel through a pipe, never get pickled and are never written twice: the
resume ledger (:mod:`.prep_ledger`) records those locations, and the splits are copied
from the memory-mapped spools at the end (:class:`SpoolReader`).

Layout of a piece with ``n`` events at ``offset`` (little-endian, no header)::

    time float64[n] | inst int16[n] | pitch int16[n] | vel int16[n] | zeros to a multiple of 8

so every piece starts 8-byte aligned. A spool only ever grows; what a worker wrote before
it crashed, or what no committed ledger chunk refers to, is simply never read (and whole
spools nobody refers to are deleted when the ledger is opened).
"""

from __future__ import annotations

import mmap
import os
import secrets
from pathlib import Path

import numpy as np

from ..events import EventArrays

PREFIX = "events-"
SUFFIX = ".bin"
_LAYOUT = tuple((k, np.dtype(t)) for k, t in ((2, "<f8"), (0, "<i2"), (1, "<i2"), (3, "<i2")))
"""(index in EventArrays, on-disk dtype) of each column, in file order."""
_ZEROS = bytes(8)

Location = tuple[str, int, int]
"""Where a piece is: spool file name (in its folder), byte offset, number of events."""


def piece_nbytes(n: int) -> int:
    """Bytes a piece of ``n`` events takes in a spool, padding included."""
    return -(-14 * n // 8) * 8


def is_spool_name(name: str) -> bool:
    return name.startswith(PREFIX) and name.endswith(SUFFIX)


class SpoolWriter:
    """Appends pieces to a spool file of its own in ``folder`` (created on the first piece).

    The name holds the process id and a random token, so writers of different processes
    and runs never share a file. Call :meth:`flush` before telling anyone where a piece
    is: until then it may still sit in this process's buffer.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        self._file = None
        self._size = 0

    def write(self, events: EventArrays) -> Location:
        """Append a piece; returns its location."""
        if self._file is None:
            self._file = open(self.folder / self.name, "ab", buffering=1 << 20)  # noqa: SIM115
            self._size = self._file.tell()
        n, offset = len(events), self._size
        write = self._file.write
        for k, dtype in _LAYOUT:
            column = events[k]
            if column.dtype != dtype or not column.flags.c_contiguous:
                column = np.ascontiguousarray(column, dtype=dtype)
            write(column)
        pad = piece_nbytes(n) - 14 * n
        if pad:
            write(_ZEROS[:pad])
        self._size += 14 * n + pad
        return self.name, offset, n

    def flush(self) -> None:
        """Hand everything written so far to the operating system."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SpoolReader:
    """Pieces of the spools in ``folder``, as read-only views of memory-mapped files."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._maps: dict[str, mmap.mmap] = {}
        self._views: dict[str, memoryview] = {}
        self._sizes: dict[str, int] = {}

    def size(self, name: str) -> int:
        """Size of a spool in bytes (0 if it is missing), as first seen."""
        if name not in self._sizes:
            try:
                self._sizes[name] = os.stat(self.folder / name).st_size
            except OSError:
                self._sizes[name] = 0
        return self._sizes[name]

    def holds(self, where: Location) -> bool:
        """Whether the spool is long enough to hold the piece (it may have been cut short)."""
        name, offset, n = where
        return is_spool_name(name) and offset >= 0 and self.size(name) >= offset + 14 * n

    def _map(self, name: str, end: int) -> mmap.mmap:
        buf = self._maps.get(name)
        if buf is None or len(buf) < end:  # not mapped yet, or grown since
            with open(self.folder / name, "rb") as f:
                buf = self._maps[name] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._views[name] = memoryview(buf)
        return buf

    def raw(self, where: Location) -> tuple[memoryview, memoryview, memoryview, memoryview]:
        """The bytes of a piece's columns in ``EventArrays`` order (inst, pitch, time, vel),
        as views of the mapped spool: what a split writer copies, with no array made."""
        name, offset, n = where
        if n == 0:
            return (memoryview(b""),) * 4
        self._map(name, offset + 14 * n)
        view = self._views[name]
        t, i, p, v = offset, offset + 8 * n, offset + 10 * n, offset + 12 * n
        return view[i:p], view[p:v], view[t:i], view[v:v + 2 * n]

    def piece(self, where: Location) -> EventArrays:
        """The events of a piece (its spool must hold it)."""
        name, offset, n = where
        if n == 0:
            return EventArrays.empty()
        buf = self._map(name, offset + 14 * n)
        cols: list = [None] * 4
        for k, dtype in _LAYOUT:
            cols[k] = np.frombuffer(buf, dtype=dtype, count=n, offset=offset)
            offset += cols[k].nbytes
        return EventArrays(*cols)

    def close(self) -> None:
        """Forget the maps (each closes when the last view of it goes)."""
        self._maps.clear()
        self._sizes.clear()


def sync(folder: str | os.PathLike, names: set[str]) -> None:
    """Make the named spools durable (``fsync``), whoever wrote them."""
    for name in sorted(names):
        fd = os.open(Path(folder) / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
