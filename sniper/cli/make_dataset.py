"""``sniper make-dataset OUT``: write the synthetic detection dataset (see docs/synthetic.md)."""

from __future__ import annotations

import argparse

from sniper.data.synthetic import PRESETS, make_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out", metavar="OUT", help="output folder (images/, train.json, val.json, README.txt)"
    )
    # no argparse choices: an unknown name is the library's one-line error, listing the presets
    parser.add_argument(
        "--preset",
        default="default",
        help="which dataset (default: default): "
        + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()),
    )
    counts = ", ".join(f"{p.images} for {p.name}" for p in PRESETS.values())
    parser.add_argument("--images", type=int, default=None, help=f"number of images (default: {counts})")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="fraction of images in val.json (default: 0.2)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from sniper.outputs import check_output_dir

    check_output_dir(args.out, "OUT")
    s = make_dataset(
        args.out,
        images=args.images,
        seed=args.seed,
        val_fraction=args.val_fraction,
        preset=args.preset,
        progress=not args.quiet,
    )
    print(
        f"wrote {s.images} images to {s.out_dir} (preset {s.preset}; {s.train_images} train, {s.val_images} val) "
        f"in {s.seconds:.1f}s: {s.annotations} annotations ({s.crowd_annotations} crowd, "
        f"{s.truncated_annotations} truncated), {s.distractors} unlabeled distractors, "
        f"{len(s.categories)} categories"
    )
    return 0
