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
_DTYPES = tuple(np.dtype(a.dtype) for a in EventArrays.empty())


def write_split(
    dest: str | os.PathLike, split: str, pieces: Iterable[EventArrays], records: Sequence[dict]
) -> Path:
    """Write ``pieces`` (with one metadata record each) as split ``split`` under ``dest``.

    Each column is streamed piece by piece into its ``.npy`` file (no concatenated copy
    of the split in memory), so the pieces may be views of memory-mapped files. Files are
    written to temporary names and renamed, so a reader never sees a half written split.
    """
    folder = Path(dest) / split
    folder.mkdir(parents=True, exist_ok=True)
    pieces = list(pieces)
    if len(pieces) != len(records):
        raise ValueError("write_split: one record per piece is required")
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tmp = folder / ".offsets.tmp.npy"
    np.save(tmp, offsets)
    os.replace(tmp, folder / "offsets.npy")
    for k, name in enumerate(COLUMNS):
        dtype = _DTYPES[k]
        tmp = folder / f".{name}.tmp.npy"
        with open(tmp, "wb", buffering=1 << 20) as f:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": (int(offsets[-1]),)}
            np.lib.format.write_array_header_1_0(f, header)
            for piece in pieces:
                column = piece[k]
                if column.dtype != dtype:
                    column = column.astype(dtype)
                f.write(np.ascontiguousarray(column).data)
        os.replace(tmp, folder / f"{name}.npy")
    tmp = folder / ".pieces.tmp.json"
    tmp.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    os.replace(tmp, folder / "pieces.json")
    return folder


class EventStore:
    """Read-only, memory-mapped view of one split: ``store[k]`` is piece k as EventArrays."""

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        self.folder = Path(root) / split
        if not (self.folder / "offsets.npy").exists():
            raise FileNotFoundError(f"no prepared split {split!r} under {root}")
        self.offsets = np.load(self.folder / "offsets.npy")
        self._cols = [np.load(self.folder / f"{c}.npy", mmap_mode="r") for c in COLUMNS]
        self.split = split

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
        self.offsets = np.load(self.folder / "offsets.npy")
        self._cols = [np.load(self.folder / f"{c}.npy", mmap_mode="r") for c in COLUMNS]

    def records(self) -> list[dict]:
        """The metadata records of the pieces, in order."""
        return json.loads((self.folder / "pieces.json").read_text())

    @property
    def num_events(self) -> int:
        return int(self.offsets[-1])
