"""Workers that misbehave on purpose, so the prep pool's crash and timeout handling is
tested honestly (no real MIDI file is known to crash or hang the ingest).

:func:`faulty` returns a picklable per-file task for ``prepare(task=...)`` or
``SupervisedPool``: ``spec`` is ``;``-separated ``action=substring`` items; when a file's
name contains ``substring`` the worker does ``action`` before reading it: ``crash``
(``os._exit(70)``), ``abort`` (``SIGABRT``, like a C++ ``std::terminate``) or ``hang``
(sleep for an hour). Other files get the real work, :func:`process_file`.
"""

from __future__ import annotations

import functools
import os
import signal
import time

from notochord_rt.data.prep.worker import FileResult, WorkerConfig, process_file


def faulty(spec: str) -> functools.partial:
    """The real per-file task, with the faults of ``spec`` injected."""
    return functools.partial(_with_fault, spec)


def _with_fault(spec: str, path: str, config: WorkerConfig) -> FileResult:
    name = os.path.basename(path)
    for item in spec.split(";"):
        action, _, pattern = item.partition("=")
        if not pattern or pattern not in name:
            continue
        if action == "crash":
            os._exit(70)
        if action == "abort":
            os.kill(os.getpid(), signal.SIGABRT)
        if action == "hang":
            time.sleep(3600)
    return process_file(path, config)
