"""Learning-rate schedules as pure functions of the step number.

The rate is recomputed from the step at every step instead of being kept in a
scheduler object, so a resumed run needs nothing but the step counter to continue on
exactly the same curve.
"""

from __future__ import annotations

import math


def lr_factor(
    step: int,
    *,
    schedule: str = "constant",
    warmup_steps: int = 0,
    max_steps: int | None = None,
    min_ratio: float = 0.0,
) -> float:
    """Multiplier of the base learning rate for optimisation step ``step`` (0-based).

    Linear warm-up from ``1/warmup_steps`` to 1 over the first ``warmup_steps`` steps,
    then either constant or a half cosine from 1 down to ``min_ratio`` at ``max_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}")
    if max_steps is None:
        raise ValueError("the cosine schedule needs max_steps")
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
