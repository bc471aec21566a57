"""Keep the MIDI back ends' own stderr chatter off the user's terminal.

ALSA's and libjack's C code write straight to file descriptor 2 while rtmidi probes and
opens ports (``ALSA lib seq_hw.c:466: ... open /dev/snd/seq failed``, ``Cannot connect
to server socket``, ``jack server is not running or cannot be started``,
``JackShmReadWritePtr::~JackShmReadWritePtr - Init not done``...), before the one clear
line the app itself has to say. :func:`backend_noise` captures descriptor 2 around such
a step: lines known as back-end noise are logged at DEBUG and summarised in one INFO
line; anything else is written back to stderr unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)

NOISE = re.compile(r"^(ALSA lib |Cannot connect to server|Cannot read socket|"
                   r"Cannot open .*(shm|semaphore)|jack server is not running|"
                   r"JackShm|Jack[A-Za-z]*::|jack_client_new|Unable to connect to JACK)")
"""Lines of stderr that come from ALSA or libjack, not from us."""


def split_noise(text: str) -> tuple[list[str], list[str]]:
    """``(noise lines, other lines)`` of captured stderr text (empty lines dropped)."""
    noise, other = [], []
    for line in text.splitlines():
        if line.strip():
            (noise if NOISE.match(line) else other).append(line)
    return noise, other


@contextlib.contextmanager
def backend_noise() -> Iterator[None]:
    """Capture descriptor 2 for the duration (see the module doc). A no-op where stderr
    has no descriptor (e.g. under a test's capture)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            noise, other = split_noise(tmp.read().decode(errors="replace"))
            if other:
                sys.stderr.write("\n".join(other) + "\n")
                sys.stderr.flush()
            for line in noise:
                log.debug("MIDI back end: %s", line)
            if noise:
                log.info("MIDI back end: %d lines of ALSA/JACK messages hidden (first: %s; "
                         "-vv shows them)", len(noise), noise[0])


__all__ = ["backend_noise", "split_noise"]
