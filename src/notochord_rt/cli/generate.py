"""``notochord-rt generate``: write a new piece, or continue a MIDI file, with a model.

Writes a MIDI file and optionally a WAV (fluidsynth + a GM SoundFont) and a PNG piano
roll. The MIDI file is always written first; if the WAV cannot be made (fluidsynth or a
SoundFont missing) the message says what to install and the exit status is 2.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ._common import (
    add_output_arguments,
    check_output,
    load_model,
    parse_instrument_list,
    torch_threads_restored,
    write_outputs,
)

NAME = "generate"
HELP = "generate a piece (or continue a MIDI file) and write MIDI, WAV and PNG"

log = logging.getLogger(__name__)


# -- the subcommand -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=None,
                        help="seconds of music to generate (default 30)")
    length.add_argument("--events", type=int, default=None, help="number of events to generate")
    parser.add_argument("--instruments", action="append", metavar="INSTS",
                        help="instruments that may play: GM names or ids 1..320, comma "
                             "separated or repeated ('violin,cello', 'drums', 'jazz kit', "
                             "'anon2'); default: any (or the prompt's instruments)")
    anon = parser.add_mutually_exclusive_group()
    anon.add_argument("--named-only", dest="allow_anonymous", action="store_false",
                      default=True,
                      help="without --instruments: only named instruments (GM programs and "
                           "kits) may play. By default anonymous ones (ids 257..320, the "
                           "corpus's scores without a GM program; a GM synth plays them as "
                           "piano) may too")
    anon.add_argument("--allow-anonymous", dest="allow_anonymous", action="store_true",
                      help=argparse.SUPPRESS)  # now the default; kept for old scripts
    parser.add_argument("--max-instruments", type=int, default=6,
                        help="without --instruments or --prompt: how many different "
                             "instruments the model may bring in (default 6; 0 = no limit)")
    parser.add_argument("--prompt", metavar="FILE.mid", help="MIDI file to continue")
    parser.add_argument("--continue-with", action="append", metavar="INSTS",
                        help="with --prompt: instruments that continue it (default: the "
                             "prompt's own instruments)")
    add_output_arguments(parser, "out.mid")
    from ..apps.musical import DEFAULTS

    temps = parser.add_argument_group(
        "temperatures (<= 1: nucleus/top-p, > 1: temperature) and musical defaults "
        "(docs/model-card.md)")
    for name, what, default in (
            ("pitch", "pitch", DEFAULTS.pitch_temp),
            ("rhythm", "time mixture component (coarse rhythm)", 1.0),
            ("timing", "width of the chosen time component (fine timing; 0 = exact)", 1.0),
            ("inst", "instrument", DEFAULTS.inst_temp),
            ("vel", "velocity component width", DEFAULTS.vel_temp)):
        temps.add_argument(f"--{name}-temp", type=float, default=None,
                           help=f"{what} (default {default}; 1 with --raw)")
    for name, what in (
            ("pulse_weight", "weight of the model's pulse components, the lines of the grid "
                             "it tracks through the music: above 1 it keeps its pulse more "
                             "firmly"),
            ("motif_weight", "weight of the pitches the model's motif copying proposes (an "
                             "instrument's recent pitches and what followed them before): "
                             "above 1 its riffs and figures come back more often"),
            ("chord_spread", "width of the model's time components for notes it plays "
                             "together (within 10 ms): below 1 tighter chords, 0 exactly "
                             "together")):
        temps.add_argument("--" + name.replace("_", "-"), type=float, default=None,
                           help=f"{what} (default {getattr(DEFAULTS, name):g}; 1 with --raw)")
    temps.add_argument("--max-stuck", type=int, default=None,
                       help="note-ons a melodic instrument may play in a row on one or two "
                            "pitches, twice as many on three: the stuck-pitch guard (default "
                            f"{DEFAULTS.max_stuck}; 0 = off, 0 with --raw)")
    temps.add_argument("--min-duration", type=float, default=None,
                       help="seconds: avoid shorter melodic notes, a soft limit (default "
                            f"{DEFAULTS.min_duration}; 0 with --raw)")
    temps.add_argument("--no-balance", dest="balance", action="store_false", default=None,
                       help="do not steer instrument weights against the running share "
                            "(the balance keeps named instruments heard and drums from "
                            "taking over)")
    temps.add_argument("--raw", action="store_true",
                       help="sample the model as it is: no truncation, no minimum duration, "
                            "no instrument balance (explicit flags still apply)")
    steer = parser.add_argument_group("steering (0..1, 0.5 = neutral)")
    steer.add_argument("--steer-density", type=float, default=None,
                       help="more note-ons than note-offs above 0.5 (thicker texture); "
                            f"default {DEFAULTS.density}: notes end as soon as in the "
                            "training music (0.5 with --raw)")
    steer.add_argument("--steer-pitch", type=float, default=None,
                       help="higher pitches above 0.5, lower below")
    steer.add_argument("--steer-rate", type=float, default=None,
                       help="shorter gaps (more events) above 0.5, longer below")
    steer.add_argument("--steer-velocity", type=float, default=None,
                       help="louder above 0.5, softer below")
    beat = parser.add_argument_group(
        "tempo and grid (default: free time; the tempo is written into the MIDI file)")
    beat.add_argument("--bpm", type=float, default=None,
                      help="tempo in beats (quarter notes) per minute, 1..999")
    beat.add_argument("--grid", default=None, metavar="1/N[t]",
                      help="put onsets on this grid: 1/4, 1/8, 1/16, 1/32 ... or triplets "
                           "1/8t, 1/16t (needs --bpm)")
    beat.add_argument("--swing", type=float, default=0.0,
                      help="0 straight .. 1 triplet swing: delays every second grid step")
    beat.add_argument("--grid-strength", type=float, default=1.0,
                      help="1 = every onset on the grid (default), below 1 a softer pull, "
                           "0 = free")
    beat.add_argument("--beats-per-bar", type=int, default=4,
                      help="beats per bar (time signature N/4; default 4)")
    guards = parser.add_argument_group("guards against stuck notes and runaway density")
    guards.add_argument("--max-note-seconds", type=float, default=5.0,
                        help="release any note older than this (default 5; drum notes after "
                             "at most 1)")
    guards.add_argument("--max-polyphony", type=int, default=8,
                        help="most notes one instrument holds at once (default 8)")
    guards.add_argument("--max-total-polyphony", type=int, default=12,
                        help="most notes of all instruments at once (default 12)")
    guards.add_argument("--max-gap", type=float, default=3.0,
                        help="soft limit on the seconds between events (default 3)")


def _options(args: argparse.Namespace, instruments):
    from ..apps.offline.generate import GenerateOptions
    from ..errors import InputError, UserError

    seconds = args.seconds if args.seconds is not None or args.events is not None else 30.0
    base = GenerateOptions.raw() if args.raw else GenerateOptions()
    chosen = {name: getattr(args, name) for name in (
        "pitch_temp", "rhythm_temp", "timing_temp", "inst_temp", "vel_temp", "pulse_weight",
        "motif_weight", "chord_spread", "max_stuck", "min_duration", "balance",
        "steer_density")}
    musical = {k: (getattr(base, k) if v is None else v) for k, v in chosen.items()}
    opts = GenerateOptions(
        seconds=seconds, events=args.events, seed=args.seed, instruments=instruments,
        allow_anonymous=args.allow_anonymous, max_instruments=args.max_instruments or None,
        **musical,
        steer_pitch=args.steer_pitch,
        steer_rate=args.steer_rate, steer_velocity=args.steer_velocity,
        max_note_seconds=args.max_note_seconds, max_polyphony=args.max_polyphony,
        max_total_polyphony=args.max_total_polyphony, max_gap=args.max_gap,
        bpm=args.bpm, grid=args.grid, swing=args.swing, grid_strength=args.grid_strength,
        beats_per_bar=args.beats_per_bar)
    try:
        opts.validate()
        from ..apps.offline.generate import build_constraints

        build_constraints(opts, instruments)  # temperatures and steering checked here
    except InputError as e:
        raise UserError(str(e).replace("_", "-")) from None
    return opts


def _load_prompt(path: str):
    from ..errors import MidiError, UserError
    from ..midi.ingest import load_midi

    if not Path(path).is_file():
        raise UserError(f"--prompt {path}: no such file")
    try:
        return load_midi(path).events
    except MidiError as e:
        raise UserError(f"--prompt {path}: not a usable MIDI file ({e})") from None


def run(args: argparse.Namespace) -> int:
    with torch_threads_restored():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..apps.offline.generate import generate
    from ..errors import UserError
    from ..events import instrument_name

    instruments = parse_instrument_list(args.instruments, "--instruments")
    cont = parse_instrument_list(args.continue_with, "--continue-with")
    if cont is not None and not args.prompt:
        raise UserError("--continue-with needs --prompt")
    check_output(args.out, "--out", (".mid", ".midi"))
    check_output(args.wav, "--wav", (".wav",))
    check_output(args.png, "--png", (".png",))
    options = _options(args, cont or instruments)
    prompt = _load_prompt(args.prompt) if args.prompt else None
    model = load_model(args.checkpoint, args.precision, args.threads,
                       download=args.download)

    total = options.events if options.events is not None else options.seconds
    unit = "event" if options.events is not None else "s"
    n_prompt = len(prompt) if prompt is not None else 0
    with tqdm(total=n_prompt, unit="event", desc="reading prompt", disable=None if n_prompt
              else True, leave=False) as pbar, \
            tqdm(total=total, unit=unit, desc="generating", disable=None, leave=False) as bar:
        def progress(n: int, music: float) -> None:
            bar.update((n if options.events is not None else round(music, 2)) - bar.n)

        def prompt_progress(n: int) -> None:
            pbar.update(n - pbar.n)

        result = generate(model, options, prompt, progress, prompt_progress)
    names = sorted({instrument_name(i) for i in result.events.inst[result.prompt_events:]})
    title = f"notochord-rt generate ({Path(args.checkpoint).name}, seed {args.seed})"
    written = write_outputs(args, result.events,
                            prompt_end=result.prompt_end if prompt is not None else None,
                            title=title, tempo_bpm=options.bpm,
                            beats_per_bar=options.beats_per_bar)
    rate = result.generated / result.wall_seconds if result.wall_seconds > 0 else float("inf")
    print(f"wrote {', '.join(written)}: {result.generated} events, "  # noqa: T201
          f"{result.music_seconds:.1f} s of music after {result.prompt_end:.1f} s of prompt, "
          f"{len(names)} instruments ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); "
          f"{rate:.0f} events/s; {result.released_at_end} notes released at the end"
          + ("" if result.stopped in ("seconds", "events") else f"; stopped early: "
             f"{result.stopped}"))
    return 0
