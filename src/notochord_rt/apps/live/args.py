"""Command-line flags shared by the live MIDI apps (``harmonize --live``, ``improvise``).

Kept apart from :mod:`.live` so that building the parser imports nothing heavy.
"""

from __future__ import annotations

import argparse

from ...engine.cores.precisions import CORE_CHOICES, DEFAULT_PRECISION


def add_download_argument(parser: argparse.ArgumentParser) -> None:
    """``--download``: the one way a command may fetch a registry model it does not have."""
    parser.add_argument("--download", action="store_true",
                        help="pull a registry model named by --checkpoint if it is not "
                             "cached yet (otherwise nothing is downloaded)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--precision``, ``--threads`` (for commands that lack them)."""
    parser.add_argument("--checkpoint", default="default",
                        help="model: a .safetensors file, a reference checkpoint, 'default' "
                             "or a model name (`notochord-rt models list`)")
    add_download_argument(parser)
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=CORE_CHOICES,
                        help="inference core (default fp32: the fused CPU core)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest for one live stream)")


def add_live_arguments(parser: argparse.ArgumentParser, live_flag: bool = True,
                       app: str | None = None) -> None:
    """MIDI ports, channel maps and timing flags of a live session (and ``--live`` for
    commands that also have an offline mode). With ``app`` (``"harmonize"``,
    ``"improvise"``), ``--cc`` and the app's CC map in the help's epilog."""
    g = parser.add_argument_group("live MIDI")
    if app is not None:
        from .controls import help_epilog

        g.add_argument("--cc", default=None, metavar="NAME=CC,...",
                       help="move controls/actions to other CCs, e.g. "
                            "'steer_pitch=1,mute=off' (the map is shown below)")
        parser.epilog = help_epilog(app)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if live_flag:
        g.add_argument("--live", action="store_true",
                       help="run live on MIDI ports (the default when no input file is given)")
    g.add_argument("--midi-api", default=None, choices=["jack", "alsa", "coremidi", "winmm"],
                   help="MIDI system (default: the first that runs here)")
    g.add_argument("--midi-in", action="append", metavar="PORT",
                   help="input port to connect (exact name or a unique part); repeatable")
    g.add_argument("--midi-out", action="append", metavar="PORT",
                   help="output port to connect; repeatable")
    g.add_argument("--virtual-in", action="append", metavar="NAME",
                   help="create a virtual input port (default 'in' when no --midi-in)")
    g.add_argument("--virtual-out", action="append", metavar="NAME",
                   help="create a virtual output port (default 'out' when no --midi-out)")
    g.add_argument("--client-name", default="notochord-rt",
                   help="MIDI client name: outputs on NAME (NAME:out), inputs on NAME-in "
                        "(NAME-in:in); NAME-2... when taken (the ports are printed at start)")
    g.add_argument("--player", default=None, metavar="MAP",
                   help="player channels, e.g. '1=acoustic grand,10=drums' (default 1=1, piano)")
    g.add_argument("--out-channels", default=None, metavar="MAP",
                   help="output channels of the model's instruments, e.g. '2=violin'")
    g.add_argument("--thru", action="store_true",
                   help="pass everything played on the player channels (notes, sustain, "
                        "expression, pitch bend, pressure) to the output")
    g.add_argument("--suppress-feedback", type=float, default=0.0, metavar="SECONDS",
                   help="ignore input equal to our own output within this window "
                        "(loopback setups; e.g. 0.03)")
    g.add_argument("--no-program-change", action="store_true",
                   help="do not send bank select / program changes at start")
    g.add_argument("--on-port-loss", choices=["wait", "exit"], default="wait",
                   help="when a connected port disappears: report and wait for it, or exit "
                        "(every note is released either way)")
    g.add_argument("--on-server-loss", choices=["exit", "wait"], default="exit",
                   help="when the MIDI server (JACK) dies: exit, or wait for it and open the "
                        "ports again (every note is released either way)")
    g.add_argument("--lookahead", type=float, default=4.0, metavar="MS",
                   help="earliest a sampled event is scheduled after sampling starts")
    g.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this long (default: until Ctrl-C)")
    g.add_argument("--stats-json", default=None, metavar="FILE",
                   help="write timing statistics (latency, lateness) here on exit")


EXTRA = "pip install 'notochord-rt[live]'"


def require_modules(command: str, *modules: str) -> None:
    """Raise one :class:`~notochord_rt.errors.UserError` line naming the extra to install
    when an optional module of a live app is missing (call before loading the model)."""
    import importlib.util

    from ...errors import UserError

    pip_names = {"rtmidi": "python-rtmidi", "textual": "textual", "pythonosc": "python-osc"}
    missing = []
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(pip_names.get(m, m))
    if missing:
        raise UserError(f"{command} needs {' and '.join(missing)}: {EXTRA}")
