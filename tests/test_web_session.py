"""One tab's session without the server: the real Player running play's VoicesPolicy on a
tiny model, driven through WebSession.handle; every model note is released on panic,
reset and close."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from midifiles import simple_song
from tiny import tiny_model

pytest.importorskip("starlette")

from notochord_rt.apps.play.presets import load_presets  # noqa: E402
from notochord_rt.apps.web.engine import ENGINES, SamplerFactory, make_factory  # noqa: E402
from notochord_rt.apps.web.protocol import Message, ProtocolError  # noqa: E402
from notochord_rt.apps.web.session import WebSession  # noqa: E402
from notochord_rt.midi.ingest import load_midi  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Inbox:
    """The messages a session sends, with waiting."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.cond = threading.Condition()

    def __call__(self, msg: dict) -> None:
        with self.cond:
            self.items.append(msg)
            self.cond.notify_all()

    def wait(self, pred: Callable[[list[dict]], bool], timeout: float = 10.0) -> list[dict]:
        end = time.monotonic() + timeout
        with self.cond:
            while not pred(self.items):
                left = end - time.monotonic()
                assert left > 0, f"timed out; got {self.items[-5:]}"
                self.cond.wait(left)
            return list(self.items)


def sounding_after(msgs: list[dict]) -> set[tuple[int, int]]:
    """The model notes still on after these messages (a panic clears them all)."""
    on: set[tuple[int, int]] = set()
    for m in msgs:
        if m["type"] == "note":
            (on.add if m["vel"] > 0 else on.discard)((m["ch"], m["pitch"]))
        elif m["type"] == "panic":
            assert not on, f"notes still on at the panic message: {on}"
    return on


@pytest.fixture(params=ENGINES)
def factory(request):
    """Each session test runs on both engines."""
    return make_factory(tiny_model(0), request.param, max_sessions=4)


@pytest.fixture
def open_session(factory):
    made = []

    def make(preset: str, fast: bool = False) -> tuple[WebSession, Inbox]:
        inbox = Inbox()
        s = WebSession(f"s{len(made)}", factory.new(len(made)), load_presets(None), inbox,
                       preset=preset)
        if fast:  # short gaps: the auto voices play at once
            s.handle(Message("control", {"name": "steer_rate", "value": 1.0}))
            s.handle(Message("control", {"name": "steer_density", "value": 1.0}))
        s.start()
        made.append(s)
        return s, inbox

    yield make
    for s in made:
        s.close()


def notes(msgs: list[dict], **match) -> list[dict]:
    return [m for m in msgs if m["type"] == "note" and all(m.get(k) == v for k, v in match.items())]


@pytest.mark.slow
def test_a_played_note_is_answered_by_the_follow_voices_and_released(open_session) -> None:
    s, inbox = open_session("follows")
    assert s.welcome()["rig"]["preset"] == "follows"
    s.handle(Message("note", {"pitch": 60, "vel": 100, "channel": None, "id": 5}))
    msgs = inbox.wait(lambda m: len(notes(m, reply=5)) >= 3)
    answers = notes(msgs, reply=5)
    assert {a["ch"] for a in answers} == {2, 3, 4}  # vibraphone, marimba (chained), bass
    bass = [a for a in answers if a["ch"] == 4][0]
    assert 28 <= bass["pitch"] <= 60 and bass["inst"] == 33
    assert all(a["time"] <= a["sent"] + 1e-6 for a in answers)
    s.handle(Message("note", {"pitch": 60, "vel": 0, "channel": None, "id": 6}))
    inbox.wait(lambda m: not sounding_after(m) and len(notes(m, vel=0)) >= 3)
    assert s.sink.sounding == set()
    assert s.player.stats.summary()  # the timing statistics of the real player


@pytest.mark.slow
@pytest.mark.parametrize("action", ["panic", "reset"])
def test_panic_and_reset_release_every_model_note(open_session, action) -> None:
    s, inbox = open_session("band", fast=True)
    # the auto voices play on their own; act while some of their notes sound
    inbox.wait(lambda m: len(notes(m)) >= 4 and bool(sounding_after(m)))
    s.handle(Message("action", {"name": action}))
    msgs = inbox.wait(lambda m: any(x["type"] == "panic" for x in m))
    sounding_after(msgs)  # asserts that nothing was on when the panic message came
    if action == "reset":
        inbox.wait(lambda m: any(x["type"] == "reset" for x in m))


@pytest.mark.slow
def test_close_releases_every_model_note(open_session) -> None:
    s, inbox = open_session("band", fast=True)
    inbox.wait(lambda m: len(notes(m)) >= 4 and bool(sounding_after(m)))
    s.close()
    assert not s.player.running
    assert s.sink.sounding == set()
    assert sounding_after(inbox.items) == set()
    s.close()  # idempotent


def test_a_second_close_waits_for_the_first(open_session) -> None:
    """The idle check and the socket's own close can race: whichever returns second must
    also find the player stopped (a closed session that still sounds is a stuck note)."""
    s, _ = open_session("band")
    real_stop, stopping = s.player.stop, threading.Event()

    def slow_stop(*a, **k) -> None:
        stopping.set()
        time.sleep(0.3)
        real_stop(*a, **k)

    s.player.stop = slow_stop  # type: ignore[method-assign]
    first = threading.Thread(target=s.close)
    first.start()
    assert stopping.wait(10)
    s.close()
    assert not s.player.running and s.sink.sounding == set()
    first.join(10)


@pytest.mark.slow
def test_voice_and_control_changes(open_session) -> None:
    s, inbox = open_session("follows")
    rig = s.handle(Message("voice", {"channel": 4, "inst": 34, "range": (30, 40)}))[0]
    v4 = [v for v in rig["voices"] if v["channel"] == 4][0]
    assert v4["inst"] == 34 and v4["range"] == [30, 40] and v4["program"] == 33
    rig = s.handle(Message("voice", {"channel": 5, "mode": "auto"}))[0]
    assert [v["mode"] for v in rig["voices"] if v["channel"] == 5] == ["auto"]
    with pytest.raises(ProtocolError, match="has no voice"):
        s.handle(Message("voice", {"channel": 9, "range": (0, 10)}))
    with pytest.raises(ProtocolError, match="cannot follow itself"):
        s.handle(Message("voice", {"channel": 2, "source": 2}))
    assert [v["source"] for v in s.rig()["voices"] if v["channel"] == 2] == [1]  # unchanged
    with pytest.raises(ProtocolError, match=r"0\.\.1 in this preset"):
        s.handle(Message("control", {"name": "pitch_temp", "value": 2.0}))
    s.handle(Message("control", {"name": "steer_pitch", "value": 0.9}))
    inbox.wait(lambda m: True)
    deadline = time.monotonic() + 5
    while s.policy.view.values.get("steer_pitch") != pytest.approx(0.9):
        assert time.monotonic() < deadline, "the policy never saw the control"
        time.sleep(0.01)
    rig = s.handle(Message("preset", {"name": "strings"}))[0]
    assert rig["preset"] == "strings" and len(rig["voices"]) == 5
    with pytest.raises(ProtocolError, match="no preset named"):
        s.handle(Message("preset", {"name": "nope"}))
    rig = s.handle(Message("action", {"name": "mute"}))[0]
    assert rig["muted"] is True


@pytest.mark.slow
def test_notes_need_an_input_voice(open_session) -> None:
    s, _ = open_session("solo")
    with pytest.raises(ProtocolError, match="no voice is in input mode"):
        s.handle(Message("note", {"pitch": 60, "vel": 100, "channel": None, "id": 1}))
    s2, _ = open_session("follows")
    with pytest.raises(ProtocolError, match="channel 3 is not an input voice"):
        s2.handle(Message("note", {"pitch": 60, "vel": 100, "channel": 3, "id": 1}))


@pytest.mark.slow
def test_record_and_export(open_session) -> None:
    s, inbox = open_session("follows")
    with pytest.raises(ProtocolError, match="nothing recorded"):
        s.handle(Message("export", {}))
    s.handle(Message("record", {"on": True}))
    for k, p in enumerate((60, 64)):
        s.handle(Message("note", {"pitch": p, "vel": 90, "channel": None, "id": k}))
        inbox.wait(lambda m, k=k: len(notes(m, reply=k)) >= 3)
        s.handle(Message("note", {"pitch": p, "vel": 0, "channel": None, "id": None}))
    inbox.wait(lambda m: not sounding_after(m))
    assert s.handle(Message("record", {"on": False}))[0]["on"] is False
    out = s.handle(Message("export", {}))[0]
    import base64

    e = load_midi(base64.b64decode(out["data"])).events
    insts = {int(i) for i, v in zip(e.inst, e.vel) if v > 0}
    assert {1, 12, 13, 33} <= insts  # the piano played, vibraphone, marimba and bass
    assert int((e.vel > 0).sum()) == 8


@pytest.mark.slow
def test_a_midi_file_prompt_sets_the_voices(open_session) -> None:
    s, inbox = open_session("duet")
    out = s.handle(Message("prompt", {"name": "song.mid", "data": simple_song()}))
    assert out == [{"type": "prompting", "name": "song.mid"}]
    msgs = inbox.wait(lambda m: any(x["type"] in ("prompted", "error") for x in m))
    done = [x for x in msgs if x["type"] in ("prompted", "error")][0]
    assert done["type"] == "prompted", done
    insts = {v["inst"] for v in done["rig"]["voices"]}
    assert 34 in insts  # the song's fingered bass
    assert any("events" in n for n in done["notes"])
    s.adopt_prompt_rig()
    assert {v.inst for v in s.ctl.rig.voices.values()} == insts
    s.handle(Message("prompt", {"name": "bad.mid", "data": b"MThd garbage"}))
    msgs = inbox.wait(lambda m: any(x.get("about") == "prompt" for x in m))
    err = [x for x in msgs if x.get("about") == "prompt"][0]
    assert "bad.mid" in err["message"] and "/tmp" not in err["message"]


def test_auto_precision_is_int8_for_batched_sessions_with_the_kernel(monkeypatch) -> None:
    from notochord_rt.apps.web.engine import resolve_precision
    from notochord_rt.engine.cores.quant import c_kernels

    for engine in ENGINES:
        assert resolve_precision("fp32", engine) == "fp32"
        assert resolve_precision("module", engine) == "module"
    assert resolve_precision("auto", "per-tab") == "fp32"
    want = "int8" if c_kernels() is not None else "fp32"
    assert resolve_precision("auto", "batched") == want
    monkeypatch.setenv("NOTOCHORD_RT_INT8_KERNEL", "fbgemm")  # as on a CPU without VNNI
    c_kernels.cache_clear()
    try:
        assert resolve_precision("auto", "batched") == "fp32"
    finally:
        monkeypatch.delenv("NOTOCHORD_RT_INT8_KERNEL")
        c_kernels.cache_clear()
    assert resolve_precision("auto", "batched") == want


def test_tab_samplers_share_the_weights_not_the_stream() -> None:
    factory = SamplerFactory(tiny_model(0), "fp32")
    a, b = factory.new(1), factory.new(2)
    base = dict(factory.base.named_parameters())
    for name, p in a.named_parameters():
        assert p.data_ptr() == base[name].data_ptr()  # the same tensors: no copy
        assert p.data_ptr() == dict(b.named_parameters())[name].data_ptr()
    assert a.core is not b.core  # a core reuses scratch buffers: one per tab's thread
    # ... but the packed weights are packed once and shared (twins of one core)
    assert a.core._hid[0]._wt.data_ptr() == b.core._hid[0]._wt.data_ptr()
    assert a.core._phase.data_ptr() != b.core._phase.data_ptr()
    a.reset()
    b.reset()
    a.feed(1, 60, 0.0, 100)
    assert a.held_notes and not b.held_notes  # separate streams


@pytest.mark.slow
def test_the_controllers_notes_reach_the_page(open_session) -> None:
    s, inbox = open_session("solo")
    s.handle(Message("voice", {"channel": 1, "mode": "follow"}))
    msgs = inbox.wait(lambda m: any(x["type"] == "log" for x in m))
    assert any("no other voice to follow" in x["message"] for x in msgs if x["type"] == "log")


def test_the_batched_engine_combines_concurrent_calls_and_isolates_errors() -> None:
    from notochord_rt.apps.web.batched import BatchedEngine
    from notochord_rt.engine.sampling.constraints import Constraints
    from notochord_rt.errors import NoPossibleEvents

    engine = BatchedEngine(tiny_model(0), 8)
    slots = [engine.slot(k) for k in range(8)]
    errors: list[BaseException] = []
    results: dict[int, list] = {k: [] for k in range(8)}
    start = threading.Barrier(8)

    def play(k: int) -> None:
        s = slots[k]
        start.wait()
        try:
            for _ in range(30):
                e = s.sample(Constraints(note_on_map={1: range(50, 70)}) if k else
                             Constraints(note_on_map={1: []}, note_off_map={}))
                s.feed(e.inst, e.pitch, e.time, e.vel)
                results[k].append(e)
        except NoPossibleEvents as err:  # slot 0 asked for nothing possible
            errors.append(err)

    threads = [threading.Thread(target=play, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(errors) == 1 and results[0] == []  # the impossible request failed alone
    for k in range(1, 8):
        assert len(results[k]) == 30
        assert all(e.inst == 1 and (50 <= e.pitch < 70 or e.vel == 0) for e in results[k])
        assert slots[k].step_count == 30
    assert engine.batches < engine.calls  # concurrent calls shared batched steps
    engine.release(slots[1])
    assert slots[1].held_notes == {} and engine.slot().index == 1
