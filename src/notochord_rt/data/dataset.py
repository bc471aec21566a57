"""Training crops of prepared pieces, augmented, as fixed-length tensors (docs/design.md §5.1).

Each piece is framed as ``[start event] + piece + [batch_len − 1 padding events]`` and an
item is ``batch_len`` consecutive positions of that sequence:

* ``mode="train"``: a uniformly random window (so the end of a piece is as likely inside a
  crop as any other position), augmented with :class:`~.augment.Augment`, new every epoch;
* ``mode="valid"``: random windows fixed by the seed (the same every epoch), not augmented;
* ``mode="test"``: the first window (start event + first ``batch_len − 1`` events).

Items are dicts of 1-d tensors (``inst``/``pitch`` int64, ``time`` float32 delta seconds,
``vel`` float32 with 0 = note-off, ``end`` float32 = 1 from the last real event on, ``mask``
bool = False on padding); the default collate stacks them into the ``(B, T)`` batch of
docs/architecture.md.

Randomness of item k comes from ``SeedSequence([seed, epoch, k])`` only, so results do not
depend on the number of workers or on which worker loads which item. Call
:meth:`CropDataset.set_epoch` before iterating each epoch: the epoch lives in shared memory,
so it reaches persistent DataLoader workers too.

Only the events a crop needs are read and augmented (plus the few neighbours that could
swap places with them under timing jitter, see :attr:`.augment.Augment.reorder_gap`).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from .. import events as ev
from ..errors import InputError, UserError
from . import augment as aug
from .store import EventStore

log = logging.getLogger(__name__)

MODES = ("train", "valid", "test")
_MARGIN = 16  # events read around a crop when looking for the edges of its clusters
_MODE_CODE = {"train": 0, "valid": 1, "test": 2}


class CropDataset(Dataset):
    """Map-style dataset over the pieces of one split: ``dataset[k]`` is a crop of piece k."""

    def __init__(self, store: EventStore | str | os.PathLike, split: str = "train", *,
                 batch_len: int = 64, mode: str | None = None,
                 augment: aug.Augment | None = None, seed: int = 0):
        if not isinstance(store, EventStore):
            try:
                store = EventStore(store, split)
            except FileNotFoundError as exc:
                raise UserError(str(exc)) from exc
        if mode is None:  # the split's natural mode; other split names evaluate like valid
            mode = store.split if store.split in MODES else "valid"
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(batch_len, (int, np.integer)) or batch_len < 1:
            raise InputError(f"batch_len must be a positive integer, got {batch_len!r}")
        self.store = store
        self.batch_len = int(batch_len)
        self.mode = mode
        self.augment = augment if augment is not None else (
            aug.Augment() if mode == "train" else aug.Augment.none())
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.store)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops and augmentations ``__getitem__`` returns."""
        self._epoch.fill_(int(epoch))

    def rng(self, k: int) -> np.random.Generator:
        """The generator of item k (the epoch only matters in train mode)."""
        epoch = self.epoch if self.mode == "train" else 0
        return np.random.default_rng([self.seed, epoch, int(k), _MODE_CODE[self.mode]])

    def plan(self, k: int) -> tuple[int, aug.Draws | None]:
        """Item k's random choices: crop start (position in the framed piece) and draws."""
        rng = self.rng(k)
        start = 0 if self.mode == "test" else int(rng.integers(0, self.store.length(k) + 1))
        return start, (self.augment.draw(rng) if self.augment.enabled else None)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= k < len(self):
            raise IndexError(f"piece {k} out of range for {len(self)} pieces")
        k = int(k) % len(self)
        n, T = self.store.length(k), self.batch_len
        start, draws = self.plan(k)
        first = max(start - 1, 0)  # first piece event inside the crop
        stop = min(start + T - 1, n)  # one past the last
        gap = self.augment.reorder_gap
        lo, window = read_window(self.store, k, max(first - 1, 0), stop, gap)
        check_events(window, k, self.store.split)
        if draws is None:
            events = aug.as_augmented(window)
        else:
            events = aug.apply(window, self.augment, draws, first=lo)
        return frame(events, lo, n, start, T)


def frame(events: aug.Augmented, lo: int, n: int, start: int, T: int) -> dict[str, torch.Tensor]:
    """Positions ``start .. start+T-1`` of [start event] + piece + padding as tensors.

    ``events`` are piece events ``lo, lo+1, ...`` with absolute times; every piece event in
    the crop, and the one before it, must be among them.
    """
    pos = np.arange(start, start + T)
    real = (pos >= 1) & (pos <= n)
    idx = pos[real] - 1 - lo
    deltas = np.diff(events.time, prepend=0.0)  # only wrong at index 0 when lo > 0: unused
    inst = np.zeros(T, dtype=np.int64)
    pitch = np.zeros(T, dtype=np.int64)
    time = np.zeros(T, dtype=np.float32)
    vel = np.zeros(T, dtype=np.float32)
    inst[real], pitch[real] = events.inst[idx], events.pitch[idx]
    time[real], vel[real] = deltas[idx], events.vel[idx]
    inst[pos == 0], pitch[pos == 0] = ev.START_EVENT.inst, ev.START_EVENT.pitch
    return {
        "inst": torch.from_numpy(inst),
        "pitch": torch.from_numpy(pitch),
        "time": torch.from_numpy(time),
        "vel": torch.from_numpy(vel),
        "end": torch.from_numpy((pos >= n).astype(np.float32)),
        "mask": torch.from_numpy(pos <= n),
    }


def read_window(store: EventStore, k: int, lo: int, hi: int,
                gap: float) -> tuple[int, ev.EventArrays]:
    """Events ``lo:hi`` of piece k, widened until both edges lie in gaps wider than ``gap``.

    Events closer than ``gap`` may swap under augmentation; with the edges in wider gaps
    the window sorts exactly as the same events would within the whole piece. Returns the
    widened start and the events.
    """
    n = store.length(k)
    if hi <= lo:
        return lo, store.window(k, lo, lo)
    margin = _MARGIN
    while True:
        blo, bhi = max(lo - margin, 0), min(hi + margin, n)
        block = store.window(k, blo, bhi)
        wide = np.flatnonzero(np.diff(block.time) > gap) + blo + 1  # t[j] - t[j-1] > gap
        below, above = wide[wide <= lo], wide[wide >= hi]
        new_lo = int(below[-1]) if len(below) else (0 if blo == 0 else None)
        new_hi = int(above[0]) if len(above) else (n if bhi == n else None)
        if new_lo is not None and new_hi is not None:
            return new_lo, ev.EventArrays(*(a[new_lo - blo:new_hi - blo] for a in block))
        margin *= 4


def check_events(piece: ev.EventArrays, k: int, split: str) -> None:
    """Raise :class:`UserError` naming the piece if stored events are out of range."""
    if len(piece) == 0:
        return
    problems = []
    if piece.inst.min() < ev.FIRST_MELODIC or piece.inst.max() > ev.NUM_INSTRUMENTS:
        problems.append(f"instrument ids {piece.inst.min()}..{piece.inst.max()} (want 1..320)")
    if piece.pitch.min() < 0 or piece.pitch.max() >= ev.NUM_PITCHES:
        problems.append(f"pitches {piece.pitch.min()}..{piece.pitch.max()} (want 0..127)")
    if piece.vel.min() < 0 or piece.vel.max() > ev.VEL_MAX:
        problems.append(f"velocities {piece.vel.min()}..{piece.vel.max()} (want 0..127)")
    t = piece.time
    if not np.all(np.isfinite(t)) or t.min() < 0 or np.any(np.diff(t) < 0):
        problems.append("times that are negative, not finite or not sorted")
    if problems:
        raise UserError(f"piece {k} of split {split!r} has " + "; ".join(problems)
                        + ": re-run `notochord-rt prep`")


def make_loader(dataset: CropDataset, batch_size: int, *, shuffle: bool = True,
                num_workers: int = 0, drop_last: bool = False, seed: int = 0,
                multiprocessing_context: str | None = None,
                weights: np.ndarray | None = None) -> DataLoader:
    """A DataLoader over ``dataset`` with a seeded shuffle and persistent workers.

    ``weights`` (one per piece, e.g. :func:`.balance.piece_weights`) draws each epoch's
    ``len(dataset)`` pieces with replacement in proportion to them, from the same seeded
    generator, instead of a shuffle. Remember ``dataset.set_epoch(e)`` before each epoch
    (workers see it through shared memory, with "fork" and "spawn" alike).
    """
    gen = torch.Generator().manual_seed(seed)
    sampler = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(dataset),) or not np.all(np.isfinite(w)) or (w < 0).any() \
                or w.sum() <= 0:
            raise InputError(f"weights must be {len(dataset)} finite numbers >= 0, not all 0")
        sampler = WeightedRandomSampler(torch.from_numpy(w), len(dataset), replacement=True,
                                        generator=gen)
        shuffle = False
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      sampler=sampler,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      drop_last=drop_last,
                      multiprocessing_context=multiprocessing_context if num_workers else None)
