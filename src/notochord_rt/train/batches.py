"""Which pieces each process trains on at each step, and the random seed of each step.

Everything random about optimisation step ``s`` on rank ``r`` — which pieces are
cropped, the crops and augmentations, dropout and the random conditioning masks — is
drawn from seeds that depend only on the step: the crops and augmentations from
``(seed, pass over the data, piece)`` (see ``sources.DrawCrops``), dropout and the
conditioning masks from the global generators reseeded with ``(seed, r, s)``. A step is
then a pure function of the weights, the optimizer state and ``s``; resuming at step
``s`` reproduces an uninterrupted run exactly, whichever process loads the crops, with
no data-loader state to save.

The pieces of step ``s`` come from an endless stream of per-epoch permutations of the
training set: each step takes the next ``batch_size * world_size`` positions and each
rank its own ``batch_size`` of them, so ranks never share a crop within a step.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import torch


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 32-bit seed for (run seed, rank, step), well mixed by numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (all CUDA devices too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StepIndexer:
    """Indices of the pieces used by one rank at each step (see module docstring)."""

    def __init__(self, n_items: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if n_items < 1:
            raise ValueError("StepIndexer needs at least one item")
        self.n, self.batch_size = n_items, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._perms: dict[int, np.ndarray] = {}

    @property
    def steps_per_epoch(self) -> int:
        """Steps for the job as a whole to see every piece once."""
        return max(1, math.ceil(self.n / (self.batch_size * self.world_size)))

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed, 7919, epoch])
            self._perms[epoch] = rng.permutation(self.n)
        return self._perms[epoch]

    def indices(self, step: int) -> list[tuple[int, int]]:
        """This rank's ``batch_size`` items at ``step`` as ``(draw, piece)`` pairs.

        ``draw`` counts passes over the data, so the same piece drawn again later (or
        twice in one step, when there are fewer pieces than crops per step) is a
        different item and gets a different crop.
        """
        start = (step * self.world_size + self.rank) * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            draw, k = divmod(pos, self.n)
            out.append((draw, int(self._perm(draw)[k])))
        return out

    def iter_from(self, step: int) -> Iterator[list[tuple[int, int]]]:
        """Endless index lists from ``step`` on (a DataLoader ``batch_sampler``)."""
        while True:
            yield self.indices(step)
            step += 1
