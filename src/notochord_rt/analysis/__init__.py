"""Objective statistics of MIDI pieces and sets: a yardstick for generated music.

* :func:`describe` (``features.py``): one piece → ``{statistic: value}``
  (:data:`FEATURES` defines each one);
* :func:`find_sources` / :func:`analyse` (``sets.py``): MIDI files, folders or prepared
  splits → :class:`SetStats`;
* :func:`compare` (``compare.py``): per-feature KDE overlap area and KL divergence
  between two sets (Yang & Lerch 2020);
* :func:`rhythm_test` (``rhythm.py``): the teacher-forced test of whether a model's next
  onset lands on the piece's 16th-note grid;
* ``grid.py``, ``tonal.py``, ``patterns.py``: the grid fit, key finding and repetition
  measures; ``report.py`` tables and JSON; ``plots.py`` PNGs.

See ``docs/stats.md`` for the definitions and the measured figures.
"""

from ..onset_grid import Grid, fit_grid, refine_grid
from .compare import compare, overlap_and_kl
from .features import FEATURES, StatsConfig, describe, piece_key
from .rhythm import RhythmResult, rhythm_test
from .sets import SetStats, Source, analyse, find_sources

__all__ = ["FEATURES", "Grid", "RhythmResult", "SetStats", "Source", "StatsConfig",
           "analyse", "compare", "describe", "find_sources", "fit_grid", "overlap_and_kl",
           "piece_key", "refine_grid", "rhythm_test"]
