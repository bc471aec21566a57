"""``notochord-rt play``: the multi-voice terminal UI (homunculus-style) over live MIDI.

Each MIDI channel is a voice in a mode — ``input`` (you play it), ``auto`` (the model
plays it), ``follow`` (the model answers another channel's notes) or ``mute`` — with an
instrument, set up by a preset (``--preset``, from ``--presets FILE`` or the bundled
presets) and changed live in the UI. Steering controls and actions follow the MIDI CCs
of every live app (:mod:`notochord_rt.apps.live.controls`; ``--help`` lists them; a
presets file can move them). ``--prompt FILE.mid`` starts from a piece: it is fed to the
model and its instruments become the auto voices. By default virtual ports ``in`` and
``out`` are made.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from ..apps.live.args import add_live_arguments, add_model_arguments

NAME = "play"
HELP = "live: multi-voice terminal UI (channel modes, instruments, steering, presets)"

log = logging.getLogger(__name__)

ANNOUNCE_AGAIN = 0.5
"""Seconds after the start at which the program changes are sent once more: messages sent
before a new JACK connection is active are lost (seen in tests), and a synth that missed
them would play the wrong instruments."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--preset", default=None,
                        help="preset to start with: a name or number (default: the first)")
    parser.add_argument("--presets", default=None, metavar="FILE",
                        help="presets TOML file (default: the bundled presets)")
    parser.add_argument("--list-presets", action="store_true",
                        help="list the presets and exit")
    parser.add_argument("--prompt", default=None, metavar="FILE.mid",
                        help="feed this MIDI file first; its instruments become the voices")
    parser.add_argument("--seed", type=int, default=None, help="seed of the model's sampling")
    parser.add_argument("--headless", action="store_true",
                        help="run the UI without a terminal (scripts, tests; use --duration)")
    add_live_arguments(parser)
    from ..apps.live.clock import add_clock_arguments

    add_clock_arguments(parser, grid=False)  # the voices' grid and swing: the presets
    from ..apps.live.controls import help_epilog

    parser.epilog = help_epilog("play")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _preset_key(text: str | None) -> str | int:
    if text is None:
        return 0
    return int(text) - 1 if text.isdigit() else text


class _ToUI(logging.Handler):
    """Log records go to the UI's log pane while the UI owns the terminal."""

    def __init__(self, say: Any) -> None:
        super().__init__(logging.INFO)
        self.say = say

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.say(f"{record.levelname.lower()}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def run(args: argparse.Namespace) -> int:
    from ..apps.live.args import require_modules
    from ..apps.live.ports import ChannelMap
    from ..apps.live.session import LiveSession, load_live_model, options_from_args
    from ..apps.play.policy import PlayController, VoicesPolicy, feed_prompt_file, layout_hook
    from ..apps.play.presets import load_presets
    from ..errors import UserError

    book = load_presets(args.presets)
    if args.list_presets:
        for k, p in enumerate(book.presets):
            print(f"{k + 1:2d}  {p.name:<12} {p.description}")  # noqa: T201
        return 0
    if args.player or args.out_channels:
        raise UserError("play takes its channels from the preset (and the UI); "
                        "--player and --out-channels do not apply")
    if not book.presets:
        raise UserError(f"{book.source} has no presets")
    preset = book.find(_preset_key(args.preset))
    rig = book.rig(preset.name)
    require_modules("play", "rtmidi", "textual")  # before the model loads
    model = load_live_model(args)
    if args.seed is not None:
        model.reset(seed=args.seed)
    prompt_state, notes = None, []
    if args.prompt:
        from tqdm import tqdm

        with tqdm(desc="prompt", unit="ev", file=sys.stderr) as bar:
            def progress(k: int, n: int) -> None:
                bar.total = n
                bar.update(k - bar.n)

            rig, prompt_state, notes = feed_prompt_file(model, args.prompt, rig, progress)
    opts = options_from_args(args)
    from ..apps.live.clock import clock_from_args

    opts.clock, clock_out = clock_from_args(args, "notochord-rt-play")
    cc_map = rig.control_map()  # the presets' CC map (by default every live app's)
    opts.controls, opts.actions = dict(cc_map.controls), dict(cc_map.actions)
    thru, opts.thru = opts.thru, False  # the output map already has every voice's channel
    policy = VoicesPolicy(rig, prompt_state=prompt_state)
    session = LiveSession(model, policy, ChannelMap(rig.input_channels()),
                          ChannelMap(rig.channel_insts(), rig.programs()), opts)
    try:
        if opts.clock is not None:
            opts.clock.start()
            if clock_out is not None:
                clock_out.start()
        return _run_ui(session, policy, book, preset.name, notes, thru, args,
                       PlayController, layout_hook)
    finally:
        if clock_out is not None:
            clock_out.close()
        if opts.clock is not None:
            opts.clock.close()


def _run_ui(session: Any, policy: Any, book: Any, preset: str, notes: list[str], thru: bool,
            args: argparse.Namespace, controller_cls: Any, hook: Any) -> int:
    from ..apps.live.controls import ControlMap
    from ..apps.live.session import EXIT_SIGINT, startup_log
    from ..apps.play.tui import PlayApp
    from ..errors import UserError

    root = logging.getLogger()
    saved = root.handlers[:]
    code: int | None = 0
    app = None
    try:
        with session:
            player = session.player
            policy.on_layout = hook(session.router, session.out, session.opt.send_programs)
            if thru:
                session.router.thru = session.out
            ctl = controller_cls(player, policy, book)
            ctl.preset_name = preset
            for n in [*session.port_lines(), *notes]:  # the ports: also in the UI's log
                ctl.say(n)
            root.handlers = [_ToUI(ctl.say)]
            o = session.opt
            startup_log.info("play: %s", ControlMap(o.controls, o.actions).summary())
            player.call(policy.start)
            announce_at = [time.monotonic() + ANNOUNCE_AGAIN] if session.opt.send_programs else []

            def check() -> tuple[int, str] | None:
                if announce_at and time.monotonic() >= announce_at[0]:
                    announce_at.clear()  # once: a JACK connection may not carry the first ones
                    for msg in session.out.cmap.program_messages():
                        session.out.send(msg)
                if session.lost.is_set():
                    return 3, "MIDI port lost: " + ", ".join(n for n, _ in session.lost_ports)
                return None

            app = PlayApp(ctl, duration=args.duration, check=check)
            code = app.run(headless=args.headless)
    except KeyboardInterrupt:
        code = EXIT_SIGINT  # SIGTERM: the UI quits with 143, as every live app
    finally:
        root.handlers = saved
        if session.player is not None and getattr(args, "stats_json", None):
            summary = session.player.stats.summary()
            summary["lost_ports"] = session.lost_ports
            with open(args.stats_json, "w") as f:
                json.dump(summary, f, indent=1)
    if session.player is not None and session.player.error is not None:
        raise UserError(f"play stopped: {session.player.error}")
    if app is not None and app.exit_message:
        log.warning("%s", app.exit_message)
    return int(code or 0)
