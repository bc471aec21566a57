"""Checkpoints: our safetensors format, training state, safe reference import, convert CLI."""

import io
import json
import os
import pathlib
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import FEW_FEATURES, tiny_config

from notochord_rt.cli import main
from notochord_rt.errors import CheckpointError
from notochord_rt.model import checkpoint as ck
from notochord_rt.model.network import NotochordNet

torch.set_num_threads(1)

TINY = tiny_config(rnn_layers=2, **FEW_FEATURES)
SEQ = ([1, 129, 41], [60, 36, 72], [0.0, 0.1, 0.7], [90, 100, 0])


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    net = NotochordNet(**{**TINY, **kw})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-trivial heads
    return net


class Evil:
    """Unpickling this runs a shell command (the attack a weights-only load must refuse)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- our format ---------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    net = tiny()
    path = tmp_path / "m.safetensors"
    net.save(path, source="unit test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp left
    meta = ck.read_metadata(path)
    assert meta["source"] == "unit test" and json.loads(meta["config"])["emb_size"] == 16
    back = NotochordNet.load(path)
    assert back.config == net.config and not back.training
    for (k, v), (k2, v2) in zip(net.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    a, b = net.score(*SEQ), back.score(*SEQ)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


class Sub(NotochordNet):
    pass


def test_load_builds_the_subclass(tmp_path):
    tiny().save(tmp_path / "m.safetensors")
    assert type(Sub.load(tmp_path / "m.safetensors")) is Sub


def _rewrite(path, out, mutate, meta=None):
    tensors = load_file(str(path))
    mutate(tensors)
    save_file(tensors, str(out), metadata=meta if meta is not None else ck.read_metadata(path))


@pytest.mark.parametrize("mutate,match", [
    (lambda t: t.pop("end_head.bias"), "missing end_head.bias"),
    (lambda t: t.__setitem__("bogus.weight", torch.zeros(2)), "unexpected bogus.weight"),
    (lambda t: t.__setitem__("end_head.bias", torch.zeros(3)), "end_head.bias has shape"),
])
def test_strict_loading_names_the_problem(tmp_path, mutate, match):
    path = tmp_path / "m.safetensors"
    tiny().save(path)
    bad = tmp_path / "bad.safetensors"
    _rewrite(path, bad, mutate)
    with pytest.raises(CheckpointError, match=match):
        NotochordNet.load(bad)


def test_bad_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        NotochordNet.load(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="folder"):
        NotochordNet.load(tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello, this is not a model at all")
    with pytest.raises(CheckpointError):
        NotochordNet.load(junk)
    path = tmp_path / "m.safetensors"
    tiny().save(path)
    foreign = tmp_path / "foreign.safetensors"
    _rewrite(path, foreign, lambda t: None, meta={"framework": "other"})
    with pytest.raises(CheckpointError, match="not a notochord-rt checkpoint"):
        NotochordNet.load(foreign)
    badcfg = tmp_path / "badcfg.safetensors"
    meta = ck.read_metadata(path)
    meta["config"] = json.dumps({**json.loads(meta["config"]), "emb_size": -1})
    _rewrite(path, badcfg, lambda t: None, meta=meta)
    with pytest.raises(CheckpointError, match="bad config"):
        NotochordNet.load(badcfg)


def test_default_name_is_reserved():
    try:
        path = ck.default_checkpoint()
    except CheckpointError as e:
        assert "default" in str(e)
        with pytest.raises(CheckpointError, match="default"):
            NotochordNet.load("default")
    else:  # once a bundled model ships, it must load
        assert isinstance(NotochordNet.load("default"), NotochordNet) and path.is_file()


def test_failed_write_leaves_old_file_intact(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old")

    def boom(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ck.atomic_write(path, boom)
    assert path.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


# -- training state -----------------------------------------------------------------------
def test_training_state_round_trip_restores_optimizer_and_rng(tmp_path):
    net = tiny()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    out = net(*(torch.tensor([[0, *x]]) for x in SEQ[:2]),
              torch.tensor([[0.0, *SEQ[2]]]), torch.tensor([[0.0, *map(float, SEQ[3])]]))
    (-out["inst"].sum()).backward()
    opt.step()
    path = ck.training_state_path(tmp_path / "run.safetensors")
    assert path.name == "run.train.pt"
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ck.save_training_state(path, optimizer=opt.state_dict(), step={"iteration": 7, "epoch": 1})
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    state = ck.load_training_state(path)
    assert state["step"] == {"iteration": 7, "epoch": 1}
    opt2 = torch.optim.AdamW(net.parameters(), lr=5.0)
    opt2.load_state_dict(state["optimizer"])
    assert opt2.param_groups[0]["lr"] == 1e-3
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    ck.restore_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_training_state_loader_refuses_code_and_foreign_files(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.train.pt"
    torch.save({"format": ck.TRAIN_FORMAT, "x": Evil(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        ck.load_training_state(evil)
    assert not marker.exists()
    other = tmp_path / "other.pt"
    torch.save({"hello": 1}, other)
    with pytest.raises(CheckpointError, match="training-state"):
        ck.load_training_state(other)


# -- reference checkpoints (no reference package needed) ----------------------------------
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_tampered_reference_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"kw": {"model": {}}, "model_state": {}, "x": Evil(marker)}
    path = tmp_path / "evil.ckpt"
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="refused.*could run arbitrary code"):
        NotochordNet.load(path)
    assert not marker.exists()
    assert main(["convert", str(path), str(tmp_path / "out")]) == 1
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_reference_with_unknown_backbone_or_keys_is_refused(tmp_path):
    path = tmp_path / "lstm.ckpt"
    torch.save({"kw": {"model": {"kind": "lstm"}}, "model_state": {}}, path)
    with pytest.raises(CheckpointError, match="GRU"):
        NotochordNet.load(path)
    torch.save({"kw": {"model": {"emb_size": 8}}, "model_state": {"weird.weight": torch.zeros(1)}},
               path)
    with pytest.raises(CheckpointError, match="unknown reference tensors: weird.weight"):
        NotochordNet.load(path)
    torch.save({"weights": {}}, path)
    with pytest.raises(CheckpointError, match="no model_state"):
        NotochordNet.load(path)


# -- reference checkpoints written by the reference package --------------------------------
def reference_checkpoint(tmp_path, numpy1_names=False):
    """A checkpoint laid out like the reference trainer's ``save`` (paths, numpy RNG, AdamW)."""
    ref_mod = pytest.importorskip("notochord")
    hp = {**TINY, "kind": "gru"}
    torch.manual_seed(0)
    ref = ref_mod.Notochord(**hp)
    opt = torch.optim.AdamW(ref.parameters())
    payload = dict(
        kw=dict(model=hp, data_dir=pathlib.Path("/data/lakh"), lr=np.float64(3e-4)),
        model_state=ref.state_dict(), optimizer_state=opt.state_dict(), step=(0, 0, 0),
        random_state=(random.getstate(), np.random.get_state(), torch.get_rng_state()))
    path = tmp_path / "0000.ckpt"
    torch.save(payload, path)
    if numpy1_names:  # rewrite the pickled module names the way numpy 1.x wrote them
        buf = io.BytesIO()
        with zipfile.ZipFile(path) as zin, zipfile.ZipFile(buf, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                if item.filename.endswith("data.pkl"):
                    assert b"numpy._core.multiarray" in data
                    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                zout.writestr(item, data)
        path.write_bytes(buf.getvalue())
    return ref, path


@pytest.mark.reference
@pytest.mark.parametrize("numpy1_names", [False, True])
def test_reference_trainer_checkpoint_loads_safely(tmp_path, numpy1_names):
    ref, path = reference_checkpoint(tmp_path, numpy1_names)
    net = NotochordNet.load(path)
    assert net.config.emb_size == 16 and net.config.extra["converted_from"] == "0000.ckpt"
    torch.testing.assert_close(net.inst_emb.weight, ref.instrument_emb.weight)
    torch.testing.assert_close(net.time_head.out.weight, ref.projections[2].net[-1].weight)
    torch.testing.assert_close(net.time_emb.freqs, ref.time_emb.fs)
    torch.testing.assert_close(net.initial_state, ref.initial_state[0])


@pytest.mark.reference
def test_convert_cli(tmp_path, capsys):
    _, ref_path = reference_checkpoint(tmp_path)
    out = tmp_path / "conv"
    assert main(["convert", str(ref_path), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    converted = NotochordNet.load(tmp_path / "conv.safetensors")
    direct = NotochordNet.load(ref_path)
    a, b = converted.score(*SEQ), direct.score(*SEQ)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert main(["convert", str(ref_path), str(out)]) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(ref_path), str(out), "--force"]) == 0
    assert main(["convert", str(tmp_path / "missing.ckpt"), str(out)]) == 2
