"""Drawing detections on images: one colour per class, class name and score on each box."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["class_colour", "draw_detections", "select_for_drawing"]


def class_colour(key: int) -> tuple[int, int, int]:
    """A bright, stable colour per class: hues spaced by the golden ratio."""
    h = (int(key) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def select_for_drawing(scores: np.ndarray, score_thresh: float = 0.3, top_k: int | None = None) -> np.ndarray:
    """Indices to draw, by decreasing score: the ``top_k`` best if given, else those above ``score_thresh``."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        return order[: max(0, int(top_k))]
    return order[scores[order] > score_thresh]


def draw_detections(
    image: Image.Image | np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    names: Mapping[int, str] | Sequence[str] | None = None,
    *,
    score_thresh: float = 0.3,
    top_k: int | None = None,
) -> Image.Image:
    """A copy of ``image`` with boxes (xyxy, image px) drawn, best on top.

    ``classes`` are keys into ``names`` (dataset category ids with a dict, or indices into a
    list); the colour follows the class. Shown: the ``top_k`` best detections if given,
    otherwise those scoring above ``score_thresh``.
    """
    im = (
        (Image.fromarray(np.asarray(image)) if isinstance(image, np.ndarray) else image).convert("RGB").copy()
    )
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    draw = ImageDraw.Draw(im)
    size = max(10, round(min(im.size) / 40))
    width = max(1, round(min(im.size) / 300))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    for i in select_for_drawing(scores, score_thresh, top_k)[::-1]:  # best drawn last, on top
        c = int(classes[i])
        colour = class_colour(c)
        x1, y1, x2, y2 = boxes[i]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        if names is None:
            name = str(c)
        elif isinstance(names, Mapping):
            name = str(names.get(c, c))
        else:
            name = str(names[c]) if 0 <= c < len(names) else str(c)
        text = f"{name} {scores[i]:.2f}"
        tx1, ty1, tx2, ty2 = draw.textbbox((0, 0), text, font=font)
        tw, th = tx2 - tx1, ty2 - ty1
        ty = y1 - th - 2 * width if y1 - th - 2 * width >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw + 2 * width, ty + th + 2 * width], fill=colour)
        light = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140
        draw.text(
            (x1 + width - tx1, ty + width - ty1),
            text,
            fill=(0, 0, 0) if light else (255, 255, 255),
            font=font,
        )
    return im
