"""Live MIDI timing through JACK virtual ports: input-to-output latency and output jitter.

A JACK server (``jackd --no-realtime -d dummy``, 48 kHz; ``--period`` frames, default
64 = 1.33 ms) is started for the run (``tests/jack.py``). This process is the musician
and the synth: a :class:`jack.Probe` plays notes into the app and timestamps what comes
back. Each app runs as its own process, as a user would run it:

Latency (a note-on every ``--gap`` s; time from our send to the answer's arrival):

``thru``       the port alone: an rtmidi callback that sends the note straight back
``echo``       our live stack without a model: input router → player thread → MIDI out
``harmonize``  ``notochord-rt harmonize --live`` with one voice (feed + sample + send)

Jitter (the app schedules notes on its own; ``arrival - due`` per note, and the jitter is
its distance from the run's median — a constant offset is latency, not jitter):

``metronome``  the player's scheduler with a stand-in model that returns fixed events
               instantly: the precise wait plus the port, no model
``improvise``  the improviser with the real model

The model is the reference's default 17.7 M-parameter architecture with random weights
(seeded; same cost as the released checkpoint) on the fp32 fused core, or ``--checkpoint``.
Goals (issue 6): model-added latency p99 ≤ 5 ms (harmonize p99 − thru p99) and jitter
p99 ≤ 1 ms beyond the port's (improvise − metronome). Scenarios run in interleaved rounds
(``--rounds``, default 3) so that a shared machine's changing load falls on all alike;
the numbers still depend on that load, which the output records (``loadavg``). Run:
``python benchmarks/live.py`` (about 4 minutes; ``--quick`` for a smoke run; ``--json
PATH`` writes the numbers; ``--precision int8`` for the int8 core). The OSC query round
trip of ``notochord-rt serve`` is measured by ``benchmarks/live_osc.py``.

Start-up and UI (``live_start.py``; ``--only first-note|tui``): the first played note
after ``harmonize --live`` starts against the steady notes after it (``--starts``), and
the ``play`` TUI's scheduling lateness while keys are pressed at 80x24, interleaved with
the same session without a UI (``--tui-seconds``; play's default model).

Unmute (``live_unmute.py``; ``--only unmute``): the improviser muted for 1-12 s, then
unmuted; seconds to its first note, with the player's resume window and without it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from machine import cpu_name

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

VIOLIN, PIANO = 41, 1
NOTE_ON = 0x90


# -- the apps (child processes) ----------------------------------------------------------------
class FixedModel:
    """Stands in for the model in the metronome: instant, alternating note-on / note-off
    events of instrument 41 at 20..60 ms (at least ``min_time``)."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.on = False
        self.pitch = 60
        self.held_notes: dict = {}

    def reset(self, *a, **kw) -> None:
        self.on = False

    def feed(self, *a, **kw) -> None:
        pass

    def sample(self, cons=None, **kw):
        self.on = not self.on
        if self.on:
            self.pitch = 48 + int(self.rng.integers(24))
        t = max(float(self.rng.uniform(0.02, 0.06)), getattr(cons, "min_time", 0.0) or 0.0)
        return SimpleNamespace(inst=VIOLIN, pitch=self.pitch, time=t, vel=90.0 if self.on else 0.0,
                               is_note_on=self.on)


def _model(args):
    import torch

    from notochord_rt.engine.sampling.sampler import Notochord

    torch.set_num_threads(1)
    if args.checkpoint:
        model = Notochord.load(args.checkpoint)
    else:
        torch.manual_seed(0)
        model = Notochord(seed=0)
    model.use_core(args.precision)
    return model


def role_main(args) -> int:
    """Run one app until stdin closes; print READY when connected."""
    from notochord_rt.apps.live.player import Policy
    from notochord_rt.apps.live.ports import ChannelMap, OpenedPort, rt_api
    from notochord_rt.apps.live.session import LiveOptions, LiveSession

    events: list = []
    if args.role == "thru":
        api = rt_api("jack")
        out = OpenedPort("output", api, args.probe_in, False, "thru")
        inp = OpenedPort("input", api, args.probe_out, False, "thru")
        inp.listen(out.send)
        _ready_and_wait()
        inp.deafen()
        inp.close()
        out.close()
        return 0

    class Echo(Policy):
        def on_input(self, ctx, note):
            if note.vel > 0:
                ctx.send_now(VIOLIN, note.pitch, note.vel, t_in=note.t)
            else:
                ctx.send_now(VIOLIN, note.pitch, 0)

    class Steady(Policy):
        def next_constraints(self, ctx):
            from notochord_rt.engine.sampling.constraints import Constraints

            return Constraints(note_on_map={VIOLIN: range(48, 72)})

    if args.role == "echo":
        model, policy = FixedModel(), Echo()
    elif args.role == "metronome":
        model, policy = FixedModel(), Steady()
    elif args.role == "improvise":
        from notochord_rt.apps.live.improvise import ImprovisePolicy

        model = _model(args)
        policy = ImprovisePolicy([VIOLIN], max_polyphony=3, max_duration=0.5, max_time=0.25)
    else:
        raise SystemExit(f"unknown role {args.role}")
    from notochord_rt.apps.live.player import PlayerConfig

    opt = LiveOptions(api="jack", inputs=[args.probe_out], outputs=[args.probe_in],
                      client_name=args.role, send_programs=False,
                      player=PlayerConfig(pause_after_send=args.pause_ms / 1000))
    with LiveSession(model, policy, ChannelMap({0: PIANO}), ChannelMap({1: VIOLIN}),
                     opt) as s:
        s.player.add_listener(lambda e: events.append((e.kind, e.pitch, e.vel, e.t)))
        _ready_and_wait()
        summary = s.player.stats.summary()
    Path(args.events).write_text(json.dumps({"events": [e for e in events if e[0] == "output"],
                                             "summary": summary}))
    return 0


def _ready_and_wait() -> None:
    print("READY", flush=True)  # noqa: T201 - the benchmark's own protocol
    sys.stdin.read()  # until the parent closes our stdin


# -- the measuring side ----------------------------------------------------------------------
def machine_info() -> dict:
    import torch

    cpu = cpu_name()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "loadavg": os.getloadavg()}


def stats_ms(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {"n": 0}
    p50, p99 = np.percentile(x, [50, 99]) * 1e3
    return {"n": int(len(x)), "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
            "max_ms": round(float(x.max() * 1e3), 3)}


def ping_until_answered(probe, channel: int, timeout: float = 120) -> bool:
    """Play a note every 0.3 s until the app answers on ``channel`` (it is connected)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        probe.clear()
        probe.send(NOTE_ON, 40, 100)
        ok = probe.wait_for(lambda m: any(x[0] == NOTE_ON | channel and x[2] > 0 for _, x in m),
                            0.3)
        probe.send(0x80, 40, 0)
        if ok:
            return True
    return False


@contextlib.contextmanager
def app(cmd: list[str], probe, timeout: float = 120, answer_channel: int | None = None):
    """Start an app process; wait until it is connected (READY, then answering if
    ``answer_channel`` is given)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        if "--role" in cmd:
            line = proc.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"{cmd} failed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)  # JACK makes the connections effective a few cycles later
        if answer_channel is not None and not ping_until_answered(probe, answer_channel,
                                                                  timeout):
            raise RuntimeError(f"{cmd} does not answer")
        time.sleep(0.2)
        yield proc
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode not in (0, 130):
            raise RuntimeError(f"{cmd[-6:]} exited with {proc.returncode}: "
                               f"{proc.stderr.read()[-3000:]}")


def play_notes(probe, n: int, gap: float, channel_out: int, rng) -> tuple[np.ndarray, int]:
    """Send ``n`` note-ons (each released before the next); the latency of each answer
    (the first note-on on ``channel_out`` before the next note is played) and the number
    unanswered (lost in the ports — JACK drops MIDI from a client that misses a cycle —
    or later than a gap)."""
    probe.clear()
    sends = []
    for _ in range(n):
        pitch = int(rng.integers(60, 80))
        sends.append(probe.send(NOTE_ON, pitch, 100))
        time.sleep(gap / 2)
        probe.send(0x80, pitch, 0)
        time.sleep(gap / 2)
    time.sleep(0.2)
    answers = np.array([t for t, m in probe.messages()
                        if m[0] == NOTE_ON | channel_out and m[2] > 0])
    lat = []
    for t in sends:
        hit = answers[(answers >= t) & (answers < t + gap * 0.95)]
        if len(hit):
            lat.append(hit[0] - t)
    missed = n - len(lat)
    if missed > 0.2 * n:
        raise RuntimeError(f"{n} notes sent, only {len(lat)} answered")
    return np.array(lat), missed


def jitter(probe, events_file: Path, t0: float, t1: float) -> tuple[np.ndarray, int, dict]:
    """Match each note the app planned (due in ``t0..t1``) to its arrival at the probe
    (same pitch and on/off, the first arrival from 2 ms before the due time on).
    Returns ``arrival - due`` per matched note, the number unmatched and the app's stats."""
    data = json.loads(events_file.read_text())
    # MIDI arrives in the order it was sent: walk both sequences together, looking a few
    # messages ahead for each planned note (a lost message then costs one match, and a
    # later note of the same pitch is never taken for it)
    arrivals = [(t, m[1], m[0] & 0xF0 == NOTE_ON and m[2] > 0) for t, m in probe.messages()
                if m[0] & 0xF0 in (0x80, 0x90)]
    d, missing, j = [], 0, 0
    for _, pitch, vel, due in data["events"]:
        if not t0 < due < t1:
            continue
        for i in range(j, min(j + 8, len(arrivals))):
            t, p, on = arrivals[i]
            if p == pitch and on == (vel > 0) and due - 0.002 < t < due + 0.2:
                d.append(t - due)
                j = i + 1
                break
        else:
            missing += 1
    if missing > 0.2 * (len(d) + missing) or len(d) < 5:
        raise RuntimeError(f"could not match arrivals to planned notes ({len(d)} matched, "
                           f"{missing} missing)")
    return np.array(d), missing, data["summary"]


def harmonize_cmd(ckpt: str, probe, precision: str) -> list[str]:
    return [sys.executable, "-m", "notochord_rt", "harmonize", "--live",
            "--checkpoint", ckpt, "--precision", precision,
            "--voice", "violin:-12:-1", "--out-channels", "2=violin",
            "--midi-api", "jack", "--midi-in", probe.out_port,
            "--midi-out", probe.in_port, "--duration", "36000"]


def run(args) -> dict:
    """Every scenario once per round, rounds interleaved, so that a shared machine's
    changing load falls on all of them alike."""
    from jack import Probe, jack_server

    from notochord_rt.model.checkpoint import save_model

    rng = np.random.default_rng(0)
    out: dict = {"machine": machine_info(), "jack_period_frames": args.period,
                 "jack_period_ms": round(args.period / 48.0, 3), "rounds": args.rounds,
                 "precision": args.precision, "pause_after_send_ms": args.pause_ms}
    me = [sys.executable, str(Path(__file__).resolve())]
    lat_x: dict[str, list] = {k: [] for k in ("thru", "echo", "harmonize")}
    lat_missed = dict.fromkeys(lat_x, 0)
    jit_x: dict[str, list] = {k: [] for k in ("metronome", "improvise")}
    jit_missed = dict.fromkeys(jit_x, 0)
    jit_app: dict[str, list] = {k: [] for k in jit_x}
    notes = max(1, args.notes // args.rounds)
    seconds = args.seconds / args.rounds
    with tempfile.TemporaryDirectory() as tmp, jack_server(period=args.period) as server:
        out["jack_server"] = server
        ckpt = args.checkpoint
        if not ckpt:
            import torch

            from notochord_rt.engine.sampling.sampler import Notochord

            torch.manual_seed(0)
            ckpt = str(Path(tmp) / "random-default.safetensors")
            save_model(Notochord(seed=0), ckpt)
        probe = Probe("bench")
        common = ["--probe-in", probe.in_port, "--probe-out", probe.out_port,
                  "--checkpoint", ckpt, "--precision", args.precision,
                  "--pause-ms", str(args.pause_ms)]
        for r in range(args.rounds):
            for name in lat_x:
                if name == "harmonize":
                    cmd, channel = harmonize_cmd(ckpt, probe, args.precision), 1
                else:
                    cmd = me + ["--role", name] + common + ["--events", str(Path(tmp) / "e")]
                    channel = 0 if name == "thru" else 1
                with app(cmd, probe, answer_channel=channel) as proc:
                    x, missed = play_notes(probe, notes, args.gap, channel, rng)
                    if name == "harmonize":
                        proc.send_signal(2)  # Ctrl-C: a normal stop
                lat_x[name].append(x)
                lat_missed[name] += missed
                print(f"round {r} latency {name:10s} {stats_ms(x)}", flush=True)  # noqa: T201
            for name in jit_x:
                events = Path(tmp) / f"{name}.json"
                cmd = me + ["--role", name] + common + ["--events", str(events)]
                with app(cmd, probe):
                    probe.clear()
                    t0 = time.perf_counter()
                    time.sleep(seconds)
                    t1 = time.perf_counter() - 0.3
                d, missed, summary = jitter(probe, events, t0, t1)
                jit_x[name].append(d)
                jit_missed[name] += missed
                jit_app[name].append(summary)
                print(f"round {r} jitter  {name:10s} {stats_ms(np.abs(d - np.median(d)))}",  # noqa: T201
                      flush=True)
        probe.close()
    out["latency"] = {k: {**stats_ms(np.concatenate(v)), "unanswered": lat_missed[k]}
                      for k, v in lat_x.items()}
    out["model_added_latency_ms"] = {
        q: round(out["latency"]["harmonize"][q] - out["latency"]["thru"][q], 3)
        for q in ("p50_ms", "p99_ms")}
    out["jitter"] = {}
    for k, v in jit_x.items():
        offset = np.concatenate(v)
        dev = np.concatenate([np.abs(d - np.median(d)) for d in v])  # per-run median
        out["jitter"][k] = {"offset": stats_ms(offset), "jitter": stats_ms(dev),
                            "unmatched": jit_missed[k],
                            "in_app": [{s: a.get(s) for s in ("lateness", "sample")}
                                       for a in jit_app[k]]}
    out["jitter_beyond_port_ms"] = {
        q: round(out["jitter"]["improvise"]["jitter"][q]
                 - out["jitter"]["metronome"]["jitter"][q], 3) for q in ("p50_ms", "p99_ms")}
    out["machine"]["loadavg_end"] = os.getloadavg()
    return out


def run_start(args) -> dict:
    """The first-note and TUI scenarios (``live_start.py``), on a server of their own."""
    from jack import Probe, jack_server
    from live_start import (
        COLD,
        NAV_KEYS,
        STEER_KEYS,
        first_note,
        summarize_first,
        tui_lateness,
    )

    from notochord_rt.model.checkpoint import save_model

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp, jack_server(period=args.period):
        ckpt = args.checkpoint
        if not ckpt:
            import torch

            from notochord_rt.engine.sampling.sampler import Notochord

            torch.manual_seed(0)
            ckpt = str(Path(tmp) / "random-default.safetensors")
            save_model(Notochord(seed=0), ckpt)
        probe = Probe("bench-start")
        try:
            if args.only in ("all", "first-note"):  # with and without the warm-up, in turn
                cmd = harmonize_cmd(ckpt, probe, args.precision)
                cold = [sys.executable, "-c", COLD, *cmd[3:]]
                runs: dict[str, list] = {"warm": [], "cold (no warm-up)": []}
                for _ in range(args.starts):
                    runs["warm"].append(first_note(cmd, probe, 1))
                    runs["cold (no warm-up)"].append(first_note(cold, probe, 1))
                out["first_note"] = {k: summarize_first(v, stats_ms) for k, v in runs.items()}
                print(f"first note {out['first_note']}", flush=True)  # noqa: T201
            if args.only in ("all", "tui"):  # play's own default model
                from notochord_rt.apps.loading import load_sampler

                model = load_sampler(args.checkpoint or "default", args.precision, 1)
                for _ in range(2):  # no UI; UI with steering keys; UI with moving keys
                    for key, tui, keys in (("tui_baseline_no_ui", False, STEER_KEYS),
                                           ("tui_steer_keys", True, STEER_KEYS),
                                           ("tui_navigate_keys", True, NAV_KEYS)):
                        got = tui_lateness(model, None, args.tui_seconds / 2, stats_ms,
                                           tui=tui, keys=keys)
                        out.setdefault(key, []).append(got)
                        print(f"{key} {got}", flush=True)  # noqa: T201
        finally:
            probe.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few notes, short runs")
    ap.add_argument("--notes", type=int, default=240, help="notes per latency scenario "
                    "(split over the rounds)")
    ap.add_argument("--gap", type=float, default=0.06, help="seconds between played notes")
    ap.add_argument("--seconds", type=float, default=15.0, help="total length of each jitter "
                    "scenario (split over the rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--period", type=int, default=64, help="JACK period in frames at 48 kHz")
    ap.add_argument("--checkpoint", default=None, help="a trained model (default: random)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--only", default="all",
                    choices=["all", "timing", "first-note", "tui", "unmute"],
                    help="run only some scenarios (timing = latency and jitter)")
    ap.add_argument("--starts", type=int, default=5,
                    help="first-note scenario: how many app starts")
    ap.add_argument("--tui-seconds", type=float, default=15.0,
                    help="tui scenario: seconds of key presses")
    ap.add_argument("--pause-ms", type=float, default=2.0,
                    help="the player's pause_after_send in the echo / jitter apps (the "
                         "harmonize command uses its default, 2 ms)")
    # child roles (internal)
    ap.add_argument("--role", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--probe-in", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--probe-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--events", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        return role_main(args)
    if args.quick:
        args.notes, args.seconds, args.rounds = 30, 3.0, 1
        args.starts, args.tui_seconds = 2, 4.0
    result = run(args) if args.only in ("all", "timing") else {"machine": machine_info()}
    if args.only in ("all", "first-note", "tui"):
        result.update(run_start(args))
    if args.only in ("all", "unmute"):  # the default model (a random one has no density)
        from live_unmute import run_unmute

        from notochord_rt.apps.loading import load_sampler

        model = load_sampler(args.checkpoint or "default", args.precision, 1)
        result["unmute"] = run_unmute(model, (1.0, 3.0) if args.quick else
                                      (1.0, 3.0, 5.0, 8.0, 12.0), 1 if args.quick else 2)
        print(f"unmute {result['unmute']}", flush=True)  # noqa: T201
    print(json.dumps(result, indent=1))  # noqa: T201
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
