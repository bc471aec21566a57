"""The stuck-pitch guard: a melodic instrument does not stay on one or two pitches for ever.

A model that copies motifs, sampled with its pitch tails cut (top-p) and its motif
candidates favoured (``motif_weight``), can fall into a loop it never leaves: one
instrument alternating two pitches, or hammering one, for hundreds of notes. Sampled
as it is, the bundled model does not (docs/model-card.md); real music does not either.
On the training split of the project corpus, the longest stretch of an instrument's
consecutive note-ons on at most 1 / 2 / 3 distinct pitches has a median of 2 / 4 / 8
notes (90th percentile 3 / 8 / 19); 60 s generated with the app defaults had stretches
of 100-400 (docs/model-card.md).

``Constraints.max_stuck = L`` (0: off) caps those stretches: a melodic instrument plays
at most ``L`` note-ons in a row on one or two pitches, and ``2 L`` on three. When the
instrument's last note-ons fill such a stretch, the pitches of that stretch are not
drawn for its next note (unless nothing else is allowed: then the constraint gives way,
as the soft constraints do). With the apps' ``L = 16``, 95 % of the training split's
melodic parts never reach a limit (0.7 % have more than 16 note-ons on one pitch, 2.8 %
on two, 4.3 % more than 32 on three: ostinati and comping). Drum kits are exempt (their
patterns are meant to loop), and so is a pitch drawn before its instrument is known.
"""

from __future__ import annotations

from collections.abc import Sequence

SPANS = (1, 1, 2)
"""Longest stretches, in multiples of ``max_stuck``, on at most 1, 2, 3 distinct pitches."""


def stuck_pitches(pitches: Sequence[int], limit: int) -> list[int]:
    """The pitches the next note of an instrument must avoid under ``max_stuck = limit``.

    ``pitches`` are the instrument's note-on pitches so far, oldest first. Returns the
    distinct pitches of the longest trailing stretch that is full (``k`` distinct
    pitches over at least ``SPANS[k-1] * limit`` note-ons), or ``[]``: playing one of
    them would make that stretch longer than allowed. Looks at
    most ``4 * limit`` note-ons back and stops at the 4th distinct pitch, so in varied
    music it reads a few notes.
    """
    if limit <= 0 or not pitches:
        return []
    banned: list[int] = []
    seen: list[int] = []
    span = 0  # trailing note-ons on the pitches in ``seen``
    for x in reversed(pitches[-SPANS[-1] * limit:]):
        if x not in seen:
            if seen and span >= SPANS[len(seen) - 1] * limit:
                banned = list(seen)
            if len(seen) == len(SPANS):
                return banned
            seen.append(x)
        span += 1
    if span >= SPANS[len(seen) - 1] * limit:
        banned = list(seen)
    return banned
