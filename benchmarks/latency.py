"""Latency of the reference Notochord vs ours (FastCore fp32/bf16/fp16/int8), one thread.

Both run the reference's default 17.7 M-parameter architecture with the *same* random
weights: the reference package builds ``notochord.Notochord()`` from a seed, the weights are
saved in the reference's checkpoint format and converted with our loader
(``NotochordNet.load``). Each scenario runs a generate loop (sample, then feed what was
sampled) and times every call; we report p50 and p99 in milliseconds.

Scenarios:

``unconstrained``   ``sample()`` with no constraints (reference: ``EventConstraints()``).
``harmonizer``      fixed instrument, time 0 and velocity 80, 12 allowed pitches; every
                    sampled note-on is fed and then released (the release is not timed).
``poly_duration``   one instrument, 36 pitches, ``max_polyphony=3``, ``max_duration=2 s``
                    (reference with ``min_time=0``, which avoids its -inf time bug).

The reference is timed with ``sample(EventConstraints)`` and with its legacy ``query``
(harmonizer: ``next_inst/next_time/next_vel/include_pitch``; no polyphony/duration there).
All implementations of a scenario run interleaved, 100 timed events at a time (after 20
untimed ones), so a shared machine's changing load hits them alike. The untimed events
let the caches, TLBs and branch predictors refill after the other implementations (the
reference alone streams ~70 MB of weights); with only 3, int8 measured 0.3-0.4 ms slower
than when run alone, while the reference, compute-bound, did not change. A live app runs
one model continuously, which is what the settled chunks measure.
Where the compiled AVX-512 VNNI int8 kernel is in use, int8 also runs on FBGEMM alone
(row ``ours int8 FBGEMM``) for comparison. Then the network alone per precision, and
events/s of the batched many-stream engine for 1, 8, 32 and 128 streams.

Run on a quiet machine: ``python benchmarks/latency.py`` (about 3 minutes; ``--quick``
for a smoke run). ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

from machine import machine_info as base_machine_info  # noqa: E402

from notochord_rt.engine.cores import quant  # noqa: E402
from notochord_rt.engine.cores.fast import FastCore  # noqa: E402
from notochord_rt.engine.cores.quant import available_precisions  # noqa: E402
from notochord_rt.engine.sampling.constraints import Constraints  # noqa: E402
from notochord_rt.engine.sampling.sampler import Notochord  # noqa: E402
from notochord_rt.engine.sampling.streams import Streams  # noqa: E402
from notochord_rt.model.network import NotochordNet  # noqa: E402

HARMONY_INST = 1
HARMONY_PITCHES = list(range(60, 72))
POLY_PITCHES = list(range(48, 84))


# -- machine -----------------------------------------------------------------------------
def machine_info() -> dict:
    info = base_machine_info()
    return {
        "cpu": info["cpu"],
        "cores": info["cores"],
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "python": info["python"],
        "loadavg_start": info["loadavg"],
        "precisions": list(available_precisions()),
    }


def pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1e3
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "n": int(a.size)}


# -- models ------------------------------------------------------------------------------
def build_models(seed: int, tmp: Path):
    from notochord import Notochord as Ref

    torch.manual_seed(seed)
    ref = Ref().eval()
    path = tmp / "reference.ckpt"
    # the reference's checkpoint format: a torch pickle with kw['model'] and model_state
    torch.save({"kw": {"model": {}}, "model_state": ref.state_dict()}, path)
    net = NotochordNet.load(path)
    ref.reset()
    return ref, net


# -- the loops -----------------------------------------------------------------------------
def _ours_cons(scenario: str) -> Constraints | None:
    if scenario == "unconstrained":
        return None
    if scenario == "harmonizer":
        return Constraints(note_on_map={HARMONY_INST: HARMONY_PITCHES}, time=0.0, vel=80.0)
    return Constraints(note_on_map={HARMONY_INST: POLY_PITCHES}, max_polyphony=3,
                       max_duration=2.0)


def _ref_cons(scenario: str):
    from notochord.event import EventConstraints

    if scenario == "unconstrained":
        return EventConstraints()
    if scenario == "harmonizer":
        return EventConstraints(note_on_map={HARMONY_INST: HARMONY_PITCHES}, time=0.0, vel=80.0)
    return EventConstraints(note_on_map={HARMONY_INST: POLY_PITCHES}, max_polyphony=3,
                            max_duration=2.0, min_time=0.0)


def _ref_query_kw(scenario: str) -> dict | None:
    if scenario == "unconstrained":
        return {}
    if scenario == "harmonizer":
        return dict(next_inst=HARMONY_INST, next_time=0.0, next_vel=80.0,
                    include_pitch=HARMONY_PITCHES)
    return None


def loop(sample, feed, release, reset, reset_every: int = 64, idle=None):
    """Endless generate loop yielding ``(sample seconds, feed seconds)`` per event.

    ``idle()``, if given, runs untimed between the sample and the feed: the wait for the
    sampled event's scheduled time (or the player's next note) in a live app.
    """
    k = 0
    while True:
        if k % reset_every == 0:
            reset()
        k += 1
        t0 = time.perf_counter()
        e = sample()
        t1 = time.perf_counter()
        took = t1 - t0
        if idle is not None:
            idle()
            t1 = time.perf_counter()
        feed(e)
        t2 = time.perf_counter()
        if release is not None:
            release(e)
        yield took, t2 - t1


def interleave(loops: dict, n: int, warmup: int, chunk: int, settle: int) -> dict:
    """Run the loops round-robin, ``chunk`` timed events at a time, until each has ``n``.

    On a shared machine the load changes over minutes; interleaving exposes every
    implementation to the same conditions, so ratios stay fair. After each switch the
    first ``settle`` events are not kept (their weights were evicted from the caches by the
    other implementations), like the ``warmup`` events at the start.
    """
    times = {name: ([], []) for name in loops}
    for it in loops.values():
        for _ in range(warmup):
            next(it)
    gc.collect()
    while any(len(ts) < n for ts, _ in times.values()):
        for name, it in loops.items():
            ts, tf = times[name]
            if len(ts) >= n:
                continue
            for _ in range(settle):
                next(it)
            for _ in range(min(chunk, n - len(ts))):
                a, b = next(it)
                ts.append(a)
                tf.append(b)
    return {name: {"feed": pct(tf), "sample": pct(ts),
                   "event": pct([a + b for a, b in zip(ts, tf)])}
            for name, (ts, tf) in times.items()}


def reference_loop(ref, scenario: str, api: str):
    """The reference's generate loop, or None where its API cannot express the scenario."""
    sink = io.StringIO()  # the reference prints from inside sample()
    if api == "sample":
        cons = _ref_cons(scenario)

        def call():
            return ref.sample(cons).as_dict()
    else:
        kw = _ref_query_kw(scenario)
        if kw is None:
            return None

        def call():
            return ref.query(**kw)

    def sample():
        with contextlib.redirect_stdout(sink), torch.inference_mode():
            return call()

    def feed(e):
        with torch.inference_mode():
            ref.feed(e["inst"], e["pitch"], e["time"], e["vel"])

    release = None
    if scenario == "harmonizer":
        def release(e):
            if e["vel"] > 0:
                with torch.inference_mode():
                    ref.feed(e["inst"], e["pitch"], 0.0, 0.0)

    def reset():
        with torch.inference_mode():
            ref.reset()

    return loop(sample, feed, release, reset)


class PreparedCore(FastCore):
    """``FastCore`` with an idle-time ``prepare(state)`` (a measured idea, not in the library:
    no app calls it). A GRU step's hidden-side products ``W_hh h`` do not depend on the
    event fed; computed in the idle time before a feed, the following ``feed`` from that
    same state object only streams the input-side weights. Results are identical."""

    _prepared: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # (state, W_hh h)

    def prepare(self, state: torch.Tensor) -> None:
        self._prepared = (state, [self._hid[k](state[k]) for k in range(self.layers)])

    def feed(self, state, inst, pitch, time, vel):  # FastCore.feed, plus the prepared path
        prepared = self._prepared
        if prepared is None or prepared[0] is not state:
            return super().feed(state, inst, pitch, time, vel)
        torch.mul(self._f_t, float(time), out=self._phase_t)
        torch.mul(self._f_v, float(vel), out=self._phase_v)
        gi = self._in0(self._phase.sin_())
        gi += self._gate_inst[int(inst)]
        gi += self._gate_pitch[int(pitch)]
        new = torch.empty(self.layers, 1, self.hidden)
        for k in range(self.layers):
            if k:
                gi = self._in[k](new[k - 1])
            self._cell(gi, prepared[1][k], state[k], new[k])
        return new


def prepared_core(model: Notochord, precision: str) -> PreparedCore:
    """A :class:`PreparedCore` for ``model``, checked to feed exactly as ``FastCore`` does."""
    core = PreparedCore(model.net, precision=precision)
    s0 = core.feed(core.initial_state(), 0, 128, 0.0, 0.0)
    want = core.feed(s0, 5, 60, 0.25, 80.0)
    core.prepare(s0)
    if not torch.equal(core.feed(s0, 5, 60, 0.25, 80.0), want):
        raise SystemExit(f"PreparedCore {precision}: the prepared feed differs")
    return core


def ours_loop(model: Notochord, scenario: str, prepare: bool = False):
    cons = _ours_cons(scenario)

    def sample():
        return model.sample(cons)

    def feed(e):
        model.feed(e.inst, e.pitch, e.time, e.vel)

    release = None
    if scenario == "harmonizer":
        def release(e):
            if e.vel > 0:
                model.feed(e.inst, e.pitch, 0.0, 0.0)

    idle = None
    if prepare:
        def idle():
            model.core.prepare(model.get_state().rnn)

    return loop(sample, feed, release, model.reset, idle=idle)


def fbgemm_int8(net: NotochordNet, seed: int) -> Notochord | None:
    """int8 on FBGEMM alone (as before the compiled VNNI kernel), or None if that is all
    this machine has anyway."""
    if quant.c_kernels() is None:
        return None
    os.environ["NOTOCHORD_RT_INT8_KERNEL"] = "fbgemm"
    quant.c_kernels.cache_clear()
    try:
        model = Notochord.from_net(net, seed=seed)
        model.use_core("int8")
    finally:
        del os.environ["NOTOCHORD_RT_INT8_KERNEL"]
        quant.c_kernels.cache_clear()
    return model


def bench_core(model: Notochord, n: int, warmup: int) -> dict:
    """The network alone: feed, then context + the four heads with three embeddings (vtip)."""
    core = model.core
    state = core.initial_state()
    rng = np.random.default_rng(0)
    t_feed, t_heads, t_event = [], [], []
    for k in range(warmup + n):
        e = (int(rng.integers(1, 321)), int(rng.integers(0, 128)), float(rng.random()),
             float(rng.integers(0, 128)))
        t0 = time.perf_counter()
        state = core.feed(state, *e)
        t1 = time.perf_counter()
        x = core.context(state)
        for sub, val in zip("vtip", (e[3], e[2], e[0], e[1])):
            core.head(sub, x)
            if sub != "p":
                x = x + core.embed(sub, val)
        core.end_prob(state)
        t2 = time.perf_counter()
        if k >= warmup:
            t_feed.append(t1 - t0)
            t_heads.append(t2 - t1)
            t_event.append(t2 - t0)
    return {"feed": pct(t_feed), "sample": pct(t_heads), "event": pct(t_event)}


def bench_streams(net: NotochordNet, precision: str, sizes: list[int], events: int) -> dict:
    out = {}
    for n in sizes:
        st = Streams(net, n, precision=precision, seed=0)
        idx = np.arange(n)
        steps = max(5, events // n)
        for _ in range(2):  # warm-up
            st.feed_events(idx, st.sample())
        gc.collect()
        t0 = time.perf_counter()
        for s in range(steps):
            if s and s % 64 == 0:
                st.reset()
            st.feed_events(idx, st.sample())
        dt = time.perf_counter() - t0
        out[n] = {"events_per_s": n * steps / dt, "step_ms": 1e3 * dt / steps}
    return out


# -- report ------------------------------------------------------------------------------
def _fmt(d: dict | None, key: str) -> str:
    if d is None:
        return "      n/a     "
    return f"{d[key]['p50']:6.2f} / {d[key]['p99']:6.2f}"


def report(res: dict) -> None:
    m = res["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
          f"({m['cpu_capability']}), {m['threads']} thread, python {m['python']}, "
          f"load {m['loadavg_start']}")
    print("latency in ms, p50 / p99 (generate loop: sample, then feed the sampled event)")
    if "method" in res:
        md = res["method"]
        print(f"{md['iters']} timed events per scenario after {md['warmup']} warm-up; "
              f"implementations interleaved {md['chunk']} at a time, {md['settle']} untimed "
              "after each switch")
    print("'+prepare': PreparedCore.prepare(state) runs untimed between sample and feed (the idle")
    print("wait for the event's time in a live app), so feed streams only input-side weights")
    rows = res["rows"]
    for scen in res["scenarios"]:
        print(f"\n[{scen}]")
        print(f"  {'implementation':22s} {'feed':>15s} {'sample':>15s} {'feed+sample':>15s}")
        for name, r in rows.items():
            d = r.get(scen)
            print(f"  {name:22s} {_fmt(d, 'feed')} {_fmt(d, 'sample')} {_fmt(d, 'event')}")
    print("\nratios (reference p50 / ours p50, feed+sample):")
    for scen in res["scenarios"]:
        for base in ("reference sample", "reference query"):
            b = rows[base].get(scen)
            if b is None:
                continue
            parts = []
            for name, r in rows.items():
                if name.startswith("ours"):
                    parts.append(f"{name[5:]} {b['event']['p50'] / r[scen]['event']['p50']:.1f}x")
            print(f"  {scen:14s} vs {base:17s}: " + ", ".join(parts))
    print("\nnetwork alone (ours; 'sample' = context + 4 heads + 3 embeddings, no sampler):")
    for prec, d in res["network"].items():
        print(f"  {prec:22s} {_fmt(d, 'feed')} {_fmt(d, 'sample')} {_fmt(d, 'event')}")
    print("\ngoals:")
    for line in res["goals"]:
        print("  " + line)
    print("\nmany streams (batched engine, unconstrained sample + feed per stream):")
    for prec, table in res["streams"].items():
        cells = ", ".join(f"{n}: {v['events_per_s']:.0f} ev/s ({v['step_ms']:.1f} ms/step)"
                          for n, v in table.items())
        print(f"  {prec}: {cells}")


def goals(rows: dict) -> list[str]:
    out = []
    ref_s = rows["reference sample"]["unconstrained"]["event"]["p50"]
    ref_q = rows["reference query"]["unconstrained"]["event"]["p50"]
    fp32 = rows["ours fp32"]["unconstrained"]["event"]
    out.append(f"fp32 feed+sample {fp32['p50']:.2f} ms vs reference feed+sample {ref_s:.2f} ms: "
               f"{ref_s / fp32['p50']:.1f}x (goal >= 4x) "
               f"[{'met' if ref_s / fp32['p50'] >= 4 else 'NOT met'}]")
    out.append(f"fp32 feed+sample {fp32['p50']:.2f} ms vs reference feed+query {ref_q:.2f} ms "
               f"(goal: no slower) [{'met' if fp32['p50'] <= ref_q else 'NOT met'}]")
    for name, r in rows.items():
        if name.startswith("ours") and name not in ("ours fp32", "ours module") \
                and "+prepare" not in name:
            e = r["unconstrained"]["event"]
            tail = e["p99"] - e["p50"]
            out.append(f"{name[5:]} full event p50 {e['p50']:.2f} ms (goal <= 1.5) "
                       f"[{'met' if e['p50'] <= 1.5 else 'NOT met'}], p99-p50 {tail:.2f} ms "
                       f"(goal <= 1) [{'met' if tail <= 1 else 'NOT met'}]")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=300, help="timed events per scenario")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stream-events", type=int, default=1024,
                    help="events per stream-count measurement")
    ap.add_argument("--chunk", type=int, default=100,
                    help="timed events per implementation before switching to the next")
    ap.add_argument("--settle", type=int, default=20,
                    help="untimed events after each switch (caches refill)")
    ap.add_argument("--quick", action="store_true", help="few iterations (smoke run)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.iters, args.warmup, args.stream_events, args.chunk = 20, 3, 64, 10
    scenarios = ["unconstrained", "harmonizer", "poly_duration"]
    res: dict = {"machine": machine_info(), "scenarios": scenarios, "rows": {}, "network": {},
                 "method": {"iters": args.iters, "warmup": args.warmup, "chunk": args.chunk,
                            "settle": args.settle}}
    with tempfile.TemporaryDirectory() as tmp:
        ref, net = build_models(args.seed, Path(tmp))
    precisions = ["module"] + list(available_precisions())
    impls: dict = {"reference sample": (ref, "sample"), "reference query": (ref, "query")}
    for prec in precisions:
        for prepare in ((False, True) if prec in ("fp32", "int8") else (False,)):
            model = Notochord.from_net(net, seed=args.seed)
            model.use_core(prepared_core(model, prec) if prepare else prec)
            impls[f"ours {prec}" + (" +prepare" if prepare else "")] = (model, prepare)
        if prec == "int8" and (model := fbgemm_int8(net, args.seed)) is not None:
            impls["ours int8 FBGEMM"] = (model, False)
    gc.collect()
    gc.freeze()  # long-lived model objects out of the collector's way (all sides)
    rows: dict = {name: {} for name in impls}
    res["rows"] = rows
    for scen in scenarios:
        loops = {}
        for name, (obj, arg) in impls.items():
            lp = (reference_loop(obj, scen, arg) if name.startswith("reference")
                  else ours_loop(obj, scen, prepare=arg))
            if lp is None:
                rows[name][scen] = None
            else:
                loops[name] = lp
        rows_s = interleave(loops, args.iters, args.warmup, args.chunk, args.settle)
        for name, r in rows_s.items():
            rows[name][scen] = r
        print(f"done: {scen}", file=sys.stderr)
    for name, (obj, prepare) in impls.items():
        if name.startswith("ours") and not prepare:
            res["network"][name[5:]] = bench_core(obj, args.iters, args.warmup)
    res["goals"] = goals(rows)
    sizes = [1, 8, 32, 128]
    fastest = "int8" if "int8" in available_precisions() else "fp32"
    res["streams"] = {p: bench_streams(net, p, sizes, args.stream_events)
                      for p in dict.fromkeys(["fp32", fastest])}
    res["machine"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
