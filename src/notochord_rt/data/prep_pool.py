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
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
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
        try:
            value = func(task, config)
        except BaseException as e:  # noqa: BLE001 - reported to the parent as a crash
            conn.send(("error", f"{type(e).__name__}: {e}"))
        else:
            conn.send(("done", value))


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
    def __init__(self, ctx, func: Callable, config: Any):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, func, config), daemon=True)
        self.process.start()
        child.close()
        self.task: Any = None
        self.started = 0.0

    def assign(self, task: Any) -> None:
        self.task = task
        self.started = time.monotonic()
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
    completion order. Workers are forked from a fork server where there is one (else
    spawned); ``preload`` names modules the fork server imports once, so that new workers
    start fast. The time limit of a task includes the start of a fresh worker.
    """

    def __init__(
        self,
        func: Callable,
        config: Any,
        jobs: int = 1,
        timeout: float = 60.0,
        preload: Sequence[str] = (),
    ):
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        self.func, self.config, self.jobs, self.timeout = func, config, jobs, timeout
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if preload and "forkserver" in methods:
            # imported once by the fork server (if this starts it), not by every new worker
            self.ctx.set_forkserver_preload(list(preload))
        self.workers: list[_Worker] = []

    def __enter__(self) -> SupervisedPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self) -> _Worker:
        worker = _Worker(self.ctx, self.func, self.config)
        self.workers.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        self.workers.remove(worker)

    def run(self, tasks: Iterable[Any]) -> Iterator[TaskOutcome]:
        pending = deque(tasks)
        idle: list[_Worker] = []
        busy: list[_Worker] = []
        while pending or busy:
            while pending and len(busy) < self.jobs:
                worker = idle.pop() if idle else self._spawn()
                worker.assign(pending.popleft())
                busy.append(worker)
            now = time.monotonic()
            deadline = min(w.started + self.timeout for w in busy)
            handles = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            ready = set(wait(handles, timeout=max(0.0, deadline - now)))
            for worker in list(busy):
                outcome = self._check(worker, ready)
                if outcome is None:
                    continue
                busy.remove(worker)
                if outcome.kind == "done":
                    idle.append(worker)
                else:
                    self._retire(worker)
                yield outcome

    def _check(self, worker: _Worker, ready: set) -> TaskOutcome | None:
        """The outcome of ``worker``'s task if it has one now, else None."""
        task = worker.task
        if worker.conn in ready or worker.process.sentinel in ready:
            try:
                if worker.conn.poll():
                    kind, value = worker.conn.recv()
                    if kind == "done":
                        return TaskOutcome(task, "done", value)
                    log.warning("worker raised on %r: %s", task, value)
                    return TaskOutcome(task, "crash", detail=f"worker raised {value}")
            except (EOFError, OSError):
                pass
            worker.process.join(1)
            return TaskOutcome(task, "crash", detail=describe_exit(worker.process.exitcode))
        elapsed = time.monotonic() - worker.started
        if elapsed >= self.timeout:
            return TaskOutcome(task, "timeout", detail=f"no result after {elapsed:.0f} s")
        return None

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
