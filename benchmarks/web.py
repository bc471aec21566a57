"""Web playground latency: key press to the model's answer arriving in the page.

The server (``notochord-rt web``'s app on a background thread of this process, uvicorn
on loopback) plays the bundled default model (or ``--checkpoint``) with the ``follows``
preset: each note played on channel 1 is answered at once by follow voices. Debian's
chromium (headless, driven by Playwright) opens ``--tabs`` tabs, each its own session;
in every tab a loop in the page presses a key through the page's own keyboard handler
(the path a mouse press takes), waits for the first answer (the page's ``nrt-answer``
event, no polling), releases the key, waits a
random 80-160 ms and presses the next. The latency is measured in the page with
``performance.now()``: from the press to the arrival of the first answering note (the
WebSocket message naming the press), i.e. page -> WebSocket -> server -> the tab's
real-time player and model -> WebSocket -> page. The tabs run at the same time.

Printed per tab count: p50 / p99 / max in ms over every press of every tab, and the
server-side part (the players' input-to-answer latency) for comparison, plus the
machine. The page's synth is not loaded (no SoundFont: 16 tabs would hold 16 copies of
it); it runs on its own audio thread and is not on this path.

    python benchmarks/web.py                 # 1 and 16 tabs, 60 presses per tab
    python benchmarks/web.py --background    # and 16 tabs of which 15 do not draw
    python benchmarks/web.py --tabs 1 4 --presses 20
    python benchmarks/web.py --tabs 16 --clients   # 1 tab + 15 protocol clients

``--clients`` separates the server's capacity from the browser's: of each tab count's
sessions only the first is a Chromium tab; the others are lightweight WebSocket clients
in one separate process (asyncio, the page's protocol, batches included, and press
pattern: note-on with an id, wait for the first answering note naming it, note-off,
80-160 ms, next), as other people's browsers on other machines would be. On a 2-core
machine 16 headless renderers take the cores the server needs; this mode measures the
server under 16 sessions.
The clients' own press-to-answer times are printed too. ``--workers N`` serves from N
processes on one port (``notochord-rt web --workers``); ``--precision`` picks the
sessions' core (default ``auto``, as the server's: int8 for ``--engine batched`` where the
compiled int8 kernel runs, else fp32).

    python benchmarks/web.py --tabs 16 --clients --engine batched --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402

from notochord_rt.apps.web.engine import AUTO, resolve_precision  # noqa: E402
from notochord_rt.engine.cores.precisions import PRECISIONS  # noqa: E402

RUN = """(n) => {
  window.__bench = { done: false, lat: [] };
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  (async () => {
    const kb = nrt.kb;
    for (let k = 0; k < n; k++) {
      const pitch = 55 + (k * 5) % 24;
      const answered = new Promise((resolve) => {
        const timer = setTimeout(resolve, 5000);  // counted as unanswered
        window.addEventListener('nrt-answer', () => { clearTimeout(timer); resolve(); },
                                { once: true });
      });
      kb.press('bench', pitch);
      await answered;
      kb.release('bench');
      await wait(80 + Math.random() * 80);
    }
    window.__bench.lat = nrt.latencies.slice();
    window.__bench.done = true;
  })();
}"""


CLIENT_PITCHES = [55 + (k * 5) % 24 for k in range(24)]


def _messages(text: str) -> list[dict]:
    """The messages of one server frame (a batch is a JSON array)."""
    data = json.loads(text)
    return data if isinstance(data, list) else [data]


async def _client(url: str, presses: int, out: list[float], warm, go) -> None:
    """One protocol client: 3 warm-up presses, then (once ``go`` is set) ``presses``
    presses, appending each press-to-first-answer time (ms) to ``out``."""
    import random

    import websockets

    ws_url = "ws" + url[len("http"):] + "/ws"
    async with websockets.connect(ws_url, origin=url, max_size=2**20) as ws:
        while json.loads(await ws.recv()).get("type") != "welcome":
            pass
        await ws.send(json.dumps({"type": "hello", "version": 1, "batch": True}))  # as the page

        async def press(k: int) -> float | None:
            pitch = CLIENT_PITCHES[k % len(CLIENT_PITCHES)]
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "note", "pitch": pitch, "vel": 96, "id": k}))
            ms = None
            try:
                async with asyncio.timeout(5.0):
                    while ms is None:
                        for m in _messages(await ws.recv()):
                            if (ms is None and m.get("type") == "note" and m.get("reply") == k
                                    and m.get("vel")):
                                ms = 1000 * (time.perf_counter() - t0)
            except TimeoutError:
                pass  # counted as unanswered
            await ws.send(json.dumps({"type": "note", "pitch": pitch, "vel": 0}))
            await asyncio.sleep(0.08 + 0.08 * random.random())
            return ms

        for k in range(3):
            await press(k)
        warm()
        await go.wait()
        for k in range(3, 3 + presses):
            ms = await press(k)
            if ms is not None:
                out.append(ms)


def drive_clients(url: str, n: int, presses: int) -> None:
    """``--drive URL``: run ``n`` protocol clients against ``url``; print "ready" once
    every client has warmed up, start on a line on stdin, print the latencies (JSON)."""

    async def main() -> None:
        go, all_warm = asyncio.Event(), asyncio.Event()
        out: list[float] = []
        warm_count = [0]

        def warm() -> None:
            warm_count[0] += 1
            if warm_count[0] == n:
                all_warm.set()

        tasks = [asyncio.create_task(_client(url, presses, out, warm, go)) for _ in range(n)]
        await all_warm.wait()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        go.set()
        await asyncio.gather(*tasks)
        print(json.dumps(out), flush=True)

    asyncio.run(main())


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


class WorkerServer:
    """``--workers N``: the server as ``notochord-rt web --workers N`` runs it (N processes
    on one port; their players' statistics stay in them, so no server-side figures)."""

    def __init__(self, checkpoint: str, tabs: int, engine: str, precision: str,
                 workers: int) -> None:
        from notochord_rt.apps.loading import resolve_for_cli
        from notochord_rt.apps.web.serve import bind
        from notochord_rt.apps.web.workers import WebSettings, Workers

        self.sock = bind("127.0.0.1", 0, reuse_port=True)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        settings = WebSettings(checkpoint=str(resolve_for_cli(checkpoint)), preset="follows",
                               rate=5000, max_sessions=tabs, engine=engine,
                               precision=precision)
        self.workers = Workers(settings, self.sock, workers)
        self.web = None

    def __enter__(self) -> WorkerServer:
        import urllib.request

        self.workers.start()
        end = time.monotonic() + 120
        while True:  # every worker loaded: each answers /api/info once it serves
            try:
                with urllib.request.urlopen(self.url + "/api/info", timeout=5):
                    break
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError("the web workers did not start") from None
                time.sleep(0.2)
        time.sleep(3.0)  # the other workers finish loading too
        return self

    def __exit__(self, *exc) -> None:
        self.workers.shutdown()
        self.sock.close()


def run(tabs: int, presses: int, base, chromium: str, background: bool = False,
        engine: str = "per-tab", clients: bool = False, precision: str = "fp32",
        workers: int = 1, checkpoint: str = "default") -> dict:
    from playwright.sync_api import sync_playwright

    from notochord_rt.apps.web.serve import ServerThread, make_web_app

    if workers > 1:
        serving = WorkerServer(checkpoint, tabs, engine, precision, workers)
    else:
        serving = ServerThread(make_web_app(base, soundfont=None, preset="follows", rate=5000,
                                           max_sessions=tabs, engine=engine,
                                           precision=precision))
    web = serving.web
    with serving as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--autoplay-policy=no-user-gesture-required", "--no-sandbox", "--mute-audio"])
        pages, driver = [], None
        if clients and tabs > 1:
            driver = subprocess.Popen(
                [sys.executable, __file__, "--drive", srv.url, "--tabs", str(tabs - 1),
                 "--presses", str(presses)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True)
        for _ in range(1 if clients else tabs):
            page = browser.new_page()
            page.goto(srv.url + "/")
            pages.append(page)
        for page in pages:
            while not page.evaluate("() => !!(window.nrt && nrt.session && nrt.panel.rig)"):
                time.sleep(0.02)
        for page in pages:  # warm up each tab's model and connection
            page.evaluate(RUN, 3)
        while not all(pg.evaluate("() => __bench.done") for pg in pages):
            time.sleep(0.25)
        if driver is not None and driver.stdout.readline().strip() != "ready":
            raise RuntimeError("the protocol clients did not start")
        sessions = list(web.manager.sessions.values()) if web is not None else []
        if background:  # every tab but the first stops drawing, as a background tab does
            for page in pages[1:]:
                page.evaluate("() => { nrt.roll.frame = () => {}; }")
        for s in sessions:
            s.player.stats.clear()
        for page in pages:
            page.evaluate("() => { nrt.latencies.length = 0; }")
        t0 = time.monotonic()
        if driver is not None:
            driver.stdin.write("go\n")
            driver.stdin.flush()
        for page in pages:
            page.evaluate(RUN, presses)
        time.sleep(presses * 0.12)  # the presses take at least this long: do not poll
        while not all(pg.evaluate("() => __bench.done") for pg in pages):
            time.sleep(0.25)
        lat = [x for pg in pages for x in pg.evaluate("() => __bench.lat")]
        client_lat = json.loads(driver.stdout.readline()) if driver is not None else []
        wall = time.monotonic() - t0
        server = [1000 * x for s in sessions for x in s.player.stats.values("latency")]
        sample = [1000 * x for s in sessions for x in s.player.stats.values("sample")]
        feed = [1000 * x for s in sessions for x in s.player.stats.values("feed")]
        browser.close()
    if driver is not None:
        driver.wait(10)  # it has printed its figures: it is finishing
    missing = (len(pages) * presses - len(lat)) + (
        (tabs - 1) * presses - len(client_lat) if driver is not None else 0)
    return {"tabs": tabs, "engine": engine, "precision": precision, "workers": workers,
            "background": background,
            "clients": tabs - 1 if driver is not None else 0, "presses": len(lat),
            "client_presses": len(client_lat),
            "client_p50_ms": round(pct(client_lat, 50), 2),
            "client_p99_ms": round(pct(client_lat, 99), 2),
            "unanswered": missing, "wall_s": round(wall, 1),
            "page_p50_ms": round(pct(lat, 50), 2), "page_p99_ms": round(pct(lat, 99), 2),
            "page_max_ms": round(max(lat), 2) if lat else None,
            "page_mean_ms": round(statistics.fmean(lat), 2) if lat else None,
            "server_p50_ms": round(pct(server, 50), 2), "server_p99_ms": round(pct(server, 99), 2),
            "sample_p50_ms": round(pct(sample, 50), 3), "feed_p50_ms": round(pct(feed, 50), 3),
            "model_calls_per_press": round((len(sample) + len(feed))
                                           / max(1, len(lat) + len(client_lat)), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tabs", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--presses", type=int, default=60, help="key presses per tab")
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--engine", default="per-tab", choices=("per-tab", "batched"),
                    help="how the tabs' samplers are made (notochord-rt web --engine)")
    ap.add_argument("--precision", default=AUTO, choices=(AUTO, *PRECISIONS),
                    help="the sessions' core (notochord-rt web --precision; default auto, "
                         "as the server's)")
    ap.add_argument("--workers", type=int, default=1,
                    help="server processes (notochord-rt web --workers; with more than one "
                         "the server-side figures are not collected)")
    ap.add_argument("--background", action="store_true",
                    help="also run each tab count with every tab but the first not drawing "
                         "its piano roll (browsers run no animation frames in background "
                         "tabs; headless Chromium treats every tab as visible)")
    ap.add_argument("--clients", action="store_true",
                    help="one Chromium tab per tab count; the other sessions are protocol "
                         "clients in a separate process (see the module docstring)")
    ap.add_argument("--drive", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = ap.parse_args()
    if args.drive:  # the --clients helper process
        drive_clients(args.drive, args.tabs[0], args.presses)
        return 0
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("needs Debian's chromium (apt install chromium)", file=sys.stderr)
        return 2
    import torch

    args.precision = resolve_precision(args.precision, args.engine)
    torch.set_num_threads(1)
    from notochord_rt.apps.loading import load_sampler
    from notochord_rt.apps.web.serve import fast_thread_switching

    fast_thread_switching()  # as notochord-rt web does
    base = load_sampler(args.checkpoint, "module")
    print(f"machine: {machine_line()}")
    print(f"model {args.checkpoint}, engine {args.engine}, {args.precision}, "
          f"{args.workers} server process{'es' if args.workers > 1 else ''}, preset follows, "
          f"{args.presses} presses per tab, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'tabs':>4} {'presses':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'server p50/p99 ms':>18}")
    results = []
    runs = [(n, False) for n in args.tabs]
    if args.background:
        runs += [(n, True) for n in args.tabs if n > 1]
    for n, bg in runs:
        r = run(n, args.presses, base, chromium, bg, args.engine, args.clients, args.precision,
                args.workers, args.checkpoint)
        results.append(r)
        print(f"{n:>4}{'*' if bg else ' '}{r['presses']:>7} {r['page_p50_ms']:>7.2f} "
              f"{r['page_p99_ms']:>7.2f} "
              f"{r['page_max_ms']:>7.2f} {r['server_p50_ms']:>8.2f} / {r['server_p99_ms']:<7.2f}"
              + f"  sample/feed p50 {r['sample_p50_ms']:.2f}/{r['feed_p50_ms']:.2f} ms, "
              f"{r['model_calls_per_press']:.0f} model calls a press"
              + (f"  ({r['unanswered']} unanswered)" if r["unanswered"] else ""), flush=True)
        if r["clients"]:
            print(f"      {r['clients']} protocol clients: {r['client_presses']} presses, "
                  f"p50 {r['client_p50_ms']:.2f} / p99 {r['client_p99_ms']:.2f} ms "
                  "(press to answer, measured in the client)", flush=True)
    if args.background:
        print("* every tab but the first draws no piano roll (as a background tab)")
    if args.clients:
        print("with --clients: tab count = 1 Chromium tab + protocol clients; the p50/p99 "
              "columns are the tab's")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_line(), "results": results},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
