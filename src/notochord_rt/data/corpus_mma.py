"""The ``mma`` source of the corpus recipe: seeded accompaniment songs, one per groove.

MMA (Musical MIDI Accompaniment, Debian package ``mma``, GPL-2+) renders chord charts
with a library of "grooves" (drum, bass, chord and arpeggio patterns, humanized). For
every groove of its library, except intros, endings and fills, this writes one 32-bar
song to ``DEST/mma/<Groove>.mid``. Tempo (70..160 BPM), transposition (-5..6
semitones), chord progression (one of :data:`PROGRESSIONS`) and MMA's own random seed
are all drawn from a generator seeded by the groove name, so the corpus is the same on
every machine. ``variants > 1`` adds ``<Groove>_v<k>.mid`` songs seeded by
``<Groove>#<k>``.

Grooves are found by reading the ``DefGroove`` lines of the library's ``.mma`` files
(MMA's own groove database is a Python pickle, which we do not read). A groove defined
in several libraries is taken from ``stdlib`` first, then the others alphabetically,
and each song names its library file with ``Use`` so there is no ambiguity.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .corpus import (
    DEFAULT_TIME_LIMIT,
    ProgressFactory,
    atomic_write_bytes,
    null_progress,
    stride_sample,
)

log = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install mma"
BARS = 32
TEMPO_RANGE = (70, 160)
TRANSPOSE_RANGE = (-5, 6)
SKIP_WORDS = re.compile(r"intro|end|fill", re.IGNORECASE)
_DEFGROOVE = re.compile(r"^\s*defgroove\s+([^\s/]+)", re.IGNORECASE | re.MULTILINE)
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")

#: Eight common chord progressions (in C major / A minor; the song transposes them).
PROGRESSIONS: dict[str, tuple[str, ...]] = {
    "pop I-V-vi-IV": ("C", "G", "Am", "F"),
    "doo-wop I-vi-IV-V": ("C", "Am", "F", "G"),
    "rock I-IV-V-IV": ("C", "F", "G", "F"),
    "jazz ii-V-I": ("Dm7", "G7", "Cmaj7", "Cmaj7"),
    "turnaround I-vi-ii-V": ("Cmaj7", "Am7", "Dm7", "G7"),
    "twelve-bar blues": ("C7", "C7", "C7", "C7", "F7", "F7", "C7", "C7", "G7", "F7", "C7", "G7"),
    "Pachelbel canon": ("C", "G", "Am", "Em", "F", "C", "F", "G"),
    "Andalusian cadence": ("Am", "G", "F", "E7"),
}


def safe_name(groove: str) -> str:
    """The file name stem of a groove: characters other than letters, digits and ``_``
    (``R&B``, ``Afro-Cuban``) become ``_``."""
    return _UNSAFE.sub("_", groove)


@dataclass(frozen=True)
class MmaTool:
    """An mma program, its groove library folder and its version."""

    binary: str
    lib: Path
    version: str


@dataclass(frozen=True)
class Groove:
    """A groove name and the library file that defines it."""

    name: str
    file: Path


@dataclass(frozen=True)
class Song:
    """Everything that decides one generated song."""

    groove: Groove
    variant: int
    tempo: int
    transpose: int
    progression: str
    mma_seed: int

    @property
    def filename(self) -> str:
        base = safe_name(self.groove.name)
        return f"{base}.mid" if self.variant == 0 else f"{base}_v{self.variant}.mid"


def require_mma(binary: str | None = None, lib: str | os.PathLike | None = None) -> MmaTool:
    """Find the mma program and its groove library, or raise a UserError saying how to
    install them."""
    found = shutil.which(binary or "mma")
    if found is None:
        what = f"the mma program {binary!r} was not found" if binary else "mma is not installed"
        raise UserError(
            f"the mma corpus source needs MMA (Musical MIDI Accompaniment) but {what}; "
            f"install it with: {INSTALL_HINT}"
        )
    lib_dir = find_lib(found, lib)
    return MmaTool(binary=found, lib=lib_dir, version=mma_version(found))


def find_lib(binary: str, lib: str | os.PathLike | None = None) -> Path:
    """The groove library folder: ``lib`` if given, else where mma installs look for it."""
    if lib is not None:
        candidates = [Path(lib)]
    else:
        prefix = Path(binary).resolve().parent.parent
        candidates = [
            prefix / "share" / "mma" / "lib",
            Path("/usr/share/mma/lib"),
            Path("/usr/local/share/mma/lib"),
            Path(binary).resolve().parent / "lib",
        ]
    for c in candidates:
        if c.is_dir() and any(c.rglob("*.mma")):
            return c
    raise UserError(
        "no mma groove library (a folder of .mma files) found in "
        + ", ".join(str(c) for c in candidates)
        + f"; install mma with: {INSTALL_HINT}, or name the folder with --mma-lib"
    )


def mma_version(binary: str) -> str:
    """The version mma reports with ``-v`` (``unknown`` if it says nothing usable)."""
    try:
        proc = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"cannot run {binary} -v ({e}); reinstall with: {INSTALL_HINT}") from None
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown"


def list_grooves(lib: Path) -> list[Groove]:
    """Grooves of the library (no intros, endings or fills), sorted by name, each file
    name once (compared case-insensitively): stdlib's definition first, then the other
    libraries' in alphabetical order."""
    subdirs = sorted(
        (d for d in lib.iterdir() if d.is_dir()), key=lambda d: (d.name != "stdlib", d.name)
    )
    seen: dict[str, Groove] = {}
    for d in [lib, *subdirs]:
        files = sorted(d.glob("*.mma")) if d == lib else sorted(d.rglob("*.mma"))
        for f in files:
            text = f.read_text(encoding="utf-8", errors="replace")
            for name in _DEFGROOVE.findall(text):
                if SKIP_WORDS.search(name):
                    continue
                # one file per groove, also on case-insensitive file systems
                seen.setdefault(safe_name(name).lower(), Groove(name, f))
    return sorted(seen.values(), key=lambda g: g.name.lower())


def _rng(key: str) -> random.Random:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def plan_song(groove: Groove, variant: int = 0) -> Song:
    """Draw tempo, transposition, progression and mma seed from the groove name
    (and the variant number when above 0)."""
    key = groove.name if variant == 0 else f"{groove.name}#{variant}"
    rng = _rng(key)
    return Song(
        groove=groove,
        variant=variant,
        tempo=rng.randint(*TEMPO_RANGE),
        transpose=rng.randint(*TRANSPOSE_RANGE),
        progression=rng.choice(sorted(PROGRESSIONS)),
        mma_seed=rng.randrange(1, 2**31),
    )


def song_text(song: Song, bars: int = BARS) -> str:
    """The mma song file for ``song``: settings, then one chord per bar."""
    chords = PROGRESSIONS[song.progression]
    lines = [
        f"// notochord-rt corpus recipe: groove {song.groove.name}, variant {song.variant},",
        f"// progression {song.progression}",
        f"RndSeed {song.mma_seed}",
        f"Use {song.groove.file.as_posix()}",
        f"Groove {song.groove.name}",
        f"Tempo {song.tempo}",
        f"Transpose {song.transpose}",
    ]
    lines += [f"{bar + 1} {chords[bar % len(chords)]}" for bar in range(bars)]
    return "\n".join(lines) + "\n"


def render(tool: MmaTool, song: Song, time_limit_s: float | None) -> bytes:
    """Run mma on the song and return the MIDI bytes; raise RuntimeError with mma's
    message when it fails."""
    with tempfile.TemporaryDirectory(prefix="ntrt-mma-") as tmp:
        (Path(tmp) / "song.mma").write_text(song_text(song))
        try:
            proc = subprocess.run(
                [tool.binary, "-xNOCREDIT", "-w", "song.mma", "-f", "song.mid"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=time_limit_s or None,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"mma ran past the time limit of {time_limit_s:g} s") from None
        out = Path(tmp) / "song.mid"
        if proc.returncode != 0 or not out.exists():
            message = " ".join((proc.stderr + proc.stdout).split())
            raise RuntimeError(f"mma failed (status {proc.returncode}): {message[-300:]}")
        return out.read_bytes()


def build_mma(
    dest: str | os.PathLike,
    tool: MmaTool,
    *,
    jobs: int = 1,
    limit: int | None = None,
    variants: int = 1,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT,
    progress: ProgressFactory = null_progress,
) -> dict:
    """Write ``variants`` songs per groove (``limit`` grooves spread over the sorted list
    when given) into ``dest`` (``DEST/mma``); return the manifest section. Songs whose
    file exists are not redone; failures are skipped and listed."""
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    grooves = stride_sample(list_grooves(tool.lib), limit)
    songs = [plan_song(g, v) for g in grooves for v in range(variants)]
    section: dict = {
        "source": "one seeded 32-bar song per groove of the Debian package mma",
        "package": "mma",
        "version": tool.version,
        "licence": "mma is GPL-2+; the generated songs are program output",
        "library": str(tool.lib),
        "grooves": len(grooves),
        "variants": variants,
        "songs": len(songs),
        "written": 0,
        "cached": 0,
        "skipped": [],
        "progressions": {},
    }
    todo = [s for s in songs if not (root / s.filename).exists()]
    section["cached"] = len(songs) - len(todo)
    for s in songs:
        section["progressions"][s.progression] = section["progressions"].get(s.progression, 0) + 1

    def one(song: Song) -> tuple[Song, str | None]:
        try:
            data = render(tool, song, time_limit_s)
        except RuntimeError as e:
            return song, str(e)
        atomic_write_bytes(root / song.filename, data)
        return song, None

    bar = progress("mma", len(songs))
    bar.update(section["cached"])
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for song, reason in pool.map(one, todo):
                if reason is None:
                    section["written"] += 1
                else:
                    section["skipped"].append(
                        {"groove": song.groove.name, "variant": song.variant, "reason": reason}
                    )
                bar.update(1)
    finally:
        bar.close()
    section["files"] = section["written"] + section["cached"]
    section["progressions"] = dict(sorted(section["progressions"].items()))
    return section
