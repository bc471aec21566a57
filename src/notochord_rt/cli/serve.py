"""``notochord-rt serve``: the OSC server (see ``docs/osc.md`` for addresses and replies)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from ..apps.live.args import add_download_argument
from ..engine.cores.precisions import DEFAULT_PRECISION, PRECISIONS
from ..errors import CheckpointError, InputError, MidiError, UserError

NAME = "serve"
HELP = "serve the model over OSC (/notochord/query, feed, sample, sessions ...)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other address "
                             "prints a warning and disables files)")
    parser.add_argument("--port", "--receive-port", dest="port", type=int, default=9999,
                        help="UDP port to listen on (default 9999; 0 = any free port)")
    parser.add_argument("--send-port", type=int,
                        help="send replies to this port of the sender's host (default: the "
                             "port the request came from)")
    parser.add_argument("--allow-reply-port", action="store_true",
                        help="honour a request's 'port' key (reply to another port of the "
                             "sender's host; default: refused)")
    parser.add_argument("--checkpoint", default="default",
                        help="model: a .safetensors file, a reference checkpoint, a model "
                             "name (`notochord-rt models list`) or 'default' (the bundled "
                             "model; the default)")
    add_download_argument(parser)
    parser.add_argument("--prompt", metavar="FILE.mid",
                        help="feed this MIDI file first; every session starts from (and "
                             "resets to) the state after it")
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS,
                        help="precision of the packed weights (default fp32)")
    parser.add_argument("--max-sessions", type=int, default=64,
                        help="client sessions open at once, besides the shared session 0 "
                             "(default 64)")
    parser.add_argument("--sessions-per-host", type=int, default=16,
                        help="client sessions one host may have open at once (default 16)")
    parser.add_argument("--session-timeout", type=float, default=600.0,
                        help="close sessions idle for this many seconds (default 600; "
                             "0 = never)")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="OSC messages per second one sender (host and port) may send; "
                             "the rest are dropped unread (default 1000, bursts of 200)")
    parser.add_argument("--seed", type=int, help="seed every session (reproducible runs)")
    parser.add_argument("--query-max-duration", type=float, default=8.0, metavar="SECONDS",
                        help="notes sampled by the reference-style query end after about "
                             "this long (default 8; 0 = never, as the reference)")
    parser.add_argument("--allow-files", metavar="DIR",
                        help="let /notochord/prompt and /notochord/load read regular files "
                             "inside DIR (default: no file is read; loopback --host only)")
    parser.add_argument("--max-checkpoint-mb", type=float, default=256.0,
                        help="largest checkpoint /notochord/load may read (default 256)")
    parser.add_argument("--no-files", action="store_true",
                        help="(the default now) read no files")
    from ..apps.live.clock import add_clock_arguments

    add_clock_arguments(parser, grid=False)  # sample requests with grid take its beat
    parser.add_argument("--midi-api", default=None, choices=["jack", "alsa", "coremidi", "winmm"],
                        help="MIDI system of --clock-in / --clock-out")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if args.send_port is not None and not 1 <= args.send_port <= 65535:
        raise UserError(f"--send-port must be in 1..65535, got {args.send_port}")
    for name in ("max_sessions", "session_timeout"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got "
                            f"{getattr(args, name)}")
    if not 0 <= args.query_max_duration < float("inf"):
        raise UserError(f"--query-max-duration must be a number of seconds >= 0 (0 = off), "
                        f"got {args.query_max_duration}")
    for name in ("sessions_per_host", "rate", "max_checkpoint_mb"):
        if not getattr(args, name) > 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0, got "
                            f"{getattr(args, name)}")


def run(args: argparse.Namespace) -> int:
    try:
        from ..apps.osc.server import OscServer
    except ImportError as e:
        raise UserError(f"{e.name or e} is needed to serve OSC: pip install "
                        "'notochord-rt[live]' (or python-osc)") from None
    from ..apps.live.clock import clock_from_args

    _check(args)
    files = _file_root(args)
    sessions = _sessions(args)
    clock, clock_out = clock_from_args(args, "notochord-rt-serve")
    sessions.clock = clock
    try:
        server = OscServer(sessions, args.host, args.port, send_port=args.send_port,
                           allow_reply_port=args.allow_reply_port, rate=args.rate,
                           session_timeout=args.session_timeout or None)
    except OSError as e:
        if clock is not None:
            clock.close()
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    server.parser.clocked = clock is not None
    server.parser.query_max_duration = args.query_max_duration
    sessions.files = _announce(server, args, files)
    try:
        if clock is not None:
            clock.start()
            if clock_out is not None:
                clock_out.start()
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if clock_out is not None:
            clock_out.close()
        if clock is not None:
            clock.close()
    return 0


def _file_root(args: argparse.Namespace):
    """The ``--allow-files`` folder (checked), or None."""
    from ..apps.osc.files import FileRoot

    if args.allow_files and args.no_files:
        raise UserError("--allow-files and --no-files contradict each other")
    if not args.allow_files:
        return None
    try:
        return FileRoot(args.allow_files,
                        checkpoint_max_bytes=int(args.max_checkpoint_mb * (1 << 20)))
    except InputError as e:
        raise UserError(str(e)) from None


def _sessions(args: argparse.Namespace):
    """The model loaded (a one-line error if it cannot be) and its sessions, prompted."""
    from ..apps.loading import resolve_for_cli
    from ..apps.osc.sessions import Sessions
    from ..model.network import NotochordNet

    try:
        model = NotochordNet.load(resolve_for_cli(args.checkpoint, download=args.download,
                                                  must_exist=False))
    except CheckpointError as e:
        hint = " (--checkpoint PATH)" if args.checkpoint == "default" else ""
        raise UserError(f"{e}{hint}") from None
    sessions = Sessions(model, max_sessions=args.max_sessions, precision=args.precision,
                        seed=args.seed, per_host=args.sessions_per_host)
    sessions.checkpoint = args.checkpoint
    if args.prompt:
        try:
            info = sessions.prompt(0, args.prompt)
        except (MidiError, InputError, OSError) as e:
            raise UserError(f"--prompt {args.prompt}: {e}") from None
        sessions.base_prompt = sessions.get(0).prompt
        log.info("prompted with %s: %d events", args.prompt, info["events"])
    return sessions


def _announce(server, args: argparse.Namespace, files):
    """Say where the server listens (a warning off loopback, where files are refused);
    returns the file root the sessions may use."""
    host, port = server.address
    if not _loopback(host):
        print(f"notochord-rt serve: WARNING: listening on {host}, not a loopback address: "  # noqa: T201
              "anyone who can reach this port can use the model (use a trusted network or "
              "a firewall)" + ("; --allow-files is ignored (files only on loopback)"
                               if files else ""), file=sys.stderr, flush=True)
        files = None
    print(f"notochord-rt serve: listening on {host}:{port} (OSC over UDP); "  # noqa: T201
          f"model {args.checkpoint}; files {'in ' + files.root if files else 'off'}; "
          "Ctrl-C to stop", file=sys.stderr, flush=True)
    return files
