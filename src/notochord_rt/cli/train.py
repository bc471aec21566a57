"""``notochord-rt train``: train or fine-tune a model on prepared data.

Examples::

    notochord-rt train out/prep --out runs/small --model emb_size=256 --model rnn_hidden=512
    notochord-rt train --config small.toml --max-steps 20000       # flags override the file
    notochord-rt train --out runs/small --resume --max-steps 40000  # continue a run
    notochord-rt train my-prep --out runs/mine --init-from runs/small --freeze-rnn
    torchrun --nproc_per_node 4 -m notochord_rt train out/prep --out runs/ddp
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError

NAME = "train"
HELP = "train or fine-tune a model (also under torchrun)"

# flag -> TrainConfig field, for the plain valued options
_VALUED = {
    "batch_size": int, "batch_len": int, "lr": float, "weight_decay": float,
    "grad_clip": float, "schedule": str, "warmup_steps": int, "min_lr_ratio": float,
    "max_steps": int, "epochs": int, "epoch_size": int, "time_limit": float,
    "valid_batches": int, "valid_len": int, "checkpoint_every": int,
    "keep_checkpoints": int, "log_every": int, "num_workers": int, "device": str,
    "precision": str, "seed": int, "threads": int,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="?", help="prepared data folder (notochord-rt prep)")
    parser.add_argument("-o", "--out", help="run folder for checkpoints and logs")
    parser.add_argument("-c", "--config", help="TOML file of options (flags override it)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--init-from", metavar="CKPT",
                        help="start from these weights (fine-tuning): a run folder, a "
                             "checkpoint folder, a .safetensors file or a reference checkpoint")
    parser.add_argument("--freeze-rnn", action="store_true", default=None,
                        help="train only embeddings and heads")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                        help="model hyper-parameter, e.g. rnn_hidden=512 (repeatable)")
    parser.add_argument("--aug", action="append", default=[], metavar="KEY=VALUE",
                        help="augmentation option, e.g. transpose=0 (repeatable)")
    parser.add_argument("--no-aug", action="store_true", help="switch augmentation off")
    for name, kind in _VALUED.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    parser.add_argument("--bf16", dest="precision", action="store_const", const="bf16",
                        help="bf16 autocast (same as --precision bf16)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the model")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bar")


def _parse_pairs(pairs: list[str], what: str) -> dict:
    from ..train.config import tomllib

    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--{what} wants KEY=VALUE, got {pair!r}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word, e.g. norm=layer
        out[key.strip()] = value
    return out


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The TrainConfig values given on the command line (None where not given)."""
    values = {name: getattr(args, name) for name in _VALUED}
    values.update(
        data=args.data, out=args.out, init_from=args.init_from, freeze_rnn=args.freeze_rnn,
        compile=args.compile, progress=args.progress,
        model=_parse_pairs(args.model, "model") or None,
        aug=_parse_pairs(args.aug, "aug") or None,
    )
    if args.no_aug:
        values["aug"] = {"off": True}
    return values


def build_config(args: argparse.Namespace):
    """defaults < saved run config (with --resume) < TOML file < flags."""
    from pathlib import Path

    from ..train.config import TrainConfig, load_toml, merge

    config = TrainConfig()
    toml = load_toml(args.config) if args.config else {}
    flags = overrides_from_args(args)
    if args.resume:
        out = flags.get("out") or toml.get("out")
        if not out:
            raise UserError("--resume needs the run folder (--out)")
        saved = Path(out) / "config.json"
        if not saved.exists():
            raise UserError(f"nothing to resume: {saved} does not exist")
        config = TrainConfig.from_dict(json.loads(saved.read_text()))
    return merge(merge(config, toml), flags)


def run(args: argparse.Namespace) -> int:
    from ..train.trainer import Trainer

    config = build_config(args)
    trainer = Trainer(config, resume=args.resume)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    if trainer.info.is_main:
        print(json.dumps(summary, indent=2), file=sys.stdout)  # noqa: T201
    return 0
