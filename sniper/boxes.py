"""Small numpy helpers for axis-aligned boxes (x1, y1, x2, y2 unless said otherwise).

torch-side box operations come from ``torchvision.ops``; these cover the numpy
paths (COCO parsing, chip geometry) where torch would only add overhead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["clip_xyxy", "iou_matrix", "sqrt_area", "xywh_to_xyxy", "xyxy_to_xywh"]


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def sqrt_area(b: np.ndarray) -> np.ndarray:
    """sqrt(w * h) of xyxy boxes: the size measure of the paper's valid ranges."""
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))


def clip_xyxy(b: np.ndarray, width: float, height: float) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4).copy()
    b[:, 0::2] = np.clip(b[:, 0::2], 0, width)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, height)
    return b


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` against every box in ``b`` (numpy twin of torchvision's box_iou)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
