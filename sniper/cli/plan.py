"""``sniper plan``: a training and inference config derived from the dataset's own statistics.

Writes ``OUT/config.yaml`` (usable with ``sniper train --config``), ``OUT/plan.json``,
``OUT/plan.png`` and ``OUT/plan.html``, and prints the plan (:mod:`sniper.data.planner`).
"""

from __future__ import annotations

import argparse

from sniper.cli.args import add_config_arguments, check_out_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--annotations", required=True, help="COCO instances JSON of the training set")
    p.add_argument("--out", required=True, help="plan folder (config.yaml, plan.json, plan.png, plan.html)")
    p.add_argument("--chip-size", type=int, default=None, help="chip side K (default: from the image sizes)")
    p.add_argument("--images", default=None, help="image root (optional: checks that the images are readable)")
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    from sniper.config import load_config
    from sniper.engine.planning import plan_annotations, save_plan

    check_out_dir(args)
    base = load_config(args.config, args.overrides)
    plan = plan_annotations(args.annotations, base, chip_size=args.chip_size)
    if args.images is not None:
        _check_images(args.annotations, args.images, plan.config)
    files = save_plan(plan, args.out)
    print(plan.summary())
    print(f"wrote {files['config']} (use: sniper train --config {files['config']}), {files['html']}")
    return 0


def _check_images(annotations: str, images: str, cfg) -> None:
    """Read every image's header now, so that a bad file shows before training starts."""
    from dataclasses import replace

    import numpy as np

    from sniper.data.chip_dataset import check_images
    from sniper.data.chip_table import ChipTable
    from sniper.data.coco import load_coco

    ds = load_coco(annotations)
    n = len(ds)
    one_per_image = ChipTable(
        np.array([r.id for r in ds.images], np.int64), np.zeros(n, bool), np.ones(n), np.zeros(n, np.int64),
        np.zeros((n, 4)),
    )  # fmt: skip
    report = check_images(ds, one_per_image, images, replace(cfg.data, on_bad_image="skip"))
    print(report.format())
