"""A process pool that survives workers that crash or hang, and says which task did it.

``concurrent.futures`` and ``multiprocessing.Pool`` cannot tell which task killed a worker,
and cannot stop one hung task without tearing the whole pool down. Here each worker process
gets **one task at a time** over its own pipe, so the parent always knows what every worker
is doing: when a worker dies (segfault, abort, ``os._exit``) its task is reported as a crash
with the exit status, when a task runs past ``timeout`` seconds the worker is killed and the
task reported as a timeout, and in both cases a fresh worker takes its place.

Workers ignore SIGINT, so Ctrl-C reaches only the parent, which then kills the workers
(see :meth:`SupervisedPool.close`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class TaskOutcome:
    """The fate of one task: ``kind`` is ``"done"``, ``"crash"`` or ``"timeout"``."""

    task: Any
    kind: str
    value: Any = None
    detail: str = ""


def _worker_main(conn: Connection, func: Callable, config: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        cpu = time.process_time()
        try:
            value = func(task, config)
        except BaseException as e:  # noqa: BLE001 - reported to the parent as a crash
            conn.send(("error", f"{type(e).__name__}: {e}", time.process_time() - cpu))
        else:
            conn.send(("done", value, time.process_time() - cpu))


def describe_exit(exitcode: int | None) -> str:
    """Human-readable reason of a worker's death."""
    if exitcode is None:
        return "worker died"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker killed by {name}"
    return f"worker exited with status {exitcode}"


class _Worker:
    """One worker process and the tasks sent to it, oldest (the one it works on) first."""

    def __init__(self, ctx, func: Callable, config: Any):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, func, config), daemon=True)
        self.process.start()
        child.close()
        self.tasks: deque = deque()
        self.started = 0.0  # when the oldest task started (as far as the parent knows)

    def assign(self, task: Any) -> None:
        if not self.tasks:
            self.started = time.monotonic()
        self.tasks.append(task)
        self.conn.send(task)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class SupervisedPool:
    """Run ``func(task, config)`` on many tasks in ``jobs`` worker processes.

    ``func`` and ``config`` must be picklable (a module-level function and a dataclass).
    Use as a context manager; :meth:`run` yields a :class:`TaskOutcome` per task in
    completion order. Each worker holds up to ``prefetch`` tasks so that it never waits
    for the parent; it works on them in order, so when it dies the oldest is the culprit
    and the others go back to the queue. Workers are forked from a fork server where there
    is one (else spawned); ``preload`` names modules the fork server imports once, so that
    new workers start fast. The time limit of a task includes the start of a fresh worker.
    As with any ``multiprocessing`` code, a script using this needs the
    ``if __name__ == "__main__":`` guard.
    """

    def __init__(
        self,
        func: Callable,
        config: Any,
        jobs: int = 1,
        timeout: float = 60.0,
        preload: Sequence[str] = (),
        prefetch: int = 8,
    ):
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self.func, self.config, self.jobs, self.timeout = func, config, jobs, timeout
        self.prefetch = prefetch
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if preload and "forkserver" in methods:
            # imported once by the fork server (if this starts it), not by every new worker
            self.ctx.set_forkserver_preload(list(preload))
        self.workers: list[_Worker] = []
        self.cpu_seconds = 0.0
        """CPU time the workers spent in ``func`` on the tasks that returned."""

    def __enter__(self) -> SupervisedPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, tasks: Iterable[Any]) -> Iterator[TaskOutcome]:
        pending = deque(tasks)
        selector = selectors.DefaultSelector()  # one poll set for the whole run
        for worker in self.workers:
            self._watch(selector, worker)
        try:
            while pending or any(w.tasks for w in self.workers):
                while pending and len(self.workers) < self.jobs:
                    worker = _Worker(self.ctx, self.func, self.config)
                    self.workers.append(worker)
                    self._watch(selector, worker)
                for worker in self.workers:
                    while pending and len(worker.tasks) < self.prefetch:
                        worker.assign(pending.popleft())
                deadline = min(w.started + self.timeout for w in self.workers if w.tasks)
                ready = {key.data for key, _ in
                         selector.select(max(0.0, deadline - time.monotonic()))}
                for worker in list(self.workers):
                    outcomes, dead = self._collect(
                        worker, (worker, "result") in ready, (worker, "exit") in ready
                    )
                    if dead:
                        pending.extendleft(reversed(worker.tasks))  # not started: elsewhere
                        worker.tasks.clear()
                        selector.unregister(worker.conn)
                        selector.unregister(worker.process.sentinel)
                        worker.kill()
                        self.workers.remove(worker)
                    yield from outcomes
        finally:
            selector.close()

    @staticmethod
    def _watch(selector: selectors.BaseSelector, worker: _Worker) -> None:
        selector.register(worker.conn, selectors.EVENT_READ, (worker, "result"))
        selector.register(worker.process.sentinel, selectors.EVENT_READ, (worker, "exit"))

    def _collect(
        self, worker: _Worker, has_result: bool, exited: bool
    ) -> tuple[list[TaskOutcome], bool]:
        """The outcome ``worker`` has now (at most one), and whether it is dead or must be.

        Results are read before an exit is believed: a worker that died after sending
        some results has them all counted, and its death is blamed on the next task.
        """
        if has_result:
            try:
                kind, value, cpu = worker.conn.recv()
            except (EOFError, OSError):
                return self._died(worker), True
            self.cpu_seconds += cpu
            task = worker.tasks.popleft()
            worker.started = time.monotonic()
            if kind == "done":
                return [TaskOutcome(task, "done", value)], False
            log.warning("worker raised on %r: %s", task, value)
            return [TaskOutcome(task, "crash", detail=f"worker raised {value}")], False
        if exited:
            if worker.conn.poll():
                return [], False  # read what it sent first
            return self._died(worker), True
        elapsed = time.monotonic() - worker.started
        if worker.tasks and elapsed >= self.timeout:
            task = worker.tasks.popleft()
            return [TaskOutcome(task, "timeout", detail=f"no result after {elapsed:.0f} s")], True
        return [], False

    @staticmethod
    def _died(worker: _Worker) -> list[TaskOutcome]:
        """The crash outcome of a dead worker's current task (none if it was idle)."""
        worker.process.join(1)
        detail = describe_exit(worker.process.exitcode)
        if not worker.tasks:
            log.warning("an idle worker died (%s)", detail)
            return []
        return [TaskOutcome(worker.tasks.popleft(), "crash", detail=detail)]

    def close(self) -> None:
        """Stop every worker now (tasks in flight are abandoned)."""
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self.workers:
            worker.process.join(0.5)
            worker.kill()
        self.workers.clear()
