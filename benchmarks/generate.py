"""Generation speed of a checkpoint: events/s, seconds of music per wall second, and the
latency of one feed + sample step, one thread.

For each inference core (``--precisions``, default the plain module and the fused fp32
core) it

1. times ``sample`` then ``feed`` (one step of the generate loop, under the constraints
   ``notochord-rt generate`` uses by default) for ``--steps`` steps after a warm-up, and
   reports p50 / p99 / mean in milliseconds;
2. runs :func:`notochord_rt.apps.offline.generate.generate` for ``--seconds`` of music with
   ``--runs`` seeds and reports events per wall second and seconds of music per wall
   second (above 1 means faster than real time).

Usage: ``python benchmarks/generate.py [--checkpoint default|PATH] [--quick] [--json F]``.
Without a checkpoint file (``default`` not installed) ``--random SIZE`` builds a random
model of the reference's size (``ref``) or a small one (``small``) to time the machinery.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from machine import cpu_name  # noqa: E402

from notochord_rt.apps.offline.generate import GenerateOptions, build_constraints, generate  # noqa: E402
from notochord_rt.engine.sampling.sampler import Notochord  # noqa: E402
from notochord_rt.engine.sampling.support import compile_constraints  # noqa: E402
from notochord_rt.errors import CheckpointError  # noqa: E402

SIZES = {
    "ref": {},  # the reference's default architecture
    "small": {"emb_size": 128, "rnn_hidden": 256, "rnn_layers": 2, "mlp_layers": 1},
}


def machine_info() -> dict:
    cpu = cpu_name()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None}


def load(args: argparse.Namespace) -> tuple[Notochord, str]:
    if args.random:
        torch.manual_seed(0)
        return Notochord(**SIZES[args.random]), f"random ({args.random})"
    return Notochord.load(args.checkpoint), str(args.checkpoint)


def step_latency(model: Notochord, steps: int, warmup: int) -> dict:
    comp = compile_constraints(build_constraints(GenerateOptions(), None))
    model.reset(seed=0)
    times = []
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        e = model.sample(comp)
        model.feed(e.inst, e.pitch, e.time, e.vel)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "steps": len(times)}


def generation_speed(model: Notochord, seconds: float, runs: int) -> dict:
    ev_rates, music_rates, events = [], [], []
    for seed in range(runs):
        g = generate(model, GenerateOptions(seconds=seconds, seed=seed))
        ev_rates.append(g.generated / g.wall_seconds)
        music_rates.append(g.music_seconds / g.wall_seconds)
        events.append(g.generated)
    return {"events_per_s": statistics.median(ev_rates),
            "music_s_per_wall_s": statistics.median(music_rates),
            "events_per_music_s": statistics.median(events) / seconds, "runs": runs,
            "seconds": seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--random", choices=sorted(SIZES), help="time a random model of this size")
    p.add_argument("--precisions", default="module,fp32")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a smoke run (few steps)")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args()
    if args.quick:
        args.steps, args.seconds, args.runs = 50, 10.0, 1
    try:
        model, name = load(args)
    except CheckpointError as e:
        print(f"cannot load {args.checkpoint}: {e} (or time a random model: --random small)")
        return 2
    n_params = sum(t.numel() for t in model.parameters())
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
          f"{info['threads']} thread, load {info['loadavg']}")
    print(f"model: {name}, {n_params:,} parameters")
    results = {"machine": info, "model": name, "parameters": n_params, "cores": {}}
    for precision in args.precisions.split(","):
        model.use_core(precision)
        lat = step_latency(model, args.steps, warmup=20)
        gen = generation_speed(model, args.seconds, args.runs)
        results["cores"][precision] = {"feed_sample": lat, "generate": gen}
        print(f"{precision:>6}: feed+sample p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms"
              f" (mean {lat['mean_ms']:.2f}, {lat['steps']} steps) | generate "
              f"{gen['events_per_s']:.0f} events/s, {gen['music_s_per_wall_s']:.1f} s of music "
              f"per wall second ({gen['events_per_music_s']:.1f} events per music second, "
              f"median of {gen['runs']} x {gen['seconds']:g} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
