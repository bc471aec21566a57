"""The default limits of ``notochord-rt prep``, named once.

Used by :func:`~notochord_rt.data.prep.pipeline.prepare`, its workers' configuration
(:class:`~notochord_rt.data.prep.worker.WorkerConfig`), the supervised pool and the
command-line flags. Free of imports so the CLI parser can show them without loading the
data layer.
"""

from __future__ import annotations

DEFAULT_MIN_EVENTS = 64
"""Pieces with fewer events are reported as too short, not stored."""

DEFAULT_TIMEOUT = 60.0
"""Seconds one file may take before its worker is killed and the file reported."""

DEFAULT_MAX_MB = 64.0
"""Bigger files are reported as too large (MiB)."""

DEFAULT_MAX_BYTES = int(DEFAULT_MAX_MB * (1 << 20))
""":data:`DEFAULT_MAX_MB` in bytes."""

DEFAULT_MAX_HOURS = 6.0
"""Longer pieces are reported as too long. Also the most: the ingest itself refuses
longer pieces (``midi.ingest.MAX_PIECE_SECONDS``; a test checks that they agree)."""
