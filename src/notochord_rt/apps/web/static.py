"""The page's files: a fixed list read from the package's ``static`` folder at startup.

Requests name a file of that list; nothing else is ever opened, so no path a client
sends (``..``, absolute paths, encoded slashes, symlinks) can reach another file.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).with_name("static")

TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
         ".map": "application/json", ".svg": "image/svg+xml", ".png": "image/png"}


@dataclass(frozen=True)
class StaticFile:
    """One served file, read into memory once (the bundle is small)."""

    name: str
    body: bytes
    media_type: str


def load_static(folder: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """``{name: file}`` of the regular files directly in ``folder`` (no subfolders, no
    links, no hidden files)."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_symlink() or not p.is_file():
            continue
        media = TYPES.get(p.suffix) or mimetypes.guess_type(p.name)[0] or \
            "application/octet-stream"
        out[p.name] = StaticFile(p.name, p.read_bytes(), media)
    return out
