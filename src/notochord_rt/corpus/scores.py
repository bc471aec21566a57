"""The ``music21`` source of the corpus recipe: the scores bundled with PyPI ``music21``.

Every score file of music21's core corpus is parsed with music21 and written to MIDI
with music21's MIDI writer; an ABC opus (a file of many tunes) gives one MIDI file per
tune. Output lands in ``DEST/music21/<folder>/<path>_<k>.mid`` where ``<folder>`` is
one of :data:`FOLDERS` (``other`` for everything else), ``<path>`` is the score's path
inside the corpus with ``/`` replaced by ``__`` and ``k`` is the tune index.

Left out on purpose: the Essen folksong collection (licensed for non-commercial use
only) and Roman-numeral analyses (``.rntxt``: harmonic analyses, not scores); tunes
that :func:`.corpus.screen_midi` finds degenerate are not written (``left_out``).

Files are converted in a process pool, each parse and each tune write under a time
limit. A small JSON marker per source file under ``DEST/music21/.done/`` records what
was written and skipped, so a resumed build does not parse finished files again.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotochordError, UserError
from .build import (
    DEFAULT_TIME_LIMIT,
    Progress,
    ProgressFactory,
    ScoreTimeout,
    atomic_write_bytes,
    null_progress,
    reason_counts,
    screen_midi,
    stride_sample,
    time_limit,
)

log = logging.getLogger(__name__)

#: Corpus folders that get their own output folder; the rest goes to ``other``.
FOLDERS = ("bach", "palestrina", "oneills1850", "ryansMammoth")
#: Corpus folders left out, with the reason (recorded in the manifest).
EXCLUDED_FOLDERS = {"essenFolksong": "licensed for non-commercial use only"}
#: File types left out, with the reason.
EXCLUDED_SUFFIXES = {".rntxt": "Roman-numeral analysis, not a score"}
INSTALL_HINT = "pip install 'notochord-rt[corpus]'"
MARKERS = ".done"


def require_music21() -> str:
    """Return the installed music21 version, or raise a UserError saying how to install it."""
    try:
        import music21
    except ImportError as e:
        raise UserError(
            f"the music21 corpus source needs the Python package music21 ({e}); "
            f"install it with: {INSTALL_HINT}"
        ) from None
    return str(music21.__version__)


@dataclass(frozen=True)
class FileTask:
    """One corpus file to convert (picklable, sent to a worker process)."""

    path: str  # absolute path of the source file
    rel: str  # path inside the corpus, with '/'
    out_dir: str  # DEST/music21/<folder>
    max_scores: int | None  # at most this many tunes of an opus (None: all)
    time_limit_s: float | None

    @property
    def stem(self) -> str:
        return Path(self.rel).with_suffix("").as_posix().replace("/", "__")


def folder_for(rel: str) -> str:
    """Output folder of a corpus path (its top folder if listed in FOLDERS, else 'other')."""
    top = rel.split("/", 1)[0]
    return top if top in FOLDERS else "other"


def list_sources() -> tuple[Path, list[str], dict[str, str]]:
    """The corpus root, the sorted relative paths to convert, and the excluded ones
    (relative path → reason)."""
    from music21 import common, corpus

    root = Path(common.getCorpusFilePath())
    keep: list[str] = []
    excluded: dict[str, str] = {}
    for p in corpus.getCorePaths():
        rel = Path(p).relative_to(root).as_posix()
        top = rel.split("/", 1)[0]
        if top in EXCLUDED_FOLDERS:
            excluded[rel] = EXCLUDED_FOLDERS[top]
        elif Path(rel).suffix.lower() in EXCLUDED_SUFFIXES:
            excluded[rel] = EXCLUDED_SUFFIXES[Path(rel).suffix.lower()]
        else:
            keep.append(rel)
    return root, sorted(keep), excluded


def _summarise_excluded(excluded: dict[str, str]) -> list[dict]:
    """Excluded files grouped by reason: the reason, how many, and their folders."""
    groups: dict[str, dict] = {}
    for rel, why in sorted(excluded.items()):
        g = groups.setdefault(why, {"reason": why, "files": 0, "folders": []})
        g["files"] += 1
        folder = rel.rsplit("/", 1)[0] + "/"
        if folder not in g["folders"]:
            g["folders"].append(folder)
    return list(groups.values())


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def convert_file(task: FileTask) -> dict:
    """Parse one corpus file and write each of its scores (tunes) to MIDI.

    Runs in a worker process. Never raises for a bad score: failures are returned in
    ``skipped`` with a reason. A tune whose MIDI file already exists is not redone.
    """
    from music21 import converter, stream
    from music21.midi import translate

    out_dir = Path(task.out_dir)
    result: dict = {
        "source": task.rel,
        "scores": 0,
        "written": [],
        "cached": [],
        "skipped": [],
        "left_out": [],
        "max_scores": task.max_scores,
        "time_limit_s": task.time_limit_s,
    }
    chatter = io.StringIO()  # music21 writes its warnings straight to sys.stderr
    with warnings.catch_warnings(), contextlib.redirect_stderr(chatter):
        warnings.simplefilter("ignore")
        try:
            with time_limit(task.time_limit_s):
                parsed = converter.parse(task.path, forceSource=True, storePickle=False)
            scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
        except (Exception, ScoreTimeout) as e:
            result["skipped"].append({"index": None, "reason": _reason(e)})
            return result
        result["scores"] = len(scores)
        for k, score in enumerate(scores[: task.max_scores]):
            name = f"{task.stem}_{k}.mid"
            out = out_dir / name
            if out.exists():
                result["cached"].append(name)
                continue
            try:
                with time_limit(task.time_limit_s):
                    data = translate.music21ObjectToMidiFile(score).writestr()
            except (Exception, ScoreTimeout) as e:
                result["skipped"].append({"index": k, "reason": _reason(e)})
                continue
            unfit = screen_midi(data)
            if unfit is not None:  # degenerate (e.g. a handful of notes): not written
                result["left_out"].append({"index": k, "file": name, "reason": unfit})
                continue
            atomic_write_bytes(out, data)
            result["written"].append(name)
    if chatter.getvalue():
        log.debug("music21 said while converting %s:\n%s", task.rel, chatter.getvalue())
    return result


def _marker_path(root: Path, rel: str) -> Path:
    return root / MARKERS / (rel.replace("/", "__") + ".json")


def _reusable(marker: dict, task: FileTask) -> bool:
    """Whether an earlier result for this file still answers the current request."""
    done_all = marker.get("max_scores") is None
    if not done_all and (task.max_scores is None or marker["max_scores"] < task.max_scores):
        return False
    timed_out = any("ScoreTimeout" in s.get("reason", "") for s in marker.get("skipped", []))
    if timed_out and (task.time_limit_s or float("inf")) > (marker.get("time_limit_s") or 0):
        return False  # a larger limit now: try the slow score again
    out_dir = Path(task.out_dir)
    return all((out_dir / n).exists() for n in marker.get("written", []) + marker.get("cached", []))


def _load_marker(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and "source" in data else None


def _merge(section: dict, res: dict, from_marker: bool) -> None:
    """Add one file's result to the manifest section."""
    if from_marker:
        section["cached"] += len(res["written"]) + len(res["cached"])
    else:
        section["written"] += len(res["written"])
        section["cached"] += len(res["cached"])
    section["scores"] += min(res["scores"], res["max_scores"] or res["scores"])
    folder = folder_for(res["source"])
    section["folders"][folder] = (
        section["folders"].get(folder, 0) + len(res["written"]) + len(res["cached"])
    )
    for s in res["skipped"]:
        section["skipped"].append({"source": res["source"], **s})
    for s in res.get("left_out", []):  # markers of older builds have none
        section["left_out"].append({"source": res["source"], **s})


def build_music21(
    dest: str | os.PathLike,
    *,
    jobs: int = 1,
    limit: int | None = None,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT,
    progress: ProgressFactory = null_progress,
) -> dict:
    """Convert music21's corpus into ``dest`` (``DEST/music21``); return the manifest section.

    ``limit``: convert only that many corpus files (spread evenly over the sorted list)
    and at most that many tunes of each opus. ``jobs`` worker processes (1: in process).
    """
    version = require_music21()
    root = Path(dest)
    corpus_root, rels, excluded = list_sources()
    chosen = stride_sample(rels, limit)
    section: dict = {
        "source": "scores bundled with the PyPI package music21, written with its MIDI writer",
        "package": "music21",
        "version": version,
        "licence": "music21 is BSD-3-Clause; the corpus encodings are distributed with "
        "their encoders' permission, some with restrictions on commercial use (see "
        "music21/corpus/license.txt and licences embedded in the scores)",
        "files_considered": len(chosen),
        "excluded": _summarise_excluded(excluded),
        "scores": 0,
        "written": 0,
        "cached": 0,
        "folders": {},
        "skipped": [],
        "left_out": [],
    }
    tasks: list[FileTask] = []
    for rel in chosen:
        task = FileTask(
            path=str(corpus_root / rel),
            rel=rel,
            out_dir=str(root / folder_for(rel)),
            max_scores=limit,
            time_limit_s=time_limit_s,
        )
        marker = _load_marker(_marker_path(root, rel))
        if marker is not None and _reusable(marker, task):
            _merge(section, marker, from_marker=True)
        else:
            tasks.append(task)
    # Largest files first, so one slow quartet does not finish alone at the end.
    tasks.sort(key=lambda t: (-Path(t.path).stat().st_size, t.rel))
    log.info("music21: %d files to convert, %d done earlier", len(tasks), len(chosen) - len(tasks))

    bar = progress("music21", len(chosen))
    bar.update(len(chosen) - len(tasks))
    try:
        for res in _run(tasks, jobs, bar):
            atomic_write_bytes(
                _marker_path(root, res["source"]), json.dumps(res, indent=0).encode()
            )
            _merge(section, res, from_marker=False)
    finally:
        bar.close()
    section["skipped"].sort(key=lambda s: (s["source"], -1 if s["index"] is None else s["index"]))
    section["left_out"].sort(key=lambda s: (s["source"], s["index"]))
    section["left_out_by_reason"] = reason_counts(s["reason"] for s in section["left_out"])
    section["files"] = section["written"] + section["cached"]
    section["folders"] = dict(sorted(section["folders"].items()))
    return section


def _run(tasks: list[FileTask], jobs: int, bar: Progress):
    """Yield each task's result as it finishes (in process when ``jobs`` is 1)."""
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield convert_file(task)
            bar.update(1)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
        futures = [pool.submit(convert_file, t) for t in tasks]
        try:
            for fut in as_completed(futures):
                yield fut.result()
                bar.update(1)
        except BrokenProcessPool as e:
            raise NotochordError(
                f"a music21 worker process died ({e}); perhaps out of memory: "
                "rerun with fewer jobs (-j) to resume where it stopped"
            ) from e
