"""Run the SNIPER training pipeline: RPN stage, proposals, negative chips, detector training.

Each stage is restartable: a rerun skips finished stages, and ``--resume`` continues an
interrupted stage from its last checkpoint. Under ``torchrun --nproc_per_node N -m sniper train``
every rank trains on its own shard of each epoch (DDP; gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sniper.cli.args import add_config_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--annotations", required=True, help="COCO instances JSON of the training set")
    p.add_argument("--images", required=True, help="image root that file_name values are relative to")
    p.add_argument("--out", required=True, help="run directory (config, logs, checkpoints, model_final.pt)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted stage from its last checkpoint")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    from sniper.config import load_config
    from sniper.engine.pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    result = run_pipeline(
        cfg, Path(args.annotations), Path(args.images), Path(args.out), resume=args.resume, device=args.device
    )
    if result.is_main:
        print(result.format())
    return 0
