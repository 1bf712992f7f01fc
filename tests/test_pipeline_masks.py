"""Instance masks end to end (issue #13): COCO polygons -> chip masks -> training -> pyramid
inference -> RLE masks that overlap their objects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import TINY_CONFIG  # tests/ is on sys.path under pytest

from sniper.config import load_config
from sniper.engine.pipeline import run_pipeline


def _disc(cx: float, cy: float, r: float, n: int = 40) -> list[float]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).round(2).ravel().tolist()


def _make_mask_dataset(out: Path, n_images: int = 6, seed: int = 0) -> None:
    """Red right triangles (category 5) and blue discs (category 9) of 34-70 px on noisy grey,
    2-3 per 192x160 image, each with its exact polygon (the shapes are drawn from them)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n_images):
        w, h = 192, 160
        im = Image.fromarray(rng.normal(110, 12, size=(h, w, 3)).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        boxes: list[list[float]] = []
        while len(boxes) < rng.integers(2, 4):
            s = float(rng.integers(34, 70))
            x, y = float(rng.integers(0, w - s)), float(rng.integers(0, h - s))
            if any(x < b[0] + b[2] + 4 and b[0] < x + s + 4 and y < b[1] + b[3] + 4 and b[1] < y + s + 4
                   for b in boxes):  # fmt: skip
                continue
            cat = int(rng.choice([5, 9]))
            poly = [x, y, x + s, y + s, x, y + s] if cat == 5 else _disc(x + s / 2, y + s / 2, s / 2)
            draw.polygon(list(zip(poly[::2], poly[1::2])), fill=(220, 40, 40) if cat == 5 else (40, 60, 220))
            boxes.append([x, y, s, s])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, s, s],
                         "area": s * s / (2 if cat == 5 else 1.27), "iscrowd": 0, "segmentation": [poly]})  # fmt: skip
        im.save(out / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
    cats = [{"id": 9, "name": "disc"}, {"id": 5, "name": "triangle"}]
    (out / "train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


@pytest.mark.slow
def test_tiny_mask_run_learns_masks_that_overlap_their_objects(tmp_path):
    from pycocotools import mask as mask_utils

    from sniper.data.coco import load_coco
    from sniper.engine.predict_run import predict_to_folder

    data = tmp_path / "data"
    _make_mask_dataset(data)
    # the tiny box run's schedule and a small mask head (CPU time)
    cfg = load_config(None, [*TINY_CONFIG, "model.masks=true", "model.mask_head_layers=[64, 64]",
                             "train.negatives=false", "train.epochs=100", "train.lr_steps=[80]", "train.lr=0.04",
                             "model.box_batch_size_per_image=32", "model.box_positive_fraction=0.5"])  # fmt: skip
    res = run_pipeline(cfg, data / "train.json", data / "images", tmp_path / "run", device="cpu")
    rows = [json.loads(x) for x in (tmp_path / "run" / "logs" / "detector.jsonl").read_text().splitlines()]
    assert all("loss_mask" in r for r in rows)
    first, last = rows[0]["loss_mask"], np.mean([r["loss_mask"] for r in rows[-3:]])
    assert last < 0.6 * first, f"mask loss did not fall clearly: {first:.3f} -> {last:.3f}"

    predict_to_folder(res.model_path, data / "train.json", tmp_path / "pred", image_root=data / "images")
    dets = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert dets and all("segmentation" in d for d in dets)
    coco = load_coco(data / "train.json")
    gt = json.loads((data / "train.json").read_text())
    good = total = 0
    for im in gt["images"]:
        h, w = im["height"], im["width"]
        mine = [d for d in dets if d["image_id"] == im["id"] and d["score"] > 0.3]
        for a in (a for a in gt["annotations"] if a["image_id"] == im["id"]):
            total += 1
            same = [d["segmentation"] for d in mine if d["category_id"] == a["category_id"]]
            if not same:
                continue
            g = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))
            ious = mask_utils.iou(same, [g], [0])
            good += int(np.max(ious) > 0.5)
    assert total == coco.num_annotations > 0
    print(f"mask loss {first:.3f} -> {last:.3f}; {good} of {total} objects with a mask IoU > 0.5")
    assert good / total >= 0.5, f"{good} of {total} training objects have a predicted mask with IoU > 0.5"
