"""The OSC server (`notochord-rt serve`): a real UDP client against the running server.

Every test talks to a server bound to 127.0.0.1 on an ephemeral port, with a tiny random
model. Loops are bounded and every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from midifiles import simple_song
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from tiny import tiny_net

from notochord_rt import cli
from notochord_rt.apps.osc import protocol as proto
from notochord_rt.apps.osc import wire as osc_wire
from notochord_rt.apps.osc.files import FileRoot
from notochord_rt.apps.osc.server import OscServer, build_message
from notochord_rt.apps.osc.sessions import Sessions
from notochord_rt.engine.sampling.sampler import Notochord
from notochord_rt.engine.sampling.streams import Streams
from notochord_rt.errors import CheckpointError, InputError
from notochord_rt.model.network import NotochordNet

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def net() -> NotochordNet:
    return tiny_net(0, init=0.1)


@pytest.fixture(scope="module")
def ckpt(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    net.save(path)
    return path


@pytest.fixture
def files(tmp_path) -> Path:
    """The folder the test server may read (--allow-files)."""
    root = tmp_path / "files"
    root.mkdir()
    return root


@pytest.fixture
def server(net, files):
    srv = OscServer(Sessions(net, max_sessions=4, seed=0, files=FileRoot(files)),
                    port=0).start()
    yield srv
    srv.stop()


class Client:
    """A UDP OSC client with a timeout on every receive."""

    def __init__(self, target) -> None:
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, address: str, *args) -> None:
        self.sock.sendto(osc_wire.build(address, list(args), strict=False), self.target)

    def recv(self, timeout: float = TIMEOUT) -> tuple[str, dict]:
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(65535)
        msg = OscMessage(data)
        p = msg.params
        assert len(p) % 2 == 0, p
        return msg.address, dict(zip(p[0::2], p[1::2]))

    def ask(self, address: str, *args) -> tuple[str, dict]:
        self.send(address, *args)
        return self.recv()

    def nothing(self, wait: float = 0.3) -> bool:
        """True if no datagram arrives within ``wait`` seconds."""
        self.sock.settimeout(wait)
        try:
            self.sock.recvfrom(65535)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client(server):
    c = Client(server.address)
    yield c
    c.close()


# -- the reference addresses -------------------------------------------------------------
def test_query_reply_and_handle(client):
    addr, r = client.ask("/notochord/query")
    assert addr == "/return/notochord/query"
    assert set(r) == {"inst", "pitch", "time", "vel", "end", "step"}
    assert 1 <= r["inst"] <= 320 and 0 <= r["pitch"] <= 127 and r["time"] >= 0
    for handle in ("h-1", 77):
        addr, r = client.ask("/notochord/query", "pitch_temp", 0.5, "handle", handle)
        assert addr == "/return/notochord/query" and r["handle"] == handle


@pytest.mark.parametrize("as_json", [True, False])
def test_query_lists_as_json_strings_or_osc_arrays(client, as_json):
    insts, pitches = [1, 2, 3], [60, 64, 67]
    args = (["include_inst", json.dumps(insts), "include_pitch", json.dumps(pitches)]
            if as_json else ["include_inst", insts, "include_pitch", pitches])
    for _ in range(8):
        _, r = client.ask("/notochord/query", *args, "min_vel", 1)
        assert r["inst"] in insts and r["pitch"] in pitches and r["vel"] >= 1


def test_fixed_values_and_return_params(client):
    _, r = client.ask("/notochord/query", "next_inst", 1, "next_pitch", 60, "next_time", 0.25,
                      "next_vel", 99, "return_params", True)
    assert (r["inst"], r["pitch"], r["vel"]) == (1, 60, 99.0)
    assert abs(r["time"] - 0.25) < 1e-6
    assert "inst_params" not in r  # fixed values have no head output
    # free sub-events come back as JSON arrays
    _, r = client.ask("/notochord/query", "return_params", 1)
    assert len(json.loads(r["inst_params"])) == 321
    assert len(json.loads(r["pitch_params"])) == 129
    assert np.asarray(json.loads(r["time_params"])).shape[0] == 3


def test_feed_query_feed_and_held_notes(client):
    assert client.nothing(0.2)  # nothing arrives unasked
    client.send("/notochord/feed", 1, 60, 0.1, 90)  # no handle: no reply (as the reference)
    assert client.nothing(0.2)
    addr, r = client.ask("/notochord/feed", 1, 64, 0.1, 90, "handle", 5)
    assert addr == "/return/notochord/feed" and r == {"step": 2, "handle": 5}
    _, r = client.ask("/notochord/held")
    assert [n[:2] for n in json.loads(r["notes"])] == [[1, 60], [1, 64]]
    # feed_query: feed positional event, then query (a note-off of instrument 1: held only)
    for _ in range(4):
        _, r = client.ask("/notochord/query", "next_inst", 1, "next_vel", 0)
        assert r["pitch"] in (60, 64)
    addr, r = client.ask("/notochord/feed_query", 1, 60, 0.2, 0, "next_inst", 1, "next_vel", 0)
    assert addr == "/return/notochord/query" and r["pitch"] == 64 and r["step"] == 3
    # query_feed: the sampled event is fed (the held note is released)
    _, r = client.ask("/notochord/query_feed", "next_inst", 1, "next_vel", 0)
    assert r["pitch"] == 64
    _, r = client.ask("/notochord/held")
    assert json.loads(r["notes"]) == []
    _, r = client.ask("/notochord/feed", "inst", 5, "pitch", 50, "time", 0, "vel", 10,
                      "handle", "kw")
    assert r["step"] == 5


@pytest.mark.parametrize("guard", [8.0, 0.0])
def test_query_feed_never_leaves_notes_sounding_for_ever(server, client, guard):
    """A client that only sends query_feed: with the server's guard no note is held much
    longer than --query-max-duration; without it (the reference's behaviour) notes pile up."""
    server.parser.query_max_duration = guard
    try:
        for _ in range(200):
            client.ask("/notochord/query_feed")
        _, r = client.ask("/notochord/held")
    finally:
        server.parser.query_max_duration = 8.0
    ages = [n[2] for n in json.loads(r["notes"])]
    if guard:
        assert max(ages, default=0.0) <= guard + 0.5, ages
    else:
        assert len(ages) > 5 and max(ages) > 8.5, ages


def test_reset_and_start_false(client):
    client.send("/notochord/feed", 1, 60, 0.1, 90)
    _, r = client.ask("/notochord/reset")
    assert r["step"] == 0
    _, r = client.ask("/notochord/held")
    assert json.loads(r["notes"]) == []
    _, r = client.ask("/notochord/reset", "start", "false", "handle", 1)
    assert r == {"session": 0, "step": 0, "handle": 1}
    _, r = client.ask("/notochord/query")
    assert r["step"] == 0


def test_prompt_then_reset_returns_to_prompt(client, files):
    (files / "song.mid").write_bytes(simple_song())
    addr, r = client.ask("/notochord/prompt", "song.mid", "handle", "p")
    assert addr == "/return/notochord/prompt" and r["handle"] == "p"
    n = r["events"]
    assert n > 50 and r["step"] == n
    insts = json.loads(r["instruments"])
    assert "1" in insts and "34" in insts  # piano (program 0) and fingered bass (33)
    client.send("/notochord/feed", 1, 60, 0.1, 90)
    _, r = client.ask("/notochord/reset")
    assert r["step"] == n
    # back to the state after the prompt, with no notes left sounding
    _, h = client.ask("/notochord/held")
    assert json.loads(h["notes"]) == []


def test_load_swaps_the_model_and_restarts_sessions(client, ckpt, files):
    client.send("/notochord/feed", 1, 60, 0.1, 90)
    (files / "tiny.safetensors").write_bytes(ckpt.read_bytes())
    path = str(files / "tiny.safetensors")  # absolute paths inside the folder work too
    addr, r = client.ask("/notochord/load", path)
    assert addr == "/return/notochord/load" and r["checkpoint"] == path
    _, r = client.ask("/notochord/query")
    assert r["step"] == 0
    addr, r = client.ask("/notochord/load", "tiny.missing", "handle", 3)
    assert addr == "/return/notochord/error" and "no such file" in r["message"].lower()
    assert r["handle"] == 3
    assert client.ask("/notochord/query")[0] == "/return/notochord/query"


# -- our sample ----------------------------------------------------------------------------
def test_sample_constraints_by_name(client):
    pitches = [60, 62, 64, 65, 67]
    for step in range(12):
        addr, r = client.ask("/notochord/sample", "note_on_map", json.dumps({"violin": pitches}),
                             "max_polyphony", 2, "min_time", 0.05, "feed", 1, "handle", step)
        assert addr == "/return/notochord/sample" and r["handle"] == step
        assert r["inst"] == 41 and r["pitch"] in pitches
        assert r["time"] >= 0.05 and 0 <= r["end"] <= 1 and r["step"] == step
        held = json.loads(client.ask("/notochord/held")[1]["notes"])
        assert len(held) <= 2 and all(n[0] == 41 and n[1] in pitches for n in held)


def test_sample_raw_flag(client):
    for raw in ("true", "false"):
        addr, r = client.ask("/notochord/sample", "raw", raw, "note_on_map",
                             json.dumps({"violin": [60, 62]}), "handle", 7)
        assert addr == "/return/notochord/sample" and r["inst"] == 41 and r["handle"] == 7
    addr, r = client.ask("/notochord/sample", "raw", "maybe")
    assert addr == "/return/notochord/error" and "raw" in r["message"]


def test_sample_polyphony_guarantee_forces_a_note_off(client):
    client.send("/notochord/feed", 41, 60, 0.1, 80)
    client.send("/notochord/feed", 41, 62, 0.1, 80)
    _, r = client.ask("/notochord/sample", "note_on_map", json.dumps({"41": [60, 62, 64]}),
                      "max_polyphony", 1, "order", "ivtp")
    assert r["inst"] == 41 and r["vel"] == 0 and r["pitch"] in (60, 62)
    assert r["forced"] == "max_polyphony"


def test_feed_sample_and_fixed_fields(client):
    addr, r = client.ask("/notochord/feed_sample", 1, 60, 0.0, 80, "inst", "acoustic grand",
                         "vel", 0)
    assert addr == "/return/notochord/sample"
    assert (r["inst"], r["pitch"], r["vel"]) == (1, 60, 0.0)  # the only held note
    _, r = client.ask("/notochord/sample", "time_ranges", "[[0.1, 0.2]]", "inst", 129,
                      "vel_ranges", [[100, 110]], "note_off_map", "{}")
    assert 0.1 <= r["time"] <= 0.2 and 100 <= r["vel"] <= 110 and r["inst"] == 129


@pytest.mark.parametrize("args, words", [
    (["bogus_field", 1], "unknown constraint"),
    (["note_on_map", "[1, 2]"], "note_on_map"),
    (["note_on_map", '{"kazoo": [60]}'], "kazoo"),
    (["max_polyphony", "lots"], "max_polyphony"),
    (["truncate_quantile_time", "[0.9, 0.1]"], "truncate_quantile_time"),
    (["order", "xyzw"], "order"),
    (["penalty", '{"max_speed": 1}'], "max_speed"),
    (["note_on_map", '{"1": []}', "note_off_map", "{}"], "no"),  # nothing possible
])
def test_sample_bad_constraints_get_error_replies(client, args, words):
    addr, r = client.ask("/notochord/sample", *args, "handle", "x")
    assert addr == "/return/notochord/error"
    assert r["address"] == "/notochord/sample" and r["handle"] == "x"
    assert words.lower() in r["message"].lower()
    assert client.ask("/notochord/ping")[0] == "/return/notochord/ping"


# -- sessions ---------------------------------------------------------------------------------
def test_sessions_have_their_own_state_and_held_notes(client):
    a = client.ask("/notochord/session/open")[1]["session"]
    b = client.ask("/notochord/session/open", "handle", "b")[1]["session"]
    assert a != b and isinstance(a, str) and len(a) >= 16  # unguessable tokens
    client.send("/notochord/feed", 1, 60, 0.1, 90, "session", a)
    client.send("/notochord/feed", 2, 40, 0.1, 90, "session", b)
    client.send("/notochord/feed", 3, 70, 0.1, 90, "session", b)
    held = {s: json.loads(client.ask("/notochord/held", "session", s)[1]["notes"])
            for s in (0, a, b)}
    assert held[0] == []
    assert [n[:2] for n in held[a]] == [[1, 60]]
    assert [n[:2] for n in held[b]] == [[2, 40], [3, 70]]
    _, r = client.ask("/notochord/query", "session", b)
    assert r["step"] == 2
    _, r = client.ask("/notochord/session/close", "session", a)
    assert r["session"] == a
    addr, r = client.ask("/notochord/query", "session", a, "handle", 4)
    assert addr == "/return/notochord/error" and "no such session" in r["message"]
    addr, r = client.ask("/notochord/session/close", "session", 0)
    assert addr == "/return/notochord/error" and "session 0" in r["message"]


def test_session_limit(client):
    opened = []
    for _ in range(4):
        addr, r = client.ask("/notochord/session/open")
        assert addr == "/return/notochord/session/open"
        opened.append(r["session"])
    addr, r = client.ask("/notochord/session/open")
    assert addr == "/return/notochord/error" and "too many sessions" in r["message"]
    client.ask("/notochord/session/close", "session", opened[0])
    assert client.ask("/notochord/session/open")[0] == "/return/notochord/session/open"


def test_same_seed_sessions_agree_and_expire(net):
    sessions = Sessions(net, max_sessions=3, seed=1)
    parser = proto.Parser()

    def req(address, *args):
        return parser.parse(address, list(args))

    ids = [r[2]["session"] for r in sessions.run([req("/notochord/session/open", "seed", 9)
                                                  for _ in range(2)])]
    for _ in range(5):
        out = sessions.run([req("/notochord/query_feed", "session", s) for s in ids])
        a, b = (o[2] for o in out)
        assert a == b
    assert sessions.expire(1e9) == []
    notices = sessions.expire(0.0)
    assert sorted(n[2]["session"] for n in notices) == sorted(ids)
    assert all(n[1] == "/return/notochord/session/expired" for n in notices)
    assert sessions.open_count == 1


def test_a_model_that_cannot_be_served_keeps_the_old_one(net):
    sessions = Sessions(net, max_sessions=0, seed=0, loader=lambda path: torch.nn.Linear(2, 2))
    parser = proto.Parser()
    sessions.run([parser.parse("/notochord/feed", [1, 60, 0.1, 80])])
    with pytest.raises(CheckpointError, match="cannot serve"):
        sessions.load("weird.bin")
    (_, addr, r), = sessions.run([parser.parse("/notochord/query", [])])
    assert addr == "/return/notochord/query" and r["step"] == 1  # same model, same state
    assert sessions.model is net


def test_requests_arriving_together_share_one_batched_step(net, monkeypatch):
    calls = []
    real = Streams.sample

    def counting(self, constraints=None, idx=None, **kw):
        calls.append(len(idx))
        return real(self, constraints, idx=idx, **kw)

    monkeypatch.setattr(Streams, "sample", counting)
    server = OscServer(Sessions(net, max_sessions=6), port=0)  # not started: we feed it
    clients = [Client(server.address) for _ in range(6)]
    try:
        for c in clients:
            server.handle([(build_message("/notochord/session/open", []),
                            ("127.0.0.1", c.port))])
        ids = [c.recv()[1]["session"] for c in clients]
        batch = [(build_message("/notochord/feed_query", [1, 60 + k, 0.1, 80, "session", s,
                                                          "handle", k]), ("127.0.0.1", c.port))
                 for k, (s, c) in enumerate(zip(ids, clients))]
        server.handle(batch)  # as if they were received together
        for k, c in enumerate(clients):
            addr, r = c.recv()
            assert addr == "/return/notochord/query" and r["handle"] == k and r["step"] == 1
        assert calls == [6]
    finally:
        for c in clients:
            c.close()
        server.stop()


def test_a_burst_from_one_client_does_not_hold_up_the_others(net):
    server = OscServer(Sessions(net, max_sessions=1), port=0, per_session=4, per_sender=20)
    a, b = Client(server.address), Client(server.address)
    try:
        server.handle([(build_message("/notochord/session/open", []), ("127.0.0.1", b.port))])
        sid = b.recv()[1]["session"]
        burst = [(build_message("/notochord/query", ["handle", k]), ("127.0.0.1", a.port))
                 for k in range(40)]
        server.handle(burst + [(build_message("/notochord/query", ["session", sid, "handle",
                                                                   "b"]),
                                ("127.0.0.1", b.port))])
        assert b.recv()[1]["handle"] == "b"  # served in the first wake-up
        assert server.backlog == 16 and server.stats["busy"] == 20
        for _ in range(4):  # the next wake-ups serve the backlog, 4 at a time
            server.handle([])
        assert server.backlog == 0
        replies = [a.recv() for _ in range(40)]
        assert all("busy" in r["message"] for addr, r in replies
                   if addr == "/return/notochord/error")
        got = [r["handle"] for addr, r in replies if addr == "/return/notochord/query"]
        assert got == list(range(20))  # in order; the 20 newest were refused
        assert a.nothing(0.2)
    finally:
        a.close()
        b.close()
        server.stop()


def test_concurrent_clients_all_answered(server):
    clients = [Client(server.address) for _ in range(8)]
    try:
        for rnd in range(3):
            for k, c in enumerate(clients):
                c.send("/notochord/query", "handle", rnd * 100 + k)
            for k, c in enumerate(clients):
                assert c.recv()[1]["handle"] == rnd * 100 + k
    finally:
        for c in clients:
            c.close()


# -- replies to other ports ----------------------------------------------------------------
def test_reply_port_key_and_send_port(net, client):
    other = Client(client.target)
    try:
        # refused by default: replies go to the port the request came from
        addr, r = client.ask("/notochord/query", "port", other.port, "handle", 1)
        assert addr == "/return/notochord/error" and "port" in r["message"]
        assert r["handle"] == 1 and other.nothing(0.2)
        srv = OscServer(Sessions(net, max_sessions=0), port=0, allow_reply_port=True).start()
        try:
            c2 = Client(srv.address)
            c2.send("/notochord/query", "port", other.port, "handle", 1)
            assert other.recv()[1]["handle"] == 1 and c2.nothing(0.2)
            c2.send("/notochord/query", "port", 70000)
            assert c2.recv()[0] == "/return/notochord/error"
            c2.close()
        finally:
            srv.stop()
        srv = OscServer(Sessions(net, max_sessions=0), port=0, send_port=other.port).start()
        try:
            c2 = Client(srv.address)
            c2.send("/notochord/ping", "handle", 2)
            assert other.recv()[1] == {"handle": 2} and c2.nothing(0.2)
            c2.close()
        finally:
            srv.stop()
    finally:
        other.close()


def test_bundle_messages_are_all_served(client):
    b = OscBundleBuilder(IMMEDIATELY)
    for k in range(3):
        m = OscMessageBuilder("/notochord/query")
        for a in ("handle", k):
            m.add_arg(a)
        b.add_content(m.build())
    client.sock.sendto(b.build().dgram, client.target)
    assert sorted(client.recv()[1]["handle"] for _ in range(3)) == [0, 1, 2]


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("address, args, words", [
    ("/notochord/nope", [], "unknown address"),
    ("/notochord/feed", [1, 60], "4 numbers"),
    ("/notochord/feed", ["a", 60, 0.1, 80], "inst"),
    ("/notochord/feed", [1, 200, 0.1, 80], "pitch"),
    ("/notochord/feed", [1, 60, float("nan"), 80], "time"),
    ("/notochord/feed", [1, 60, -1.0, 80], "time"),
    ("/notochord/feed", [1, 60, 0.1, 80, "velocity"], "no value"),
    ("/notochord/feed", [1, 60, 0.1, 80, "bogus", 1], "bogus"),
    ("/notochord/feed_query", [500, 60, 0.1, 80], "inst"),
    ("/notochord/query", ["include_inst"], "no value"),
    ("/notochord/query", [3, 4], "key name"),
    ("/notochord/query", ["next_pich", 60], "next_pich"),
    ("/notochord/query", ["include_inst", "[999]"], "include_inst"),
    ("/notochord/query", ["pitch_temp", 0.5, "pitch_temp", 0.7], "twice"),
    ("/notochord/query", ["seed", 3], "seed"),
    ("/notochord/query", ["session", "first"], "session"),
    ("/notochord/query", ["include_inst", "[1]", "exclude_inst", "[1]"], "excluded"),
    ("/notochord/prompt", [], "path"),
    ("/notochord/prompt", ["/no/such/file.mid"], "not inside the folder"),
    ("/notochord/reset", ["start", "maybe"], "start"),
    ("/notochord/reset", ["colour", 1], "colour"),
    ("/notochord/load", [3], "path"),
])
def test_malformed_messages_get_error_replies(client, address, args, words):
    addr, r = client.ask(address, *args, "handle", "bad")
    assert addr == "/return/notochord/error", r
    assert r["handle"] == "bad" and r["address"] == address
    assert words.lower() in r["message"].lower(), r["message"]
    # the server is still serving
    assert client.ask("/notochord/query", "handle", 1)[1]["handle"] == 1


def test_addresses_of_others_are_ignored(server, client):
    client.send("/something/else", "handle", 1)
    assert client.nothing(0.3)
    _, st = client.ask("/notochord/status", "detail", True)
    assert st["ignored"] == 1 and st["errors"] == 0


def test_bad_midi_prompt_gets_error(client, files):
    (files / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    addr, r = client.ask("/notochord/prompt", "broken.mid")
    assert addr == "/return/notochord/error" and r["address"] == "/notochord/prompt"


def test_no_files_refuses_prompt_and_load(net, ckpt):
    srv = OscServer(Sessions(net, max_sessions=0), port=0).start()  # files: None
    c = Client(srv.address)
    try:
        for address in ("/notochord/load", "/notochord/prompt"):
            addr, r = c.ask(address, str(ckpt))
            assert addr == "/return/notochord/error" and "reads no files" in r["message"]
    finally:
        c.close()
        srv.stop()


@pytest.mark.slow
def test_garbage_is_dropped_and_a_flood_does_not_stop_the_server(server, client):
    rng = np.random.default_rng(0)
    client.sock.sendto(b"", server.address)
    client.sock.sendto(b"/notochord/query\x00", server.address)  # no type tag padding
    assert client.nothing(0.3)  # garbage gets no reply
    # random bytes (never starting like a message "/" or a bundle "#")
    flood = [b"\xff" + rng.integers(0, 256, rng.integers(0, 200), dtype=np.uint8).tobytes()
             for _ in range(2000)]
    flood += [b"/notochord/query\x00\x00\x00\x00,i\x00\x00"]  # truncated argument
    for data in flood:
        client.sock.sendto(data, server.address)
    # the kernel may drop part of a flood: retry a few times, each with a timeout
    for attempt in range(10):
        client.send("/notochord/query", "handle", attempt)
        try:
            addr, r = client.recv(timeout=2.0)
        except TimeoutError:
            continue
        assert addr == "/return/notochord/query"
        break
    else:
        pytest.fail("a valid query was not answered after the flood")
    _, st = client.ask("/notochord/status", "detail", True)
    assert st["garbage"] >= 50 and st["errors"] == 0
    assert st["garbage"] + st["limited"] >= 1000  # the rest were cut by the rate limit


@pytest.mark.slow
def test_error_replies_are_rate_limited(net):
    srv = OscServer(Sessions(net, max_sessions=0), port=0, error_rate=20).start()
    c = Client(srv.address)
    try:
        for _ in range(200):
            c.send("/notochord/nope")
        got = 0
        while not c.nothing(0.3):
            got += 1
            if got > 200:
                break
        assert 1 <= got <= 100  # 20 a second (a slow machine may span a few windows)
        assert srv.stats["errors_dropped"] >= 100
        time.sleep(1.05)  # a new window: errors are answered again
        assert c.ask("/notochord/nope")[0] == "/return/notochord/error"
    finally:
        c.close()
        srv.stop()


def test_an_internal_error_is_answered_and_serving_goes_on(server, client, monkeypatch):
    def broken(requests):
        raise RuntimeError("boom")

    monkeypatch.setattr(server.sessions, "run", broken)
    addr, r = client.ask("/notochord/query", "handle", 1)
    assert addr == "/return/notochord/error" and "boom" in r["message"] and r["handle"] == 1
    monkeypatch.undo()
    assert client.ask("/notochord/query")[0] == "/return/notochord/query"


# -- protocol helpers ------------------------------------------------------------------------
def test_decode_and_pairs():
    assert proto.decode("[1, 2]") == [1, 2] and proto.decode("false") is False
    assert proto.decode("violin") == "violin" and proto.decode(["3", "x"]) == [3, "x"]
    assert proto.pairs(["a", "1", "handle", "2"], "/x", None) == {"a": 1, "handle": "2"}
    with pytest.raises(proto.RequestError, match="no value"):
        proto.pairs(["a"], "/x", None)
    assert proto.find_handle(["a", 1, "handle", 7]) == 7
    assert proto.find_handle(["a", 1, "handle", [1, 2]]) is None  # only scalars are echoed


def test_constraint_values_convert_names_and_json():
    c = proto.sample_constraints({
        "note_on_map": {"violin": [60], "129": [36]}, "max_polyphony": {"41": 2},
        "max_time": "inf", "external": "drums", "penalty": {"max_time": 1},
        "truncate_quantile_pitch": [0.1, 0.9], "time_ranges": [[0, 1, 2]],
        "inst_weights": {"anon2": 0.5}, "steer_density": None})
    assert c.note_on_map == {41: (60,), 129: (36,)} and c.max_polyphony == {41: 2.0}
    assert c.max_time == float("inf") and c.external == {129}
    assert c.truncate_quantile_pitch == (0.1, 0.9) and c.time_ranges == [(0.0, 1.0, 2.0)]
    assert c.inst_weights == {258: 0.5} and c.steer_density is None
    with pytest.raises(InputError, match="min_tim"):
        proto.sample_constraints({"min_tim": 1})


def test_osc_constraint_values_follow_the_field_table():
    """Every kind of the one field table has its OSC spelling, and each OSC value is then
    checked by the same row as in Python: the same value is refused the same way."""
    from notochord_rt.apps.osc import values
    from notochord_rt.engine.sampling.constraints import FIELDS, KINDS

    assert set(values._WIRE) == set(KINDS)
    assert {f.kind for f in FIELDS.values()} <= set(KINDS)
    for name, bad, words in (("swing", 1.5, "swing"), ("pitch", 128, "pitch"),
                             ("truncate_quantile_time", [0.9, 0.1], "lo < hi"),
                             ("grid", "1/7", "grid"), ("next_bar", 2, "next_bar"),
                             ("order", "ipt", "order"), ("min_time", -1, "min_time"),
                             ("penalty", {"nope": 1}, "unknown key")):
        with pytest.raises(InputError, match=words):
            values.constraint_value(name, bad)
        if name != "next_bar":  # the OSC spelling of a bool is 0/1 too
            with pytest.raises(InputError, match=words):
                FIELDS[name].convert(bad)
    assert values.constraint_value("next_bar", 1) is True
    assert values.constraint_value("max_duration", {"violin": "inf"}) == {41: float("inf")}
    with pytest.raises(InputError, match="min_duration"):  # inf only for upper bounds
        values.constraint_value("min_duration", {"violin": "inf"})
    assert proto.flatten({"a": 1, "b": None, "c": [1, 2], "handle": [3]}) == [
        "a", 1, "c", "[1, 2]", "handle", [3]]


def test_streams_get_and_set_state_round_trip(net):
    st = Streams(net, 3, seed=[1, 2, 3])
    st.feed([0, 1], [1, 2], [60, 61], [0.1, 0.2], [80, 90])
    snap = st.get_state(0)
    want = st.sample(idx=[0])[0]
    st.set_state(2, snap)
    assert st.sample(idx=[2])[0] == want
    assert st.held_notes(2) == {(1, 60): 0.0} and st.step_count[2] == 1
    single = Notochord.from_net(net)
    single.reset()
    st.set_state(1, single.get_state())
    assert st.step_count[1] == 0 and st.held_notes(1) == {}
    with pytest.raises(InputError):
        st.set_state(0, "nope")


# -- the command line --------------------------------------------------------------------------
def test_cli_missing_checkpoint_is_a_clear_error(capsys, tmp_path):
    assert cli.main(["serve", "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_serves_and_stops_on_ctrl_c(ckpt, tmp_path, song_file):
    song = song_file
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "notochord_rt", "serve", "--checkpoint", str(ckpt),
         "--port", "0", "--prompt", str(song), "--max-sessions", "2"],
        stderr=subprocess.PIPE, text=True, env=env,
        # Ctrl-C must reach it even when the suite runs with SIGINT ignored (a background
        # job of a non-interactive shell): an ignored signal is inherited
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        m, lines, deadline = None, [], time.monotonic() + 60
        while m is None and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1.0)[0]:
                line = proc.stderr.readline()
                if not line:
                    break
                lines.append(line)
                m = re.search(r"listening on ([\d.]+):(\d+)", line)
        assert m, lines
        c = Client((m.group(1), int(m.group(2))))
        _, r = c.ask("/notochord/query", "handle", 1)
        assert r["handle"] == 1 and r["step"] > 50  # every session starts from the prompt
        _, r = c.ask("/notochord/session/open")
        assert c.ask("/notochord/query", "session", r["session"])[1]["step"] > 50
        c.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_python_example_of_the_docs_runs(server, capsys):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "osc.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert "9999" in code
    exec(compile(code.replace("9999", str(server.address[1])), "osc.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("{'inst': 1, 'pitch': ") and "'handle': 1" in out[0]
    assert out[1].startswith("41 ")  # the violin answer
    assert json.loads(out[2])[0][:2] == [1, 60]  # the fed piano note still sounds
    assert server.sessions.open_count == 1  # the example closed its session
