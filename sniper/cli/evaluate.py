"""``sniper evaluate``: COCO box AP of detections, mask AP (``--iou-type segm``, or ``both``), or
proposal recall (``--proposals``).

``--iou-type both`` prints the box table, then the mask table; ``--out`` then holds
``{"bbox": metrics, "segm": metrics}`` (one type: the metrics themselves)."""

from __future__ import annotations

import argparse
import math

from sniper.engine.evaluate import (
    BACKENDS,
    IOU_TYPES,
    evaluate_detections,
    evaluate_proposals,
    format_detection_table,
    format_proposal_table,
    max_dets_for,
)
from sniper.io import atomic_write_json


def _area_range(text: str) -> tuple[str, tuple[float, float]]:
    """``NAME=LO,HI`` in sqrt(area) pixels; HI may be ``inf``."""
    try:
        name, bounds = text.split("=", 1)
        lo, hi = (float(v) for v in bounds.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=LO,HI (sqrt-area pixels), got {text!r}") from None
    if not name or name == "all" or not (0 <= lo < hi):
        raise argparse.ArgumentTypeError(
            f"bad area range {text!r}: need a name other than 'all' and 0 <= LO < HI"
        )
    return name, (lo, 1e5 if math.isinf(hi) else hi)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--annotations", required=True, help="ground-truth COCO annotation JSON")
    p.add_argument(
        "--detections",
        required=True,
        help="COCO results JSON [{image_id, category_id, bbox, score}] (with segmentation for masks)",
    )
    p.add_argument(
        "--iou-type",
        choices=[*IOU_TYPES, "both"],
        default="bbox",
        help="bbox: box AP (default); segm: mask AP of the results' segmentation RLEs against the GT "
        "segmentations (polygons or RLE); both: the two tables",
    )
    p.add_argument(
        "--proposals",
        action="store_true",
        help="treat the results as class-agnostic proposals and report recall (AR, AR50, AR75, by size)",
    )
    p.add_argument(
        "--max-dets",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="max detections per image (default 1 10 100, plus a larger last value when an image holds "
        "more than 100 objects; with --proposals: 300, e.g. 100 300 1000)",
    )
    p.add_argument(
        "--area-range",
        dest="area_ranges",
        type=_area_range,
        action="append",
        default=None,
        metavar="NAME=LO,HI",
        help="size range in sqrt(area) px, repeatable; replaces the defaults "
        "(small/medium/large 0-32-96-inf; with --proposals 0-25-50-100-200-300)",
    )
    p.add_argument("--out", default=None, help="also write the metrics as JSON here")
    p.add_argument(
        "--per-class",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="report AP per category (detections only)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="COCOeval implementation: faster-coco-eval (C++ matching, same numbers; "
        "pip install faster-coco-eval) or pycocotools; auto takes faster-coco-eval when installed. "
        "The table's first line names the one that ran",
    )


def run(args: argparse.Namespace) -> int:
    if args.out:
        from sniper.outputs import check_output_file

        check_output_file(args.out)
    areas = dict(args.area_ranges) if args.area_ranges else None
    if args.proposals and args.iou_type != "bbox":
        from sniper.errors import SniperError

        raise SniperError("--proposals evaluates boxes only (--iou-type bbox)")
    if args.proposals:
        metrics = evaluate_proposals(
            args.annotations,
            args.detections,
            max_proposals=args.max_dets or [300],
            area_ranges=areas,
            backend=args.backend,
        )
        print(format_proposal_table(metrics))
    else:
        max_dets = args.max_dets
        if max_dets is None:
            max_dets, note = max_dets_for(args.annotations)
            if note:
                print(note)
        types = list(IOU_TYPES) if args.iou_type == "both" else [args.iou_type]
        by_type = {}
        for k, iou_type in enumerate(types):
            by_type[iou_type] = evaluate_detections(
                args.annotations,
                args.detections,
                max_dets=max_dets,
                area_ranges=areas,
                per_class=args.per_class,
                backend=args.backend,
                iou_type=iou_type,
            )
            print(("\n" if k else "") + format_detection_table(by_type[iou_type]))
        metrics = by_type if len(types) > 1 else by_type[types[0]]
    if args.out:
        atomic_write_json(args.out, metrics)
        print(f"wrote {args.out}")
    return 0
