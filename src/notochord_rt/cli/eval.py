"""``notochord-rt eval CHECKPOINT DATA``: NLL per sub-event, 24 orders, bits per second.

CHECKPOINT is a run folder, a checkpoint folder, a ``.safetensors`` file, a reference
checkpoint, ``default`` or a registry model name (``notochord-rt models list``; pulled only
with ``--download``). DATA is a prepared folder (``--split``, default test, else valid) or a
folder of MIDI files (or one MIDI file), read with the same ingest as preprocessing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import UserError

NAME = "eval"
HELP = "evaluate a model: NLL per sub-event, 24 orders, bits per second"

MIDI_SUFFIXES = (".mid", ".midi", ".rmi")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint",
                        help="run folder, checkpoint folder, weights file or model name")
    parser.add_argument("data", help="prepared data folder, MIDI folder or MIDI file")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--out", help="also write the JSON figures to this file")
    parser.add_argument("--split", help="split of a prepared folder (default: test, else valid)")
    parser.add_argument("--orders", choices=("all", "canonical"), default="all",
                        help="score under all 24 sub-event orders (default) or only the "
                             "canonical i->p->t->v")
    parser.add_argument("--chunk", type=int, default=1024,
                        help="events per GRU chunk for long pieces (default 1024)")
    parser.add_argument("--limit", type=int, help="score only the first N pieces")
    parser.add_argument("--time-res", type=float, default=None, metavar="SECONDS",
                        help="score times in bins of this width instead of the model's own "
                             "(e.g. 0.01, the reference's, to compare models trained with "
                             "different bins)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--download", action="store_true",
                        help="pull a registry model named by CHECKPOINT if it is not cached")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def pick_split(root: Path, split: str | None) -> str:
    """The requested split, or test (else valid) when none is given."""
    from ..data.store import EventStore, has_split

    candidates = [split] if split else ["test", "valid"]
    for name in candidates:
        if has_split(root, name) and len(EventStore(root, name)) > 0:
            return name
    if split:
        raise UserError(f"{root} has no non-empty prepared split {split!r}")
    raise UserError(f"{root} has neither a non-empty test nor valid split")


def open_pieces(data: str, split: str | None, skipped: list) -> tuple[int, object, dict]:
    """(count, iterator of pieces, description) for DATA."""
    from ..data.store import has_split
    from ..train.evaluate import midi_pieces, store_pieces

    root = Path(data)
    if not root.exists():
        raise UserError(f"data not found: {root}")
    if root.is_file():
        if root.suffix.lower() not in MIDI_SUFFIXES:
            raise UserError(f"{root} is neither a MIDI file nor a folder")
        from ..midi.ingest import load_midi

        return 1, iter([load_midi(root).events]), {"midi": str(root)}
    if any(has_split(root, s) for s in ("train", "valid", "test")):
        name = pick_split(root, split)
        count, pieces = store_pieces(root, name)
        return count, pieces, {"prepared": str(root), "split": name}
    if split:
        raise UserError(f"--split given but {root} is not a prepared folder")
    count, pieces = midi_pieces(root, skipped)
    if count == 0:
        raise UserError(f"{root} holds no prepared splits and no MIDI files")
    return count, pieces, {"midi": str(root)}


def _table(result: dict) -> str:
    nll = result["nll"]
    avg = result["nll_all_orders"]
    lines = [f"{'':8}{'i>p>t>v':>10}{'24 orders':>12}   (nats/event)"]
    for k in ("inst", "pitch", "time", "vel", "end", "total"):
        lines.append(f"{k:8}{nll[k]:10.4f}{avg[k]:12.4f}")
    lines += [
        f"events {result['events']}  pieces {result['pieces']}  seconds {result['seconds']:.1f}",
        f"bits/second {result['bits_per_second']:.2f}  "
        f"time within 30 ms {result['time_within_30ms']:.4f}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import itertools

    import torch

    from ..errors import CheckpointError
    from ..train.checkpoints import resolve_checkpoint
    from ..train.evaluate import ALL_ORDERS, CANONICAL_ORDER, evaluate, json_safe
    from ..train.sources import load_model

    if args.chunk < 2:
        raise UserError("--chunk must be at least 2")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise UserError(f"unknown device {args.device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {args.device!r} asked for, but no CUDA GPU is available")
    from ..apps.loading import resolve_for_cli

    spec = resolve_for_cli(args.checkpoint, "checkpoint", download=args.download,
                           must_exist=False)
    model = load_model(resolve_checkpoint(spec)).to(device).eval()
    if args.time_res is not None:
        if not (math.isfinite(args.time_res) and 0 < args.time_res <= 1):
            raise UserError(f"--time-res must be in (0, 1] seconds, got {args.time_res}")
        model.time_dist.res = float(args.time_res)  # only how the likelihood bins times
    skipped: list = []
    count, pieces, source = open_pieces(args.data, args.split, skipped)
    if args.limit is not None:
        count = min(count, args.limit)
        pieces = itertools.islice(pieces, args.limit)
    orders = ALL_ORDERS if args.orders == "all" else (CANONICAL_ORDER,)
    result = evaluate(model, pieces, orders=orders, chunk=args.chunk,
                      progress=args.progress, total=count)
    result["data"] = source
    result["checkpoint"] = str(args.checkpoint)
    result["time_res"] = float(model.time_dist.res)
    if skipped:
        result["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
    if result["events"] == 0:
        raise UserError(f"no events to evaluate in {args.data}")
    clean, not_finite = json_safe(result)
    text = json.dumps(clean, indent=2, allow_nan=False)  # NaN is not JSON: null instead
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text if args.json else _table(result), file=sys.stdout)  # noqa: T201
    if not_finite:
        shown = ", ".join(not_finite[:6]) + (" ..." if len(not_finite) > 6 else "")
        raise CheckpointError(f"the model gives non-finite figures on this data ({shown}; "
                              "written as null): its weights are broken or overflow")
    return 0
