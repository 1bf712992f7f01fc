"""``sniper make-dataset OUT``: write the synthetic detection dataset (see docs/synthetic.md)."""

from __future__ import annotations

import argparse

from sniper.data.synthetic import make_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out", metavar="OUT", help="output folder (images/, train.json, val.json, README.txt)"
    )
    parser.add_argument("--images", type=int, default=160, help="number of images (default: 160)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="fraction of images in val.json (default: 0.2)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    s = make_dataset(
        args.out, images=args.images, seed=args.seed, val_fraction=args.val_fraction, progress=not args.quiet
    )
    print(
        f"wrote {s.images} images to {s.out_dir} ({s.train_images} train, {s.val_images} val) in {s.seconds:.1f}s: "
        f"{s.annotations} annotations ({s.crowd_annotations} crowd, {s.truncated_annotations} truncated), "
        f"{s.distractors} unlabeled distractors, {len(s.categories)} categories"
    )
    return 0
