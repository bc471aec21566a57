"""Beat-aware time constraints: a tempo grid as weighted time pieces (docs/design.md §6.10).

The time sub-event is a delta in seconds from the stream's current time. Given a tempo
(``bpm``, quarter-note beats) and the beat position *now* (``Constraints.beat``, else
the stream clock: beat 0 at reset), every grid point ahead is a delta time. The grid
constraint turns the hard time pieces of :func:`~.support.compile_constraints` into

* one *point* piece per grid point inside them (sampled exactly on the grid; the model's
  mass of a point is its likelihood bin, :data:`~notochord_rt.events.TIME_RES` wide), and
* unless the grid is hard (``grid_strength == 1``), the *gaps* between the points.

Pieces are chosen with probability proportional to (model mass) x (weight), so the model
still chooses among grid points by its own likelihood. A point weighs
``s / (1 - s) * step / TIME_RES`` times a gap (``s`` = ``grid_strength``, ``step`` the
grid step in seconds): where the model's density is flat over a step, about a share
``s`` of onsets lands on the grid; ``s = 1`` removes the gaps (hard quantisation) and
``s = 0`` leaves the time free.

``swing`` (0..1) delays every second grid point: the off-beat of each pair of steps sits
at ``0.5 + swing / 6`` of the pair (1 = triplet swing, 2:1). ``next_bar`` allows only the
first bar line (every ``beats_per_bar`` beats from beat 0) inside the hard time pieces,
for a voice entering. Nothing here moves a sampled note: the support itself is on the grid.

Torch-free; :func:`place` is called once per sampled event, only for constraints with a
tempo, so constraints without one pay nothing.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ... import events as ev
from ...errors import InputError, NoPossibleEvents
from .checks import show

if TYPE_CHECKING:
    from .constraints import Constraints
    from .support import Compiled

BPM_MIN, BPM_MAX = 1.0, 999.0
"""Tempo bounds in beats per minute (0, negative and absurd tempi are errors)."""
GRID_DENOMINATORS = (1, 2, 4, 8, 16, 32, 64)
_GRID_RE = re.compile(r"1/(\d+)(t?)")
BEAT_TOL = 1e-6
"""Beats: a position this close to a grid point is on it (float tolerance)."""
GAP_EDGE = 1e-6
"""Seconds kept free on either side of a point, so a gap time is never a grid time."""


def grid_step(grid: str, name: str = "grid") -> float:
    """The step of a grid name in quarter-note beats: ``"1/16"`` is 0.25, ``"1/8t"`` 1/3."""
    m = _GRID_RE.fullmatch(grid)
    if m is None or int(m.group(1)) not in GRID_DENOMINATORS:
        raise InputError(f"{name} must be '1/N' or '1/Nt' (triplets) with N in "
                         f"{', '.join(map(str, GRID_DENOMINATORS))}, got {show(grid)}")
    step = 4.0 / int(m.group(1))
    return step * 2.0 / 3.0 if m.group(2) else step


def check_grid(v: Any, name: str = "grid") -> str:
    """A grid name checked (a str such as ``"1/16"`` or ``"1/8t"``): ``InputError`` naming
    ``name`` otherwise."""
    if not isinstance(v, str):
        raise InputError(f"{name} must be a str such as '1/16' or '1/8t', got {show(v)}")
    grid_step(v, name)
    return v


def check_bpm(v: Any, name: str = "bpm") -> float:
    """A tempo in ``[BPM_MIN, BPM_MAX]``: ``InputError`` naming ``name`` otherwise."""
    from .checks import real

    return real(v, name, BPM_MIN, BPM_MAX, finite=True)


@dataclass(frozen=True)
class BeatSpec:
    """The compiled beat context of a :class:`Constraints`: what :func:`place` needs."""

    bpm: float
    beat: float | None
    per_bar: int
    step: float | None
    swing: float
    strength: float
    next_bar: bool

    @property
    def spb(self) -> float:
        """Seconds per beat."""
        return 60.0 / self.bpm

    def active(self) -> bool:
        """Whether the pieces depend on the beat (a grid with strength > 0, or next_bar)."""
        return self.next_bar or (self.step is not None and self.strength > 0.0)


def cross_check(cons: Constraints) -> None:
    """Checks between beat fields (after each field passed its own row of ``FIELDS``)."""
    needs_bpm = [n for n, on in (("grid", cons.grid is not None),
                                 ("beat", cons.beat is not None),
                                 ("next_bar", bool(cons.next_bar)),
                                 ("min_beats", cons.min_beats != 0.0),
                                 ("max_beats", cons.max_beats != math.inf)) if on]
    if needs_bpm and cons.bpm is None:
        raise InputError(f"{needs_bpm[0]} needs a tempo: set bpm")
    if cons.swing != 0.0:
        if cons.grid is None:
            raise InputError("swing needs a grid (e.g. grid='1/16')")
        if cons.grid.endswith("t"):
            raise InputError(f"swing applies to straight grids, not the triplet grid "
                             f"{cons.grid!r}")
    if cons.inst_grid or cons.inst_swing:
        if cons.bpm is None:
            raise InputError("inst_grid needs a tempo: set bpm")
        grids, swings = dict(cons.inst_grid or {}), dict(cons.inst_swing or {})
        for i in sorted(swings):
            if i not in grids:
                raise InputError(f"inst_swing[{i}] needs a grid for instrument {i} in "
                                 "inst_grid")
            if swings[i] and grids[i].endswith("t"):
                raise InputError(f"inst_swing[{i}] applies to straight grids, not the "
                                 f"triplet grid {grids[i]!r}")
    if cons.max_beats < cons.min_beats:
        raise InputError(f"max_beats ({cons.max_beats:g}) must be >= min_beats "
                         f"({cons.min_beats:g})")


def beat_spec(cons: Constraints) -> BeatSpec | None:
    """The :class:`BeatSpec` of validated constraints, ``None`` without a tempo."""
    if cons.bpm is None:
        return None
    return BeatSpec(float(cons.bpm), None if cons.beat is None else float(cons.beat),
                    int(cons.beats_per_bar),
                    None if cons.grid is None else grid_step(cons.grid),
                    float(cons.swing), float(cons.grid_strength), bool(cons.next_bar))


def inst_specs(cons: Constraints) -> dict[int, BeatSpec] | None:
    """``{inst: BeatSpec}`` of validated constraints' ``inst_grid`` (None without one)."""
    base = beat_spec(cons)
    if not cons.inst_grid or base is None:
        return None
    swing = cons.inst_swing or {}
    return {int(i): dataclasses.replace(base, step=grid_step(g), swing=float(swing.get(i, 0.0)))
            for i, g in cons.inst_grid.items()}


def grid_points(beat_now: float, horizon: float, step: float, swing: float = 0.0
                ) -> np.ndarray:
    """Grid positions in beats in ``[beat_now, beat_now + horizon]`` (sorted).

    Points are ``k * step`` from beat 0; with ``swing`` every odd one moves to
    ``0.5 + swing / 6`` of its pair of steps. A point within :data:`BEAT_TOL` before
    ``beat_now`` counts as now.
    """
    pair = 2.0 * step
    off = (0.5 + swing / 6.0) * pair
    m0 = math.floor((beat_now - BEAT_TOL) / pair)
    m1 = math.floor((beat_now + horizon) / pair) + 1
    base = np.arange(m0, m1 + 1, dtype=np.float64) * pair
    pts = np.stack((base, base + off), 1).ravel()
    return pts[(pts >= beat_now - BEAT_TOL) & (pts <= beat_now + horizon)]


def point_weight(spec: BeatSpec) -> float:
    """Weight of a grid point relative to a gap (``inf`` for a hard grid)."""
    s = spec.strength
    if s >= 1.0:
        return math.inf
    return s / (1.0 - s) * (spec.step or 1.0) * spec.spb / ev.TIME_RES


def beat_now(spec: BeatSpec, elapsed: float) -> float:
    """The beat position at the stream's current time."""
    return spec.beat if spec.beat is not None else elapsed * spec.bpm / 60.0


def pieces_on_grid(pieces: np.ndarray, spec: BeatSpec, now: float) -> np.ndarray:
    """The time pieces ``[lo, hi, weight]`` of ``pieces`` under the grid / next bar of
    ``spec`` at beat position ``now``; empty when no grid point lies inside them."""
    horizon = float(pieces[:, 1].max()) / spec.spb
    if spec.next_bar:
        pts, w_pt = grid_points(now, horizon, float(spec.per_bar)), math.inf
    else:
        pts = grid_points(now, horizon, float(spec.step), spec.swing)  # type: ignore[arg-type]
        w_pt = point_weight(spec)
    t = np.maximum((pts - now) * spec.spb, 0.0)
    lo, hi, w = pieces[:, 0], pieces[:, 1], pieces[:, 2]
    k = np.searchsorted(lo, t + 1e-12, side="right") - 1
    ok = (k >= 0) & (t <= hi[np.maximum(k, 0)] + 1e-12)
    t, k = t[ok], k[ok]
    if spec.next_bar:
        return np.array([[t[0], t[0], w[k[0]]]]) if len(t) else np.zeros((0, 3))
    if math.isinf(w_pt):
        return np.stack((t, t, w[k]), 1)
    rows = [np.stack((t, t, w[k] * w_pt), 1)]
    for j in range(len(pieces)):  # the gaps between points, a little away from them
        inner = t[k == j]
        starts = np.concatenate(([lo[j]], inner + GAP_EDGE))
        ends = np.concatenate((inner - GAP_EDGE, [hi[j]]))
        keep = starts <= ends
        rows.append(np.stack((starts[keep], ends[keep], np.full(int(keep.sum()), w[j])), 1))
    out = np.concatenate(rows)
    return out[np.argsort(out[:, 0], kind="stable")]


def place(comp: Compiled, elapsed: float) -> Compiled:
    """``comp`` for the next event of a stream at time ``elapsed``: its time pieces put
    on the grid (a copy; ``comp`` itself unchanged). Raises :class:`NoPossibleEvents`
    when no grid point (or bar line) lies inside the hard time pieces."""
    spec = comp.beat
    if spec is None or not spec.active() or comp.cons.time is not None:
        return comp
    now = beat_now(spec, elapsed)
    pieces = pieces_on_grid(comp.pieces, spec, now)
    if len(pieces) == 0:
        what = "next_bar" if spec.next_bar else "grid"
        raise NoPossibleEvents(
            f"no possible event: no {'bar line' if spec.next_bar else 'grid point'} at "
            f"{spec.bpm:g} BPM from beat {now:.3f} lies in the allowed times (constraints "
            f"involved: {', '.join([*comp.names, what])})")
    return dataclasses.replace(comp, pieces=pieces, t0=float(pieces[0, 0]))


def inst_retimer(comp: Compiled, elapsed: float) -> Callable[[int, np.ndarray], np.ndarray]:
    """For ``inst_grid``: ``retime(inst, pieces)``, the time pieces of one of the drawn
    instrument's atoms put on its grid (its own, else the shared ``grid``, else left as
    they are) for the next event of a stream at time ``elapsed`` (see
    :meth:`~.atoms.Support.fix_inst`)."""
    specs = comp.inst_beats or {}
    shared = comp.beat if comp.beat is not None and comp.beat.active() else None

    def retime(inst: int, pieces: np.ndarray) -> np.ndarray:
        spec = specs.get(inst, shared)
        if spec is None or not spec.active():
            return pieces
        return pieces_on_grid(pieces, spec, beat_now(spec, elapsed))

    return retime
