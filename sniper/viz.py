"""Pictures of chips (Pillow only; no display needed).

* :func:`draw_image_chips`: an image with its chips outlined, one colour per scale
  (negative chips dashed), and its GT boxes (paper Fig. 1).
* :func:`render_chip`: one chip resampled to chip pixels on its ``K x K`` zero-padded
  canvas, valid GT green, ignore regions red, proposals as red dots (paper Fig. 2).
* :func:`tile`: a grid of pictures with captions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SCALE_COLORS", "draw_image_chips", "gray_canvas", "render_chip", "scale_color", "tile"]

SCALE_COLORS: list[tuple[int, int, int]] = [
    (0, 160, 255),  # finest: blue
    (255, 170, 0),  # middle: orange
    (200, 0, 255),  # coarsest: purple
    (0, 200, 160),
    (255, 80, 160),
    (160, 120, 60),
]
VALID_COLOR = (0, 230, 0)
IGNORE_COLOR = (255, 30, 30)
GT_COLOR = (255, 255, 255)


def scale_color(scale_index: int) -> tuple[int, int, int]:
    return SCALE_COLORS[int(scale_index) % len(SCALE_COLORS)]


def gray_canvas(width: int, height: int, value: int = 128) -> Image.Image:
    """A gray RGB stand-in for an image that is not available."""
    return Image.new("RGB", (int(width), int(height)), (value, value, value))


def _dashed_rect(
    draw: ImageDraw.ImageDraw, box: Sequence[float], color, width: int, dash: float = 8.0
) -> None:
    x1, y1, x2, y2 = box
    for (ax, ay), (bx, by) in (
        ((x1, y1), (x2, y1)),
        ((x2, y1), (x2, y2)),
        ((x2, y2), (x1, y2)),
        ((x1, y2), (x1, y1)),
    ):
        length = max(abs(bx - ax), abs(by - ay))
        n = max(1, int(length // dash))
        for k in range(0, n, 2):
            t0, t1 = k / n, min(1.0, (k + 1) / n)
            draw.line(
                [(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)],
                color,
                width,
            )


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
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    crowd = np.zeros(len(gt), bool) if gt_iscrowd is None else np.asarray(gt_iscrowd, bool)
    for b, c in zip(gt, crowd):
        draw.rectangle(b.tolist(), outline=IGNORE_COLOR if c else GT_COLOR, width=1)
    boxes = np.asarray(chip_boxes, dtype=np.float64).reshape(-1, 4)
    for b, s, neg in zip(boxes, np.asarray(scale_index), np.asarray(negative, bool)):
        # inset by half the line width so chips on the image border stay visible
        r = [b[0] + 1, b[1] + 1, b[2] - 2, b[3] - 2]
        if neg:
            _dashed_rect(draw, r, scale_color(s), line_width)
        else:
            draw.rectangle(r, outline=scale_color(s), width=line_width)
    if scale_names:  # legend in a strip below the image, so it hides nothing
        strip = 16 * len(scale_names) + 6
        framed = Image.new("RGB", (out.width, out.height + strip), (0, 0, 0))
        framed.paste(out, (0, 0))
        out = framed
        draw = ImageDraw.Draw(out)
        si, neg = np.asarray(scale_index), np.asarray(negative, bool)
        for s, name in enumerate(scale_names):
            text = f"{name}: {int(np.sum((si == s) & ~neg))} pos, {int(np.sum((si == s) & neg))} neg (dashed)"
            draw.text((6, out.height - strip + 3 + 16 * s), text, fill=scale_color(s))
    return out


def render_chip(
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
        (w, h),
        Image.Transform.AFFINE,
        (1.0 / f, 0.0, chip.x1, 0.0, 1.0 / f, chip.y1),
        resample=Image.BILINEAR,
    )
    canvas = Image.new("RGB", (chip_size, chip_size), (0, 0, 0))
    canvas.paste(content, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for b, v in zip(np.asarray(labels.boxes, dtype=np.float64), np.asarray(labels.valid, bool)):
        draw.rectangle(b.tolist(), outline=VALID_COLOR if v else IGNORE_COLOR, width=line_width)
    if proposals is not None and len(proposals):
        c = chip.to_chip(np.asarray(proposals, dtype=np.float64).reshape(-1, 4))
        cx, cy = (c[:, 0] + c[:, 2]) / 2, (c[:, 1] + c[:, 3]) / 2
        for x, y in zip(cx, cy):
            if 0 <= x < w and 0 <= y < h:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=IGNORE_COLOR)
    return canvas


def tile(
    pictures: Sequence[Image.Image],
    captions: Sequence[str] | None = None,
    *,
    cell: int = 256,
    cols: int = 4,
    pad: int = 6,
    caption_height: int = 16,
    colors: Sequence[tuple[int, int, int]] | None = None,
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
            color = colors[k] if colors is not None and k < len(colors) else (255, 255, 255)
            draw.text((x + 2, y + 2), captions[k], fill=color)
    return out
