"""A process pool that survives workers that crash or hang, and says which task did it.

``concurrent.futures`` and ``multiprocessing.Pool`` cannot tell which task killed a worker,
and cannot stop one hung task without tearing the whole pool down. Here each worker process
has its own pipe and works through **batches** of tasks in order; before each task it writes
the task's number and start time into a small shared-memory slot. So the parent always
knows what every worker is doing, without a message per task:

- when a worker dies (segfault, abort, ``os._exit``) the task it had started is reported as
  a crash with the exit status, and the other tasks it held (including those of the batch
  it had finished but not yet sent) go back to the queue;
- when a task runs past ``timeout`` seconds the worker is killed, that task is reported as
  a timeout and the others go back to the queue;
- in both cases a fresh worker takes its place.

A worker sends the results of a batch as one message when the batch is done (or earlier,
when they grow past ``max_message`` units of ``weigh``), optionally packed by an
``encode`` function (and unpacked in the parent by ``decode``), so that many small tasks
cost one pipe message, not one each. Its CPU time is reported with each message. An
optional ``setup(config)`` runs once in every worker before its first task.

Workers ignore SIGINT, so Ctrl-C reaches only the parent, which then kills the workers
(see :meth:`SupervisedPool.close`).
"""

from __future__ import annotations

import gc
import logging
import math
import multiprocessing as mp
import multiprocessing.forkserver  # noqa: F401 - imported with this module rather than lazily
import multiprocessing.popen_forkserver  # noqa: F401   on the first run (a run's CPU time
import multiprocessing.sharedctypes  # noqa: F401        counts its files, not imports)
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from .limits import DEFAULT_TIMEOUT

log = logging.getLogger(__name__)

_START, _NUMBER = 0, 1  # slots of a worker's shared state: start time, task number


class PoolError(RuntimeError):
    """A worker could not pack the results of its tasks (the run cannot go on)."""


@dataclass
class TaskOutcome:
    """The fate of one task: ``kind`` is ``"done"``, ``"crash"`` or ``"timeout"``."""

    task: Any
    kind: str
    value: Any = None
    detail: str = ""


@dataclass
class _Hooks:
    """The worker's optional functions: set up, pack a list of values, weigh one value."""

    encode: Callable[[list, Any], Any] | None = None
    weigh: Callable[[Any], int] | None = None
    max_message: int = 0
    setup: Callable[[Any], None] | None = None


def _worker_main(conn: Connection, func: Callable, config: Any, state, hooks: _Hooks) -> None:
    """Run batches of tasks; before each task, note its number and start in ``state``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.freeze()  # what the fork server had stays out of collections (and shared with it)
    if hooks.setup is not None:
        hooks.setup(config)
    number, cpu = 0, time.process_time()
    while True:
        try:
            tasks = conn.recv()
        except (EOFError, OSError):
            return
        if tasks is None:
            return
        values: list = []
        raised: dict[int, str] = {}  # position in the message -> what the task raised
        count = weight = 0
        for task in tasks:
            state[_START] = time.monotonic()
            state[_NUMBER] = number  # written after the start: a reader never pairs the
            number += 1  # new task with the old start (see _Worker.current)
            try:
                value = func(task, config)
            except BaseException as e:  # noqa: BLE001 - reported to the parent as a crash
                raised[count] = f"{type(e).__name__}: {e}"
            else:
                values.append(value)
                if hooks.weigh is not None:
                    weight += hooks.weigh(value)
            count += 1
            if count < len(tasks) and hooks.max_message and weight >= hooks.max_message:
                cpu = _send(conn, count, raised, values, hooks, config, cpu)
                values, raised, count, weight = [], {}, 0, 0
        if count:
            cpu = _send(conn, count, raised, values, hooks, config, cpu)


def _send(conn: Connection, count: int, raised: dict, values: list, hooks: _Hooks, config: Any,
          cpu: float) -> float:
    """Send the results of the next ``count`` tasks with the CPU time since ``cpu``.

    A failing ``encode`` (a full disk, say) is not any task's fault: it is sent as an
    error that stops the run (see :class:`PoolError`).
    """
    payload, error = values, None
    if hooks.encode is not None:
        try:
            payload = hooks.encode(values, config)
        except Exception as e:  # noqa: BLE001 - reported to the parent
            payload, error = None, f"{type(e).__name__}: {e}"
    now = time.process_time()
    conn.send((count, raised, payload, now - cpu, error))
    return now


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
    """One worker process, its shared state and the tasks sent to it, oldest first."""

    def __init__(self, ctx, func: Callable, config: Any, hooks: _Hooks):
        self.conn, child = ctx.Pipe()
        self.state = ctx.RawArray("d", [0.0, -1.0])
        self.process = ctx.Process(target=_worker_main,
                                   args=(child, func, config, self.state, hooks), daemon=True)
        self.process.start()
        child.close()
        self.tasks: deque = deque()  # sent, results not yet received
        self.ends: deque[int] = deque()  # number after the last task of each batch in flight
        self.answered = 0  # number of the oldest task in self.tasks (tasks are numbered 0, 1..)
        self.since = 0.0  # when the parent last saw this worker make progress
        self.broken = False  # its pipe is broken: it gets no more tasks

    @property
    def batches(self) -> int:
        """Batches sent and not fully answered."""
        return len(self.ends)

    def assign(self, batch: list) -> None:
        if not self.tasks:
            self.since = time.monotonic()
        self.tasks.extend(batch)
        self.ends.append(self.answered + len(self.tasks))
        try:
            self.conn.send(batch)
        except OSError:  # it died: its exit is noticed next, and its tasks go elsewhere
            self.broken = True

    def current(self) -> tuple[int, float]:
        """Position in ``tasks`` of the task being worked on (-1: none yet), and its start."""
        number = int(self.state[_NUMBER])  # read before the start time (written after it)
        started = self.state[_START]
        position = number - self.answered
        if 0 <= position < len(self.tasks):
            return position, max(started, self.since)
        return -1, self.since

    def take(self, count: int) -> list:
        """Remove and return the ``count`` oldest tasks (their results arrived)."""
        done = [self.tasks.popleft() for _ in range(count)]
        self.answered += count
        self.since = time.monotonic()
        while self.ends and self.ends[0] <= self.answered:
            self.ends.popleft()
        return done

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class SupervisedPool:
    """Run ``func(task, config)`` on many tasks in ``jobs`` worker processes.

    ``func``, ``config`` and the hooks must be picklable (module-level functions and a
    dataclass). Use as a context manager; :meth:`run` yields a :class:`TaskOutcome` per
    task in completion order. Tasks go to workers in batches of ``batch_size`` (default:
    about a quarter of each worker's share of the tasks, at most 64), and each worker holds
    up to ``prefetch`` batches so that it never waits for the parent.
    ``encode(values, config)`` (in the worker) and ``decode(payload) -> values`` (in the
    parent) may pack the results of a batch; ``weigh(value)`` and ``max_message`` make a
    worker send early once its results weigh that much. Workers are forked from a fork
    server where there is one (else spawned); ``preload`` names modules the fork server
    imports once, so that new workers start fast. The time limit of a task includes the
    start of a fresh worker. As with any ``multiprocessing`` code, a script using this
    needs the ``if __name__ == "__main__":`` guard.
    """

    def __init__(
        self,
        func: Callable,
        config: Any,
        jobs: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
        preload: Sequence[str] = (),
        prefetch: int = 2,
        batch_size: int | None = None,
        encode: Callable[[list, Any], Any] | None = None,
        decode: Callable[[Any], list] | None = None,
        weigh: Callable[[Any], int] | None = None,
        max_message: int = 0,
        setup: Callable[[Any], None] | None = None,
    ):
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if (encode is None) != (decode is None):
            raise ValueError("encode and decode go together")
        self.func, self.config, self.jobs, self.timeout = func, config, jobs, timeout
        self.prefetch, self.batch_size = prefetch, batch_size
        self.hooks = _Hooks(encode, weigh, max_message, setup)
        self.decode = decode
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if preload and "forkserver" in methods:
            # imported once by the fork server (if this starts it), not by every new worker
            self.ctx.set_forkserver_preload(list(preload))
        self.workers: list[_Worker] = []
        self.cpu_seconds = 0.0
        """CPU time the workers spent on the batches they answered (not their start)."""

    def __enter__(self) -> SupervisedPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, tasks: Iterable[Any]) -> Iterator[TaskOutcome]:
        pending = deque(tasks)
        size = self.batch_size or max(1, min(64, math.ceil(len(pending) / (4 * self.jobs))))
        selector = selectors.DefaultSelector()  # one poll set for the whole run
        for worker in self.workers:
            self._watch(selector, worker)
        try:
            while pending or any(w.tasks for w in self.workers):
                while pending and len(self.workers) < self.jobs:
                    worker = _Worker(self.ctx, self.func, self.config, self.hooks)
                    self.workers.append(worker)
                    self._watch(selector, worker)
                for worker in self.workers:
                    while pending and worker.batches < self.prefetch and not worker.broken:
                        worker.assign([pending.popleft() for _ in range(min(size, len(pending)))])
                deadline = min(w.current()[1] + self.timeout for w in self.workers if w.tasks)
                ready = {key.data for key, _ in
                         selector.select(max(0.0, deadline - time.monotonic()))}
                for worker in list(self.workers):
                    outcomes, dead = self._collect(
                        worker, (worker, "result") in ready, (worker, "exit") in ready
                    )
                    if dead:
                        pending.extendleft(reversed(worker.tasks))  # not finished: elsewhere
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
        """The outcomes ``worker`` has now, and whether it is dead or must be.

        Results are read before an exit is believed: a worker that died after sending
        some results has them all counted, and its death is blamed on the task it started
        next. A dead worker's culprit is removed from ``worker.tasks``; what is left there
        is for the caller to queue again.
        """
        if has_result:
            try:
                count, raised, payload, cpu, error = worker.conn.recv()
            except (EOFError, OSError):
                return self._died(worker), True
            self.cpu_seconds += cpu
            log.debug("worker %d: %d results, %.2f ms CPU", worker.process.pid, count, 1e3 * cpu)
            if error is not None:
                raise PoolError(f"a worker could not pack its results: {error}")
            values = iter(self.decode(payload) if self.decode is not None else payload)
            outcomes = []
            for k, task in enumerate(worker.take(count)):
                if k in raised:
                    log.warning("worker raised on %r: %s", task, raised[k])
                    outcomes.append(TaskOutcome(task, "crash", detail=f"worker raised {raised[k]}"))
                else:
                    outcomes.append(TaskOutcome(task, "done", next(values)))
            return outcomes, False
        if exited:
            if worker.conn.poll():
                return [], False  # read what it sent first
            return self._died(worker), True
        if not worker.tasks:
            return [], False
        position, started = worker.current()
        elapsed = time.monotonic() - started
        if elapsed >= self.timeout:
            task = self._pop(worker, max(position, 0))
            return [TaskOutcome(task, "timeout", detail=f"no result after {elapsed:.0f} s")], True
        return [], False

    @staticmethod
    def _pop(worker: _Worker, position: int) -> Any:
        task = worker.tasks[position]
        del worker.tasks[position]
        return task

    def _died(self, worker: _Worker) -> list[TaskOutcome]:
        """The crash outcome of a dead worker's current task (none if it was between tasks).

        A worker that dies before starting any task takes the blame for its oldest task,
        so that a worker that cannot start at all still lets the run end.
        """
        worker.process.join(1)
        detail = describe_exit(worker.process.exitcode)
        position, _ = worker.current()
        if position < 0 and worker.tasks and worker.state[_NUMBER] < 0:
            position, detail = 0, f"{detail} before its first task"
        if position < 0:
            log.warning("a worker died between tasks (%s)", detail)
            return []
        return [TaskOutcome(self._pop(worker, position), "crash", detail=detail)]

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
