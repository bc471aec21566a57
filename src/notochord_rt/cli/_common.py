"""Helpers several ``notochord-rt`` subcommands share: instrument lists, output checks,
the output/model/seed options, writing MIDI + PNG + WAV, and torch's thread count.

(The leading underscore keeps this module out of the subcommand discovery of
:mod:`notochord_rt.cli`.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from ..apps.live.args import add_download_argument
from ..apps.loading import load_sampler as load_model
from ..engine.cores.precisions import CORE_CHOICES, DEFAULT_PRECISION

__all__ = ["add_output_arguments", "check_output", "load_model", "parse_instrument_list",
           "torch_threads_restored", "write_outputs"]


def parse_instrument_list(specs: list[str] | None, option: str) -> list[int] | None:
    """Instrument ids from repeated/comma-separated names or numbers; UserError if unknown."""
    from ..errors import UserError
    from ..events import parse_instrument

    if not specs:
        return None
    out: list[int] = []
    for spec in specs:
        for item in spec.split(","):
            if not item.strip():
                continue
            try:
                inst = parse_instrument(item)
            except ValueError as e:
                raise UserError(f"{option}: {e}") from None
            if inst not in out:
                out.append(inst)
    if not out:
        raise UserError(f"{option}: no instrument given")
    return out


def check_output(path: str | None, option: str, suffixes: tuple[str, ...]) -> Path | None:
    """Fail early (UserError) if ``path`` cannot be written, before any long work."""
    from ..errors import UserError

    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise UserError(f"{option} {path}: expected a file name ending in {' or '.join(suffixes)}")
    if p.is_dir():
        raise UserError(f"{option} {path}: is a folder")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        try:  # a missing output folder is made, as users expect (`--out out/piece.mid`)
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{option} {path}: cannot create folder {parent} "
                            f"({e.strerror or e})") from None
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{option} {path}: not writable")
    return p


@contextlib.contextmanager
def torch_threads_restored():
    """Restore torch's thread count afterwards (the CLI may run in-process, e.g. in tests)."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def add_output_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """The output, model and seed options shared by ``generate`` and ``harmonize``."""
    parser.add_argument("--out", default=default_out, metavar="FILE.mid",
                        help=f"MIDI file to write (default: {default_out})")
    parser.add_argument("--wav", metavar="FILE.wav",
                        help="also render audio with fluidsynth and a General MIDI SoundFont")
    parser.add_argument("--png", metavar="FILE.png",
                        help="also draw a piano roll coloured by instrument")
    parser.add_argument("--soundfont", metavar="FILE.sf2",
                        help="SoundFont for --wav (default: $NOTOCHORD_SOUNDFONT or the "
                             "system's GM SoundFont)")
    parser.add_argument("--checkpoint", default="default", metavar="PATH|NAME",
                        help="model file (.safetensors or a reference .ckpt) or a model name "
                             "(`notochord-rt models list`); default: the bundled model")
    add_download_argument(parser)
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=CORE_CHOICES,
                        help="inference core: the fused CPU core at this precision (default "
                             "fp32), or 'module' for the plain torch module")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest for one stream)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (reproducible runs)")


def write_outputs(args: argparse.Namespace, events, *, prompt_end: float | None = None,
                  title: str | None = None, highlight=None, tempo_bpm: float | None = None,
                  beats_per_bar: int = 4) -> list[str]:
    """Write the MIDI file, then the PNG and WAV if asked; returns what was written.

    ``tempo_bpm`` / ``beats_per_bar`` go into the MIDI file's tempo and time signature
    (default 120 BPM, 4/4), so a DAW's bars match the music's.

    A failed WAV or PNG (missing tool) raises UserError *after* the MIDI is on disk, with
    the names of the files that were written.
    """
    from ..apps.offline.render import RenderUnavailable, render_png, render_wav
    from ..errors import UserError
    from ..midi.export import save_midi

    try:
        save_midi(events, args.out, beats_per_bar=beats_per_bar,
                  **({} if tempo_bpm is None else {"tempo_bpm": tempo_bpm}))
    except OSError as e:
        raise UserError(f"--out {args.out}: cannot write ({e.strerror or e})") from None
    written = [args.out]
    problems = []
    if args.png:
        try:
            render_png(events, args.png, prompt_end=prompt_end, title=title, highlight=highlight)
            written.append(args.png)
        except RenderUnavailable as e:
            problems.append(f"no PNG: {e}")
        except OSError as e:
            problems.append(f"--png {args.png}: cannot write ({e.strerror or e})")
    if args.wav:
        try:
            render_wav(args.out, args.wav, soundfont=args.soundfont)
            written.append(args.wav)
        except RenderUnavailable as e:
            problems.append(f"no WAV: {e}")
    if problems:
        raise UserError(f"wrote {', '.join(written)}; " + "; ".join(problems))
    return written
