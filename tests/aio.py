"""Running a coroutine from a test, whatever else runs in the test process.

pytest-playwright's sync API keeps an event loop running in the main thread for the rest
of the session once a browser test has run, and ``asyncio.run`` refuses to start inside
a running loop; :func:`run_async` then runs the coroutine on a thread of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run(coro)``, on a fresh thread if this one already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
