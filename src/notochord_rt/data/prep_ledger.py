"""The resume record of ``prep``: what has been done, kept in a few chunk files.

``DEST/.prep/chunk-NNNNNN.bin`` each hold a batch of finished files, in a raw layout that is
written with a few large writes and read back memory-mapped, without parsing or copying::

    b"NRTPREP2"                    magic (8 bytes)
    header length                  uint64, little-endian
    header                         UTF-8 JSON, zero-padded to a multiple of 8 bytes
    time                           float64[n]  (little-endian, like the columns below)
    inst, pitch, vel               int16[n] each

The JSON header holds the ledger version, ``n`` (``"events"``), the new pieces of the
chunk as ``[content hash, first event, end event]`` and one record per file (path,
absolute path, size, mtime, content hash, status, reason, events, seconds, note-ons per
instrument).

A chunk is written to a temporary name, synced to disk and renamed, so it is either
complete or absent; everything in a chunk counts as done. Nothing here is pickled. A file
is recognised without reading it by (absolute path, size, mtime); a file whose content is
known under another name is recognised by its hash and not ingested again. Chunks of
another :data:`LEDGER_VERSION` (including the ``.npz`` chunks of version 1), and chunks
whose size does not match their header, are ignored: their files are simply redone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..events import SUB_EVENTS as COLUMNS
from ..events import EventArrays
from . import prep_worker as pw

log = logging.getLogger(__name__)

LEDGER_VERSION = 2
LEDGER_DIR = ".prep"
MAGIC = b"NRTPREP2"
LAYOUT = (("time", "<f8"), ("inst", "<i2"), ("pitch", "<i2"), ("vel", "<i2"))
"""The columns of a chunk in file order, with their on-disk dtypes."""
CONTENT_STATUSES = (pw.OK, pw.CORRUPT, pw.TOO_LONG)
"""Outcomes that depend on the content only, so they carry over to identical files."""
RETRYABLE = (pw.CRASH, pw.TIMEOUT, pw.UNREADABLE)


def stat_key(abspath: str, size: int, mtime_ns: int) -> tuple[str, int, int]:
    return (abspath, int(size), int(mtime_ns))


def record_of(result: pw.FileResult) -> dict:
    """The JSON record of a file's result (without its events)."""
    return {
        "path": result.path,
        "abspath": os.path.abspath(result.path),
        "size": result.size,
        "mtime_ns": result.mtime_ns,
        "hash": result.hash,
        "status": result.status,
        "reason": result.reason,
        "events": result.num_events,
        "seconds": result.seconds,
        "instruments": {str(k): v for k, v in result.instruments.items()},
    }


def _data_start(header_len: int) -> int:
    return 16 + -(-header_len // 8) * 8


def write_chunk(path: Path, header: dict, pieces: list[EventArrays]) -> None:
    """Write a chunk (``header`` plus ``"events"``) of ``pieces`` atomically and durably."""
    n = sum(len(p) for p in pieces)
    text = json.dumps({**header, "events": n}, separators=(",", ":")).encode()
    start = _data_start(len(text))
    tmp = path.with_name(f".{path.stem}.tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + len(text).to_bytes(8, "little") + text + bytes(start - 16 - len(text)))
        for name, dtype in LAYOUT:
            k = COLUMNS.index(name)
            parts = [p[k] for p in pieces]
            if parts:
                f.write(np.concatenate(parts).astype(dtype, copy=False).data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_chunk(path: Path) -> tuple[dict, dict[str, np.ndarray] | None]:
    """The header of a chunk and its columns (memory-mapped; None when it has no events).

    Raises ``ValueError`` for a file that is not a complete chunk.
    """
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) != 16 or head[:8] != MAGIC:
            raise ValueError("not a ledger chunk")
        size = int.from_bytes(head[8:], "little")
        header = json.loads(f.read(size).decode("utf-8"))
        n = int(header["events"])
        start = _data_start(size)
        if os.fstat(f.fileno()).st_size != start + 14 * n:
            raise ValueError("size does not match its header (truncated?)")
        if n == 0:
            return header, None
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    columns, at = {}, start
    for name, dtype in LAYOUT:
        columns[name] = np.frombuffer(buf, dtype=dtype, count=n, offset=at)
        at += n * columns[name].itemsize
    return header, columns


class Ledger:
    """Records of finished files in ``DEST/.prep``; holds a lock while open."""

    def __init__(self, dest: str | os.PathLike):
        self.folder = Path(dest) / LEDGER_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.folder / "lock", "w")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            lock = self.folder / "lock"
            raise UserError(f"another prep is writing to {dest} (lock {lock})") from None
        self.by_stat: dict[tuple[str, int, int], dict] = {}
        self.by_hash: dict[str, dict] = {}
        self.piece_at: dict[str, tuple[Path, int, int]] = {}
        """Where the events of each stored content are: chunk, first event, end event."""
        self._columns: dict[Path, dict[str, np.ndarray]] = {}
        self._pending_records: list[dict] = []
        self._pending_pieces: dict[str, EventArrays] = {}
        self._next = 0
        for tmp in self.folder.glob(".chunk-*.tmp"):  # left by a run killed while writing
            tmp.unlink(missing_ok=True)
        for path in sorted(self.folder.glob("chunk-*")):
            with contextlib.suppress(ValueError):
                self._next = max(self._next, int(path.name[6:12]) + 1)
            if path.suffix == ".bin":
                self._load_chunk(path)
            else:
                log.info("ignoring chunk %s of an older ledger version", path)

    def _load_chunk(self, path: Path) -> None:
        try:
            header, columns = read_chunk(path)
            if header.get("version") != LEDGER_VERSION:
                log.info("ignoring chunk %s of ledger version %s", path, header.get("version"))
                return
            files, pieces = header["files"], header["pieces"]
        except Exception as e:  # noqa: BLE001 - a damaged chunk only costs redoing its files
            log.warning("ignoring unreadable chunk %s: %s", path, e)
            return
        if columns is not None:
            self._columns[path] = columns
        for h, lo, hi in pieces:
            self.piece_at.setdefault(h, (path, lo, hi))
        for rec in files:
            self._index(rec)
    def _index(self, rec: dict) -> None:
        self.by_stat[stat_key(rec["abspath"], rec["size"], rec["mtime_ns"])] = rec
        if rec["hash"] and rec["status"] in CONTENT_STATUSES:
            self.by_hash.setdefault(rec["hash"], rec)

    def lookup(self, path: str, size: int, mtime_ns: int) -> dict | None:
        """The record of an unchanged file, or None."""
        return self.by_stat.get(stat_key(os.path.abspath(path), size, mtime_ns))

    def add(self, result: pw.FileResult) -> dict:
        """Remember a finished file (in memory until :meth:`flush`); returns its record."""
        if result.status == pw.KNOWN:
            known = self.by_hash[result.hash]
            result.status, result.reason = known["status"], known["reason"]
            result.seconds = known["seconds"]
            result.instruments = {int(k): v for k, v in known["instruments"].items()}
            rec = record_of(result)
            rec["events"] = known["events"]
        else:
            rec = record_of(result)
        if result.status == pw.OK and result.events is not None:
            if result.hash not in self.piece_at and result.hash not in self._pending_pieces:
                self._pending_pieces[result.hash] = result.events
        self._pending_records.append(rec)
        self._index(rec)
        return rec

    @property
    def pending(self) -> int:
        return len(self._pending_records)

    def flush(self) -> Path | None:
        """Write the pending records and pieces as one new chunk (atomically)."""
        if not self._pending_records:
            return None
        where, at = [], 0
        for h, piece in self._pending_pieces.items():
            where.append((h, at, at + len(piece)))
            at += len(piece)
        path = self.folder / f"chunk-{self._next:06d}.bin"
        header = {"version": LEDGER_VERSION, "pieces": where, "files": self._pending_records}
        write_chunk(path, header, list(self._pending_pieces.values()))
        self._next += 1
        self._load_chunk(path)  # maps the new events (the page cache still has them)
        self._pending_records = []
        self._pending_pieces = {}
        return path

    def piece(self, content_hash: str) -> EventArrays:
        """The events of a stored content (in a flushed chunk), as read-only views."""
        path, lo, hi = self.piece_at[content_hash]
        cols = self._columns[path]
        return EventArrays(*(cols[c][lo:hi] for c in COLUMNS))

    def load_pieces(self, hashes: list[str]) -> dict[str, EventArrays]:
        """The events of the given content hashes (all must be in flushed chunks)."""
        return {h: self.piece(h) for h in hashes}

    def close(self) -> None:
        self._columns.clear()  # the maps close when the last view of them goes
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
