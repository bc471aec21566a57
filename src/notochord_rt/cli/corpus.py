"""``notochord-rt corpus build DEST``: rebuild the training corpus from registry packages.

Sources: ``music21`` (scores bundled with PyPI ``music21``, written to MIDI) and ``mma``
(seeded songs on the grooves of the Debian package ``mma``). Resumable: rerunning
the same command only does what is missing. Also ``corpus screen DIR`` (which MIDI files
the recipe would leave out, and why) and ``corpus stats PREP...`` (what prepared data
holds: pieces, hours, single- and multi-instrument pieces, drums). See docs/corpus.md.
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
        "--songs-per-groove",
        "--mma-variants",
        dest="songs_per_groove",
        type=int,
        default=1,
        metavar="K",
        help="mma songs per groove, each planned from its own seed (default: 1)",
    )
    build.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the mma song plans (default: 0); a folder holds one seed's songs",
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
    screen = actions.add_parser(
        "screen",
        help="list the MIDI files under DIR that the recipe would leave out",
        description="Screen every .mid file under DIR as the recipe does (no melodic "
        "notes, too few notes, one pitch repeated) and print the files left out and why.",
    )
    screen.add_argument("dir", metavar="DIR", help="folder of MIDI files")
    screen.add_argument("--json", action="store_true", help="print JSON")
    stats = actions.add_parser(
        "stats",
        help="what prepared data holds (pieces, hours, ensembles, drums, crop shares)",
        description="Count pieces, hours, events, single- and multi-instrument pieces, "
        "drum-only pieces, pieces with drums and instruments of prepared data folders "
        "(notochord-rt prep output), and the share of training crops per group and "
        "source folder under --balance none and ensemble.",
    )
    stats.add_argument("data", metavar="PREP", nargs="+", help="prepared data folder(s)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(_corpus_parser=parser)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..corpus import build as corpus
    from ..errors import UserError

    action = getattr(args, "action", None)
    if action == "screen":
        return _screen(args)
    if action == "stats":
        return _stats(args)
    if action != "build":
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
        songs_per_groove=args.songs_per_groove,
        seed=args.seed,
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
            f"{len(section['left_out'])} left out, {section['seconds']:.1f} s"
        )
        if section.get("grooves_left_out"):
            print(f"  grooves left out: {section['grooves_left_out_by_reason']}")  # noqa: T201
        if section["left_out"]:
            print(f"  pieces left out: {section['left_out_by_reason']}")  # noqa: T201
    print(f"manifest: {args.dest}/manifest.json")  # noqa: T201
    return 0


def _screen(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from ..corpus import build as corpus

    def bar(desc: str, total: int) -> tqdm:
        return tqdm(total=total, desc=desc, unit="file", dynamic_ncols=True)

    left_out = corpus.screen_folder(args.dir, progress=bar)
    if args.json:
        print(json.dumps(left_out, indent=1))  # noqa: T201
        return 0
    for path, reason in left_out.items():
        print(f"{path}: {reason}")  # noqa: T201
    counts = corpus.reason_counts(left_out.values())
    print(f"{len(left_out)} file(s) would be left out: {counts}")  # noqa: T201
    return 0


STATS_ROWS = (
    ("pieces", "pieces"), ("hours", "hours"), ("events", "events"),
    ("single_instrument", "single-instrument pieces"),
    ("multi_instrument", "multi-instrument pieces"), ("drums_only", "drum-only pieces"),
    ("with_drums", "pieces with drums"), ("instrument_ids", "distinct instrument ids"),
    ("named_programs", "distinct GM programs and kits"),
)


def stats_table(names: list[str], stats: list[dict]) -> str:
    """A Markdown table of :func:`~notochord_rt.data.balance.corpus_stats` results, one
    column per data folder."""
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label in STATS_ROWS:
        lines.append(f"| {label} | " + " | ".join(f"{s[key]:,}" for s in stats) + " |")
    sources = sorted({k for s in stats for k in s["sources"]})
    for src in sources:
        lines.append(f"| pieces from {src} | "
                     + " | ".join(f"{s['sources'].get(src, 0):,}" for s in stats) + " |")
    for spec in ("none", "ensemble"):
        for group in ("single", "multi", "drums"):
            lines.append(f"| crops, `--balance {spec}`: {group} | "
                         + " | ".join(f"{100 * s['crop_share'][spec][group]:.1f} %"
                                      for s in stats) + " |")
        for src in sources:
            lines.append(f"| crops, `--balance {spec}`: {src} | "
                         + " | ".join(f"{100 * s['crop_share_by_source'][spec].get(src, 0):.1f} %"
                                      for s in stats) + " |")
    return "\n".join(lines)


def _stats(args: argparse.Namespace) -> int:
    import json

    from ..data.balance import corpus_stats

    stats = [corpus_stats(d) for d in args.data]
    if args.json:
        print(json.dumps(dict(zip(args.data, stats)), indent=1))  # noqa: T201
    else:
        print(stats_table(list(args.data), stats))  # noqa: T201
    return 0
