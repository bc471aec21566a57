"""``notochord-rt serve``: the OSC server (see ``docs/osc.md`` for addresses and replies)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import CheckpointError, MidiError, UserError

NAME = "serve"
HELP = "serve the model over OSC (/notochord/query, feed, sample, sessions ...)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 = every "
                             "interface, only on a trusted network)")
    parser.add_argument("--port", "--receive-port", dest="port", type=int, default=9999,
                        help="UDP port to listen on (default 9999; 0 = any free port)")
    parser.add_argument("--send-port", type=int,
                        help="send replies to this port of the sender's host (default: the "
                             "port the request came from; a request's 'port' key wins)")
    parser.add_argument("--checkpoint", default="default",
                        help="model: a .safetensors file, a reference checkpoint, or "
                             "'default' (the bundled model; the default)")
    parser.add_argument("--prompt", metavar="FILE.mid",
                        help="feed this MIDI file first; every session starts from (and "
                             "resets to) the state after it")
    parser.add_argument("--precision", default="fp32",
                        choices=("fp32", "bf16", "fp16", "int8"),
                        help="precision of the packed weights (default fp32)")
    parser.add_argument("--max-sessions", type=int, default=64,
                        help="client sessions open at once, besides the shared session 0 "
                             "(default 64)")
    parser.add_argument("--session-timeout", type=float, default=3600.0,
                        help="close sessions idle for this many seconds (default 3600; "
                             "0 = never)")
    parser.add_argument("--seed", type=int, help="seed every session (reproducible runs)")
    parser.add_argument("--no-files", dest="allow_files", action="store_false",
                        help="refuse /notochord/prompt and /notochord/load (which read "
                             "files on this machine)")


def run(args: argparse.Namespace) -> int:
    try:
        from ..apps.osc_server import OscServer
    except ImportError as e:
        raise UserError(f"{e.name or e} is needed to serve OSC: pip install "
                        "'notochord-rt[live]' (or python-osc)") from None
    from ..apps.osc_sessions import Sessions
    from ..model.network import NotochordNet

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if args.send_port is not None and not 1 <= args.send_port <= 65535:
        raise UserError(f"--send-port must be in 1..65535, got {args.send_port}")
    if args.max_sessions < 0:
        raise UserError(f"--max-sessions must be >= 0, got {args.max_sessions}")
    if args.session_timeout < 0:
        raise UserError(f"--session-timeout must be >= 0, got {args.session_timeout}")
    try:
        model = NotochordNet.load(args.checkpoint)
    except CheckpointError as e:
        hint = " (--checkpoint PATH)" if args.checkpoint == "default" else ""
        raise UserError(f"{e}{hint}") from None
    sessions = Sessions(model, max_sessions=args.max_sessions, precision=args.precision,
                        seed=args.seed, allow_files=args.allow_files)
    sessions.checkpoint = args.checkpoint
    if args.prompt:
        try:
            info = sessions.prompt(0, args.prompt)
        except (MidiError, OSError) as e:
            raise UserError(f"--prompt {args.prompt}: {e}") from None
        sessions.base_prompt = sessions.get(0).prompt
        log.info("prompted with %s: %d events", args.prompt, info["events"])
    try:
        server = OscServer(sessions, args.host, args.port, send_port=args.send_port,
                           session_timeout=args.session_timeout or None)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    host, port = server.address
    print(f"notochord-rt serve: listening on {host}:{port} (OSC over UDP); "  # noqa: T201
          f"model {args.checkpoint}; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
