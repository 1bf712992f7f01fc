"""Plan a dataset and save the plan: ``PLAN_DIR/config.yaml`` (a full config for ``sniper train
--config``), ``plan.json`` (statistics, per-scale shares, cost, the reason for each number),
``plan.png`` and ``plan.html`` (:mod:`sniper.data.planner` has the rule)."""

from __future__ import annotations

import os
from pathlib import Path

from sniper.config import Config, save_config
from sniper.data.planner import DatasetPlan, plan_from_dataset

__all__ = ["plan_annotations", "save_plan"]


def plan_annotations(
    annotations: str | os.PathLike[str], base: Config | None = None, *, chip_size: int | None = None
) -> DatasetPlan:
    from sniper.data.coco import load_coco

    return plan_from_dataset(load_coco(annotations), base, chip_size=chip_size)


def save_plan(plan: DatasetPlan, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the plan's files into ``out_dir``; returns them by name."""
    from sniper.io import atomic_write_json
    from sniper.viz.plan import plot_plan
    from sniper.viz.report import ReportData, write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"config": out / "config.yaml", "json": out / "plan.json", "png": out / "plan.png"}
    save_config(plan.config, files["config"])
    atomic_write_json(files["json"], plan.to_dict())
    plot_plan(plan, files["png"])
    s = plan.stats
    facts = {
        "images": str(s.images),
        "objects": f"{s.objects} ({s.crowd} crowd), {s.classes} classes",
        "object size (sqrt(w*h)) p1 / p50 / p99": f"{s.sizes['p1']:g} / {s.sizes['p50']:g} / {s.sizes['p99']:g} px",
        "objects per image p50 / p99 / max": f"{s.objects_per_image['p50']:g} / {s.objects_per_image['p99']:g} / "
        f"{s.objects_per_image['p100']:g}",
        "image long side p5 / p50 / p95": f"{s.long_side['p5']:g} / {s.long_side['p50']:g} / {s.long_side['p95']:g} px",
        **{f"scale {i + 1}": f"{p.scale.describe()}: trains {100 * p.share_valid:.1f}% of the objects"
           for i, p in enumerate(plan.scales)},  # fmt: skip
        "chips per image": f"{plan.chips_per_image:.2f} (positives + sampled negatives)",
        "pixels vs single scale 800x1333": f"x{plan.pixels_vs_single_scale:.2f}",
        "pixels vs full pyramid": f"x{plan.pixels_vs_full_pyramid:.2f}",
        "objects that fit no scale": str(plan.unassigned),
    }
    notes = "\n\n".join(f"{k}: {v}" for k, v in plan.reasons.items())
    files["html"] = write_report(
        out,
        ReportData(
            title="sniper plan",
            summary=plan.summary(),
            facts=facts,
            plots=[("Object sizes per scale", [(files["png"], "object sizes in chip px per scale, with the valid band")])],
            notes="Why each number:\n\n" + notes,
        ),
        name="plan.html",
    )
    return files
