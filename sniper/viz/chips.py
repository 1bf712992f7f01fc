"""Pictures of chips.

* :func:`draw_image_chips`: an image with its chips outlined, one colour per scale
  (negative chips dashed), and its GT boxes (paper Fig. 1).
* :func:`draw_chip_labels`: one chip resampled to chip pixels on its ``K x K`` zero-padded
  canvas, valid GT green, ignore regions red, proposals as red dots (paper Fig. 2).
* :func:`draw_item`: a dataset item exactly as the model receives it (crop, resize, pad, flip).
* :func:`visualize_chips`: all three for the first images of a dataset (``sniper chips --visualize``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sniper.viz.draw import (
    GT_COLOUR,
    IGNORE_COLOUR,
    PAD_COLOUR,
    VALID_COLOUR,
    as_pil,
    draw_box,
    gray_canvas,
    scale_colour,
    tile,
)

__all__ = ["draw_chip_labels", "draw_image_chips", "draw_item", "visualize_chips"]


def draw_image_chips(
    image: Image.Image,
    chip_boxes: np.ndarray,
    scale_index: np.ndarray,
    negative: np.ndarray,
    gt_boxes: np.ndarray,
    *,
    gt_iscrowd: np.ndarray | None = None,
    scale_names: Sequence[str] | None = None,
    line_width: int = 3,
) -> Image.Image:
    """The image with chips (original px) in per-scale colours and GT boxes in white (crowd red).

    With ``scale_names`` a legend strip (chip counts per scale) is added below the image.
    """
    out = as_pil(image)
    draw = ImageDraw.Draw(out)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    crowd = np.zeros(len(gt), bool) if gt_iscrowd is None else np.asarray(gt_iscrowd, bool)
    for b, c in zip(gt, crowd):
        draw_box(draw, b, IGNORE_COLOUR if c else GT_COLOUR, width=1)
    boxes = np.asarray(chip_boxes, dtype=np.float64).reshape(-1, 4)
    si, neg = np.asarray(scale_index), np.asarray(negative, bool)
    for b, s, n in zip(boxes, si, neg):
        # inset by half the line width so chips on the image border stay visible
        draw_box(draw, [b[0] + 1, b[1] + 1, b[2] - 2, b[3] - 2], scale_colour(s), width=line_width, dashed=bool(n))
    if scale_names:  # legend in a strip below the image, so it hides nothing
        strip = 16 * len(scale_names) + 6
        framed = Image.new("RGB", (out.width, out.height + strip), (0, 0, 0))
        framed.paste(out, (0, 0))
        out = framed
        draw = ImageDraw.Draw(out)
        for s, name in enumerate(scale_names):
            text = f"{name}: {int(np.sum((si == s) & ~neg))} pos, {int(np.sum((si == s) & neg))} neg (dashed)"
            draw.text((6, out.height - strip + 3 + 16 * s), text, fill=scale_colour(s))
    return out


def draw_chip_labels(
    image: Image.Image,
    chip,
    labels,
    chip_size: int,
    *,
    proposals: np.ndarray | None = None,
    line_width: int = 2,
) -> Image.Image:
    """One chip at chip pixels: ``chip_size`` x ``chip_size``, content top-left, zero padding.

    ``chip`` is a :class:`sniper.chips.Chip`, ``labels`` its :class:`sniper.chips.ChipLabels`;
    ``proposals`` (P, 4) original px are drawn as dots at their centres when inside the chip.
    The resampling maps chip pixel ``u`` to original ``u / scale + x1`` exactly (affine).
    """
    w, h = chip.size_px()
    f = chip.scale
    content = image.convert("RGB").transform(
        (w, h), Image.Transform.AFFINE, (1.0 / f, 0.0, chip.x1, 0.0, 1.0 / f, chip.y1), resample=Image.BILINEAR
    )
    canvas = Image.new("RGB", (chip_size, chip_size), (0, 0, 0))
    canvas.paste(content, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for b, v in zip(np.asarray(labels.boxes, dtype=np.float64), np.asarray(labels.valid, bool)):
        draw_box(draw, b, VALID_COLOUR if v else IGNORE_COLOUR, width=line_width)
    if proposals is not None and len(proposals):
        c = chip.to_chip(np.asarray(proposals, dtype=np.float64).reshape(-1, 4))
        cx, cy = (c[:, 0] + c[:, 2]) / 2, (c[:, 1] + c[:, 3]) / 2
        for x, y in zip(cx, cy):
            if 0 <= x < w and 0 <= y < h:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=IGNORE_COLOUR)
    return canvas


def _boxes(t: Any) -> np.ndarray:
    if t is None:
        return np.zeros((0, 4))
    return np.asarray(t.detach().cpu() if hasattr(t, "detach") else t, dtype=np.float64).reshape(-1, 4)


def draw_item(image: Any, target: Mapping[str, Any], *, names: Mapping[int, str] | None = None) -> Image.Image:
    """``[3, K, K]`` float image + target -> PIL image: valid boxes green (with their label, or
    ``names[label]``), ignore boxes red, the content extent (padding starts past it) blue."""
    im = as_pil(image)
    d = ImageDraw.Draw(im)
    if "image_size" in target:
        h, w = (int(v) for v in target["image_size"])
        if (w, h) != im.size:
            draw_box(d, [0, 0, w - 1, h - 1], PAD_COLOUR, width=1)
    for b in _boxes(target.get("ignore_boxes")):
        draw_box(d, b, IGNORE_COLOUR)
    labels = target.get("labels")
    labels = [] if labels is None else [int(v) for v in labels]
    for i, b in enumerate(_boxes(target.get("boxes"))):
        text = None
        if i < len(labels):
            text = names.get(labels[i], str(labels[i])) if names else str(labels[i])
        draw_box(d, b, VALID_COLOUR, label=text)
    scale = target.get("scale")
    if scale is not None:
        note = f"image {target.get('image_id')}  x{float(scale):.3g}" + ("  flipped" if target.get("flipped") else "")
        d.text((3, im.height - 12), note, fill=GT_COLOUR)
    return im


# ------------------------------------------------------------------ sniper chips --visualize


def _save_png(picture: Image.Image, path: Path) -> Path:
    from sniper.io import atomic_path

    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def _source_image(rec, image_root: str | None, cfg, skipped: list[str]) -> Image.Image:
    """The image of ``rec`` when it can be read and matches its annotated size. Otherwise, under
    ``data.on_bad_image=error`` a :class:`BadImageError`; under ``skip`` a gray canvas, the file
    listed in ``skipped``."""
    from sniper.data.images import load_image, resolve_image_path
    from sniper.errors import BadImageError

    if image_root is None:
        return gray_canvas(rec.width, rec.height)
    try:
        path = resolve_image_path(image_root, rec.file_name)
        image = load_image(path, max_pixels=cfg.data.max_image_pixels)
        if image.original_size != (rec.width, rec.height):
            w, h = image.original_size
            raise BadImageError(str(path), f"annotation says {rec.width}x{rec.height}, file is {w}x{h}")
    except BadImageError as e:
        if cfg.data.on_bad_image == "error":
            raise
        skipped.append(str(e))
        print(f"sniper chips: warning: {e}; drawing on a gray canvas (data.on_bad_image=skip)", file=sys.stderr)
        return gray_canvas(rec.width, rec.height)
    return image.image


def visualize_chips(
    ds, props, cfg, seed: int, n: int, out: Path, image_root: str | None, skipped: list[str] | None = None
) -> list[Path]:
    """For the first ``n`` images of ``ds`` (a :class:`~sniper.data.coco.CocoDataset`): chips on the
    image (``ID_chips.png``), each chip with its labels (``ID_labels.png``) and, with images, the
    dataset items as the model receives them (``ID_items.png``). Returns the files written.

    A bad image follows ``cfg.data.on_bad_image``: "error" raises naming the file; "skip" draws
    the chips on a gray canvas, without items, and appends the problem to ``skipped``."""
    skipped = [] if skipped is None else skipped
    from sniper.chips import ImageChips, chip_labels
    from sniper.data.chip_table import image_chips, image_tasks

    c = cfg.chips
    names = [s.describe() for s in c.scales]
    written = []
    for i in range(min(n, len(ds))):
        task = next(image_tasks(ds, props, [i]))
        rec = ds.images[i]
        ann = ds.annotations_at(i)
        pos, neg = image_chips(task, c, seed)
        n_bad = len(skipped)
        image = _source_image(rec, image_root, cfg, skipped)
        both = ImageChips.concat([pos, neg], image_id=rec.id)
        overview = draw_image_chips(
            image, both.boxes, both.scale_index, both.negative, ann.boxes, gt_iscrowd=ann.iscrowd, scale_names=names
        )
        written.append(_save_png(overview, out / f"{rec.id}_chips.png"))
        pictures, captions, colours = [], [], []
        for chip in both.chips():
            lab = chip_labels(chip, ann.boxes, ann.category_ids, ann.iscrowd, c, image_size=(rec.width, rec.height))
            props_here = task.proposals if chip.kind == "neg" else None
            pictures.append(draw_chip_labels(image, chip, lab, c.chip_size, proposals=props_here))
            w, h = chip.size_px()
            captions.append(
                f"{chip.kind} {names[chip.scale_index].split(' ')[0]} {w}x{h}: "
                f"{int(lab.valid.sum())} valid, {int(lab.ignore.sum())} ignore"
            )
            colours.append(scale_colour(chip.scale_index))
        if pictures:
            written.append(_save_png(tile(pictures, captions, colours=colours, cell=320, cols=4), out / f"{rec.id}_labels.png"))
        if image_root is not None and len(both) and len(skipped) == n_bad:
            items = _items_picture(ds, both, cfg, image_root)
            if items is not None:
                written.append(_save_png(items, out / f"{rec.id}_items.png"))
    return written


def _items_picture(ds, chips, cfg, image_root: str) -> Image.Image | None:
    """Dataset items exactly as the model receives them (crop, resize, pad; every other one flipped)."""
    from sniper.data.chip_dataset import ChipDataset
    from sniper.data.chip_table import ChipTable
    from sniper.data.epoch_plan import ChipKey
    from sniper.errors import BadImageError

    by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in ds.categories}
    names = {i + 1: by_id[int(cid)] for i, cid in enumerate(ds.category_ids)}  # label = sorted-id index + 1
    dataset = ChipDataset(ds, ChipTable.from_image_chips([chips]), image_root, cfg.chips, cfg.data)
    pictures, captions = [], []
    try:
        for i in range(len(dataset)):
            flip = i % 2 == 1
            image, target = dataset[ChipKey(i, flip)]
            pictures.append(draw_item(image, target, names=names))
            captions.append(
                f"item {i}{' flipped' if flip else ''}: {len(target['boxes'])} valid, {len(target['ignore_boxes'])} ignore"
            )
    except BadImageError as e:
        print(f"sniper chips: warning: {e}; no dataset items drawn", file=sys.stderr)
        return None
    return tile(pictures, captions, cell=320, cols=4)
