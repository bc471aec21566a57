"""Shared fixtures of the test suite.

Helpers live in plain modules next to the tests and are imported by name (pytest puts this
folder on ``sys.path``: ``from tiny import tiny_model``, ``from midifiles import
simple_song``):

* ``tiny.py``: the one tiny model (:data:`tiny.TINY`, overridable);
* ``midifiles.py``: MIDI files built byte by byte;
* ``jack.py``: a JACK server for the live tests; ``split_files.py``, ``fuzz_midi.py``.

The fixtures below wrap the common cases; for another seed, size or initialisation call
``tiny.tiny_model(seed, init=..., **overrides)`` (or ``tiny_net`` / ``tiny_config``).

The ``slow`` marker is on the tests of about a second or more: ``bash scripts/test.sh
--fast`` leaves them out (``-m "not slow"``); CI (``.ci/run``) runs everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from midifiles import simple_song
from tiny import tiny_model as _tiny_model

from notochord_rt.engine.sampling.sampler import Notochord


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (the CI machine is small and shared: more threads
    only add contention); the previous count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny() -> Notochord:
    """A fresh tiny sampler of the standard size, seed 0, wide weights."""
    return _tiny_model(0)


@pytest.fixture
def song_file(tmp_path: Path) -> Path:
    """``simple_song()`` (piano, bass, an anonymous channel and drums; a tempo change)
    written to a fresh ``song.mid``."""
    path = tmp_path / "song.mid"
    path.write_bytes(simple_song())
    return path
