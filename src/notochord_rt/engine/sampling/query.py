"""The reference's keyword ``query(...)`` on top of :meth:`Notochord.sample`.

Accepted arguments (reference names): ``next_inst``, ``next_pitch``, ``next_time``,
``next_vel``; ``include_inst``, ``exclude_inst``, ``allow_anon``, ``instrument_temp``;
``include_pitch``, ``exclude_pitch``, ``include_drum`` (pitches allowed for drum kits),
``truncate_quantile_pitch``, ``pitch_temp``, ``index_pitch``; ``min_time``, ``max_time``
(a hard window here, as in the reference's ``query``), ``truncate_quantile_time``,
``rhythm_temp``, ``timing_temp``; ``min_vel``, ``max_vel`` (``min_vel >= 0.5`` forbids
note-offs, ``max_vel < 0.5`` forces one), ``velocity_temp``; ``allow_end`` (sample the
end flag, else 0), ``handle`` (echoed back), ``return_params`` (adds ``*_params``: raw
logits for inst/pitch, decoded ``(3, K)`` mixtures for time/vel; ``None`` for fixed
values); plus ``seed`` (ours) for a reproducible call.

Every argument is checked and a bad one raises ``InputError`` naming it: numbers must be
numbers (text is never parsed, NaN is refused), instrument / pitch sets are an int or a
collection of ints, flags (``allow_anon``, ``allow_end``, ``return_params``) are bools or
0 / 1. The arguments that are :class:`Constraints` fields under another name
(:data:`DIRECT`) are checked by that field's row of
:data:`~notochord_rt.engine.sampling.constraints.FIELDS`. A negative ``min_time`` means no
minimum; ``max_time < min_time`` is an ``InputError``.

Order, as in the reference: fixed values first, then sub-events with an intervention,
then the rest, each group in canonical ``i, p, t, v`` order.

Differences from the reference: held notes are respected (no duplicate note-on, no
orphan note-off: a request that allows nothing raises ``NoPossibleEvents``); the
experimental ``pitch_topk`` and ``sweep_time`` (batched alternatives; the latter buggy
in the reference) are not supported and raise ``InputError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ... import events as ev
from ...errors import InputError
from ...events import CANONICAL_ORDER
from . import checks
from .constraints import FIELDS, N_I, N_P, Constraints

if TYPE_CHECKING:
    from .sampler import Notochord

_ARGS = frozenset((
    "next_inst", "next_pitch", "next_time", "next_vel", "allow_end", "include_inst",
    "exclude_inst", "allow_anon", "instrument_temp", "include_pitch", "exclude_pitch",
    "include_drum", "truncate_quantile_pitch", "pitch_temp", "index_pitch", "min_time",
    "max_time", "truncate_quantile_time", "rhythm_temp", "timing_temp", "min_vel", "max_vel",
    "velocity_temp", "pitch_topk", "sweep_time", "handle", "return_params", "seed",
))
_NAMES = {"i": "inst", "p": "pitch", "t": "time", "v": "vel"}


#: query arguments that are a :class:`Constraints` field under another name; their values
#: are checked by that field's row of :data:`~.constraints.FIELDS` (errors name the query
#: argument), ``None`` meaning the field's default
DIRECT: dict[str, str] = {
    "next_inst": "inst", "next_pitch": "pitch", "next_time": "time", "next_vel": "vel",
    "instrument_temp": "inst_temp", "pitch_temp": "pitch_temp", "rhythm_temp": "rhythm_temp",
    "timing_temp": "timing_temp", "velocity_temp": "vel_temp",
    "truncate_quantile_time": "truncate_quantile_time",
    "truncate_quantile_pitch": "truncate_quantile_pitch", "index_pitch": "index_pitch",
}
_FLAGS = ("allow_anon", "allow_end", "return_params")


def _as_set(x: Any, name: str, lo: int, hi: int) -> set[int]:
    """An int or a collection of ints, each in ``lo..hi`` (``None``: empty)."""
    if x is None:
        return set()
    if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
        return {checks.integer(x, name, lo, hi)}
    return set(checks.ints(x, name, lo, hi))


def _index_mask(values: set[int], size: int) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    m[list(values)] = True
    return m


def _optional_real(kw: dict[str, Any], name: str) -> float | None:
    v = kw.get(name)
    return None if v is None else checks.real(v, name)


def query_constraints(kw: dict[str, Any]) -> tuple[Constraints, str]:
    """The :class:`Constraints` and sub-event order equivalent to reference ``query`` args.

    Every argument is checked (``InputError`` naming it): no text is parsed, NaN is
    refused, flags are bools (or 0 / 1).
    """
    unknown = sorted(set(kw) - _ARGS)
    if unknown:
        raise InputError(f"query: unknown argument(s) {', '.join(unknown)}")
    for name in ("pitch_topk", "sweep_time"):
        if kw.get(name):
            raise InputError(f"query: {name} (batched alternatives) is not supported")
    for name in _FLAGS:
        if kw.get(name) is not None:
            checks.flag(kw[name], name)
    g = kw.get
    direct = {field: FIELDS[field].convert(g(arg), arg) for arg, field in DIRECT.items()
              if g(arg) is not None}
    # instruments
    if g("include_inst") is not None:
        insts = _index_mask(_as_set(g("include_inst"), "include_inst", ev.FIRST_MELODIC,
                                    ev.NUM_INSTRUMENTS), N_I)
    else:
        insts = np.zeros(N_I, dtype=bool)
        insts[ev.FIRST_MELODIC:] = True
    insts &= ~_index_mask(_as_set(g("exclude_inst"), "exclude_inst", 0, ev.NUM_INSTRUMENTS),
                          N_I)
    if g("allow_anon") is not None and not checks.flag(g("allow_anon"), "allow_anon"):
        insts[ev.FIRST_ANON:] = False
    if not insts.any():
        raise InputError("query: every instrument has been excluded "
                         "(include_inst / exclude_inst / allow_anon)")
    # pitches
    if g("include_pitch") is not None:
        pitches = _index_mask(_as_set(g("include_pitch"), "include_pitch", 0,
                                      ev.NUM_PITCHES - 1), N_P)
    else:
        pitches = np.zeros(N_P, dtype=bool)
        pitches[: ev.NUM_PITCHES] = True
    pitches &= ~_index_mask(_as_set(g("exclude_pitch"), "exclude_pitch", 0, ev.NUM_PITCHES),
                            N_P)
    if not pitches.any():
        raise InputError("query: every pitch has been excluded (include_pitch / exclude_pitch)")
    grid = insts[:, None] & pitches[None, :]
    if g("include_drum") is not None:
        drum_p = _index_mask(_as_set(g("include_drum"), "include_drum", 0,
                                     ev.NUM_PITCHES - 1), N_P)
        drums = insts & ev.is_drum(np.arange(N_I))
        grid[drums] = drum_p[None, :]
    # time: a hard window [min_time, max_time]; a negative min_time means no minimum
    min_time, max_time = _optional_real(kw, "min_time"), _optional_real(kw, "max_time")
    lo = 0.0 if min_time is None else max(0.0, min_time)
    if max_time is not None and max_time < lo:
        raise InputError(f"max_time ({max_time:g}) must be >= min_time ({lo:g})")
    # velocity
    min_vel, max_vel = _optional_real(kw, "min_vel"), _optional_real(kw, "max_vel")
    allow_off = (min_vel is None or min_vel < ev.NOTE_ON_MIN_VEL) and (
        max_vel is None or max_vel >= 0)
    cons = Constraints(
        note_on_map=grid,
        note_off_map=grid if allow_off else {},
        min_time=lo,
        time_ranges=None if max_time is None else [(lo, max_time)],
        min_vel=0.0 if min_vel is None else min_vel,
        max_vel=ev.VEL_MAX if max_vel is None else max_vel,
        steer_density=None,
        **direct,
    )
    touched = {
        "i": any(g(k) is not None for k in ("instrument_temp", "include_inst", "exclude_inst"))
        or (g("allow_anon") is not None and not g("allow_anon")),
        "p": any(g(k) is not None for k in ("pitch_temp", "include_pitch", "exclude_pitch",
                                            "include_drum", "index_pitch",
                                            "truncate_quantile_pitch")),
        "t": any(g(k) is not None for k in ("min_time", "max_time", "rhythm_temp",
                                            "timing_temp", "truncate_quantile_time")),
        "v": any(g(k) is not None for k in ("min_vel", "max_vel", "velocity_temp")),
    }
    order = "".join(m for m in CANONICAL_ORDER if touched[m]) + "".join(
        m for m in CANONICAL_ORDER if not touched[m])
    return cons, order


def run_query(model: Notochord, kw: dict[str, Any]) -> dict[str, Any]:
    """Run a reference-style query on ``model``; see the module docstring."""
    cons, order = query_constraints(kw)
    e = model.sample(cons, order, seed=kw.get("seed"), return_params=bool(kw.get("return_params")))
    end = 0
    if kw.get("allow_end"):
        end = int(model._s.rng.random() < e.end)
    out: dict[str, Any] = {"inst": e.inst, "pitch": e.pitch, "time": e.time, "vel": e.vel,
                           "end": end, "step": model.step_count}
    if kw.get("handle") is not None:
        out["handle"] = kw["handle"]
    if kw.get("return_params"):
        params = e.params or {}
        for m, name in _NAMES.items():
            out[f"{name}_params"] = params.get(m)
    return out
