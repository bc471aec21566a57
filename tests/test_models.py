"""Models by name: registry, cache, pull over real HTTP (a local server), bad downloads.

A real HTTP server on 127.0.0.1 (a thread of this test) serves checkpoints made here: a
reference-format pickle, a truncated one, one that breaks off mid-file, a tampered pickle
that would run a shell command, an HTML page, error statuses. ``NOTOCHORD_RT_REGISTRY``
points the registry at it and ``NOTOCHORD_RT_HOME`` puts the cache in a temporary folder.
Nothing here reaches beyond this machine.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from notochord_rt.cli import main
from notochord_rt.engine.sampling.sampler import Notochord
from notochord_rt.errors import UserError
from notochord_rt.hub import HubError, NotCached, cache, registry
from notochord_rt.hub.pull import pull
from notochord_rt.model import checkpoint as ck
from notochord_rt.model.network import NotochordNet

torch.set_num_threads(1)

TINY = dict(emb_size=16, rnn_hidden=24, rnn_layers=2, mlp_layers=1, time_sines=8,
            vel_sines=8, time_components=4, vel_components=3, dropout=0.0)
SEQ = ([1, 129, 41], [60, 36, 72], [0.0, 0.1, 0.7], [90, 100, 0])


# -- a reference-format checkpoint, made here ------------------------------------------
def tiny_net(seed: int = 0) -> NotochordNet:
    torch.manual_seed(seed)
    net = NotochordNet(**TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


def reference_state(net: NotochordNet) -> dict[str, torch.Tensor]:
    """Our state dict under the reference's parameter names (the inverse of the converter)."""
    cfg = net.config
    lin = 1 if cfg.dropout > 0 else 0
    heads = {"h_proj": "h_proj", "inst_head": "projections.0", "pitch_head": "projections.1",
             "time_head": "projections.2", "vel_head": "projections.3"}
    fixed = {"inst_emb.weight": "instrument_emb.weight", "initial_state": "initial_state.0",
             "time_emb.freqs": "time_emb.fs", "vel_emb.freqs": "vel_emb.fs",
             "end_head.weight": "end_proj.weight", "end_head.bias": "end_proj.bias"}
    out = {}
    for key, value in net.state_dict().items():
        head, _, rest = key.partition(".")
        if key in fixed:
            new = fixed[key]
        elif head == "rnn":
            new = "rnn.rnn." + rest
        elif head in heads:
            m = re.match(r"layers\.(\d+)\.(linear|norm)\.(weight|bias)$", rest)
            if m:
                sub = lin if m[2] == "linear" else lin + 2
                new = f"{heads[head]}.net.{m[1]}.{sub}.{m[3]}"
            else:
                new = f"{heads[head]}.net.{cfg.mlp_layers}.{rest.split('.')[-1]}"
        else:
            new = key
        out[new] = value.clone()
    return out


def reference_bytes(net: NotochordNet, **extra) -> bytes:
    buf = io.BytesIO()
    torch.save({"kw": {"model": net.config.to_reference()}, "model_state": reference_state(net),
                **extra}, buf)
    return buf.getvalue()


def test_the_test_checkpoint_is_what_the_converter_reads(tmp_path):
    net = tiny_net()
    path = tmp_path / "ref.ckpt"
    path.write_bytes(reference_bytes(net))
    config, state = ck.read_reference(path)
    assert config == net.config
    for k, v in net.state_dict().items():
        assert torch.equal(state[k], v), k


class Evil:
    """Unpickling this runs a shell command (what a weights-only read must refuse)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- the server ---------------------------------------------------------------------------
class Route(dict):
    """status, body, and optionally ``cut`` (bytes sent before the connection is closed,
    with the full Content-Length announced) or ``delay`` (seconds per 4 kB chunk)."""


class Server:
    def __init__(self):
        self.routes: dict[str, Route] = {}
        self.hits: Counter = Counter()
        self.serving = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits[self.path] += 1
                route = outer.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                status, body = route.get("status", 200), route.get("body", b"")
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                outer.serving.set()
                sent = body[: route["cut"]] if "cut" in route else body
                try:
                    for i in range(0, len(sent), 4096):
                        self.wfile.write(sent[i:i + 4096])
                        if route.get("delay"):
                            self.wfile.flush()
                            time.sleep(route["delay"])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if "cut" in route:
                    self.connection.shutdown(socket.SHUT_RDWR)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def hub(tmp_path, monkeypatch, server):
    """Cache in tmp, registry override pointing at the server; returns a helper."""
    home = tmp_path / "home"
    monkeypatch.setenv(cache.HOME_ENV, str(home))
    reg = tmp_path / "registry.toml"
    monkeypatch.setenv(registry.REGISTRY_ENV, str(reg))

    class Hub:
        def __init__(self):
            self.home, self.server, self.entries = home, server, {}

        def add(self, name, body=b"", *, url=None, sha256="", fmt="reference", **route):
            path = f"/files/{name}.ckpt"
            self.server.routes[path] = Route(body=body, **route)
            self.entries[name] = (url or server.url + path, sha256, fmt)
            reg.write_text("".join(
                f'[{n}]\nurl = "{u}"\nformat = "{f}"\nsha256 = "{h}"\nlicence = "test"\n'
                f'aliases = ["{n}-alias"]\n\n' for n, (u, h, f) in self.entries.items()))
            return registry.lookup(name)

        def files(self, name):
            folder = cache.model_dir(name)
            return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []

    return Hub()


# -- pulling, names everywhere ---------------------------------------------------------
def test_pull_converts_once_and_names_load_everywhere(hub, monkeypatch, tmp_path, capsys):
    net = tiny_net(3)
    body = reference_bytes(net)
    entry = hub.add("tinyref", body)
    with pytest.raises(NotCached, match=r"models pull tinyref"):
        Notochord.load("tinyref")
    assert main(["generate", "--checkpoint", "tinyref-alias", "--events", "5",
                 "--out", str(tmp_path / "a.mid")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notochord-rt models pull tinyref" in err
    assert sum(hub.server.hits.values()) == 0  # nothing downloads unless asked

    assert main(["models", "pull", "tinyref", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "converted to safetensors" in out and "unverified" in out
    assert hub.files("tinyref") == [cache.MODEL_FILE, cache.RECORD_FILE]  # pickle gone
    record = cache.read_record("tinyref")
    assert record["sha256"] == hashlib.sha256(body).hexdigest() and record["bytes"] == len(body)
    assert record["verified"].startswith("unverified")
    assert cache.known_hash(entry.url) == record["sha256"]  # recorded beside it

    def no_unpickling(*a, **k):
        raise AssertionError("a later load read a pickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    model = Notochord.load("tinyref-alias")
    a, b = net.score(*SEQ), model.score(*SEQ)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # identical arithmetic after conversion
    assert main(["generate", "--checkpoint", "tinyref", "--events", "20", "--seed", "1",
                 "--out", str(tmp_path / "b.mid")]) == 0
    assert (tmp_path / "b.mid").stat().st_size > 0
    assert main(["models", "pull", "tinyref"]) == 0
    assert "already cached" in capsys.readouterr().out
    assert hub.server.hits["/files/tinyref.ckpt"] == 1

    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    params = sum(p.numel() for p in net.parameters())
    assert rows["tinyref"]["cached"] == "yes" and rows["tinyref"]["parameters"] == params
    assert rows["default"]["cached"] == "bundled" and rows["notochord-lakh"]["cached"] == "no"
    assert main(["models", "info", "tinyref", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == params and info["pull"]["sha256"] == record["sha256"]
    assert "GRU 24 x 2 layers" in info["file"]["architecture"]
    assert main(["models", "path", "tinyref"]) == 0
    assert capsys.readouterr().out.strip() == str(cache.model_dir("tinyref") / cache.MODEL_FILE)

    assert main(["models", "remove", "tinyref"]) == 0
    assert not cache.model_dir("tinyref").exists()
    assert main(["models", "path", "tinyref"]) == 2
    assert "models pull tinyref" in capsys.readouterr().err
    assert cache.known_hash(entry.url) == record["sha256"]  # kept for the next pull


def test_download_flag_pulls_for_eval_and_train_names(hub, tmp_path, capsys):
    net = tiny_net(4)
    hub.add("tinyref", reference_bytes(net))
    midi = Path(__file__).resolve().parents[1] / "examples" / "midi" / "bach__bwv10.7_0.mid"
    assert main(["eval", "tinyref", str(midi), "--orders", "canonical", "--no-progress"]) == 2
    assert "models pull tinyref" in capsys.readouterr().err
    assert main(["eval", "tinyref", str(midi), "--orders", "canonical", "--no-progress",
                 "--download", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["events"] > 0
    from notochord_rt.cli import build_parser
    from notochord_rt.cli.train import build_config

    args = build_parser().parse_args(["train", str(tmp_path), "--init-from", "tinyref-alias",
                                      "--out", str(tmp_path / "run")])
    assert build_config(args).init_from == str(cache.model_dir("tinyref") / cache.MODEL_FILE)
    cache.remove(registry.lookup("tinyref"))
    with pytest.raises(NotCached, match="models pull tinyref"):
        build_config(args)


def test_models_info_of_a_path_reads_without_building(tmp_path, capsys):
    net = tiny_net()
    net.save(tmp_path / "m.safetensors", source="unit test")
    assert main(["models", "info", str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert f"{sum(p.numel() for p in net.parameters()):,}" in out and "unit test" in out
    (tmp_path / "ref.ckpt").write_bytes(reference_bytes(net))
    assert main(["models", "info", str(tmp_path / "ref.ckpt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"].startswith("reference")
    assert main(["models", "info", "no-such-model"]) == 2


# -- bad downloads: one line each, nothing half-written, nothing executed ----------------
def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def bad_cases(tmp_path):
    good = reference_bytes(tiny_net(5))
    marker = tmp_path / "pwned"
    evil = reference_bytes(tiny_net(5), x=Evil(marker))
    corrupted = bytearray(good)
    corrupted[len(good) // 2] ^= 0xFF
    return marker, {
        "404": (dict(body=b"", status=404), r"HTTP 404"),
        "500": (dict(body=b"oops", status=500), r"HTTP 500"),
        "closed mid-file": (dict(body=good, cut=len(good) // 3),
                            r"broke off|connection .* broke"),
        "truncated file": (dict(body=good[: len(good) // 2]), r"not a usable checkpoint"),
        "corrupted, checksum published": (
            dict(body=bytes(corrupted), sha256=hashlib.sha256(good).hexdigest()),
            r"checksum mismatch.*registry says"),
        "not a checkpoint": (dict(body=b"<html>Not here</html>" * 10),
                             r"neither a safetensors file nor a torch checkpoint"),
        "pickle that runs code": (dict(body=evil), r"refused.*arbitrary code"),
        "offline": (dict(url=f"http://127.0.0.1:{_closed_port()}/x.ckpt"),
                    r"refused the connection"),
    }


@pytest.mark.parametrize("case", ["404", "500", "closed mid-file", "truncated file",
                                  "corrupted, checksum published", "not a checkpoint",
                                  "pickle that runs code", "offline"])
def test_bad_downloads_say_one_line_and_leave_nothing(hub, tmp_path, capsys, case):
    marker, cases = bad_cases(tmp_path)
    route, pattern = cases[case]
    entry = hub.add("bad", **route)
    with pytest.raises(HubError, match=pattern) as info:
        pull(entry)
    assert "\n" not in str(info.value)
    assert hub.files("bad") == []  # no model, no partial download
    assert main(["models", "pull", "bad", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(pattern, err), err
    assert hub.files("bad") == []
    assert not marker.exists()  # the tampered pickle's command never ran
    assert cache.known_hash(entry.url) is None  # a failed pull records nothing
    with pytest.raises(NotCached):
        Notochord.load("bad")


def test_dns_failure_is_named(hub):
    try:  # .invalid never resolves (RFC 6761); skip where the resolver hangs instead
        t0 = time.monotonic()
        socket.getaddrinfo("notochord-test.invalid", 80)
    except OSError:
        if time.monotonic() - t0 > 5:
            pytest.skip("the resolver is slow here")
    else:
        pytest.skip("this resolver answers for .invalid names")
    entry = hub.add("nodns", url="http://notochord-test.invalid/x.ckpt")
    with pytest.raises(HubError, match=r"cannot find notochord-test.invalid \(DNS"):
        pull(entry)
    assert hub.files("nodns") == []


def test_changed_file_after_first_download_is_refused(hub):
    first = reference_bytes(tiny_net(6))
    entry = hub.add("tofu", first)
    assert pull(entry).status == "pulled"
    cache.remove(entry)
    hub.server.routes["/files/tofu.ckpt"] = Route(body=reference_bytes(tiny_net(7)))
    with pytest.raises(HubError, match=r"checksum mismatch.*first download.*--forget"):
        pull(entry)
    assert hub.files("tofu") == []
    assert cache.remove(entry, forget=True) is True  # forgets the recorded checksum
    assert pull(entry).record["verified"].startswith("unverified")
    assert pull(entry, force=True).record["verified"] == "first download's checksum"


def test_published_checksum_verifies(hub):
    body = reference_bytes(tiny_net(8))
    entry = hub.add("pub", body, sha256=hashlib.sha256(body).hexdigest())
    assert pull(entry).record["verified"] == "published checksum"
    assert cache.known_hash(entry.url) is None


def test_our_format_is_checked_and_kept(hub, tmp_path):
    net = tiny_net(9)
    net.save(tmp_path / "ours.safetensors")
    entry = hub.add("ours", (tmp_path / "ours.safetensors").read_bytes(), fmt="notochord-rt")
    result = pull(entry)
    assert not result.record["converted_from_reference"]
    assert (result.path.read_bytes() == (tmp_path / "ours.safetensors").read_bytes())


def test_safetensors_whose_header_length_starts_like_a_pickle(tmp_path):
    """A safetensors file starts with its header's length (8 bytes, little-endian); when
    the first byte is 0x80 (one file in 256) it must not be taken for a pickle."""
    from safetensors.numpy import save_file

    from notochord_rt.hub.pull import _sniff

    path = tmp_path / "m.safetensors"
    for pad in range(300):
        save_file({"w": np.zeros(3, dtype=np.float32)}, str(path), metadata={"x": "y" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert _sniff(path) == "safetensors"
    torch_file = tmp_path / "m.ckpt"
    torch.save({"a": 1}, torch_file)
    assert _sniff(torch_file) == "torch"


def _pull_in_subprocess(hub, name, extra_env=None, preexec=None):
    env = {**os.environ, cache.HOME_ENV: str(hub.home),
           registry.REGISTRY_ENV: os.environ[registry.REGISTRY_ENV], **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "notochord_rt", "models", "pull", name,
                             "--no-progress"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def test_two_processes_pulling_the_same_model(hub):
    body = reference_bytes(tiny_net(10))
    entry = hub.add("busy", body, delay=0.05)  # ~3 s for this file: time to collide
    other = _pull_in_subprocess(hub, "busy")
    try:
        assert hub.server.serving.wait(60), "the other process never started downloading"
        with pytest.raises(HubError, match=r"another notochord-rt process \(pid \d+\) is "
                                           r"pulling or removing 'busy'"):
            pull(entry)
    finally:
        out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err
    assert hub.files("busy") == [cache.MODEL_FILE, cache.RECORD_FILE]
    assert pull(entry).status == "cached"


def test_full_disk_is_one_line_and_leaves_nothing(hub):
    import resource
    import signal

    body = reference_bytes(tiny_net(11))
    hub.add("big", body)

    def small_files():  # writes past 20 kB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    assert len(body) > 20_000
    proc = _pull_in_subprocess(hub, "big", preexec=small_files)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (out, err)
    assert err.count("\n") == 1 and "not enough disk space" in err, err
    assert hub.files("big") == []


def test_bad_registry_entries_are_named(tmp_path, monkeypatch):
    reg = tmp_path / "r.toml"
    monkeypatch.setenv(registry.REGISTRY_ENV, str(reg))
    for text, pattern in (
            ('[x]\nurl = "ftp://a/b"\n', "must start with https"),
            ('[x]\nurl = "https://a/b"\nsha256 = "abc"\n', "64 hexadecimal"),
            ('[x]\nbundled = "a"\nurl = "https://a/b"\n', "exactly one"),
            ('[x]\nurl = "https://a/b"\nfrobnicate = 1\n', "unknown key"),
            ('[x]\nurl = "https://a/b"\naliases = ["default"]\n', "belongs to both"),
            ("[x\n", "not valid TOML")):
        reg.write_text(text)
        with pytest.raises(UserError, match=pattern):
            registry.load_registry()


def test_bundled_registry_has_the_reference_models():
    entries = registry.load_registry()
    assert registry.lookup("notochord-latest.ckpt").url == (
        "https://github.com/Intelligent-Instruments-Lab/iil-python-tools/releases/download/"
        "notochord-v0.4.0/notochord_lakh_50G_deep.pt")
    assert registry.lookup("txala-latest.ckpt").url == (
        "https://github.com/Intelligent-Instruments-Lab/notochord/releases/download/"
        "notochord-v0.5.4/noto-txala-011-0020.ckpt")
    assert entries["default"].is_bundled
    assert Notochord.load("default").config == NotochordNet.load("default").config
