"""Finding the General MIDI SoundFont the page plays with (served, never bundled)."""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import UserError

CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
)
"""Where Debian/Ubuntu (``fluid-soundfont-gm``, ``timgm6mb-soundfont``) and Fedora/Arch
put their GM SoundFonts."""

HOW_TO_GET = ("no General MIDI SoundFont found: on Debian/Ubuntu `sudo apt install "
              "fluid-soundfont-gm`, or pass --soundfont PATH to any .sf2/.sf3 file")
"""What the page and the command say when there is none."""

SUFFIXES = (".sf2", ".sf3", ".dls")


def find_soundfont(path: str | os.PathLike | None = None) -> Path | None:
    """The SoundFont to serve: ``path`` (UserError if it is not a readable SoundFont file)
    or the first of :data:`CANDIDATES` that exists; None when there is none."""
    if path is not None:
        p = Path(path).expanduser().resolve()
        if not p.is_file():
            raise UserError(f"--soundfont {path}: no such file")
        if p.suffix.lower() not in SUFFIXES:
            raise UserError(f"--soundfont {path}: expected a {'/'.join(SUFFIXES)} file")
        try:
            with open(p, "rb") as f:
                head = f.read(4)
        except OSError as e:
            raise UserError(f"--soundfont {path}: {e.strerror or e}") from None
        if head != b"RIFF":
            raise UserError(f"--soundfont {path}: not a SoundFont (no RIFF header)")
        return p
    for c in CANDIDATES:
        p = Path(c)
        if p.is_file() and os.access(p, os.R_OK):
            return p.resolve()
    return None
