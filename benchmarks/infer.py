"""Inference speed: the paper's 3-scale pyramid vs single-scale 800 x 1333, same model.

    .venv/bin/python benchmarks/infer.py [--images 10] [--device cpu] [--batch-size 2]

A randomly initialised MobileNetV2 SNIPER detector (80 classes, no download) runs
``sniper.engine.predict.Predictor`` on COCO-like 640 x 480 images (smooth random
shapes on noise): the default ``cfg.infer`` pyramid (1400/2000, 800/1280, 480/512, with
valid ranges and Soft-NMS) and one scale (short 800, long side at most 1333, every box kept,
same merge), with the CLI's malloc tuning and BatchNorm folding; with ``--per-scale`` each scale of the pyramid is also timed alone. One warm-up pass each; the
time covers resize, batching, the model, mapping back and the merge (not JPEG decoding).
Prints a table and writes ``benchmarks/results/infer.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sniper.config import Config, to_dict
from sniper.engine.predict import Predictor
from sniper.io import atomic_write_json
from sniper.model import build_model
from sniper.runtime import tune_malloc
from sniper.scales import Scale

ROOT = Path(__file__).resolve().parents[1]


def coco_like_images(n: int, w: int, h: int, seed: int = 0) -> list[np.ndarray]:
    """Noise plus a few filled rectangles and ellipses of random colours: busy, like photos."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(3, 12))):
            x1, y1 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            x2, y2 = x1 + int(rng.integers(10, w // 2)), y1 + int(rng.integers(10, h // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x1, y1, x2, y2], fill=colour)
        out.append(np.asarray(im).copy())
    return out


class ForwardTimer:
    """Seconds spent inside ``model.forward`` (hooks), to separate the model from our overhead."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds = 0.0
        self._t0 = 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _pre(self, *_) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def _post(self, *_) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._t0


def time_predictor(
    predictor: Predictor, images: list[np.ndarray], batch_size: int, timer: ForwardTimer
) -> tuple[float, float, float]:
    """(seconds for all images, of which inside the model, mean detections per image), after a warm-up."""
    predictor.predict(images[:batch_size])
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    n_dets = 0
    timer.seconds = 0.0
    t0 = time.perf_counter()
    for i in range(0, len(images), batch_size):
        n_dets += sum(len(d) for d in predictor.predict(images[i : i + batch_size]))
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, timer.seconds, n_dets / len(images)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--per-scale", action="store_true", help="also time each pyramid scale alone")
    parser.add_argument("--no-fuse", action="store_true", help="keep BatchNorm separate (Predictor fuse_bn=False)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "infer.json"))
    args = parser.parse_args()

    malloc_tuned = tune_malloc()  # as the sniper CLI does (SNIPER_KEEP_MALLOC=1: glibc defaults)
    torch.manual_seed(0)
    cfg = Config()
    cfg.model.backbone = args.backbone
    cfg.model.pretrained = False
    model = build_model(cfg.model, num_classes=80).eval()
    categories = [{"id": i + 1, "name": f"c{i + 1}"} for i in range(80)]
    images = coco_like_images(args.images, args.width, args.height)

    single = Scale(short=800, max_size=1333, valid_range=(None, None))
    runs = [("3-scale pyramid (paper)", cfg.infer.scales), ("single scale 800x1333", [single])]
    if args.per_scale:
        for s in cfg.infer.scales:
            runs.append((f"  pyramid scale {s.short}/{s.max_size} alone", [s]))

    rows = []
    for name, scales in runs:
        icfg = dataclasses.replace(cfg.infer, scales=list(scales))
        predictor = Predictor(
            model, icfg, categories, args.device, batch_size=args.batch_size, fuse_bn=not args.no_fuse
        )
        timer = ForwardTimer(predictor.model)  # the predictor runs a BN-folded copy
        seconds, in_model, dets = time_predictor(predictor, images, args.batch_size, timer)
        rows.append(
            {
                "run": name.strip(),
                "scales": [s.describe() for s in scales],
                "seconds": seconds,
                "images_per_s": len(images) / seconds,
                "ms_per_image": 1e3 * seconds / len(images),
                "model_fraction": in_model / seconds,
                "detections_per_image": dets,
            }
        )
    ratio = rows[0]["seconds"] / rows[1]["seconds"]

    header = f"{'run':<34} {'images/s':>9} {'ms/image':>9} {'in model':>8} {'dets/image':>10}"
    lines = [header, "-" * len(header)]
    for r, (name, _) in zip(rows, runs):
        lines.append(
            f"{name:<34} {r['images_per_s']:>9.2f} {r['ms_per_image']:>9.0f} {r['model_fraction']:>8.0%} "
            f"{r['detections_per_image']:>10.1f}"
        )
    lines.append(f"pyramid / single-scale time: {ratio:.2f}x")
    print(
        f"{args.backbone} (random init), {args.images} images {args.width}x{args.height}, "
        f"batch {args.batch_size}, {args.device}, {torch.get_num_threads()} threads, "
        f"BatchNorm {'separate' if args.no_fuse else 'folded'}, malloc {'tuned' if malloc_tuned else 'glibc defaults'}"
    )
    print("\n".join(lines))
    atomic_write_json(
        args.out,
        {
            "benchmark": "infer",
            "settings": {
                "backbone": args.backbone,
                "images": args.images,
                "size": [args.width, args.height],
                "batch_size": args.batch_size,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "fuse_bn": not args.no_fuse,
                "malloc_tuned": malloc_tuned,
                "infer": to_dict(cfg.infer),
            },
            "machine": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cpu": platform.processor(),
            },
            "rows": rows,
            "pyramid_over_single_time": ratio,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
