"""Training crops and augmentation (data/dataset.py, data/augment.py) on tiny synthetic stores."""

import pickle
from collections import defaultdict

import numpy as np
import pytest
import torch

from notochord_rt import events as ev
from notochord_rt.data import augment as aug
from notochord_rt.data.dataset import CropDataset, frame, make_loader, read_window
from notochord_rt.data.store import EventStore, write_split
from notochord_rt.errors import InputError, UserError

INSTS = (1, 41, 129, 257, 258, 290)  # named melodic, named melodic, kit, 2 anon, anon kit


def make_piece(rng, n_notes, insts=INSTS, lo=30, hi=90, chord=0):
    """A valid piece: per (inst, pitch) notes never overlap; includes re-strikes at the
    instant of the previous release, sub-millisecond notes and (optionally) big chords."""
    inst = rng.choice(insts, n_notes)
    pitch = rng.integers(lo, hi + 1, n_notes)
    onset = np.round(rng.uniform(0, n_notes * 0.05, n_notes), 3)
    dur = rng.choice([0.0004, 0.002, 0.1, 0.5], n_notes)
    if chord:  # `chord` simultaneous notes at t = 1 s on distinct pitches of one instrument
        inst[:chord], pitch[:chord], onset[:chord] = 1, np.arange(chord) + 20, 1.0
    # make notes of one key sequential: each starts no earlier than the previous one ends
    order = np.lexsort((onset, pitch, inst))
    inst, pitch, onset, dur = inst[order], pitch[order], onset[order], dur[order]
    on, off = onset.copy(), onset + dur
    for j in range(1, n_notes):
        if inst[j] == inst[j - 1] and pitch[j] == pitch[j - 1] and on[j] < off[j - 1]:
            on[j] = off[j - 1]  # re-strike exactly at the release
            off[j] = on[j] + dur[j]
    vel = rng.integers(1, 128, n_notes)
    piece = ev.EventArrays.build(np.r_[inst, inst], np.r_[pitch, pitch], np.r_[on, off],
                                 np.r_[vel, np.zeros(n_notes)])
    return piece.sorted()


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("store")
    pieces = [ev.EventArrays.empty(), make_piece(rng, 2), make_piece(rng, 40),
              make_piece(rng, 300, chord=40), make_piece(rng, 1000)]
    write_split(root, "train", pieces, [{"k": k} for k in range(len(pieces))])
    write_split(root, "valid", pieces[2:4], [{}, {}])
    return root


def framed(piece, T):
    """[start] + piece (deltas) + T-1 padding, the sequence crops are cut from."""
    n = len(piece)
    out = {
        "inst": np.r_[0, piece.inst, np.zeros(T - 1)],
        "pitch": np.r_[128, piece.pitch, np.zeros(T - 1)],
        "time": np.r_[0.0, piece.deltas(), np.zeros(T - 1)].astype(np.float32),
        "vel": np.r_[0.0, piece.vel, np.zeros(T - 1)],
        "end": (np.arange(n + T) >= n).astype(np.float32),
        "mask": np.arange(n + T) <= n,
    }
    return out


def crop_offset(item, full, T):
    """Offsets at which item is an exact window of the framed sequence."""
    n = len(full["inst"]) - T
    return [s for s in range(n + 1) if all(
        np.array_equal(item[key].numpy(), full[key][s:s + T].astype(item[key].numpy().dtype))
        for key in item)]


def check_pairs(inst, pitch, vel):
    """Per (inst, pitch): on/off strictly alternate starting with a note-on."""
    state = defaultdict(bool)
    for i, p, v in zip(inst.tolist(), pitch.tolist(), vel.tolist()):
        on = v >= ev.NOTE_ON_MIN_VEL
        assert state[i, p] != on, f"{'double note-on' if on else 'orphan note-off'} at {i},{p}"
        state[i, p] = on


# -- dataset items ---------------------------------------------------------------------------
def test_batch_shapes_dtypes_and_invariants(store_root):
    ds = CropDataset(store_root, "train", batch_len=16, seed=3)
    batch = next(iter(make_loader(ds, batch_size=5, shuffle=False)))
    dtypes = {"inst": torch.int64, "pitch": torch.int64, "time": torch.float32,
              "vel": torch.float32, "end": torch.float32, "mask": torch.bool}
    assert set(batch) == set(dtypes)
    for key, dtype in dtypes.items():
        assert batch[key].shape == (5, 16) and batch[key].dtype == dtype, key
    for epoch in range(30):
        ds.set_epoch(epoch)
        for k in range(len(ds)):
            it = ds[k]
            mask, end = it["mask"].numpy(), it["end"].numpy()
            assert np.all(np.diff(mask.astype(int)) <= 0)  # real positions, then padding
            assert np.all(np.diff(end) >= 0) and np.all(end[~mask] == 1)
            assert (end[mask] == 1).sum() <= 1  # only the last real event carries end
            if (~mask).any():  # the piece ends inside the crop: its last event has end = 1
                assert end[mask][-1] == 1
            for key in ("inst", "pitch", "time", "vel"):
                assert np.all(it[key].numpy()[~mask] == 0), key
            real = mask & (it["inst"].numpy() > 0)
            assert np.all(it["time"].numpy() >= 0)
            assert np.all((it["inst"].numpy()[real] >= 1) & (it["inst"].numpy()[real] <= 320))
            assert np.all((it["pitch"].numpy()[real] >= 0) & (it["pitch"].numpy()[real] <= 127))
            if it["inst"][0] == 0 and mask[0]:  # a crop that begins the piece
                assert it["pitch"][0] == ev.START_PITCH and it["time"][0] == 0
                assert it["vel"][0] == 0


def test_test_mode_is_start_plus_first_events_exactly(store_root):
    store = EventStore(store_root, "train")
    T = 8
    ds = CropDataset(store, batch_len=T, mode="test")
    assert not ds.augment.enabled
    for k in range(len(store)):
        it, full = ds[k], framed(store[k], T)
        assert crop_offset(it, full, T)[:1] == [0]
        assert tuple(ev.START_EVENT) == (it["inst"][0], it["pitch"][0], it["time"][0], it["vel"][0])
    short = ds[1]  # 2 notes = 4 events, shorter than T - 1: padded
    assert short["mask"].tolist() == [True] * 5 + [False] * 3
    assert short["end"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    empty = ds[0]
    assert empty["mask"].sum() == 1 and empty["end"].sum() == T


def test_unaugmented_train_crops_are_windows_covering_every_start(store_root):
    store = EventStore(store_root, "train")
    T = 6
    ds = CropDataset(store, batch_len=T, augment=aug.Augment.none(), seed=5)
    full = framed(store[2], T)
    seen = set()
    for epoch in range(400):
        ds.set_epoch(epoch)
        offsets = crop_offset(ds[2], full, T)
        assert offsets, "crop is not a window of [start] + piece + padding"
        assert ds.plan(2)[0] in offsets
        seen.add(ds.plan(2)[0])
    assert seen == set(range(len(store[2]) + 1))  # the start and the end both get cropped


@pytest.mark.parametrize("opts", [
    aug.Augment(transpose=0, remap=False),  # windowing is exact for per-event randomness
    aug.Augment(transpose=0, remap=False, jitter=0.02, speed=0.5),
])
def test_window_augmentation_equals_whole_piece_augmentation(store_root, opts):
    store = EventStore(store_root, "train")
    T = 12
    ds = CropDataset(store, batch_len=T, augment=opts, seed=11)
    for k in (3, 4):  # the chord of 40 simultaneous notes straddles many windows
        piece, n = store[k], store.length(k)
        for epoch in range(60):
            ds.set_epoch(epoch)
            start, draws = ds.plan(k)
            whole = frame(aug.apply(piece, opts, draws, first=0), 0, n, start, T)
            item = ds[k]
            for key in item:
                assert torch.equal(item[key], whole[key]), (k, epoch, key)


def test_read_window_lie_in_wide_gaps(store_root):
    store = EventStore(store_root, "train")
    t = store[3].time
    for lo, hi in ((0, 5), (30, 41), (50, 70), (len(t) - 3, len(t))):
        for gap in (0.0, 0.002, 0.3):
            a, window = read_window(store, 3, lo, hi, gap)
            b = a + len(window)
            assert np.array_equal(window.time, t[a:b])
            assert a <= lo and b >= hi
            assert a == 0 or t[a] - t[a - 1] > gap
            assert b == len(t) or t[b] - t[b - 1] > gap


def test_valid_windows_fixed_train_crops_vary_and_seeds_reproduce(store_root):
    def items(ds, epoch):
        ds.set_epoch(epoch)
        return [ds[k] for k in range(len(ds))]

    def same(a, b):
        return all(torch.equal(x[key], y[key]) for x, y in zip(a, b) for key in x)

    train = CropDataset(store_root, "train", batch_len=16, seed=7)
    again = CropDataset(store_root, "train", batch_len=16, seed=7)
    other = CropDataset(store_root, "train", batch_len=16, seed=8)
    assert same(items(train, 2), items(again, 2))
    assert not same(items(train, 2), items(train, 3))
    assert not same(items(train, 2), items(other, 2))
    valid = CropDataset(store_root, "valid", batch_len=16, seed=7)
    assert valid.mode == "valid" and not valid.augment.enabled
    assert same(items(valid, 0), items(valid, 5))


@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.slow
def test_two_persistent_workers_match_single_process(store_root, context):
    ds = CropDataset(store_root, "train", batch_len=16, seed=2)
    loader = make_loader(ds, batch_size=2, shuffle=False, num_workers=2,
                         multiprocessing_context=context)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        got = list(loader)
        want = [ds[k] for k in range(len(ds))]
        assert sum(len(b["inst"]) for b in got) == len(ds)
        for key in want[0]:
            assert torch.equal(torch.cat([b[key] for b in got]),
                               torch.stack([w[key] for w in want])), (epoch, key)
        if epoch == 0:
            first = torch.cat([b["time"] for b in got])
    assert not torch.equal(first, torch.cat([b["time"] for b in got]))  # epochs differ


def test_pickles_without_data_and_reopens(store_root):
    ds = CropDataset(store_root, "train", batch_len=16, seed=4)
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # the memory maps are not copied
    clone = pickle.loads(blob)
    for k in range(len(ds)):
        assert all(torch.equal(ds[k][key], clone[k][key]) for key in ds[k])


def test_bad_arguments_and_bad_data(tmp_path, store_root):
    with pytest.raises(UserError, match="no prepared split"):
        CropDataset(tmp_path, "train")
    with pytest.raises(InputError, match="batch_len"):
        CropDataset(store_root, "train", batch_len=0)
    with pytest.raises(InputError, match="mode"):
        CropDataset(store_root, "train", mode="eval")
    with pytest.raises(InputError, match="speed"):
        aug.Augment(speed=1.0)
    with pytest.raises(InputError, match="transpose"):
        aug.Augment(transpose=-1)
    bad = ev.EventArrays.build([1, 400], [60, 60], [0.0, 1.0], [80, 0])
    write_split(tmp_path, "train", [bad], [{}])
    with pytest.raises(UserError, match="piece 0 .*instrument ids 1..400"):
        CropDataset(tmp_path, "train", mode="test")[0]


# -- augmentations one by one ---------------------------------------------------------------
def augment_with(piece, seed, **on):
    opts = aug.Augment(**{**aug.Augment.none().__dict__, **on})
    return aug.apply(piece, opts, opts.draw(np.random.default_rng(seed)))


@pytest.fixture(scope="module")
def piece():
    # few keys, so many notes are re-struck at the very instant of their previous release
    return make_piece(np.random.default_rng(0), 150, lo=60, hi=64)


def test_everything_off_is_identity(piece):
    out = augment_with(piece, 0)
    for a, b in zip(out, piece):
        assert np.array_equal(a, b)


def test_transpose_moves_melodic_parts_only_and_stays_in_range():
    rng = np.random.default_rng(3)
    piece = ev.EventArrays.build(
        [1, 257, 129, 290, 1, 257], [2, 125, 0, 127, 60, 64], [0, 0.5, 1, 1.5, 2, 2.5],
        [90, 90, 90, 90, 0, 0])
    shifts = set()
    for seed in range(300):
        out = augment_with(piece, seed, transpose=5)
        drum = ev.is_drum(out.inst)
        assert np.array_equal(out.pitch[drum], piece.pitch[drum])
        diff = set((out.pitch[~drum] - piece.pitch[~drum]).tolist())
        assert len(diff) == 1  # one shift for the whole piece
        shifts |= diff
        for name in ("inst", "time", "vel"):
            assert np.array_equal(getattr(out, name), getattr(piece, name))
    assert shifts == {-2, -1, 0, 1, 2}  # limited by pitch 2 below and 125 above
    wide = make_piece(rng, 50, lo=40, hi=80)
    melodic = ev.is_melodic(wide.inst)
    assert {int(np.unique((augment_with(wide, s, transpose=5).pitch - wide.pitch)[melodic])[0])
            for s in range(200)} == set(range(-5, 6))


def test_remap_is_consistent_injective_and_kind_preserving():
    names = list(range(1, 11)) + list(range(129, 139))
    insts = names + [257, 260, 289, 300]
    rng = np.random.default_rng(4)
    piece = make_piece(rng, 400, insts=insts)
    anonymised, slots_of_257 = 0, set()
    for seed in range(150):
        out = augment_with(piece, seed, remap=True)
        assert np.array_equal(out.pitch, piece.pitch) and np.array_equal(out.time, piece.time)
        pairs = set(zip(piece.inst.tolist(), out.inst.tolist()))
        src = [a for a, _ in pairs]
        dst = [b for _, b in pairs]
        assert len(set(src)) == len(pairs) and len(set(dst)) == len(pairs)  # a bijection
        for a, b in pairs:
            assert bool(ev.is_drum(a)) == bool(ev.is_drum(b))
            if ev.is_anonymous(a):
                assert ev.is_anonymous(b)
            else:
                assert b == a or ev.is_anonymous(b)
                anonymised += b != a
            if a == 257:
                slots_of_257.add(b)
    rate = anonymised / (150 * len(names))
    assert 0.07 < rate < 0.13, rate
    assert len(slots_of_257) > 20
    every = augment_with(piece, 0, remap=True, anon_prob=1.0)
    assert ev.is_anonymous(every.inst).all()
    assert len(np.unique(every.inst)) == len(insts)


def test_tempo_scales_all_times_by_one_factor(piece):
    factors = []
    for seed in range(50):
        out = augment_with(piece, seed, speed=0.1)
        ratio = out.time[1:] / piece.time[1:]
        assert np.allclose(ratio, ratio[0], rtol=1e-12)
        factors.append(ratio[0])
        assert np.array_equal(out.inst, piece.inst) and np.array_equal(out.vel, piece.vel)
    assert 0.9 <= min(factors) < 0.95 and 1.05 < max(factors) <= 1.1


def test_jitter_direction_bounds_and_note_pairing(piece):
    is_on = piece.vel > 0
    partner = aug.note_on_partners(piece.inst, piece.pitch, is_on)
    assert np.all(partner[is_on] == -1) and np.all(partner[~is_on] >= 0)  # all matched
    assert np.all(piece.inst[partner[~is_on]] == piece.inst[~is_on])
    assert np.all(piece.pitch[partner[~is_on]] == piece.pitch[~is_on])
    u = np.random.default_rng(0).random(len(piece))
    t = aug.jitter_times(piece.time, is_on, partner, u, 1e-3)
    assert np.all(t[is_on] >= piece.time[is_on]) and np.all(t[is_on] <= piece.time[is_on] + 1e-3)
    assert np.all(t[~is_on] <= piece.time[~is_on] + 1e-3)
    assert np.all(t >= piece.time - 1e-3) and np.all(t >= 0)
    assert np.all(t[~is_on] > t[partner[~is_on]])  # a release never precedes its attack
    assert np.all(piece.time[partner[~is_on]] < piece.time[~is_on])  # notes have length
    key = piece.inst * 128 + piece.pitch
    restruck = [np.any(is_on & (key == key[j]) & (piece.time == piece.time[j]))
                for j in np.flatnonzero(~is_on)]
    assert sum(restruck) >= 5  # the fixture re-strikes notes at the instant of release
    clamped = ~is_on & (t > piece.time)
    assert clamped.any()  # the sub-millisecond notes needed the clamp
    for seed in range(40):
        out = augment_with(piece, seed, jitter=1e-3)
        assert np.all(np.diff(out.time) >= 0)
        check_pairs(out.inst, out.pitch, out.vel)


def test_full_augmentation_keeps_notes_paired_and_velocities_valid(piece):
    opts = aug.Augment()
    check_pairs(piece.inst, piece.pitch, piece.vel)
    for seed in range(60):
        out = aug.apply(piece, opts, opts.draw(np.random.default_rng(seed)))
        assert len(out.inst) == len(piece)
        assert np.all(np.diff(out.time) >= 0) and out.time[0] >= 0
        check_pairs(out.inst, out.pitch, out.vel)
        on = out.vel > 0
        assert on.sum() == (piece.vel > 0).sum()
        assert np.all(out.vel[on] >= 0.5) and np.all(out.vel[on] <= 127)
        assert np.all((out.pitch >= 0) & (out.pitch <= 127))


def test_dequantize_and_curve(piece):
    edge = ev.EventArrays.build([1] * 6, [60, 61, 62, 60, 61, 62], [0, 0, 0, 1, 1, 1],
                                [1, 127, 64, 0, 0, 0])
    for seed in range(50):
        out = augment_with(edge, seed, dequantize=True)
        assert 0.5 <= out.vel[0] < 1.5 and out.vel[1] == 127 and 63.5 <= out.vel[2] < 64.5
        assert np.all(out.vel[3:] == 0)
    piece = ev.EventArrays.build(piece.inst, piece.pitch, piece.time,
                                 np.where(piece.vel > 0, piece.vel, 0))
    piece.vel[np.flatnonzero(piece.vel > 0)[:3]] = (64, 127, 1)
    gammas = []
    for seed in range(200):
        out = augment_with(piece, seed, curve=1 / 3)
        on = piece.vel > 0
        assert np.all(out.vel[~on] == 0)
        order = np.argsort(piece.vel[on], kind="stable")
        assert np.all(np.diff(out.vel[on][order]) >= -1e-9)  # a monotone curve
        assert np.allclose(out.vel[on & (piece.vel == 127)], 127)
        mid = on & (piece.vel == 64)
        gammas.append(np.log((out.vel[mid][0] - 0.5) / 126.5) / np.log(63.5 / 126.5))
    assert np.std(np.log2(gammas)) == pytest.approx(1 / 3, rel=0.25)
