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

Order, as in the reference: fixed values first, then sub-events with an intervention,
then the rest, each group in canonical ``i, p, t, v`` order.

Differences from the reference: held notes are respected (no duplicate note-on, no
orphan note-off: a request that allows nothing raises ``NoPossibleEvents``); the
experimental ``pitch_topk`` and ``sweep_time`` (batched alternatives; the latter buggy
in the reference) are not supported and raise ``InputError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import events as ev
from ..errors import InputError
from .constraints import N_I, N_P, Constraints

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


def _as_set(x: Any, name: str) -> set[int]:
    if x is None:
        return set()
    if isinstance(x, (int, np.integer)):
        return {int(x)}
    if isinstance(x, Iterable):
        return {int(v) for v in x}
    raise InputError(f"{name} must be an int or a collection of ints, got {x!r}")


def _index_mask(values: set[int], size: int, name: str, lo: int, hi: int) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    for v in values:
        if not lo <= v <= hi:
            raise InputError(f"{name}: {v} is outside {lo}..{hi}")
        m[v] = True
    return m


def query_constraints(kw: dict[str, Any]) -> tuple[Constraints, str]:
    """The :class:`Constraints` and sub-event order equivalent to reference ``query`` args."""
    unknown = sorted(set(kw) - _ARGS)
    if unknown:
        raise InputError(f"query: unknown argument(s) {', '.join(unknown)}")
    for name in ("pitch_topk", "sweep_time"):
        if kw.get(name):
            raise InputError(f"query: {name} (batched alternatives) is not supported")
    g = kw.get
    # instruments
    if g("include_inst") is not None:
        insts = _index_mask(_as_set(g("include_inst"), "include_inst"), N_I, "include_inst",
                            ev.FIRST_MELODIC, ev.NUM_INSTRUMENTS)
    else:
        insts = np.zeros(N_I, dtype=bool)
        insts[ev.FIRST_MELODIC:] = True
    insts &= ~_index_mask(_as_set(g("exclude_inst"), "exclude_inst"), N_I, "exclude_inst",
                          0, ev.NUM_INSTRUMENTS)
    if g("allow_anon", True) is False:
        insts[ev.FIRST_ANON:] = False
    if not insts.any():
        raise InputError("query: every instrument has been excluded "
                         "(include_inst / exclude_inst / allow_anon)")
    # pitches
    if g("include_pitch") is not None:
        pitches = _index_mask(_as_set(g("include_pitch"), "include_pitch"), N_P,
                              "include_pitch", 0, ev.NUM_PITCHES - 1)
    else:
        pitches = np.zeros(N_P, dtype=bool)
        pitches[: ev.NUM_PITCHES] = True
    pitches &= ~_index_mask(_as_set(g("exclude_pitch"), "exclude_pitch"), N_P,
                            "exclude_pitch", 0, ev.NUM_PITCHES)
    if not pitches.any():
        raise InputError("query: every pitch has been excluded (include_pitch / exclude_pitch)")
    grid = insts[:, None] & pitches[None, :]
    if g("include_drum") is not None:
        drum_p = _index_mask(_as_set(g("include_drum"), "include_drum"), N_P, "include_drum",
                             0, ev.NUM_PITCHES - 1)
        drums = insts & ev.is_drum(np.arange(N_I))
        grid[drums] = drum_p[None, :]
    # velocity
    min_vel, max_vel = g("min_vel"), g("max_vel")
    allow_off = (min_vel is None or min_vel < ev.NOTE_ON_MIN_VEL) and (
        max_vel is None or max_vel >= 0)
    cons = Constraints(
        note_on_map=grid,
        note_off_map=grid if allow_off else {},
        inst=g("next_inst"), pitch=g("next_pitch"), time=g("next_time"), vel=g("next_vel"),
        min_time=max(0.0, float(g("min_time") or 0.0)),
        time_ranges=None if g("max_time") is None else [
            (max(0.0, float(g("min_time") or 0.0)), float(g("max_time")))],
        min_vel=0.0 if min_vel is None else float(min_vel),
        max_vel=ev.VEL_MAX if max_vel is None else float(max_vel),
        inst_temp=1.0 if g("instrument_temp") is None else g("instrument_temp"),
        pitch_temp=1.0 if g("pitch_temp") is None else g("pitch_temp"),
        rhythm_temp=1.0 if g("rhythm_temp") is None else g("rhythm_temp"),
        timing_temp=1.0 if g("timing_temp") is None else g("timing_temp"),
        vel_temp=1.0 if g("velocity_temp") is None else g("velocity_temp"),
        truncate_quantile_time=g("truncate_quantile_time") or (0.0, 1.0),
        truncate_quantile_pitch=g("truncate_quantile_pitch") or (0.0, 1.0),
        index_pitch=g("index_pitch"),
        steer_density=None,
    )
    touched = {
        "i": any(g(k) is not None for k in ("instrument_temp", "include_inst", "exclude_inst"))
        or g("allow_anon", True) is False,
        "p": any(g(k) is not None for k in ("pitch_temp", "include_pitch", "exclude_pitch",
                                            "include_drum", "index_pitch",
                                            "truncate_quantile_pitch")),
        "t": any(g(k) is not None for k in ("min_time", "max_time", "rhythm_temp",
                                            "timing_temp", "truncate_quantile_time")),
        "v": any(g(k) is not None for k in ("min_vel", "max_vel", "velocity_temp")),
    }
    order = "".join(m for m in "iptv" if touched[m]) + "".join(
        m for m in "iptv" if not touched[m])
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
