"""``sniper demo``: the whole pipeline on the embedded synthetic dataset (:mod:`sniper.engine.demo`)."""

from __future__ import annotations

import argparse

from sniper.cli.args import add_config_arguments, check_out_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sniper.engine.demo import CONFIG

    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--images", type=int, default=48, help="synthetic images to generate (80%% train)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--fresh", action="store_true", help="start over instead of continuing a previous run")
    p.add_argument(
        "--masks",
        action="store_true",
        help="instance masks: model.masks=true (Mask R-CNN branch), mask AP beside box AP in the report",
    )
    add_config_arguments(p)
    p.set_defaults(config=CONFIG)


def run(args: argparse.Namespace) -> int:
    from sniper.engine.demo import run_demo

    check_out_dir(args)
    run_demo(
        args.out,
        images=args.images,
        seed=args.seed,
        device=args.device,
        fresh=args.fresh,
        config=args.config,
        overrides=args.overrides,
        masks=args.masks,
    )
    return 0
