"""Many streams on one packed copy of the weights against one copy per stream.

The web playground's per-tab samplers are twins of one packed core
(``FastCore.twin``: the same packed weights, their own scratch buffers). This measures
what that saves: ``--streams`` streams take turns, each one GRU feed and the context
projection per turn, on ``--streams`` twins of one core and on ``--streams`` separately
packed cores, for each precision; printed in microseconds per turn, alternated
``--rounds`` times, with the machine.

    python benchmarks/shared_core.py
    python benchmarks/shared_core.py --precisions fp32 --streams 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402


def turns(cores: list, n: int) -> float:
    """Microseconds per feed + context, the cores taking turns ``n`` times."""
    states = [c.initial_state() for c in cores]
    t0 = time.perf_counter()
    for k in range(n):
        i = k % len(cores)
        states[i] = cores[i].feed(states[i], 1, 60, 0.1, 64.0)
        cores[i].context(states[i])
    return 1e6 * (time.perf_counter() - t0) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--turns", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from notochord_rt.apps.loading import load_sampler
    from notochord_rt.engine.cores.fast import FastCore
    from notochord_rt.engine.cores.quant import available_precisions

    net = load_sampler(args.checkpoint, "module").net
    print(f"machine: {machine_line()}")
    print(f"model {args.checkpoint}, {args.streams} streams taking turns, feed + context")
    for precision in args.precisions.split(","):
        if precision not in available_precisions():
            print(f"{precision}: no kernel in this torch build")
            continue
        separate = [FastCore(net, precision) for _ in range(args.streams)]
        one = FastCore(net, precision)
        twins = [one.twin() for _ in range(args.streams)]
        for r in range(args.rounds):
            a, b = turns(separate, args.turns), turns(twins, args.turns)
            print(f"{precision} round {r + 1}: separate cores {a:.0f} us, twins {b:.0f} us "
                  f"per turn", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
