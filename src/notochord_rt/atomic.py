"""Atomic, durable file writes: the one helper every module that publishes a file uses.

A file is written under a temporary name in the same folder, flushed and ``fsync``-ed,
renamed over its final name with ``os.replace`` (atomic on POSIX and Windows), and then
the folder is ``fsync``-ed so the rename itself survives a power cut. Readers therefore
see the old file or the new one, never half of one, and a killed writer leaves at most a
stray temporary file.

Temporary files are named ``.NAME.<pid>-<random>.tmp`` (see :func:`is_temp_name`): they
start with a dot and end in ``.tmp``, the pattern the sweepers of interrupted writes
(``data/store.py``, ``data/prep/ledger.py``, ``train/checkpoints.py``) look for.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

PathLike = str | os.PathLike


def fsync_path(path: PathLike) -> None:
    """``fsync`` a file or a folder by name. A no-op where the platform cannot open or
    sync it (folders on Windows), since durability there is best effort anyway."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: PathLike) -> None:
    """``fsync`` every file directly inside ``folder``, then the folder itself."""
    folder = Path(folder)
    for p in folder.iterdir():
        if p.is_file():
            fsync_path(p)
    fsync_path(folder)


def temp_name(path: Path) -> Path:
    """A fresh temporary sibling of ``path``: ``.NAME.<pid>-<random>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of :func:`temp_name`'s (a dot first, ``.tmp`` last)."""
    return name.startswith(".") and name.endswith(".tmp")


def replace_durably(src: PathLike, dst: PathLike) -> None:
    """Rename the complete file ``src`` over ``dst`` durably: ``fsync`` the file, rename,
    ``fsync`` the destination folder."""
    fsync_path(src)
    os.replace(src, dst)
    fsync_path(Path(dst).parent)


def atomic_write(path: PathLike, write: Callable[[Path], None], *,
                 make_parents: bool = False) -> Path:
    """Publish ``path`` atomically: ``write(tmp)`` writes the whole file at a temporary
    sibling (by name, so any writer works: safetensors, ``torch.save``, a subprocess),
    which is then ``fsync``-ed and renamed over ``path``; the folder is ``fsync``-ed last.

    On any error (or interrupt) the temporary file is removed and ``path`` is untouched.
    ``make_parents`` creates missing parent folders first. Returns ``path`` as a Path.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        write(tmp)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes, *, make_parents: bool = False) -> Path:
    """Publish ``data`` as the file ``path`` atomically and durably (see :func:`atomic_write`)."""
    def write(tmp: Path) -> None:
        with open(tmp, "xb") as f:
            f.write(data)
    return atomic_write(path, write, make_parents=make_parents)


def atomic_write_text(path: PathLike, text: str, *, encoding: str = "utf-8",
                      make_parents: bool = False) -> Path:
    """Publish ``text`` as the file ``path`` atomically and durably (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding), make_parents=make_parents)
