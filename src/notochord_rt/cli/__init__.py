"""The ``notochord-rt`` command line.

Each subcommand is a module in this package exposing ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Modules are discovered
automatically; they import heavy libraries only inside ``run`` so ``--help`` is fast.
A :class:`~notochord_rt.errors.UserError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import NotochordError, UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notochord-rt",
        description="Notochord: a real-time probabilistic model of MIDI performance.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        # -v after the subcommand too (SUPPRESS: absent, it keeps the global count)
        cmd.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                         help="more logging")
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # what a live app says at start (ports, CC map, "running") shows without -v
    logging.getLogger("notochord_rt.startup").setLevel(min(logging.INFO,
                                                           logging.getLogger().level))
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"notochord-rt {args.command}: error: {e}", file=sys.stderr)  # noqa: T201
        return 2
    except NotochordError as e:
        print(f"notochord-rt {args.command}: error: {e}", file=sys.stderr)  # noqa: T201
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # noqa: T201
        return 130
