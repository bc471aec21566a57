"""Throughput of the training crop dataset (items/s), 0 and 2 DataLoader workers.

Builds a synthetic store in a temporary folder (long pieces, so windowing matters) and
prints items/s for: one process, a 2-worker DataLoader, and, for comparison, augmenting
whole pieces instead of windows. Usage: python benchmarks/bench_dataset.py [--pieces N]
"""

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from machine import cpu_name

from notochord_rt import events as ev
from notochord_rt.data import augment as aug
from notochord_rt.data.dataset import CropDataset, make_loader
from notochord_rt.data.store import EventStore, write_split


def synthetic_piece(rng: np.random.Generator, notes: int) -> ev.EventArrays:
    inst = rng.choice([1, 25, 33, 129, 257, 290], notes)
    pitch = rng.integers(0, 128, notes)
    on = np.sort(rng.uniform(0, notes * 0.1, notes))
    off = on + rng.uniform(0.01, 0.05, notes)  # short: no overlaps per key in practice
    vel = rng.integers(1, 128, notes)
    return ev.EventArrays.build(np.r_[inst, inst], np.r_[pitch, pitch], np.r_[on, off],
                                np.r_[vel, np.zeros(notes)]).sorted()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pieces", type=int, default=200)
    parser.add_argument("--notes", type=int, default=2500)
    parser.add_argument("--items", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        pieces = [synthetic_piece(rng, args.notes) for _ in range(args.pieces)]
        write_split(root, "train", pieces, [{}] * len(pieces))
        ds = CropDataset(root, "train", batch_len=64, seed=0)
        print(f"store: {len(ds)} pieces x {2 * args.notes} events, crops of 64, all augmentations")

        t0 = time.perf_counter()
        for i in range(args.items):
            ds[i % len(ds)]
        rate = args.items / (time.perf_counter() - t0)
        print(f"one process, windowed crops: {rate:8.0f} items/s")

        store, opts = EventStore(root, "train"), aug.Augment()
        t0 = time.perf_counter()
        for i in range(args.items // 10):
            _, draws = ds.plan(i % len(ds))
            aug.apply(store[i % len(ds)], opts, draws)
        rate = args.items // 10 / (time.perf_counter() - t0)
        print(f"one process, whole-piece augmentation (for comparison): {rate:8.0f} items/s")

        loader = make_loader(ds, batch_size=128, num_workers=2, drop_last=True)
        ds.set_epoch(0)
        next(iter(loader))  # start the workers
        n, t0, epoch = 0, time.perf_counter(), 0
        while n < args.items:
            ds.set_epoch(epoch)
            for batch in loader:
                n += batch["inst"].shape[0]
            epoch += 1
        rate = n / (time.perf_counter() - t0)
        print(f"DataLoader, 2 persistent workers, batch 128: {rate:8.0f} items/s")


if __name__ == "__main__":
    main()
