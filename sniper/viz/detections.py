"""Detections on an image: one colour per class, class name and score on each box; instance
masks (when given) as a semi-transparent fill in the class colour with an outline, under the boxes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sniper.viz.draw import as_pil, class_colour, draw_box, draw_mask, font

__all__ = ["DENSE", "MASK_ALPHA", "draw_detections", "select_for_drawing"]

DENSE = 60  # above this many boxes in a picture: thin boxes, no tags, a legend
MASK_ALPHA = 0.45  # opacity of a mask's fill


def select_for_drawing(scores: np.ndarray, score_thresh: float = 0.3, top_k: int | None = None) -> np.ndarray:
    """Indices to draw, by decreasing score: the ``top_k`` best if given, else those above ``score_thresh``."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        return order[: max(0, int(top_k))]
    return order[scores[order] > score_thresh]


def _name(names: Mapping[int, str] | Sequence[str] | None, c: int) -> str:
    if names is None:
        return str(c)
    if isinstance(names, Mapping):
        return str(names.get(c, c))
    return str(names[c]) if 0 <= c < len(names) else str(c)


def draw_detections(
    image: Image.Image | np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    names: Mapping[int, str] | Sequence[str] | None = None,
    *,
    score_thresh: float = 0.3,
    top_k: int | None = None,
    dense: int = DENSE,
    masks: Sequence[Any] | None = None,
    mask_alpha: float = MASK_ALPHA,
) -> Image.Image:
    """A copy of ``image`` with boxes (xyxy, image px) drawn, best on top.

    ``classes`` are keys into ``names`` (dataset category ids with a dict, or indices into a
    list); the colour follows the class. Shown: the ``top_k`` best detections if given,
    otherwise those scoring above ``score_thresh``. Above ``dense`` boxes the scene is drawn
    for reading, not labelling: one-pixel boxes without tags, and a legend strip below the
    image (colour, class, count).

    ``masks`` (optional, one per detection): a bool ``(H, W)`` mask of the picture, or
    ``(x0, y0, patch)`` with a bool patch at picture px ``(x0, y0)``, or None. The shown
    detections' masks are drawn first (best on top), ``mask_alpha`` fill and a one-pixel
    outline in the class colour, then all boxes over them.
    """
    im = as_pil(image)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    shown = select_for_drawing(scores, score_thresh, top_k)
    if masks is not None:
        if len(masks) != len(boxes):
            raise ValueError(f"draw_detections: {len(masks)} masks for {len(boxes)} boxes")
        pixels = np.array(im)
        for i in shown[::-1]:
            if masks[i] is not None:
                draw_mask(pixels, masks[i], class_colour(int(classes[i])), alpha=mask_alpha)
        im = Image.fromarray(pixels)
    draw = ImageDraw.Draw(im)
    label_font = font(max(10, round(min(im.size) / 40)))
    crowded = len(shown) > dense
    width = 1 if crowded else max(1, round(min(im.size) / 300))
    for i in shown[::-1]:  # best drawn last, on top
        c = int(classes[i])
        label = None if crowded else f"{_name(names, c)} {scores[i]:.2f}"
        draw_box(draw, boxes[i], class_colour(c), width=width, label=label, label_font=label_font)
    if not crowded:
        return im
    counts: dict[int, int] = {}
    for i in shown:
        counts[int(classes[i])] = counts.get(int(classes[i]), 0) + 1
    return _with_legend(im, counts, names, label_font, len(shown))


def _with_legend(im: Image.Image, counts: dict[int, int], names, label_font, total: int) -> Image.Image:
    """``im`` above a strip with one line per class: its colour, name and how many boxes."""
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    probe = ImageDraw.Draw(im)
    line = probe.textbbox((0, 0), "Ag", font=label_font)[3] + 6
    strip = line * (len(items) + 1) + 6
    out = Image.new("RGB", (im.width, im.height + strip), (20, 20, 20))
    out.paste(im, (0, 0))
    d = ImageDraw.Draw(out)
    y = im.height + 4
    d.text((6, y), f"{total} detections (boxes only above {DENSE}; colour = class)", fill=(255, 255, 255), font=label_font)
    for c, n in items:
        y += line
        d.rectangle([6, y + 2, 6 + line - 6, y + line - 4], fill=class_colour(c))
        d.text((6 + line, y), f"{_name(names, c)}: {n}", fill=(255, 255, 255), font=label_font)
    return out
