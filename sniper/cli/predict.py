"""``sniper predict``: multi-scale inference (or RPN proposals) on an image, a folder or a COCO set.

Writes ``OUT/detections.json`` (or ``OUT/proposals.json`` with ``--proposals``), ``OUT/images.json``,
``OUT/summary.json`` and, with ``--visualize``, pictures in ``OUT/vis/``
(:func:`sniper.engine.predict_run.predict_to_folder`). A mask model (``model.masks``) adds a
``segmentation`` (COCO RLE) to every detection and draws the masks in the pictures.
"""

from __future__ import annotations

import argparse
import sys

from sniper.cli.args import add_bad_image_argument, add_config_arguments, check_out_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="model file (model_final.pt from sniper train)")
    p.add_argument("--source", required=True, help="an image file, a folder of images, or a COCO JSON")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--images", default=None, metavar="IMG_ROOT", help="image root of a COCO JSON source")
    p.add_argument("--proposals", action="store_true", help="write RPN proposals (cfg.proposals) instead")
    p.add_argument(
        "--visualize",
        type=int,
        nargs="?",
        const=20,
        default=0,
        metavar="N",
        help="draw detections (and a mask model's masks) on the first N images into OUT/vis (N defaults to 20)",
    )
    p.add_argument("--vis-thresh", type=float, default=0.3, help="draw detections scoring above this")
    p.add_argument("--vis-top-k", type=int, default=None, help="draw the K best detections instead")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (infer.batch_size)")
    add_bad_image_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    from sniper.engine.predict_run import predict_to_folder
    from sniper.errors import SniperError

    check_out_dir(args)
    if args.visualize < 0:
        raise SniperError("--visualize N needs N >= 0")
    if args.batch_size is not None and args.batch_size < 1:
        raise SniperError("--batch-size must be >= 1")
    s = predict_to_folder(
        args.weights,
        args.source,
        args.out,
        image_root=args.images,
        proposals=args.proposals,
        config=args.config,
        overrides=args.overrides,
        device=args.device,
        batch_size=args.batch_size,
        on_bad_image=args.on_bad_image,
        visualize=args.visualize,
        vis_thresh=args.vis_thresh,
        vis_top_k=args.vis_top_k,
        progress=not args.no_progress,
    )
    line = (
        f"predict: {s.images} images, {s.records} {s.mode}{' with masks' if s.masks else ''} in {s.seconds:.1f} s "
        f"({s.images_per_s:.2f} images/s) -> {s.result_file}"
    )
    if s.skipped:
        line += f"; skipped {len(s.skipped)} bad image(s), listed in {s.result_file.parent / 'summary.json'}"
    print(line)
    for k in s.skipped[:10]:
        print(f"  skipped image {k['image_id']}: {k['reason']}", file=sys.stderr)
    if len(s.skipped) > 10:
        print(f"  ... and {len(s.skipped) - 10} more", file=sys.stderr)
    return 1 if s.listed and not s.images else 0
