"""Write chips as ordinary image files + one COCO JSON, for training any detector on them.

Layout of ``OUT``::

    OUT/images/<source id>_<n>_s<scale index>.jpg   one file per chip, its content only (w x h, no padding)
    OUT/chips_coco.json                            COCO instances file of the chips
    OUT/mapping.csv                                chip -> source image, scale, origin, window

In ``chips_coco.json`` every chip is an image record with, beside ``id, file_name, width,
height``: ``source_image_id``, ``source_file_name``, ``scale`` (resize factor f), ``scale_index``,
``kind`` (pos/neg), ``origin`` ``[x1, y1]`` and ``chip_box`` ``[x1, y1, x2, y2]`` in original px,
so ``original = chip / scale + origin``. Valid GT of the chip are normal annotations
(``iscrowd: 0``); every other GT touching the chip (crowd, out of the scale's range,
truncated) is an ignore region (``iscrowd: 1``), both with the dataset's own category ids
(``categories`` copied) and ``source_annotation_id``. Pixels and labels come from
:class:`~sniper.data.chip_dataset.ChipDataset`, i.e. exactly what ``sniper train`` uses.

Chip images are written atomically; the JSON and CSV are written last (atomically), so a
``chips_coco.json`` only exists for a complete export.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from sniper.config import Config, to_dict
from sniper.data.chip_dataset import BadImage, ChipDataset, check_images
from sniper.data.chip_table import ChipTable
from sniper.data.coco import CocoDataset
from sniper.data.epoch_plan import sampled_negatives
from sniper.errors import BadImageError
from sniper.io import atomic_open, atomic_path, atomic_write_json

__all__ = ["ExportSummary", "MAPPING_COLUMNS", "export_chips", "select_chips"]

FORMATS = {"jpg": "JPEG", "png": "PNG"}
MAPPING_COLUMNS = (
    "chip_image_id", "file_name", "width", "height", "source_image_id", "source_file_name", "kind",
    "scale_index", "scale", "origin_x", "origin_y", "x1", "y1", "x2", "y2",
)  # fmt: skip


@dataclass
class ExportSummary:
    out: Path
    chips: int = 0
    pos_chips: int = 0
    neg_chips: int = 0
    annotations: int = 0
    ignore_regions: int = 0
    bad_images: list[BadImage] = field(default_factory=list)
    dropped_chips: int = 0
    seconds: float = 0.0

    def format(self) -> str:
        lines = [
            f"wrote {self.chips} chips ({self.pos_chips} positive, {self.neg_chips} negative), "
            f"{self.annotations} objects + {self.ignore_regions} ignore regions (iscrowd=1) "
            f"to {self.out} in {self.seconds:.1f}s",
        ]
        if self.bad_images:
            lines.append(f"skipped {len(self.bad_images)} bad images ({self.dropped_chips} chips):")
            lines += [f"  {b.file}: {b.reason}" for b in self.bad_images[:20]]
        return "\n".join(lines)


def select_chips(
    table: ChipTable, *, negatives: bool, all_negatives: bool, neg_per_image: int, seed: int
) -> ChipTable:
    """Positives, plus negatives: none, epoch 0's sample of ``neg_per_image`` per image (what
    training sees in its first epoch), or the whole pool. Ordered by image, finest scale first."""
    rows = np.flatnonzero(~table.is_neg)
    if negatives:
        neg = (
            np.flatnonzero(table.is_neg)
            if all_negatives
            else sampled_negatives(table, neg_per_image, seed, 0)
        )
        rows = np.concatenate([rows, neg])
    rows = rows[np.lexsort((rows, -table.scale[rows], table.image_id[rows]))]
    return table.select(rows)


# ---------------------------------------------------------------- per-image work (in workers)

_state: dict[str, Any] = {}


def _init(dataset: ChipDataset, images_dir: Path, fmt: str, quality: int) -> None:
    _state.update(dataset=dataset, images_dir=images_dir, fmt=fmt, quality=quality)


def _encode(arr: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    opts = {"quality": quality, "subsampling": 0} if fmt == "jpg" else {"compress_level": 1}
    Image.fromarray(arr).save(buf, format=FORMATS[fmt], **opts)
    return buf.getvalue()


def _export_image(rows: np.ndarray) -> tuple[list[dict[str, Any]], BadImage | None]:
    """Write the chips ``rows`` (all of one image); return one record per chip (ids assigned later)."""
    ds: ChipDataset = _state["dataset"]
    fmt = _state["fmt"]
    image_id = int(ds.chips.image_id[rows[0]])
    rec = ds.coco.image(image_id)
    ann = ds.coco.annotations(image_id)
    out: list[dict[str, Any]] = []
    try:
        for n, row in enumerate(rows.tolist()):
            chip = ds.chip(row)
            pixels = ds.render(row)
            name = f"{image_id}_{n:03d}_s{chip.scale_index}.{fmt}"
            with atomic_path(_state["images_dir"] / name) as tmp:
                tmp.write_bytes(_encode(pixels, fmt, _state["quality"]))
            lab = ds.labels(row)
            h, w = pixels.shape[:2]
            out.append({
                "file_name": name, "width": int(w), "height": int(h),
                "source_image_id": image_id, "source_file_name": rec.file_name,
                "kind": chip.kind, "scale_index": chip.scale_index, "scale": chip.scale,
                "origin": [chip.x1, chip.y1], "chip_box": [chip.x1, chip.y1, chip.x2, chip.y2],
                "boxes": lab.boxes.astype(np.float64).tolist(), "valid": lab.valid.tolist(),
                "category_ids": lab.classes.tolist(), "ann_ids": ann.ann_ids[lab.gt_index].tolist(),
            })  # fmt: skip
    except BadImageError as e:
        if ds.data_cfg.on_bad_image == "error":
            raise
        return [], BadImage(image_id, e.file, e.reason)
    finally:
        ds.cache.clear()  # one image at a time: nothing to gain from keeping it
    return out, None


def _runs(table: ChipTable) -> list[np.ndarray]:
    if len(table) == 0:
        return []
    cuts = np.flatnonzero(np.diff(table.image_id)) + 1
    return np.split(np.arange(len(table)), cuts)


def _results(
    dataset, images_dir, fmt, quality, workers
) -> Iterator[tuple[list[dict[str, Any]], BadImage | None]]:
    runs = _runs(dataset.chips)
    if workers <= 1:
        _init(dataset, images_dir, fmt, quality)
        yield from map(_export_image, runs)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(dataset, images_dir, fmt, quality)) as pool:
        yield from pool.imap(_export_image, runs, chunksize=1)


# ---------------------------------------------------------------- driver


def _bbox(b: list[float]) -> list[float]:
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def export_chips(
    coco: CocoDataset,
    table: ChipTable,
    image_root: str | Path,
    cfg: Config,
    out: str | Path,
    *,
    fmt: str = "jpg",
    quality: int = 95,
    workers: int = 1,
    progress: bool = True,
) -> ExportSummary:
    """Write every chip of ``table`` (already selected, see :func:`select_chips`) under ``out``."""
    if fmt not in FORMATS:
        raise ValueError(f"image format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    started = time.perf_counter()
    out = Path(out)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(out)
    check = check_images(coco, table, image_root, cfg.data, progress=progress)
    summary.bad_images = list(check.bad)
    summary.dropped_chips = check.dropped_chips
    table = check.chips
    dataset = ChipDataset(coco, table, image_root, cfg.chips, cfg.data)

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(table),
        desc="export",
        unit="chip",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar:
        for records, bad in _results(dataset, images_dir, fmt, quality, workers):
            if bad is not None:
                summary.bad_images.append(bad)
                dropped = int((table.image_id == bad.image_id).sum())
                summary.dropped_chips += dropped
                bar.update(dropped)
                continue
            for r in records:
                chip_id = len(images) + 1
                images.append({
                    "id": chip_id, "file_name": r["file_name"], "width": r["width"], "height": r["height"],
                    "source_image_id": r["source_image_id"], "source_file_name": r["source_file_name"],
                    "kind": r["kind"], "scale_index": r["scale_index"], "scale": r["scale"],
                    "origin": r["origin"], "chip_box": r["chip_box"],
                })  # fmt: skip
                summary.pos_chips += r["kind"] == "pos"
                summary.neg_chips += r["kind"] == "neg"
                for box, valid, cat, aid in zip(r["boxes"], r["valid"], r["category_ids"], r["ann_ids"]):
                    x1, y1, x2, y2 = box
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": chip_id, "category_id": int(cat),
                        "bbox": _bbox(box), "area": (x2 - x1) * (y2 - y1), "iscrowd": 0 if valid else 1,
                        "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]], "source_annotation_id": int(aid),
                    })  # fmt: skip
                    summary.annotations += bool(valid)
                    summary.ignore_regions += not valid
            bar.update(len(records))
    summary.chips = len(images)
    info = {
        "description": "SNIPER chips exported by `sniper export`",
        "coordinates": "original = chip / scale + origin (xyxy); bbox is COCO xywh in chip pixels",
        "chip_size": cfg.chips.chip_size,
        "scales": to_dict(cfg.chips.scales),
        "seed": cfg.seed,
    }
    atomic_write_json(
        out / "chips_coco.json",
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": coco.categories,
        },
        indent=None,
    )
    with atomic_open(out / "mapping.csv") as f:
        w = csv.writer(f)
        w.writerow(MAPPING_COLUMNS)
        for im in images:
            w.writerow([
                im["id"], im["file_name"], im["width"], im["height"], im["source_image_id"],
                im["source_file_name"], im["kind"], im["scale_index"], repr(im["scale"]),
                repr(im["origin"][0]), repr(im["origin"][1]), *(repr(v) for v in im["chip_box"]),
            ])  # fmt: skip
    summary.seconds = time.perf_counter() - started
    return summary
