"""Compact on-disk storage of many pieces, memory-mapped at training time.

Layout of a prepared dataset folder ``DEST``::

    DEST/<split>/inst.npy     int16   all events of all pieces of the split, concatenated
    DEST/<split>/pitch.npy    int16
    DEST/<split>/time.npy     float64 absolute seconds from each piece's start
    DEST/<split>/vel.npy      int16   0 = note-off
    DEST/<split>/offsets.npy  int64   piece k is events[offsets[k]:offsets[k+1]]
    DEST/<split>/pieces.json  one record per piece (one per line): source path, content hash,
                              events, seconds

``split`` is ``train``, ``valid`` or ``test``. Only numpy arrays and JSON: nothing is
unpickled when reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..events import EventArrays

SPLITS = ("train", "valid", "test")
COLUMNS = ("inst", "pitch", "time", "vel")
DTYPES = (np.dtype("<i2"), np.dtype("<i2"), np.dtype("<f8"), np.dtype("<i2"))
"""On-disk dtypes of the columns (little-endian: the bytes of a split never depend on the
machine that wrote it; on the usual little-endian machines they are the native ones)."""


def write_split(
    dest: str | os.PathLike, split: str, pieces: Iterable[EventArrays], records: Sequence[dict]
) -> Path:
    """Write ``pieces`` (with one metadata record each) as split ``split`` under ``dest``.

    See :class:`SplitWriter` (the pieces may be views of memory-mapped files).
    """
    pieces = list(pieces)
    if len(pieces) != len(records):
        raise ValueError("write_split: one record per piece is required")
    with SplitWriter(dest, split, sum(len(p) for p in pieces)) as writer:
        for piece in pieces:
            writer.add(piece)
        return writer.finish(records)


class SplitWriter:
    """Streams pieces into split ``split`` of ``dest``: :meth:`add` them in order, then
    :meth:`finish` with one record per piece.

    ``total_events`` (the sum of the pieces' lengths) goes into the ``.npy`` headers up
    front, so each column is written piece by piece, without a concatenated copy of the
    split in memory. Everything is written to temporary names and renamed at the end, so
    a reader never sees a half written file; leaving the ``with`` block without
    :meth:`finish` removes the temporary files.
    """

    def __init__(self, dest: str | os.PathLike, split: str, total_events: int):
        self.folder = Path(dest) / split
        self.folder.mkdir(parents=True, exist_ok=True)
        self.total = int(total_events)
        self._lengths: list[int] = []
        self._files = []
        for name, dtype in zip(COLUMNS, DTYPES):
            f = open(self._tmp(f"{name}.npy"), "wb", buffering=1 << 20)  # noqa: SIM115
            self._files.append(f)
            np.lib.format.write_array_header_1_0(f, {
                "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                "shape": (self.total,)})

    def _tmp(self, name: str) -> Path:
        return self.folder / f".{name}.tmp"

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._files:  # not finished
            for f in self._files:
                f.close()
            self._files = []
            for name in (*(f"{c}.npy" for c in COLUMNS), "offsets.npy", "pieces.json"):
                self._tmp(name).unlink(missing_ok=True)

    def add(self, piece: EventArrays) -> None:
        """Append a piece (any dtypes and strides; converted as needed)."""
        for f, column, dtype in zip(self._files, piece, DTYPES):
            if column.dtype != dtype or not column.flags.c_contiguous:
                column = np.ascontiguousarray(column, dtype=dtype)
            f.write(column)
        self._lengths.append(len(piece))

    def add_raw(self, columns: Sequence, lengths: int | Sequence[int]) -> None:
        """Append pieces given as the bytes of their columns, in :data:`COLUMNS` order and
        :data:`DTYPES` (e.g. memoryviews of a mapped file): one piece of ``lengths`` events,
        or several that follow each other, of ``lengths[k]`` events each."""
        lengths = [lengths] if isinstance(lengths, int) else list(lengths)
        n = sum(lengths)
        for column, dtype in zip(columns, DTYPES):
            if memoryview(column).nbytes != n * dtype.itemsize:
                raise ValueError(f"add_raw: {memoryview(column).nbytes} bytes for {n} "
                                 f"events of {dtype}")
        for f, column in zip(self._files, columns):
            f.write(column)
        self._lengths += lengths

    def finish(self, records: Sequence[dict]) -> Path:
        """Write the offsets and ``pieces.json`` and put every file in place."""
        if len(records) != len(self._lengths):
            raise ValueError("SplitWriter: one record per piece is required")
        offsets = np.zeros(len(self._lengths) + 1, dtype=np.int64)
        np.cumsum(self._lengths, out=offsets[1:])
        if offsets[-1] != self.total:
            raise ValueError(f"SplitWriter: {offsets[-1]} events added, {self.total} announced")
        for f in self._files:
            f.close()
        self._files = []
        with open(self._tmp("offsets.npy"), "wb") as f:
            np.save(f, offsets)
        self._tmp("pieces.json").write_text(
            "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
        for name in (*(f"{c}.npy" for c in COLUMNS), "offsets.npy", "pieces.json"):
            os.replace(self._tmp(name), self.folder / name)
        return self.folder


class EventStore:
    """Read-only, memory-mapped view of one split: ``store[k]`` is piece k as EventArrays."""

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        self.folder = Path(root) / split
        if not (self.folder / "offsets.npy").exists():
            raise FileNotFoundError(f"no prepared split {split!r} under {root}")
        self.split = split
        self._open()

    def _open(self) -> None:
        self.offsets = np.load(self.folder / "offsets.npy")
        self._cols = [np.load(self.folder / f"{c}.npy", mmap_mode="r") for c in COLUMNS]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, k: int) -> int:
        """Number of events of piece k."""
        return int(self.offsets[k + 1] - self.offsets[k])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, k: int) -> EventArrays:
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        k %= len(self)
        lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
        return EventArrays(*(np.array(c[lo:hi]) for c in self._cols))

    def window(self, k: int, lo: int, hi: int) -> EventArrays:
        """Events ``lo:hi`` of piece k (clipped to the piece), read without the rest.

        Lets a random crop of a long piece touch only the events it needs.
        """
        if not 0 <= k < len(self):
            raise IndexError(k)
        start, stop = int(self.offsets[k]), int(self.offsets[k + 1])
        lo = min(max(int(lo), 0), stop - start) + start
        hi = min(max(int(hi), 0), stop - start) + start
        return EventArrays(*(np.array(c[lo:max(lo, hi)]) for c in self._cols))

    def __getstate__(self) -> dict:
        # Pickle the location, not the memory maps (numpy would copy the whole split):
        # DataLoader workers started with "spawn"/"forkserver" reopen the files.
        return {"folder": str(self.folder), "split": self.split}

    def __setstate__(self, state: dict) -> None:
        self.folder = Path(state["folder"])
        self.split = state["split"]
        self._open()

    def records(self) -> list[dict]:
        """The metadata records of the pieces, in order."""
        return json.loads((self.folder / "pieces.json").read_text())

    @property
    def num_events(self) -> int:
        return int(self.offsets[-1])
