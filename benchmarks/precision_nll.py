"""What reduced precision costs in likelihood: held-out NLL of FastCore fp32 vs bf16/fp16/int8.

Trains (or loads) a small model on MIDI files, then scores held-out pieces teacher-forced
in the order ``itpv`` (i, then t|i, p|i,t, v|i,t,p) three ways: the module's batched
``forward(cond="itpv")``, and :class:`~notochord_rt.engine.cores.fast.FastCore` stepping one
event at a time in each precision (the inference path, where quantisation errors can
accumulate in the recurrent state). Reports nats per event and the change against fp32.

``python benchmarks/precision_nll.py --midi DIR [--train-minutes 5] [--save model.safetensors]``
or ``--load model.safetensors`` to score an existing model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

warnings.filterwarnings("ignore")

from notochord_rt import events as ev  # noqa: E402
from notochord_rt.engine.cores.fast import FastCore  # noqa: E402
from notochord_rt.engine.cores.quant import available_precisions, c_kernels  # noqa: E402
from notochord_rt.errors import MidiError  # noqa: E402
from notochord_rt.midi.ingest import load_midi  # noqa: E402
from notochord_rt.model.distributions import MixtureParams  # noqa: E402
from notochord_rt.model.network import NotochordNet  # noqa: E402


def load_pieces(folders: list[Path], max_files: int, seed: int) -> list[np.ndarray]:
    """Pieces as ``(N, 4)`` float arrays (inst, pitch, delta time, vel), start event excluded."""
    files = sorted(f for d in folders for f in d.rglob("*.mid"))
    rng = np.random.default_rng(seed)
    if len(files) > max_files:
        files = [files[i] for i in sorted(rng.choice(len(files), max_files, replace=False))]
    pieces = []
    for f in tqdm(files, desc="reading MIDI", leave=False):
        try:
            e = load_midi(f).events
        except MidiError:
            continue
        if len(e) < 16:
            continue
        dt = np.minimum(e.deltas(), ev.TIME_MAX)
        pieces.append(np.stack([e.inst, e.pitch, dt, e.vel], 1).astype(np.float64))
    return pieces


def _with_start(piece: np.ndarray) -> np.ndarray:
    start = np.array([[ev.START_INST, ev.START_PITCH, 0.0, 0.0]])
    return np.concatenate([start, piece])


def train(net: NotochordNet, pieces: list[np.ndarray], minutes: float, batch: int,
          length: int, seed: int) -> int:
    """A plain teacher-forced loop on random crops (start event prepended when at 0)."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.01)
    net.train()
    t_end = time.time() + 60 * minutes
    steps = 0
    bar = tqdm(desc="training", unit="step")
    while time.time() < t_end:
        rows = []
        for _ in range(batch):
            p = _with_start(pieces[rng.integers(len(pieces))])
            k = int(rng.integers(0, max(1, len(p) - length)))
            crop = p[k:k + length]
            if len(crop) < length:
                pad = np.tile(crop[-1:], (length - len(crop), 1))
                crop = np.concatenate([crop, pad])
            rows.append(crop)
        x = torch.tensor(np.stack(rows))
        out = net(x[..., 0].long(), x[..., 1].long(), x[..., 2].float(), x[..., 3].float(),
                  cond="itpv")
        loss = -sum(out[k].mean() for k in ("inst", "pitch", "time", "vel"))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        steps += 1
        bar.update()
        bar.set_postfix(loss=f"{float(loss):.3f}")
    bar.close()
    net.eval()
    return steps


@torch.no_grad()
def nll_module(net: NotochordNet, pieces: list[np.ndarray]) -> float:
    total, count = 0.0, 0
    for p in pieces:
        x = torch.tensor(_with_start(p))[None]
        out = net(x[..., 0].long(), x[..., 1].long(), x[..., 2].float(), x[..., 3].float(),
                  cond="itpv")
        total -= float(sum(out[k].sum() for k in ("inst", "pitch", "time", "vel")))
        count += len(p)
    return total / count


@torch.no_grad()
def nll_fast(net: NotochordNet, core: FastCore, pieces: list[np.ndarray]) -> float:
    """Teacher-forced NLL in order ``itpv``, stepping the core event by event (one batch)."""
    n = len(pieces)
    length = max(len(p) for p in pieces)
    data = np.zeros((n, length, 4))
    mask = np.zeros((n, length), dtype=bool)
    for k, p in enumerate(pieces):
        data[k, : len(p)] = p
        data[k, len(p):] = [1, 60, 0.0, 0.0]  # padding, masked out
        mask[k, : len(p)] = True
    x = torch.tensor(data)
    m = torch.tensor(mask)
    state = core.initial_state_batch(n)
    state = core.feed_batch(state, torch.zeros(n, dtype=torch.long),
                            torch.full((n,), ev.START_PITCH), torch.zeros(n), torch.zeros(n))
    total = 0.0
    for t in range(length):
        i, p = x[:, t, 0].long(), x[:, t, 1].long()
        tt, v = x[:, t, 2].float(), x[:, t, 3].float()
        ctx = core.context_batch(state)
        lp = torch.log_softmax(core.head_batch("i", ctx), -1).gather(1, i[:, None])[:, 0]
        ctx = ctx + core.embed_batch("i", i)
        mix = core.head_batch("t", ctx)
        lp += net.time_dist.log_prob(MixtureParams(mix[:, 0], mix[:, 1], mix[:, 2]), tt)
        ctx = ctx + core.embed_batch("t", tt)
        lp += torch.log_softmax(core.head_batch("p", ctx), -1).gather(1, p[:, None])[:, 0]
        ctx = ctx + core.embed_batch("p", p)
        mix = core.head_batch("v", ctx)
        lp += net.vel_dist.log_prob(MixtureParams(mix[:, 0], mix[:, 1], mix[:, 2]), v)
        total -= float(lp[m[:, t]].sum())
        state = core.feed_batch(state, i, p, tt, v)
    return total / int(m.sum())


def nll_fast_batch1(net: NotochordNet, core: FastCore, pieces: list[np.ndarray]) -> float:
    """:func:`nll_fast` one piece at a time: batch 1, the live path (for int8 on a CPU with
    AVX-512 VNNI that is the compiled kernel; batches use FBGEMM)."""
    total = sum(nll_fast(net, core, [p]) * len(p) for p in pieces)
    return total / sum(len(p) for p in pieces)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--midi", type=Path, nargs="+", default=[Path("examples/midi")])
    ap.add_argument("--max-files", type=int, default=400)
    ap.add_argument("--held-out", type=int, default=24, help="pieces kept for scoring")
    ap.add_argument("--max-events", type=int, default=512, help="events scored per piece")
    ap.add_argument("--load", type=Path, help="score this model instead of training one")
    ap.add_argument("--save", type=Path, help="save the trained model here")
    ap.add_argument("--train-minutes", type=float, default=5.0)
    ap.add_argument("--size", default="emb_size=128,rnn_hidden=256,rnn_layers=2,mlp_layers=2")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pieces = load_pieces(args.midi, args.max_files, args.seed)
    if len(pieces) <= args.held_out:
        print(f"need more than {args.held_out} pieces, found {len(pieces)}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(pieces))
    test = [pieces[k][: args.max_events] for k in order[: args.held_out]]
    train_set = [pieces[k] for k in order[args.held_out:]]
    info = {"pieces_train": len(train_set), "pieces_test": len(test),
            "events_test": int(sum(len(p) for p in test))}
    if args.load:
        net = NotochordNet.load(args.load)
        info["model"] = str(args.load)
    else:
        size = {k: int(v) for k, v in (kv.split("=") for kv in args.size.split(","))}
        net = NotochordNet(dropout=0.0, **size)
        info["steps"] = train(net, train_set, args.train_minutes, args.batch, args.length,
                              args.seed)
        info["model"] = f"trained here: {size}, {info['steps']} steps"
        if args.save:
            net.save(args.save)
    net.eval()
    info["params"] = sum(p.numel() for p in net.parameters())
    res = {"module": nll_module(net, test)}
    threads = torch.get_num_threads()
    for prec in available_precisions():
        # every layer in the reduced precision (min_reduced=0): the worst case; by default
        # FastCore keeps small layers in fp32 (see quant.default_min_reduced)
        core = FastCore(net, prec, threads=threads, min_reduced=0)
        res[prec] = nll_fast(net, core, test)
        if prec == "int8" and c_kernels() is not None:
            res["int8 batch-1 (VNNI kernel)"] = nll_fast_batch1(net, core, test)
    print(f"model: {info['model']} ({info['params']} parameters); held-out: "
          f"{info['pieces_test']} pieces, {info['events_test']} events")
    for name, v in res.items():
        delta = v - res["fp32"]
        print(f"  {name:26s} NLL {v:8.4f} nats/event   change vs fp32 {delta:+.5f}")
    assert math.isfinite(res["fp32"])
    if args.json:
        args.json.write_text(json.dumps({"info": info, "nll": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
