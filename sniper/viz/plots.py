"""Curves of a training log (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from sniper.io import atomic_path

__all__ = ["plot_losses"]


def plot_losses(jsonl: Path, out_png: Path, title: str) -> None:
    """Loss curves (each named loss and the total) and the learning rate of a ``*.jsonl`` log, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()] if jsonl.exists() else []
    if not rows:
        return
    its = [r["iter"] for r in rows]
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(11, 4))
    for k in sorted(k for k in rows[0] if k.startswith("loss")):
        ax.plot(its, [r.get(k, math.nan) for r in rows], label=k, lw=1.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax_lr.plot(its, [r["lr"] for r in rows], color="k")
    ax_lr.set_xlabel("iteration")
    ax_lr.set_title("learning rate")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
