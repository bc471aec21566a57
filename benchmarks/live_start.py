"""Two scenarios of ``benchmarks/live.py`` a musician meets at once (issue 16):

``first-note``  the first played note after an app starts, against the notes after it:
                ``notochord-rt harmonize --live`` is started ``--starts`` times; each
                time, once its programs arrived (it is connected) and 0.7 s more, one
                note is played and its answer timed, then 20 more (steady state).
                Goal: the first answer within 2 ms of the steady p50.
``tui``         the scheduling lateness of ``notochord-rt play``'s player while keys
                are pressed: the TUI (textual, headless, 80×24) runs in this process
                around the real player and model playing a preset's auto voices into a
                JACK probe, while textual's pilot presses ``+ - left right up down`` at
                ~25 keys/s. Lateness is the player's (send − due) of every planned
                event. Goal: p99 ≤ 2 ms, max ≤ 10 ms.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import numpy as np

NOTE_ON = 0x90


def _answer_after(probe, t: float, channel: int, window: float) -> float | None:
    hits = [a for a, m in probe.messages()
            if m[0] == NOTE_ON | channel and m[2] > 0 and t <= a < t + window]
    return hits[0] - t if hits else None


def first_note(cmd: list[str], probe, starts: int, gap: float = 0.08) -> dict:
    """Start ``cmd`` (an app answering on channel 2) ``starts`` times; the first answer's
    latency after each start and the steady latencies after it (seconds)."""
    first, steady = [], []
    missed = 0
    for _ in range(starts):
        probe.clear()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            ok = probe.wait_for(lambda m: any(x[0] & 0xF0 == 0xC0 for _, x in m), timeout=120)
            if not ok:
                raise RuntimeError("the app never sent its programs")
            time.sleep(0.7)  # past the re-announce; the connections are active
            for k in range(21):
                pitch = 60 + k % 12
                t = probe.send(NOTE_ON, pitch, 100)
                if k == 0:  # however late: wait for it
                    probe.wait_for(lambda m, t=t: _answer_after(probe, t, 1, 1.0) is not None,
                                   timeout=1.0)
                else:
                    time.sleep(gap / 2)
                probe.send(0x80, pitch, 0)
                time.sleep(gap / 2)
                lat = _answer_after(probe, t, 1, 1.0 if k == 0 else gap * 0.95)
                if lat is not None:
                    (first if k == 0 else steady).append(lat)
                elif k == 0:
                    missed += 1
        finally:
            proc.send_signal(2)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    return {"first": first, "steady": steady, "missed": missed}


def summarize_first(runs: list[dict], stats_ms) -> dict:
    """Pool :func:`first_note` runs: the first answers against the steady ones."""
    f = np.array([x for r in runs for x in r["first"]])
    s = np.array([x for r in runs for x in r["steady"]])
    out = {"first": stats_ms(f), "steady": stats_ms(s), "starts": len(runs),
           "first_unanswered": sum(r["missed"] for r in runs),
           "first_ms": [round(float(x) * 1e3, 2) for x in f]}
    if len(f) and len(s):
        out["first_minus_steady_p50_ms"] = round(float(np.median(f) - np.median(s)) * 1e3, 3)
    return out


COLD = ("import sys, notochord_rt.apps.live.player as p, notochord_rt.apps.live.session as s; "
        "p.warm_up = lambda model: 0.0; s.settle_memory = lambda: 0.0; "
        "from notochord_rt.cli import main; sys.exit(main())")
"""``python -c COLD ARGS...``: the app without its warm-up and without the garbage
collection at start (the comparison)."""


STEER_KEYS = ("plus", "plus", "minus", "right", "left", "down", "plus", "up", "minus")
"""Keys pressed in turn: steering (+/-, each re-plans the next event) and moving about."""
NAV_KEYS = ("right", "left", "down", "up")
"""Keys that only move the selection (the UI's own work, no re-plan)."""


def tui_lateness(model, probe_in: str | None, seconds: float, stats_ms, preset: str = "band",
                 keys_per_s: float = 25.0, tui: bool = True,
                 keys: tuple[str, ...] = STEER_KEYS) -> dict:
    """The play TUI in this process (headless, 80×24) around a real session playing into
    ``probe_in`` (None: a virtual output nobody reads, so that no probe thread of this
    process competes for the GIL; the lateness is the player's own). Keys are pressed
    for ``seconds`` (``simulate_key``, as a terminal delivers them, without waiting for
    the app); the player's lateness meanwhile. ``tui=False``: the same session for the
    same time without any UI (the baseline)."""
    from notochord_rt.apps.live.ports import ChannelMap
    from notochord_rt.apps.live.session import LiveOptions, LiveSession
    from notochord_rt.apps.play.policy import PlayController, VoicesPolicy
    from notochord_rt.apps.play.presets import load_presets
    from notochord_rt.apps.play.tui import PlayApp

    book = load_presets()
    rig = book.rig(book.find(preset).name)
    policy = VoicesPolicy(rig)
    opt = LiveOptions(api="jack", outputs=[probe_in] if probe_in else [],
                      virtual_out=[] if probe_in else ["out"], virtual_in=["in"],
                      client_name="bench-tui")
    session = LiveSession(model, policy, ChannelMap(rig.input_channels()),
                          ChannelMap(rig.channel_insts(), rig.programs()), opt)
    pressed = [0]

    async def drive(app: PlayApp) -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(1.0)
            session.player.stats.clear()
            end = time.monotonic() + seconds
            k = 0
            while time.monotonic() < end:
                app.simulate_key(keys[k % len(keys)])
                k += 1
                await asyncio.sleep(1.0 / keys_per_s)
            pressed[0] = k

    with session:
        ctl = PlayController(session.player, policy, book)
        session.player.call(policy.start)
        if tui:
            asyncio.run(drive(PlayApp(ctl)))
        else:
            time.sleep(1.0)
            session.player.stats.clear()
            time.sleep(seconds)
        late = session.player.stats.values("lateness")
        sample = session.player.stats.values("sample")
    return {"lateness": stats_ms(late), "sample": stats_ms(sample), "keys": pressed[0],
            "key_kind": "steer" if "plus" in keys else "navigate",
            "seconds": seconds, "preset": preset, "ui": "80x24 headless" if tui else "none"}
