"""Training: config, schedule, the loop, atomic checkpoints, exact resume, divergence,
fine-tuning, bf16, the CLI and two-process DDP under torchrun. Tiny models, tiny data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_config

from notochord_rt.cli import main as cli_main
from notochord_rt.data.store import write_split
from notochord_rt.engine.sampling.sampler import Notochord
from notochord_rt.errors import UserError
from notochord_rt.events import EventArrays
from notochord_rt.train import checkpoints as ck
from notochord_rt.train import sources
from notochord_rt.train.batches import StepIndexer
from notochord_rt.train.config import TrainConfig, load_toml, merge
from notochord_rt.train.schedule import lr_factor
from notochord_rt.train.trainer import Trainer, TrainingDiverged

TINY = tiny_config()


def make_piece(rng: np.random.Generator, n: int) -> EventArrays:
    """A small two-instrument piece with note-ons and matching note-offs."""
    inst, pitch, time, vel = [], [], [], []
    t = 0.0
    for _ in range(n // 2):
        t += float(rng.choice([0.0, 0.125, 0.25, 0.5]))
        i = int(rng.choice([1, 41, 129]))
        p = int(rng.integers(48, 72))
        inst += [i, i]
        pitch += [p, p]
        time += [t, t + 0.1]
        vel += [int(rng.integers(40, 110)), 0]
    return EventArrays.build(inst, pitch, time, vel).sorted()


def make_data(root: Path, counts=(12, 4, 3), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, k in zip(("train", "valid", "test"), counts):
        pieces = [make_piece(rng, int(rng.integers(30, 90))) for _ in range(k)]
        write_split(root, split, pieces, [{"source": f"{split}{i}"} for i in range(k)])
    return root


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


def config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model=dict(TINY), batch_size=4, batch_len=16,
                valid_len=32, valid_batches=2, progress=False, lr=3e-3, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# -- configuration -------------------------------------------------------------------------
def test_toml_then_flags_precedence(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('data = "d"\nbatch_size = 8\n[train]\nlr = 0.001\n'
                    '[model]\nemb_size = 16\n[aug]\ntranspose = 0\n')
    cfg = merge(merge(TrainConfig(), load_toml(path)), {"lr": 0.01, "model": {"rnn_hidden": 8}})
    assert (cfg.data, cfg.batch_size, cfg.lr) == ("d", 8, 0.01)
    assert cfg.model == {"emb_size": 16, "rnn_hidden": 8} and cfg.aug == {"transpose": 0}
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_bad_config_is_named(tmp_path):
    with pytest.raises(UserError, match="bacth_size"):
        merge(TrainConfig(), {"bacth_size": 3})
    with pytest.raises(UserError, match="cosine schedule needs max_steps"):
        TrainConfig(data="x", schedule="cosine").validate()
    with pytest.raises(UserError, match="batch_len"):
        TrainConfig(data="x", batch_len=1).validate()
    (tmp_path / "bad.toml").write_text("lr = = 3")
    with pytest.raises(UserError, match="not valid TOML"):
        load_toml(tmp_path / "bad.toml")


def test_schedule_shapes():
    warm = [lr_factor(s, warmup_steps=10) for s in range(12)]
    assert warm[:10] == sorted(warm[:10]) and warm[9] == 1.0 and warm[0] < 0.2
    assert warm[10:] == [1.0, 1.0]
    cos = [lr_factor(s, schedule="cosine", warmup_steps=5, max_steps=105, min_ratio=0.1)
           for s in range(106)]
    assert all(a >= b for a, b in zip(cos[5:], cos[6:]))
    assert cos[5] == pytest.approx(1.0) and cos[105] == pytest.approx(0.1)
    assert cos[55] == pytest.approx(0.55)  # half way down the cosine


def test_step_indexer_covers_data_and_splits_ranks():
    ranks = [StepIndexer(10, 3, seed=1, rank=r, world_size=2) for r in range(2)]
    items = [i for s in range(5) for r in ranks for i in r.indices(s)]  # 30 = 3 passes
    for draw in range(3):
        assert sorted(k for d, k in items if d == draw) == list(range(10))
    assert set(ranks[0].indices(0)).isdisjoint(ranks[1].indices(0))
    assert ranks[0].indices(4) == StepIndexer(10, 3, seed=1, rank=0, world_size=2).indices(4)


def test_repeated_piece_gets_different_crops(data):
    ds = sources.open_dataset(str(data), "train", 16, {}, training=True)
    a, b = ds[(0, 3)], ds[(1, 3)]
    assert not all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], ds[(0, 3)][k]) for k in a)
    valid = sources.open_dataset(str(data), "valid", 8, {}, training=False)
    c, d = valid[(0, 1)], valid[(1, 1)]
    assert not all(torch.equal(c[k], d[k]) for k in c)  # other windows of the same piece
    assert torch.equal(c["vel"], c["vel"].round())  # not augmented (no dequantisation)


# -- the loop ------------------------------------------------------------------------------
def test_training_lowers_validation_nll_and_logs(data, tmp_path):
    trainer = Trainer(config(data, tmp_path / "run", max_steps=40, epoch_size=20))
    before = trainer.validate()
    summary = trainer.fit()
    trainer.close()
    after = summary["valid"]
    assert set(after) == {"inst", "pitch", "time", "vel", "end", "total"}
    assert after["total"] < before["total"] - 1.0
    assert summary["step"] == 40 and summary["epoch"] == 2
    steps = [s for s, _ in ck.list_checkpoints(tmp_path / "run" / ck.CHECKPOINTS)]
    assert steps == [20, 40]
    assert list((tmp_path / "run" / "logs").glob("events.out.tfevents.*"))
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-00000040" / "valid.json")
                       .read_text())
    assert saved["total"] == pytest.approx(after["total"])


def test_exact_resume_bit_for_bit(data, tmp_path):
    kw = dict(max_steps=12, schedule="cosine", warmup_steps=3, epoch_size=5)
    straight = Trainer(config(data, tmp_path / "a", **kw))
    straight.fit()
    straight.close()

    first = Trainer(config(data, tmp_path / "b", **kw))
    first.fit(until_step=6)  # stopped mid-epoch, as a killed run
    first.close()
    resumed = Trainer(config(data, tmp_path / "b", **kw), resume=True)
    assert resumed.step == 6
    resumed.fit()
    resumed.close()
    assert_same(weights(straight.model), weights(resumed.model))
    sa, sb = straight.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"])
    # and a resumed run is not trivially equal to a fresh one
    assert not torch.equal(straight.model.initial_state, first.model.initial_state)


@pytest.mark.slow
def test_exact_resume_with_a_loader_worker(data, tmp_path):
    # crops depend only on (seed, draw, piece), so a worker process changes nothing
    kw = dict(max_steps=4, num_workers=1)
    straight = Trainer(config(data, tmp_path / "a", **kw))
    straight.fit()
    straight.close()
    first = Trainer(config(data, tmp_path / "b", **kw))
    first.fit(until_step=2)
    first.close()
    resumed = Trainer(config(data, tmp_path / "b", **kw), resume=True)
    resumed.fit()
    resumed.close()
    assert_same(weights(straight.model), weights(resumed.model))
    in_process = Trainer(config(data, tmp_path / "c", max_steps=4))
    in_process.fit()
    in_process.close()
    assert_same(weights(straight.model), weights(in_process.model))


def test_failed_checkpoint_write_keeps_previous(data, tmp_path, monkeypatch):
    trainer = Trainer(config(data, tmp_path / "run", max_steps=3))
    trainer.fit()
    good = trainer.last_checkpoint
    good_weights = weights(trainer.model)

    def broken(path, **kw):  # dies half way through the state file
        Path(path).write_bytes(b"\x00" * 10)
        raise OSError("disk full")

    monkeypatch.setattr("notochord_rt.train.trainer.save_training_state", broken)
    trainer.train_step(next(trainer._train_batches(trainer.step)))
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    trainer.close()
    ckpt_dir = tmp_path / "run" / ck.CHECKPOINTS
    assert ck.latest_checkpoint(ckpt_dir) == good
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".tmp-")]
    assert_same(good_weights, weights(sources.load_model(good)))


KILLED_WRITER = """
import os, sys
import notochord_rt.train.trainer as T
from notochord_rt.train.config import TrainConfig
cfg = TrainConfig(**__import__("json").loads(sys.argv[1]))
trainer = T.Trainer(cfg)
trainer.fit(until_step=3)
def dying(path, **kw):
    open(path, "wb").write(b"half a file")
    os._exit(9)  # killed mid-write: no cleanup, no exception handlers
T.save_training_state = dying
trainer.fit(until_step=5)
"""


@pytest.mark.slow
def test_run_killed_mid_write_resumes_from_previous(data, tmp_path):
    cfg = config(data, tmp_path / "run", max_steps=5)
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WRITER)
    proc = subprocess.run([sys.executable, str(script), json.dumps(cfg.to_dict())],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 9, proc.stderr
    ckpt_dir = tmp_path / "run" / ck.CHECKPOINTS
    assert [p.name for p in ckpt_dir.iterdir() if p.name.startswith(".tmp-")]  # the debris
    assert ck.latest_checkpoint(ckpt_dir).name == "step-00000003"
    resumed = Trainer(cfg, resume=True)
    assert resumed.step == 3
    resumed.fit()
    resumed.close()
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".tmp-")]
    assert ck.latest_checkpoint(ckpt_dir).name == "step-00000005"


def test_non_finite_loss_stops_and_keeps_last_good(data, tmp_path):
    trainer = Trainer(config(data, tmp_path / "run", max_steps=20, checkpoint_every=2))
    trainer.fit(until_step=4)
    good = trainer.last_checkpoint
    good_weights = weights(trainer.model)
    with torch.no_grad():
        trainer.model.h_proj.out.weight.fill_(math.inf)
    with pytest.raises(TrainingDiverged, match="not finite") as info:
        trainer.fit()
    trainer.close()
    assert str(good) in str(info.value) and "step 5" in str(info.value)
    assert ck.latest_checkpoint(tmp_path / "run" / ck.CHECKPOINTS) == good
    restored = weights(sources.load_model(good))
    assert_same(good_weights, restored)
    assert all(torch.isfinite(v).all() for v in restored.values())


def test_fine_tune_with_frozen_rnn(data, tmp_path):
    base = Trainer(config(data, tmp_path / "base", max_steps=3))
    base.fit()
    base.close()
    tune = Trainer(config(data, tmp_path / "tune", max_steps=4, init_from=str(tmp_path / "base"),
                          freeze_rnn=True, model={}))
    assert_same(weights(tune.model), weights(base.model))  # starts from the checkpoint
    start = {k: p.detach().clone() for k, p in tune.model.named_parameters()}
    tune.fit()
    tune.close()
    for k, p in tune.model.named_parameters():
        frozen = k.startswith("rnn.") or k == "initial_state"
        assert torch.equal(start[k], p) == frozen, k


def test_init_from_can_add_pulse_components(data, tmp_path, caplog):
    """``--init-from X --model time_pulse=K`` widens the time mixture of X's weights (and
    says that other model options cannot change a trained architecture)."""
    base = Trainer(config(data, tmp_path / "base", max_steps=2))
    base.fit()
    base.close()
    with caplog.at_level("WARNING"):
        tune = Trainer(config(data, tmp_path / "tune", max_steps=2,
                              init_from=str(tmp_path / "base"),
                              model={"time_pulse": 2, "emb_size": 999, "time_pulse_fit": 4,
                                     "time_pulse_vote": 1, "time_res": 0.005}))
    assert "emb_size" in caplog.text
    c = tune.model.config
    assert (c.time_pulse, c.time_pulse_fit, c.time_pulse_vote, c.time_res) == (2, 4, 1, 0.005)
    assert tune.model.time_dist.res == 0.005
    assert tune.model.config.emb_size == base.model.config.emb_size
    tune.fit()
    tune.close()
    saved = sources.load_model(ck.latest_checkpoint(tmp_path / "tune" / ck.CHECKPOINTS))
    assert saved.config.time_pulse == 2


def test_init_from_takes_model_names(data, tmp_path, monkeypatch):
    """Trainer(init_from=NAME) resolves names as every --checkpoint does: "default" is the
    bundled model, a registry name not yet pulled is one clear line with the pull command."""
    from notochord_rt.hub.resolve import NotCached

    monkeypatch.setenv("NOTOCHORD_RT_HOME", str(tmp_path / "home"))
    tune = Trainer(config(data, tmp_path / "tune", max_steps=1, init_from="default", model={}))
    assert tune.model.config == Notochord.load("default").config
    tune.close()
    with pytest.raises(NotCached, match="models pull notochord-lakh"):
        Trainer(config(data, tmp_path / "tune2", max_steps=1, init_from="notochord-lakh",
                       model={}))


@pytest.mark.reference
def test_fine_tune_from_a_reference_checkpoint(data, tmp_path):
    notochord = pytest.importorskip("notochord")
    torch.manual_seed(1)
    hp = {**TINY, "kind": "gru"}
    ref = notochord.Notochord(**hp)
    path = tmp_path / "0007.ckpt"  # laid out like the reference trainer's checkpoints
    torch.save({"kw": {"model": hp}, "model_state": ref.state_dict()}, path)
    tune = Trainer(config(data, tmp_path / "tune", max_steps=3, init_from=str(path),
                          freeze_rnn=True, model={}))
    assert torch.equal(tune.model.inst_emb.weight, ref.instrument_emb.weight)
    assert torch.equal(tune.model.rnn.weight_hh_l0, ref.rnn.weight_hh_l0)
    summary = tune.fit()
    tune.close()
    assert math.isfinite(summary["valid"]["total"])
    assert torch.equal(tune.model.rnn.weight_hh_l0, ref.rnn.weight_hh_l0)  # frozen
    assert not torch.equal(tune.model.inst_emb.weight, ref.instrument_emb.weight)


def test_bf16_autocast_on_cpu(data, tmp_path):
    trainer = Trainer(config(data, tmp_path / "run", max_steps=3, precision="bf16"))
    assert trainer.amp_dtype == torch.bfloat16
    summary = trainer.fit()
    trainer.close()
    assert math.isfinite(summary["valid"]["total"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


# -- command line --------------------------------------------------------------------------
def test_cli_train_then_resume(data, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data = "{data}"\nbatch_size = 4\nvalid_batches = 1\n[model]\n'
                   + "\n".join(f"{k} = {v}" for k, v in TINY.items()) + "\n")
    args = ["train", "--config", str(cfg), "--out", str(out), "--batch-len", "12",
            "--max-steps", "2", "--no-progress", "--aug", "transpose=0", "--device", "cpu"]
    assert cli_main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2
    saved = json.loads((out / "config.json").read_text())
    assert saved["batch_len"] == 12 and saved["aug"] == {"transpose": 0}
    assert cli_main(["train", "--out", str(out), "--resume", "--max-steps", "4",
                     "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 4
    # the run folder is a checkpoint for eval (its latest: step 4)
    assert cli_main(["eval", str(out), str(data), "--split", "test", "--orders", "canonical",
                     "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pieces"] == 3 and math.isfinite(result["nll"]["total"])


def test_cli_user_errors(tmp_path, capsys):
    assert cli_main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "no prepared split" in capsys.readouterr().err
    assert cli_main(["train", "x", "--model", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert cli_main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_fresh_run_refuses_a_used_run_folder(data, tmp_path):
    first = Trainer(config(data, tmp_path / "run", max_steps=1))
    first.fit()
    first.close()
    with pytest.raises(UserError, match="already holds checkpoints"):
        Trainer(config(data, tmp_path / "run", max_steps=1))


# -- two processes under torchrun ------------------------------------------------------------
DDP_WORKER = """
import json, os, sys
import torch
from safetensors.torch import save_file
from notochord_rt.train.config import TrainConfig
from notochord_rt.train.trainer import Trainer
torch.set_num_threads(1)
cfg = TrainConfig(**json.loads(sys.argv[1]))
trainer = Trainer(cfg)
before = trainer.validate()
summary = trainer.fit()
rank = trainer.info.rank
state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
save_file(state, os.path.join(sys.argv[2], f"rank{rank}.safetensors"))
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
    json.dump({"before": before, "after": summary["valid"], "world": trainer.info.world_size,
               "events": summary["events"]}, f)
trainer.close()
"""


@pytest.mark.slow
def test_torchrun_two_cpu_processes(data, tmp_path):
    from safetensors.torch import load_file

    cfg = config(data, tmp_path / "run", max_steps=16, epoch_size=8, valid_batches=2)
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(DDP_WORKER))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), json.dumps(cfg.to_dict()), str(tmp_path)],
        capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert_same(w0, w1)
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert logs[0]["world"] == 2 and logs[0] == logs[1]
    assert logs[0]["after"]["total"] < logs[0]["before"]["total"] - 1.0
    # both ranks' crops counted: 16 steps x 2 ranks x 4 crops x up to 15 targets
    assert 16 * 2 * 4 * 5 < logs[0]["events"] <= 16 * 2 * 4 * 15
    assert ck.latest_checkpoint(tmp_path / "run" / ck.CHECKPOINTS).name == "step-00000016"


def test_motif_candidates_come_from_the_loader_workers(data, tmp_path):
    """With motif copying the data-loader (here one worker process) computes the motif
    candidates with the batch; the training loss is the one the network computes itself."""
    from notochord_rt.train import sources

    tr = Trainer(config(data, tmp_path / "m", max_steps=2, num_workers=1,
                        model={**TINY, "pitch_copy": 2}))
    batch = next(tr._train_batches(0))
    assert batch["motif_cand"].shape == (4, 15, 6) and batch["motif_valid"].any()
    plain = sources.collate([tr.train_set[i] for i in range(4)])
    assert "motif_cand" not in plain
    own = tr.model.motif_inputs(batch["inst"], batch["pitch"], batch["vel"])
    assert torch.equal(own[0], batch["motif_cand"]) and torch.equal(own[1], batch["motif_valid"])
    tr.model.eval()
    args = (batch["inst"], batch["pitch"], batch["time"], batch["vel"])
    with torch.no_grad():
        a = tr.model(*args, cond="vtip", motif_in=(batch["motif_cand"], batch["motif_valid"]))
        b = tr.model(*args, cond="vtip")
    for k in ("inst", "pitch", "time", "vel"):
        torch.testing.assert_close(a[k], b[k])
    tr.fit()
    tr.close()
    assert tr.step == 2
