"""``sniper chips``: mine positive (and, with proposals, negative) chips for a COCO file.

Writes ``OUT/chips.parquet`` (one row per chip: the positives and the whole negative pool,
from which training samples ``chips.neg_per_image`` per image each epoch; see
:mod:`sniper.data.chip_table`) and ``OUT/stats.json``, and prints the same statistics as a
table; ``--visualize N`` draws the first N images into ``OUT/viz``. With ``--shard-images N``
the table is the resumable folder ``OUT/chips/`` of parts of N images instead
(:func:`sniper.data.chip_table.write_chip_shards`): a rerun keeps the finished parts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sniper.cli.args import add_bad_image_argument, add_config_arguments, bad_image_overrides, check_out_dir

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--annotations", required=True, help="COCO instances JSON")
    p.add_argument(
        "--proposals", default=None, help="COCO results JSON of RPN proposals (enables negative chips)"
    )
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="output folder (chips.parquet, stats.json, viz/)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1: in this process)")
    p.add_argument(
        "--shard-images",
        type=int,
        default=0,
        metavar="N",
        help="write the table as the folder OUT/chips/ of parquet parts of N images each; a rerun "
        "resumes, keeping the finished parts (default 0: one file, OUT/chips.parquet)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="with --shard-images: replace an OUT/chips/ mined from other inputs instead of stopping",
    )
    p.add_argument(
        "--visualize", type=int, default=0, metavar="N", help="write pictures of the first N images"
    )
    p.add_argument("--seed", type=int, default=None, help="tie-break seed (default: config seed)")
    p.add_argument(
        "--images", default=None, help="image folder (only used for --visualize; else a gray canvas)"
    )
    p.add_argument(
        "--strict", action="store_true", help="any malformed annotation is an error instead of a skip"
    )
    add_bad_image_argument(p)


def run(args: argparse.Namespace) -> int:
    from sniper.config import load_config
    from sniper.data.chip_table import chip_stats, format_chip_stats, write_chip_shards, write_chip_table
    from sniper.data.coco import load_coco, load_results
    from sniper.io import atomic_write_json, remove_stale_temps

    check_out_dir(args)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.visualize < 0:
        raise ValueError(f"--visualize must be >= 0, got {args.visualize}")
    if args.shard_images < 0:
        raise ValueError(f"--shard-images must be >= 0, got {args.shard_images}")
    cfg = load_config(args.config, bad_image_overrides(args))
    seed = cfg.seed if args.seed is None else args.seed
    out = Path(args.out)
    ds = load_coco(args.annotations, strict=args.strict)
    print(ds.report.format())
    props = None
    if args.proposals is not None:
        props = load_results(args.proposals, ds, strict=args.strict)
        print(props.report.format())
    if args.shard_images:
        table = out / "chips"
        totals = write_chip_shards(
            ds, props, cfg.chips, table, seed=seed, workers=args.workers, shard_images=args.shard_images,
            overwrite=args.overwrite,
        )  # fmt: skip
        written = f"{table}/ ({-(-len(ds) // args.shard_images)} parts, {totals.pos + totals.neg} chips)"
    else:
        table = out / "chips.parquet"
        totals = write_chip_table(ds, props, cfg.chips, table, seed=seed, workers=args.workers)
        written = f"{table} ({totals.pos + totals.neg} chips)"
    stats = chip_stats(totals, cfg, seed, ds, props)
    remove_stale_temps(out, ["stats.json"])
    atomic_write_json(out / "stats.json", stats)
    print(format_chip_stats(stats))
    print(f"wrote {written} and {out / 'stats.json'}")
    if args.visualize:
        from sniper.viz.chips import visualize_chips

        bad: list[str] = []
        remove_stale_temps(out / "viz")
        files = visualize_chips(ds, props, cfg, seed, args.visualize, out / "viz", args.images, skipped=bad)
        print(f"wrote {len(files)} pictures to {out / 'viz'}")
        if bad:
            print(f"{len(bad)} bad image(s) drawn as a gray canvas (--on-bad-image skip)")
    return 0
