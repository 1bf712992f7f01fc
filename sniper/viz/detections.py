"""Detections on an image: one colour per class, class name and score on each box."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from sniper.viz.draw import as_pil, class_colour, draw_box, font

__all__ = ["draw_detections", "select_for_drawing"]


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
) -> Image.Image:
    """A copy of ``image`` with boxes (xyxy, image px) drawn, best on top.

    ``classes`` are keys into ``names`` (dataset category ids with a dict, or indices into a
    list); the colour follows the class. Shown: the ``top_k`` best detections if given,
    otherwise those scoring above ``score_thresh``.
    """
    im = as_pil(image)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    draw = ImageDraw.Draw(im)
    label_font = font(max(10, round(min(im.size) / 40)))
    width = max(1, round(min(im.size) / 300))
    for i in select_for_drawing(scores, score_thresh, top_k)[::-1]:  # best drawn last, on top
        c = int(classes[i])
        draw_box(draw, boxes[i], class_colour(c), width=width, label=f"{_name(names, c)} {scores[i]:.2f}",
                 label_font=label_font)  # fmt: skip
    return im
