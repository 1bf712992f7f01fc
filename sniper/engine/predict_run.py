"""Prediction over a whole source, written to a folder: what ``sniper predict`` and the demo run.

:func:`predict_to_folder` loads a model file, runs pyramid inference (or RPN proposals) on an
image, a folder or a COCO set and writes ``OUT/detections.json`` (or ``OUT/proposals.json``)
as COCO results with the dataset's own category ids, ``OUT/images.json`` (id -> file, for
image and folder sources), ``OUT/summary.json`` (counts, speed, skipped images) and, with
``visualize``, pictures in ``OUT/vis/``. A mask model's detections also carry ``segmentation``
(COCO RLE of the image's size, ``counts`` a str), and its pictures show the masks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sniper.config import Config, merge_config_file
from sniper.errors import SniperError

__all__ = ["PredictSummary", "config_for_weights", "predict_to_folder"]

# Shown per image in pictures of proposals (they have no useful threshold).
VIS_PROPOSALS = 50


def config_for_weights(ckpt_cfg: Config, config_path: str | None, overrides: Sequence[str]) -> Config:
    """The checkpoint's config, updated by a config file and ``key=value`` overrides. Model settings
    are fixed by the weights, so changing them is an error rather than silently ignored, except
    ``sniper.model.INFERENCE_MODEL_KEYS`` (apply them with :func:`sniper.model.set_inference_settings`)."""
    from sniper.config import apply_overrides, to_dict
    from sniper.model import INFERENCE_MODEL_KEYS

    cfg = ckpt_cfg if config_path is None else merge_config_file(ckpt_cfg, config_path)
    cfg = apply_overrides(cfg, list(overrides))
    before, after = to_dict(ckpt_cfg.model), to_dict(cfg.model)
    fixed = {"pretrained", *INFERENCE_MODEL_KEYS}
    changed = sorted(k for k in after if k not in fixed and after[k] != before[k])
    if changed:
        raise SniperError(
            f"model settings come from the weights file and cannot be changed: model.{', model.'.join(changed)}"
        )
    return cfg


@dataclass
class PredictSummary:
    """What :func:`predict_to_folder` did (also written as ``summary.json``)."""

    source: str
    kind: str  # image | folder | coco
    mode: str  # detections | proposals
    images: int
    records: int
    seconds: float
    device: str
    result_file: Path
    skipped: list[dict] = field(default_factory=list)
    listed: int = 0  # images in the source
    masks: bool = False  # detections carry segmentations (a mask model)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "source": self.source,
            "kind": self.kind,
            "mode": self.mode,
            "images": self.images,
            "records": self.records,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 3),
            "device": self.device,
        }
        if self.masks:
            out["masks"] = True
        return out


def predict_to_folder(
    weights: str | os.PathLike[str],
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    proposals: bool = False,
    config: str | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    batch_size: int | None = None,
    on_bad_image: str | None = None,
    visualize: int = 0,
    vis_thresh: float = 0.3,
    vis_top_k: int | None = None,
    progress: bool = True,
) -> PredictSummary:
    """Run the model in ``weights`` over ``source`` and write the results into ``out`` (see the module doc)."""
    from tqdm import tqdm

    from sniper.engine.checkpoint import load_model_for_inference
    from sniper.engine.distributed import pick_device
    from sniper.engine.predict import (
        Predictor,
        detections_to_coco,
        iter_loaded,
        list_source,
        proposals_to_coco,
    )
    from sniper.io import atomic_write_json, remove_stale_temps
    from sniper.model import set_inference_settings

    weights = Path(weights)
    if not weights.is_file():
        raise SniperError(f"{weights}: weights file not found")
    if visualize < 0:
        raise SniperError("visualize needs N >= 0")
    if batch_size is not None and batch_size < 1:
        raise SniperError("batch size must be >= 1")
    items, kind, _ = list_source(source, image_root)
    out = Path(out)
    remove_stale_temps(out)  # left by a killed earlier run
    remove_stale_temps(out / "vis")
    dev = pick_device(device)
    model, ckpt_cfg, categories = load_model_for_inference(weights, map_location="cpu")
    cfg = config_for_weights(ckpt_cfg, config, overrides)
    set_inference_settings(model, cfg.model)
    batch_size = batch_size or cfg.infer.batch_size
    predictor = Predictor(model, cfg.infer, categories, dev, batch_size=batch_size)
    scales = cfg.proposals.scales if proposals else cfg.infer.scales
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}

    records: list[dict] = []
    done: list[dict] = []
    skipped: list[dict] = []
    n_vis = 0
    start = time.perf_counter()
    bar = tqdm(total=len(items), desc="proposals" if proposals else "predict", unit="img", disable=not progress)
    for n, chunk in iter_loaded(
        items,
        scales,
        batch_size=batch_size,
        on_bad_image=on_bad_image or cfg.data.on_bad_image,
        max_pixels=cfg.data.max_image_pixels,
        skipped=skipped,
    ):
        images = [im for _, im in chunk]
        if proposals:
            results = predictor.proposals(images, cfg.proposals) if images else []
        else:
            results = predictor.predict(images) if images else []
        for (item, im), res in zip(chunk, results):
            W, H = im.original_size
            done.append({"id": item.image_id, "file_name": item.file_name, "width": W, "height": H})
            records.extend(proposals_to_coco(item.image_id, res) if proposals else detections_to_coco(item.image_id, res))
            if n_vis < visualize:
                _draw(out / "vis", item, im, res, names, proposals, vis_thresh, vis_top_k)
                n_vis += 1
        bar.update(n)
    bar.close()
    elapsed = time.perf_counter() - start

    result_file = out / ("proposals.json" if proposals else "detections.json")
    atomic_write_json(result_file, records, indent=None)
    if kind in ("image", "folder"):
        atomic_write_json(out / "images.json", {"images": done, "categories": categories})
    summary = PredictSummary(
        source=str(source),
        kind=kind,
        mode="proposals" if proposals else "detections",
        images=len(done),
        records=len(records),
        seconds=elapsed,
        device=str(dev),
        result_file=result_file,
        skipped=skipped,
        listed=len(items),
        masks=predictor.masks and not proposals,
    )
    atomic_write_json(out / "summary.json", summary.to_dict())
    return summary


def _draw(
    folder: Path, item, loaded, res, names: Mapping[int, str], proposals: bool, thresh: float, top_k: int | None
) -> None:
    import numpy as np

    from sniper.io import atomic_path
    from sniper.viz.detections import draw_detections

    image = loaded.image
    if loaded.scale_x != 1.0 or loaded.scale_y != 1.0:  # decoded at reduced size: draw in its pixels
        boxes = res.boxes * np.array([loaded.scale_x, loaded.scale_y, loaded.scale_x, loaded.scale_y])
    else:
        boxes = res.boxes
    if proposals:
        pic = draw_detections(image, boxes, res.scores, np.zeros(len(res), np.int64), ["object"], top_k=VIS_PROPOSALS)
    else:
        masks = None
        if res.masks is not None:  # pasted at the drawn boxes in the picture's px, shown ones only
            from sniper.engine.predict import paste_box_mask
            from sniper.viz.detections import select_for_drawing

            masks = [None] * len(res)
            for i in select_for_drawing(res.scores, thresh, top_k):
                masks[i] = paste_box_mask(res.masks[i], boxes[i], image.width, image.height)
        pic = draw_detections(
            image, boxes, res.scores, res.category_ids, names, score_thresh=thresh, top_k=top_k, masks=masks
        )
    with atomic_path(folder / f"{item.image_id}_{Path(item.file_name).stem}.jpg") as tmp:
        pic.save(tmp, format="JPEG", quality=90)
