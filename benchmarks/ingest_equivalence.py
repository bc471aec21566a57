"""Compiled vs numpy MIDI ingest over a folder: mismatches and CPU ms per file.

Runs ``load_midi(data, impl="c")`` and ``load_midi(data, impl="python")`` on the bytes of
every file of a folder (default /work/shared/corpus; recursively, MIDI suffixes only) and
compares everything: events (dtypes and bytes, so times bit for bit), parts, stats (with
their types and order) or the MidiError message. It prints every mismatch, the count
(expected: 0), the CPU time per file of each implementation (files read beforehand, so
this is ingest only) and the machine. Not run by CI.

    python benchmarks/ingest_equivalence.py [--folder DIR] [--limit N] [--repeat 3]
    python benchmarks/ingest_equivalence.py --per-folder 100   # benchmarks/prep.py's sample
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

from machine import cpu_name

SUFFIXES = {".mid", ".midi", ".smf", ".kar", ".rmi"}


def outcome(data: bytes, impl: str):
    """Everything load_midi returns, in a form where == means identical."""
    from notochord_rt.errors import MidiError
    from notochord_rt.midi.ingest import load_midi

    try:
        r = load_midi(data, impl=impl)
    except MidiError as e:
        return ("MidiError", str(e))
    events = tuple((a.dtype.str, a.tobytes()) for a in r.events)
    return events, repr(r.parts), repr(list(r.stats.items()))


def describe(a, b) -> str:
    if a[0] == "MidiError" or b[0] == "MidiError":
        return f"c: {a[1] if a[0] == 'MidiError' else 'ok'} | python: " + (
            b[1] if b[0] == "MidiError" else "ok")
    what = [name for name, x, y in zip(("events", "parts", "stats"), a, b) if x != y]
    return "differ in " + ", ".join(what)


def cpu_ms_per_file(datas: list[bytes], impl: str, repeat: int) -> float:
    """Best of ``repeat`` CPU times of one pass over every file, in ms per file."""
    from notochord_rt.errors import MidiError
    from notochord_rt.midi.ingest import load_midi

    best = float("inf")
    for _ in range(repeat):
        c0 = time.process_time()
        for data in datas:
            try:
                load_midi(data, impl=impl)
            except MidiError:
                pass
        best = min(best, time.process_time() - c0)
    return best / len(datas) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default="/work/shared/corpus")
    parser.add_argument("--limit", type=int, default=0, help="only the first N files")
    parser.add_argument("--per-folder", type=int, default=0,
                        help="the sample of benchmarks/prep.py (N files per top folder, seed 0)")
    parser.add_argument("--repeat", type=int, default=3, help="timing passes (best is kept)")
    args = parser.parse_args(argv)

    from notochord_rt.midi import compiled

    if not compiled.available():
        print("the compiled ingest is not built (pip install -e . with a C compiler)",
              file=sys.stderr)
        return 2
    logging.disable(logging.WARNING)  # tempo and merge warnings of odd files
    folder = Path(args.folder)
    if args.per_folder:
        from prep import sample_files

        files = [Path(f) for f in sample_files(folder, args.per_folder, 0)]
    else:
        files = sorted(p for p in folder.rglob("*")
                       if p.suffix.lower() in SUFFIXES and p.is_file())
    if args.limit:
        files = files[: args.limit]
    if not files:
        print(f"no MIDI files under {folder}", file=sys.stderr)
        return 2
    datas = [p.read_bytes() for p in files]
    mismatches = refused = 0
    for path, data in zip(files, datas):
        a, b = outcome(data, "c"), outcome(data, "python")
        refused += a[0] == "MidiError"
        if a != b:
            mismatches += 1
            print(f"MISMATCH {path}: {describe(a, b)}")
    c_ms = cpu_ms_per_file(datas, "c", args.repeat)
    py_ms = cpu_ms_per_file(datas, "python", max(1, args.repeat // 3))
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"files: {len(files)} under {folder} ({refused} refused with the same MidiError "
          "by both)")
    print(f"mismatches: {mismatches}")
    print(f"CPU ms/file: compiled {c_ms:.4f}, python {py_ms:.4f} (x{py_ms / c_ms:.1f})")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
