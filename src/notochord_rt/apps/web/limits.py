"""Rate limits of the web server: a token bucket per WebSocket connection."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` messages per second with bursts of ``burst``; :meth:`take` says if one
    more may pass now. Single-threaded (one connection's receive loop)."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self._tokens = float(burst)
        self._t = clock()

    def take(self, n: float = 1.0) -> bool:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False
