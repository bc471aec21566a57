"""``notochord-rt prep SRC... --out DEST``: MIDI folders -> train/valid/test splits."""

from __future__ import annotations

import argparse
import os

from ..data.prep.limits import (
    DEFAULT_MAX_HOURS,
    DEFAULT_MAX_MB,
    DEFAULT_MIN_EVENTS,
    DEFAULT_TIMEOUT,
)

NAME = "prep"
HELP = "prepare MIDI files (folders searched recursively) as a training dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC",
                        help="folders (searched for .mid/.midi/.kar) or single MIDI files")
    parser.add_argument("--out", "-o", required=True, metavar="DEST",
                        help="dataset folder to write (re-running resumes and skips done files)")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: number of CPUs)")
    parser.add_argument("--min-events", type=int, default=DEFAULT_MIN_EVENTS,
                        help="report pieces with fewer events as too short "
                             f"(default {DEFAULT_MIN_EVENTS})")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="use only the first N files found")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help="seconds one file may take before its worker is killed "
                             f"(default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB,
                        help=f"report bigger files as too large (default {DEFAULT_MAX_MB:g} MB)")
    parser.add_argument("--max-hours", type=float, default=DEFAULT_MAX_HOURS,
                        help="report longer pieces as too long "
                             f"(default and most: {DEFAULT_MAX_HOURS:g} h)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="try again files that crashed, timed out or could not be read")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.prep.pipeline import prepare

    bar = tqdm(unit="file", desc="prep", disable=None)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    try:
        summary = prepare(
            args.sources, args.out, jobs=args.jobs, min_events=args.min_events,
            limit=args.limit, timeout=args.timeout, max_bytes=int(args.max_mb * (1 << 20)),
            max_hours=args.max_hours, retry_failed=args.retry_failed, progress=progress,
        )
    finally:
        bar.close()
    for line in summary.lines():
        print(line)  # noqa: T201 - the CLI's output
    print(f"wrote {args.out}/{{train,valid,test}}, summary.json, report.json")  # noqa: T201
    return 0
