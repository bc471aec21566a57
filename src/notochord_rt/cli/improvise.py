"""``notochord-rt improvise``: model voices that improvise live with a MIDI player.

The player's channels (``--player``, default ``1=1``: piano on channel 1) are fed to the
model; the model plays the instruments of ``--voices`` on their channels, steered by the
CCs of :mod:`notochord_rt.apps.live.controls` (``--help`` shows them; ``--cc`` moves them).
By default it makes a virtual input ``in`` and output ``out`` (JACK or ALSA).
"""

from __future__ import annotations

import argparse
import math

from ..apps.live.args import add_live_arguments, add_model_arguments

NAME = "improvise"
HELP = "live: autonomous model voices that respond to a MIDI player"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--voices", default="2=anon", metavar="MAP",
                        help="model instruments and their output channels, "
                             "e.g. '2=violin,3=cello,10=drums' (default 2=anon)")
    parser.add_argument("--max-polyphony", type=int, default=4,
                        help="notes per model instrument at once")
    parser.add_argument("--max-duration", type=float, default=5.0,
                        help="seconds after which a model note is released")
    parser.add_argument("--max-time", type=float, default=math.inf,
                        help="longest pause between model events (soft)")
    parser.add_argument("--pitch-temp", type=float, default=None,
                        help="pitch top-p (<= 1) or temperature (> 1); default 0.9, 1 with --raw")
    parser.add_argument("--rhythm-temp", type=float, default=1.0)
    parser.add_argument("--timing-temp", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--raw", action="store_true",
                        help="sample the model as it is: no pitch truncation, velocity "
                             "narrowing or minimum note duration (docs/model-card.md)")
    add_live_arguments(parser, live_flag=False, app="improvise")
    from ..apps.live.clock import add_clock_arguments

    add_clock_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..apps.live.args import require_modules
    from ..apps.live.beat import run_with_clock
    from ..apps.live.improvise import ImprovisePolicy
    from ..apps.live.ports import ChannelMap
    from ..apps.live.session import LiveSession, load_live_model, options_from_args
    from ..apps.musical import defaults_for
    from ..errors import UserError

    if args.max_polyphony < 1 or args.max_duration <= 0:
        raise UserError("--max-polyphony must be >= 1 and --max-duration > 0")
    cmap_out = ChannelMap.parse(args.voices)
    if not cmap_out.inst:
        raise UserError("--voices names no instrument")
    cmap_in = (ChannelMap({}) if (args.player or "").lower() == "none"
               else ChannelMap.parse(args.player, {0: 1}))
    clash = set(cmap_in.inst) & set(cmap_out.inst)
    if clash:
        raise UserError(f"MIDI channel {min(clash) + 1} is both a player and a model channel")
    shared = set(cmap_in.channel) & set(cmap_out.channel)
    if shared:
        raise UserError(f"instrument {min(shared)} is both the player's and the model's")
    from ..apps.live.clock import grid_fields

    grid = grid_fields(args)
    require_modules("improvise", "rtmidi")
    opts = options_from_args(args, "improvise")
    model = load_live_model(args)
    if args.seed is not None:
        model.reset(seed=args.seed)
    policy = ImprovisePolicy(
        list(cmap_out.inst.values()), list(cmap_in.inst.values()),
        max_polyphony=args.max_polyphony, max_duration=args.max_duration,
        max_time=args.max_time, pitch_temp=args.pitch_temp, rhythm_temp=args.rhythm_temp,
        timing_temp=args.timing_temp, musical=defaults_for(args.raw), grid=grid)
    session = LiveSession(model, policy, cmap_in, cmap_out, opts)
    return run_with_clock(session, args, "improvise")
