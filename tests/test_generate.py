"""Offline generation (apps.generate), rendering (apps.render), the generate CLI and the
bundled-model loader, on a tiny random model and tiny generated MIDI files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from midifiles import note_spans as notes_of
from midifiles import simple_song
from tiny import tiny_model

from notochord_rt import events as ev
from notochord_rt.apps.offline import render
from notochord_rt.apps.offline.generate import GenerateOptions, generate, steer_window
from notochord_rt.cli import main
from notochord_rt.engine.sampling.sampler import Notochord
from notochord_rt.errors import CheckpointError, InputError, NoPossibleEvents
from notochord_rt.midi.ingest import load_midi
from notochord_rt.model import checkpoint

HAS_FLUIDSYNTH = shutil.which("fluidsynth") is not None



@pytest.fixture(scope="module")
def model() -> Notochord:
    return tiny_model()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gen")
    ckpt = d / "tiny.safetensors"
    tiny_model().save(ckpt)
    song = d / "song.mid"
    song.write_bytes(simple_song())
    text = d / "notes.mid"
    text.write_text("this is not a MIDI file\n")
    return {"dir": d, "ckpt": ckpt, "song": song, "text": text}


# -- helpers -----------------------------------------------------------------------------------
def max_polyphony(events: ev.EventArrays) -> dict[int, int]:
    count: dict[int, int] = {}
    most: dict[int, int] = {}
    for i, v in zip(events.inst.tolist(), events.vel.tolist()):
        count[i] = count.get(i, 0) + (1 if v > 0 else -1)
        most[i] = max(most.get(i, 0), count[i])
    return most


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# -- the generation loop -----------------------------------------------------------------------
def test_seconds_mode_length_order_and_release(model):
    g = generate(model, GenerateOptions(seconds=12.0, seed=1))
    t = g.events.time
    assert len(g.events) > 0 and g.generated > 0
    assert np.all(np.diff(t) >= 0), "events out of time order"
    assert t[-1] <= 12.0 + 1e-9
    notes_of(g.events)  # every note paired
    assert g.stopped == "seconds"
    assert g.prompt_events == 0 and g.prompt_end == 0.0


def test_events_mode_counts_and_held_notes_released_at_end(model):
    opts = GenerateOptions(seconds=None, events=60, seed=2, steer_density=1.0,
                           max_note_seconds=30.0, max_gap=0.5)
    g = generate(model, opts)
    assert g.generated == 60
    assert g.released_at_end > 0, "this seed leaves notes sounding; they must be released"
    assert len(g.events) == 60 + g.released_at_end
    last = g.events.time[-g.released_at_end:]
    assert np.all(g.events.vel[-g.released_at_end:] == 0)
    assert np.all(last == last[0]) and last[0] > g.events.time[-g.released_at_end - 1]
    notes_of(g.events)


def test_same_seed_same_piece_other_seed_differs(model):
    a = generate(model, GenerateOptions(seconds=None, events=40, seed=5))
    b = generate(model, GenerateOptions(seconds=None, events=40, seed=5))
    c = generate(model, GenerateOptions(seconds=None, events=40, seed=6))
    assert all(np.array_equal(x, y) for x, y in zip(a.events, b.events))
    assert not all(np.array_equal(x, y) for x, y in zip(a.events, c.events))


def test_free_choice_named_instruments_and_instrument_cap(model):
    g = generate(model, GenerateOptions(seconds=None, events=150, seed=3, max_instruments=3,
                                        allow_anonymous=False))
    on = g.events.inst[g.events.vel > 0]
    assert not ev.is_anonymous(on).any()
    assert len(set(on.tolist())) == 3 and sorted(set(on.tolist())) == g.instruments
    g = generate(model, GenerateOptions(seconds=None, events=150, seed=3, max_instruments=None))
    on = g.events.inst[g.events.vel > 0]  # anonymous instruments may play by default
    assert ev.is_anonymous(on).any() and len(set(on.tolist())) > 3


def test_cli_named_only_and_the_old_anonymous_flag(tmp_path):
    import argparse

    from notochord_rt.cli.generate import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).allow_anonymous is True
    assert parser.parse_args(["--named-only"]).allow_anonymous is False
    assert parser.parse_args(["--allow-anonymous"]).allow_anonymous is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--named-only", "--allow-anonymous"])


def test_instruments_restriction_with_a_drum_kit(model):
    keep = [ev.parse_instrument("violin"), ev.parse_instrument("jazz kit")]
    g = generate(model, GenerateOptions(seconds=None, events=80, seed=3, instruments=keep))
    played = set(g.events.inst.tolist())
    assert played and played <= set(keep)
    assert ev.is_drum(keep[1]) and keep[1] == ev.FIRST_DRUM + 32


def test_guards_bound_note_length_and_polyphony(model):
    opts = GenerateOptions(seconds=None, events=150, seed=4, max_note_seconds=0.8,
                           max_polyphony=2, steer_density=0.9, instruments=[1, 2, 3])
    g = generate(model, opts)
    notes = notes_of(g.events)
    held_to_end = {(i, p) for i, p, s, e in notes if e == g.events.time[-1]}
    lengths = [e - s for i, p, s, e in notes if (i, p) not in held_to_end]
    assert lengths and max(lengths) <= 0.8 + 1e-6
    assert max(max_polyphony(g.events).values()) <= 2


def test_drum_notes_are_short(model):
    opts = GenerateOptions(seconds=None, events=120, seed=4, instruments=[ev.STANDARD_KIT],
                           steer_density=0.9, max_note_seconds=30.0)
    g = generate(model, opts)
    notes = notes_of(g.events)
    lengths = [e - s for i, p, s, e in notes if e < g.events.time[-1]]
    assert lengths and max(lengths) <= 1.0 + 1e-6


def test_total_polyphony_cap(model):
    opts = GenerateOptions(seconds=None, events=150, seed=4, max_total_polyphony=3,
                           steer_density=1.0, max_note_seconds=30.0)
    g = generate(model, opts)
    sounding = np.cumsum(np.where(g.events.vel > 0, 1, -1))
    assert sounding.max() == 3 and sounding[-1] == 0


def test_prompt_continuation_starts_with_the_prompt(model, files):
    prompt = load_midi(files["song"]).events
    fed: list[int] = []
    g = generate(model, GenerateOptions(seconds=5.0, seed=7), prompt, prompt_progress=fed.append)
    n = len(prompt)
    assert fed and fed[-1] == n and fed == sorted(fed)
    assert g.prompt_events == n and g.prompt_end == pytest.approx(prompt.duration)
    for got, want in zip(g.events, prompt):
        np.testing.assert_array_equal(got[:n], want)
    cont = ev.EventArrays(*(a[n:] for a in g.events))
    assert len(cont) > 0 and cont.time.min() >= prompt.duration
    assert cont.time.max() <= prompt.duration + 5.0 + 1e-9
    assert set(cont.inst.tolist()) <= set(prompt.inst.tolist())  # default: prompt's instruments
    notes_of(g.events)


def test_prompt_continued_by_chosen_instruments(model, files):
    prompt = load_midi(files["song"]).events
    g = generate(model, GenerateOptions(seconds=None, events=30, seed=8, instruments=[74]),
                 prompt)
    cont_on = g.events.inst[len(prompt):][g.events.vel[len(prompt):] > 0]
    assert len(cont_on) and set(cont_on.tolist()) == {74}


class _FailsAfter:
    """Delegates to a real model; its ``sample`` raises NoPossibleEvents after ``n`` calls."""

    def __init__(self, model, n):
        self.model, self.n = model, n

    def sample(self, *a, **k):
        self.n -= 1
        if self.n < 0:
            raise NoPossibleEvents("test: no event left")
        return self.model.sample(*a, **k)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_no_possible_events_stops_gracefully(model):
    opts = GenerateOptions(seconds=None, events=100, seed=2, steer_density=1.0,
                           max_note_seconds=30.0)
    g = generate(_FailsAfter(model, 25), opts)
    assert g.generated == 25 and "no possible event" in g.stopped
    notes_of(g.events)


def test_options_validation():
    with pytest.raises(InputError, match="seconds"):
        GenerateOptions(seconds=-1).validate()
    with pytest.raises(InputError, match="length"):
        GenerateOptions(seconds=None, events=None).validate()
    with pytest.raises(InputError, match="instrument"):
        GenerateOptions(instruments=[0]).validate()
    with pytest.raises(InputError, match="steering"):
        GenerateOptions(steer_pitch=1.5).validate()
    assert steer_window(None) == (0.0, 1.0)
    assert steer_window(0.0) == (0.0, 0.5) and steer_window(0.8) == pytest.approx((0.3, 1.0))


def test_steer_pitch_moves_pitches(model):
    kw = {"seconds": None, "events": 120, "seed": 9, "instruments": [1]}
    lo = generate(model, GenerateOptions(steer_pitch=0.0, **kw)).events
    hi = generate(model, GenerateOptions(steer_pitch=1.0, **kw)).events
    assert np.median(hi.pitch[hi.vel > 0]) > np.median(lo.pitch[lo.vel > 0])


# -- rendering -----------------------------------------------------------------------------------
def test_png_piano_roll(model, tmp_path, files):
    prompt = load_midi(files["song"]).events
    g = generate(model, GenerateOptions(seconds=3.0, seed=1), prompt)
    path = render.render_png(g.events, tmp_path / "roll.png", prompt_end=g.prompt_end,
                             title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(tmp_path.glob(".*tmp*"))


def test_note_table_pairs_notes():
    e = ev.EventArrays.build([1, 1, 1, 2], [60, 60, 60, 40], [0.0, 0.5, 1.0, 1.2], [90, 0, 80, 70])
    t = render.note_table(e)
    assert list(zip(t["pitch"].tolist(), t["start"].tolist(), t["end"].tolist())) == [
        (60, 0.0, 0.5), (60, 1.0, 1.2), (40, 1.2, 1.2)]


@pytest.mark.skipif(not HAS_FLUIDSYNTH, reason="fluidsynth is not installed "
                    "(apt-get install fluidsynth fluid-soundfont-gm)")
def test_wav_render_real_fluidsynth(files, tmp_path):
    try:
        render.find_soundfont()
    except render.RenderUnavailable as e:
        pytest.skip(f"no GM SoundFont: {e}")
    wav = render.render_wav(files["song"], tmp_path / "song.wav")
    data = wav.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert len(data) > 44100 * 2 * 2 * 5  # > 5 s of 16-bit stereo for a ~9 s song


def test_missing_tools_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(render.RenderUnavailable, match="apt-get install fluidsynth"):
        render.find_fluidsynth()
    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)
    monkeypatch.setattr(render, "SOUNDFONT_CANDIDATES", (str(tmp_path / "none.sf2"),))
    with pytest.raises(render.RenderUnavailable, match="fluid-soundfont-gm"):
        render.find_soundfont()
    with pytest.raises(render.RenderUnavailable, match="not found"):
        render.find_soundfont(tmp_path / "missing.sf2")


# -- the CLI -------------------------------------------------------------------------------------
def test_cli_generate_midi_png_wav(files, tmp_path, capsys):
    out, png, wav = tmp_path / "o.mid", tmp_path / "o.png", tmp_path / "o.wav"
    argv = ["generate", "--checkpoint", str(files["ckpt"]), "--seconds", "6", "--seed", "1",
            "--out", str(out), "--png", str(png), "--instruments", "violin,drums",
            "--pitch-temp", "0.9", "--steer-rate", "0.6"]
    if HAS_FLUIDSYNTH:
        argv += ["--wav", str(wav)]
    threads = torch.get_num_threads()
    rc, stdout, err = run_cli(argv + ["--threads", "1"], capsys)
    assert rc == 0, err
    assert "wrote" in stdout and str(out) in stdout
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()  # nothing leaks
    got = load_midi(out).events
    assert set(got.inst.tolist()) <= {41, ev.STANDARD_KIT} and got.duration <= 6.0 + 1e-3
    assert png.read_bytes()[:4] == b"\x89PNG"
    if HAS_FLUIDSYNTH:
        assert wav.read_bytes()[:4] == b"RIFF"


def test_cli_prompt_continuation(files, tmp_path, capsys):
    out = tmp_path / "c.mid"
    rc, stdout, err = run_cli(["generate", "--checkpoint", str(files["ckpt"]), "--prompt",
                               str(files["song"]), "--events", "20", "--continue-with", "flute",
                               "--out", str(out), "--seed", "2"], capsys)
    assert rc == 0, err
    prompt = load_midi(files["song"]).events
    got = load_midi(out).events
    before = got.time < prompt.duration - 1e-3
    assert set(got.inst[before].tolist()) == set(prompt.inst.tolist())
    assert np.sum(before & (got.vel > 0)) == np.sum((prompt.vel > 0)
                                                     & (prompt.time < prompt.duration - 1e-3))
    after_on = (~before) & (got.vel > 0)
    assert after_on.any() and set(got.inst[after_on].tolist()) == {74}


@pytest.mark.parametrize("case", ["not_midi", "missing_prompt", "unknown_inst", "bad_out_dir",
                                  "out_is_dir", "bad_suffix", "bad_steer",
                                  "continue_without_prompt", "missing_checkpoint"])
def test_cli_bad_input_one_clear_line(case, files, tmp_path, capsys):
    base = ["generate", "--checkpoint", str(files["ckpt"]), "--events", "5",
            "--out", str(tmp_path / "x.mid")]
    extra = {
        "not_midi": ["--prompt", str(files["text"])],
        "missing_prompt": ["--prompt", str(tmp_path / "nope.mid")],
        "unknown_inst": ["--instruments", "kazoo"],
        "bad_out_dir": ["--out", str(files["text"] / "x.mid")],
        "out_is_dir": ["--out", str(tmp_path)],
        "bad_suffix": ["--png", str(tmp_path / "x.jpg")],
        "bad_steer": ["--steer-pitch", "3"],
        "continue_without_prompt": ["--continue-with", "violin"],
        "missing_checkpoint": ["--checkpoint", str(tmp_path / "none.safetensors")],
    }[case]
    rc, _, err = run_cli(base + extra, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("notochord-rt generate: error:"), err
    assert "Traceback" not in err
    if case == "not_midi":
        assert "not a usable MIDI file" in err
    if case == "unknown_inst":
        assert "kazoo" in err
    assert not (tmp_path / "x.mid").exists()


def test_cli_missing_fluidsynth_still_writes_midi(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "m.mid"
    rc, _, err = run_cli(["generate", "--checkpoint", str(files["ckpt"]), "--events", "10",
                          "--out", str(out), "--wav", str(tmp_path / "m.wav")], capsys)
    assert rc == 2 and out.is_file() and not (tmp_path / "m.wav").exists()
    assert len(err.strip().splitlines()) == 1
    assert "fluidsynth is not installed" in err and "apt-get install" in err
    assert str(out) in err


def test_cli_missing_soundfont_still_writes_midi(files, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)
    monkeypatch.setattr(render, "SOUNDFONT_CANDIDATES", (str(tmp_path / "none.sf2"),))
    monkeypatch.setattr(render, "find_fluidsynth", lambda: "/bin/true")
    out = tmp_path / "s.mid"
    rc, _, err = run_cli(["generate", "--checkpoint", str(files["ckpt"]), "--events", "10",
                          "--out", str(out), "--wav", str(tmp_path / "s.wav")], capsys)
    assert rc == 2 and out.is_file()
    assert "SoundFont" in err and "fluid-soundfont-gm" in err


@pytest.mark.slow
def test_cli_subprocess(files, tmp_path):
    out = tmp_path / "p.mid"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run([sys.executable, "-m", "notochord_rt", "generate", "--checkpoint",
                         str(files["ckpt"]), "--events", "15", "--seed", "0", "--out", str(out)],
                        capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0, ok.stderr
    assert load_midi(out).stats["notes"] > 0
    bad = subprocess.run([sys.executable, "-m", "notochord_rt", "generate", "--checkpoint",
                          str(files["ckpt"]), "--prompt", str(files["text"]), "--out",
                          str(tmp_path / "q.mid")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# -- the bundled default model ---------------------------------------------------------------------
def _fake_package(monkeypatch, root: Path) -> None:
    real = checkpoint.resources.files

    def files(pkg):
        return root if pkg == "notochord_rt" else real(pkg)

    monkeypatch.setattr(checkpoint.resources, "files", files)


def test_default_loads_the_packaged_asset(monkeypatch, tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    src = tiny_model(seed=3)
    src.save(assets / checkpoint.DEFAULT_ASSET)
    _fake_package(monkeypatch, tmp_path)
    m = Notochord.load("default")
    assert isinstance(m, Notochord)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v)
    m.reset(seed=0)
    assert m.sample().inst >= 1


def test_default_missing_is_a_clear_error(monkeypatch, tmp_path, capsys):
    _fake_package(monkeypatch, tmp_path)
    with pytest.raises(CheckpointError, match="bundled 'default' model is not installed"):
        Notochord.load("default")
    rc, _, err = run_cli(["generate", "--events", "3", "--out", str(tmp_path / "d.mid")], capsys)
    assert rc == 2 and "not installed" in err and len(err.strip().splitlines()) == 1


def test_default_resolves_inside_the_installed_package():
    path = Path(str(checkpoint.resources.files("notochord_rt") / "assets"
                    / checkpoint.DEFAULT_ASSET))
    import notochord_rt

    assert path.parent.parent == Path(notochord_rt.__file__).parent


def test_cli_generate_makes_a_missing_output_folder(tmp_path, capsys):
    from notochord_rt.cli._common import check_output

    target = tmp_path / "new" / "deeper" / "piece.mid"
    assert check_output(str(target), "--out", (".mid",)) == target
    assert target.parent.is_dir()
