"""Tabs served by the batched many-stream engine: one ``Streams``, one core, one step.

:class:`BatchedEngine` holds one :class:`~notochord_rt.engine.sampling.streams.Streams`
(one packed copy of the weights, one recurrent-state tensor with a row per tab) and hands
each tab a :class:`StreamSlot`: an object with the parts of the ``Notochord`` interface
the real-time player and the voices policy use (``reset``, ``feed``, ``sample``,
``held_notes``, ``held_map``, ``get_state``, ``set_state``), so each tab keeps its own
:class:`~notochord_rt.apps.live.player.Player` thread and nothing about the player
changes.

Calls from the tabs' threads are *combined*: a call is queued, then its thread takes the
engine lock; whoever holds it serves every queued call at once — all feeds in one
batched network step, all samples in one batched sampling call (the engine's own loop,
:func:`~notochord_rt.engine.sampling.event.draw_event` through ``BatchOps``) — and the
threads whose calls were served leave without work. A tab has at most one call in
flight (its player waits for each), so a batch never holds two calls of one stream and
each stream's order is kept. Under load, when calls pile up, batches grow and the
weights are read once per step for all of them. A batch that fails (an impossible
constraint set, a refused event) is retried call by call, so the error reaches only the
tab that caused it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ...errors import InputError


@dataclass
class _Call:
    kind: str  # "feed" or "sample"
    slot: int
    args: tuple
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class BatchedEngine:
    """``n`` stream slots over one ``Streams`` (see the module docstring).

    ``base``: the loaded model whose weights are packed once; ``precision``: the core's.
    """

    def __init__(self, base: Any, n: int, precision: str = "fp32") -> None:
        from ...engine.sampling.streams import Streams

        self.streams = Streams(getattr(base, "net", base), n, precision=precision)
        self.config = base.config
        self._free = list(range(n))[::-1]
        self._slots_lock = threading.Lock()
        self._lock = threading.Lock()  # the combiner's: held while the engine runs
        self._queue_lock = threading.Lock()
        self._queue: list[_Call] = []
        self.batches = 0  # combined batches run (tests, benchmarks)
        self.calls = 0

    # -- slots ---------------------------------------------------------------------------
    def slot(self, seed: int | None = None) -> StreamSlot:
        """A free stream slot, reset (seeded with ``seed`` when given)."""
        with self._slots_lock:
            if not self._free:
                raise RuntimeError("every stream slot is taken")
            k = self._free.pop()
        with self._lock:
            self.streams.reset(k, seed=seed if seed is not None else _fresh_seed())
        return StreamSlot(self, k)

    def release(self, slot: StreamSlot) -> None:
        """Give a slot back (its stream is reset: no held notes remain)."""
        with self._lock:
            self.streams.reset(slot.index)
        with self._slots_lock:
            self._free.append(slot.index)

    # -- combining -----------------------------------------------------------------------
    def call(self, c: _Call) -> Any:
        with self._queue_lock:
            self._queue.append(c)
        with self._lock:
            if not c.done:
                self._combine()
        if c.error is not None:
            raise c.error
        return c.result

    def _combine(self) -> None:
        with self._queue_lock:
            batch, self._queue = self._queue, []
        if not batch:
            return
        self.batches += 1
        self.calls += len(batch)
        feeds = [c for c in batch if c.kind == "feed"]
        samples = [c for c in batch if c.kind == "sample"]
        if feeds:
            self._run(feeds, self._feed)
        if samples:
            self._run(samples, self._sample)

    def _run(self, calls: list[_Call], fn: Any) -> None:
        try:
            results = fn(calls)
        except Exception:  # noqa: BLE001 - retried one by one: the error finds its caller
            if len(calls) == 1:
                calls[0].error = _current_error()
                calls[0].done = True
                return
            for c in calls:
                self._run([c], fn)
            return
        for c, r in zip(calls, results):
            c.result, c.done = r, True

    def _feed(self, calls: list[_Call]) -> list[None]:
        cols = list(zip(*(c.args for c in calls)))
        self.streams.feed([c.slot for c in calls], *cols)
        return [None] * len(calls)

    def _sample(self, calls: list[_Call]) -> list[Any]:
        return self.streams.sample([c.args[0] for c in calls], idx=[c.slot for c in calls])


def _current_error() -> BaseException:
    import sys

    e = sys.exc_info()[1]
    assert e is not None
    return e


def _fresh_seed() -> int:
    import secrets

    return secrets.randbits(63)


class StreamSlot:
    """One tab's stream of a :class:`BatchedEngine`, with the ``Notochord`` methods the
    player and the policies call (from the tab's player thread)."""

    def __init__(self, engine: BatchedEngine, index: int) -> None:
        self.engine = engine
        self.index = index
        self.config = engine.config

    def reset(self, start: bool = True, state: Any = None, seed: int | None = None) -> None:
        with self.engine._lock:
            if state is not None:
                self.engine.streams.set_state(self.index, state)
            else:
                self.engine.streams.reset(self.index, start=start, seed=seed)

    def get_state(self) -> Any:
        with self.engine._lock:
            return self.engine.streams.get_state(self.index)

    def set_state(self, state: Any) -> None:
        with self.engine._lock:
            self.engine.streams.set_state(self.index, state)

    @property
    def held_notes(self) -> dict[tuple[int, int], float]:
        return self.engine.streams.held_notes(self.index)

    def held_map(self) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for inst, pitch in self.held_notes:
            out.setdefault(inst, set()).add(pitch)
        return out

    @property
    def step_count(self) -> int:
        return int(self.engine.streams.step_count[self.index])

    def feed(self, inst: int, pitch: int, time: float, vel: float, *, strict: bool = False,
             **ignored: Any) -> None:
        if strict:
            raise InputError("a batched stream feeds with the repairing policy only")
        self.engine.call(_Call("feed", self.index, (inst, pitch, time, vel)))

    def sample(self, constraints: Any = None, order: str | None = None, **kw: Any) -> Any:
        if order is not None or kw:
            raise InputError("a batched stream samples with constraints only (no order, "
                             "seed or generator)")
        return self.engine.call(_Call("sample", self.index, (constraints,)))


class BatchedFactory:
    """The sessions' sampler source over a :class:`BatchedEngine` of ``n`` slots (the
    counterpart of :class:`~.engine.SamplerFactory`)."""

    def __init__(self, base: Any, n: int, precision: str = "fp32") -> None:
        self.base = base
        self.engine = BatchedEngine(base, n, precision)

    def new(self, seed: int | None = None) -> StreamSlot:
        return self.engine.slot(seed)

    def release(self, model: StreamSlot) -> None:
        self.engine.release(model)
