"""The resume record of ``prep``: what has been done, kept in a few chunk files.

``DEST/.prep/chunk-NNNNNN.npz`` each hold a batch of finished files:

- ``inst``, ``pitch``, ``time``, ``vel``: the events of the batch's new pieces, concatenated;
  ``offsets`` (int64) delimits them and ``hashes`` (unicode) names each piece's content hash;
- ``meta``: UTF-8 JSON (as uint8) with a version and one record per file (path, absolute
  path, size, mtime, content hash, status, reason, events, seconds, note-ons per instrument).

A chunk is written to a temporary name and renamed, so it is either complete or absent;
everything in a chunk counts as done. Nothing here is pickled (``allow_pickle=False``).
A file is recognised without reading it by (absolute path, size, mtime); a file whose
content is known under another name is recognised by its hash and not ingested again.
Chunks written by another :data:`LEDGER_VERSION` are ignored (their files are redone).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..events import EventArrays
from . import prep_worker as pw

log = logging.getLogger(__name__)

LEDGER_VERSION = 1
LEDGER_DIR = ".prep"
COLUMNS = ("inst", "pitch", "time", "vel")
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
        self.piece_chunk: dict[str, Path] = {}
        self._pending_records: list[dict] = []
        self._pending_pieces: dict[str, EventArrays] = {}
        self._next = 0
        for tmp in self.folder.glob(".chunk-*.tmp"):  # left by a run killed while writing
            tmp.unlink(missing_ok=True)
        for path in sorted(self.folder.glob("chunk-*.npz")):
            self._next = max(self._next, int(path.stem.split("-")[1]) + 1)
            self._load_chunk(path)

    def _load_chunk(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode("utf-8"))
                hashes = [str(h) for h in z["hashes"]]
        except Exception as e:  # noqa: BLE001 - a damaged chunk only costs redoing its files
            log.warning("ignoring unreadable chunk %s: %s", path, e)
            return
        if meta.get("version") != LEDGER_VERSION:
            log.info("ignoring chunk %s of ledger version %s", path, meta.get("version"))
            return
        for h in hashes:
            self.piece_chunk.setdefault(h, path)
        for rec in meta["files"]:
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
            if result.hash not in self.piece_chunk and result.hash not in self._pending_pieces:
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
        hashes = list(self._pending_pieces)
        pieces = [self._pending_pieces[h] for h in hashes]
        lengths = [len(p) for p in pieces]
        arrays = {
            "offsets": np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
            "hashes": np.array(hashes, dtype="U32"),
            "meta": np.frombuffer(
                json.dumps({"version": LEDGER_VERSION, "files": self._pending_records}).encode(),
                dtype=np.uint8,
            ),
        }
        empty = EventArrays.empty()
        for k, name in enumerate(COLUMNS):
            parts = [p[k] for p in pieces] or [empty[k]]
            arrays[name] = np.concatenate(parts, dtype=empty[k].dtype)
        path = self.folder / f"chunk-{self._next:06d}.npz"
        tmp = self.folder / f".chunk-{self._next:06d}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._next += 1
        for h in hashes:
            self.piece_chunk.setdefault(h, path)
        self._pending_records.clear()
        self._pending_pieces.clear()
        return path

    def load_pieces(self, hashes: list[str]) -> dict[str, EventArrays]:
        """The events of the given content hashes (all must be in flushed chunks)."""
        by_chunk: dict[Path, list[str]] = defaultdict(list)
        for h in hashes:
            by_chunk[self.piece_chunk[h]].append(h)
        out: dict[str, EventArrays] = {}
        for path, wanted in by_chunk.items():
            with np.load(path, allow_pickle=False) as z:
                index = {str(h): k for k, h in enumerate(z["hashes"])}
                offsets = z["offsets"]
                cols = [z[c] for c in COLUMNS]
            for h in wanted:
                lo, hi = int(offsets[index[h]]), int(offsets[index[h] + 1])
                out[h] = EventArrays(*(c[lo:hi].copy() for c in cols))
        return out

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
