"""Reproducible training-corpus recipe: rebuild a MIDI corpus from registry packages.

Users of this project have no shared data folder, so ``notochord-rt corpus build DEST``
regenerates an equivalent corpus from two freely installable sources:

* ``music21`` — every score bundled with the PyPI package ``music21`` written to MIDI
  by music21's own writer (see :mod:`.corpus_music21`);
* ``mma`` — seeded songs (forms with repeated sections, chord progressions in all
  keys, melodies) on the grooves of the Debian package ``mma`` (see :mod:`.corpus_mma`).

Degenerate pieces are left out and listed with the reason (:func:`screen_events`): no
melodic notes (drums only), very few notes, or a single pitch repeated. The build is
resumable (files already written are not redone) and records what it did in
``DEST/manifest.json``. This module holds the orchestration and the small helpers both
sources share (time limits, atomic writes, progress, the screen).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..atomic import atomic_write_bytes as _atomic_write_bytes
from ..errors import MidiError, UserError
from ..events import EventArrays, is_drum
from ..midi.ingest import load_midi

log = logging.getLogger(__name__)

SOURCES = ("music21", "mma")
MANIFEST = "manifest.json"
DEFAULT_TIME_LIMIT = 300.0
MIN_MELODIC_NOTES = 16
"""A piece with fewer melodic (non-drum) notes is left out of the corpus."""
MIN_PITCHES = 3
"""A piece whose melodic notes use fewer distinct pitches is left out."""


def screen_events(events: EventArrays) -> str | None:
    """Why a piece is unfit for training (``None`` if it is fit).

    Left out: pieces without melodic notes (drum grooves: a model trained on many of
    them lets drums take over), with fewer than :data:`MIN_MELODIC_NOTES` melodic notes,
    or whose melodic notes use fewer than :data:`MIN_PITCHES` pitches (one note
    repeated).
    """
    on = events.vel > 0
    melodic = on & ~is_drum(events.inst)
    n = int(melodic.sum())
    if n == 0:
        drums = int(on.sum())
        return f"no melodic notes (drums only, {drums} drum notes)" if drums else "no notes"
    if n < MIN_MELODIC_NOTES:
        return f"only {n} melodic notes (fewer than {MIN_MELODIC_NOTES})"
    pitches = len(np.unique(events.pitch[melodic]))
    if pitches < MIN_PITCHES:
        return f"melodic notes use only {pitches} pitch(es) (fewer than {MIN_PITCHES})"
    return None


def screen_midi(source: str | os.PathLike | bytes) -> str | None:
    """:func:`screen_events` of a MIDI file (path or bytes), read with the same ingest
    as ``notochord-rt prep``; an unreadable file gives its reason too."""
    try:
        events = load_midi(source).events
    except MidiError as e:
        return f"unreadable MIDI: {e}"
    return screen_events(events)


def screen_folder(folder: str | os.PathLike,
                  progress: ProgressFactory | None = None) -> dict[str, str]:
    """Screen every ``*.mid`` file under ``folder``: relative path → reason, for the
    files that would be left out (sorted)."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"no folder {root}")
    files = sorted(p for p in root.rglob("*.mid") if not p.name.startswith("."))
    bar = (progress or null_progress)("screen", len(files))
    out: dict[str, str] = {}
    try:
        for p in files:
            reason = screen_midi(p)
            if reason is not None:
                out[p.relative_to(root).as_posix()] = reason
            bar.update(1)
    finally:
        bar.close()
    return out


def reason_counts(reasons: Iterable[str]) -> dict[str, int]:
    """How many left-out pieces per kind of reason (the reason up to a colon, without
    parentheses, numbers as ``N``), for manifests and reports."""
    counts: dict[str, int] = {}
    for r in reasons:
        kind = re.sub(r"\d+", "N", re.sub(r"\s*\(.*?\)", "", r.split(":", 1)[0])).strip()
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


class Progress(Protocol):
    """What a progress bar must offer (``tqdm`` does): ``update(n)`` and ``close()``."""

    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


#: Makes a progress bar from a description and a total; the CLI passes a tqdm factory.
ProgressFactory = Callable[[str, int], Progress]


class _NullProgress:
    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None


def null_progress(desc: str, total: int) -> Progress:
    """A progress factory that shows nothing (the library default)."""
    return _NullProgress()


class ScoreTimeout(BaseException):
    """Raised inside a :func:`time_limit` block that ran past its limit.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that the ``except Exception``
    blocks inside music21 cannot swallow it and carry on without a limit.
    """


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`ScoreTimeout` if the block runs longer than ``seconds``.

    Uses ``SIGALRM`` so it interrupts pure-Python work (music21 is pure Python) without
    threads. Where that is impossible (not the main thread, or no ``setitimer`` on this
    platform) the block runs without a limit and a debug message says so.
    """
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        if seconds:
            log.debug("time limit of %.0f s not enforceable here; running without it", seconds)
        yield
        return

    def _expired(signum: int, frame: object) -> None:
        raise ScoreTimeout(f"ran past the time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    # Re-fires every second after expiry, in case a bare ``except:`` swallowed the first.
    signal.setitimer(signal.ITIMER_REAL, float(seconds), 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name, so a killed build never
    leaves a half-written file that a resumed build would take as done."""
    _atomic_write_bytes(path, data, make_parents=True)


def stride_sample(items: Sequence, limit: int | None) -> list:
    """``limit`` items spread evenly over ``items`` (all of them when ``limit`` is None).

    Deterministic, and a small sample still covers every part of a sorted list.
    """
    items = list(items)
    if limit is None or limit >= len(items):
        return items
    if limit <= 0:
        return []
    n = len(items)
    return [items[(2 * i + 1) * n // (2 * limit)] for i in range(limit)]


def parse_sources(text: str) -> list[str]:
    """Turn ``"music21,mma"`` into a checked list of source names."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UserError("--sources is empty; choose from " + ",".join(SOURCES))
    bad = [s for s in names if s not in SOURCES]
    if bad:
        raise UserError(
            f"unknown corpus source(s) {','.join(bad)}; choose from {','.join(SOURCES)}"
        )
    return list(dict.fromkeys(names))


def build(
    dest: str | os.PathLike,
    sources: Sequence[str] = SOURCES,
    *,
    jobs: int | None = None,
    limit: int | None = None,
    songs_per_groove: int = 1,
    seed: int = 0,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT,
    mma_binary: str | None = None,
    mma_lib: str | os.PathLike | None = None,
    progress: ProgressFactory = null_progress,
) -> dict:
    """Build (or resume) the corpus under ``dest`` and return the manifest written there.

    ``limit`` caps each source (music21: that many score files spread over the corpus,
    and at most that many tunes of an ABC opus; mma: that many grooves). Every
    requested source is checked for availability before any work starts.
    ``songs_per_groove`` and ``seed`` decide the mma songs (see :mod:`.corpus_mma`).
    """
    from . import mma as corpus_mma
    from . import scores as corpus_music21

    sources = list(dict.fromkeys(sources))
    for name in sources:
        if name not in SOURCES:
            raise UserError(f"unknown corpus source {name!r}; choose from {','.join(SOURCES)}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if songs_per_groove < 1:
        raise UserError(f"--songs-per-groove must be at least 1, got {songs_per_groove}")
    jobs = max(1, jobs or os.cpu_count() or 1)

    # Check every tool first: a missing mma should not surface after half an hour of music21.
    mma_tool = None
    if "music21" in sources:
        corpus_music21.require_music21()
    if "mma" in sources:
        mma_tool = corpus_mma.require_mma(mma_binary, mma_lib)

    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(root)
    manifest.update(
        {
            "recipe": "notochord-rt corpus build",
            "notochord_rt": _own_version(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        }
    )
    manifest.setdefault("sources", {})
    for name in sources:
        start = time.perf_counter()
        if name == "music21":
            section = corpus_music21.build_music21(
                root / "music21",
                jobs=jobs,
                limit=limit,
                time_limit_s=time_limit_s,
                progress=progress,
            )
        else:
            assert mma_tool is not None
            section = corpus_mma.build_mma(
                root / "mma",
                mma_tool,
                jobs=jobs,
                limit=limit,
                songs_per_groove=songs_per_groove,
                seed=seed,
                time_limit_s=time_limit_s,
                progress=progress,
            )
        section["seconds"] = round(time.perf_counter() - start, 2)
        section["jobs"] = jobs
        section["limit"] = limit
        manifest["sources"][name] = section
        write_manifest(root, manifest)
        log.info(
            "%s: %d written, %d cached, %d skipped, %d left out in %.1f s",
            name,
            section["written"],
            section["cached"],
            len(section["skipped"]),
            len(section["left_out"]),
            section["seconds"],
        )
    return manifest


def read_manifest(root: Path) -> dict:
    """The manifest of an earlier build under ``root`` (an empty dict if there is none)."""
    return read_json(root / MANIFEST)


def read_json(path: Path) -> dict:
    """A JSON object written by an earlier build (an empty dict if missing or unreadable)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning("ignoring unreadable %s (%s); it will be rewritten", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def write_manifest(root: Path, manifest: dict) -> Path:
    """Write ``manifest`` as ``root/manifest.json`` (atomically)."""
    path = root / MANIFEST
    atomic_write_bytes(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return path


def _own_version() -> str:
    from .. import __version__

    return str(__version__)
