"""The ``stats`` yardstick on pieces whose answers are known: grid fit, key, entropy,
repetition, short notes, polyphony, silences, KDE overlap/KL, the teacher-forced rhythm
test and the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from tiny import tiny_model

from notochord_rt.analysis import (
    compare,
    describe,
    fit_grid,
    piece_key,
    refine_grid,
    rhythm_test,
)
from notochord_rt.analysis.compare import overlap_and_kl
from notochord_rt.analysis.features import RANGES, StatsConfig, polyphony
from notochord_rt.analysis.notes import notes_of
from notochord_rt.analysis.patterns import ngram_repetition
from notochord_rt.analysis.rhythm import find_positions
from notochord_rt.analysis.sets import Source, analyse, find_sources
from notochord_rt.cli import main as cli_main
from notochord_rt.data.store import write_split
from notochord_rt.events import EventArrays
from notochord_rt.midi.export import save_midi

KICK, SNARE, HAT = 36, 38, 42
PIANO, KIT = 1, 129


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def piece(notes) -> EventArrays:
    """EventArrays from (inst, pitch, start, end, vel) notes."""
    rows = []
    for inst, pitch, start, end, vel in notes:
        rows.append((inst, pitch, start, vel))
        # a zero-length note's note-off follows it by one float step, as ingest does
        rows.append((inst, pitch, max(end, np.nextafter(start, np.inf)), 0))
    inst, pitch, time, vel = zip(*rows)
    return EventArrays.build(inst, pitch, time, vel).sorted()


def drum_loop(seconds: float = 32.0, bpm: float = 120.0) -> EventArrays:
    """A strict 16th-note drum loop: hats on every 16th, kick and snare on a 1-bar pattern."""
    step = 15.0 / bpm
    notes = []
    for k in range(int(seconds / step)):
        t = k * step
        notes.append((KIT, HAT, t, t + 0.05, 80))
        if k % 16 in (0, 6, 10):
            notes.append((KIT, KICK, t, t + 0.05, 100))
        if k % 8 == 4:
            notes.append((KIT, SNARE, t, t + 0.05, 100))
    return piece(notes)


def random_onsets(seed: int, seconds: float = 32.0, n: int = 160) -> EventArrays:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, seconds, n))
    p = rng.integers(40, 90, n)
    return piece((PIANO, int(pp), float(tt), float(tt) + 0.2, 80) for pp, tt in zip(p, t))


def c_major_melody(repeats: int = 8) -> EventArrays:
    """Arpeggio and scale of C major in quarter notes at 120 bpm (tonic weighted)."""
    motif = [60, 64, 67, 72, 67, 64, 60, 62, 64, 65, 67, 69, 71, 72, 67, 60]
    pitches = motif * repeats
    return piece((PIANO, p, 0.5 * k, 0.5 * k + 0.45, 90) for k, p in enumerate(pitches))


# -- single pieces -----------------------------------------------------------------------
def test_strict_drum_loop_sits_on_its_grid_and_repeats():
    d = describe(drum_loop())
    assert d["grid_fit"] == pytest.approx(1.0)
    assert d["grid_bpm"] == pytest.approx(120.0, rel=0.01)
    assert d["drum_repetition"] > 0.95
    assert d["drum_share"] == 1.0 and d["instruments"] == 1.0
    assert d["grid_chance"] < 0.6  # chance level is measured, not assumed


def test_random_onsets_fit_a_grid_only_at_chance():
    fits, chances = [], []
    for seed in range(4):
        d = describe(random_onsets(seed))
        fits.append(d["grid_fit"])
        chances.append(d["grid_chance"])
    assert abs(np.mean(fits) - np.mean(chances)) < 0.08
    assert np.mean(fits) < describe(drum_loop())["grid_fit"] - 0.3
    assert describe(random_onsets(9))["ngram_repetition"] < 0.2


def test_c_major_melody_is_in_c_major():
    events = c_major_melody()
    key = piece_key(events)
    assert key is not None and key.name == "C major"
    d = describe(events)
    assert d["in_scale"] == 1.0
    assert d["key_corr"] > 0.8
    assert d["ngram_repetition"] > 0.9  # the same motif eight times
    assert d["pitch_range"] == 12.0 and d["polyphony"] == pytest.approx(1.0)


def test_chromatic_cluster_has_maximal_entropy_and_no_key():
    # a 12-note chromatic cluster struck every half second
    notes = [(PIANO, 60 + p, 0.5 * k, 0.5 * k + 0.4, 70) for k in range(40) for p in range(12)]
    d = describe(piece(notes))
    assert d["pc_entropy"] == pytest.approx(math.log2(12), abs=1e-9)
    assert d["key_corr"] is None and d["in_scale"] is None  # a flat histogram has no key


def test_zero_length_notes_are_counted():
    notes = [(PIANO, 60 + k % 5, 0.3 * k, 0.3 * k + (0.0 if k % 4 == 0 else 0.2), 70)
             for k in range(40)]
    d = describe(piece(notes))
    assert d["short_share"] == pytest.approx(10 / 40)


def test_polyphony_and_silence_of_known_layouts():
    mean, top = polyphony(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    assert mean == pytest.approx(4.0 / 3.0) and top == 2.0
    d = describe(piece([(PIANO, 60, 0.0, 1.0, 80), (PIANO, 62, 3.0, 4.0, 80)]))
    assert d["silence_share"] == pytest.approx(0.5)
    assert d["longest_silence"] == pytest.approx(2.0)
    assert d["notes_per_s"] == pytest.approx(2 / 4.0)


def test_notes_of_pairs_like_the_sampler():
    # a repeated note-on ends the sounding note; a stray note-off is ignored
    events = EventArrays.build([1, 1, 1, 1, 1], [60, 60, 60, 61, 60],
                               [0.0, 1.0, 2.0, 2.5, 3.0], [80, 90, 0, 0, 0])
    n = notes_of(events)
    assert n.start.tolist() == [0.0, 1.0]
    assert n.end.tolist() == [1.0, 2.0]
    assert n.vel.tolist() == [80, 90]


def test_ngram_repetition_counts_repeated_patterns():
    assert ngram_repetition([np.array([2, 2, -4] * 5)]) == 1.0
    assert ngram_repetition([np.arange(1, 30)]) == 0.0
    assert ngram_repetition([np.array([1, 2])]) is None


def test_fit_grid_finds_tempo_and_phase():
    rng = np.random.default_rng(3)
    step = 15.0 / 97.0
    t = 0.37 + step * np.flatnonzero(rng.random(60) < 0.6) + rng.normal(0, 0.002, 1)[0]
    g = fit_grid(t)
    assert g.fraction == 1.0
    assert g.bpm == pytest.approx(97.0, rel=0.01)
    assert g.on_grid(t).all()
    assert not g.on_grid(t + 0.5 * step).any()
    with pytest.raises(ValueError, match="at least one"):
        fit_grid([])


def test_refined_grid_extrapolates_where_the_fitted_one_drifts():
    """8 s of a humanised 16th pulse at 112 BPM: the count-maximising grid holds them all
    but its period is only known to a band; the least-squares one keeps the next 10 s."""
    rng = np.random.default_rng(5)
    step = 15.0 / 112.0
    lines = np.flatnonzero(rng.random(200) < 0.5)
    t = 12.0 + step * lines + rng.normal(0, 0.004, len(lines))
    window, later = t[t < 20.0], t[(t >= 20.0) & (t < 30.0)]
    fitted = fit_grid(window)
    refined = refine_grid(fitted, window)
    assert refined.fraction >= fitted.fraction - 0.05
    assert refined.period == pytest.approx(step, rel=5e-4)
    assert refined.on_grid(later).mean() >= 0.95
    assert refine_grid(fitted, window[:1]) == fitted._replace(fraction=1.0)  # one line: kept


def test_describe_rejects_a_piece_without_notes():
    with pytest.raises(ValueError, match="no notes"):
        describe(EventArrays.empty())
    with pytest.raises(ValueError, match="tolerance"):
        describe(drum_loop(), StatsConfig(tolerance=0.7))


# -- sets and comparison -------------------------------------------------------------------
def _set(name, pieces):
    return analyse(name, [Source(f"{name}#{k}", (lambda p=p: p)) for k, p in enumerate(pieces)])


def test_identical_sets_overlap_fully_and_disjoint_sets_do_not():
    loops = [drum_loop(16 + 4 * k, 100 + 7 * k) for k in range(5)]
    a, b = _set("a", loops), _set("b", loops)
    rows = {r["feature"]: r for r in compare(a, b)}
    assert rows["grid_fit"]["overlap"] == pytest.approx(1.0)
    assert rows["notes_per_s"]["overlap"] == pytest.approx(1.0, abs=1e-9)
    assert rows["notes_per_s"]["kl"] == pytest.approx(0.0, abs=1e-9)
    melodies = _set("m", [random_onsets(s) for s in range(5)])
    rows = {r["feature"]: r for r in compare(a, melodies)}
    assert rows["drum_share"]["overlap"] < 0.05
    assert rows["drum_share"]["kl"] > 5.0
    assert rows["drum_repetition"]["overlap"] is None  # melodies have no drums


def test_kde_measures_match_two_gaussians():
    # N(0,1) vs N(1,1): overlap 2 Phi(-1/2) = 0.617, KL 0.5 nats each way; the KDE's
    # tails make single estimates noisy (0.47-0.66 at n=3000), so average four samples
    est = np.array([overlap_and_kl(rng.normal(0, 1, 3000), rng.normal(1, 1, 3000))
                    for rng in map(np.random.default_rng, range(4))]).mean(axis=0)
    assert est[0] == pytest.approx(0.617, abs=0.03)
    assert est[1] == pytest.approx(0.5, abs=0.1) and est[2] == pytest.approx(0.5, abs=0.1)


def test_a_share_at_its_bound_in_both_sets_compares_as_alike():
    # nearly every piece of both sets has no short notes; a few 1e-3 shares differ
    a = np.zeros(30)
    b = np.r_[np.zeros(130), 0.0015, 0.0008]
    data_only = overlap_and_kl(a, b)[0]  # smoothed by 1 % of the data's own tiny spread
    assert data_only < 0.8
    assert overlap_and_kl(a, b, span=1.0)[0] > 0.95  # 1 % of a share's range: alike
    # the floor never narrows: sets far apart stay apart
    assert overlap_and_kl(np.full(30, 0.1), np.full(30, 0.9), span=1.0)[0] < 1e-6
    assert RANGES["short_share"] == 1.0 and RANGES["pc_entropy"] == pytest.approx(3.585, 1e-3)


# -- teacher-forced rhythm test -------------------------------------------------------------
def test_find_positions_uses_the_last_note_of_each_chord():
    events = piece([(PIANO, 60, 2.0, 2.4, 80), (PIANO, 64, 2.0, 2.4, 80),
                    (PIANO, 67, 2.5, 2.9, 80), (PIANO, 55, 1.0, 1.5, 80),
                    (PIANO, 69, 3.0, 3.2, 80)])
    idx, nxt = find_positions(events)
    assert events.time[idx].tolist() == [2.0, 2.5]  # not 1.0 (before 2 s), not 3.0 (last)
    assert events.pitch[idx].tolist() == [64, 67]  # the chord's last note-on
    assert nxt.tolist() == [2.5, 3.0]


def test_rhythm_test_on_a_tiny_model():
    pieces = [drum_loop(12.0, 110.0), c_major_melody(2), random_onsets(1, 12.0, 60)]
    sources = [Source(f"p{k}", (lambda p=p: p)) for k, p in enumerate(pieces)]
    res = rhythm_test(tiny_model(0), sources, pieces=3, positions=10, samples=2, seed=1)
    d = res.as_dict()
    assert d["pieces"] == 3 and 0 < d["positions"] <= 3 * 10 * 2
    assert 0.0 <= d["model_on_grid"] <= 1.0 and 0.0 <= d["real_on_grid"] <= 1.0
    assert d["chance"] == pytest.approx(0.2)
    assert d["per_piece"][0]["real"] == 1.0  # the loop's next onsets are all on its grid
    assert d["model_gap_median"] >= 0.01  # never inside the chord window
    again = rhythm_test(tiny_model(0), sources, pieces=3, positions=10, samples=2, seed=1)
    assert again.as_dict() == d
    late = rhythm_test(tiny_model(0), sources, pieces=3, positions=10, seed=1,
                       fields={"min_time": 1.0})  # further Constraints fields of the draw
    assert late.as_dict()["model_gap_median"] >= 1.0


# -- the command --------------------------------------------------------------------------
def _no_nan(text: str) -> dict:
    def refuse(name):
        raise AssertionError(f"JSON holds {name}")

    return json.loads(text, parse_constant=refuse)


def test_cli_against_json_and_skipped_files(tmp_path, capsys):
    loops, rand = tmp_path / "loops", tmp_path / "rand"
    loops.mkdir()
    rand.mkdir()
    for k in range(3):
        save_midi(drum_loop(16.0, 100.0 + 10 * k), loops / f"loop{k}.mid")
        save_midi(random_onsets(k, 16.0, 80), rand / f"rand{k}.mid")
    (rand / "broken.mid").write_bytes(b"MThd not really")
    out = tmp_path / "stats.json"
    code = cli_main(["stats", str(rand), "--against", str(loops), "--json", "--no-progress",
                     "--out", str(out)])
    assert code == 0
    printed = _no_nan(capsys.readouterr().out)
    assert printed == _no_nan(out.read_text())
    a, b = printed["sets"]
    assert a["pieces"] == 3 and b["pieces"] == 3
    assert [s["source"] for s in a["skipped_files"]] == [str(rand / "broken.mid")]
    assert b["features"]["grid_fit"]["mean"] > a["features"]["grid_fit"]["mean"] + 0.2
    rows = {r["feature"]: r for r in printed["compare"]["features"]}
    assert rows["drum_share"]["overlap"] < 0.05
    assert len(a["per_piece"]) == 3


def test_cli_prepared_split_table_and_rhythm(tmp_path, capsys, tiny):
    pieces = [drum_loop(10.0, 120.0), c_major_melody(3)]
    write_split(tmp_path / "prep", "test", pieces, [{"path": f"p{k}"} for k in range(2)])
    ckpt = tmp_path / "tiny.safetensors"
    tiny.save(ckpt)
    code = cli_main(["stats", str(tmp_path / "prep"), "--split", "test", "--no-progress",
                     "--rhythm", str(ckpt), "--rhythm-pieces", "2", "--rhythm-positions", "5"])
    assert code == 0
    text = capsys.readouterr().out
    assert "grid_fit" in text and "teacher-forced rhythm test" in text
    assert "real 1.000" in text  # both pieces are strictly on their grids


def test_cli_names_bad_input(tmp_path, capsys):
    assert cli_main(["stats", str(tmp_path / "missing")]) == 2
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert cli_main(["stats", str(tmp_path / "notes.txt")]) == 2
    assert "not a MIDI file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="no MIDI files"):
        find_sources([empty])
