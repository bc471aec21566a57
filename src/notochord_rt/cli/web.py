"""``notochord-rt web``: a local web playground (page + WebSocket; see docs/web.md).

Open the page, press keys (on screen, on the computer keyboard or on a MIDI controller
through Web MIDI) and hear the model's voices answer through a General MIDI SoundFont
synth in the page. Each tab is a session with its own voices, run by the same real-time
player and voices policy as ``notochord-rt play``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..apps.live.args import add_download_argument
from ..apps.web.engine import AUTO, resolve_precision
from ..engine.cores.precisions import PRECISIONS
from ..errors import UserError

NAME = "web"
HELP = "live: a web playground in the browser (keyboard, Web MIDI, GM synth, piano roll)"

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'notochord-rt[web]'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other address "
                             "prints a warning)")
    parser.add_argument("--port", type=int, default=8000,
                        help="TCP port (default 8000; 0 = any free port)")
    parser.add_argument("--checkpoint", default="default",
                        help="model: a .safetensors file, a model name (`notochord-rt models "
                             "list`) or 'default' (the bundled model; the default)")
    add_download_argument(parser)
    parser.add_argument("--precision", default=AUTO,
                        choices=(AUTO, *PRECISIONS, "module"),
                        help="core of each tab's sampler (default auto: int8 with --engine "
                             "batched where this CPU runs the compiled int8 kernel, "
                             "AVX-512 VNNI; else fp32)")
    parser.add_argument("--engine", default="per-tab", choices=("per-tab", "batched"),
                        help="per-tab: each tab its own sampler over the shared weights (the "
                             "default); batched: every tab a stream of one batched engine, "
                             "concurrent calls combined into one step")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes sharing the port (default 1): one process "
                             "runs Python on about one core; with more tabs than it keeps "
                             "up with, 2 or more use more cores (--max-sessions is per "
                             "worker)")
    parser.add_argument("--soundfont", metavar="PATH",
                        help="General MIDI SoundFont (.sf2/.sf3) the page plays with "
                             "(default: Debian's FluidR3_GM from fluid-soundfont-gm)")
    parser.add_argument("--presets", metavar="FILE",
                        help="presets TOML file (default: the bundled presets, as play)")
    parser.add_argument("--preset", default=None,
                        help="preset each new tab starts with (default: the first)")
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    parser.add_argument("--max-sessions", type=int, default=16,
                        help="tabs served at once (default 16)")
    parser.add_argument("--session-timeout", type=float, default=600.0,
                        help="close sessions idle for this many seconds (default 600; "
                             "0 = never)")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="messages per second one tab may send (default 200, bursts "
                             "of twice that)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                        help="another page origin allowed to open sessions (repeatable)")
    parser.add_argument("--seed", type=int, help="seed the sessions (reproducible runs)")


def _check(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.max_sessions < 1:
        raise UserError(f"--max-sessions must be >= 1, got {args.max_sessions}")
    if args.session_timeout < 0:
        raise UserError(f"--session-timeout must be >= 0, got {args.session_timeout}")
    if not args.rate > 0:
        raise UserError(f"--rate must be > 0, got {args.rate}")


def run(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as e:
        raise UserError(f"{e.name or e} is needed for the web playground: {EXTRA_HINT}") from None
    from ..apps.loading import load_sampler, resolve_for_cli
    from ..apps.play.presets import load_presets
    from ..apps.web import serve as srv
    from ..apps.web.soundfont import HOW_TO_GET, find_soundfont
    from ..apps.web.workers import WebSettings, build_app, serve_one, serve_workers

    _check(args)
    book = load_presets(args.presets)
    if not book.presets:
        raise UserError(f"{book.source} has no presets")
    preset = book.find(int(args.preset) - 1 if args.preset and args.preset.isdigit()
                       else args.preset or 0).name
    soundfont = find_soundfont(args.soundfont)
    base = load_sampler(args.checkpoint, "module", download=args.download)
    precision = resolve_precision(args.precision, args.engine)
    settings = WebSettings(
        checkpoint=str(resolve_for_cli(args.checkpoint)), soundfont=soundfont,
        presets=args.presets, preset=preset, precision=precision, engine=args.engine,
        max_sessions=args.max_sessions, idle_timeout=args.session_timeout or None,
        seed=args.seed, rate=args.rate, host=args.host, allow_origins=tuple(args.allow_origin),
        info={"model": str(args.checkpoint), "precision": precision})
    local = srv.loopback(args.host)
    sock = srv.bind(args.host, args.port, reuse_port=args.workers > 1)
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{port}/"
    if not local:
        print(f"notochord-rt web: WARNING: listening on {args.host}, not a loopback address: "  # noqa: T201
              "anyone who can reach this port can play with the model and use this "
              "machine's CPU (use a trusted network or a firewall)", file=sys.stderr, flush=True)
    workers = f", {args.workers} worker processes" if args.workers > 1 else ""
    print(f"notochord-rt web: {url} (model {args.checkpoint}, preset {preset}{workers}, "  # noqa: T201
          f"SoundFont {soundfont or 'none: ' + HOW_TO_GET}); Ctrl-C to stop",
          file=sys.stderr, flush=True)
    if args.open:
        import threading
        import webbrowser

        threading.Timer(0.5, webbrowser.open, (url,)).start()
    try:
        if args.workers > 1:
            del base  # each worker loads its own
            serve_workers(settings, sock, args.workers)
        else:
            serve_one(build_app(settings, base, book), sock)
    finally:
        sock.close()
    return 0
