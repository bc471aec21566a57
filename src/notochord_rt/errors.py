"""Exception types shared by every layer."""

from __future__ import annotations

from typing import Any


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages: a hostile value can
    be huge, and a message should stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class NotochordError(Exception):
    """Base class of this package's errors."""


class UserError(NotochordError):
    """A mistake in what the user asked for; the CLI prints it as one line, no traceback."""


class MidiError(NotochordError):
    """A MIDI file that cannot be read or turned into events; the message says why."""


class CheckpointError(NotochordError):
    """A checkpoint that is missing, malformed, or refused as unsafe."""


class InputError(NotochordError, ValueError):
    """Bad arguments to a model or engine call (shape, range, NaN); names the argument."""


class NoPossibleEvents(NotochordError):
    """A set of constraints that no event can satisfy; the message names the conflict."""


class DataError(NotochordError):
    """A prepared data folder that is incomplete or whose parts disagree; names the part."""
