"""Compact on-disk storage of many pieces, memory-mapped at training time.

Layout of a prepared dataset folder ``DEST``::

    DEST/<split>/manifest.json       names the files of the split (written last, see below)
    DEST/<split>/inst.<gen>.npy      int16   all events of all pieces of the split, concatenated
    DEST/<split>/pitch.<gen>.npy     int16
    DEST/<split>/time.<gen>.npy      float64 absolute seconds from each piece's start
    DEST/<split>/vel.<gen>.npy       int16   0 = note-off
    DEST/<split>/offsets.<gen>.npy   int64   piece k is events[offsets[k]:offsets[k+1]]
    DEST/<split>/pieces.<gen>.json   one record per piece (one per line): source path,
                                     content hash, events, seconds

``split`` is ``train``, ``valid`` or ``test``; ``<gen>`` is a fresh name per write.

**Publication is one rename.** A writer puts the files of a new generation next to the
old ones (which it never touches), flushes them to disk, and only then replaces
``manifest.json`` atomically; the old generation's files are removed afterwards. A reader
opens the files the manifest names, so whenever a writer is killed it sees the old split
or the new one, never a mix. Files no manifest names are leftovers of killed writes,
removed by the next write.

**Readers check** that the columns, offsets and manifest agree (dtypes, lengths, sizes)
and raise :class:`~notochord_rt.errors.DataError` naming the part that does not, so a
damaged split never opens. Folders written before manifests existed (fixed names
``inst.npy`` ... ``pieces.json``) are still read, with the same checks.

Only numpy arrays and JSON: nothing is unpickled when reading.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text, is_temp_name
from ..errors import DataError
from ..events import EventArrays

SPLITS = ("train", "valid", "test")
COLUMNS = ("inst", "pitch", "time", "vel")
DTYPES = (np.dtype("<i2"), np.dtype("<i2"), np.dtype("<f8"), np.dtype("<i2"))
"""On-disk dtypes of the columns (little-endian: the bytes of a split never depend on the
machine that wrote it; on the usual little-endian machines they are the native ones)."""
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "notochord-rt-split"
MANIFEST_VERSION = 2
PARTS = (*COLUMNS, "offsets", "pieces")
"""The files of a split, by role (the manifest maps each to its file name)."""
LEGACY_NAMES = {**{c: f"{c}.npy" for c in COLUMNS}, "offsets": "offsets.npy",
                "pieces": "pieces.json"}
"""File names of splits written before manifests (version 1 folders)."""
MAX_MANIFEST_BYTES = 1 << 20


def has_split(root: str | os.PathLike, split: str) -> bool:
    """Whether ``root`` holds split ``split`` (with a manifest, or in the older layout)."""
    folder = Path(root) / split
    return (folder / MANIFEST).is_file() or (folder / LEGACY_NAMES["offsets"]).is_file()


def _gen_of(name: str) -> str | None:
    """The generation in a file name ``<part>.<gen>.<ext>``, else None."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] in PARTS and parts[2] in ("npy", "json"):
        return parts[1]
    return None


def read_manifest(folder: Path) -> dict | None:
    """The checked manifest of a split folder, or None for a folder of the older layout."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError("too large")
        m = json.loads(path.read_bytes())
        if m.get("format") != MANIFEST_FORMAT or m.get("version") != MANIFEST_VERSION:
            raise ValueError(f"format {m.get('format')!r} version {m.get('version')!r}, "
                             f"expected {MANIFEST_FORMAT!r} version {MANIFEST_VERSION}")
        files, sizes = m["files"], m["bytes"]
        for part in PARTS:
            name = files[part]
            if not isinstance(name, str) or _gen_of(name) is None or "/" in name:
                raise ValueError(f"bad file name for {part}: {name!r}")
            if not isinstance(sizes[part], int):
                raise ValueError(f"bad size for {part}")
        if not (isinstance(m["pieces"], int) and isinstance(m["events"], int)):
            raise ValueError("bad piece or event count")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise DataError(f"{path}: unreadable split manifest ({e})") from None
    return m


def sweep_split(folder: Path) -> None:
    """Remove what killed writes left in a split folder: files of generations the manifest
    does not name, temporary files, and the older layout's files once a manifest exists."""
    manifest = read_manifest(folder) if (folder / MANIFEST).exists() else None
    keep = set(manifest["files"].values()) if manifest else set()
    legacy = set(LEGACY_NAMES.values())
    for p in folder.iterdir() if folder.is_dir() else ():
        name = p.name
        stale = is_temp_name(name) or \
            (_gen_of(name) is not None and name not in keep) or \
            (manifest is not None and name in legacy)
        if stale and p.is_file():
            p.unlink(missing_ok=True)


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
    split in memory. The files are a new generation that readers do not see until
    :meth:`finish` replaces the manifest (one atomic rename; see the module docstring).
    Leaving the ``with`` block without :meth:`finish` removes them.
    """

    def __init__(self, dest: str | os.PathLike, split: str, total_events: int):
        self.folder = Path(dest) / split
        self.folder.mkdir(parents=True, exist_ok=True)
        sweep_split(self.folder)
        self.total = int(total_events)
        self._lengths: list[int] = []
        gen = secrets.token_hex(6)
        self.names = {p: f"{p}.{gen}.{'json' if p == 'pieces' else 'npy'}" for p in PARTS}
        self._files = []
        self._published = False
        for name, dtype in zip(COLUMNS, DTYPES):
            f = open(self.folder / self.names[name], "wb", buffering=1 << 20)  # noqa: SIM115
            self._files.append(f)
            np.lib.format.write_array_header_1_0(f, {
                "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                "shape": (self.total,)})

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files:
            f.close()
        self._files = []
        if not self._published:  # not finished: this generation was never visible
            for name in self.names.values():
                (self.folder / name).unlink(missing_ok=True)

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
        """Write the offsets and piece records, flush everything, then publish the manifest."""
        if len(records) != len(self._lengths):
            raise ValueError("SplitWriter: one record per piece is required")
        offsets = np.zeros(len(self._lengths) + 1, dtype=np.int64)
        np.cumsum(self._lengths, out=offsets[1:])
        if offsets[-1] != self.total:
            raise ValueError(f"SplitWriter: {offsets[-1]} events added, {self.total} announced")
        for f in self._files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self._files = []
        with open(self.folder / self.names["offsets"], "wb") as f:
            np.save(f, offsets)
            f.flush()
            os.fsync(f.fileno())
        with open(self.folder / self.names["pieces"], "w", encoding="utf-8") as f:
            f.write("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
            f.flush()
            os.fsync(f.fileno())
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                    "pieces": len(self._lengths), "events": self.total, "files": self.names,
                    "bytes": {p: (self.folder / n).stat().st_size
                              for p, n in self.names.items()}}
        # the one step that publishes the split (temporary file, fsync, rename, fsync folder)
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        self._published = True
        sweep_split(self.folder)  # the previous generation, now unreachable
        return self.folder


class EventStore:
    """Read-only, memory-mapped view of one split: ``store[k]`` is piece k as EventArrays.

    Opening checks that the parts of the split agree (see the module docstring):
    :class:`FileNotFoundError` if there is no such split, :class:`DataError` if it is
    damaged or half written.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        self.folder = Path(root) / split
        if not has_split(root, split):
            raise FileNotFoundError(f"no prepared split {split!r} under {root}")
        self.split = split
        self._open()

    def _fail(self, what: str) -> DataError:
        return DataError(f"prepared split {self.folder} is damaged or half written: {what}; "
                         "prepare the data again")

    def _open(self) -> None:
        manifest = read_manifest(self.folder)
        self._names = manifest["files"] if manifest else dict(LEGACY_NAMES)
        for part, name in self._names.items():
            path = self.folder / name
            if not path.is_file():
                raise self._fail(f"{name} ({part}) is missing")
            if manifest and path.stat().st_size != manifest["bytes"][part]:
                raise self._fail(f"{name} has {path.stat().st_size} bytes, the manifest says "
                                 f"{manifest['bytes'][part]}")
        offsets = self._load("offsets", None)
        if offsets.dtype.kind not in "iu" or offsets.ndim != 1 or len(offsets) < 1 \
                or offsets[0] != 0 or (np.diff(offsets) < 0).any():
            raise self._fail(f"{self._names['offsets']} is not a list of piece offsets")
        self.offsets = np.asarray(offsets, dtype=np.int64)
        events = int(self.offsets[-1])
        if manifest and (len(self) != manifest["pieces"] or events != manifest["events"]):
            raise self._fail(f"the offsets give {len(self)} pieces / {events} events, the "
                             f"manifest {manifest['pieces']} / {manifest['events']}")
        self._cols = []
        for column, dtype in zip(COLUMNS, DTYPES):
            col = self._load(column, "r")
            if col.dtype != dtype or col.shape != (events,):
                raise self._fail(f"column {column} holds {col.shape} {col.dtype}, the "
                                 f"offsets need ({events},) {dtype}")
            self._cols.append(col)

    def _load(self, part: str, mmap_mode: str | None) -> np.ndarray:
        name = self._names[part]
        try:
            return np.load(self.folder / name, mmap_mode=mmap_mode, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise self._fail(f"{name} is unreadable ({e})") from None

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
        """The metadata records of the pieces, in order (DataError if they do not fit)."""
        name = self._names["pieces"]
        try:
            records = json.loads((self.folder / name).read_bytes())
        except (OSError, ValueError, RecursionError) as e:
            raise self._fail(f"{name} is unreadable ({e})") from None
        if not isinstance(records, list) or len(records) != len(self):
            raise self._fail(f"{name} does not hold one record per piece ({len(self)})")
        return records

    @property
    def num_events(self) -> int:
        return int(self.offsets[-1])
