"""``notochord-rt corpus build DEST``: rebuild the training corpus from registry packages.

Sources: ``music21`` (scores bundled with PyPI ``music21``, written to MIDI) and ``mma``
(seeded accompaniment songs from the Debian package ``mma``). Resumable: rerunning
the same command only does what is missing. See docs/corpus.md.
"""

from __future__ import annotations

import argparse

NAME = "corpus"
HELP = "build the reproducible MIDI training corpus (music21 scores, mma grooves)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="build or resume a corpus in DEST",
        description="Build (or resume) the corpus in DEST: DEST/music21/..., DEST/mma/..., "
        "and DEST/manifest.json. Files already there are not redone.",
    )
    build.add_argument("dest", metavar="DEST", help="output folder")
    build.add_argument(
        "--sources",
        default="music21,mma",
        help="comma-separated sources to build (default: music21,mma)",
    )
    build.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=None,
        help="parallel worker processes (default: number of CPU cores)",
    )
    build.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="small build: N grooves of mma; N music21 files spread over the corpus, "
        "at most N tunes each",
    )
    build.add_argument(
        "--mma-variants",
        type=int,
        default=1,
        metavar="K",
        help="songs per mma groove, each with its own seed (default: 1)",
    )
    build.add_argument(
        "--time-limit",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up on one score (music21) or song (mma) after this long (default: 300; "
        "0: no limit)",
    )
    build.add_argument("--mma", default=None, metavar="PATH", help="the mma program to use")
    build.add_argument(
        "--mma-lib",
        default=None,
        metavar="DIR",
        help="mma's groove library folder (default: found next to the mma install)",
    )
    parser.set_defaults(_corpus_parser=parser)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data import corpus
    from ..errors import UserError

    if getattr(args, "action", None) != "build":
        args._corpus_parser.print_help()
        return 0
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"-j/--jobs must be at least 1, got {args.jobs}")
    if args.time_limit < 0:
        raise UserError(f"--time-limit must be 0 or more seconds, got {args.time_limit}")

    def bar(desc: str, total: int) -> tqdm:
        return tqdm(total=total, desc=desc, unit="file", dynamic_ncols=True)

    sources = corpus.parse_sources(args.sources)
    manifest = corpus.build(
        args.dest,
        sources,
        jobs=args.jobs,
        limit=args.limit,
        mma_variants=args.mma_variants,
        time_limit_s=args.time_limit or None,
        mma_binary=args.mma,
        mma_lib=args.mma_lib,
        progress=bar,
    )
    for name in sources:
        section = manifest["sources"][name]
        print(  # noqa: T201 - the CLI's summary
            f"{name}: {section['files']} files ({section['written']} new, "
            f"{section['cached']} already there), {len(section['skipped'])} skipped, "
            f"{section['seconds']:.1f} s"
        )
    print(f"manifest: {args.dest}/manifest.json")  # noqa: T201
    return 0
