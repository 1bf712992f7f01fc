"""``sniper export``: chips as image files + a COCO JSON (see :mod:`sniper.data.export`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sniper.cli.args import add_bad_image_argument, add_config_arguments, bad_image_overrides, check_out_dir

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--annotations", required=True, help="COCO instances JSON of the source images")
    p.add_argument("--images", required=True, help="folder the COCO file_name values are relative to")
    p.add_argument("--chips", default=None, help="folder (or file) with chips.parquet from `sniper chips`; "
                   "default: run the chip engine now (positives; negatives too with --proposals)")  # fmt: skip
    p.add_argument("--proposals", default=None, help="COCO results JSON of RPN proposals (negative chips; "
                   "only without --chips)")  # fmt: skip
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="output folder: images/, chips_coco.json, mapping.csv")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1: in this process)")
    p.add_argument("--negatives", action=argparse.BooleanOptionalAction, default=True,
                   help="write negative chips: chips.neg_per_image per image, epoch 0's sample (default on)")  # fmt: skip
    p.add_argument(
        "--all-negatives", action="store_true", help="write the whole negative pool instead of a sample"
    )
    p.add_argument("--format", choices=["jpg", "png"], default="jpg", help="chip image format (default jpg)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument(
        "--strict", action="store_true", help="any malformed annotation is an error instead of a skip"
    )
    add_bad_image_argument(p)


def run(args: argparse.Namespace) -> int:
    from sniper.config import load_config
    from sniper.data.chip_table import ChipTable, build_chip_table
    from sniper.data.coco import load_coco, load_results
    from sniper.data.export import export_chips, select_chips

    check_out_dir(args)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.chips is not None and args.proposals is not None:
        raise ValueError("--proposals only applies without --chips (the chips already hold their negatives)")
    images = Path(args.images)
    if not images.is_dir():
        raise NotADirectoryError(f"--images {images}: not a folder")
    out = Path(args.out)
    cfg = load_config(args.config, bad_image_overrides(args))
    coco = load_coco(args.annotations, strict=args.strict, image_root=images, masks=True)
    print(coco.report.format())
    if args.chips is not None:
        table = ChipTable.read_parquet(args.chips)
    else:
        props = None
        if args.proposals is not None:
            props = load_results(args.proposals, coco, strict=args.strict)
            print(props.report.format())
        # epoch 0's chips straight from the chip engine: the rows `sniper chips` would write
        table, _ = build_chip_table(coco, props, cfg.chips, seed=cfg.seed, workers=args.workers)
    table = select_chips(
        table,
        negatives=args.negatives,
        all_negatives=args.all_negatives,
        neg_per_image=cfg.chips.neg_per_image,
        seed=cfg.seed,
    )
    summary = export_chips(
        coco, table, images, cfg, out, fmt=args.format, quality=args.quality, workers=args.workers
    )
    print(summary.format())
    print(f"COCO file: {out / 'chips_coco.json'}  images: {out / 'images'}  mapping: {out / 'mapping.csv'}")
    return 0
