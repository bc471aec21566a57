"""The model cache: where pulled models live, and what is recorded about them.

The cache folder is ``$NOTOCHORD_RT_HOME`` if set, else the user's cache folder from
``platformdirs`` (``~/.cache/notochord-rt`` on Linux). Layout::

    HOME/models/NAME/model.safetensors   the model, in our format (a converted reference
                                         checkpoint included): what loading reads
    HOME/models/NAME/pull.json           where it came from: url, sha256 of the download,
                                         whether that was verified, size, time
    HOME/models/NAME/.partial/           the download while it runs (removed after)
    HOME/models/.NAME.lock               held while NAME is being pulled or removed
    HOME/known-hashes.json               url -> sha256 of its first download, for files
                                         without a published checksum (kept by `remove`)

A model is *cached* when ``model.safetensors`` exists: it is renamed into place last, after
it was written and checked completely, so a pull killed at any moment leaves either no
model or a complete one (and a ``.partial`` folder the next pull sweeps away).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import NotochordError
from .registry import ModelEntry

HOME_ENV = "NOTOCHORD_RT_HOME"
MODELS = "models"
MODEL_FILE = "model.safetensors"
RECORD_FILE = "pull.json"
PARTIAL = ".partial"
KNOWN_HASHES = "known-hashes.json"


class HubError(NotochordError):
    """A pull, cache or registry operation failed; the message is one line saying why."""


def home() -> Path:
    """The cache folder (not created here)."""
    given = os.environ.get(HOME_ENV)
    if given:
        return Path(given).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("notochord-rt", appauthor=False))


def model_dir(name: str) -> Path:
    return home() / MODELS / name


def cached_model(entry: ModelEntry) -> Path | None:
    """The cached model file of ``entry`` (the bundled file for bundled ones), else None."""
    if entry.is_bundled:
        from importlib import resources

        from ..model.checkpoint import default_checkpoint

        if entry.bundled == "default.safetensors":
            try:
                return default_checkpoint()
            except NotochordError:
                return None
        path = Path(str(resources.files("notochord_rt") / "assets" / str(entry.bundled)))
        return path if path.is_file() else None
    path = model_dir(entry.name) / MODEL_FILE
    return path if path.is_file() else None


def read_record(name: str) -> dict[str, Any]:
    """The ``pull.json`` of a cached model ({} if there is none or it is unreadable)."""
    try:
        data = json.loads((model_dir(name) / RECORD_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, value: Any) -> None:
    """Replace ``path`` with ``value`` as JSON; readers see the old or the new file."""
    atomic_write_text(path, json.dumps(value, indent=1, sort_keys=True) + "\n",
                      make_parents=True)


def known_hash(url: str) -> str | None:
    """The sha256 recorded for ``url``'s first download, if any."""
    try:
        data = json.loads((home() / KNOWN_HASHES).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get(url) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def remember_hash(url: str, sha256: str) -> None:
    """Record ``sha256`` as the first download of ``url`` (never overwrites one)."""
    path = home() / KNOWN_HASHES
    try:
        data = json.loads(path.read_text("utf-8"))
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    if url not in data:
        data[url] = sha256
        write_json_atomic(path, data)


def forget_hash(url: str) -> bool:
    """Drop the recorded first-download checksum of ``url``; True if there was one."""
    path = home() / KNOWN_HASHES
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or url not in data:
        return False
    del data[url]
    write_json_atomic(path, data)
    return True


@contextlib.contextmanager
def model_lock(name: str, action: str) -> Iterator[None]:
    """Hold the lock of model ``name`` (non-blocking): a second process pulling or removing
    the same model at the same time gets a HubError at once instead of a mixed result.

    The lock is an OS file lock (``fcntl.flock``), released when the process ends however it
    ends. Where ``fcntl`` does not exist (Windows) no lock is taken.
    """
    folder = home() / MODELS
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise HubError(f"cannot use the model cache {folder}: {e.strerror or e}") from None
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                raise HubError(f"another notochord-rt process{holder} is pulling or removing "
                               f"{name!r} right now; run this again when it has finished"
                               ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {action} {time.time():.0f}\n".encode())
        yield
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("ascii", "replace").split()
    except OSError:
        return ""
    return f" (pid {text[0]})" if text and text[0].isdigit() else ""


def sweep(name: str) -> None:
    """Remove what a killed pull of ``name`` left (hold the lock)."""
    folder = model_dir(name)
    shutil.rmtree(folder / PARTIAL, ignore_errors=True)
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and p.is_file():
                p.unlink(missing_ok=True)


def remove(entry: ModelEntry, forget: bool = False) -> bool:
    """Delete ``entry``'s cached files; True if anything was there. ``forget`` also drops
    the recorded first-download checksum. Bundled models cannot be removed."""
    if entry.is_bundled:
        raise HubError(f"{entry.name!r} is bundled with the package; there is nothing to "
                       "remove from the cache")
    with model_lock(entry.name, "remove"):
        folder = model_dir(entry.name)
        existed = folder.exists()
        if existed:
            shutil.rmtree(folder)
        if forget and entry.url:
            existed = forget_hash(entry.url) or existed
    return existed


def disk_free(path: Path) -> int | None:
    """Free bytes on the file system of ``path`` (or its nearest existing parent)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None
