"""Training throughput and quality: ours against the reference trainer, same data, same net.

Both trainers get the same MIDI files (our ``prep`` decides the split; the reference
preprocesses exactly our training files with its own ``notochord.lakh_prep`` and trains
on all of them), the same architecture, batch size, crop length and optimiser settings,
one training process each with the same number of data-loader workers. The trainers
take turns of a few seconds in this process (round robin) until each has trained for
the same wall-clock budget, so that load from other users of a shared machine falls
on all of them alike. Each is stepped with its own training-loop body (the reference's
copied from its ``Trainer.train``, TensorBoard logging included; ours is
``Trainer.train_step`` as ``fit`` calls it). Printed:

* training events per second (batch_size x batch_len per step, padding included, as the
  reference counts its exposure; data loading included) over the whole budget and in
  the steady state (leaving out the first steps: worker start-up, compilation), and the
  ratios ours / reference, for each of our variants (fp32, bf16 autocast, compiled);
* validation NLL (nats/event, canonical order i->p->t->v, whole pieces from the start
  state) of both models on our validation pieces after the budget, computed for the
  reference model with its own forward pass.

Usage::

    python benchmarks/train.py --budget 240            # the full comparison (~10 min)
    python benchmarks/train.py --short                 # a 1-minute check that it all runs

Needs the reference ``notochord`` package (``pip install --no-deps notochord==0.8.0``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_line

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIDI = Path("/work/shared/corpus/mma")
WARM = 3  # steps left out of the steady-state rate (worker start, compilation)


def machine() -> str:
    return machine_line()


# -- data -----------------------------------------------------------------------------------
def pick_files(folder: Path, n: int, dest: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    rng = np.random.default_rng(0)
    chosen = [files[i] for i in sorted(rng.permutation(len(files))[:n])]
    dest.mkdir(parents=True)
    out = []
    for k, p in enumerate(chosen):
        q = dest / f"{k:05d}_{p.name}"
        shutil.copyfile(p, q)
        out.append(q)
    return out


def prep_ours(midi: Path, dest: Path) -> None:
    from notochord_rt.data.prep.pipeline import prepare

    prepare([str(midi)], str(dest), jobs=2)


def prep_reference(ours: Path, dest_midi: Path, dest: Path) -> int:
    """Run the reference preprocessing on exactly our training files."""
    from notochord import lakh_prep

    from notochord_rt.data.store import EventStore

    dest_midi.mkdir(parents=True)
    records = EventStore(ours, "train").records()
    for r in records:
        src = Path(r.get("source") or r.get("path"))
        shutil.copyfile(src, dest_midi / src.name)
    lakh_prep.main(str(dest_midi), str(dest), n_jobs=2)
    return len(list(dest.glob("**/*.pkl")))


def valid_pieces(ours: Path, limit: int):
    from notochord_rt.data.store import EventStore

    store = EventStore(ours, "valid")
    return [store[k] for k in range(min(len(store), limit))]


# -- the trainers, one optimisation step at a time -------------------------------------------
class ReferenceRunner:
    """The reference ``Trainer`` and its training-loop body (notochord/train.py), stepped
    from outside so that the trainers can take turns on a shared machine."""

    name = "reference"

    def __init__(self, args, pkl: Path, work: Path):
        import itertools as it

        from notochord.train import Trainer as RefTrainer
        from torch.utils.data import DataLoader

        t = RefTrainer(
            experiment="bench", model_dir=str(work / "ref_models"),
            log_dir=str(work / "ref_logs"), data_dir=str(pkl),
            results_dir=str(work / "ref_results"), model=model_kw(args),
            batch_size=args.batch_size, batch_len=args.batch_len, lr=args.lr,
            n_jobs=args.workers, device="cpu", seed=0,
        )
        t.train_dataset = t.dataset  # train on every file it was given (ours: whole split)
        loader = DataLoader(t.train_dataset, t.batch_size, shuffle=True,
                            num_workers=t.n_jobs, pin_memory=False)
        self.batches = it.chain.from_iterable(it.repeat(loader))  # as its train() does
        t.model.train()
        self.trainer, self.model = t, t.model

    def step(self) -> None:
        t = self.trainer
        batch = next(self.batches)
        mask, end = batch["mask"], batch["end"]
        inst, pitch = batch["instrument"], batch["pitch"]
        time_, vel = batch["time"], batch["velocity"]
        t.iteration += 1
        t.exposure += t.batch_size * t.batch_len
        t.opt.zero_grad()
        result = t.model(inst, pitch, time_, vel, end)
        losses = t.get_loss_components(result, mask[..., 1:])
        loss = sum(losses.values())
        loss.backward()
        logs = t.process_grad()
        t.opt.step()
        logs |= {k: v.item() for k, v in losses.items()}
        logs |= {"loss": loss.item()}
        logs |= {k: v.item() for k, v in result.items() if v.numel() == 1}
        t.log("train", logs)


class OursRunner:
    """Our Trainer, stepped exactly as its ``fit`` does (seeding, logging included)."""

    def __init__(self, args, data: Path, work: Path, variant: str):
        from notochord_rt.train.batches import seed_all, step_seed
        from notochord_rt.train.config import TrainConfig
        from notochord_rt.train.trainer import Trainer

        precision, _, extra = variant.partition("+")
        cfg = TrainConfig(
            data=str(data), out=str(work / f"ours_{variant}"), model=model_kw(args),
            batch_size=args.batch_size, batch_len=args.batch_len, lr=args.lr,
            num_workers=args.workers, device="cpu", precision=precision,
            compile=extra == "compile", progress=False, seed=0,
        )
        self.name = f"ours {variant}"
        self.trainer = Trainer(cfg)
        self.model = self.trainer.model
        self.batches = self.trainer._train_batches(0)
        self._seed = lambda s: seed_all(step_seed(cfg.seed, 0, s))

    def step(self) -> None:
        t = self.trainer
        self._seed(t.step)
        logs = t.train_step(next(self.batches))
        t._log("train", logs)


def run_interleaved(runners: list, budget: float, turn: float) -> dict[str, list[float]]:
    """Round-robin turns of ``turn`` seconds until each runner has trained ``budget``
    seconds, so that load from other users of the machine hits all of them alike."""
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    spent = dict.fromkeys(times, 0.0)
    while min(spent.values()) < budget:
        for r in runners:
            if spent[r.name] >= budget:
                continue
            end = spent[r.name] + turn
            while spent[r.name] < min(end, budget):
                t0 = time.perf_counter()
                r.step()
                dt = time.perf_counter() - t0
                times[r.name].append(dt)
                spent[r.name] += dt
    return times


def reference_by_our_eval(runner, pieces, work: Path) -> dict:
    """The reference model saved as its trainer would, imported, scored by our evaluate
    (a cross-check of both the evaluation and the checkpoint import)."""
    from notochord_rt.model.network import NotochordNet
    from notochord_rt.train.evaluate import CANONICAL_ORDER, evaluate

    path = work / "ref_final.ckpt"
    torch.save({"kw": {"model": runner.trainer.kw["model"]},
                "model_state": runner.model.state_dict()}, path)
    return evaluate(NotochordNet.load(path), pieces, orders=(CANONICAL_ORDER,))["nll"]


@torch.no_grad()
def reference_valid_nll(model, pieces) -> dict:
    """Whole-piece NLL of the reference model, canonical order, with its own forward."""
    from notochord.util import gen_masks

    mask = next(m for perm, m in gen_masks(4) if list(perm) == [0, 1, 2, 3])
    model.eval()
    sums = dict.fromkeys(("inst", "pitch", "time", "vel", "end"), 0.0)
    names = {"inst": "instrument_log_probs", "pitch": "pitch_log_probs",
             "time": "time_log_probs", "vel": "velocity_log_probs", "end": "end_log_probs"}
    events = 0
    for p in pieces:
        n = len(p)
        end = np.zeros(n + 1, dtype=np.int64)
        end[-1] = 1
        seq = [torch.as_tensor(np.concatenate([[s], x]))[None] for s, x in
               zip((0, 128, 0.0, 0.0), (p.inst, p.pitch, p.deltas(), p.vel))]
        r = model(seq[0].long(), seq[1].long(), seq[2].float(), seq[3].float(),
                  torch.as_tensor(end)[None], validation=False, ar_mask=mask)
        for k, name in names.items():
            sums[k] += float(r[name].double().sum())
        events += n
    nll = {k: -v / events for k, v in sums.items()}
    nll["total"] = sum(nll.values())
    return nll


# -- ours ------------------------------------------------------------------------------------
def model_kw(args) -> dict:
    return {"emb_size": args.emb, "rnn_hidden": args.hidden, "rnn_layers": args.layers,
            "mlp_layers": args.mlp}


def rates(step_seconds: list[float], args) -> dict:
    """Throughput over the whole budget and in the steady state (after WARM steps)."""
    per_step = args.batch_size * args.batch_len
    steady = step_seconds[WARM:] or step_seconds
    return {"steps": len(step_seconds), "seconds": sum(step_seconds),
            "events_per_s": len(step_seconds) * per_step / sum(step_seconds),
            "steady_events_per_s": len(steady) * per_step / sum(steady)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--midi", type=Path, default=DEFAULT_MIDI if DEFAULT_MIDI.exists()
                    else ROOT / "examples" / "midi")
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--budget", type=float, default=240.0, help="seconds of training each")
    ap.add_argument("--turn", type=float, default=10.0,
                    help="seconds per turn when the trainers take turns")
    ap.add_argument("--emb", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--mlp", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batch-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--workers", type=int, default=1, help="data-loader workers, both")
    ap.add_argument("--ours", default="fp32,bf16",
                    help="our variants, comma-separated: fp32, bf16, fp32+compile, "
                         "bf16+compile")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--valid-pieces", type=int, default=40)
    ap.add_argument("--only", choices=("ours", "reference"), help="run one side only")
    ap.add_argument("--short", action="store_true", help="quick check: tiny everything")
    ap.add_argument("--keep", type=Path, help="keep the work folder here")
    args = ap.parse_args()
    if args.short:
        args.files, args.budget, args.emb, args.hidden = min(args.files, 60), 15.0, 64, 128
        args.turn = 5.0
        args.batch_size, args.valid_pieces = 16, 8
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"model: {model_kw(args)}, batch {args.batch_size} x {args.batch_len}, "
          f"workers {args.workers}, budget {args.budget:.0f} s each, ours: {args.ours}")

    work = Path(tempfile.mkdtemp(prefix="bench-train-")) if args.keep is None else args.keep
    try:
        t = time.perf_counter()
        midi = pick_files(args.midi, args.files, work / "midi")
        prep_ours(work / "midi", work / "ours")
        n_ref = prep_reference(work / "ours", work / "ref_midi", work / "ref_pkl")
        pieces = valid_pieces(work / "ours", args.valid_pieces)
        print(f"data: {len(midi)} files from {args.midi}; reference prepped {n_ref} training "
              f"files; {len(pieces)} validation pieces ({sum(len(p) for p in pieces)} events); "
              f"prep took {time.perf_counter() - t:.0f} s")

        from notochord_rt.train.evaluate import CANONICAL_ORDER, evaluate

        runners: list = []
        if args.only != "reference":
            runners += [OursRunner(args, work / "ours", work, v) for v in args.ours.split(",")]
        if args.only != "ours":
            torch.manual_seed(0)
            runners.append(ReferenceRunner(args, work / "ref_pkl", work))
        times = run_interleaved(runners, args.budget, args.turn)
        results = {}
        for r in runners:
            results[r.name] = rates(times[r.name], args)
            if isinstance(r, OursRunner):
                nll = evaluate(r.model, pieces, orders=(CANONICAL_ORDER,))["nll"]
            else:
                nll = reference_valid_nll(r.model, pieces)
                results[r.name]["valid_nll_our_eval"] = reference_by_our_eval(r, pieces, work)
            results[r.name]["valid_nll"] = nll
        for name, r in results.items():
            nll = r["valid_nll"]
            terms = " + ".join(f"{k} {nll[k]:.3f}" for k in ("inst", "pitch", "time", "vel", "end"))
            print(f"{name:18} {r['events_per_s']:7.0f} events/s ({r['steady_events_per_s']:.0f} "
                  f"steady), {r['steps']} steps in {r['seconds']:.1f} s; "
                  f"valid NLL {nll['total']:.4f} = {terms}")
        if "reference" in results:
            print(f"reference model scored by our evaluate after import: valid NLL "
                  f"{results['reference']['valid_nll_our_eval']['total']:.4f}")
        ref = results.get("reference")
        for name, r in results.items():
            if ref is not None and name != "reference":
                ratio = r["events_per_s"] / ref["events_per_s"]
                steady = r["steady_events_per_s"] / ref["steady_events_per_s"]
                print(f"throughput ratio {name} / reference: {ratio:.2f}x "
                      f"(steady state {steady:.2f}x)")
                r["ratio"], r["steady_ratio"] = ratio, steady
        print("json: " + json.dumps(results, default=float))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(math.isfinite(r["events_per_s"]) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
