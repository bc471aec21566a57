"""Grid tracking (model/grid_track.py): one grid followed through a stream's onsets, the
same in training (per sequence, in the loader) and live (per stream)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_config, tiny_model

from notochord_rt.engine.sampling.constraints import Constraints
from notochord_rt.model import grid_track, pulse
from notochord_rt.model.network import NotochordNet
from notochord_rt.onset_grid import fit_grid
from notochord_rt.train.sources import collate


def _humanised(bpm: float, seconds: float, seed: int, jitter: float = 0.006) -> np.ndarray:
    """Onsets on a 16th grid at ``bpm`` (about half the lines played), humanised."""
    rng = np.random.default_rng(seed)
    step = 15.0 / bpm
    lines = np.arange(int(seconds / step)) * step
    keep = lines[rng.random(len(lines)) < 0.5]
    return np.sort(keep + rng.normal(0.0, jitter, len(keep))).clip(min=0.0)


def test_the_tracker_finds_and_keeps_a_humanised_pulse():
    tracker = grid_track.GridTracker()
    onsets = _humanised(112.0, 30.0, seed=1)
    for t in onsets[:5]:
        tracker.add(float(t))
    assert not tracker.ready and tracker.grid is None  # fewer than MIN_ONSETS
    for t in onsets[5:]:  # read after every onset, as a sampler drawing times does
        tracker.add(float(t))
        tracker.lines(float(t), 1)
    step = 15.0 / 112.0
    assert tracker.grid is not None
    # a 16th grid or one of its multiples, and its lines fall on the true ones
    ratio = tracker.grid.period / step
    assert abs(ratio - round(ratio)) < 0.01 and round(ratio) in (1, 2)
    now = float(onsets[-1])
    loc, valid = tracker.lines(now, 6)
    assert valid.all() and (loc > 0).all() and np.all(np.diff(loc) > 0)
    lines = (now + loc) / step
    assert np.abs(lines - np.round(lines)).max() < 0.1


def test_the_tracker_follows_a_tempo_change():
    tracker = grid_track.GridTracker()
    first = _humanised(100.0, 12.0, seed=2)
    second = first[-1] + 0.3 + _humanised(140.0, 16.0, seed=3)
    for t in np.concatenate([first, second]):
        tracker.add(float(t))
        tracker.lines(float(t), 1)
    window = second[second >= second[-1] - grid_track.WINDOW]
    assert tracker.grid.on_grid(window).mean() >= 0.9
    ratio = tracker.grid.period / (15.0 / 140.0)
    assert abs(ratio - round(ratio)) < 0.01


def test_no_grid_until_enough_onsets_and_copies_are_independent():
    tracker = grid_track.GridTracker()
    loc, valid = tracker.lines(1.0, 4)
    assert not valid.any() and (loc == 1.0).all()
    for t in _humanised(120.0, 6.0, seed=4):
        tracker.add(float(t))
    snap = tracker.copy()
    tracker.clear()
    assert tracker.grid is None and tracker.onsets == []
    assert snap.ready and len(snap.onsets) >= grid_track.MIN_ONSETS
    assert snap.lines(6.0, 2)[1].all() and snap.grid is not None


def _sequence(seed: int, n: int):
    """A sequence on a shifting 16th grid with chords, strums, note-offs and a rest."""
    rng = np.random.default_rng(seed)
    step = 15.0 / rng.uniform(80, 160)
    deltas = rng.choice([0.0, 0.003, step, 2 * step, 4 * step, 3.0], size=n,
                        p=[0.3, 0.05, 0.35, 0.17, 0.1, 0.03])
    deltas = deltas + (deltas > 0.01) * rng.normal(0.0, 0.004, n)
    inst = rng.choice([1, 33, 129], size=n)
    vel = rng.integers(0, 2, size=n) * rng.integers(1, 127, size=n)
    inst[0], deltas[0], vel[0] = 0, 0.0, 0  # the start event
    return (torch.tensor(inst), torch.tensor(np.abs(deltas), dtype=torch.float32),
            torch.tensor(vel, dtype=torch.float32))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_and_live_grid_lines_agree(seed):
    """The loader's lines (``pulse.sequence_grid_lines``) equal a live sampler's pulse
    components after feeding the same events (its onset history tracks the grid itself),
    when the sampler reads them after every event as training does (a fresh fit waits
    for the next read: a stream fed several events between reads may differ)."""
    n, length = 6, 150
    seqs = [_sequence(seed * 10 + j, length) for j in range(2)]
    inst, time, vel = (torch.stack(x) for x in zip(*seqs))
    loc, valid = pulse.sequence_grid_lines(inst.numpy(), time.numpy(), vel.numpy(), n)
    assert valid.any() and not valid.all()
    model = tiny_model(seed, time_pulse=2, time_pulse_grid=1)
    free = model.config.time_components
    for b in range(2):
        model.reset()
        checked = 0
        for i in range(1, length):  # event 0 is the start event the reset feeds
            model.feed(int(inst[b, i]), 60, float(time[b, i]), float(vel[b, i]))
            t = model.sample(return_params=True).params["t"]
            if i % 7:
                continue
            lv, on = t[1, free:], np.isfinite(t[0, free:])
            assert on.tolist() == valid[b, i].tolist(), (b, i)
            np.testing.assert_allclose(lv[on], loc[b, i][on], atol=1e-4)
            checked += on.any()
        assert checked


def test_the_loader_and_the_network_compute_the_same_lines():
    torch.manual_seed(0)
    net = NotochordNet(**tiny_config(time_pulse=2, time_pulse_grid=1)).eval()
    seqs = [_sequence(30 + j, 80) for j in range(3)]
    items = [{"inst": i, "pitch": torch.full_like(i, 60), "time": t, "vel": v}
             for i, t, v in seqs]
    batch = collate(items, grid_lines=6)
    assert batch["pulse_loc"].shape == (3, 79, 6)
    loc, valid = net.pulse_inputs(batch["inst"], batch["time"], batch["vel"])
    assert torch.equal(valid, batch["pulse_valid"])
    torch.testing.assert_close(loc, batch["pulse_loc"].to(loc.dtype))
    with torch.no_grad():
        a = net(batch["inst"], batch["pitch"], batch["time"], batch["vel"], cond="iptv")
        b = net(batch["inst"], batch["pitch"], batch["time"], batch["vel"], cond="iptv",
                pulse_in=(batch["pulse_loc"], batch["pulse_valid"]))
    torch.testing.assert_close(a["time"], b["time"])


def test_a_model_trusting_its_grid_keeps_the_pulse_it_was_given():
    """Free-running after a prompt on a 16th grid at 125 bpm, a model whose grid
    components carry the weight keeps its onsets on that grid (the mechanism the default
    model learns from data; here its weights are set by hand)."""
    model = tiny_model(3, time_pulse=2, time_pulse_grid=1)
    free = model.config.time_components
    with torch.no_grad():
        bias = model.net.time_dist.bias.view(3, -1)
        bias[0, free:] = 20.0
        bias[0, free + 1:] = 18.0
        bias[2, free:] = 300.0  # narrow: a logistic scale of 3 ms
    model.reset()
    step, now = 0.12, 0.0
    for k in range(24):  # a prompt of 24 onsets two 16ths apart
        model.feed(1, 60, 2 * step if k else 0.0, 80)
        model.feed(1, 60, 0.0, 0)
    onsets = []
    for s in range(60):
        e = model.sample(Constraints(min_time=0.02, min_vel=1), seed=s)
        model.feed(e.inst, e.pitch, e.time, e.vel)
        now += e.time
        onsets.append(now)
    on = np.asarray(onsets)
    grid = fit_grid(on)
    assert grid.fraction >= 0.95
    # and it is the prompt's grid, continued (over the first ten onsets; later the grid
    # may drift slowly with the jitter of the model's own onsets, which it follows)
    lines = (on[:10] + 23 * 2 * step) / step
    assert np.abs(lines - np.round(lines)).max() < 0.2


def test_pulse_module_uses_the_tracker_only_when_asked():
    assert pulse.OnsetHistory().tracker is None
    h = pulse.OnsetHistory(track=True)
    for t in (0.0, 0.0, 0.004, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5):
        h.note_on(t)
    assert h.tracker.onsets == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    c = h.copy()
    h.clear()
    assert c.tracker.ready and not h.tracker.ready


def test_pulse_weight_reweights_the_models_own_pulse_components():
    from notochord_rt.errors import InputError

    model = tiny_model(5, time_pulse=2, time_pulse_grid=1)
    free = model.config.time_components
    model.reset()
    for k in range(12):
        model.feed(1, 60, 0.25 if k else 0.0, 80)
        model.feed(1, 60, 0.0, 0)
    # the time row is drawn after velocity in the default order: fix it (and the
    # instrument), so that the three rows come from the same head output
    rows = {w: model.sample(Constraints(pulse_weight=w, inst=1, vel=80.0),
                            return_params=True).params["t"]
            for w in (0.0, 1.0, 8.0)}
    share = {w: np.exp(r[0, free:]).sum() for w, r in rows.items()}
    assert share[0.0] == 0.0 and 0.0 < share[1.0] < share[8.0] < 1.0
    # x8 on the odds of the pulse components against the free ones
    odds = {w: s / (1 - s) for w, s in share.items() if w}
    assert odds[8.0] / odds[1.0] == pytest.approx(8.0, rel=1e-6)
    np.testing.assert_allclose(rows[8.0][1], rows[1.0][1])  # nothing moved
    with pytest.raises(InputError, match="pulse_weight"):
        Constraints(pulse_weight=-1.0).validate()


def _one_period(x: np.ndarray, period: float, tol: float) -> tuple[int, float]:
    """The exact best-phase search for one period, written plainly."""
    theta = np.sort(np.mod(x / period, 1.0))
    best = (-1, 0.0)
    for start in theta:
        inside = ((theta >= start) & (theta <= start + 2 * tol + 1e-12)).sum() + (
            theta + 1.0 <= start + 2 * tol + 1e-12).sum()
        if inside > best[0]:
            best = (int(inside), float((start + tol) * period))
    return best


def test_the_batched_exact_search_matches_a_plain_one():
    from notochord_rt.onset_grid import _exact_best_all

    rng = np.random.default_rng(7)
    for n in (1, 5, 30):
        x = rng.uniform(-4, 4, n)
        periods = np.exp(rng.uniform(np.log(0.075), np.log(0.3), 25))
        counts, phases = _exact_best_all(x, periods, 0.1)
        for p, c, ph in zip(periods, counts, phases):
            want = _one_period(x, float(p), 0.1)
            assert (int(c), float(ph)) == pytest.approx(want, abs=1e-12)


def test_a_fresh_fit_waits_until_the_lines_are_read():
    from notochord_rt.model import grid_track
    from notochord_rt.onset_grid import fit_grid, refine_grid

    rng = np.random.default_rng(3)
    onsets = np.cumsum(rng.uniform(0.05, 0.3, 60)).tolist()  # on no grid: refits
    eager, lazy = grid_track.GridTracker(), grid_track.GridTracker()
    fits = 0
    for t in onsets:  # read after every onset, as training and generation do
        eager.add(t)
        fits += eager.stale
        x = np.asarray(eager.onsets)
        want = refine_grid(fit_grid(x), x) if eager.stale else eager.grid
        loc, valid = eager.lines(t, 4)
        assert eager.grid == want and not eager.stale
        if want is not None:
            np.testing.assert_allclose(loc[0], want.phase + want.period * (
                np.floor((t - want.phase) / want.period + grid_track.EDGE) + 1) - t)
    assert fits > 20
    for t in onsets:  # fed without reading (a prompt, or answers at fixed times)
        lazy.add(t)
    assert lazy.stale  # nothing fitted yet: one fit when the lines are first read
    x = np.asarray(lazy.onsets)
    lazy.lines(onsets[-1], 4)
    assert lazy.grid == refine_grid(fit_grid(x), x) and not lazy.stale
    c = lazy.copy()
    c.add(onsets[-1] + 0.1)
    assert c.onsets != lazy.onsets
