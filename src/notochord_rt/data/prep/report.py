"""The outcome of ``prep``: ``summary.json`` (statistics) and ``report.json`` (skipped files).

``report.json`` is ``{"version": 1, "skipped": [...]}`` with one entry per file that is not
in the store: ``path``, ``category`` (see below), ``reason`` (a sentence a person can act on)
and, for duplicates, ``duplicate_of`` (the first path, in discovery order, with that content).

Paths are written as text: a name that is not valid UTF-8 (on POSIX a file name is any
bytes) shows each undecodable byte as ``\\xNN`` (:func:`readable_text`), so the JSON is
valid UTF-8 and a person can still find the file.

Categories: ``not-a-file`` (e.g. a directory named ``x.mid``), ``unreadable`` (I/O error,
or a folder that cannot be listed), ``too-large`` (file size or memory), ``corrupt`` (does
not parse, or parses into unusable times), ``too-long`` (longer than the duration limit),
``too-short`` (fewer events than the minimum), ``duplicate`` (same bytes as an earlier
file), ``crash`` (the parser killed its process), ``timeout`` (the parser ran past the
per-file time limit).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ...atomic import atomic_write_text
from ...events import instrument_name

REPORT_VERSION = 1


def readable_text(text: str) -> str:
    """``text`` as valid Unicode: the undecodable bytes of a file name (which Python keeps
    as lone surrogates, ``surrogateescape``) become ``\\xNN``; other text is unchanged.

    JSON written from lone surrogates is refused by strict readers, and they mean nothing
    to a person; ``\\xNN`` is what ``ls -b`` shows.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that did not come from a byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _readable(obj):
    """``obj`` (parsed-JSON shapes) with every string passed through :func:`readable_text`."""
    if isinstance(obj, str):
        return readable_text(obj)
    if isinstance(obj, dict):
        return {readable_text(str(k)): _readable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_readable(v) for v in obj]
    return obj


@dataclass
class SplitStats:
    pieces: int = 0
    events: int = 0
    hours: float = 0.0


@dataclass
class PrepSummary:
    """Statistics of a prepared folder (what ``summary.json`` holds)."""

    dest: str
    files_seen: int = 0
    files_ok: int = 0
    files_skipped: int = 0
    duplicates: int = 0
    processed_now: int = 0
    reused: int = 0
    events: int = 0
    hours: float = 0.0
    skipped_by_category: dict[str, int] = field(default_factory=dict)
    splits: dict[str, SplitStats] = field(default_factory=dict)
    instruments: dict[str, dict[str, int]] = field(default_factory=dict)
    split_fractions: dict[str, float] = field(default_factory=dict)
    min_events: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    """CPU seconds of this process plus the workers' time on their batches of files (reading,
    ingest, spooling the events, packing the results; not the workers' start)."""

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["splits"] = {k: asdict(v) for k, v in self.splits.items()}
        return out

    def lines(self) -> list[str]:
        """A short human-readable summary (the CLI prints it)."""
        out = [
            f"files: {self.files_seen} seen, {self.files_ok} ok, {self.files_skipped} skipped, "
            f"{self.duplicates} duplicates ({self.processed_now} processed now, "
            f"{self.reused} reused from earlier runs)",
            f"events: {self.events:,} ({self.hours:.2f} h of music)",
        ]
        out.append(
            "splits: "
            + ", ".join(
                f"{s} {st.pieces} pieces / {st.events:,} events" for s, st in self.splits.items()
            )
        )
        if self.skipped_by_category:
            cats = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped_by_category.items()))
            out.append(f"skipped: {cats}")
        top = list(self.instruments.items())[:5]
        if top:
            out.append(
                "top instruments: " + ", ".join(f"{n} ({v['pieces']})" for n, v in top)
            )
        out.append(f"time: {self.elapsed_s:.1f} s ({self.cpu_s:.1f} s CPU)")
        return out


class InstrumentHistogram:
    """Pieces and note-ons per instrument, by name."""

    def __init__(self) -> None:
        self.pieces: dict[int, int] = {}
        self.notes: dict[int, int] = {}

    def add(self, note_ons: dict[int, int] | dict[str, int]) -> None:
        """Count a piece with these note-ons per instrument id (ids as ints or strings)."""
        pieces, notes = self.pieces, self.notes
        for inst, n in note_ons.items():
            inst = int(inst)
            pieces[inst] = pieces.get(inst, 0) + 1
            notes[inst] = notes.get(inst, 0) + int(n)

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{name: {"id", "pieces", "notes"}}``, most used first."""
        order = sorted(self.pieces, key=lambda i: (-self.pieces[i], -self.notes[i], i))
        return {
            instrument_name(i): {"id": i, "pieces": self.pieces[i], "notes": self.notes[i]}
            for i in order
        }


def readable_json(obj, levels: int = 2, indent: str = "") -> str:
    """JSON with one entry per line for the first ``levels`` levels, compact below.

    As readable as ``indent=1`` for a report of thousands of entries, but the entries
    are written by the C encoder (``indent`` makes ``json`` use its slow Python one).
    """
    if (levels <= 0 or not isinstance(obj, (dict, list)) or not obj
            or (isinstance(obj, dict) and not all(isinstance(k, str) for k in obj))):
        return json.dumps(obj)
    inner = indent + " "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {readable_json(v, levels - 1, inner)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    items = [inner + readable_json(v, levels - 1, inner) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + indent + "]"


def _write_json(path: Path, obj, levels: int) -> None:
    atomic_write_text(path, readable_json(obj, levels) + "\n")


def write_report(dest: str | os.PathLike, skipped: list[dict]) -> Path:
    path = Path(dest) / "report.json"
    _write_json(path, {"version": REPORT_VERSION, "skipped": _readable(skipped)}, levels=2)
    return path


def write_summary(dest: str | os.PathLike, summary: PrepSummary) -> Path:
    path = Path(dest) / "summary.json"
    _write_json(path, _readable(summary.to_dict()), levels=2)
    return path


def read_report(dest: str | os.PathLike) -> list[dict]:
    """The skipped-file entries of a prepared folder."""
    return json.loads((Path(dest) / "report.json").read_text())["skipped"]


def read_summary(dest: str | os.PathLike) -> dict:
    return json.loads((Path(dest) / "summary.json").read_text())
