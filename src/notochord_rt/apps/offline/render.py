"""Render a piece for people: a WAV file (fluidsynth + a General MIDI SoundFont) and a PNG
piano roll (matplotlib) coloured by instrument.

Both are optional extras of ``generate`` / ``harmonize``: the MIDI file is always written
first, and a missing tool raises :class:`RenderUnavailable`, whose message says exactly
what to install, so the caller can report it without losing anything.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ... import events as ev
from ...atomic import atomic_write
from ...errors import NotochordError

log = logging.getLogger(__name__)

SOUNDFONT_ENV = "NOTOCHORD_SOUNDFONT"
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",  # Debian/Ubuntu fluid-soundfont-gm
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",  # Fedora / Arch
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM2-2.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
    "/usr/local/share/soundfonts/default.sf2",
)
INSTALL_HINT = "install them with: sudo apt-get install fluidsynth fluid-soundfont-gm"
SAMPLE_RATE = 44100
DRUM_MIN_WIDTH = 0.06  # seconds: drum hits are drawn at least this wide


class RenderUnavailable(NotochordError):
    """A renderer's tool is missing or failed; the message says what to install or why."""


# -- audio ----------------------------------------------------------------------------------
def find_soundfont(explicit: str | os.PathLike | None = None) -> Path:
    """The SoundFont to use: ``explicit``, else ``$NOTOCHORD_SOUNDFONT``, else a GM font
    from the usual system places. Raises :class:`RenderUnavailable` if there is none."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise RenderUnavailable(f"SoundFont not found: {path}")
        return path
    env = os.environ.get(SOUNDFONT_ENV)
    if env:
        if not Path(env).is_file():
            raise RenderUnavailable(f"${SOUNDFONT_ENV} names a missing file: {env}")
        return Path(env)
    for cand in SOUNDFONT_CANDIDATES:
        if Path(cand).is_file():
            return Path(cand)
    raise RenderUnavailable(
        f"no General MIDI SoundFont found (looked in {', '.join(SOUNDFONT_CANDIDATES[:3])}, "
        f"and ${SOUNDFONT_ENV}); {INSTALL_HINT}")


def find_fluidsynth() -> str:
    """Path of the ``fluidsynth`` program, or :class:`RenderUnavailable`."""
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise RenderUnavailable(f"fluidsynth is not installed; {INSTALL_HINT}")
    return exe


def render_wav(midi_path: str | os.PathLike, wav_path: str | os.PathLike, *,
               soundfont: str | os.PathLike | None = None, sample_rate: int = SAMPLE_RATE,
               gain: float = 0.6, timeout: float = 600.0) -> Path:
    """Render a MIDI file to a 16-bit WAV with fluidsynth (faster than real time).

    The WAV is written to a temporary name and renamed, so a failed render leaves no
    partial file. Raises :class:`RenderUnavailable` naming what is missing or what failed.
    """
    exe = find_fluidsynth()
    font = find_soundfont(soundfont)

    def write(tmp: Path) -> None:
        cmd = [exe, "-ni", "-q", "-g", f"{gain:g}", "-r", str(int(sample_rate)),
               "-F", str(tmp), "-T", "wav", str(font), os.fspath(midi_path)]
        log.info("rendering: %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RenderUnavailable(f"fluidsynth took more than {timeout:g} s") from None
        if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size <= 44:
            why = (proc.stderr or proc.stdout).strip().splitlines()
            raise RenderUnavailable(f"fluidsynth failed (exit {proc.returncode}): "
                                    f"{why[-1] if why else 'no output written'}")

    return atomic_write(wav_path, write)


# -- piano roll -------------------------------------------------------------------------------
def note_table(events: ev.EventArrays) -> dict[str, np.ndarray]:
    """Pair note-ons with note-offs per (instrument, pitch), in the given order.

    Returns arrays ``inst, pitch, start, end, vel`` (one row per note). A note still
    sounding at the end is closed at the last event's time; a note-off of a silent note
    is ignored.
    """
    open_notes: dict[tuple[int, int], tuple[float, int]] = {}
    rows: list[tuple[int, int, float, float, int]] = []
    for i, p, t, v in zip(events.inst.tolist(), events.pitch.tolist(), events.time.tolist(),
                          events.vel.tolist()):
        key = (i, p)
        if key in open_notes:
            start, vel = open_notes.pop(key)
            rows.append((i, p, start, t, vel))
        if v > 0:
            open_notes[key] = (t, v)
    end = events.duration
    rows.extend((i, p, s, end, v) for (i, p), (s, v) in open_notes.items())
    cols = list(zip(*rows)) if rows else [(), (), (), (), ()]
    names = ("inst", "pitch", "start", "end", "vel")
    types = (np.int16, np.int16, np.float64, np.float64, np.int16)
    return {n: np.asarray(c, dtype=d) for n, c, d in zip(names, cols, types)}


def render_png(events: ev.EventArrays, png_path: str | os.PathLike, *,
               prompt_end: float | None = None, title: str | None = None,
               highlight: Sequence[int] | None = None, dpi: int = 110) -> Path:
    """Draw a piano roll of ``events`` to a PNG, one colour per instrument with a legend.

    ``prompt_end``: seconds of prompt at the start, shaded grey and marked by a dashed
    line labelled "prompt | continuation". ``highlight``: instruments drawn with a black
    edge (e.g. the voices a harmonizer added). Raises :class:`RenderUnavailable` if
    matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise RenderUnavailable("matplotlib is not installed; install it with: "
                                "pip install 'notochord-rt[plot]'") from None
    notes = note_table(events)
    insts = list(dict.fromkeys(notes["inst"].tolist()))  # order of first note
    cmap = plt.get_cmap("tab10" if len(insts) <= 10 else "tab20")
    colour = {inst: cmap(k % cmap.N) for k, inst in enumerate(insts)}
    keep = set(highlight or ())
    duration = max(events.duration, 1e-3)
    fig, ax = plt.subplots(figsize=(min(24.0, 6.0 + duration / 6.0), 6.0))
    try:
        if prompt_end is not None and prompt_end > 0:
            ax.axvspan(0.0, prompt_end, color="0.88", zorder=0)
            ax.axvline(prompt_end, color="0.3", linestyle="--", linewidth=1.2, zorder=3)
            ax.text(prompt_end, 0.99, "prompt | continuation",
                    transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8,
                    color="0.2", zorder=4,
                    bbox={"facecolor": "white", "edgecolor": "0.6", "boxstyle": "round"})
        for inst in insts:
            sel = notes["inst"] == inst
            start, end = notes["start"][sel], notes["end"][sel]
            width = end - start
            if ev.is_drum(inst):
                width = np.maximum(width, DRUM_MIN_WIDTH)
            rgba = np.tile(np.asarray(colour[inst], dtype=float), (int(sel.sum()), 1))
            rgba[:, 3] = 0.35 + 0.65 * notes["vel"][sel] / 127.0  # louder = more opaque
            ax.bar(start, 0.8, width=np.maximum(width, 1e-3), bottom=notes["pitch"][sel] - 0.4,
                   align="edge", color=rgba, linewidth=0.8 if inst in keep else 0,
                   edgecolor="black" if inst in keep else "none", zorder=2)
        handles = [Patch(facecolor=colour[i], edgecolor="black" if i in keep else "none",
                         label=f"{ev.instrument_name(i)} ({i}){' [added]' if i in keep else ''}")
                   for i in insts]
        if prompt_end is not None and prompt_end > 0:
            handles.append(Patch(color="0.88", label="prompt"))
        if handles:
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                      fontsize=8, frameon=False, ncol=1 + (len(handles) - 1) // 24)
        ax.set_xlim(0.0, duration)
        if len(notes["pitch"]):
            ax.set_ylim(float(notes["pitch"].min()) - 2, float(notes["pitch"].max()) + 2)
        ax.set_xlabel("seconds")
        ax.set_ylabel("MIDI pitch (drum key for kits)")
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        png_path = atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return png_path
