"""In time with the band (issue 14): grid timing, tempo following and the grid's NLL cost.

Three measurements; a JACK server (``jackd --no-realtime -d dummy``, 48 kHz, ``--period``
frames, default 64 = 1.33 ms) is started for the JACK ones (``tests/jack.py``).

``nll``      the cost of the grid constraint in the model's own terms: the mean
             log-probability (nats, 10 ms bins) of the sampled times of improviser-like
             streams in free time, on a soft grid (strength 0.5) and on a hard 1/16 grid at
             120 BPM; the cost is free − grid.
``follow``   tempo following: a drum machine (this process) sends MIDI clock through JACK;
             :class:`MidiClock` follows; after each tempo change, the time until its estimate
             is within 1 % of the new tempo, in beats of the new tempo (goal: ≤ 1 beat).
``grid``     ``notochord-rt improvise --clock midi --grid 1/16`` (hard) as its own process,
             following the drum machine's clock at 120 BPM: every model onset's arrival at a
             probe minus its grid time, against a metronome that the drum machine plays
             through the same kind of port at the grid times (the port's own share). Goal:
             p99 ≤ 2 ms beyond the metronome's. Then the drum machine sends stop: the time
             until every model note is off at the probe (goal ≤ 10 ms).

Prints the numbers and the machine; ``--json PATH`` writes them. ``--quick`` for a smoke
run. Run: ``OMP_NUM_THREADS=1 python benchmarks/clock.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from machine import machine_info, machine_line

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

TICK, START, STOP = 0xF8, 0xFA, 0xFC
NOTE_ON, CC = 0x90, 0xB0
VIOLIN = 41


def ms(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {"n": 0}
    p50, p99 = np.percentile(x, [50, 99]) * 1e3
    return {"n": int(len(x)), "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
            "max_ms": round(float(np.max(x) * 1e3), 3)}


# -- nll ---------------------------------------------------------------------------------------
def bench_nll(checkpoint: str, events: int, seed: int = 0) -> dict:
    import torch

    from notochord_rt.engine.sampling.constraints import Constraints
    from notochord_rt.engine.sampling.sampler import Notochord
    from notochord_rt.engine.sampling.support import compile_constraints

    torch.set_num_threads(1)
    model = Notochord.load(checkpoint)
    model.use_core("fp32")
    base = dict(note_on_map={VIOLIN: range(48, 84)}, max_polyphony=3, max_duration=2.0,
                max_time=2.0, min_time=0.004)
    out = {}
    for name, extra in (("free", {}),
                        ("soft 0.5", {"bpm": 120.0, "grid": "1/16", "grid_strength": 0.5}),
                        ("hard", {"bpm": 120.0, "grid": "1/16"})):
        comp = compile_constraints(Constraints(**base, **extra))
        model.reset(seed=seed)
        lps, t0 = [], time.perf_counter()
        for _ in range(events):
            e = model.sample(comp)
            model.feed(**e.as_dict())
            if e.time_logp is not None:
                lps.append(e.time_logp)
        took = time.perf_counter() - t0
        out[name] = {"mean_time_logp": round(float(np.mean(lps)), 4), "n": len(lps),
                     "us_per_event": round(took / events * 1e6, 1)}
    for name in ("soft 0.5", "hard"):
        out[name]["nll_cost"] = round(out["free"]["mean_time_logp"]
                                      - out[name]["mean_time_logp"], 4)
    return out


# -- the drum machine ---------------------------------------------------------------------------
class DrumMachine:
    """MIDI clock (and optionally a metronome note on every 16th) on JACK virtual ports,
    sent at absolute times by a thread. ``grid`` records the perf_counter send time of
    every 16th while playing."""

    def __init__(self) -> None:
        import rtmidi

        self.clock_out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="drum-machine")
        self.clock_out.open_virtual_port("clock")
        self.notes = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="metronome")
        self.notes.open_virtual_port("notes")
        self.grid: list[float] = []
        self.marks: dict[str, float] = {}

    def run(self, plan: list[tuple], metronome: bool = False) -> threading.Thread:
        """``plan``: ``("ticks", bpm, beats)``, ``("start",)``, ``("stop",)``,
        ``("rest", seconds)``; ``marks[label]`` = time each labelled step began."""
        def go() -> None:
            t = time.perf_counter()
            playing = False
            for step in plan:
                kind = step[0]
                label = f"{len(self.marks)}:{kind}"
                self.marks[label] = t
                if kind in ("start", "stop"):  # at its time, one tick after the last
                    time.sleep(max(0.0, t - time.perf_counter()))
                    self.clock_out.send_message([START if kind == "start" else STOP])
                    self.marks[label] = time.perf_counter()  # when it really went
                    playing = kind == "start"
                elif kind == "rest":
                    t += step[1]
                    time.sleep(max(0.0, t - time.perf_counter()))
                else:
                    _, bpm, beats = step
                    for k in range(int(beats * 24)):
                        time.sleep(max(0.0, t - time.perf_counter()))
                        self.clock_out.send_message([TICK])
                        if playing and k % 6 == 0:
                            self.grid.append(t)
                            if metronome:
                                self.notes.send_message([NOTE_ON | 15, 100, 100])
                                self.notes.send_message([0x80 | 15, 100, 0])
                        t += 60.0 / (24 * bpm)
        th = threading.Thread(target=go, daemon=True)
        th.start()
        return th

    def close(self) -> None:
        for p in (self.clock_out, self.notes):
            p.close_port()
            p.delete()


# -- follow -------------------------------------------------------------------------------------
def bench_follow(rounds: int) -> dict:
    from notochord_rt.apps.live.clock_midi import MidiClock

    drum = DrumMachine()
    clock = MidiClock("drum-machine:clock", api="jack", client_name="follower").start()
    changes = [(120.0, 90.0), (90.0, 140.0), (140.0, 120.0)]
    beats_to_follow: list[float] = []
    try:
        time.sleep(0.3)
        for _ in range(rounds):
            for old, new in changes:
                plan = [("ticks", old, 3), ("ticks", new, 3)]
                drum.marks.clear()
                th = drum.run(plan)
                while len(drum.marks) < 2:
                    time.sleep(0.001)
                change = drum.marks["1:ticks"]
                followed = None
                while th.is_alive():
                    b = clock.info().bpm
                    now = time.perf_counter()
                    if b is not None and abs(b - new) / new <= 0.01:
                        followed = followed if followed is not None else now
                    else:
                        followed = None  # must stay within 1 %
                    time.sleep(0.001)
                th.join()
                beats_to_follow.append(np.inf if followed is None
                                       else (followed - change) * new / 60.0)
    finally:
        clock.close()
        drum.close()
    b = np.array(beats_to_follow)
    return {"changes": [f"{o:g}->{n:g}" for o, n in changes] * rounds,
            "beats_to_within_1pct": [round(float(x), 3) for x in b],
            "max_beats": round(float(b.max()), 3)}


# -- grid -------------------------------------------------------------------------------------
def bench_grid(checkpoint: str, seconds: float) -> dict:
    from jack import Probe

    drum = DrumMachine()
    probe = Probe("probe")
    cmd = [sys.executable, "-m", "notochord_rt", "improvise", "--checkpoint", checkpoint,
           "--midi-api", "jack", "--midi-out", probe.in_port, "--virtual-in", "in",
           "--player", "none", "--voices", "2=violin", "--max-polyphony", "2",
           "--clock", "midi", "--clock-in", "drum-machine:clock", "--grid", "1/16",
           "--client-name", "improviser", "--no-program-change", "--seed", "0",
           "--max-time", "0.5", "-v"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    # the metronome goes to the probe too (channel 16), through its own JACK connection
    import rtmidi

    lister = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="lister")
    try:
        deadline = time.monotonic() + 120
        while "improviser" not in " ".join(lister.get_ports()) and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read()[-2000:])
            time.sleep(0.2)
        subprocess.run(["jack_connect", "metronome:notes", probe.in_port], check=False)
        time.sleep(1.0)
        probe.clear()
        th = drum.run([("ticks", 120, 2), ("start",), ("ticks", 120, seconds * 2),
                       ("stop",), ("ticks", 120, 2)], metronome=True)
        th.join()
        time.sleep(0.3)
        msgs = probe.messages()
        stop_at = next(v for k, v in drum.marks.items() if k.endswith("stop"))
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if os.environ.get("CLOCK_BENCH_DEBUG"):
            print(err[-4000:])  # noqa: T201
        probe.close()
        drum.close()
        lister.delete()
    grid = np.array(drum.grid)
    step = 60.0 / 120 / 4

    def deviation(times: np.ndarray) -> np.ndarray:
        k = np.clip(np.searchsorted(grid, times - step / 2), 0, len(grid) - 1)
        return times - grid[k]

    model_on = np.array([t for t, m in msgs if m[0] == NOTE_ON | 1 and m[2] > 0
                         and t < stop_at])
    metro = np.array([t for t, m in msgs if m[0] == NOTE_ON | 15 and m[2] > 0])
    d_model, d_metro = deviation(model_on), deviation(metro)
    if os.environ.get("CLOCK_BENCH_DEBUG"):
        print("model deviations ms", np.round(d_model * 1e3, 1).tolist())  # noqa: T201
    # all notes off after stop: the last model note-off / all-notes-off after the stop
    after = [t for t, m in msgs if t >= stop_at and m[0] & 0x0F == 1
             and (m[0] & 0xF0 == 0x80 or (m[0] & 0xF0 == NOTE_ON and m[2] == 0)
                  or (m[0] & 0xF0 == CC and m[1] in (120, 123)))]
    from jack import sounding_after

    if os.environ.get("CLOCK_BENCH_DEBUG"):
        print("stop at", stop_at, [(round(t - stop_at, 4), m) for t, m in msgs  # noqa: T201
                                   if t > stop_at - 0.5 and m[0] & 0x0F == 1])
    left = sounding_after(msgs)
    return {"model_onsets": ms(d_model), "metronome": ms(d_metro),
            "beyond_port_p50_ms": round((np.percentile(d_model, 50)
                                         - np.percentile(d_metro, 50)) * 1e3, 3)
            if len(d_model) and len(d_metro) else None,
            "beyond_port_p99_ms": round((np.percentile(d_model, 99)
                                         - np.percentile(d_metro, 99)) * 1e3, 3)
            if len(d_model) and len(d_metro) else None,
            "stop_to_all_off_ms": round((max(after) - stop_at) * 1e3, 3) if after else None,
            "sounding_after_stop": sorted(left)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--events", type=int, default=3000, help="events per NLL condition")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of tempo changes")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of grid playing")
    ap.add_argument("--period", type=int, default=64, help="JACK period in frames")
    ap.add_argument("--only", choices=["nll", "follow", "grid"], default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.events, args.rounds, args.seconds = 300, 1, 5.0
    results: dict = {"machine": machine_info()}
    print(machine_line())  # noqa: T201
    if args.only in (None, "nll"):
        results["nll"] = bench_nll(args.checkpoint, args.events)
        print("nll", json.dumps(results["nll"]))  # noqa: T201
    if args.only in (None, "follow", "grid"):
        from jack import jack_server

        with jack_server(period=args.period):
            if args.only in (None, "follow"):
                results["follow"] = bench_follow(args.rounds)
                print("follow", json.dumps(results["follow"]))  # noqa: T201
            if args.only in (None, "grid"):
                results["grid"] = bench_grid(args.checkpoint, args.seconds)
                print("grid", json.dumps(results["grid"]))  # noqa: T201
    results["jack_period"] = args.period
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
