"""Pictures of dataset items exactly as the model receives them (after crop, resize, pad, flip)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["VALID_COLOUR", "IGNORE_COLOUR", "draw_item"]

VALID_COLOUR = (0, 230, 0)
IGNORE_COLOUR = (255, 40, 40)
PAD_COLOUR = (90, 90, 255)


def _boxes(t: Any) -> np.ndarray:
    if t is None:
        return np.zeros((0, 4))
    return np.asarray(t.detach().cpu() if torch.is_tensor(t) else t, dtype=np.float64).reshape(-1, 4)


def draw_item(
    image: torch.Tensor, target: dict[str, Any], *, names: dict[int, str] | None = None
) -> Image.Image:
    """``[3, K, K]`` float image + target -> PIL image: valid boxes green (with their label, or
    ``names[label]``), ignore boxes red, the content extent (padding starts past it) blue."""
    arr = image.detach().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    im = Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    d = ImageDraw.Draw(im)
    if "image_size" in target:
        h, w = (int(v) for v in target["image_size"])
        if (w, h) != im.size:
            d.rectangle([0, 0, w - 1, h - 1], outline=PAD_COLOUR, width=1)
    for b in _boxes(target.get("ignore_boxes")):
        d.rectangle(b.tolist(), outline=IGNORE_COLOUR, width=2)
    labels = target.get("labels")
    labels = [] if labels is None else [int(v) for v in labels]
    for i, b in enumerate(_boxes(target.get("boxes"))):
        d.rectangle(b.tolist(), outline=VALID_COLOUR, width=2)
        if i < len(labels):
            text = names.get(labels[i], str(labels[i])) if names else str(labels[i])
            d.text((b[0] + 2, b[1] + 1), text, fill=VALID_COLOUR)
    scale = target.get("scale")
    if scale is not None:
        note = f"image {target.get('image_id')}  x{float(scale):.3g}" + (
            "  flipped" if target.get("flipped") else ""
        )
        d.text((3, im.height - 12), note, fill=(255, 255, 255))
    return im
