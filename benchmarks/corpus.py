"""Benchmark: how long the corpus recipe (``notochord-rt corpus build``) takes here.

- **music21**: converts every ``--every``-th file of music21's corpus (a stride sample
  of the sorted list, all tunes of each ABC opus, with the recipe's time limit) one
  after the other in this process, and extrapolates the full build: CPU seconds of the
  sample × (all files / sampled files), then divided by the cores a full ``-j`` build
  would use. Per-folder numbers are printed because the folders differ a lot
  (a Beethoven quartet takes a minute, a fiddle tune a tenth of a second).
- **mma** (``--mma``): runs the full mma build with ``-j`` workers into a temporary
  folder and reports its wall time and seconds per song.

It prints the machine (CPU model, cores, load, torch version) with the numbers.

    python benchmarks/corpus.py [--every 20] [--mma] [-j 2]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from machine import cpu_name


def machine() -> str:
    cpu = cpu_name()
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, load average {load}, python "
        f"{platform.python_version()}, torch {torch_version}"
    )


def bench_music21(every: int, jobs: int, time_limit_s: float) -> None:
    from notochord_rt.corpus import scores as m
    from notochord_rt.corpus.build import stride_sample

    version = m.require_music21()
    corpus_root, rels, _ = m.list_sources()
    # Stratified by corpus folder (at least one file each), so small folders of big ABC
    # opuses (airdsAirs: 6 files, 1,068 tunes) are not missed; each folder's numbers are
    # scaled by its own sampling fraction.
    groups: dict[str, list[str]] = defaultdict(list)
    for rel in rels:
        groups[rel.split("/", 1)[0]].append(rel)
    per_folder: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0, 0.0, 0.0])
    cpu_total = wall_total = est_cpu = est_tunes = 0.0
    n_sample = 0
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        for group in (groups[k] for k in sorted(groups)):
            chosen = stride_sample(group, math.ceil(len(group) / every))
            scale = len(group) / len(chosen)
            n_sample += len(chosen)
            for rel in chosen:
                task = m.FileTask(
                    path=str(corpus_root / rel),
                    rel=rel,
                    out_dir=str(Path(tmp) / m.folder_for(rel)),
                    max_scores=None,
                    time_limit_s=time_limit_s,
                )
                c0, w0 = time.process_time(), time.perf_counter()
                res = m.convert_file(task)
                cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                cpu_total += cpu
                wall_total += wall
                est_cpu += cpu * scale
                est_tunes += len(res["written"]) * scale
                row = per_folder[m.folder_for(rel)]
                row[0] += 1
                row[1] += len(res["written"])
                row[2] += cpu
                row[3] += len(res["skipped"])
                row[4] += cpu * scale
                row[5] += len(res["written"]) * scale
    print(f"music21 {version}: {n_sample} of {len(rels)} files (~1 in {every} per corpus folder)")
    print(
        f"  {'folder':<14}{'files':>6}{'tunes':>7}{'skipped':>8}{'cpu s':>9}"
        f"{'est. cpu min':>14}{'est. files':>12}"
    )
    for folder, (files, tunes, cpu, skipped, e_cpu, e_tunes) in sorted(per_folder.items()):
        print(
            f"  {folder:<14}{files:>6}{tunes:>7}{skipped:>8}{cpu:>9.1f}"
            f"{e_cpu / 60:>14.1f}{e_tunes:>12.0f}"
        )
    tunes = sum(r[1] for r in per_folder.values())
    print(
        f"  sample: {cpu_total:.1f} s CPU, {wall_total:.1f} s wall, {tunes} MIDI files;"
        f" estimated full build: {est_cpu / 60:.1f} CPU-minutes,"
        f" ~{est_cpu / jobs / 60:.1f} min wall with -j {jobs} on idle cores,"
        f" ~{est_tunes:.0f} MIDI files"
    )


def bench_mma(jobs: int) -> None:
    from notochord_rt.corpus import mma as corpus_mma

    tool = corpus_mma.require_mma()
    with tempfile.TemporaryDirectory(prefix="bench-mma-") as tmp:
        c0 = os.times()
        w0 = time.perf_counter()
        section = corpus_mma.build_mma(Path(tmp) / "mma", tool, jobs=jobs)
        wall = time.perf_counter() - w0
        c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    cpu += (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    print(
        f"mma {tool.version}: {section['written']} songs ({len(section['skipped'])} skipped)"
        f" in {wall:.1f} s wall with -j {jobs}, {cpu:.1f} s CPU"
        f" ({1000 * cpu / max(1, section['songs']):.0f} ms CPU per song)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=int, default=20, help="music21: sample every Nth file")
    parser.add_argument("--mma", action="store_true", help="also time a full mma build")
    parser.add_argument("--no-music21", action="store_true", help="skip the music21 sample")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--time-limit", type=float, default=300.0)
    args = parser.parse_args()
    print("machine:", machine())
    if not args.no_music21:
        bench_music21(args.every, args.jobs, args.time_limit)
    if args.mma:
        bench_mma(args.jobs)


if __name__ == "__main__":
    main()
