"""Text tables and JSON for the ``stats`` command (no printing here: strings and dicts)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .features import FEATURES
from .sets import SetStats


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (valid JSON, no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return jsonable(value.item())
    return value


def _fmt(v: float | None, width: int = 9) -> str:
    if v is None:
        return f"{'-':>{width}}"
    if isinstance(v, int):
        return f"{v:>{width}}"
    a = abs(v)
    text = (f"{v:.0f}" if a >= 1000 else f"{v:.3g}" if a >= 10 or 0 < a < 0.001
            else f"{v:.3f}")
    return f"{text:>{width}}"


def summary_table(sets: Sequence[SetStats], top_instruments: int = 8) -> str:
    """Per feature the mean (and in brackets the number of pieces where it is defined)
    of each set, then the set figures: pieces, skipped, dense share, top instruments."""
    sums = [s.summary() for s in sets]
    width = max(12, *(len(s.name) + 2 for s in sets))
    head = f"{'feature':18}" + "".join(f"{s.name[-width + 1:]:>{width}}" for s in sets)
    lines = [head, "-" * len(head)]
    for name, (unit, _) in FEATURES.items():
        cells = []
        for s in sums:
            f = s["features"][name]
            cells.append(f"{_fmt(f['mean'], width - 5)} ({f['n']:>2})" if f["n"] < 100 else
                         f"{_fmt(f['mean'], width - 6)} ({f['n']})")
        lines.append(f"{name:18}" + "".join(f"{c:>{width}}" for c in cells) + f"  {unit}")
    lines.append("-" * len(head))
    for key, label in (("pieces", "pieces"), ("skipped", "skipped"),
                       ("dense_share", "pieces >40 n/s")):
        lines.append(f"{label:18}" + "".join(_fmt(s[key], width) for s in sums))
    for s in sums:
        top = list(s["instrument_share"].items())[:top_instruments]
        lines.append(f"instruments of {s['name']}: " +
                     ", ".join(f"{n} {share:.0%}" for n, share in top))
    return "\n".join(lines)


def compare_table(rows: Sequence[dict], name_a: str, name_b: str) -> str:
    """The overlap / KL table of :func:`~.compare.compare`."""
    head = (f"{'feature':18}{'mean ' + name_a[-10:]:>16}{'mean ' + name_b[-10:]:>16}"
            f"{'overlap':>9}{'KL(a|b)':>9}{'KL(b|a)':>9}")
    lines = [f"a = {name_a}, b = {name_b} (KL in nats)", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['feature']:18}{_fmt(r['mean_a'], 16)}{_fmt(r['mean_b'], 16)}"
                     f"{_fmt(r['overlap'])}{_fmt(r['kl'])}{_fmt(r['kl_reverse'])}")
    return "\n".join(lines)


def rhythm_table(result: dict) -> str:
    """The teacher-forced rhythm test in three lines."""
    return "\n".join([
        f"teacher-forced rhythm test: {result['positions']} positions in "
        f"{result['pieces']} pieces",
        f"  next onset on the piece's 16th grid: model {_fmt(result['model_on_grid'], 0)}, "
        f"real {_fmt(result['real_on_grid'], 0)}, chance {_fmt(result['chance'], 0)}",
        f"  median gap to the next onset (s): model {_fmt(result['model_gap_median'], 0)}, "
        f"real {_fmt(result['real_gap_median'], 0)}",
    ])


def set_json(s: SetStats, per_piece: bool = True) -> dict:
    """A set's summary, skipped files and (optionally) every piece's statistics."""
    out = s.summary()
    out["skipped_files"] = [{"source": src, "reason": r} for src, r in s.skipped]
    if per_piece:
        out["per_piece"] = [{"source": label, **p} for label, p in zip(s.labels, s.pieces)]
    return out
