"""The web playground's pure parts: protocol checks, rate limit, Origin rule, SoundFont
lookup, static file list, the recorder's MIDI file and the CLI's missing-extra message."""

from __future__ import annotations

import base64
import json
import sys

import pytest
from midifiles import simple_song

pytest.importorskip("starlette")

from notochord_rt.apps.web import protocol as P  # noqa: E402
from notochord_rt.apps.web.limits import TokenBucket  # noqa: E402
from notochord_rt.apps.web.recorder import Recorder  # noqa: E402
from notochord_rt.apps.web.serve import loopback  # noqa: E402
from notochord_rt.apps.web.server import WebConfig, origin_ok  # noqa: E402
from notochord_rt.apps.web.soundfont import find_soundfont  # noqa: E402
from notochord_rt.apps.web.static import STATIC_DIR, load_static  # noqa: E402
from notochord_rt.errors import UserError  # noqa: E402
from notochord_rt.midi.ingest import load_midi  # noqa: E402


def msg(**d) -> str:
    return json.dumps(d)


def test_valid_messages_are_parsed() -> None:
    m = P.parse(msg(type="note", pitch=60, vel=100, id=7))
    assert m == P.Message("note", {"pitch": 60, "vel": 100, "channel": None, "id": 7})
    assert P.parse(msg(type="control", name="steer_pitch", value=0.25)).args["value"] == 0.25
    assert P.parse(msg(type="voice", channel=2, mode="follow", source=1, range=[30, 60],
                       inst="violin")).args == {"channel": 2, "mode": "follow", "source": 1,
                                                "range": (30, 60), "inst": 41}
    assert P.parse(msg(type="action", name="panic")).args == {"name": "panic"}
    assert P.parse(msg(type="hello", version=P.VERSION)).args == {"version": 1, "batch": False}
    assert P.parse(msg(type="hello", version=1, batch=True)).args["batch"] is True
    data = base64.b64encode(b"MThd").decode()
    assert P.parse(msg(type="prompt", name="a.mid", data=data)).args["data"] == b"MThd"


@pytest.mark.parametrize("text, says", [
    ("{", "malformed JSON"),
    ("[1, 2]", "JSON object"),
    ('"note"', "JSON object"),
    (msg(pitch=60), "unknown message type"),
    (msg(type="nope"), "unknown message type"),
    (msg(type=3), "unknown message type"),
    (msg(type="note", pitch=128, vel=10), "pitch must be in 0..127"),
    (msg(type="note", pitch=-1, vel=10), "pitch must be in 0..127"),
    (msg(type="note", pitch="60", vel=10), "pitch must be an integer"),
    (msg(type="note", pitch=60.0, vel=10), "pitch must be an integer"),
    (msg(type="note", pitch=True, vel=10), "pitch must be an integer"),
    (msg(type="note", pitch=60), "'vel' is missing"),
    (msg(type="note", pitch=60, vel=1, channel=17), "channel must be in 1..16"),
    (msg(type="note", pitch=60, vel=1, extra=1), "unknown key 'extra'"),
    ('{"type": "control", "name": "steer_pitch", "value": NaN}', "not JSON"),
    (msg(type="control", name="steer_pitch", value=1.5), "must be in 0..1"),
    (msg(type="control", name="pitch_temp", value=11), "must be in 0..10"),
    (msg(type="control", name="volume", value=1), "unknown control"),
    (msg(type="voice", channel=1), "nothing to change"),
    (msg(type="voice", channel=1, mode="loud"), "mode must be one of"),
    (msg(type="voice", channel=1, range=[60, 50]), "low <= high"),
    (msg(type="voice", channel=1, range=[0, 200]), "high must be in 0..127"),
    (msg(type="voice", channel=1, inst="no such instrument"), "voice:"),
    (msg(type="voice", channel=1, inst=0), "voice:"),
    (msg(type="action", name="explode"), "unknown action"),
    (msg(type="record", on=1), "on must be true or false"),
    (msg(type="prompt", name="a.mid", data="not base64!"), "not valid base64"),
    (msg(type="prompt", name="a.mid", data=""), "MIDI file in base64"),
    (msg(type="hello", version=99), "speaks version 1"),
    (msg(type="hello", version=1, batch=1), "batch must be true or false"),
    (msg(type="note", pitch=60, vel=1, id=-1), "id must be in"),
])
def test_bad_messages_are_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(P.ProtocolError, match=None) as e:
        P.parse(text)
    assert says in str(e.value)


def test_frames_pack_waiting_messages_only_when_asked() -> None:
    msgs = [{"type": "pong", "id": k} for k in range(P.MAX_BATCH + 3)]
    plain = P.frames(msgs, batch=False)
    assert [json.loads(f) for f in plain] == msgs  # one object per frame
    packed = P.frames(msgs, batch=True)
    assert len(packed) == 2  # at most MAX_BATCH per frame, in order
    first, second = (json.loads(f) for f in packed)
    assert first == msgs[:P.MAX_BATCH] and second == msgs[P.MAX_BATCH:]
    assert json.loads(P.frames(msgs[:1], batch=True)[0]) == msgs[0]  # alone: an object
    assert P.frames([], batch=True) == []


def test_size_limits() -> None:
    with pytest.raises(P.ProtocolError, match="longer than 4096"):
        P.parse(msg(type="ping", id=1, pad="x" * 5000))
    with pytest.raises(P.ProtocolError, match="longer than"):
        P.parse("x" * (P.MAX_FRAME + 1))
    big = base64.b64encode(b"\0" * (P.MAX_PROMPT_BYTES + 1)).decode()
    with pytest.raises(P.ProtocolError, match="larger than 256 KiB"):
        P.parse(msg(type="prompt", data=big))
    with pytest.raises(P.ProtocolError, match="binary frames"):
        P.parse(b'{"type": "ping"}')
    deep = '{"type": "ping", "id": ' + "[" * 3000 + "]" * 3000 + "}"
    with pytest.raises(P.ProtocolError):
        P.parse(deep)


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    t = [0.0]
    b = TokenBucket(10, 5, clock=lambda: t[0])
    assert [b.take() for _ in range(6)] == [True] * 5 + [False]
    t[0] += 0.1  # one more token
    assert b.take() and not b.take()
    t[0] += 100  # never more than the burst
    assert sum(b.take() for _ in range(10)) == 5


def test_origin_rule() -> None:
    c = WebConfig(allow_origins=("http://example.org",))
    assert origin_ok(None, "127.0.0.1:8000", c)  # not a browser
    assert origin_ok("http://127.0.0.1:8000", "127.0.0.1:8000", c)
    assert origin_ok("http://example.org", "127.0.0.1:8000", c)
    assert not origin_ok("http://evil.com", "127.0.0.1:8000", c)
    assert not origin_ok("http://127.0.0.1:9000", "127.0.0.1:8000", c)
    assert not origin_ok("null", "127.0.0.1:8000", c)
    assert not origin_ok("file://", "127.0.0.1:8000", c)


def test_loopback() -> None:
    assert loopback("127.0.0.1") and loopback("::1") and loopback("localhost")
    assert loopback("[::1]") and loopback("127.5.0.1")
    assert not loopback("0.0.0.0") and not loopback("192.168.1.2") and not loopback("example")


def test_soundfont_lookup(tmp_path) -> None:
    sf = tmp_path / "x.sf2"
    sf.write_bytes(b"RIFF....sfbk")
    assert find_soundfont(sf) == sf.resolve()
    bad = tmp_path / "y.sf2"
    bad.write_bytes(b"nope")
    with pytest.raises(UserError, match="not a SoundFont"):
        find_soundfont(bad)
    with pytest.raises(UserError, match="no such file"):
        find_soundfont(tmp_path / "missing.sf2")
    txt = tmp_path / "z.txt"
    txt.write_bytes(b"RIFF")
    with pytest.raises(UserError, match="expected a"):
        find_soundfont(txt)


def test_static_files_are_a_fixed_list(tmp_path) -> None:
    files = load_static()
    assert {"index.html", "app.js", "style.css", "spessasynth_processor.min.js"} <= set(files)
    assert files["app.js"].media_type == "text/javascript"
    (tmp_path / "a.js").write_text("x")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.js").symlink_to(STATIC_DIR / "app.js")
    assert set(load_static(tmp_path)) == {"a.js"}


def test_recorder_writes_a_midi_file_the_ingest_reads() -> None:
    r = Recorder()
    r.add(1, 60, 100, 1.0)  # not recording yet: ignored
    r.start(10.0)
    r.add(1, 60, 100, 10.0)
    r.add(34, 40, 90, 10.25)
    r.add(1, 60, 0, 10.5)
    r.add(34, 40, 0, 11.0)
    r.add(129, 36, 120, 11.0)  # a drum note left sounding: ends at the last event
    r.stop()
    r.add(1, 62, 100, 12.0)  # stopped: ignored
    ing = load_midi(r.midi())
    e = ing.events.sorted()
    ons = [(int(i), int(p)) for i, p, v in zip(e.inst, e.pitch, e.vel) if v > 0]
    assert sorted(ons) == [(1, 60), (34, 40), (129, 36)]
    t_on = {int(p): float(t) for p, t, v in zip(e.pitch, e.time, e.vel) if v > 0}
    assert t_on[60] == pytest.approx(0.0, abs=0.01) and t_on[40] == pytest.approx(0.25, abs=0.01)
    assert Recorder().midi().startswith(b"MThd")


def test_recorder_bounds_its_events() -> None:
    r = Recorder(max_events=3)
    r.start(0.0)
    for k in range(5):
        r.add(1, 60, 100 if k % 2 == 0 else 0, k)
    assert len(r) == 3 and r.dropped == 2


def test_song_prompt_fits_the_limit() -> None:
    assert len(simple_song()) < P.MAX_PROMPT_BYTES


def test_cli_names_the_extra_when_starlette_is_missing(monkeypatch) -> None:
    from notochord_rt.cli import web

    monkeypatch.setitem(sys.modules, "starlette", None)
    with pytest.raises(UserError, match=r"pip install 'notochord-rt\[web\]'"):
        web.run(type("A", (), {})())
