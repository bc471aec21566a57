"""Steering controls → :class:`~notochord_rt.engine.sampling.constraints.Constraints` fields.

The one mapping every app uses (offline ``generate``, the voices of ``harmonize``/``play``,
``improvise``): a steering value in [0, 1] becomes a quantile window of width 1 centred
on it, so 0.5 is no steering, 0 keeps the lower half of a sub-event's distribution and 1
the upper half (as the reference's homunculus maps its steering controls). *Rate* steers
the time sub-event the other way round (a higher rate = shorter gaps = lower time
quantiles). A value outside [0, 1] (or NaN) is an :class:`~notochord_rt.errors.InputError`
everywhere; live controls clamp their raw input before it gets here.
"""

from __future__ import annotations

import math

from ..errors import InputError

NO_STEERING: tuple[float, float] = (0.0, 1.0)
"""The window of an unsteered sub-event (the whole distribution)."""


def steer_window(steer: float | None) -> tuple[float, float]:
    """A steering value in [0, 1] as a quantile window of width 1 centred on it
    (``None`` = no steering). Raises :class:`InputError` outside [0, 1] or on NaN."""
    if steer is None:
        return NO_STEERING
    s = float(steer)
    if not 0.0 <= s <= 1.0 or math.isnan(s):
        raise InputError(f"steering values must be in [0, 1], got {steer!r}")
    return (max(0.0, s - 0.5), min(1.0, s + 0.5))


def steering_fields(pitch: float | None = None, rate: float | None = None,
                    velocity: float | None = None) -> dict[str, tuple[float, float]]:
    """The ``truncate_quantile_*`` fields of :class:`Constraints` for steering values in
    [0, 1] (``None`` = unsteered): pitch and velocity as is, rate inverted onto time."""
    steer_window(rate)  # check the value the caller gave, not its inversion
    return {
        "truncate_quantile_pitch": steer_window(pitch),
        "truncate_quantile_time": steer_window(None if rate is None else 1.0 - float(rate)),
        "truncate_quantile_vel": steer_window(velocity),
    }
