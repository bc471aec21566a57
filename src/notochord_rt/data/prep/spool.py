"""Spool files: where ``prep`` workers put the events of the pieces they ingest.

A worker appends the pieces of each batch it ingests to its own spool file in
``DEST/.prep`` and sends the parent only where each piece is (a :data:`Location`), so the
events never travel through a pipe, never get pickled and are never written twice: the
resume ledger (:mod:`.prep_ledger`) records those locations, and the splits are copied
from the memory-mapped spools at the end (:class:`SpoolReader`).

A spool is a sequence of *blocks*, one per batch. A block of ``N`` events in all, at byte
``offset`` (little-endian, no header)::

    time float64[N] | inst int16[N] | pitch int16[N] | vel int16[N] | zeros to a multiple of 8

holds its pieces one after the other in each column, so every block starts 8-byte aligned,
a whole block is written with one ``writev``, and pieces that follow each other in a block
(most of a split: files are batched in discovery order) are copied into a split as one
run. A spool only ever grows; what a worker wrote before it crashed, or what no committed
ledger chunk refers to, is never read (and whole spools nobody refers to are deleted when
the ledger is opened).
"""

from __future__ import annotations

import mmap
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...events import EventArrays

PREFIX = "events-"
SUFFIX = ".bin"
_LAYOUT = tuple((k, np.dtype(t)) for k, t in ((2, "<f8"), (0, "<i2"), (1, "<i2"), (3, "<i2")))
"""(index in EventArrays, on-disk dtype) of each column, in file order."""
_DTYPES = tuple(dtype for _, dtype in sorted(_LAYOUT, key=lambda column: column[0]))
"""On-disk dtypes in EventArrays order."""
_ZEROS = bytes(8)
_IOV_MAX = 512  # buffers per writev call (Linux allows 1024)

Location = tuple[str, int, int, int, int]
"""Where a piece is: spool file name (in its folder), byte offset of its block, events in
the block, index of the piece's first event in the block, events of the piece."""


def block_nbytes(n: int) -> int:
    """Bytes a block of ``n`` events takes in a spool, padding included."""
    return -(-14 * n // 8) * 8


def is_spool_name(name: str) -> bool:
    return name.startswith(PREFIX) and name.endswith(SUFFIX)


def _write_all(fd: int, buffers: list) -> None:
    """Write ``buffers`` (contiguous arrays or bytes) to ``fd``, in order, completely."""
    at = 0
    while at < len(buffers):
        chunk = buffers[at:at + _IOV_MAX]
        done = os.writev(fd, chunk)
        expected = sum(memoryview(b).nbytes for b in chunk)
        if done == expected:
            at += len(chunk)
            continue
        views = [memoryview(b).cast("B") for b in chunk]  # a short write: go on from there
        for k, view in enumerate(views):
            if done < len(view):
                buffers[at + k] = view[done:]
                at += k
                break
            done -= len(view)


class SpoolWriter:
    """Appends blocks of pieces to a spool file of its own in ``folder`` (made on first use).

    The name holds the process id and a random token, so writers of different processes
    and runs never share a file. Blocks go straight to the operating system (no buffer in
    this process), so a location may be handed on as soon as :meth:`write_block` returns.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        self._fd: int | None = None
        self._size = 0

    def write_block(self, pieces: Sequence[EventArrays]) -> list[Location]:
        """Append the pieces as one block; returns their locations, in order."""
        if self._fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
            self._fd = os.open(self.folder / self.name, flags, 0o644)
            self._size = os.fstat(self._fd).st_size
        lengths = [len(p) for p in pieces]
        total = sum(lengths)
        buffers: list = []
        for k, dtype in _LAYOUT:
            for piece in pieces:
                column = piece[k]
                if column.dtype != dtype or not column.flags.c_contiguous:
                    column = np.ascontiguousarray(column, dtype=dtype)
                if len(column):
                    buffers.append(column)
        pad = block_nbytes(total) - 14 * total
        if pad:
            buffers.append(_ZEROS[:pad])
        _write_all(self._fd, buffers)
        offset, start, out = self._size, 0, []
        for n in lengths:
            out.append((self.name, offset, total, start, n))
            start += n
        self._size += block_nbytes(total)
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
        name, offset, total, start, n = where
        return (is_spool_name(name) and offset >= 0 and 0 <= start and n >= 0
                and start + n <= total and self.size(name) >= offset + block_nbytes(total))

    def _view(self, name: str, end: int) -> memoryview:
        view = self._views.get(name)
        if view is None or len(view) < end:  # not mapped yet, or grown since
            with open(self.folder / name, "rb") as f:
                self._maps[name] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            view = self._views[name] = memoryview(self._maps[name])
        return view

    @staticmethod
    def _starts(where: Location) -> tuple[int, int, int, int]:
        """Byte offsets of the piece's inst, pitch, time and vel."""
        _, offset, total, start, _ = where
        return (offset + 8 * total + 2 * start, offset + 10 * total + 2 * start,
                offset + 8 * start, offset + 12 * total + 2 * start)

    def raw(self, where: Location) -> tuple[memoryview, memoryview, memoryview, memoryview]:
        """The bytes of a piece's columns in ``EventArrays`` order (inst, pitch, time, vel),
        as views of the mapped spool: what a split writer copies, with no array made.

        ``where`` may also cover several pieces that follow each other in a block.
        """
        name, offset, total, _, n = where
        if n == 0:
            return (memoryview(b""),) * 4
        view = self._view(name, offset + block_nbytes(total))
        i, p, t, v = self._starts(where)
        return view[i:i + 2 * n], view[p:p + 2 * n], view[t:t + 8 * n], view[v:v + 2 * n]

    def piece(self, where: Location) -> EventArrays:
        """The events of a piece (its spool must hold it)."""
        name, offset, total, _, n = where
        if n == 0:
            return EventArrays.empty()
        buf = self._view(name, offset + block_nbytes(total)).obj
        cols = [np.frombuffer(buf, dtype=dtype, count=n, offset=at)
                for dtype, at in zip(_DTYPES, self._starts(where))]
        return EventArrays(*cols)

    def close(self) -> None:
        """Forget the maps (each closes when the last view of it goes)."""
        self._views.clear()
        self._maps.clear()
        self._sizes.clear()


def runs(places: Sequence[Location]) -> list[tuple[Location, list[int]]]:
    """Group pieces that follow each other in a block: ``(location of the run, lengths)``.

    Copying a run is one copy per column instead of one per piece and column.
    """
    out: list[tuple[Location, list[int]]] = []
    for where in places:
        if out:
            (name, offset, total, start, n), lengths = out[-1]
            if where[:3] == (name, offset, total) and where[3] == start + n:
                out[-1] = ((name, offset, total, start, n + where[4]), lengths)
                lengths.append(where[4])
                continue
        out.append((where, [where[4]]))
    return out


def sync(folder: str | os.PathLike, names: set[str]) -> None:
    """Make the named spools durable (``fsync``), whoever wrote them."""
    for name in sorted(names):
        fd = os.open(Path(folder) / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
