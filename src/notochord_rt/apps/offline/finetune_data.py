"""The data side of ``notochord-rt finetune``: prep the user's files, split them by content.

The user's MIDI files are prepared with :func:`notochord_rt.data.prep.pipeline.prepare` into
``DIR/prep`` (its ledger makes a second run reuse every file it has seen), then split
again for small data into ``DIR/data/{train,valid,test}``: prep's own split (3 % valid,
2 % test) would leave a few files with nothing held out.

The split here is by content hash too, so it never depends on file names or order: the
pieces are ordered by the same number prep uses (the first 64 bits of the BLAKE2b hash of
the file's bytes) and the lowest go to ``test``, the next to ``valid``, the rest to
``train``: about :data:`HELD_OUT` of the pieces each, at least one piece and
:data:`MIN_HELD_OUT_EVENTS` events each. Because prep's valid and test pieces are those
with the lowest numbers too (below 0.05), a model prepared from the same files never
trained on the pieces ``finetune`` holds out for testing, as long as there are enough.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UserError
from ...events import EventArrays

HELD_OUT = 0.10
"""Share of the pieces in each of ``valid`` and ``test``."""
MIN_HELD_OUT_EVENTS = 200
"""Fewest events in each of ``valid`` and ``test``."""
MIN_TRAIN_EVENTS = 500
"""Fewest events to train on."""
MIN_EVENTS = 32
"""Shortest piece kept (events; prep's default of 64 is for big corpora)."""


@dataclass
class UserData:
    """The user's data after prep and the split: where it is and what it holds."""

    folder: Path
    pieces: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    files_seen: int = 0
    skipped: list[dict] = field(default_factory=list)
    instruments: list[int] = field(default_factory=list)
    """The instruments of the training pieces, most note-ons first."""


def _skipped_lines(skipped: list[dict], limit: int = 20) -> str:
    lines = [f"  {s.get('path')}: {s.get('reason')}" for s in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more (see report.json)")
    return "\n".join(lines)


def prepare_user_data(sources: Sequence[str], out: Path, *, jobs: int = 1,
                      progress: Callable[[int, int], None] | None = None) -> UserData:
    """Prep ``sources`` into ``out/prep`` and split them into ``out/data``.

    Raises :class:`UserError` when no file is usable (listing the skipped files and why)
    or when there are too few pieces or events to hold some out (saying how many more).
    """
    import numpy as np

    from ...data.prep.pipeline import prepare
    from ...data.prep.report import read_report
    from ...data.store import SPLITS, EventStore, write_split

    prep_dir, data_dir = out / "prep", out / "data"
    summary = prepare(list(sources), prep_dir, jobs=jobs, min_events=MIN_EVENTS,
                      progress=progress)
    skipped = [s for s in read_report(prep_dir) if s.get("category") != "duplicate"]
    pieces: list[tuple[int, EventArrays, dict]] = []
    for split in SPLITS:
        store = EventStore(prep_dir, split)
        for k, rec in enumerate(store.records()):
            pieces.append((int(rec["hash"][:16], 16), store[k], rec))
    if not pieces:
        where = ", ".join(sources[:3]) + (" ..." if len(sources) > 3 else "")
        if not skipped:
            raise UserError(f"no MIDI files found in {where} (.mid, .midi or .kar)")
        raise UserError(f"no usable MIDI in {where}: {len(skipped)} file(s) skipped\n"
                        + _skipped_lines(skipped))
    pieces.sort(key=lambda p: p[0])
    total = sum(len(p[1]) for p in pieces)
    need = MIN_TRAIN_EVENTS + 2 * MIN_HELD_OUT_EVENTS
    if len(pieces) < 3 or total < need:
        more = []
        if total < need:
            more.append(f"about {need - total} more events")
        if len(pieces) < 3:
            more.append(f"{3 - len(pieces)} more file(s)")
        raise UserError(
            f"too little music to fine-tune and hold some out for validation: {len(pieces)} "
            f"usable piece(s) with {total} events; a fine-tune needs at least 3 pieces and "
            f"{need} events ({MIN_TRAIN_EVENTS} to train on, {MIN_HELD_OUT_EVENTS} each to "
            f"validate and to test). Add {' and '.join(more)}"
            + (f"; skipped:\n{_skipped_lines(skipped)}" if skipped else ""))
    chosen: dict[str, list] = {"test": [], "valid": [], "train": []}
    rest = list(pieces)
    for split in ("test", "valid"):
        want = max(1, round(HELD_OUT * len(pieces)))
        while rest and len(rest) > 1 and (len(chosen[split]) < want or sum(
                len(p[1]) for p in chosen[split]) < MIN_HELD_OUT_EVENTS):
            chosen[split].append(rest.pop(0))
    chosen["train"] = rest
    train_events = sum(len(p[1]) for p in rest)
    if train_events < MIN_TRAIN_EVENTS:
        raise UserError(f"too little music left to train on after holding out pieces for "
                        f"validation and testing: {train_events} events, at least "
                        f"{MIN_TRAIN_EVENTS} are needed; add about "
                        f"{MIN_TRAIN_EVENTS - train_events} more events")
    data = UserData(data_dir, files_seen=summary.files_seen, skipped=skipped)
    for split in SPLITS:
        entries = chosen[split]
        write_split(data_dir, split, [p[1] for p in entries],
                    [{k: p[2][k] for k in ("path", "hash", "events", "seconds") if k in p[2]}
                     for p in entries])
        data.pieces[split] = len(entries)
        data.events[split] = sum(len(p[1]) for p in entries)
        data.seconds[split] = float(sum(p[1].time[-1] for p in entries if len(p[1])))
    counts: dict[int, int] = {}
    for _, piece, _ in chosen["train"]:
        on = piece.vel > 0
        ids, n = np.unique(piece.inst[on], return_counts=True)
        for i, c in zip(ids.tolist(), n.tolist()):
            counts[i] = counts.get(i, 0) + c
    data.instruments = [i for i, _ in sorted(counts.items(), key=lambda x: -x[1])]
    return data


def held_out_pieces(data: UserData, split: str = "test") -> list[EventArrays]:
    """The pieces of one split of the user's data."""
    from ...data.store import EventStore

    store = EventStore(data.folder, split)
    return [store[k] for k in range(len(store))]
