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
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402

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


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def run(tabs: int, presses: int, base, chromium: str, background: bool = False,
        engine: str = "per-tab") -> dict:
    from playwright.sync_api import sync_playwright

    from notochord_rt.apps.web.serve import ServerThread, make_web_app

    web = make_web_app(base, soundfont=None, preset="follows", rate=5000, max_sessions=tabs,
                       engine=engine)
    with ServerThread(web) as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--autoplay-policy=no-user-gesture-required", "--no-sandbox", "--mute-audio"])
        pages = []
        for _ in range(tabs):
            page = browser.new_page()
            page.goto(srv.url + "/")
            pages.append(page)
        for page in pages:
            while not page.evaluate("() => !!(window.nrt && nrt.session && nrt.panel.rig)"):
                time.sleep(0.02)
        sessions = list(web.manager.sessions.values())
        if background:  # every tab but the first stops drawing, as a background tab does
            for page in pages[1:]:
                page.evaluate("() => { nrt.roll.frame = () => {}; }")
        for page in pages:  # warm up each tab's model and connection
            page.evaluate(RUN, 3)
        while not all(pg.evaluate("() => __bench.done") for pg in pages):
            time.sleep(0.25)
        for s in sessions:
            s.player.stats.clear()
        for page in pages:
            page.evaluate("() => { nrt.latencies.length = 0; }")
        t0 = time.monotonic()
        for page in pages:
            page.evaluate(RUN, presses)
        time.sleep(presses * 0.12)  # the presses take at least this long: do not poll
        while not all(pg.evaluate("() => __bench.done") for pg in pages):
            time.sleep(0.25)
        wall = time.monotonic() - t0
        lat = [x for pg in pages for x in pg.evaluate("() => __bench.lat")]
        server = [1000 * x for s in sessions for x in s.player.stats.values("latency")]
        sample = [1000 * x for s in sessions for x in s.player.stats.values("sample")]
        feed = [1000 * x for s in sessions for x in s.player.stats.values("feed")]
        browser.close()
    missing = tabs * presses - len(lat)
    return {"tabs": tabs, "engine": engine, "background": background, "presses": len(lat),
            "unanswered": missing, "wall_s": round(wall, 1),
            "page_p50_ms": round(pct(lat, 50), 2), "page_p99_ms": round(pct(lat, 99), 2),
            "page_max_ms": round(max(lat), 2) if lat else None,
            "page_mean_ms": round(statistics.fmean(lat), 2) if lat else None,
            "server_p50_ms": round(pct(server, 50), 2), "server_p99_ms": round(pct(server, 99), 2),
            "sample_p50_ms": round(pct(sample, 50), 3), "feed_p50_ms": round(pct(feed, 50), 3),
            "model_calls_per_press": round((len(sample) + len(feed)) / max(1, len(lat)), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tabs", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--presses", type=int, default=60, help="key presses per tab")
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--engine", default="per-tab", choices=("per-tab", "batched"),
                    help="how the tabs' samplers are made (notochord-rt web --engine)")
    ap.add_argument("--background", action="store_true",
                    help="also run each tab count with every tab but the first not drawing "
                         "its piano roll (browsers run no animation frames in background "
                         "tabs; headless Chromium treats every tab as visible)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("needs Debian's chromium (apt install chromium)", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    from notochord_rt.apps.loading import load_sampler
    from notochord_rt.apps.web.serve import fast_thread_switching

    fast_thread_switching()  # as notochord-rt web does
    base = load_sampler(args.checkpoint, "module")
    print(f"machine: {machine_line()}")
    print(f"model {args.checkpoint}, engine {args.engine}, preset follows, "
          f"{args.presses} presses per tab, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'tabs':>4} {'presses':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'server p50/p99 ms':>18}")
    results = []
    runs = [(n, False) for n in args.tabs]
    if args.background:
        runs += [(n, True) for n in args.tabs if n > 1]
    for n, bg in runs:
        r = run(n, args.presses, base, chromium, bg, args.engine)
        results.append(r)
        print(f"{n:>4}{'*' if bg else ' '}{r['presses']:>7} {r['page_p50_ms']:>7.2f} "
              f"{r['page_p99_ms']:>7.2f} "
              f"{r['page_max_ms']:>7.2f} {r['server_p50_ms']:>8.2f} / {r['server_p99_ms']:<7.2f}"
              + f"  sample/feed p50 {r['sample_p50_ms']:.2f}/{r['feed_p50_ms']:.2f} ms, "
              f"{r['model_calls_per_press']:.0f} model calls a press"
              + (f"  ({r['unanswered']} unanswered)" if r["unanswered"] else ""), flush=True)
    if args.background:
        print("* every tab but the first draws no piano roll (as a background tab)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_line(), "results": results},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
