"""``notochord-rt finetune MIDI... --from NAME|PATH --out DIR``: a model of your own MIDI.

Prepares the files (cached in DIR: a second run reuses them), holds some out by content
hash, trains from the base model with small-data defaults and early stopping, then prints
a before/after table (NLL per sub-event on the held-out files, music statistics of
sampled pieces against them) and writes a sample (MIDI and PNG). Ctrl-C stops training
and keeps the best checkpoint so far. See docs/finetune.md.

Example::

    notochord-rt finetune my-midi/ --from default --out tuned/ --minutes 10
    notochord-rt play --checkpoint tuned/model.safetensors
"""

from __future__ import annotations

import argparse
import sys

NAME = "finetune"
HELP = "fine-tune a model on your own MIDI files in one command (prep, train, before/after)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..apps.offline.finetune import FinetuneOptions

    d = FinetuneOptions()
    parser.add_argument("midi", nargs="+", metavar="MIDI",
                        help="MIDI files or folders of them (searched recursively)")
    parser.add_argument("--from", dest="base", default="default", metavar="NAME|PATH",
                        help="model to start from: a registry name (`notochord-rt models "
                             "list`), a checkpoint file or run folder (default: default)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the prepared data, the run and the result")
    parser.add_argument("--minutes", type=float, default=d.minutes,
                        help=f"training time budget (default {d.minutes:g})")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="also stop after this many optimisation steps")
    parser.add_argument("--freeze-rnn", action="store_true",
                        help="train only embeddings and heads (less forgetting, faster)")
    parser.add_argument("--lr", type=float, default=d.lr,
                        help=f"learning rate (default {d.lr:g})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help=f"crops per step (default {d.batch_size})")
    parser.add_argument("--eval-every", type=int, default=d.eval_every,
                        help=f"steps between validations (default {d.eval_every})")
    parser.add_argument("--patience", type=int, default=d.patience,
                        help=f"validations without improvement before stopping "
                             f"(default {d.patience})")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (default 0)")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help=f"torch CPU threads (default {d.threads})")
    parser.add_argument("-j", "--jobs", type=int, default=d.jobs,
                        help="processes reading MIDI files (default 1)")
    parser.add_argument("--stats-samples", type=int, default=d.stats_samples,
                        help=f"pieces sampled from each model for the music statistics "
                             f"(default {d.stats_samples}; 0 = none)")
    parser.add_argument("--restart", action="store_true",
                        help="replace an earlier fine-tune in --out (its prep is reused)")
    parser.add_argument("--download", action="store_true",
                        help="pull the registry model named by --from if it is not cached")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def table(result) -> str:
    """The before/after table of a :class:`~notochord_rt.apps.offline.finetune.FinetuneResult`."""
    b, a = result.nll_before, result.nll_after
    lines = [f"held-out NLL per event (nats, order i>p>t>v, {result.data['pieces']['test']} "
             f"test pieces, {result.data['events']['test']} events)",
             f"{'':10}{'before':>9}{'after':>9}{'change':>9}"]
    for k in ("inst", "pitch", "time", "vel", "end", "total"):
        lines.append(f"{k:10}{b[k]:9.3f}{a[k]:9.3f}{a[k] - b[k]:+9.3f}")
    music = result.music
    if music.get("features"):
        lines += ["", f"music statistics: {music['samples']} pieces of {music['seconds']:g} s "
                      "sampled from each model vs the held-out pieces (means)",
                  f"{'':16}{'before':>9}{'after':>9}{'held-out':>9}"]
        for f, vals in music["features"].items():
            lines.append(f"{f:16}{_fmt(vals.get('before')):>9}{_fmt(vals.get('after')):>9}"
                         f"{_fmt(vals.get('held-out')):>9}")
        if "overlap_before" in music and "overlap_after" in music:
            lines.append(f"{'mean overlap':16}{_fmt(music['overlap_before']):>9}"
                         f"{_fmt(music['overlap_after']):>9}{'1':>9}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..apps.loading import resolve_for_cli
    from ..apps.offline.finetune import FinetuneOptions, run_finetune
    from ._common import torch_threads_restored

    base = str(resolve_for_cli(args.base, "--from", download=args.download))
    opts = FinetuneOptions(minutes=args.minutes, max_steps=args.max_steps,
                           freeze_rnn=args.freeze_rnn, lr=args.lr, batch_size=args.batch_size,
                           eval_every=args.eval_every, patience=args.patience, seed=args.seed,
                           threads=args.threads, jobs=args.jobs,
                           stats_samples=args.stats_samples)
    with tqdm(total=1000, desc="finetune", unit="‰", disable=None if args.progress else True,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}") as bar, \
            torch_threads_restored():
        def progress(stage: str, done: float) -> None:
            bar.set_description(f"finetune: {stage}")
            bar.update(max(0, round(1000 * done) - bar.n))

        result = run_finetune(args.midi, base, args.out, opts, progress, restart=args.restart)
    d = result.data
    out = [f"data: {d['pieces']['train']} pieces to train on ({d['events']['train']} events, "
           f"{d['seconds']['train'] / 60:.1f} min), {d['pieces']['valid']} to validate, "
           f"{d['pieces']['test']} to test; {d['skipped']} file(s) skipped",
           f"training: {result.steps} steps in {result.train_seconds:.0f} s, best at step "
           f"{result.best_step}; stopped: {result.stopped}; wall time "
           f"{result.wall_seconds:.0f} s", "", table(result), "",
           "wrote " + ", ".join([result.model, *result.samples,
                                  str(result.out) + "/finetune.json"]),
           *result.notes, "",
           f"use it: notochord-rt play --checkpoint {result.model}",
           f"        notochord-rt generate --checkpoint {result.model} --out piece.mid"]
    print("\n".join(out), file=sys.stdout)  # noqa: T201
    return 0
