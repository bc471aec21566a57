"""PNG plots of the statistics (matplotlib, the optional ``plot`` extra, imported lazily).

:func:`write_plots` draws, into one folder, ``features.png`` (per feature the KDE of
each set, as compared by :mod:`.compare`; a histogram-like density when one set is
given) and ``ioi.png`` (the inter-onset interval histograms of the sets).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from .compare import bandwidth, kde
from .features import FEATURES, IOI_BIN
from .sets import SetStats


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UserError("PNG plots need matplotlib: pip install 'notochord-rt[plot]'") from e
    return plt


def write_plots(sets: Sequence[SetStats], folder: str | os.PathLike) -> list[Path]:
    """Write ``features.png`` and ``ioi.png`` for ``sets`` into ``folder``; returns the
    paths. Raises ``UserError`` when matplotlib is missing."""
    plt = _pyplot()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    names = list(FEATURES)
    cols = 5
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows))
    for ax, name in zip(axes.ravel(), names):
        vals = [s.values(name) for s in sets]
        both = np.concatenate([v for v in vals if len(v)] or [np.zeros(1)])
        spread = float(both.max() - both.min())
        pad = 0.1 * spread if spread > 0 else 1.0
        grid = np.linspace(both.min() - pad, both.max() + pad, 400)
        for s, v in zip(sets, vals):
            if len(v):
                ax.plot(grid, kde(v, grid, bandwidth(v, spread)), label=f"{s.name} ({len(v)})")
        ax.set_title(f"{name} [{FEATURES[name][0]}]", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    paths = [out / "features.png", out / "ioi.png"]
    fig.savefig(paths[0], dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for s in sets:
        h = s.ioi_hist[:-1].astype(np.float64)
        if h.sum() > 0:
            x = (np.arange(len(h)) + 0.5) * IOI_BIN
            ax.plot(x, h / s.ioi_hist.sum(), label=s.name, lw=1)
    ax.set_xlabel("inter-onset interval (s), 10 ms bins")
    ax.set_ylabel("share of intervals")
    ax.set_xlim(0, 1.0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=90)
    plt.close(fig)
    return paths
