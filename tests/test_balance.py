"""Balanced sampling: piece groups from a real prepared store, weights, the weighted step
sampler (deterministic, resume-exact), the trainer's ``--balance`` and ``corpus stats``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from midifiles import bpm, notes_track, write_midi_bytes
from tiny import tiny_config

from notochord_rt.cli import main as cli_main
from notochord_rt.data import balance
from notochord_rt.data.prep.pipeline import prepare
from notochord_rt.data.store import EventStore, write_split
from notochord_rt.errors import UserError
from notochord_rt.events import EventArrays
from notochord_rt.train.config import TrainConfig
from notochord_rt.train.trainer import Trainer

Q = 480


def melody(k: int, n: int = 40) -> list[tuple[int, int, int, int]]:
    return [(i * Q // 2, Q // 2 - 10, 60 + (i * (k + 3)) % 14, 70 + k) for i in range(n)]


def solo_file(k: int) -> bytes:
    return write_midi_bytes([[(0, bpm(100 + k))],
                             notes_track(melody(k), channel=0, program=40 + k)], Q)


def band_file(k: int) -> bytes:
    bass = [(i * Q, Q - 10, 36 + (i * (k + 2)) % 7, 90) for i in range(20)]
    hits = [(i * Q // 2, Q // 4, (36, 42)[i % 2], 100 - k) for i in range(40)]
    return write_midi_bytes([[(0, bpm(110 + k))],
                             notes_track(melody(k), channel=0, program=0),
                             notes_track(bass, channel=1, program=33),
                             notes_track(hits, channel=9)], Q)


def drums_file(k: int) -> bytes:
    hits = [(i * Q // 2, Q // 4, (36, 38, 42)[i % 3], 90 + k) for i in range(48)]
    return write_midi_bytes([[(0, bpm(120 + k))], notes_track(hits, channel=9)], Q)


KINDS = {"solo": (solo_file, 4), "band": (band_file, 3), "drums": (drums_file, 2)}
EXPECTED = {"solo": "single", "band": "multi", "drums": "drums"}


@pytest.fixture(scope="module")
def prepped(tmp_path_factory):
    src = tmp_path_factory.mktemp("midi")
    for name, (make, count) in KINDS.items():
        for k in range(count):
            (src / f"{name}{k}.mid").write_bytes(make(k))
    dest = tmp_path_factory.mktemp("prep")
    prepare([src], dest, jobs=1)
    return dest


def groups_by_name(root) -> dict[str, str]:
    out = {}
    for split in ("train", "valid", "test"):
        try:
            store = EventStore(root, split)
        except FileNotFoundError:
            continue
        kinds = balance.piece_kinds(store)
        for rec, g in zip(store.records(), kinds.group):
            out[rec["path"].rsplit("/", 1)[-1]] = balance.GROUPS[g]
    return out


def test_piece_groups_of_a_real_store(prepped):
    groups = groups_by_name(prepped)
    assert len(groups) == 9  # every file became a piece
    for name, group in groups.items():
        assert group == EXPECTED[name.removesuffix(".mid").rstrip("0123456789")], name
    stats = balance.corpus_stats(prepped)
    assert stats["pieces"] == 9
    assert (stats["single_instrument"], stats["multi_instrument"], stats["drums_only"]) \
        == (4, 3, 2)
    assert stats["with_drums"] == 5
    # programs 40..43, piano 0, bass 33 and the standard kit
    assert stats["instrument_ids"] == stats["named_programs"] == 7
    assert stats["crop_share"]["none"]["single"] == pytest.approx(4 / 9, abs=1e-4)
    assert stats["crop_share"]["ensemble"]["drums"] == pytest.approx(0.05 / 2.05, abs=1e-4)
    assert stats["hours"] > 0 and stats["events"] > 9 * 64


def test_weights_balance_the_groups(prepped):
    store = EventStore(prepped, "train")
    kinds = balance.piece_kinds(store)
    w = balance.piece_weights(store, "ensemble")
    assert w is not None and w.sum() == pytest.approx(1.0)
    present = [g for g in range(3) if (kinds.group == g).any()]
    shares = {g: w[kinds.group == g].sum() for g in present}
    total = sum(balance.ENSEMBLE[balance.GROUPS[g]] for g in present)
    for g in present:
        assert shares[g] == pytest.approx(balance.ENSEMBLE[balance.GROUPS[g]] / total)
        assert np.allclose(w[kinds.group == g], w[kinds.group == g][0])  # equal within
    assert balance.piece_weights(store, "none") is None
    only = balance.piece_weights(store, "single=1,multi=0,drums=0")
    assert np.all((only > 0) == (kinds.group == 0))


def test_bad_balance_values_are_named():
    for bad in ("solo=1", "single=-1", "single=0,multi=0", "bogus", "single=x"):
        with pytest.raises(UserError, match="balance"):
            balance.parse_balance(bad)
    with pytest.raises(UserError, match="no weight"):  # only drum pieces, drums share 0
        balance.group_weights(np.array([2, 2]), {"single": 1, "multi": 1, "drums": 0})
    with pytest.raises(UserError, match="balance"):
        TrainConfig(data="d", balance="half").validate()


def test_weighted_indexer_is_deterministic_and_resumes_exactly():
    w = np.array([0.5, 0.25, 0.125, 0.125, 0.0])
    a = balance.WeightedStepIndexer(w, 3, seed=7)
    b = balance.WeightedStepIndexer(w, 3, seed=7)
    steps = [a.indices(s) for s in range(40)]
    resumed = b.iter_from(17)  # a fresh sampler started at step 17: same batches
    assert [next(resumed) for _ in range(23)] == steps[17:]
    assert steps != [balance.WeightedStepIndexer(w, 3, seed=8).indices(s) for s in range(40)]
    draws = [d for step in steps for d, _ in step]
    assert draws == list(range(120))  # every item its own crop, even a repeated piece
    pieces = np.array([k for step in steps for _, k in step])
    assert not (pieces == 4).any()  # weight 0: never drawn
    # systematic sampling: every pass of 5 items holds piece 0 two or three times
    for e in range(24):
        counts = np.bincount(a.pass_pieces(e), minlength=5)
        assert counts[0] in (2, 3) and counts.sum() == 5
    freq = np.bincount(pieces, minlength=5) / len(pieces)
    assert np.allclose(freq, w, atol=0.06)
    r0 = balance.WeightedStepIndexer(w, 2, seed=1, rank=0, world_size=2).indices(5)
    r1 = balance.WeightedStepIndexer(w, 2, seed=1, rank=1, world_size=2).indices(5)
    assert {d for d, _ in r0}.isdisjoint(d for d, _ in r1)
    with pytest.raises(ValueError):
        balance.WeightedStepIndexer([0.0, 0.0], 2)


def piece(insts: tuple[int, ...], n: int, seed: int) -> EventArrays:
    rng = np.random.default_rng(seed)
    rows = []
    for j in range(n // 2):
        i = insts[j % len(insts)]
        p, t = int(rng.integers(48, 72)), 0.125 * j
        rows += [(i, p, t, int(rng.integers(40, 110))), (i, p, t + 0.1, 0)]
    inst, pitch, time, vel = zip(*rows)
    return EventArrays.build(inst, pitch, time, vel).sorted()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train = [piece((1,), 40, 0), piece((41,), 50, 1), piece((1, 41, 129), 60, 2),
             piece((129,), 40, 3), piece((1, 34), 44, 4), piece((74,), 36, 5)]
    write_split(root, "train", train, [{"path": f"p{k}"} for k in range(len(train))])
    write_split(root, "valid", train[:2], [{"path": "v0"}, {"path": "v1"}])
    return root


def run_config(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), batch_size=4, batch_len=16, valid_len=32,
                valid_batches=1, progress=False, lr=3e-3, device="cpu", balance="ensemble",
                model=tiny_config())
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_trainer_balanced_run_resumes_bit_for_bit(data, tmp_path):
    torch.set_num_threads(1)
    straight = Trainer(run_config(data, tmp_path / "a", max_steps=6))
    assert isinstance(straight.indexer, balance.WeightedStepIndexer)
    drawn = np.array([k for s in range(200) for _, k in straight.indexer.indices(s)])
    drums = np.isin(drawn, [3])
    assert drums.mean() < 0.05  # down-weighted from 1/6 uniform
    straight.fit()
    straight.close()
    first = Trainer(run_config(data, tmp_path / "b", max_steps=6))
    first.fit(until_step=3)
    first.close()
    resumed = Trainer(run_config(data, tmp_path / "b", max_steps=6), resume=True)
    assert resumed.step == 3
    resumed.fit()
    resumed.close()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    uniform = Trainer(run_config(data, tmp_path / "c", max_steps=6, balance="none"))
    assert not isinstance(uniform.indexer, balance.WeightedStepIndexer)
    uniform.close()


def test_cli_stats_and_balance_flag(prepped, capsys):
    from notochord_rt.cli import build_parser
    from notochord_rt.cli.train import build_config

    assert cli_main(["corpus", "stats", str(prepped)]) == 0
    out = capsys.readouterr().out
    assert "| single-instrument pieces | 4 |" in out and "| drum-only pieces | 2 |" in out
    args = build_parser().parse_args(["train", "d", "--balance", "ensemble"])
    assert build_config(args).balance == "ensemble"


def test_make_loader_draws_by_weights(data):
    from notochord_rt.data.dataset import CropDataset, make_loader
    from notochord_rt.errors import InputError

    ds = CropDataset(data, "train", batch_len=8, mode="valid")
    w = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    seen = [list(make_loader(ds, 6, seed=3, weights=w).sampler) for _ in range(2)]
    assert seen[0] == seen[1] and set(seen[0]) <= {2, 5}  # seeded, and only weighted pieces
    with pytest.raises(InputError, match="weights"):
        make_loader(ds, 2, weights=np.ones(3))
