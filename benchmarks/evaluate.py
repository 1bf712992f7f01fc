"""``sniper evaluate`` speed: the pycocotools backend vs the faster-coco-eval one, side by side.

    .venv/bin/python benchmarks/evaluate.py [--dense-boxes 5000] [--dense-classes 10] [--max-dets 5000]

Two cases, both timed end to end through ``evaluate_detections`` (validation included, as
the command runs it):

- dense: one 4000 x 4000 image with ``--dense-boxes`` small GT boxes over
  ``--dense-classes`` classes and as many detections (jittered copies of 80% of the GT
  boxes, the rest random), ``--max-dets 5000`` as in the report that prompted this.
  pycocotools' matching is quadratic per (image, class) in Python: one class would take
  it a quarter of an hour, 10 classes about two minutes.
- coco: the 100 COCO val2014 images of ``tests/fixtures/coco_val2014_100.json`` with
  1-3 jittered detections per GT box (10% of them with a wrong class) and 5 random
  false positives per image, COCO's max detections.

pycocotools runs once per case (it is the slow one), faster-coco-eval ``--repeat`` times
(best). ``identical`` compares every reported number, bit for bit. Prints a table and
writes ``benchmarks/results/evaluate.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from sniper.engine.evaluate import evaluate_detections, max_dets_for
from sniper.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("pycocotools", "faster-coco-eval")


def dense_case(rng: np.random.Generator, n: int, classes: int) -> tuple[dict, list[dict]]:
    """One crowded image (aerial-like: many small objects), ``n`` GT boxes and ``n`` detections."""
    size = 4000.0
    wh = rng.uniform(8, 60, (n, 2))
    xy = rng.uniform(0, size - 60, (n, 2))
    gt_boxes = np.concatenate([xy, wh], axis=1)
    labels = rng.integers(1, classes + 1, n)
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": int(c), "bbox": b.tolist(), "iscrowd": 0}
        for i, (c, b) in enumerate(zip(labels, gt_boxes))
    ]
    found = rng.random(n) < 0.8
    hits = gt_boxes[found] + rng.normal(0, 2.0, (int(found.sum()), 4)) * [1, 1, 0.5, 0.5]
    misses = np.concatenate(
        [rng.uniform(0, size - 60, (n - len(hits), 2)), rng.uniform(8, 60, (n - len(hits), 2))], axis=1
    )
    dets = np.concatenate([hits, misses])
    det_labels = np.concatenate([labels[found], rng.integers(1, classes + 1, len(misses))])
    scores = np.concatenate([rng.uniform(0.3, 1.0, len(hits)), rng.uniform(0.0, 0.7, len(misses))])
    results = [
        {"image_id": 1, "category_id": int(c), "bbox": _positive(b), "score": float(s)}
        for c, b, s in zip(det_labels, dets, scores)
    ]
    gt = {
        "images": [{"id": 1, "file_name": "dense.png", "width": int(size), "height": int(size)}],
        "annotations": anns,
        "categories": [{"id": c, "name": f"class{c}"} for c in range(1, classes + 1)],
    }
    return gt, results


def coco_case(rng: np.random.Generator, gt: dict[str, Any]) -> list[dict]:
    """Synthetic detections for real COCO ground truth: jittered GT boxes plus false positives."""
    cat_ids = [c["id"] for c in gt["categories"]]
    results = []
    for a in gt["annotations"]:
        if a.get("iscrowd", 0):
            continue
        x, y, w, h = a["bbox"]
        for _ in range(int(rng.integers(1, 4))):
            jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
            cat = a["category_id"] if rng.random() < 0.9 else int(rng.choice(cat_ids))
            box = np.array([x, y, w, h]) + jitter
            results.append(
                {
                    "image_id": a["image_id"],
                    "category_id": cat,
                    "bbox": _positive(box),
                    "score": float(rng.random()),
                }
            )
    for img in gt["images"]:
        for _ in range(5):
            w, h = rng.uniform(10, 200, 2)
            x, y = rng.uniform(0, img["width"] - w), rng.uniform(0, img["height"] - h)
            results.append(
                {
                    "image_id": img["id"],
                    "category_id": int(rng.choice(cat_ids)),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "score": float(rng.uniform(0, 0.5)),
                }
            )
    return results


def _positive(box: np.ndarray) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, max(w, 1.0), max(h, 1.0)]


def time_backends(gt: dict, results: list[dict], max_dets: list[int], repeat: int) -> dict[str, Any]:
    """Seconds per backend and whether every reported number agrees."""
    seconds, metrics = {}, {}
    for backend in BACKENDS:
        best = float("inf")
        for _ in range(1 if backend == "pycocotools" else repeat):
            t0 = time.perf_counter()
            m = evaluate_detections(gt, results, max_dets=max_dets, backend=backend)
            best = min(best, time.perf_counter() - t0)
        if m["backend"] != backend:
            raise SystemExit(f"asked for {backend}, {m['backend']} ran")
        seconds[backend], metrics[backend] = best, {k: v for k, v in m.items() if k != "backend"}
    return {
        "pycocotools_s": seconds["pycocotools"],
        "faster_coco_eval_s": seconds["faster-coco-eval"],
        "speedup": seconds["pycocotools"] / seconds["faster-coco-eval"],
        "identical": metrics["pycocotools"] == metrics["faster-coco-eval"],
        "AP": metrics["faster-coco-eval"]["AP"],
        "AR@max": metrics["faster-coco-eval"][f"AR@{max_dets[-1]}"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dense-boxes", type=int, default=5000, help="GT boxes (and detections) in the image"
    )
    parser.add_argument("--dense-classes", type=int, default=10)
    parser.add_argument("--max-dets", type=int, nargs="+", default=[5000], help="for the dense case")
    parser.add_argument("--coco", default=str(ROOT / "tests" / "fixtures" / "coco_val2014_100.json"))
    parser.add_argument("--repeat", type=int, default=3, help="faster-coco-eval runs per case (best)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "evaluate.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    rows = []
    gt, results = dense_case(rng, args.dense_boxes, args.dense_classes)
    max_dets = sorted(args.max_dets)
    rows.append(
        {"case": "dense", "images": 1, "classes": args.dense_classes, "gt_boxes": len(gt["annotations"]),
         "detections": len(results), "max_dets": max_dets, **time_backends(gt, results, max_dets, args.repeat)}
    )  # fmt: skip
    coco_gt = json.loads(Path(args.coco).read_text())
    results = coco_case(rng, coco_gt)
    max_dets = max_dets_for(coco_gt)[0]
    rows.append(
        {"case": "coco", "images": len(coco_gt["images"]), "classes": len(coco_gt["categories"]),
         "gt_boxes": len(coco_gt["annotations"]), "detections": len(results), "max_dets": max_dets,
         **time_backends(coco_gt, results, max_dets, args.repeat)}
    )  # fmt: skip

    header = (
        f"{'case':<6} {'images':>6} {'classes':>7} {'GT':>5} {'dets':>5} {'maxDets':>12} "
        f"{'pycocotools s':>13} {'faster s':>9} {'speed-up':>8} {'identical':>9} {'AP':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['case']:<6} {r['images']:>6} {r['classes']:>7} {r['gt_boxes']:>5} {r['detections']:>5} "
            f"{' '.join(map(str, r['max_dets'])):>12} {r['pycocotools_s']:>13.2f} {r['faster_coco_eval_s']:>9.3f} "
            f"{r['speedup']:>7.0f}x {'yes' if r['identical'] else 'NO':>9} {r['AP']:>6.3f}"
        )
    table = "\n".join(lines)
    print(table)
    atomic_write_json(
        args.out,
        {
            "benchmark": "evaluate",
            "settings": {
                "dense_boxes": args.dense_boxes,
                "dense_classes": args.dense_classes,
                "coco": Path(args.coco).name,
                "repeat": args.repeat,
                "seed": args.seed,
                "timed": "evaluate_detections end to end (validation included)",
            },
            "versions": {
                d: importlib.metadata.version(d) for d in ("pycocotools", "faster-coco-eval", "numpy")
            },
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "rows": rows,
            "table": table,
        },
    )
    print(f"wrote {args.out}")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
