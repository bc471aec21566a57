"""What machine a benchmark ran on; every benchmark prints this with its figures."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo where there is one)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_info() -> dict:
    """CPU, cores, Python and torch versions, torch threads and the load average now."""
    info: dict = {"cpu": cpu_name(), "cores": os.cpu_count(),
                  "python": platform.python_version()}
    try:
        import torch

        info.update(torch=torch.__version__, threads=torch.get_num_threads())
    except ImportError:
        info["torch"] = None
    info["loadavg"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return info


def machine_line() -> str:
    """:func:`machine_info` as one line."""
    i = machine_info()
    load = ", ".join(f"{x:.1f}" for x in i["loadavg"]) if i["loadavg"] else "n/a"
    return (f"{i['cpu']}, {i['cores']} cores, Python {i['python']}, torch {i['torch']}, "
            f"{i.get('threads', '?')} torch threads, load {load}")
