"""Hostile checkpoints: every one is refused with a CheckpointError, before any network is
built (fast, small), in our safetensors format and in the reference's pickle format; the
CLI prints one line and ``eval --json`` never prints invalid JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import FEW_FEATURES, tiny_config

from notochord_rt.errors import CheckpointError
from notochord_rt.model import checkpoint as ck
from notochord_rt.model.checkpoint_checks import MAX_HEADER_BYTES, expected_shapes
from notochord_rt.model.config import NotochordConfig
from notochord_rt.model.network import NotochordNet
from notochord_rt.train.evaluate import json_safe

torch.set_num_threads(1)

TINY = tiny_config(rnn_layers=2, **FEW_FEATURES)
ROOT = Path(__file__).resolve().parents[1]
MIDI = ROOT / "examples" / "midi" / "bach__bwv10.7_0.mid"
LOAD_BOUND_S = 1.0  # generous: these loads take milliseconds; building 16000-wide took 7 s


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "good.safetensors"
    NotochordNet(**TINY).save(path)
    return path


def variant(good: Path, out: Path, *, config: dict | None = None, config_text: str | None = None,
            mutate=None) -> Path:
    """A copy of ``good`` with config keys replaced (or the config text), tensors mutated."""
    tensors = load_file(str(good))
    meta = ck.read_metadata(good)
    if config is not None:
        meta["config"] = json.dumps({**json.loads(meta["config"]), **config})
    if config_text is not None:
        meta["config"] = config_text
    if mutate is not None:
        mutate(tensors)
    save_file(tensors, str(out), metadata=meta)
    return out


def refused(path: Path, match: str) -> CheckpointError:
    """Loading ``path`` raises a CheckpointError matching ``match``, within the time bound."""
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=match) as info:
        NotochordNet.load(path)
    elapsed = time.perf_counter() - start
    assert elapsed < LOAD_BOUND_S, f"refusing {path.name} took {elapsed:.2f} s"
    assert "\n" not in str(info.value)
    return info.value


# -- expected shapes -----------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    TINY,
    {**TINY, "mlp_layers": 0, "norm": None},
    {**TINY, "rnn_layers": 3, "mlp_layers": 2, "dropout": 0.0},
    {**TINY, "num_pitches": 88, "num_instruments": 16},
])
def test_expected_shapes_are_those_of_the_network(kw):
    config = NotochordConfig(**kw)
    net = NotochordNet(config)
    assert expected_shapes(config) == {k: tuple(v.shape) for k, v in net.state_dict().items()}


# -- our format ----------------------------------------------------------------------------
@pytest.mark.parametrize("change,match", [
    ({"rnn_hidden": 16000}, "rnn_hidden must be an integer in 1..8192, got 16000"),
    ({"rnn_hidden": 10**9}, "rnn_hidden must be an integer in 1..8192"),
    ({"emb_size": 10**18}, "emb_size"),
    ({"rnn_layers": 1000}, "rnn_layers"),
    ({"rnn_hidden": 8192}, r"has shape \([\d, ]+\), the config needs \([\d, ]*8192"),
    ({"time_bounds": [0, 1e308]}, r"time_bounds must lie within \[0, 3600\]"),
    ({"time_bounds": [0, float("nan")]}, "time_bounds must be finite"),
    ({"vel_bounds": [5, 1]}, "vel_bounds must be finite with lo < hi"),
    ({"time_res": 1e-300}, "time_res"),
    ({"time_wavelengths": [0, 30]}, "time_wavelengths"),
    ({"dropout": "lots"}, "dropout must be a number"),
    ({"norm": "batch"}, "norm must be"),
    ({"surprise": 1}, "unknown config keys: surprise"),
])
def test_bad_config_values_are_refused_before_building(good, tmp_path, change, match):
    path = variant(good, tmp_path / "bad.safetensors", config=change)
    assert path.stat().st_size < 1_000_000  # a small file: nothing big may be built from it
    refused(path, match)


@pytest.mark.parametrize("text,match", [
    ('{"extra": ' + "[" * 5000 + "]" * 5000 + "}", "nested deeper"),
    ('{"extra": ' + "[" * 20 + "]" * 20 + "}", "nested deeper than 8"),
    ('{"extra": "' + "x" * 80_000 + '"}', "characters long"),
    ("[1, 2]", "not a JSON object"),
    ("{not json", "not JSON"),
])
def test_hostile_config_json_is_refused(good, tmp_path, text, match):
    refused(variant(good, tmp_path / "bad.safetensors", config_text=text), match)


@pytest.mark.parametrize("mutate,match", [
    (lambda t: t.__setitem__("rnn.weight_hh_l0", t["rnn.weight_hh_l0"].long()),
     "rnn.weight_hh_l0 has dtype I64"),
    (lambda t: t.__setitem__("end_head.bias", torch.ones(2, dtype=torch.bool)),
     "end_head.bias has dtype BOOL"),
    (lambda t: t.__setitem__("end_head.bias", torch.zeros(2, 1)), "end_head.bias has shape"),
    (lambda t: t.pop("initial_state"), "missing initial_state"),
    (lambda t: t.__setitem__("pitch_emb.weight", torch.full((129, 16), float("nan"))),
     r"non-finite \(NaN or infinite\) values in pitch_emb.weight"),
    (lambda t: t["end_head.weight"].__setitem__((0, 0), float("inf")), "end_head.weight"),
])
def test_bad_tensors_are_refused(good, tmp_path, mutate, match):
    refused(variant(good, tmp_path / "bad.safetensors", mutate=mutate), match)


def test_half_precision_weights_still_load(good, tmp_path):
    path = variant(good, tmp_path / "half.safetensors",
                   mutate=lambda t: t.update({k: v.half() for k, v in t.items()}))
    net = NotochordNet.load(path)
    assert net.end_head.bias.dtype == torch.float32


def test_any_header_length_is_read_as_safetensors(good, tmp_path):
    """About one safetensors file in 256 has a header length whose first (little-endian)
    byte is 0x80, the first byte of a pickle; it must still load as safetensors."""
    meta, tensors = ck.read_metadata(good), load_file(str(good))
    path = tmp_path / "pad.safetensors"
    for pad in range(512):
        save_file(tensors, str(path), metadata={**meta, "pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    assert NotochordNet.load(path).config.rnn_hidden == TINY["rnn_hidden"]


def test_huge_announced_header_is_refused(good, tmp_path):
    data = bytearray(good.read_bytes())
    data[:8] = (MAX_HEADER_BYTES + 1).to_bytes(8, "little")
    path = tmp_path / "header.safetensors"
    path.write_bytes(bytes(data))
    refused(path, "header of")
    data[:8] = (len(data) + 10).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    refused(path, "runs past the end")


# -- reference format ----------------------------------------------------------------------
def reference_file(tmp_path: Path, hparams: dict, mutate=None) -> Path:
    """A reference-format checkpoint (pickle of kw + model_state), the state made by the
    reference package itself."""
    ref_mod = pytest.importorskip("notochord")
    torch.manual_seed(0)
    state = ref_mod.Notochord(**{**TINY, "kind": "gru"}).state_dict()
    if mutate is not None:
        mutate(state)
    path = tmp_path / "ref.ckpt"
    torch.save({"kw": {"model": hparams}, "model_state": state}, path)
    return path


@pytest.mark.reference
def test_reference_checkpoint_control_loads(tmp_path):
    assert NotochordNet.load(reference_file(tmp_path, TINY)).config.rnn_hidden == TINY["rnn_hidden"]


@pytest.mark.reference
@pytest.mark.parametrize("hparams,mutate,match", [
    ({**TINY, "rnn_hidden": 10**9}, None, "rnn_hidden must be an integer in 1..8192"),
    ({**TINY, "rnn_hidden": 4096}, None, "has shape"),
    ({**TINY, "time_bounds": (0, 1e308)}, None, "time_bounds must lie within"),
    ({**TINY, "emb_size": [[[[1]]]]}, None, "emb_size"),
    (TINY, lambda s: s.__setitem__("rnn.rnn.weight_hh_l0", s["rnn.rnn.weight_hh_l0"].long()),
     "rnn.weight_hh_l0 has dtype int64"),
    (TINY, lambda s: s["end_proj.bias"].fill_(float("nan")), "non-finite"),
    (TINY, lambda s: s.__setitem__("time_dist.hi", torch.zeros(3)), "not a single number"),
])
def test_hostile_reference_checkpoints_are_refused(tmp_path, hparams, mutate, match):
    refused(reference_file(tmp_path, hparams, mutate), match)


# -- the CLI -------------------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "notochord_rt", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_cli_refusals_are_one_line_and_eval_json_stays_json(good, tmp_path):
    huge = variant(good, tmp_path / "huge.safetensors", config={"rnn_hidden": 10**9})
    nan = variant(good, tmp_path / "nan.safetensors",
                  mutate=lambda t: t["inst_emb.weight"].fill_(float("nan")))

    def overflow(t):  # finite weights whose scores overflow: inf logits, NaN figures
        t["inst_head.out.weight"].fill_(3e38)
        t["inst_head.out.bias"][::2] = -3e38
    big = variant(good, tmp_path / "overflow.safetensors", mutate=overflow)

    for path, match in ((huge, "rnn_hidden"), (nan, "non-finite")):
        run = cli("eval", str(path), str(MIDI), "--json", "--no-progress", "--orders",
                  "canonical")
        assert run.returncode == 1, run.stderr
        assert run.stdout == ""  # nothing that could be taken for JSON
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and match in lines[0] and "Traceback" not in run.stderr
    run = cli("convert", str(huge), str(tmp_path / "out"))
    assert run.returncode == 1 or run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1

    run = cli("eval", str(big), str(MIDI), "--json", "--no-progress", "--orders", "canonical")
    assert run.returncode == 1, run.stderr
    figures = json.loads(run.stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert figures["nll"]["inst"] is None and figures["events"] > 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-finite figures" in lines[0] and "nll.inst" in lines[0]


def test_json_safe_replaces_every_non_finite_number():
    clean, bad = json_safe({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2},
                            "e": -float("inf"), "f": "text"})
    assert clean == {"a": None, "b": [1.0, None], "c": {"d": 2}, "e": None, "f": "text"}
    assert bad == ["a", "b[1]", "e"]
    json.dumps(clean, allow_nan=False)
