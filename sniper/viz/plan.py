"""Pictures of a dataset plan (``sniper plan``): per scale, where the objects land in chip pixels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sniper.io import atomic_path
from sniper.viz.draw import scale_colour

__all__ = ["plot_plan"]


def plot_plan(plan, out_png: Path) -> Path:
    """One panel per training scale: the histogram of all object sizes in chip px at that scale
    (gray), the objects the scale trains (its colour) and the valid band; plus the original-size
    histogram with every scale's range. ``plan`` is a :class:`sniper.data.planner.DatasetPlan`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = np.asarray(plan.sizes, dtype=np.float64)
    sizes = sizes[sizes > 0]
    K = plan.config.chips.chip_size
    n = len(plan.scales)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.2 * (n + 1), 3.6), squeeze=False)
    axes = axes[0]
    lo_all = max(0.5, float(sizes.min()) if len(sizes) else 1.0)
    hi_all = float(sizes.max()) if len(sizes) else 10.0

    ax = axes[0]
    bins = np.geomspace(lo_all, max(hi_all, lo_all * 2), 40)
    ax.hist(sizes, bins=bins, color="0.6")
    for i, p in enumerate(plan.scales):
        lo, hi = p.scale.lo, min(p.scale.hi, hi_all * 2)
        c = np.array(scale_colour(i)) / 255
        ax.axvspan(max(lo, lo_all), hi, color=c, alpha=0.18, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("object size sqrt(w*h), original px")
    ax.set_ylabel("objects")
    ax.set_title(f"{plan.stats.objects} objects; ranges per scale", fontsize=10)

    for i, p in enumerate(plan.scales):
        ax = axes[i + 1]
        c = np.array(scale_colour(i)) / 255
        f = p.factor
        in_chip = sizes * f
        b = np.geomspace(max(0.5, in_chip.min()), max(in_chip.max(), 2 * max(0.5, in_chip.min())), 40)
        ax.hist(in_chip, bins=b, color="0.8", label="all objects")
        if len(p.chip_sizes):
            ax.hist(p.chip_sizes, bins=b, color=c, label="valid here")
        lo = p.scale.lo * f
        hi = p.scale.hi * f if math.isfinite(p.scale.hi) else b[-1]
        ax.axvline(max(lo, b[0]), color="k", lw=1, ls="--")
        ax.axvline(hi, color="k", lw=1, ls="--")
        ax.axvline(K, color="r", lw=1, ls=":", label=f"chip {K} px")
        ax.set_xscale("log")
        ax.set_xlabel("object size in chip px at this scale (median factor)")
        ax.set_title(f"{p.scale.describe()}\ntrains {100 * p.share_valid:.1f}% of the objects", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return out_png
