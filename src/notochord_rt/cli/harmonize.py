"""``notochord-rt harmonize IN.mid --out OUT.mid``: add model-chosen voices to a MIDI file.

For each note of the chosen input parts (``--parts``, default all) every ``--voice
INST:LO:HI`` adds one note of instrument INST between LO and HI semitones from it, chosen
by the model at the same instant with the same velocity, and released with it (the
offline form of the live harmonizer, docs/design.md §7). Every input note is fed to the model
as it occurs. The output holds the input and the harmony.

Without ``IN.mid`` the command runs the live harmonizer (MIDI ports) from
:mod:`notochord_rt.apps.live.session`, whose own options come from
``notochord_rt.apps.live.args.add_live_arguments(parser)`` when that module is installed.
Options defined here (``--voice``, ``--checkpoint``, ``--precision``, ``--threads``,
``--seed``, ``--pitch-temp``) are shared by both modes; the live app gets the parsed voices
as ``args.voices``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging

from ._common import (
    add_output_arguments,
    check_output,
    load_model,
    parse_instrument_list,
    torch_threads_restored,
    write_outputs,
)

NAME = "harmonize"
HELP = "add model-chosen harmony voices to a MIDI file (or live, without IN.mid)"
DEFAULT_VOICE = "acoustic grand piano:1:12"

log = logging.getLogger(__name__)

_LIVE_ARGS = "notochord_rt.apps.live.args"
_LIVE = "notochord_rt.apps.live.harmonize"
_live_args_error: str | None = None


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    global _live_args_error
    parser.add_argument("input", nargs="?", metavar="IN.mid",
                        help="MIDI file to harmonize (omit for the live harmonizer)")
    parser.add_argument("--voice", action="append", metavar="INST:LO:HI",
                        help="a harmony voice: instrument (GM name or id) and pitch range in "
                             "semitones relative to each played note, e.g. 'violin:-12:-3' "
                             f"(repeatable; default {DEFAULT_VOICE!r})")
    parser.add_argument("--parts", action="append", metavar="INSTS",
                        help="input instruments to harmonize (names or ids, comma separated "
                             "or repeated; default all)")
    from ..apps.musical import DEFAULTS

    parser.add_argument("--pitch-temp", type=float, default=None,
                        help="pitch temperature of the voices (<= 1 nucleus, > 1 temperature; "
                             f"default {DEFAULTS.harmony_pitch_temp:g}, 1 with --raw)")
    parser.add_argument("--raw", action="store_true",
                        help="sample the voices from the model as it is (pitch temperature 1)")
    add_output_arguments(parser, "harmonized.mid")
    if _module_exists(_LIVE_ARGS):
        try:
            importlib.import_module(_LIVE_ARGS).add_live_arguments(parser, app="harmonize")
        except Exception as e:  # a broken live module must not break the whole CLI
            _live_args_error = f"{type(e).__name__}: {e}"
            log.debug("live harmonizer arguments unavailable: %s", _live_args_error)
        else:
            from ..apps.live.clock import add_clock_arguments

            add_clock_arguments(parser, grid=False)  # --live: stop/start with a clock


def parse_voices(specs: list[str] | None) -> list:
    """``--voice`` values as :class:`~notochord_rt.apps.harmony.Voice` (UserError if bad)."""
    from ..apps.harmony import Voice
    from ..errors import UserError

    voices = []
    for spec in specs or [DEFAULT_VOICE]:
        try:
            voices.append(Voice.parse(spec))
        except ValueError as e:
            raise UserError(f"--voice: {e}") from None
    return voices


def _run_live(args: argparse.Namespace) -> int:
    from ..errors import UserError

    if _live_args_error is not None:
        raise UserError(f"the live harmonizer failed to load its options: {_live_args_error}")
    if not _module_exists(_LIVE):
        raise UserError("give a MIDI file to harmonize (IN.mid); the live harmonizer "
                        "(notochord_rt.apps.live.harmonize) is not installed in this version")
    args.voices = parse_voices(args.voice)  # the live app reads parsed voices
    return int(importlib.import_module(_LIVE).harmonize_main(args) or 0)


def run(args: argparse.Namespace) -> int:
    with torch_threads_restored():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..apps.harmony import harmonize_piece
    from ..apps.musical import defaults_for
    from ..errors import MidiError, UserError
    from ..events import instrument_name
    from ..midi.ingest import load_midi

    if args.pitch_temp is None:
        args.pitch_temp = defaults_for(args.raw).harmony_pitch_temp
    if args.input is None or getattr(args, "live", False):
        return _run_live(args)
    voices = parse_voices(args.voice)
    parts = parse_instrument_list(args.parts, "--parts")
    check_output(args.out, "--out", (".mid", ".midi"))
    check_output(args.wav, "--wav", (".wav",))
    check_output(args.png, "--png", (".png",))
    try:
        piece = load_midi(args.input).events
    except MidiError as e:
        raise UserError(f"{args.input}: not a usable MIDI file ({e})") from None
    present = {int(i) for i in piece.inst}
    if parts is not None and not present.intersection(parts):
        have = ", ".join(f"{instrument_name(i)} ({i})" for i in sorted(present))
        raise UserError(f"--parts: none of them plays in {args.input} (it has: {have})")
    model = load_model(args.checkpoint, args.precision, args.threads,
                       download=getattr(args, "download", False))
    events, added = harmonize_piece(model, piece, voices, parts,
                                    pitch_temp=args.pitch_temp, seed=args.seed)
    voice_insts = sorted({v.inst for v in voices})
    written = write_outputs(args, events, title=f"notochord-rt harmonize {args.input}",
                            highlight=[i for i in voice_insts if i not in present])
    harmonized = sum(1 for i, v in zip(piece.inst, piece.vel)
                     if v > 0 and (parts is None or int(i) in parts))
    print(f"wrote {', '.join(written)}: {added} voice notes added to {harmonized} "  # noqa: T201
          f"input notes ({', '.join(instrument_name(i) for i in voice_insts)})")
    return 0
