"""MIDI file → Notochord events: the one ingest used by preprocessing and prompting.

``load_midi(path_or_bytes)`` returns an :class:`Ingested`: the piece as sorted
:class:`~notochord_rt.events.EventArrays` (absolute seconds), one :class:`PartInfo` per
source part and a ``stats`` dict of counts.

Why not symusic's note lists? symusic parses fast, but its ``Score`` cannot tell "no
program change" from "program 0", drops the channel and source track of each note,
applies a program change only inside its own track, silently drops note-ons that are
never released, and accepts type-2 files, division 0 and tempo 0. Each of those changes
the instrument ids or the notes, so the file is read by :mod:`notochord_rt.midi.smf`
(a strict single-pass walker plus numpy; see there for the structural checks) and
everything after that is numpy.

Rules (each is tested in ``tests/test_midi.py``):

Program state
    Follows playback order: events are ordered by (tick, track, position in track), as a
    synthesiser playing the merged tracks would see them. A program change applies to every
    later note-on of its channel, *whatever track it is in* (the reference tracks programs
    per track). A note keeps the program that was current at its note-on.
Parts and instruments
    A part is (track, channel, program state). Channel 10 (0-based 9) is drums: no program
    change → standard kit 129, program p → 129 + p. Other channels: program p → p + 1; no
    program change → a fresh anonymous melodic id (257..288) per part. Parts with the same
    instrument are merged unless they have a *collision*: the same pitch sounding in both
    at once (notes that only touch do not collide). As in the reference, parts are taken
    largest first and join the first slot they do not collide with. Then (after the
    repair below) the slot with the most notes takes the instrument's id and the others
    anonymous ids (largest first; ties by source order), so export → ingest gives back
    the same ids. So a part that collides with every slot of its instrument gets a fresh
    anonymous id of its kind (257.. melodic, 289.. drums). ``merge=False`` keeps every
    part separate (a repeated instrument gets an anonymous id). When the 32 anonymous
    ids of a kind are used up, a further part is merged into an existing slot (a warning
    is logged, ``stats["forced_merges"]`` counts it) and the repair below resolves any
    overlap.
Notes and repair
    Note-ons and note-offs are paired per (track, channel, pitch) in file order. A note-on
    of a sounding pitch ends the sounding note at that instant ("repaired note-on"); a
    note-off of a silent pitch is dropped ("orphan note-off"); note-on velocity 0 is a
    note-off. After merging, overlapping notes of one (instrument, pitch) are repaired the
    same way. A note never released ends at the end of its track (the file's end if the
    track ends at the note-on); any note longer than :data:`MAX_NOTE_SECONDS` is clipped.
Zero-length notes
    A note whose note-on and note-off share a tick is kept (on drums these are ordinary
    hits). Its note-off gets the next float64 after the note-on's time
    (``np.nextafter``: picoseconds later), the smallest change that keeps the note-on before
    its note-off under :meth:`EventArrays.sorted`, which puts note-offs first at equal
    times. Several note-ons of one pitch at the same instant keep only the last (the
    others would be zero-length notes hidden under it; ``stats["duplicate_strikes"]``).
Time
    Ticks become seconds through the tempo map of all tracks (default 120 bpm), computed
    with a vectorised search (cheap even for tens of thousands of tempo changes).
    A tempo of 0 µs per quarter is ignored (logged); other tempi are used as written
    (seconds per tick depend on the division too, so no bpm is "absurd" on its own;
    ``stats["min_bpm"]``/``["max_bpm"]`` let callers filter). A piece longer than
    :data:`MAX_PIECE_SECONDS` raises ``MidiError("too long ...")``; a file without notes
    raises ``MidiError("no notes")``.

Implementations
    Two implementations give identical results (events bit for bit, stats, parts, error
    messages and log records): the compiled ``notochord_rt.midi._cingest`` (C, built by
    ``setup.py`` when a C compiler is there; about 15 times faster, see docs/prep.md) and
    the numpy code of this module with :mod:`~notochord_rt.midi.smf` (the reference, and
    the fallback when the extension is not built). ``load_midi`` uses the compiled one
    when it imports; ``impl="python"`` or the environment variable
    ``NOTOCHORD_RT_PURE_INGEST=1`` force the numpy one, ``impl="c"`` insists on the
    compiled one. ``tests/test_cingest.py`` and ``benchmarks/ingest_equivalence.py``
    check that they agree.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from .. import events as ev
from ..errors import InputError, MidiError
from . import compiled
from .smf import CHAN, DUP, END, PITCH, SEQ, START, TRACK, UNENDED, VEL, SmfNotes, read_smf

log = logging.getLogger(__name__)

DEFAULT_TEMPO_US = 500_000  # 120 bpm, the SMF default
MAX_PIECE_SECONDS = 6 * 3600.0
MAX_NOTE_SECONDS = 60.0


@dataclass(frozen=True)
class PartInfo:
    """One source part: notes of one (track, channel, program state)."""

    inst: int  # instrument id its events carry
    track: int  # source track index (0-based, MTrk chunks in file order)
    channel: int  # 0-based MIDI channel
    program: int | None  # GM program in force (None: no program change yet)
    notes: int  # notes of this part that reached the events
    repaired_note_ons: int  # note-ons of a sounding pitch: a note-off was inserted
    dropped_note_offs: int  # note-offs of a silent pitch: dropped
    merged_into: int | None = None  # index (in ``Ingested.parts``) of the part it joined


@dataclass
class Ingested:
    """Result of :func:`load_midi`."""

    events: ev.EventArrays
    parts: list[PartInfo] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)


def _read_source(source) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"source must be a path or bytes, got {type(source).__name__}")
    try:
        with open(os.fspath(source), "rb") as f:
            return f.read()
    except OSError as e:
        raise MidiError(f"cannot read {os.fspath(source)}: {e.strerror or e}") from e


# -- from raw notes to events -------------------------------------------------------------
def load_midi(
    source: str | os.PathLike | bytes,
    *,
    merge: bool = True,
    max_note_seconds: float = MAX_NOTE_SECONDS,
    impl: str = "auto",
) -> Ingested:
    """Read a Standard MIDI File (path or bytes) into sorted events, parts and stats.

    ``merge=False`` keeps every source part separate instead of merging parts of the same
    instrument; notes longer than ``max_note_seconds`` are clipped to that length.
    Raises :class:`~notochord_rt.errors.MidiError` (with the reason) for any file that
    cannot be turned into events. See the module docstring for the rules.

    ``impl`` picks the implementation (see "Implementations" in the module docstring):
    ``"auto"`` the compiled one when it is built and ``NOTOCHORD_RT_PURE_INGEST`` is not
    ``1``, ``"c"`` the compiled one (``InputError`` if it is not built), ``"python"`` this
    module's numpy code. Both give identical results; :func:`compiled.available
    <notochord_rt.midi.compiled.available>` says whether the compiled one is built.
    """
    if not max_note_seconds > 0:
        raise InputError(f"max_note_seconds must be > 0, got {max_note_seconds!r}")
    if compiled.wanted(impl, max_note_seconds):
        out = compiled.run(_read_source(source), merge, float(max_note_seconds))
        if isinstance(out, float):
            raise _too_long(out)
        events, parts, stats = out
        return Ingested(events, [PartInfo(*p) for p in parts], stats)
    return _load_python(_read_source(source), merge, max_note_seconds)


def _too_long(duration: float) -> MidiError:
    return MidiError(
        f"too long: {duration / 3600:.1f} hours, more than {MAX_PIECE_SECONDS / 3600:g} "
        "(huge delta times?)"
    )


def _load_python(data: bytes, merge: bool, max_note_seconds: float) -> Ingested:
    """The numpy ingest: the reference the compiled one is tested against."""
    raw = read_smf(data)
    if not len(raw.notes):
        raise MidiError("no notes")
    notes = raw.notes
    stats: dict[str, float] = {
        "format": raw.fmt,
        "tracks": raw.tracks,
        "ticks_per_quarter": raw.ticks_per_quarter,
        "unended_notes": int(notes[:, UNENDED].sum()),
    }
    _end_unended(notes, raw.track_ends)
    prog = _programs_at(notes[:, START], notes[:, SEQ], notes[:, CHAN], raw)
    to_seconds = _tempo_map(raw, stats)
    start = to_seconds(notes[:, START])
    end = to_seconds(notes[:, END])
    long_notes = end - start > max_note_seconds
    stats["clipped_notes"] = int(long_notes.sum())
    end = np.where(long_notes, start + max_note_seconds, end)
    if not np.isfinite(end).all():
        raise MidiError("note times are not finite (broken tempo map)")
    duration = float(end.max())
    if duration > MAX_PIECE_SECONDS:
        raise _too_long(duration)
    part_keys = (notes[:, TRACK] * 16 + notes[:, CHAN]) * 129 + (prog + 1)
    keys, part_of_note = np.unique(part_keys, return_inverse=True)
    part_of_note = part_of_note.reshape(-1)
    sizes = np.bincount(part_of_note, minlength=len(keys))
    slot_of_part, merged_into, forced, specs = _partition(
        keys, sizes, part_of_note, notes[:, PITCH], start, end, merge
    )
    stats["forced_merges"] = forced
    slot = slot_of_part[part_of_note]
    keep, start, end, truncated, strikes = repair_overlaps(slot, notes[:, PITCH], start, end)
    inst_of_slot = _label(specs, np.bincount(slot[keep], minlength=len(specs)))
    inst_of_part = inst_of_slot[slot_of_part]
    inst = inst_of_slot[slot]
    stats["duplicate_strikes"] = strikes
    stats["zero_length_notes"] = int((end[keep] == start[keep]).sum())
    end = np.where(end == start, np.nextafter(start, np.inf), end)
    parts = _part_infos(keys, inst_of_part, merged_into, part_of_note, keep, truncated, notes, raw)
    pitch = notes[keep, PITCH]
    vel = notes[keep, VEL]
    inst = inst[keep]
    events = ev.EventArrays.build(
        np.concatenate([inst, inst]),
        np.concatenate([pitch, pitch]),
        np.concatenate([start[keep], end[keep]]),
        np.concatenate([vel, np.zeros_like(vel)]),
    ).sorted()
    stats.update(
        notes=int(keep.sum()),
        events=len(events),
        parts=len(parts),
        instruments=len(np.unique(inst)),
        repaired_note_ons=sum(p.repaired_note_ons for p in parts),
        dropped_note_offs=len(raw.orphans) + int(truncated.sum()),
        duration=events.duration,
    )
    return Ingested(events, parts, stats)


def _end_unended(notes: np.ndarray, track_ends: np.ndarray) -> None:
    """Give never-released notes the end of their track (or of the file) as note-off."""
    unended = notes[:, UNENDED] == 1
    if not unended.any():
        return
    ends = track_ends[notes[unended, TRACK]]
    starts = notes[unended, START]
    file_end = max(int(notes[:, END].max()), int(track_ends.max()))
    notes[unended, END] = np.where(ends > starts, ends, file_end)


def _programs_at(tick, seq, chan, raw: SmfNotes) -> np.ndarray:
    """Program in force (-1: none) on ``chan`` at each (tick, seq) playback position."""
    out = np.full(len(tick), -1, dtype=np.int64)
    pcs = raw.programs
    if not len(pcs):
        return out
    all_tick = np.concatenate([tick, pcs[:, 0]])
    order = np.lexsort((np.concatenate([seq, pcs[:, 2]]), all_tick))
    rank = np.empty(len(all_tick), dtype=np.int64)
    rank[order] = np.arange(len(all_tick))
    item_rank, pc_rank = rank[: len(tick)], rank[len(tick):]
    for c in np.unique(pcs[:, 3]):
        on_c = pcs[:, 3] == c
        r = pc_rank[on_c]
        o = np.argsort(r)
        sel = chan == c
        idx = np.searchsorted(r[o], item_rank[sel]) - 1
        out[sel] = np.where(idx >= 0, pcs[on_c, 4][o][np.maximum(idx, 0)], -1)
    return out


def _tempo_map(raw: SmfNotes, stats: dict):
    """A vectorised ticks → seconds function from the tempo events of all tracks."""
    scale = 1.0 / (raw.ticks_per_quarter * 1e6)
    if len(raw.tempos):
        t = raw.tempos
        bad = t[:, 3] <= 0
        if bad.any():
            log.warning("ignoring %d tempo events of 0 µs per quarter note", int(bad.sum()))
        stats["invalid_tempos"] = int(bad.sum())
        t = t[~bad]
        t = t[np.lexsort((t[:, 2], t[:, 0]))]  # playback order: tick, then file position
        t = t[np.append(t[1:, 0] != t[:-1, 0], True)[: len(t)]]  # the last at a tick wins
        ticks, us = t[:, 0], t[:, 3]
        if not len(ticks) or ticks[0] > 0:
            ticks = np.concatenate([[0], ticks])
            us = np.concatenate([[DEFAULT_TEMPO_US], us])
    else:
        stats["invalid_tempos"] = 0
        ticks = np.zeros(1, dtype=np.int64)
        us = np.full(1, DEFAULT_TEMPO_US, dtype=np.int64)
    stats["tempo_changes"] = len(ticks) - 1
    stats["min_bpm"] = float(60e6 / us.max())
    stats["max_bpm"] = float(60e6 / us.min())
    rate = us.astype(np.float64) * scale  # seconds per tick in each segment
    at = np.concatenate([[0.0], np.cumsum(np.diff(ticks).astype(np.float64) * rate[:-1])])

    def to_seconds(x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(ticks, x, side="right") - 1
        return at[i] + (x - ticks[i]).astype(np.float64) * rate[i]

    return to_seconds


@dataclass
class _Slot:
    """The notes of the parts merged into one instrument so far."""

    group: int  # the named id its parts share (0: melodic without program change)
    first: int  # index of its first part
    pitches: np.ndarray  # bool[128]
    t0: float
    t1: float
    notes: list  # (pitch, start, end) arrays of each member part

    def add(self, pitch, start, end) -> None:
        self.pitches[pitch] = True
        self.t0, self.t1 = min(self.t0, float(start.min())), max(self.t1, float(end.max()))
        self.notes.append((pitch, start, end))

    def collides(self, pitch, start, end) -> bool:
        """True if a pitch sounds in the slot and in these notes at the same time."""
        if not self.pitches[pitch].any() or end.max() <= self.t0 or self.t1 <= start.min():
            return False
        p = np.concatenate([pitch, *(n[0] for n in self.notes)])
        s = np.concatenate([start, *(n[1] for n in self.notes)])
        e = np.concatenate([end, *(n[2] for n in self.notes)])
        o = np.lexsort((e, s, p))
        p, s, e = p[o], s[o], e[o]
        # notes of one side never overlap, so any overlap shows between neighbours
        return bool(np.any((p[1:] == p[:-1]) & (s[1:] < e[:-1])))


class _Anonymous:
    """Hands out the 32 + 32 anonymous ids in order."""

    def __init__(self) -> None:
        self.used = {False: 0, True: 0}

    def left(self, drum: bool) -> int:
        return ev.N_ANON - self.used[drum]

    def take(self, drum: bool) -> int:
        k = self.used[drum]
        self.used[drum] = k + 1
        return ev.anonymous_drum(k) if drum else ev.anonymous_melodic(k)


def _partition(keys, sizes, part_of_note, pitch, start, end, merge: bool):
    """Group parts into slots (one instrument id each, given later by :func:`_label`).

    Returns the slot of each part, the part each one was merged into, the number of
    forced merges and, per slot, (instrument group, first part): group 0 for melodic
    parts without program change (one slot each), else the named id the slot shares.
    """
    n_parts = len(keys)
    prog = keys % 129 - 1
    drum = (keys // 129) % 16 == ev.DRUM_CHANNEL
    order = np.argsort(part_of_note, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    slot_of_part = np.zeros(n_parts, dtype=np.int64)
    merged_into: list[int | None] = [None] * n_parts
    slots: list[_Slot] = []
    specs: list[tuple[int, int]] = []
    anon = _Anonymous()  # counts the ids that _label will hand out
    forced = 0

    def add(k: int, group: int, slot: int | None = None) -> int:
        idx = order[bounds[k] : bounds[k + 1]]
        if slot is None:
            slot = len(slots)
            slots.append(_Slot(group, k, np.zeros(128, dtype=bool), np.inf, -np.inf, []))
            specs.append((group, k))
        else:
            merged_into[k] = slots[slot].first
        slots[slot].add(pitch[idx], start[idx], end[idx])
        slot_of_part[k] = slot
        return slot

    # 1. melodic parts with no program change: one anonymous slot each, in part order
    lone: list[int] = []
    for k in np.flatnonzero((prog < 0) & ~drum).tolist():
        if anon.left(False):
            anon.take(False)
            lone.append(add(k, 0))
        else:  # all 32 used: share one, round robin
            forced += 1
            add(k, 0, lone[forced % ev.N_ANON])
    # 2. named instruments and kits: largest part first, into the first slot it does not
    # collide with, else a new slot while anonymous ids are left
    named = np.where(drum, ev.FIRST_DRUM + np.maximum(prog, 0), prog + ev.FIRST_MELODIC)
    for inst in np.unique(named[(prog >= 0) | drum]).tolist():
        kit = bool(ev.is_drum(inst))
        members = np.flatnonzero((named == inst) & ((prog >= 0) | drum))
        group: list[int] = []
        for k in members[np.lexsort((members, -sizes[members]))].tolist():
            idx = order[bounds[k] : bounds[k + 1]]
            notes = pitch[idx], start[idx], end[idx]
            fit = next((g for g in group if merge and not slots[g].collides(*notes)), None)
            if fit is None and group and not anon.left(kit):
                forced += 1
                fit = group[0]
            elif fit is None and group:
                anon.take(kit)
            if fit is None:
                group.append(add(k, inst))
            else:
                add(k, inst, fit)
    if forced:
        log.warning("more parts than anonymous ids: %d parts merged with collisions", forced)
    return slot_of_part, merged_into, forced, specs


def _label(specs: list[tuple[int, int]], kept: np.ndarray) -> np.ndarray:
    """Instrument id of each slot: in each group the slot with the most notes (ties: the
    earlier first part) takes the named id, the others anonymous ids in the same order."""
    anon = _Anonymous()
    inst_of_slot = np.zeros(len(specs), dtype=np.int64)
    for slot, (group, _) in enumerate(specs):
        if group == 0:
            inst_of_slot[slot] = anon.take(False)
    for group in sorted({g for g, _ in specs if g}):
        mine = sorted((-kept[s], first, s) for s, (g, first) in enumerate(specs) if g == group)
        for rank, (_, _, slot) in enumerate(mine):
            inst_of_slot[slot] = group if rank == 0 else anon.take(bool(ev.is_drum(group)))
    return inst_of_slot


def repair_overlaps(inst, pitch, start, end):
    """Make the notes of each (inst, pitch) disjoint, as a player of the events would.

    A note is ended where the next note of its (inst, pitch) starts, if that is earlier
    (a repaired note-on); a zero-length note that starts with the next one is dropped
    (a hidden strike). Works on ticks or seconds. Returns (keep mask, start, new end,
    truncated mask of kept notes, number of hidden strikes); ``start`` is not changed.
    """
    o = np.lexsort((end, start, pitch, inst))
    same = (inst[o][1:] == inst[o][:-1]) & (pitch[o][1:] == pitch[o][:-1])
    next_start = start[o][1:]
    cut = same & (next_start < end[o][:-1])
    end = end.copy()
    truncated = np.zeros(len(inst), dtype=bool)
    truncated[o[:-1][cut]] = True
    end[o[:-1][cut]] = next_start[cut]
    hidden = same & (end[o][:-1] == start[o][:-1]) & (next_start == start[o][:-1])
    keep = np.ones(len(inst), dtype=bool)
    keep[o[:-1][hidden]] = False
    return keep, start, end, truncated & keep, int(hidden.sum())


def _part_infos(keys, inst_of_part, merged_into, part_of_note, keep, truncated, notes, raw):
    """One PartInfo per part, with its counts of kept notes and repairs."""
    n = len(keys)
    kept = np.bincount(part_of_note[keep], minlength=n)
    dup = notes[:, DUP].astype(bool)
    # a hidden strike was already counted as a repaired note-on by the walker
    repaired = np.bincount(part_of_note, weights=dup | truncated, minlength=n).astype(int)
    cut = np.bincount(part_of_note, weights=truncated, minlength=n).astype(int)
    orphans_per_part = np.zeros(n, dtype=np.int64)
    if len(raw.orphans):
        o = raw.orphans
        prog = _programs_at(o[:, 0], o[:, 2], o[:, 3], raw)
        okeys = (o[:, 1] * 16 + o[:, 3]) * 129 + (prog + 1)
        pos = np.searchsorted(keys, okeys)
        found = (pos < n) & (keys[np.minimum(pos, n - 1)] == okeys)
        np.add.at(orphans_per_part, pos[found], 1)
    parts = []
    for k in range(n):
        key = int(keys[k])
        program = key % 129 - 1
        parts.append(
            PartInfo(
                inst=int(inst_of_part[k]),
                track=key // 129 // 16,
                channel=key // 129 % 16,
                program=None if program < 0 else program,
                notes=int(kept[k]),
                repaired_note_ons=int(repaired[k]),
                dropped_note_offs=int(orphans_per_part[k] + cut[k]),
                merged_into=merged_into[k],
            )
        )
    return parts
