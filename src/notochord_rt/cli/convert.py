"""``notochord-rt convert REF OUT``: turn a reference checkpoint into our safetensors format.

The reference file (a torch pickle) is read with ``torch.load(weights_only=True)``: a file
that carries anything but tensors and plain data is refused, never executed. Its
hyper-parameters and tensors are checked (bounds, names, dtypes, shapes, finite values)
before the network is built, as for any checkpoint we load.
"""

from __future__ import annotations

import argparse
import logging

NAME = "convert"
HELP = "convert a reference Notochord checkpoint (.ckpt/.pt) to notochord-rt .safetensors"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", help="reference checkpoint (torch file with kw and model_state)")
    parser.add_argument("out", help="output file; '.safetensors' is appended if missing")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..model.checkpoint import build_model, read_reference, save_model
    from ..model.network import NotochordNet

    ref, out = Path(args.ref), Path(args.out)
    if not ref.is_file():
        raise UserError(f"no such file: {ref}")
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    config, state = read_reference(ref)
    model = build_model(NotochordNet, config, state, str(ref))
    save_model(model, out, source=f"converted from reference checkpoint {ref.name}")
    n = sum(p.numel() for p in model.parameters())
    log.info("converted %s (%d parameters) -> %s", ref, n, out)
    print(f"wrote {out} ({n:,} parameters)")  # noqa: T201
    return 0
