"""Checkpoint folders of a run, written atomically.

Layout of a run folder ``RUN``::

    RUN/config.json                   the resolved TrainConfig of the run
    RUN/checkpoints/step-00001000/    one complete checkpoint (model + training state)
    RUN/checkpoints/latest            name of the newest complete checkpoint
    RUN/logs/                         TensorBoard event files

A checkpoint is first written into a hidden temporary folder next to its final place,
flushed to disk, and only then renamed into place (``os.replace`` is atomic); the
``latest`` pointer is replaced the same way afterwards, and only then are older
checkpoints pruned. A run killed at any moment therefore keeps a complete checkpoint,
whatever ``keep`` is:

* a killed first write leaves a stray ``.tmp-*`` folder, which is ignored;
* rewriting a step that exists (end of an epoch and of the run) moves the old folder
  aside into ``.old-*/`` before renaming the new one into place. A kill between those two
  renames leaves the only copy of that step in ``.old-*/``: :func:`list_checkpoints` and
  :func:`latest_checkpoint` still find it there, and :func:`sweep_partial` moves it back.

:func:`sweep_partial` (called when a run starts or resumes) removes the rest: ``.tmp-*``
and ``.old-*`` folders and the temporary files of killed atomic writes
(:func:`notochord_rt.atomic.atomic_write`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..atomic import atomic_write_text, fsync_path, fsync_tree, is_temp_name
from ..errors import CheckpointError
from ..model.checkpoint import DEFAULT_NAME, default_checkpoint

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
_NAME = re.compile(r"^step-(\d{8,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def stranded_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints a rewrite killed between its two renames left in ``.old-*/``
    (only those whose step has no folder in ``ckpt_dir``), as (step, folder)."""
    found = []
    if not ckpt_dir.is_dir():
        return found
    for aside in ckpt_dir.iterdir():
        if not (aside.name.startswith(".old-") and aside.is_dir()):
            continue
        for p in aside.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_dir() and not (ckpt_dir / p.name).exists():
                found.append((int(m.group(1)), p))
    return found


def sweep_partial(ckpt_dir: Path) -> None:
    """Clean up after killed writes: move stranded checkpoints back into place, then
    delete ``.tmp-*`` / ``.old-*`` folders and temporary files, in ``ckpt_dir`` and (for
    the run's ``config.json``) in the run folder above it.

    Call it only where nothing else writes the run (the trainer does, when it starts).
    """
    if not ckpt_dir.is_dir():
        return
    for _, folder in stranded_checkpoints(ckpt_dir):
        if not (ckpt_dir / folder.name).exists():
            os.replace(folder, ckpt_dir / folder.name)
            log.warning("recovered checkpoint %s from an interrupted rewrite", folder.name)
    fsync_path(ckpt_dir)
    for p in ckpt_dir.iterdir():
        if p.name.startswith((".tmp-", ".old-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif is_temp_name(p.name) and p.is_file():
            p.unlink(missing_ok=True)
    if ckpt_dir.name == CHECKPOINTS:
        for p in ckpt_dir.parent.glob(".config.json.*.tmp"):
            p.unlink(missing_ok=True)


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``ckpt_dir`` as (step, folder), oldest first; a stranded
    one (see :func:`stranded_checkpoints`) counts, from where it is."""
    if not ckpt_dir.is_dir():
        return []
    found = stranded_checkpoints(ckpt_dir)
    for p in ckpt_dir.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The folder ``latest`` names, else the highest step found, else None."""
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        candidate = ckpt_dir / pointer.read_text().strip()
        if _NAME.match(candidate.name) and candidate.is_dir():
            return candidate
        log.warning("%s names a missing checkpoint; using the newest complete one", pointer)
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def write_checkpoint(
    ckpt_dir: Path, step: int, write: Callable[[Path], None], keep: int | None = None
) -> Path:
    """Write checkpoint ``step`` by calling ``write(tmp_folder)``, then commit it atomically.

    If ``write`` raises, the temporary folder is removed and nothing else changes.
    Afterwards only the newest ``keep`` checkpoints are kept (None keeps all): they are
    pruned only once the new one is complete and ``latest`` names it.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = ckpt_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=ckpt_dir))
    try:
        write(tmp)
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        # the same step written again (e.g. at the end of an epoch and of the run)
        old = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=ckpt_dir))
        os.replace(final, old / name)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old / name, final)  # put the complete old one back
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # a kill before this line leaves old/name, which sweep_partial moves back
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_path(ckpt_dir)
    atomic_write_text(ckpt_dir / LATEST, name + "\n")
    if keep is not None:
        prune(ckpt_dir, keep)
    return final


def prune(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (never the one ``latest`` names)."""
    latest = latest_checkpoint(ckpt_dir)
    found = list_checkpoints(ckpt_dir)
    for _, folder in found[: max(0, len(found) - keep)]:
        if folder != latest:
            shutil.rmtree(folder, ignore_errors=True)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a run folder, a ``checkpoints`` folder or the folder itself;
    ``"default"`` (when no such file exists) is the bundled default model.

    Raises :class:`CheckpointError` if nothing usable is there.
    """
    p = Path(path)
    if str(path) == DEFAULT_NAME and not p.exists():
        return default_checkpoint()
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_file() or _NAME.match(p.name):
        return p
    for ckpt_dir in (p / CHECKPOINTS, p):
        found = latest_checkpoint(ckpt_dir)
        if found is not None:
            return found
    return p
