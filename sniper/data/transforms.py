"""Pixels of one chip: crop before resize, JPEG draft decoding, flips, a bounded image cache.

Coordinates follow ``docs/architecture.md``: a chip maps original pixels to chip pixels by
``chip = (original - (x1, y1)) * f``. Pixel ``i`` covers ``[i, i + 1)``, so the chip content of
width ``w`` covers original ``[x1, x1 + w / f)``; that window is handed to PIL's
``resize(box=...)``, which resamples only it (antialiased when shrinking).

A JPEG decoded with ``draft`` at reduction ``r`` (1, 2, 4 or 8: libjpeg's DCT scaling) holds
pixel ``i`` = original ``[r * i, r * (i + 1))``; the window is divided by ``r`` exactly.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

from sniper.data.images import LoadedImage

__all__ = [
    "ImageCache",
    "chip_tensor",
    "to_unit_float",
    "draft_reduce",
    "flip_boxes",
    "reduction",
    "render_chip",
]

DRAFT_REDUCTIONS = (8, 4, 2, 1)


def draft_reduce(scale: float) -> int:
    """Largest JPEG draft reduction that still leaves at least one decoded pixel per chip pixel.

    A chip at resize factor ``f`` needs ``1 / f`` original pixels per chip pixel, so ``r * f <= 1``.
    """
    for r in DRAFT_REDUCTIONS:
        if r * scale <= 1.0:
            return r
    return 1


def reduction(loaded: LoadedImage) -> int:
    """Original pixels per decoded pixel of a (possibly draft-decoded) image: 1, 2, 4 or 8."""
    return max(1, int(round(1.0 / loaded.scale_x)))


def render_chip(loaded: LoadedImage, x1: float, y1: float, scale: float, size: tuple[int, int]) -> np.ndarray:
    """The chip content ``(h, w, 3)`` uint8: original window ``[x1, x1 + w / f) x [y1, y1 + h / f)``
    resized to ``size = (w, h)``.

    A window flush with the right (bottom) edge may end up to half a chip pixel past the image
    (the scaled size is rounded); those last columns (rows) repeat the edge, so the mapping
    stays exact instead of stretching the window into the image.
    """
    w, h = size
    sx, sy = loaded.scale_x, loaded.scale_y
    W, H = loaded.image.size
    step_x, step_y = sx / scale, sy / scale  # decoded px per chip px
    bx1, by1 = x1 * sx, y1 * sy
    w_in = _inside(bx1, step_x, w, W)
    h_in = _inside(by1, step_y, h, H)
    box = (bx1, by1, min(W, bx1 + w_in * step_x), min(H, by1 + h_in * step_y))
    # reducing_gap: for big reductions PIL first shrinks by an integer factor (box filter), then
    # resamples; with gap 3 the result stays within ~1 grey level of the exact filter and is faster.
    out = loaded.image.resize((w_in, h_in), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    arr = np.array(out, dtype=np.uint8)
    if (w_in, h_in) != (w, h):
        arr = np.pad(arr, ((0, h - h_in), (0, w - w_in), (0, 0)), mode="edge")
    return arr


def _inside(start: float, step: float, n: int, limit: int) -> int:
    """How many of ``n`` output pixels (from ``start``, ``step`` input px each) end inside ``[0, limit]``."""
    if start + n * step <= limit + 1e-6:
        return n
    return int(min(n, max(1, math.floor((limit - start) / step + 1e-9))))


def chip_tensor(content: np.ndarray, chip_size: int, flip: bool, *, uint8: bool = False) -> torch.Tensor:
    """``[3, K, K]`` float in [0, 1] (or uint8 0..255 with ``uint8``): ``content`` (h, w, 3) uint8
    at the top-left, mirrored inside its own width if ``flip``; zero padding.

    numpy, single-threaded: small torch ops pay for intra-op threading in the main process.
    """
    h, w = content.shape[:2]
    src = content[:, ::-1] if flip else content
    # uint8 shuffle to CHW first: cheaper than a strided float pass
    chw = np.ascontiguousarray(src.transpose(2, 0, 1))
    out = np.empty((3, chip_size, chip_size), dtype=np.uint8 if uint8 else np.float32)
    out[:, h:] = 0  # only the padding is cleared; the content is written once
    out[:, :h, w:] = 0
    if uint8:
        out[:, :h, :w] = chw
    else:
        np.multiply(chw, np.float32(1.0 / 255.0), out=out[:, :h, :w])
    return torch.from_numpy(out)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 chips -> float in [0, 1], the same values :func:`chip_tensor` gives (numpy, one thread)."""
    out = np.empty(tuple(images.shape), dtype=np.float32)
    np.multiply(images.numpy(), np.float32(1.0 / 255.0), out=out)
    return torch.from_numpy(out)


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirror xyxy boxes inside ``[0, width]`` (the chip's content width, not the padded K)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    x1 = b[:, 0].copy()
    b[:, 0] = width - b[:, 2]
    b[:, 2] = width - x1
    return b


def _pixels(loaded: LoadedImage) -> int:
    return loaded.image.width * loaded.image.height


class ImageCache:
    """LRU of decoded images, bounded by count and by pixels (per process / DataLoader worker).

    An entry at reduction ``r`` also serves requests for any coarser reduction (a full-resolution
    decode serves everything), so a run of chips of one image, finest first, decodes it once.
    ``get`` returns the finest entry at or below the requested reduction.
    """

    def __init__(self, max_images: int, max_pixels: int) -> None:
        self.max_images = max(0, int(max_images))
        self.max_pixels = max(0, int(max_pixels))
        self._entries: OrderedDict[tuple[int, int], LoadedImage] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def pixels(self) -> int:
        return sum(_pixels(e) for e in self._entries.values())

    def get(self, image_id: int, reduce: int) -> LoadedImage | None:
        best = None
        for r in DRAFT_REDUCTIONS[::-1]:  # finest first: the best quality that is available
            if r > reduce:
                break
            e = self._entries.get((image_id, r))
            if e is not None:
                best = (image_id, r)
                break
        if best is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(best)
        return self._entries[best]

    def put(self, image_id: int, loaded: LoadedImage) -> None:
        if self.max_images == 0 or _pixels(loaded) > self.max_pixels:
            return
        key = (image_id, reduction(loaded))
        self._entries[key] = loaded
        self._entries.move_to_end(key)
        total = self.pixels
        while self._entries and (len(self._entries) > self.max_images or total > self.max_pixels):
            _, old = self._entries.popitem(last=False)
            total -= _pixels(old)

    def clear(self) -> None:
        self._entries.clear()
