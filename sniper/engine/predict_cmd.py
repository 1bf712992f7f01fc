"""``sniper predict``: multi-scale inference (or RPN proposals) on an image, a folder or a COCO set.

Writes ``OUT/detections.json`` (or ``OUT/proposals.json`` with ``--proposals``) as COCO
results with the dataset's own category ids, ``OUT/images.json`` (id -> file, for image and
folder sources), ``OUT/summary.json`` (counts, speed, skipped images) and, with
``--visualize``, pictures in ``OUT/vis/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from sniper.cli import add_config_arguments
from sniper.errors import SniperError

# Shown per image in --visualize pictures of proposals (they have no useful threshold).
VIS_PROPOSALS = 50


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
        help="draw detections on the first N images into OUT/vis (N defaults to 20)",
    )
    p.add_argument("--vis-thresh", type=float, default=0.3, help="draw detections scoring above this")
    p.add_argument("--vis-top-k", type=int, default=None, help="draw the K best detections instead")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (infer.batch_size)")
    p.add_argument(
        "--on-bad-image",
        choices=("error", "skip"),
        default=None,
        help="stop on an unreadable image, or skip it and list it in the summary (data.on_bad_image)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(p)


def resolve_config(ckpt_cfg, config_path: str | None, overrides: list[str]):
    """The checkpoint's config, updated by ``--config`` and ``--set``; model settings are
    fixed by the weights, so changing them is an error rather than silently ignored."""
    from sniper.config import Config, _from_dict, _merge, apply_overrides, to_dict

    cfg = ckpt_cfg
    if config_path is not None:
        with open(config_path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_path}: a config file must hold a mapping at the top level")
        try:
            cfg = _from_dict(Config, _merge(to_dict(cfg), loaded))
        except ValueError as e:
            raise ValueError(f"{config_path}: {e}") from None
    cfg = apply_overrides(cfg, overrides)
    before, after = to_dict(ckpt_cfg.model), to_dict(cfg.model)
    changed = sorted(k for k in after if k != "pretrained" and after[k] != before[k])
    if changed:
        raise SniperError(
            f"model settings come from the weights file and cannot be changed: model.{', model.'.join(changed)}"
        )
    return cfg


def _device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise SniperError(f"--device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SniperError(f"--device {name}: CUDA is not available on this machine")
    return dev


def run(args: argparse.Namespace) -> int:
    weights = Path(args.weights)
    if not weights.is_file():
        raise SniperError(f"{weights}: weights file not found")
    if args.visualize < 0:
        raise SniperError("--visualize N needs N >= 0")
    if args.batch_size is not None and args.batch_size < 1:
        raise SniperError("--batch-size must be >= 1")

    from tqdm import tqdm

    from sniper.engine.checkpoint import load_model_for_inference
    from sniper.engine.predict import (
        Predictor,
        detections_to_coco,
        iter_loaded,
        list_source,
        proposals_to_coco,
    )
    from sniper.io import atomic_write_json

    items, kind, _ = list_source(args.source, args.images)
    out = Path(args.out)
    device = _device(args.device)
    model, ckpt_cfg, categories = load_model_for_inference(weights, map_location="cpu")
    cfg = resolve_config(ckpt_cfg, args.config, args.overrides)
    batch_size = args.batch_size or cfg.infer.batch_size
    on_bad_image = args.on_bad_image or cfg.data.on_bad_image
    predictor = Predictor(model, cfg.infer, categories, device, batch_size=batch_size)
    scales = cfg.proposals.scales if args.proposals else cfg.infer.scales
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}

    records: list[dict] = []
    done: list[dict] = []
    skipped: list[dict] = []
    n_vis = 0
    start = time.perf_counter()
    bar = tqdm(
        total=len(items),
        desc="proposals" if args.proposals else "predict",
        unit="img",
        disable=args.no_progress,
    )
    for n, chunk in iter_loaded(
        items,
        scales,
        batch_size=batch_size,
        on_bad_image=on_bad_image,
        max_pixels=cfg.data.max_image_pixels,
        skipped=skipped,
    ):
        images = [im for _, im in chunk]
        if args.proposals:
            results = predictor.proposals(images, cfg.proposals) if images else []
        else:
            results = predictor.predict(images) if images else []
        for (item, im), res in zip(chunk, results):
            W, H = im.original_size
            done.append({"id": item.image_id, "file_name": item.file_name, "width": W, "height": H})
            if args.proposals:
                records.extend(proposals_to_coco(item.image_id, res))
            else:
                records.extend(detections_to_coco(item.image_id, res))
            if n_vis < args.visualize:
                _visualize(out / "vis", item, im, res, names, args, proposals=args.proposals)
                n_vis += 1
        bar.update(n)
    bar.close()
    elapsed = time.perf_counter() - start

    result_file = out / ("proposals.json" if args.proposals else "detections.json")
    atomic_write_json(result_file, records, indent=None)
    if kind in ("image", "folder"):
        atomic_write_json(out / "images.json", {"images": done, "categories": categories})
    speed = len(done) / elapsed if elapsed > 0 else 0.0
    summary = {
        "source": str(args.source),
        "kind": kind,
        "mode": "proposals" if args.proposals else "detections",
        "images": len(done),
        "records": len(records),
        "skipped": skipped,
        "seconds": round(elapsed, 3),
        "images_per_s": round(speed, 3),
        "device": str(device),
    }
    atomic_write_json(out / "summary.json", summary)

    what = "proposals" if args.proposals else "detections"
    line = f"predict: {len(done)} images, {len(records)} {what} in {elapsed:.1f} s ({speed:.2f} images/s) -> {result_file}"
    if skipped:
        line += f"; skipped {len(skipped)} bad image(s), listed in {out / 'summary.json'}"
    print(line)
    for s in skipped[:10]:
        print(f"  skipped image {s['image_id']}: {s['reason']}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"  ... and {len(skipped) - 10} more", file=sys.stderr)
    return 1 if items and not done else 0


def _visualize(folder: Path, item, loaded, res, names: dict[int, str], args, *, proposals: bool) -> None:
    import numpy as np

    from sniper.io import atomic_path
    from sniper.viz_detections import draw_detections

    image = loaded.image
    if loaded.scale_x != 1.0 or loaded.scale_y != 1.0:  # decoded at reduced size: draw in its pixels
        boxes = res.boxes * np.array([loaded.scale_x, loaded.scale_y, loaded.scale_x, loaded.scale_y])
    else:
        boxes = res.boxes
    if proposals:
        pic = draw_detections(
            image, boxes, res.scores, np.zeros(len(res), np.int64), ["object"], top_k=VIS_PROPOSALS
        )
    else:
        pic = draw_detections(
            image,
            boxes,
            res.scores,
            res.category_ids,
            names,
            score_thresh=args.vis_thresh,
            top_k=args.vis_top_k,
        )
    with atomic_path(folder / f"{item.image_id}_{Path(item.file_name).stem}.jpg") as tmp:
        pic.save(tmp, format="JPEG", quality=90)
