"""The per-file work of preprocessing: read once, hash, ingest, sanity-check.

This runs inside the worker processes of :mod:`.prep_pool`. Each file is read once as
bytes; the content hash is computed from those bytes; and, unless the content is already
known to the resume ledger, the bytes are handed to :func:`notochord_rt.midi.ingest.load_midi`.
Every failure becomes a :class:`FileResult` with a category and a readable reason, never an
exception, so the parent only has to deal with crashes and hangs. An ingest error is
``corrupt`` unless its message starts with ``too long`` (category ``too-long``) or
``no notes`` (``too-short``: the file parsed into no events).

The results of a batch of files travel to the parent as one small message
(:func:`pack_results` / :func:`unpack_results`): a tuple of plain values per file. The
events themselves go to the worker's spool file (:mod:`.prep_spool`) and only their
location travels, so they are never pickled, piped or copied by the parent.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import os
import stat
from dataclasses import dataclass, field

import numpy as np

from ...errors import MidiError
from ...events import EventArrays
from .limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_HOURS
from .spool import Location, SpoolWriter

# Report categories (also used by the parent for crashes, timeouts and directories).
OK = "ok"
KNOWN = "known"  # content already in the ledger: not re-ingested
NOT_A_FILE = "not-a-file"
UNREADABLE = "unreadable"
TOO_LARGE = "too-large"
CORRUPT = "corrupt"
TOO_LONG = "too-long"
TOO_SHORT = "too-short"
DUPLICATE = "duplicate"
CRASH = "crash"
TIMEOUT = "timeout"


def content_hash(data: bytes) -> str:
    """Content hash of a file: 128-bit BLAKE2b, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass
class WorkerConfig:
    """What every worker needs to know; sent once when the worker starts."""

    known_hashes: frozenset[str] = frozenset()
    max_bytes: int = DEFAULT_MAX_BYTES
    max_seconds: float = DEFAULT_MAX_HOURS * 3600.0
    loader: str = "notochord_rt.midi.ingest:load_midi"
    """``module:function`` taking bytes and returning an object with ``.events``."""
    log_level: int = logging.ERROR
    """Level of this package's loggers in the workers (ingest warns about odd files)."""
    spool_dir: str | None = None
    """Folder of the workers' spool files (needed by :func:`pack_results`)."""


@dataclass
class FileResult:
    """What happened to one file.

    For ``status == OK`` the piece is in ``events`` (in the worker) or at ``events_at``
    (a spool location, once :func:`pack_results` has stored it).
    """

    path: str
    size: int
    mtime_ns: int
    status: str
    hash: str | None = None
    reason: str = ""
    events: EventArrays | None = None
    seconds: float = 0.0
    instruments: dict[int, int] = field(default_factory=dict)
    events_at: Location | None = None

    @property
    def num_events(self) -> int:
        if self.events is not None:
            return len(self.events)
        return self.events_at[-1] if self.events_at is not None else 0


@functools.lru_cache(maxsize=4)
def _loader(spec: str):
    """The ingest function named by ``spec`` (imported in the worker: symusic is heavy)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _midi_error_category(message: str) -> str:
    """Report category of an ingest error: its message starts with the kind of problem."""
    if message.startswith("too long"):
        return TOO_LONG
    if message.startswith("no notes"):
        return TOO_SHORT  # it parsed, but into no events at all
    return CORRUPT


def worker_setup(config: WorkerConfig) -> None:
    """Once per worker process: per-file warnings of the ingest go to report.json, so this
    package's loggers only show records at ``config.log_level`` there. (Not done by
    :func:`process_file`, which may run in a caller's process whose logging is its own.)"""
    logging.getLogger("notochord_rt").setLevel(config.log_level)


def note_on_counts(events: EventArrays) -> dict[int, int]:
    """Number of note-ons of each instrument id in a piece (ids in increasing order)."""
    try:  # weights instead of a masked copy: one pass less (this runs once per file)
        counts = np.bincount(events.inst, weights=events.vel > 0)
    except ValueError:  # negative: not an instrument id, but count it all the same
        ids, n = np.unique(events.inst[events.vel > 0], return_counts=True)
        return dict(zip(ids.tolist(), n.tolist()))
    ids = counts.nonzero()[0]
    return dict(zip(ids.tolist(), counts[ids].astype(np.int64).tolist()))


def file_identity(path: str) -> tuple[int, int]:
    """(size, mtime in ns) of a file, or of the link itself if it is a broken link; else 0s.

    With the absolute path this is how the resume ledger recognises a file unread.
    """
    for stat_of in (os.stat, os.lstat):
        try:
            st = stat_of(path)
            return st.st_size, st.st_mtime_ns
        except OSError:
            continue
    return 0, 0


def check_events(events: EventArrays, max_seconds: float) -> tuple[str, str]:
    """Status and reason for ingested events that are unusable although they parsed."""
    if not len(events):
        return OK, ""
    lo, hi = events.time.min(), events.time.max()
    if lo >= 0 and hi <= max_seconds:  # NaN fails both tests, infinity the second
        return OK, ""  # the common case, in two passes over the times
    if len(events) and not np.isfinite(events.time).all():
        return CORRUPT, "event times are not finite (division 0 or a broken tempo map?)"
    if len(events) and (events.time < 0).any():
        return CORRUPT, "negative event times"
    if events.duration > max_seconds:
        hours, limit = events.duration / 3600, max_seconds / 3600
        return TOO_LONG, f"lasts {hours:.1f} h, more than {limit:g} h (huge delta times?)"
    return OK, ""


def _read_capped(fd: int, size: int, cap: int, regular: bool = False) -> bytes:
    """The bytes of an open file, at most ``cap + 1`` of them (so ``> cap`` means too big).

    ``size`` (from ``fstat``) sizes the first read, so a ``regular`` file takes one read;
    special files and files that grow are read on to their end or the cap.
    """
    parts = [os.read(fd, min(size, cap) + 1)]
    total = len(parts[0])
    if total <= size and regular:
        return parts[0]  # a short read of a regular file is its end
    while total <= cap:
        more = os.read(fd, min(cap + 1 - total, 1 << 20))
        if not more:
            break
        parts.append(more)
        total += len(more)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _ingest(result: FileResult, data: bytes, config: WorkerConfig) -> FileResult:
    """Hash ``data`` and, unless the content is known, ingest and check it."""
    result.hash = content_hash(data)
    if result.hash in config.known_hashes:
        result.status = KNOWN
        return result
    try:
        events = _loader(config.loader)(data).events
    except MidiError as e:
        result.status, result.reason = _midi_error_category(str(e)), str(e) or "unreadable MIDI"
        return result
    except MemoryError:
        result.status, result.reason = TOO_LARGE, "ran out of memory while parsing"
        return result
    except Exception as e:  # noqa: BLE001 - a parser bug must not stop the run
        result.status, result.reason = CORRUPT, f"parser error: {type(e).__name__}: {e}"
        return result
    result.status, result.reason = check_events(events, config.max_seconds)
    if result.status == OK:
        result.events = events
        result.seconds = events.duration
        result.instruments = note_on_counts(events)
    return result


def process_file(path: str, config: WorkerConfig) -> FileResult:
    """Read, hash and ingest one file; every failure is returned as a categorised result."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        size, mtime = file_identity(path)  # a broken link still has its own size and time
        return FileResult(path, size, mtime, UNREADABLE, reason=f"cannot open: {e.strerror or e}")
    try:
        st = os.fstat(fd)
        result = FileResult(path, st.st_size, st.st_mtime_ns, OK)
        if st.st_size > config.max_bytes:
            result.status = TOO_LARGE
            result.reason = f"{st.st_size} bytes, more than the limit of {config.max_bytes}"
            return result
        try:
            data = _read_capped(fd, st.st_size, config.max_bytes, stat.S_ISREG(st.st_mode))
        except OSError as e:
            result.status, result.reason = UNREADABLE, f"cannot read: {e.strerror or e}"
            return result
    finally:
        os.close(fd)
    if len(data) > config.max_bytes:  # it grew, or a special file without a size
        result.status = TOO_LARGE
        result.reason = f"more than the limit of {config.max_bytes} bytes"
        return result
    return _ingest(result, data, config)


# -- a batch of results as one message ------------------------------------------------------
_spools: dict[str, SpoolWriter] = {}


def result_weight(result: FileResult) -> int:
    """Size of a result in a batch message, in events (see ``SupervisedPool(weigh=...)``)."""
    return result.num_events


def pack_results(results: list[FileResult], config: WorkerConfig) -> list[tuple]:
    """The results of a batch as a list of plain tuples (see :func:`unpack_results`).

    The events of the batch's pieces are appended to this process's spool file in
    ``config.spool_dir`` as one block (written out before this returns); only their
    locations are packed.
    """
    if config.spool_dir is None:
        raise ValueError("pack_results needs WorkerConfig.spool_dir")
    spool = _spools.get(config.spool_dir)
    if spool is None:
        spool = _spools[config.spool_dir] = SpoolWriter(config.spool_dir)
    spooled = [r for r in results if r.events is not None]
    places = iter(spool.write_block([r.events for r in spooled]) if spooled else ())
    rows = []
    for r in results:
        where = next(places) if r.events is not None else r.events_at
        counts = r.instruments
        rows.append((r.path, r.size, r.mtime_ns, r.status, r.hash, r.reason, r.seconds,
                     where, list(counts), list(counts.values())))
    return rows


def unpack_results(rows: list[tuple]) -> list[FileResult]:
    """The :class:`FileResult` list of :func:`pack_results` (pieces as ``events_at``)."""
    return [
        FileResult(path, size, mtime, status, h, reason, None, seconds, dict(zip(ids, counts)),
                   where)
        for path, size, mtime, status, h, reason, seconds, where, ids, counts in rows
    ]
