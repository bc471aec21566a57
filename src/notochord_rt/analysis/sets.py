"""Sets of pieces: where they come from, and their statistics piece by piece.

An *input* is a MIDI file, a folder searched recursively for MIDI files
(``.mid``/``.midi``/``.rmi``, read with the project's own ``load_midi`` so instruments
and drums are what the model sees), or a prepared data folder (``notochord-rt prep``
output) of which one split is read. A piece that cannot be read or has no notes is
*skipped*: recorded with its reason, never fatal.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import events as ev
from ..errors import MidiError, UserError
from .features import FEATURES, IOI_BIN, IOI_MAX, StatsConfig, describe
from .notes import distinct_onsets, notes_of

log = logging.getLogger(__name__)

MIDI_SUFFIXES = (".mid", ".midi", ".rmi")
DENSE_RATE = 40.0
"""Notes per second above which a piece counts as *dense* (``dense_share``)."""


@dataclass(frozen=True)
class Source:
    """One piece to analyse: a label (path, or ``folder:split#k``) and how to load it."""

    label: str
    load: Callable[[], ev.EventArrays]


def is_prepared(path: str | os.PathLike) -> bool:
    """True for a ``notochord-rt prep`` output folder (any split present)."""
    from ..data.store import SPLITS, has_split

    p = Path(path)
    return p.is_dir() and any(has_split(p, s) for s in SPLITS)


def _midi_source(path: Path) -> Source:
    from ..midi.ingest import load_midi

    return Source(str(path), lambda: load_midi(path).events)


def _store_sources(root: Path, split: str) -> list[Source]:
    from ..data.store import EventStore, has_split

    if not has_split(root, split):
        raise UserError(f"{root} is a prepared folder without a {split!r} split")
    store = EventStore(root, split)

    def loader(k: int) -> Callable[[], ev.EventArrays]:
        return lambda: store[k]

    return [Source(f"{root}:{split}#{k}", loader(k)) for k in range(len(store))]


def find_sources(inputs: Sequence[str | os.PathLike], split: str = "test",
                 limit: int | None = None) -> list[Source]:
    """The pieces of ``inputs`` in order (each input's files sorted by path).

    ``split`` is read from prepared folders; ``limit`` keeps the first pieces. Raises
    :class:`~notochord_rt.errors.UserError` for an input that does not exist or holds
    nothing to analyse.
    """
    if not inputs:
        raise UserError("no inputs given")
    out: list[Source] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise UserError(f"input not found: {p}")
        if p.is_file():
            if p.suffix.lower() not in MIDI_SUFFIXES:
                raise UserError(f"{p} is not a MIDI file ({'/'.join(MIDI_SUFFIXES)})")
            out.append(_midi_source(p))
        elif is_prepared(p):
            out += _store_sources(p, split)
        else:
            files = sorted(f for f in p.rglob("*")
                           if f.is_file() and f.suffix.lower() in MIDI_SUFFIXES)
            if not files:
                raise UserError(f"{p} holds no MIDI files and is not a prepared folder")
            out += [_midi_source(f) for f in files]
    return out[:limit] if limit is not None else out


@dataclass
class SetStats:
    """Statistics of a set: one feature dict per analysed piece and what was skipped.

    ``instruments`` counts note-ons per instrument id over the set; ``ioi_hist`` counts
    inter-onset intervals in 10 ms bins (the last bin: 2 s and longer).
    """

    name: str
    labels: list[str] = field(default_factory=list)
    pieces: list[dict[str, float | None]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    instruments: Counter = field(default_factory=Counter)
    ioi_hist: np.ndarray = field(
        default_factory=lambda: np.zeros(int(IOI_MAX / IOI_BIN) + 1, dtype=np.int64))

    def values(self, feature: str) -> np.ndarray:
        """The defined values of ``feature`` over the pieces (``None`` left out)."""
        if feature not in FEATURES:
            raise KeyError(f"unknown feature {feature!r}")
        return np.array([p[feature] for p in self.pieces if p.get(feature) is not None],
                        dtype=np.float64)

    def add(self, label: str, events: ev.EventArrays, config: StatsConfig) -> None:
        """Analyse one piece (raises ``ValueError`` for a piece without notes)."""
        self.pieces.append(describe(events, config))
        self.labels.append(label)
        n = notes_of(events)
        ids, counts = np.unique(n.inst, return_counts=True)
        self.instruments.update(dict(zip(ids.tolist(), counts.tolist())))
        ioi = np.diff(distinct_onsets(n.start))
        bins = np.minimum((ioi / IOI_BIN).astype(np.int64), len(self.ioi_hist) - 1)
        self.ioi_hist += np.bincount(bins, minlength=len(self.ioi_hist))

    def summary(self) -> dict:
        """Per feature ``{n, mean, median, std}`` of the defined values, plus set figures:
        ``pieces``, ``skipped``, ``dense_share`` (pieces above :data:`DENSE_RATE` notes/s)
        and ``instrument_share`` (name → share of all note-ons, largest first)."""
        feats = {}
        for name in FEATURES:
            v = self.values(name)
            feats[name] = {"n": int(len(v)),
                           "mean": float(v.mean()) if len(v) else None,
                           "median": float(np.median(v)) if len(v) else None,
                           "std": float(v.std()) if len(v) else None}
        rate = self.values("notes_per_s")
        total = sum(self.instruments.values())
        shares = {ev.instrument_name(i): c / total for i, c in self.instruments.most_common()}
        return {"name": self.name, "pieces": len(self.pieces), "skipped": len(self.skipped),
                "dense_share": float((rate > DENSE_RATE).mean()) if len(rate) else None,
                "features": feats, "instrument_share": shares}


def analyse(name: str, sources: Sequence[Source], config: StatsConfig | None = None, *,
            progress: bool = False) -> SetStats:
    """Statistics of every piece of ``sources``; unreadable or empty pieces are skipped
    (logged and recorded in ``SetStats.skipped``). ``progress`` shows a tqdm bar."""
    cfg = (config or StatsConfig()).check()
    out = SetStats(name)
    it: Sequence[Source] = sources
    if progress:
        from tqdm import tqdm

        it = tqdm(sources, desc=f"stats {name}", unit="piece")
    for src in it:
        try:
            events = src.load()
            out.add(src.label, events, cfg)
        except (MidiError, ValueError, OSError) as e:
            log.warning("skipping %s: %s", src.label, e)
            out.skipped.append((src.label, str(e)))
    return out
