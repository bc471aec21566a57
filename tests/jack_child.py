"""The process behind :class:`jack.Probe` and ``test_clock_jack.DrumMachine``.

Run as ``python jack_child.py SPEC`` (SPEC: JSON with ``out`` and/or ``inp``, each
``[client name, port name]``, and ``timing``: whether the input keeps MIDI clock). It
opens those JACK MIDI ports with python-rtmidi, answers commands read from stdin (one
JSON object per line) and reports on stdout (one JSON object per line):

- ``{"send": [bytes]}``: send one message; answers ``{"sent": perf_counter time}``.
- ``{"play": plan}``: send a clock plan from a thread (see ``DrumMachine.play``); reports
  ``{"mark": t}`` per step, ``{"tick": [t, bpm]}`` per tick while playing, then
  ``{"done": 1}``. ``{"halt": 1}`` ends a plan early.
- everything received: ``{"m": [poll time, JACK time, bytes]}``.

It never closes its ports: on stdin's end it leaves with ``os._exit`` and the JACK
server removes a dead client's ports itself. Closing an rtmidi JACK port right after a
send crashed the test process (a segfault in ``close_port``, seen twice in CI); here a
crash could only end this process, and there is no close left to crash in.
``time.perf_counter`` is the system's monotonic clock, so its times compare with the
parent's.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time

TICK, START, CONTINUE = 0xF8, 0xFA, 0xFB

_lock = threading.Lock()


def emit(obj: dict) -> None:
    line = json.dumps(obj, separators=(",", ":")) + "\n"
    with _lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def read_input(inp, poll: float = 0.0002) -> None:
    jack_t, first = 0.0, True
    while True:
        got = inp.get_message()
        if got is None:
            time.sleep(poll)
            continue
        t = time.perf_counter()
        msg, delta = got
        jack_t += 0.0 if first else delta
        first = False
        emit({"m": [t, jack_t, list(msg)]})


def play(out, plan: list, halt: threading.Event) -> None:
    t = time.perf_counter()
    playing = False
    try:
        for kind, a, b in plan:
            if halt.is_set():
                return
            emit({"mark": t})
            if kind == "msg":
                out.send_message([int(a)])
                playing = int(a) in (START, CONTINUE)
            elif kind == "rest":
                t += a
                time.sleep(max(0.0, t - time.perf_counter()))
            else:
                for _ in range(int(b * 24)):
                    if halt.wait(max(0.0, t - time.perf_counter())):
                        return
                    out.send_message([TICK])
                    if playing:
                        emit({"tick": [t, a]})
                    t += 60.0 / (24 * a)
    finally:
        emit({"done": 1})


def main() -> None:
    try:  # end with the parent, whatever happens to it
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    import rtmidi

    spec = json.loads(sys.argv[1])
    out = inp = None
    if spec.get("out"):
        client, port = spec["out"]
        out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=client)
        out.open_virtual_port(port)
    if spec.get("inp"):
        client, port = spec["inp"]
        inp = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=client)
        inp.ignore_types(sysex=True, timing=not spec.get("timing", False), active_sense=True)
        inp.open_virtual_port(port)
        threading.Thread(target=read_input, args=(inp,), daemon=True).start()
    emit({"ready": 1})
    halt = threading.Event()
    player: threading.Thread | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if "send" in cmd:
            t = time.perf_counter()
            out.send_message(cmd["send"])
            emit({"sent": t})
        elif "play" in cmd:
            if player is not None:
                player.join()
            halt.clear()
            player = threading.Thread(target=play, args=(out, cmd["play"], halt), daemon=True)
            player.start()
        elif "halt" in cmd:
            halt.set()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
