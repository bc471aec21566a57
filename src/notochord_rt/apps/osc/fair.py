"""Fair shares for the OSC server: per-sender rate limits and a round-robin request queue.

A sender is one ``(host, port)``. :class:`Buckets` gives each key a token bucket (a
steady rate with a burst), so that one sender's flood is cut down before it is even
parsed; :class:`FairQueue` keeps one FIFO per sender and hands requests out round-robin,
at most a few per session per wake-up, so a flood (garbage, valid requests on the
shared session 0, or large bundles, which count per message) delays other senders by
about one wake-up, not by the flood's length. Both tables are bounded in size.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any


class Buckets:
    """A token bucket per key: ``rate`` tokens a second, at most ``burst`` saved up.

    :meth:`take` spends tokens; a key whose bucket is below zero is refused until it has
    refilled (spending may go into debt, e.g. for the messages of a bundle counted once
    it has been parsed). At most ``max_keys`` keys are kept (the least recently seen are
    forgotten first, which only ever gives them a fresh, full bucket).
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 8192) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._b: OrderedDict[Hashable, list[float]] = OrderedDict()

    def take(self, key: Hashable, now: float, cost: float = 1.0, debt: bool = False) -> bool:
        """Spend ``cost`` tokens of ``key``'s bucket if it has them (or always, into debt,
        with ``debt``); returns whether the bucket had them."""
        b = self._b.get(key)
        if b is None:
            if len(self._b) >= self.max_keys:
                self._b.popitem(last=False)
            b = self._b[key] = [self.burst, now]
        else:
            self._b.move_to_end(key)
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
        if b[0] >= cost:
            b[0] -= cost
            return True
        if debt:
            b[0] = max(b[0] - cost, -self.burst)
        return False


class FairQueue:
    """Requests waiting to be served: one FIFO per sender, taken round-robin.

    ``push`` refuses a request (returns False) when its sender already has
    ``per_sender`` waiting or ``max_total`` are waiting in all. :meth:`take` picks, in
    rounds over the senders (starting one further each call), the next request of each
    sender, at most ``per_session`` per session key and ``max_take`` in all, keeping each
    sender's requests in order.
    """

    def __init__(self, per_sender: int = 64, max_total: int = 4096) -> None:
        self.per_sender = per_sender
        self.max_total = max_total
        self._q: OrderedDict[Hashable, deque[Any]] = OrderedDict()
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def push(self, sender: Hashable, item: Any) -> bool:
        """Queue ``item`` for ``sender``; False (nothing queued) if over a limit."""
        q = self._q.get(sender)
        if q is None:
            if self._n >= self.max_total:
                return False
            q = self._q[sender] = deque()
        if len(q) >= self.per_sender or self._n >= self.max_total:
            return False
        q.append(item)
        self._n += 1
        return True

    def take(self, max_take: int, per_session: int,
             session_of: Callable[[Any], Hashable | None]) -> list[Any]:
        """Up to ``max_take`` items, fairly (see the class docstring); ``session_of(item)``
        is the item's session key, or None for an item no session limit applies to."""
        taken: list[Any] = []
        counts: Counter[Hashable] = Counter()
        senders = list(self._q)
        progress = True
        while progress and len(taken) < max_take:
            progress = False
            for s in senders:
                q = self._q[s]
                if not q:
                    continue
                key = session_of(q[0])
                if key is not None and counts[key] >= per_session:
                    continue
                counts[key] += 1
                taken.append(q.popleft())
                progress = True
                if len(taken) >= max_take:
                    break
        for s in senders:
            if not self._q[s]:
                del self._q[s]
        if self._q:  # the next call starts with the sender after this call's first
            self._q.move_to_end(next(iter(self._q)))
        self._n -= len(taken)
        return taken
