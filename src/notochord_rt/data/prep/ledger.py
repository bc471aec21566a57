"""The resume record of ``prep``: what has been done, kept in a few chunk files.

``DEST/.prep/chunk-NNNNNN.json`` each record a batch of finished files: the ledger version,
one record per file (path, absolute path, size, mtime, content hash, status, reason,
events, seconds, note-ons per instrument) and, for each content first stored in the
chunk, where its events are: ``[content hash, *location]`` (a spool location, see
:data:`.prep_spool.Location`). The
events themselves are in the workers' spool files (:mod:`.prep_spool`), which a chunk
makes durable (``fsync``) before it is written.

A chunk is written to a temporary name, synced to disk and renamed, so it is either
complete or absent; everything in a chunk counts as done. Nothing here is pickled. A file
is recognised without reading it by (absolute path, size, mtime); a file whose content is
known under another name is recognised by its hash and not ingested again. Chunks of
another :data:`LEDGER_VERSION` (or format: the ``.npz`` chunks of version 1) are ignored,
and so are stored pieces whose spool is missing or too short: their files are redone.
Spools that no chunk refers to (left by crashed workers or killed runs) are deleted when
the ledger is opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path

from ...atomic import atomic_write_bytes
from ...errors import UserError
from ...events import EventArrays
from . import worker as pw
from .spool import Location, SpoolReader, SpoolWriter, is_spool_name
from .spool import sync as sync_spools

log = logging.getLogger(__name__)

LEDGER_VERSION = 2
LEDGER_DIR = ".prep"
CONTENT_STATUSES = (pw.OK, pw.CORRUPT, pw.TOO_LONG)
"""Outcomes that depend on the content only, so they carry over to identical files."""
RETRYABLE = (pw.CRASH, pw.TIMEOUT, pw.UNREADABLE)


def stat_key(abspath: str, size: int, mtime_ns: int) -> tuple[str, int, int]:
    return (abspath, int(size), int(mtime_ns))


def record_of(result: pw.FileResult, abspath: str | None = None) -> dict:
    """The JSON record of a file's result (without its events)."""
    return {
        "path": result.path,
        "abspath": abspath or os.path.abspath(result.path),
        "size": result.size,
        "mtime_ns": result.mtime_ns,
        "hash": result.hash,
        "status": result.status,
        "reason": result.reason,
        "events": result.num_events,
        "seconds": result.seconds,
        "instruments": {str(k): v for k, v in result.instruments.items()},
    }


def write_json_atomically(path: Path, obj) -> None:
    """Write ``obj`` as compact JSON to ``path`` atomically and durably."""
    atomic_write_bytes(path, json.dumps(obj, separators=(",", ":")).encode())


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
        self.piece_at: dict[str, Location] = {}
        """Where the events of each stored content are (a spool location)."""
        self.spools = SpoolReader(self.folder)
        self._writer: SpoolWriter | None = None  # for pieces given in memory
        self._pending_records: list[dict] = []
        self._pending_pieces: dict[str, Location] = {}
        self._next = 0
        for tmp in self.folder.glob(".chunk-*.tmp"):  # left by a run killed while writing
            tmp.unlink(missing_ok=True)
        records: list[dict] = []
        for path in sorted(self.folder.glob("chunk-*")):
            with contextlib.suppress(ValueError):
                self._next = max(self._next, int(path.name[6:12]) + 1)
            records += self._load_chunk(path)
        lost = 0
        for rec in records:
            if rec["status"] == pw.OK and rec["hash"] not in self.piece_at:
                lost += 1  # its events are gone (a spool cut short or deleted): redo it
                self.by_stat.pop(stat_key(rec["abspath"], rec["size"], rec["mtime_ns"]), None)
            else:
                self._index(rec)
        if lost:
            log.warning("%d finished files will be done again: their stored events are missing "
                        "from %s", lost, self.folder)
        used = {where[0] for where in self.piece_at.values()}
        for spool in self.folder.iterdir():
            if is_spool_name(spool.name) and spool.name not in used:
                spool.unlink(missing_ok=True)  # nothing committed refers to it

    def _load_chunk(self, path: Path) -> list[dict]:
        """Note the pieces of a chunk that their spools hold; return its file records."""
        if path.suffix != ".json":
            log.info("ignoring chunk %s of an older ledger format", path)
            return []
        try:
            chunk = json.loads(path.read_bytes())
            if chunk.get("version") != LEDGER_VERSION:
                log.info("ignoring chunk %s of ledger version %s", path, chunk.get("version"))
                return []
            files, pieces = chunk["files"], chunk["pieces"]
        except Exception as e:  # noqa: BLE001 - a damaged chunk only costs redoing its files
            log.warning("ignoring unreadable chunk %s: %s", path, e)
            return []
        for h, *place in pieces:
            where = tuple(place)
            if len(where) == 5 and h not in self.piece_at and self.spools.holds(where):
                self.piece_at[h] = where
        return files

    def _index(self, rec: dict) -> None:
        self.by_stat[stat_key(rec["abspath"], rec["size"], rec["mtime_ns"])] = rec
        if rec["hash"] and rec["status"] in CONTENT_STATUSES:
            self.by_hash.setdefault(rec["hash"], rec)

    def lookup(self, path: str, size: int, mtime_ns: int, abspath: str | None = None
               ) -> dict | None:
        """The record of an unchanged file (``abspath``: its absolute path, if known), or None."""
        return self.by_stat.get(stat_key(abspath or os.path.abspath(path), size, mtime_ns))

    def add(self, result: pw.FileResult, abspath: str | None = None) -> dict:
        """Remember a finished file (in memory until :meth:`flush`); returns its record.

        The piece of an ``OK`` result is taken from ``result.events_at`` (where a worker
        spooled it) or else from ``result.events`` (spooled here). ``abspath`` is the
        file's absolute path, if the caller has it already.
        """
        if result.status == pw.KNOWN:
            known = self.by_hash[result.hash]
            result.status, result.reason = known["status"], known["reason"]
            result.seconds = known["seconds"]
            result.instruments = {int(k): v for k, v in known["instruments"].items()}
            rec = record_of(result, abspath)
            rec["events"] = known["events"]
        else:
            rec = record_of(result, abspath)
            h = result.hash
            if (result.status == pw.OK and h not in self.piece_at
                    and h not in self._pending_pieces):
                where = result.events_at
                if where is None:
                    if self._writer is None:
                        self._writer = SpoolWriter(self.folder)
                    events = result.events if result.events is not None else EventArrays.empty()
                    where = self._writer.write_block([events])[0]
                self._pending_pieces[h] = where
        self._pending_records.append(rec)
        self._index(rec)
        return rec

    @property
    def pending(self) -> int:
        return len(self._pending_records)

    def flush(self) -> Path | None:
        """Commit the pending records and pieces as one new chunk (atomically, durably)."""
        if not self._pending_records:
            return None
        sync_spools(self.folder, {where[0] for where in self._pending_pieces.values()})
        path = self.folder / f"chunk-{self._next:06d}.json"
        pieces = [[h, *where] for h, where in self._pending_pieces.items()]
        write_json_atomically(path, {"version": LEDGER_VERSION, "pieces": pieces,
                                     "files": self._pending_records})
        self._next += 1
        self.piece_at.update(self._pending_pieces)
        self._pending_records = []
        self._pending_pieces = {}
        return path

    def piece(self, content_hash: str) -> EventArrays:
        """The events of a stored content (committed by :meth:`flush`), as read-only views."""
        return self.spools.piece(self.piece_at[content_hash])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.spools.close()  # the maps close when the last view of them goes
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
