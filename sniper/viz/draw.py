"""Drawing primitives and the colour scheme shared by every picture sniper makes.

Colours: valid ground truth green, ignore regions red, other GT white, a chip's padding
extent blue; chips take the colour of their scale, detections the colour of their class.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "GT_COLOUR", "IGNORE_COLOUR", "PAD_COLOUR", "SCALE_COLOURS", "VALID_COLOUR", "as_pil", "class_colour",
    "draw_box", "draw_mask", "font", "gray_canvas", "scale_colour", "tile",
]  # fmt: skip

Colour = tuple[int, int, int]

VALID_COLOUR: Colour = (0, 230, 0)
IGNORE_COLOUR: Colour = (255, 40, 40)
GT_COLOUR: Colour = (255, 255, 255)
PAD_COLOUR: Colour = (90, 90, 255)
SCALE_COLOURS: tuple[Colour, ...] = (
    (0, 160, 255),  # finest: blue
    (255, 170, 0),  # middle: orange
    (200, 0, 255),  # coarsest: purple
    (0, 200, 160),
    (255, 80, 160),
    (160, 120, 60),
)


def scale_colour(scale_index: int) -> Colour:
    return SCALE_COLOURS[int(scale_index) % len(SCALE_COLOURS)]


def class_colour(key: int) -> Colour:
    """A bright, stable colour per class: hues spaced by the golden ratio."""
    h = (int(key) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def gray_canvas(width: int, height: int, value: int = 128) -> Image.Image:
    """A gray RGB stand-in for an image that is not available."""
    return Image.new("RGB", (int(width), int(height)), (value, value, value))


def as_pil(image: Any) -> Image.Image:
    """An RGB copy of a PIL image, an ``(H, W, 3)`` uint8 array or a ``[3, H, W]`` float tensor in [0, 1]."""
    if isinstance(image, Image.Image):
        return image.convert("RGB").copy()
    if hasattr(image, "detach"):  # a torch tensor, CHW float
        image = image.detach().cpu().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(np.asarray(image, dtype=np.uint8)), mode="RGB")


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _dashed_rect(draw: ImageDraw.ImageDraw, box: Sequence[float], colour: Colour, width: int, dash: float) -> None:
    x1, y1, x2, y2 = box
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        n = max(1, int(max(abs(bx - ax), abs(by - ay)) // dash))
        for k in range(0, n, 2):
            t0, t1 = k / n, min(1.0, (k + 1) / n)
            draw.line([(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)],
                      colour, width)  # fmt: skip


def draw_box(
    draw: ImageDraw.ImageDraw,
    box: Sequence[float],
    colour: Colour,
    *,
    width: int = 2,
    dashed: bool = False,
    dash: float = 8.0,
    label: str | None = None,
    label_font: Any = None,
) -> None:
    """One xyxy box outline; ``label`` goes in a filled tag above the box (inside it at the top edge)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if dashed:
        _dashed_rect(draw, (x1, y1, x2, y2), colour, width, dash)
    else:
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
    if not label:
        return
    f = label_font if label_font is not None else font(10)
    tx1, ty1, tx2, ty2 = draw.textbbox((0, 0), label, font=f)
    tw, th = tx2 - tx1, ty2 - ty1
    pad = max(1, width)
    ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1
    draw.rectangle([x1, ty, x1 + tw + 2 * pad, ty + th + 2 * pad], fill=colour)
    light = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140
    draw.text((x1 + pad - tx1, ty + pad - ty1), label, fill=(0, 0, 0) if light else (255, 255, 255), font=f)


def draw_mask(
    pixels: np.ndarray, mask: Any, colour: Colour, *, alpha: float = 0.45, outline: bool = True
) -> None:
    """Tint an instance mask into ``pixels`` (``(H, W, 3)`` uint8, in place): ``alpha`` of
    ``colour`` over the mask's pixels and, with ``outline``, the mask's border pixels (those with a
    4-neighbour outside it) in ``colour``.

    ``mask``: a bool ``(H, W)`` array, or ``(x0, y0, patch)`` with a bool patch whose top-left
    pixel is ``(x0, y0)``; the parts outside the picture are cut off."""
    h, w = pixels.shape[:2]
    if isinstance(mask, tuple):
        x0, y0, patch = int(mask[0]), int(mask[1]), np.asarray(mask[2], dtype=bool)
    else:
        x0, y0, patch = 0, 0, np.asarray(mask, dtype=bool)
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(w, x0 + patch.shape[1]), min(h, y0 + patch.shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    m = patch[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    if not m.any():
        return
    region = pixels[cy0:cy1, cx0:cx1]
    c = np.asarray(colour, dtype=np.float32)
    region[m] = np.round(region[m] * (1.0 - alpha) + c * alpha).astype(np.uint8)
    if outline:
        p = np.pad(m, 1)
        inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        region[m & ~inner] = np.asarray(colour, dtype=np.uint8)


def tile(
    pictures: Sequence[Image.Image],
    captions: Sequence[str] | None = None,
    *,
    cell: int = 256,
    cols: int = 4,
    pad: int = 6,
    caption_height: int = 16,
    colours: Sequence[Colour] | None = None,
) -> Image.Image:
    """Pictures resized to fit ``cell`` x ``cell``, in a grid, each with a caption above."""
    n = max(1, len(pictures))
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    ch = cell + caption_height
    out = Image.new("RGB", (cols * (cell + pad) + pad, rows * (ch + pad) + pad), (40, 40, 40))
    draw = ImageDraw.Draw(out)
    for k, pic in enumerate(pictures):
        r, c = divmod(k, cols)
        x, y = pad + c * (cell + pad), pad + r * (ch + pad)
        p = pic.copy()
        p.thumbnail((cell, cell), Image.BILINEAR)
        out.paste(p, (x, y + caption_height))
        if captions is not None and k < len(captions):
            colour = colours[k] if colours is not None and k < len(colours) else GT_COLOUR
            draw.text((x + 2, y + 2), captions[k], fill=colour)
    return out
