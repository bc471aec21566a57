"""``notochord-rt stats INPUT... [--against REF...] [--rhythm CHECKPOINT]``: a yardstick.

Objective statistics of MIDI files, folders of MIDI files and prepared data folders
(``--split``, default test): per-piece features averaged per set; with ``--against``
the per-feature KDE overlap area and KL divergence between the two sets; with
``--rhythm`` the teacher-forced rhythm test of a model on the INPUT pieces. ``--json``
prints everything as JSON (no NaN: undefined values are null), ``--png DIR`` writes
plots. Definitions: docs/stats.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import UserError

NAME = "stats"
HELP = "objective statistics of MIDI sets, set-vs-set overlap/KL, teacher-forced rhythm test"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="MIDI file, folder of MIDI files, or prepared data folder")
    parser.add_argument("--against", nargs="+", metavar="REF",
                        help="reference set (same kinds of input): overlap and KL per feature")
    parser.add_argument("--split", default="test",
                        help="split read from prepared folders (default test)")
    parser.add_argument("--limit", type=int, help="use only the first N pieces of each set")
    parser.add_argument("--name", help="label of the INPUT set (default: first input's name)")
    parser.add_argument("--against-name", help="label of the reference set")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--out", help="also write the JSON results to this file")
    parser.add_argument("--no-pieces", dest="per_piece", action="store_false",
                        help="leave the per-piece statistics out of the JSON")
    parser.add_argument("--png", metavar="DIR", help="write features.png and ioi.png here")
    parser.add_argument("--window", type=float, default=8.0,
                        help="seconds per window of the windowed statistics (default 8)")
    parser.add_argument("--tolerance", type=float, default=0.1,
                        help="grid tolerance as a fraction of a 16th (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of chance levels and samples")
    rhythm = parser.add_argument_group("teacher-forced rhythm test")
    rhythm.add_argument("--rhythm", metavar="CHECKPOINT",
                        help="run the test of this model ('default', a run folder or a "
                             "weights file) on the INPUT pieces")
    rhythm.add_argument("--rhythm-pieces", type=int, default=30,
                        help="pieces, evenly spread over the INPUT set (default 30)")
    rhythm.add_argument("--rhythm-positions", type=int, default=100,
                        help="positions per piece (default 100)")
    rhythm.add_argument("--rhythm-samples", type=int, default=1,
                        help="next onsets sampled per position (default 1)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def _label(inputs: list[str], given: str | None) -> str:
    if given:
        return given
    p = Path(inputs[0])
    name = p.name or str(p)
    return name + ("+" if len(inputs) > 1 else "")


def run(args: argparse.Namespace) -> int:
    from ..analysis import report
    from ..analysis.compare import compare, mean_overlap
    from ..analysis.features import StatsConfig
    from ..analysis.sets import analyse, find_sources

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    for flag in ("rhythm_pieces", "rhythm_positions", "rhythm_samples"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    try:
        cfg = StatsConfig(window=args.window, tolerance=args.tolerance, seed=args.seed).check()
    except ValueError as e:
        raise UserError(str(e)) from None
    sources = find_sources(args.inputs, args.split, args.limit)
    ref_sources = find_sources(args.against, args.split, args.limit) if args.against else None
    a = analyse(_label(args.inputs, args.name), sources, cfg, progress=args.progress)
    sets = [a]
    if ref_sources is not None:
        b_name = _label(args.against, args.against_name)
        if b_name == a.name:
            b_name += " (ref)"
        sets.append(analyse(b_name, ref_sources, cfg, progress=args.progress))
    if not a.pieces:
        raise UserError(f"no piece of {' '.join(args.inputs)} could be analysed "
                        f"({len(a.skipped)} skipped)")
    result: dict = {"config": {"window": cfg.window, "tolerance": cfg.tolerance,
                               "bpm_range": list(cfg.bpm_range), "seed": cfg.seed,
                               "split": args.split},
                    "sets": [report.set_json(s, args.per_piece) for s in sets]}
    text = [report.summary_table(sets)]
    if len(sets) == 2:
        if not sets[1].pieces:
            raise UserError(f"no piece of {' '.join(args.against)} could be analysed")
        rows = compare(sets[0], sets[1])
        result["compare"] = {"a": sets[0].name, "b": sets[1].name, "features": rows,
                             "mean_overlap": mean_overlap(rows)}
        text.append(report.compare_table(rows, sets[0].name, sets[1].name))
        text.append(f"mean overlap {mean_overlap(rows):.3f}")
    if args.rhythm:
        result["rhythm"] = _rhythm(args, sources, cfg)
        text.append(report.rhythm_table(result["rhythm"]))
    for s in sets:
        for src, reason in s.skipped:
            text.append(f"skipped {src}: {reason}")
    if args.png:
        from ..analysis.plots import write_plots

        paths = write_plots(sets, args.png)
        result["png"] = [str(p) for p in paths]
        text.append("plots: " + ", ".join(str(p) for p in paths))
    payload = json.dumps(report.jsonable(result), indent=1, allow_nan=False)
    if args.out:
        atomic_write_text(args.out, payload + "\n")
    print(payload if args.json else "\n\n".join(text), file=sys.stdout)  # noqa: T201
    return 0


def _rhythm(args: argparse.Namespace, sources, cfg) -> dict:
    from ..analysis.rhythm import rhythm_test
    from ..apps.loading import load_sampler

    model = load_sampler(args.rhythm, "fp32", 1)
    res = rhythm_test(model, sources, pieces=args.rhythm_pieces,
                      positions=args.rhythm_positions, samples=args.rhythm_samples,
                      config=cfg, seed=args.seed, progress=args.progress)
    out = res.as_dict()
    out["checkpoint"] = str(args.rhythm)
    if not res.positions:
        raise UserError("the rhythm test found no usable position (pieces too short or "
                        "too sparse for a grid)")
    return out
