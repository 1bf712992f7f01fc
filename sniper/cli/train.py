"""``sniper train``: the SNIPER training pipeline (RPN stage, proposals, negative chips, detector).

Without ``--config`` the config is planned from the training set first (``sniper plan``; saved in
``RUN/plan/``, summary printed); ``--config paper_resnet101`` gives the paper's settings, and
``--plan`` plans on top of a given ``--config``. Each stage is restartable: ``--resume`` skips
finished stages and continues an interrupted one from its last checkpoint. A run folder that holds
an earlier run is refused without ``--resume`` or ``--overwrite`` (which starts afresh). Under
``torchrun --nproc_per_node N -m sniper train`` every rank trains on its own shard of each epoch
(DDP; gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sniper.cli.args import add_bad_image_argument, add_config_arguments, bad_image_overrides, check_out_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--annotations", required=True, help="COCO instances JSON of the training set")
    p.add_argument("--images", required=True, help="image root that file_name values are relative to")
    p.add_argument("--out", required=True, help="run directory (config, logs, checkpoints, model_final.pt)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted stage from its last checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="--out holds an earlier run: delete its results (checkpoints, logs, models) and start afresh",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument(
        "--plan",
        action="store_true",
        help="plan chips, scales, anchors and schedule from the data on top of --config "
        "(the default when no --config is given)",
    )
    add_config_arguments(p)
    add_bad_image_argument(p)


def run(args: argparse.Namespace) -> int:
    from sniper.config import apply_overrides, load_config
    from sniper.engine.pipeline import prepare_run_dir, run_pipeline

    check_out_dir(args)
    out = Path(args.out)
    is_main = int(os.environ.get("RANK", "0")) == 0
    overrides = bad_image_overrides(args)
    # Before planning: a refused or cleaned folder must not get a new plan first.
    prepare_run_dir(out, resume=args.resume, overwrite=args.overwrite, is_main=is_main)
    if args.config is None or args.plan:
        from sniper.engine.planning import plan_annotations, save_plan

        saved = out / "plan" / "config.yaml"
        if saved.exists() and args.resume:
            cfg = apply_overrides(load_config(saved), overrides)  # the run's own plan
        else:
            plan = plan_annotations(args.annotations, None if args.config is None else load_config(args.config))
            cfg = apply_overrides(plan.config, overrides)
            if is_main:
                save_plan(plan, out / "plan")
                print(plan.summary())
                print(f"plan saved in {out / 'plan'}; the paper's settings instead: --config paper_resnet101")
    else:
        cfg = load_config(args.config, overrides)
    result = run_pipeline(
        cfg,
        Path(args.annotations),
        Path(args.images),
        out,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
    )
    if result.is_main:
        print(result.format())
    return 0
