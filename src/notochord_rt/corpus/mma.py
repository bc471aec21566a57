"""The ``mma`` source of the corpus recipe: seeded songs on the grooves of MMA.

MMA (Musical MIDI Accompaniment, Debian package ``mma``, GPL-2+) renders chord charts
with a library of "grooves" (drum, bass, chord and arpeggio patterns, humanized). The
recipe:

1. lists the grooves of the library, except intros, endings and fills;
2. *probes* each groove with a 4-bar song (cached in ``DEST/mma/.probes.json``): its
   metre (mma's ``$_Time``) and whether it plays melodic notes. Grooves that
   :func:`.corpus.screen_events` finds degenerate (drum-only grooves above all) are
   left out with all their songs, and listed with the reason;
3. writes ``songs_per_groove`` songs per remaining groove, ``DEST/mma/<Groove>.mid``
   and ``<Groove>_v<k>.mid``, each planned by :func:`.corpus_songs.plan_song` from
   ``(seed, groove, k)``: a form with exactly repeated sections, progressions in one of
   12 keys, a tempo suited to the groove's style, usually a melody;
4. screens each song again; unfit songs are not kept (listed in the manifest and in
   ``DEST/mma/.left_out.json``, so a resumed build does not render them again).

Grooves are found by reading the ``DefGroove`` lines of the library's ``.mma`` files
(MMA's own groove database is a Python pickle, which we do not read). A groove defined
in several libraries is taken from ``stdlib`` first, then the others alphabetically,
and each song names its library file with ``Use`` so there is no ambiguity.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import MidiError, UserError
from ..midi.ingest import load_midi
from . import songs
from .build import (
    DEFAULT_TIME_LIMIT,
    ProgressFactory,
    atomic_write_bytes,
    null_progress,
    read_json,
    reason_counts,
    screen_events,
    screen_midi,
    stride_sample,
)

log = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install mma"
RECIPE = 2  # bump when the songs change, so an old DEST/mma is not mixed with new songs
SKIP_WORDS = re.compile(r"intro|end|fill", re.IGNORECASE)
_DEFGROOVE = re.compile(r"^\s*defgroove\s+([^\s/]+)", re.IGNORECASE | re.MULTILINE)
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
PROBE_CHORDS = ("C", "Am", "F", "G7")
_BEATS = re.compile(r"^NOTOCHORD_BEATS\s+(\S+)\s*$", re.MULTILINE)
STAMP, PROBES, LEFT_OUT = ".recipe.json", ".probes.json", ".left_out.json"


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
    """One song to render: its groove, its number and its plan."""

    groove: Groove
    index: int
    plan: songs.SongPlan

    @property
    def filename(self) -> str:
        base = safe_name(self.groove.name)
        return f"{base}.mid" if self.index == 0 else f"{base}_v{self.index}.mid"


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




def variations_of(groove: Groove, grooves: list[Groove]) -> list[Groove]:
    """The other grooves of the same library file (``Swing`` → ``SwingSus``, ``Swing1``,
    ...): candidates for a song's B and C sections."""
    return [g for g in grooves if g.file == groove.file and g.name != groove.name]


def run_mma(tool: MmaTool, text: str, time_limit_s: float | None) -> tuple[bytes, str]:
    """Run mma on a song file's text; return the MIDI bytes and what mma printed. Raise
    RuntimeError with mma's message when it fails."""
    with tempfile.TemporaryDirectory(prefix="ntrt-mma-") as tmp:
        (Path(tmp) / "song.mma").write_text(text)
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
        return out.read_bytes(), proc.stdout


def probe(tool: MmaTool, groove: Groove, time_limit_s: float | None) -> dict:
    """Render a 4-bar song on ``groove``: its beats per bar (``beats``, None if mma did
    not say) and ``reason`` (None, or why the groove is left out: no melodic notes).
    Raises RuntimeError when mma fails."""
    text = "\n".join([f"Use {groove.file.as_posix()}", f"Groove {groove.name}",
                      "Print NOTOCHORD_BEATS $_Time",
                      *(f"{k + 1} {c}" for k, c in enumerate(PROBE_CHORDS))]) + "\n"
    data, said = run_mma(tool, text, time_limit_s)
    m = _BEATS.search(said)
    try:
        beats = float(m.group(1)) if m else None
    except ValueError:
        beats = None
    try:
        events = load_midi(data).events
    except MidiError as e:
        return {"beats": beats, "reason": f"unreadable MIDI: {e}"}
    reason = screen_events(events)
    if reason is not None and not reason.startswith("no "):
        reason = None  # few notes in 4 bars is no verdict on a whole song
    return {"beats": beats, "reason": reason and f"groove has {reason}"}


def _probe_all(tool: MmaTool, grooves: list[Groove], root: Path, jobs: int,
               time_limit_s: float | None, progress: ProgressFactory) -> dict[str, dict]:
    """Probes of ``grooves``, from ``root/.probes.json`` where an earlier build of the
    same mma version made them; a failed probe gives ``{"error": message}``."""
    cache = read_json(root / PROBES)
    known = cache.get("grooves", {}) if cache.get("mma") == tool.version else {}
    todo = [g for g in grooves if g.name not in known or "error" in known[g.name]]

    def one(g: Groove) -> tuple[str, dict]:
        try:
            return g.name, probe(tool, g, time_limit_s)
        except RuntimeError as e:
            return g.name, {"error": str(e)}

    bar = progress("mma grooves", len(todo))
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for name, result in pool.map(one, todo):
                known[name] = result
                bar.update(1)
    finally:
        bar.close()
    if todo:
        atomic_write_bytes(root / PROBES, json.dumps(
            {"mma": tool.version, "grooves": dict(sorted(known.items()))}, indent=0).encode())
    return known


def _check_stamp(root: Path, stamp: dict) -> None:
    """Refuse to mix songs of another recipe or seed into ``root``; write the stamp."""
    old = read_json(root / STAMP)
    has_songs = any(root.glob("*.mid"))
    if has_songs and {k: old.get(k) for k in ("recipe", "seed")} != {
            k: stamp[k] for k in ("recipe", "seed")}:
        was = (f"recipe {old.get('recipe')}, seed {old.get('seed')}" if old
               else "an older recipe")
        raise UserError(f"{root} holds songs of {was}, not recipe {stamp['recipe']}, seed "
                        f"{stamp['seed']}: build into a new folder or delete {root}")
    atomic_write_bytes(root / STAMP, json.dumps(stamp).encode())


def plan_songs(grooves: list[Groove], everything: list[Groove], probes: dict[str, dict],
               songs_per_groove: int, seed: int) -> list[Song]:
    """The songs of ``grooves`` (probed and kept); B/C sections draw variations among
    ``everything`` that share the groove's metre and are kept too."""
    out = []
    for g in grooves:
        beats = probes[g.name]["beats"]
        variations = tuple(
            v.name for v in variations_of(g, everything)
            if v.name in probes and probes[v.name].get("reason", "x") is None
            and probes[v.name].get("beats") == beats)
        for k in range(songs_per_groove):
            plan = songs.plan_song(g.name, k, seed=seed, library_file=g.file.stem,
                                   beats=beats, variations=variations)
            out.append(Song(g, k, plan))
    return out


def _describe(kept: list[Song]) -> dict:
    """Counts of the kept songs' forms, progressions, keys, tempi and melodies."""
    forms: dict[str, int] = {}
    progressions: dict[str, int] = {}
    keys: dict[int, int] = {}
    tempi = [s.plan.tempo for s in kept]
    for s in kept:
        forms[s.plan.form] = forms.get(s.plan.form, 0) + 1
        keys[s.plan.transpose] = keys.get(s.plan.transpose, 0) + 1
        for sec in s.plan.sections:
            progressions[sec.progression] = progressions.get(sec.progression, 0) + 1
    return {
        "forms": dict(sorted(forms.items())),
        "progressions": dict(sorted(progressions.items())),
        "transpositions": {str(k): v for k, v in sorted(keys.items())},
        "tempo": [min(tempi), max(tempi)] if tempi else [],
        "with_melody": sum(s.plan.melody_program is not None for s in kept),
        "with_variation_groove": sum(
            any(sec.groove != s.groove.name for sec in s.plan.sections) for s in kept),
    }


def build_mma(
    dest: str | os.PathLike,
    tool: MmaTool,
    *,
    jobs: int = 1,
    limit: int | None = None,
    songs_per_groove: int = 1,
    seed: int = 0,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT,
    progress: ProgressFactory = null_progress,
) -> dict:
    """Probe the grooves (``limit`` of them spread over the sorted list when given),
    write ``songs_per_groove`` songs per fit groove into ``dest`` (``DEST/mma``) and
    return the manifest section. Songs whose file exists, or that an earlier build left
    out, are not redone; failures are skipped and listed."""
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    _check_stamp(root, {"recipe": RECIPE, "seed": seed, "mma": tool.version})
    everything = list_grooves(tool.lib)
    grooves = stride_sample(everything, limit)
    wanted = {g.name for g in grooves}
    for g in grooves:  # a song's other sections may use variations outside the sample
        wanted.update(v.name for v in variations_of(g, everything))
    probes = _probe_all(tool, [g for g in everything if g.name in wanted], root, jobs,
                        time_limit_s, progress)
    skipped = [{"groove": g.name, "reason": probes[g.name]["error"]}
               for g in grooves if "error" in probes[g.name]]
    grooves_left_out = [{"groove": g.name, "reason": probes[g.name]["reason"]}
                        for g in grooves if probes[g.name].get("reason")]
    fit = [g for g in grooves if probes[g.name].get("reason", "x") is None]
    plan = plan_songs(fit, everything, probes, songs_per_groove, seed)

    left_out = {k: v for k, v in read_json(root / LEFT_OUT).items() if isinstance(v, str)}
    todo = [s for s in plan if not (root / s.filename).exists() and s.filename not in left_out]
    cached = [s for s in plan if (root / s.filename).exists()]
    written: list[Song] = []

    def one(song: Song) -> tuple[Song, str | None, str | None]:
        try:
            data, _ = run_mma(tool, songs.song_text(song.plan, song.groove.file.as_posix()),
                              time_limit_s)
        except RuntimeError as e:
            return song, str(e), None
        unfit = screen_midi(data)
        if unfit is None:
            atomic_write_bytes(root / song.filename, data)
        return song, None, unfit

    bar = progress("mma songs", len(plan))
    bar.update(len(plan) - len(todo))
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for song, error, unfit in pool.map(one, todo):
                if error is not None:
                    skipped.append({"groove": song.groove.name, "song": song.index,
                                    "reason": error})
                elif unfit is not None:
                    left_out[song.filename] = unfit
                else:
                    written.append(song)
                bar.update(1)
    finally:
        bar.close()
    if left_out:
        atomic_write_bytes(root / LEFT_OUT,
                           json.dumps(dict(sorted(left_out.items())), indent=0).encode())
    planned = {s.filename for s in plan}
    songs_left_out = [{"file": f, "reason": r} for f, r in sorted(left_out.items())
                      if f in planned]
    kept = sorted(cached + written, key=lambda s: s.filename)
    return {
        "source": "seeded songs (forms with repeated sections, melodies) on the grooves "
        "of the Debian package mma",
        "package": "mma",
        "version": tool.version,
        "licence": "mma is GPL-2+; the generated songs are program output",
        "library": str(tool.lib),
        "recipe": RECIPE,
        "seed": seed,
        "grooves": len(grooves),
        "grooves_fit": len(fit),
        "grooves_left_out": grooves_left_out,
        "grooves_left_out_by_reason": reason_counts(g["reason"] for g in grooves_left_out),
        "songs_per_groove": songs_per_groove,
        "songs": len(plan),
        "written": len(written),
        "cached": len(cached),
        "files": len(kept),
        "skipped": skipped,
        "left_out": songs_left_out,
        "left_out_by_reason": reason_counts(s["reason"] for s in songs_left_out),
        **_describe(kept),
    }
