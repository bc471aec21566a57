"""What kind of ensemble each prepared piece is, per-piece sampling weights that balance
the kinds, a seeded weighted step sampler, and corpus statistics.

Uniform piece sampling lets whichever kind of piece is most numerous dominate training:
in the project's corpus, one-instrument quantized scores (music21) were 85 % of crops,
and drum-only grooves made drums take over free-running generation. Every piece falls
into one :data:`GROUPS`:

* ``single`` — exactly one instrument, melodic;
* ``multi`` — two or more instruments (a drum kit counts as one);
* ``drums`` — no melodic notes (drums only, or nothing at all).

``--balance ensemble`` gives ``single`` and ``multi`` half the crops each and ``drums``
a small share (:data:`ENSEMBLE`); ``--balance single=1,multi=2,drums=0`` names the
shares. Within a group every piece is equally likely, as with uniform sampling. Groups
are computed once from the stored events (instrument ids of note-ons).

:class:`WeightedStepIndexer` draws each pass over the data by systematic sampling of the
weights (each piece appears ``floor`` or ``ceil`` of its expected count), shuffled, from
seeds that depend only on the pass, so the pieces of a step are a pure function of the
step number: resuming at step ``s`` gives exactly the batches of an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import events as ev
from ..errors import UserError
from .store import EventStore

GROUPS = ("single", "multi", "drums")
#: Group shares of ``--balance ensemble``.
ENSEMBLE = {"single": 1.0, "multi": 1.0, "drums": 0.05}
BALANCES = ("none", "ensemble")


@dataclass(frozen=True)
class PieceKinds:
    """Per-piece facts of one split, as arrays indexed by piece."""

    group: np.ndarray  # int8 index into GROUPS
    instruments: np.ndarray  # distinct instrument ids of the note-ons
    melodic_notes: np.ndarray
    has_drums: np.ndarray  # bool
    events: np.ndarray
    seconds: np.ndarray
    ids: np.ndarray  # the distinct instrument ids of the whole split

    def count(self, name: str) -> int:
        return int((self.group == GROUPS.index(name)).sum())


def piece_kinds(store: EventStore) -> PieceKinds:
    """Classify every piece of ``store`` from its note-ons (one piece in memory at a
    time, through the store's public reading API)."""
    n = len(store)
    group = np.zeros(n, dtype=np.int8)
    instruments = np.zeros(n, dtype=np.int64)
    melodic = np.zeros(n, dtype=np.int64)
    drums = np.zeros(n, dtype=bool)
    seconds = np.zeros(n)
    ids: set[int] = set()
    for k in range(n):
        piece = store[k]
        if len(piece):
            seconds[k] = float(piece.time[-1])
        inst = np.unique(piece.inst[piece.vel > 0])
        drum = ev.is_drum(inst)
        ids.update(inst.tolist())
        instruments[k] = len(inst)
        drums[k] = bool(drum.any())
        melodic[k] = int(((piece.vel > 0) & ~ev.is_drum(piece.inst)).sum())
        group[k] = 2 if not (~drum).any() else (1 if len(inst) >= 2 else 0)
    return PieceKinds(group, instruments, melodic, drums, np.asarray(store.lengths), seconds,
                      np.array(sorted(ids), dtype=np.int64))


def parse_balance(spec: str) -> dict[str, float] | None:
    """Group shares of a ``--balance`` value: ``none`` → None (uniform over pieces),
    ``ensemble`` → :data:`ENSEMBLE`, or ``single=1,multi=1,drums=0.05``."""
    text = str(spec).strip().lower()
    if text == "none":
        return None
    if text == "ensemble":
        return dict(ENSEMBLE)
    shares = dict.fromkeys(GROUPS, 0.0)
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in GROUPS:
            raise UserError(f"balance must be none, ensemble or shares like "
                            f"single=1,multi=1,drums=0.05 (groups {', '.join(GROUPS)}); "
                            f"got {spec!r}")
        try:
            share = float(value)
        except ValueError:
            share = math.nan
        if not (share >= 0 and math.isfinite(share)):
            raise UserError(f"balance share of {name} must be a number >= 0, got {value!r}")
        shares[name] = share
    if not any(shares.values()):
        raise UserError(f"balance {spec!r} gives every group a share of 0")
    return shares


def group_weights(groups: np.ndarray, shares: dict[str, float]) -> np.ndarray:
    """Per-piece sampling probabilities: each group's share (renormalised over the groups
    that have pieces) split equally among its pieces."""
    counts = np.bincount(groups, minlength=len(GROUPS))
    per_group = np.array([shares.get(g, 0.0) if counts[i] else 0.0
                          for i, g in enumerate(GROUPS)])
    if per_group.sum() <= 0:
        present = [g for i, g in enumerate(GROUPS) if counts[i]]
        raise UserError(f"balance shares {shares} give no weight to the groups present "
                        f"({', '.join(present) or 'none'})")
    per_piece = per_group / np.maximum(counts, 1)
    weights = per_piece[groups]
    return weights / weights.sum()


def piece_weights(store: EventStore, spec: str) -> np.ndarray | None:
    """Sampling probabilities of the pieces of ``store`` for a ``--balance`` value
    (None for ``none``: uniform sampling)."""
    shares = parse_balance(spec)
    if shares is None:
        return None
    return group_weights(piece_kinds(store).group, shares)


class WeightedStepIndexer:
    """The ``(draw, piece)`` items of each rank at each step, pieces drawn with
    probabilities ``weights`` (same interface as ``train.batches.StepIndexer``).

    Pass ``e`` over the data (``len(weights)`` items) is a systematic sample of the
    weights, shuffled, both seeded by ``(seed, e)`` only. ``draw`` is the item's position
    in the endless stream, so a piece drawn twice, even within one step, gets two
    different crops.
    """

    def __init__(self, weights: Sequence[float] | np.ndarray, batch_size: int, *,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) < 1 or not np.all(np.isfinite(w)) or (w < 0).any() \
                or w.sum() <= 0:
            raise ValueError("weights must be a non-empty vector of finite numbers >= 0, "
                             "not all 0")
        self.n, self.batch_size = len(w), batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._cum = np.cumsum(w / w.sum())
        self._cum[-1] = 1.0
        self._passes: dict[int, np.ndarray] = {}

    @property
    def steps_per_epoch(self) -> int:
        """Steps for the job as a whole to draw as many items as there are pieces."""
        return max(1, math.ceil(self.n / (self.batch_size * self.world_size)))

    def pass_pieces(self, e: int) -> np.ndarray:
        """The ``n`` pieces of pass ``e``, in the order they are used."""
        if e not in self._passes:
            if len(self._passes) > 4:
                self._passes.pop(min(self._passes))
            rng = np.random.default_rng([self.seed, 7919, e, 0xBA1A])
            points = (np.arange(self.n) + rng.random()) / self.n
            picks = np.minimum(np.searchsorted(self._cum, points, side="right"), self.n - 1)
            self._passes[e] = rng.permutation(picks)
        return self._passes[e]

    def indices(self, step: int) -> list[tuple[int, int]]:
        """This rank's ``batch_size`` items at ``step`` as ``(draw, piece)`` pairs."""
        start = (step * self.world_size + self.rank) * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            e, k = divmod(pos, self.n)
            out.append((pos, int(self.pass_pieces(e)[k])))
        return out

    def iter_from(self, step: int) -> Iterator[list[tuple[int, int]]]:
        """Endless index lists from ``step`` on (a DataLoader ``batch_sampler``)."""
        while True:
            yield self.indices(step)
            step += 1


def _source_of(path: str) -> str:
    parts = Path(path).parts
    for name in ("mma", "music21"):
        if name in parts:
            return name
    return "other"


def corpus_stats(root: str | Path, splits: Sequence[str] = ("train", "valid", "test")) -> dict:
    """What a prepared data folder holds, all splits together: pieces, hours, events,
    pieces per group, pieces with drums, distinct instruments, pieces per source folder
    (``mma``/``music21``), and the share of training crops each group and source gets
    under ``--balance none`` and ``ensemble``."""
    kinds, source = [], []
    for split in splits:
        try:
            store = EventStore(root, split)
        except FileNotFoundError:
            continue
        kinds.append(piece_kinds(store))
        source += [_source_of(str(rec.get("path", ""))) for rec in store.records()]
    if not kinds:
        raise UserError(f"no prepared splits under {root} (run notochord-rt prep first)")
    group = np.concatenate([k.group for k in kinds])
    ids = np.unique(np.concatenate([k.ids for k in kinds]))
    named = ids[(ids >= ev.FIRST_MELODIC) & (ids <= ev.LAST_DRUM)]
    counts = {g: int((group == i).sum()) for i, g in enumerate(GROUPS)}
    src = np.array(source)
    names = sorted(set(source))
    shares, by_source = {}, {}
    for spec, w in (("none", np.full(len(group), 1 / len(group))),
                    ("ensemble", group_weights(group, ENSEMBLE))):
        shares[spec] = {g: round(float(w[group == i].sum()), 4) for i, g in enumerate(GROUPS)}
        by_source[spec] = {s: round(float(w[src == s].sum()), 4) for s in names}
    return {
        "pieces": int(len(group)),
        "hours": round(float(sum(k.seconds.sum() for k in kinds)) / 3600, 2),
        "events": int(sum(k.events.sum() for k in kinds)),
        **{f"{g}_instrument" if g != "drums" else "drums_only": counts[g] for g in GROUPS},
        "with_drums": int(sum(k.has_drums.sum() for k in kinds)),
        "instrument_ids": int(len(ids)),
        "named_programs": int(len(named)),
        "sources": {s: int((src == s).sum()) for s in names},
        "crop_share": shares,
        "crop_share_by_source": by_source,
    }
