"""Preprocessing: folders of MIDI files -> a prepared dataset folder (``notochord-rt prep``).

:func:`prepare` finds every ``.mid``/``.midi``/``.kar`` file (any case) under the sources,
reads each file once in a worker process, hashes its bytes, ingests it with
:func:`notochord_rt.midi.ingest.load_midi` and writes:

- ``DEST/train``, ``DEST/valid``, ``DEST/test``: the pieces, with :class:`.store.SplitWriter`
  (read them with :class:`.store.EventStore`);
- ``DEST/summary.json`` and ``DEST/report.json`` (see :mod:`.report`);
- ``DEST/.prep/``: the resume record (see :mod:`.prep_ledger`).

Design points:

- **Splits** are decided by the content hash alone: the first 64 bits of the BLAKE2b hash as
  a number ``u`` in [0, 1) give ``valid`` if ``u < 0.03``, ``test`` if ``u < 0.05`` (so 3 %
  valid, 2 % test) and ``train`` otherwise. Adding or removing files never moves others.
- **Duplicates** (same bytes) are stored once, under the first path in discovery order;
  the others are reported as duplicates of it.
- **Output is a function of the inputs**: DEST describes the files found under the
  sources of this run; the ledger is only a cache, so unchanged files are not read again,
  known contents are not parsed again, and edited or deleted files do not linger.
- **Robust**: a worker that crashes or hangs costs only its file, which is reported with
  category ``crash`` or ``timeout`` (see :mod:`.prep_pool`). Crashes, timeouts and I/O
  errors are remembered like any other outcome; ``retry_failed=True`` tries them again.
- **Resumable**: finished files are committed in chunks every ``flush_every`` files or
  ``flush_seconds`` seconds and when the run stops (Ctrl-C included), so an interrupted run
  loses at most the files in flight (the batches the workers hold), or the last
  ``flush_seconds`` if the process is killed; a file is either committed with its events or
  done again.
- **Cheap per file**: files go to the workers in batches, and the results of a batch come
  back as one small message (:func:`.prep_worker.pack_results`); the events stay where the
  worker spooled them (:mod:`.prep_spool`) until the splits are streamed from the
  memory-mapped spools, so little but the ingest itself costs anything per file.
- The minimum number of events is applied when the splits are written, so changing it
  needs no re-parsing.
- **Nothing found is silently dropped**: a folder that cannot be listed is reported
  (category ``unreadable``), and names that are not valid UTF-8 are written readably
  into the JSON outputs (each undecodable byte as ``\\xNN``, see
  :func:`.report.readable_text`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from ...errors import UserError
from ..store import SPLITS, SplitWriter
from . import worker as pw
from .ledger import RETRYABLE, Ledger
from .limits import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_HOURS,
    DEFAULT_MIN_EVENTS,
    DEFAULT_TIMEOUT,
)
from .pool import PoolError, SupervisedPool, TaskOutcome
from .report import (
    InstrumentHistogram,
    PrepSummary,
    SplitStats,
    readable_text,
    write_report,
    write_summary,
)
from .spool import runs as spool_runs

log = logging.getLogger(__name__)

MIDI_SUFFIXES = (".mid", ".midi", ".kar")
VALID_FRACTION = 0.03
TEST_FRACTION = 0.02
MAX_MESSAGE_EVENTS = 1 << 22
"""A worker sends its results early once they hold this many events (~56 MB)."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: files finished so far out of the files to process this run."""


def is_midi_name(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


def discover(sources: Iterable[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """MIDI files under ``sources`` in a deterministic order, and directories named like one.

    A source may be a folder (searched recursively, sorted) or a single file (taken as it
    is, whatever its name). A path reached twice is listed once. Raises
    :class:`UserError` for a source that does not exist.
    """
    files, not_files, _, _ = _discover(sources)
    return files, not_files


def _discover(sources: Iterable[str | os.PathLike]
              ) -> tuple[list[str], list[str], dict[str, str], list[tuple[str, str]]]:
    """:func:`discover`, plus the absolute path of everything found (made once, here) and
    the folders that could not be listed, as (path, reason)."""
    files: list[str] = []
    not_files: list[str] = []
    seen: set[str] = set()
    absolute: dict[str, str] = {}
    unreadable: list[tuple[str, str]] = []

    def refused(e: OSError) -> None:
        unreadable.append((os.fsdecode(e.filename) if e.filename is not None else "?",
                           e.strerror or str(e)))

    def add(path: str, into: list[str], key: str | None = None) -> None:
        key = key or os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            absolute[path] = key
            into.append(path)

    for src in sources:
        src = os.fspath(src)
        if os.path.isfile(src):
            add(src, files)
        elif os.path.isdir(src):
            for root, dirs, names in os.walk(src, onerror=refused):
                dirs.sort()
                absroot = os.path.abspath(root)  # once per folder, not once per file
                for d in dirs:
                    if is_midi_name(d):
                        add(os.path.join(root, d), not_files, os.path.join(absroot, d))
                for name in sorted(names):
                    if is_midi_name(name):
                        add(os.path.join(root, name), files, os.path.join(absroot, name))
        elif os.path.lexists(src):
            add(src, files)  # a broken link or a special file: the worker reports it
        else:
            raise UserError(f"no such file or folder: {readable_text(src)}")
    return files, not_files, absolute, unreadable


def split_of(content_hash: str) -> str:
    """The split of a piece, from its content hash (hex): train, valid or test."""
    u = int(content_hash[:16], 16) / 2.0**64
    if u < VALID_FRACTION:
        return "valid"
    if u < VALID_FRACTION + TEST_FRACTION:
        return "test"
    return "train"


def _result_of(outcome: TaskOutcome) -> pw.FileResult:
    if outcome.kind == "done":
        return outcome.value
    path = outcome.task
    size, mtime = pw.file_identity(path)
    if outcome.kind == "timeout":
        reason = f"parsing took too long ({outcome.detail}); the worker was killed"
        return pw.FileResult(path, size, mtime, pw.TIMEOUT, reason=reason)
    reason = f"the parser crashed ({outcome.detail})"
    return pw.FileResult(path, size, mtime, pw.CRASH, reason=reason)


def prepare(
    sources: Sequence[str | os.PathLike],
    dest: str | os.PathLike,
    *,
    jobs: int | None = None,
    min_events: int = DEFAULT_MIN_EVENTS,
    limit: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_hours: float = DEFAULT_MAX_HOURS,
    retry_failed: bool = False,
    flush_every: int = 1000,
    flush_seconds: float = 60.0,
    progress: Progress | None = None,
    loader: str | None = None,
    task: Callable[[str, pw.WorkerConfig], pw.FileResult] | None = None,
) -> PrepSummary:
    """Prepare the MIDI files under ``sources`` into the dataset folder ``dest``.

    ``jobs`` worker processes (default: CPU count) each parse one file at a time, with
    ``timeout`` seconds per file. Files bigger than ``max_bytes`` or longer than
    ``max_hours`` (the ingest itself refuses pieces over 6 h) and pieces with fewer than
    ``min_events`` events are reported, not stored. ``limit`` keeps only the first that
    many files found. ``loader`` names another ingest function as ``"module:function"``;
    ``task`` replaces the per-file work :func:`~.worker.process_file` (a picklable
    callable; seams for tests and benchmarks). Returns the summary that is also written to
    ``dest/summary.json``.
    """
    if min_events < 0:
        raise UserError(f"--min-events must be 0 or more, got {min_events}")
    if jobs is not None and jobs < 1:
        raise UserError(f"-j/--jobs must be at least 1, got {jobs}")
    if limit is not None and limit < 0:
        raise UserError(f"--limit must be 0 or more, got {limit}")
    if timeout <= 0:
        raise UserError(f"the per-file timeout must be positive, got {timeout}")
    if max_bytes <= 0 or max_hours <= 0:
        raise UserError(f"size and duration limits must be positive, got {max_bytes} bytes, "
                        f"{max_hours} hours")
    with frozen_heap():
        return _prepare(sources, Path(dest), jobs, min_events, limit, timeout, max_bytes,
                        max_hours, retry_failed, flush_every, flush_seconds, progress, loader,
                        task or pw.process_file)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects that exist now out of the garbage collector's scans for a while.

    A full collection walks every object of the process: with torch or a big cache
    loaded, one costs as much as preprocessing a few hundred files. Nothing made before a
    run takes part in its cycles, so ``gc.freeze`` them (unless someone else froze
    objects already: theirs is the say) and thaw them afterwards.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _prepare(sources, dest: Path, jobs, min_events, limit, timeout, max_bytes, max_hours,
             retry_failed, flush_every, flush_seconds, progress, loader, task) -> PrepSummary:
    """:func:`prepare` after its arguments are checked."""
    started, cpu_started, worker_cpu = time.monotonic(), time.process_time(), 0.0
    files, not_files, absolute, unreadable = _discover(sources)
    cpu = [time.process_time()]  # after each phase: discovery, ledger, workers, outputs
    if limit is not None:
        files = files[:limit]
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--out {dest} exists and is not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(dest)
    try:
        records: dict[str, dict] = {}
        todo = []
        for path in files:
            rec = (ledger.lookup(path, *pw.file_identity(path), absolute[path])
                   if ledger.by_stat else None)
            if rec is not None and not (retry_failed and rec["status"] in RETRYABLE):
                records[path] = rec
            else:
                todo.append(path)
        log.info("%d files found, %d to process, %d known", len(files), len(todo), len(records))
        cpu.append(time.process_time())
        if todo:
            config = pw.WorkerConfig(frozenset(ledger.by_hash), max_bytes, max_hours * 3600,
                                     spool_dir=str(ledger.folder))
            if loader:
                config.loader = loader
            if logging.getLogger("notochord_rt").getEffectiveLevel() < logging.WARNING:
                config.log_level = logging.getLogger("notochord_rt").getEffectiveLevel()
            worker_cpu = _process(todo, absolute, ledger, records, config,
                                  jobs or os.cpu_count() or 1, timeout, flush_every,
                                  flush_seconds, progress, task)
        cpu.append(time.process_time())
        summary = _finalize(dest, ledger, files, not_files, records, min_events, unreadable)
    finally:
        ledger.close()
    cpu.append(time.process_time())
    phases = ("finding files", "reading the ledger", "running the workers", "writing outputs")
    log.info("CPU ms in this process: %s; in the workers: %.1f", ", ".join(
        f"{name} {1e3 * (b - a):.1f}" for name, a, b in zip(phases, [cpu_started, *cpu], cpu)),
        1e3 * worker_cpu)
    summary.processed_now = len(todo)
    summary.reused = len(files) - len(todo)
    summary.elapsed_s = time.monotonic() - started
    summary.cpu_s = time.process_time() - cpu_started + worker_cpu
    write_summary(dest, summary)
    return summary


def _process(todo, absolute, ledger, records, config, jobs, timeout, flush_every, flush_seconds,
             progress, task):
    """Run the workers over ``todo``, committing results to the ledger as they come."""
    if progress:
        progress(0, len(todo))
    last_flush = time.monotonic()
    module = config.loader.partition(":")[0]
    pool = SupervisedPool(task, config, jobs=min(jobs, len(todo)), timeout=timeout,
                          preload=[pw.__name__, module], encode=pw.pack_results,
                          decode=pw.unpack_results, weigh=pw.result_weight,
                          max_message=MAX_MESSAGE_EVENTS, setup=pw.worker_setup)
    try:
        for done, outcome in enumerate(_outcomes(pool, todo), 1):
            result = _result_of(outcome)
            records[result.path] = ledger.add(result, absolute[result.path])
            if progress:
                progress(done, len(todo))
            now = time.monotonic()
            if ledger.pending >= flush_every or now - last_flush >= flush_seconds:
                ledger.flush()
                last_flush = now
    finally:
        pool.close()
        ledger.flush()
    return pool.cpu_seconds


def _outcomes(pool: SupervisedPool, todo: list[str]) -> Iterator[TaskOutcome]:
    """The pool's outcomes; a failure to store results (disk full?) is the user's to fix."""
    try:
        yield from pool.run(todo)
    except PoolError as e:
        raise UserError(f"prep stopped: {e}") from e


def _finalize(dest, ledger, files, not_files, records, min_events, unreadable=()
              ) -> PrepSummary:
    """Apply duplicates and the minimum length, write the splits, report and summary."""
    skipped: list[dict] = [
        {"path": d, "category": pw.UNREADABLE,
         "reason": f"the folder cannot be read ({why}); nothing in it was prepared"}
        for d, why in unreadable
    ]
    skipped += [
        {"path": d, "category": pw.NOT_A_FILE, "reason": "is a folder, not a MIDI file"}
        for d in not_files
    ]
    chosen: dict[str, list[tuple[str, dict]]] = {s: [] for s in SPLITS}
    first_of: dict[str, str] = {}
    duplicates = 0
    for path in files:
        rec = records[path]
        h = rec["hash"]
        if h and h in first_of:
            duplicates += 1
            skipped.append({"path": path, "category": pw.DUPLICATE, "duplicate_of": first_of[h],
                            "reason": f"same content as {first_of[h]}"})
            continue
        if h:
            first_of[h] = path
        if rec["status"] != pw.OK:
            skipped.append({"path": path, "category": rec["status"], "reason": rec["reason"]})
        elif rec["events"] < min_events:
            reason = f"{rec['events']} events, fewer than the minimum {min_events}"
            skipped.append({"path": path, "category": pw.TOO_SHORT, "reason": reason})
        else:
            chosen[split_of(h)].append((path, rec))
    summary = PrepSummary(dest=str(dest), min_events=min_events,
                          split_fractions={"valid": VALID_FRACTION, "test": TEST_FRACTION})
    hist = InstrumentHistogram()
    for split in SPLITS:
        entries = chosen[split]
        places = [ledger.piece_at[rec["hash"]] for _, rec in entries]
        with SplitWriter(dest, split, sum(w[4] for w in places)) as writer:
            for run, lengths in spool_runs(places):  # bytes straight from the mapped spools
                writer.add_raw(ledger.spools.raw(run), lengths)
            writer.finish([{"path": readable_text(p), "hash": rec["hash"],
                            "events": rec["events"], "seconds": rec["seconds"]}
                           for p, rec in entries])
        stats = SplitStats(len(entries), sum(r["events"] for _, r in entries),
                           sum(r["seconds"] for _, r in entries) / 3600)
        summary.splits[split] = stats
        for _, rec in entries:
            hist.add(rec["instruments"])
    write_report(dest, skipped)
    summary.files_seen = len(files) + len(not_files) + len(unreadable)
    summary.files_ok = sum(s.pieces for s in summary.splits.values())
    summary.duplicates = duplicates
    summary.files_skipped = len(skipped) - duplicates
    categories: dict[str, int] = {}
    for entry in skipped:
        categories[entry["category"]] = categories.get(entry["category"], 0) + 1
    summary.skipped_by_category = dict(sorted(categories.items()))
    summary.events = sum(s.events for s in summary.splits.values())
    summary.hours = sum(s.hours for s in summary.splits.values())
    summary.instruments = hist.as_dict()
    return summary
