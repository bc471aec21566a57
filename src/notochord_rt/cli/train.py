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

# flag -> (type, help) for the plain valued TrainConfig fields
_VALUED = {
    "batch_size": (int, "crops per step per process (default 128)"),
    "batch_len": (int, "events per training crop (default 64)"),
    "lr": (float, "AdamW learning rate (default 3e-4)"),
    "weight_decay": (float, "AdamW weight decay (default 0.01)"),
    "grad_clip": (float, "clip the global gradient L2 norm to this; 0 = off (default 1)"),
    "schedule": (str, "constant (default) or cosine (needs --max-steps)"),
    "warmup_steps": (int, "linear warm-up steps (default 0)"),
    "min_lr_ratio": (float, "cosine floor as a fraction of --lr (default 0)"),
    "max_steps": (int, "stop after this many steps"),
    "epochs": (int, "stop after this many epochs"),
    "epoch_size": (int, "steps per epoch (default: one pass over the training pieces)"),
    "time_limit": (float, "stop after this many seconds (with a checkpoint)"),
    "valid_batches": (int, "validation batches per epoch (default 8)"),
    "valid_len": (int, "events per validation crop (default 512)"),
    "checkpoint_every": (int, "also checkpoint every N steps"),
    "keep_checkpoints": (int, "checkpoints kept (default 3)"),
    "log_every": (int, "TensorBoard scalars every N steps (default 1)"),
    "num_workers": (int, "data-loader worker processes (default 0)"),
    "balance": (str, "none (default: every piece equally often), ensemble (single- and "
                "multi-instrument pieces half the crops each, drum-only pieces about 2.4 %%) or "
                "shares like single=1,multi=1,drums=0"),
    "device": (str, "auto (default), cpu, cuda, cuda:1 ..."),
    "precision": (str, "auto (default: bf16 on CUDA that has it, else fp32), fp32, bf16"),
    "seed": (int, "random seed (default 0)"),
    "threads": (int, "torch CPU threads of this process"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="?", help="prepared data folder (notochord-rt prep)")
    parser.add_argument("-o", "--out", help="run folder for checkpoints and logs")
    parser.add_argument("-c", "--config", help="TOML file of options (flags override it)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--init-from", metavar="CKPT",
                        help="start from these weights (fine-tuning): a run folder, a "
                             "checkpoint folder, a .safetensors file, a reference checkpoint "
                             "or a model name (`notochord-rt models list`)")
    parser.add_argument("--download", action="store_true",
                        help="pull the registry model named by --init-from if it is not cached")
    parser.add_argument("--freeze-rnn", action="store_true", default=None,
                        help="train only embeddings and heads")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                        help="model hyper-parameter, e.g. rnn_hidden=512 (repeatable)")
    parser.add_argument("--aug", action="append", default=[], metavar="KEY=VALUE",
                        help="augmentation option, e.g. transpose=0 (repeatable)")
    parser.add_argument("--no-aug", action="store_true", help="switch augmentation off")
    for name, (kind, text) in _VALUED.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text,
                            metavar="X" if kind is str else "N")
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
    init_from = args.init_from
    if init_from is not None:  # a model name becomes the cached file it names
        from ..apps.loading import resolve_for_cli

        init_from = str(resolve_for_cli(init_from, "--init-from", must_exist=False,
                                        download=getattr(args, "download", False)))
    values.update(
        data=args.data, out=args.out, init_from=init_from, freeze_rnn=args.freeze_rnn,
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
