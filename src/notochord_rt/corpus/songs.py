"""Song plans of the mma corpus source: chord progressions, song forms, tempi and melodies.

Pure functions, no subprocess: :mod:`.corpus_mma` finds the grooves, probes them and runs
mma; this module decides what each song is and writes its mma text. Everything is drawn
from a ``random.Random`` seeded by a key (groove name, song number), so a song is the
same on every machine.

A song is a *form*: a sequence of sections such as ``AABA`` or ``ABAB``. Each letter is
one section with its own chord progression, groove (the song's groove for ``A``, a
variation from the same library file, e.g. ``SwingSus``, for the others when there is
one with the same metre), melody and mma random seed. Every section starts with
``RndSeed`` and ``Seq`` (which resets the groove's pattern counter), so a repeated
letter is rendered *exactly* the same, humanizing included: the songs have repetition a
model can learn.

Melodies are written as an mma ``Solo`` track with MIDI note numbers (so mma's key
signature never alters them; ``Transpose`` still moves them with the chords): a
two-bar rhythm motif repeated through each four-bar phrase with a longer note at the
phrase end, chord tones on strong beats and steps of the key's scale between them.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

#: Chord progressions written in C major or A minor, one chord per bar; the song's
#: ``Transpose`` moves them (and the melody) to one of the 12 keys.
PROGRESSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    # major
    "pop I-V-vi-IV": ("major", ("C", "G", "Am", "F")),
    "doo-wop I-vi-IV-V": ("major", ("C", "Am", "F", "G")),
    "rock I-IV-V-IV": ("major", ("C", "F", "G", "F")),
    "I-IV-I-V": ("major", ("C", "F", "C", "G")),
    "I-iii-IV-V": ("major", ("C", "Em", "F", "G")),
    "vi-IV-I-V": ("major", ("Am", "F", "C", "G")),
    "Pachelbel canon": ("major", ("C", "G", "Am", "Em", "F", "C", "F", "G")),
    "jazz ii-V-I": ("major", ("Dm7", "G7", "Cmaj7", "Cmaj7")),
    "turnaround I-vi-ii-V": ("major", ("Cmaj7", "Am7", "Dm7", "G7")),
    "rhythm changes A": ("major", ("Cmaj7", "Am7", "Dm7", "G7", "Em7", "A7", "Dm7", "G7")),
    "circle of fifths": ("major", ("Cmaj7", "Fmaj7", "Bm7b5", "E7", "Am7", "Dm7", "G7", "Cmaj7")),
    "ii-V-I-VI": ("major", ("Dm7", "G7", "Cmaj7", "A7")),
    "twelve-bar blues": ("major", ("C7", "C7", "C7", "C7", "F7", "F7", "C7", "C7",
                                   "G7", "F7", "C7", "G7")),
    "jazz blues": ("major", ("C7", "F7", "C7", "C7", "F7", "F7", "C7", "A7",
                             "Dm7", "G7", "C7", "G7")),
    "mixolydian vamp I-bVII": ("major", ("C", "Bb", "C", "Bb")),
    "lydian vamp I-II": ("major", ("Cmaj7", "D", "Cmaj7", "D")),
    # minor
    "Andalusian cadence": ("minor", ("Am", "G", "F", "E7")),
    "minor i-iv-v-i": ("minor", ("Am", "Dm", "Em", "Am")),
    "minor i-iv-V7-i": ("minor", ("Am", "Dm", "E7", "Am")),
    "minor ii-V-i": ("minor", ("Bm7b5", "E7", "Am7", "Am7")),
    "aeolian i-bVII-bVI-bVII": ("minor", ("Am", "G", "F", "G")),
    "minor i-bVI-bIII-bVII": ("minor", ("Am", "F", "C", "G")),
    "minor blues": ("minor", ("Am7", "Am7", "Am7", "Am7", "Dm7", "Dm7", "Am7", "Am7",
                              "F7", "E7", "Am7", "E7")),
    "dorian vamp i-IV": ("minor", ("Am7", "D7", "Am7", "D7")),
    "phrygian vamp i-bII": ("minor", ("Am", "Bb", "Am", "Bb")),
}

#: Song forms; each letter is a section, a repeated letter repeats the section exactly.
FORMS = ("AABA", "ABAB", "AABB", "ABAC", "AAB", "ABA")

#: Tempo range (BPM) by a word in the groove's name or library file; first match wins.
TEMPO_STYLES: tuple[tuple[str, tuple[int, int]], ...] = (
    ("ballad|slow|bolero|lullaby", (55, 90)),
    ("waltz|minuet", (90, 170)),
    ("reggae|ska|calypso", (70, 120)),
    ("blues|shuffle", (70, 130)),
    ("bossa|beguine|rhumba|tango|habanera", (95, 140)),
    ("samba|mambo|salsa|merengue|cha|latin|son", (110, 190)),
    ("funk|disco|dance|house|techno|hiphop|rap", (95, 128)),
    ("swing|jazz|foxtrot|bebop|bigband|jive|dixie", (100, 210)),
    ("march|polka|quickstep|twostep|bluegrass|hoedown", (100, 200)),
    ("rock|pop|country|folk|boogie|soul|gospel", (85, 160)),
)
DEFAULT_TEMPO = (70, 170)
TRANSPOSE_RANGE = (-5, 6)  # 12 keys
MIN_SECTION_BARS = 8
MELODY_SHARE = 0.8  # songs with a melody; the rest are pure accompaniment

#: GM programs (0-based) a melody is played on.
MELODY_PROGRAMS = (0, 11, 12, 21, 22, 26, 40, 56, 64, 65, 66, 68, 71, 73, 81)

TICKS = 192  # mma ticks per quarter note
#: One-bar rhythm cells in quarter-note beats by beats per bar; a negative value is a rest.
RHYTHMS: dict[int, tuple[tuple[float, ...], ...]] = {
    4: ((1, 1, 1, 1), (2, 1, 1), (1, 1, 2), (1.5, 0.5, 1, 1), (1, 0.5, 0.5, 2),
        (0.5, 0.5, 0.5, 0.5, 1, 1), (-1, 1, 1, 1), (1, 1, 1, 0.5, 0.5), (3, 1), (2, 2)),
    3: ((1, 1, 1), (2, 1), (1, 2), (1.5, 0.5, 1), (0.5, 0.5, 1, 1), (-1, 1, 1)),
    2: ((1, 1), (0.5, 0.5, 1), (1.5, 0.5), (2,), (1, 0.5, 0.5)),
}
CADENCE: dict[int, tuple[float, ...]] = {4: (2, -2), 3: (2, -1), 2: (1, -1)}
MELODY_LOW, MELODY_HIGH = 60, 81  # written range (C major / A minor), before Transpose

_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (9, 11, 0, 2, 4, 5, 7)}
_ROOTS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_QUALITIES = {
    "": (0, 4, 7), "m": (0, 3, 7), "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11),
    "m7": (0, 3, 7, 10), "m7b5": (0, 3, 6, 10), "6": (0, 4, 7, 9), "dim7": (0, 3, 6, 9),
}
_CHORD = re.compile(r"^([A-G])([#b]?)(.*)$")


def chord_tones(chord: str) -> tuple[int, ...]:
    """Pitch classes of a chord name of :data:`PROGRESSIONS` (``"Bm7b5"``, ``"Bb"``)."""
    m = _CHORD.match(chord)
    if m is None or m.group(3) not in _QUALITIES:
        raise ValueError(f"unknown chord {chord!r}")
    root = (_ROOTS[m.group(1)] + {"#": 1, "b": -1, "": 0}[m.group(2)]) % 12
    return tuple((root + i) % 12 for i in _QUALITIES[m.group(3)])


def rng_for(key: str) -> random.Random:
    """A generator seeded by the first 8 bytes of ``sha256(key)``."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def tempo_range(*names: str) -> tuple[int, int]:
    """The tempo range for a groove, from words in its name or library file name."""
    text = " ".join(names).lower()
    for pattern, span in TEMPO_STYLES:
        if re.search(pattern, text):
            return span
    return DEFAULT_TEMPO


@dataclass(frozen=True)
class Section:
    """One letter of a song form: its groove, chords (one per bar), melody and seed."""

    letter: str
    groove: str
    progression: str
    chords: tuple[str, ...]
    melody: tuple[tuple[tuple[float, int | None], ...], ...] | None  # per bar (beats, pitch)
    mma_seed: int


def section_bars(chords: tuple[str, ...]) -> tuple[str, ...]:
    """The progression repeated to at least :data:`MIN_SECTION_BARS` bars."""
    reps = -(-MIN_SECTION_BARS // len(chords))
    return chords * reps


def make_melody(rng: random.Random, chords: tuple[str, ...], mode: str,
                beats: int) -> tuple[tuple[tuple[float, int | None], ...], ...]:
    """A melody over ``chords`` (one per bar) in ``beats``/4 time, as per-bar lists of
    ``(duration in beats, MIDI pitch or None for a rest)``.

    Rhythm: a two-bar motif repeated in every four-bar phrase, whose last bar is a
    cadence (a long note). Pitch: chord tones on the downbeat (and beat 3 in 4/4), the
    nearest one to the previous note after a small leap; steps of the scale elsewhere,
    turning back at the edges of the range.
    """
    cells = RHYTHMS[beats]
    motif = (rng.choice(cells), rng.choice(cells))
    scale = _SCALES[mode]
    pitch = rng.choice([p for p in range(MELODY_LOW + 4, MELODY_HIGH - 4)
                        if p % 12 in chord_tones(chords[0])])
    direction = rng.choice((-1, 1))
    bars = []
    for b, chord in enumerate(chords):
        cell = CADENCE[beats] if b % 4 == 3 else motif[b % 2]
        tones = chord_tones(chord)
        # the scale of this bar: the key's scale with the chord's own tones put in
        pcs = sorted({*(s for s in scale if all((s - t) % 12 not in (1, 11) for t in tones)),
                      *tones})
        pos, notes = 0.0, []
        for dur in cell:
            if dur < 0:
                notes.append((-dur, None))
                pos -= dur
                continue
            strong = pos == 0 or (beats == 4 and pos == 2)
            if strong:
                target = pitch + rng.choice((-4, -2, 0, 2, 4)) + direction
                choices = [p for p in range(MELODY_LOW, MELODY_HIGH + 1) if p % 12 in tones]
                pitch = min(choices, key=lambda p: (abs(p - target), p))
            else:
                if rng.random() < 0.25:
                    direction = -direction
                steps = [p for p in range(MELODY_LOW, MELODY_HIGH + 1) if p % 12 in pcs]
                i = min(range(len(steps)), key=lambda j: abs(steps[j] - pitch))
                i = max(0, min(len(steps) - 1, i + direction * rng.choice((1, 1, 1, 2))))
                pitch = steps[i]
            if pitch >= MELODY_HIGH - 2:
                direction = -1
            elif pitch <= MELODY_LOW + 2:
                direction = 1
            notes.append((float(dur), pitch))
            pos += dur
        bars.append(tuple(notes))
    return tuple(bars)


def solo_bar(notes: tuple[tuple[float, int | None], ...]) -> str:
    """One bar of a Solo track in mma notation (durations in ticks, MIDI pitches)."""
    parts = [f"{round(d * TICKS)}t " + ("r" if p is None else str(p)) for d, p in notes]
    return "{" + "".join(f"{x};" for x in parts) + "}"


@dataclass(frozen=True)
class SongPlan:
    """Everything that decides one song except the groove library file."""

    groove: str
    index: int
    form: str
    tempo: int
    transpose: int
    melody_program: int | None
    sections: tuple[Section, ...]  # one per distinct letter, in order of first use

    def section(self, letter: str) -> Section:
        return next(s for s in self.sections if s.letter == letter)


def plan_song(groove: str, index: int, *, seed: int = 0, library_file: str = "",
              beats: float | None = 4, variations: tuple[str, ...] = ()) -> SongPlan:
    """Draw song ``index`` of ``groove``: form, tempo (by the groove's style), key,
    melody instrument, and per section a progression of the form's mode, a groove
    (variations must share the groove's metre), a melody and an mma seed.

    ``beats``: the groove's beats per bar (None or a metre without rhythm cells: no
    melody). The draw depends only on ``(seed, groove, index)`` and the arguments.
    """
    rng = rng_for(f"{seed}:{groove}#{index}")
    form = rng.choice(FORMS)
    tempo = rng.randint(*tempo_range(groove, library_file))
    transpose = rng.randint(*TRANSPOSE_RANGE)
    mode = rng.choice(("major", "major", "minor"))
    names = sorted(n for n, (m, _) in PROGRESSIONS.items() if m == mode)
    whole = beats is not None and float(beats).is_integer() and int(beats) in RHYTHMS
    melodic = whole and rng.random() < MELODY_SHARE
    program = rng.choice(MELODY_PROGRAMS) if melodic else None
    sections = []
    used: list[str] = []
    for letter in dict.fromkeys(form):
        progression = rng.choice([n for n in names if n not in used] or names)
        used.append(progression)
        chords = section_bars(PROGRESSIONS[progression][1])
        sgroove = groove if letter == "A" or not variations else rng.choice(variations)
        melody = make_melody(rng, chords, mode, int(beats)) if melodic else None
        sections.append(Section(letter, sgroove, progression, chords, melody,
                                rng.randrange(1, 2**31)))
    return SongPlan(groove, index, form, tempo, transpose, program, tuple(sections))


def song_text(plan: SongPlan, library_file: str) -> str:
    """The mma file of a song: settings, an optional Solo track, then the sections.

    Each section starts with ``Groove``, ``RndSeed`` and ``Seq``, so a repeated
    section renders exactly as before.
    """
    lines = [
        f"// notochord-rt corpus recipe: groove {plan.groove}, song {plan.index}, "
        f"form {plan.form}",
        f"Use {library_file}",
        f"Tempo {plan.tempo}",
        f"Transpose {plan.transpose}",
    ]
    if plan.melody_program is not None:
        lines += ["Begin Solo", f" Voice {plan.melody_program}", " Articulate 90",
                  " Volume f", " RTime 6", " RVolume 10", "End"]
    bar = 1
    for letter in plan.form:
        s = plan.section(letter)
        lines += [f"// section {letter}: {s.progression}", f"Groove {s.groove}",
                  f"RndSeed {s.mma_seed}", "Seq"]
        for k, chord in enumerate(s.chords):
            solo = "" if s.melody is None else " " + solo_bar(s.melody[k])
            lines.append(f"{bar} {chord}{solo}")
            bar += 1
    return "\n".join(lines) + "\n"
