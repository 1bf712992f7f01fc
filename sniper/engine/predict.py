"""Multi-scale inference: image pyramid, per-scale valid ranges, tiling, merge (paper §4.4).

For every scale of ``cfg.infer.scales`` each image is resized (never cropped unless it is too
large, see below), images are batched with zero padding and ``image_sizes``, and the model's
boxes are mapped back to ORIGINAL pixels with the exact per-axis factor of the resize. As in
the authors' code, the order is: the model returns every detection above its score threshold
(``raw_detections=True``: no per-class NMS, no top-k in the head, so out-of-range boxes can
neither take the slots nor suppress in-range ones); a scale keeps only detections whose
``sqrt(w * h)`` in original pixels lies in its valid range, at most ``pre_merge_top_k`` of them
(the best; bounds memory); the survivors of all scales are merged per class by
``sniper.ops.merge`` (Gaussian Soft-NMS, or one hard NMS over all scales with ``merge: nms``),
at most ``max_detections`` per image. A model without ``supports_raw_detections`` (any other
detector following the model contract) is called plainly and its output taken as it comes.

Masks. A model with ``has_masks`` (``model.masks``) computes masks for its final detections only,
so it cannot return raw detections: it is called with ``valid_ranges`` instead, each pass's valid
range in its own input px (the scale's range times the input px per original px, widened by a
relative 1e-4 against rounding), which drops out-of-range candidates BEFORE the head's per-class
NMS and top-k, as the raw path does; the exact original-px range filter then runs as for boxes.
Masks travel with their boxes through the window mapping, the range filter and the merge
(Soft-NMS only rescores). Each final detection's ``M x M`` probabilities (over its box) are
pasted into the ORIGINAL image at its box (:func:`paste_box_mask`: bilinear, threshold 0.5, only
the pixels of the box) and encoded as COCO RLE one detection at a time, straight from the box
patch (:func:`sniper.data.masks.rle_from_patch`), never as an image-sized array per detection.

Tiling. An image whose scaled size exceeds ``max_pixels_per_pass`` pixels is run as a grid of
overlapping windows (the same window size for all, one batch of windows at a time, each window
cropped from the original and resized on its own, so memory is bounded by one batch). Every
window OWNS the part of the image that is closer to it than to its neighbours (the overlaps
are split at their middles). A detection is kept only from the window that owns its centre,
and a box cut by an interior window edge is dropped when it is narrower than the overlap on
that side (its object then lies wholly inside the neighbour, which reports it uncut). An
object no larger than the overlap is therefore reported exactly once, whole. The overlap is
at least ``tile_overlap`` scaled px and is raised to cover the scale's largest valid object,
so every object a scale is responsible for fits in some window.

Proposals (stage 2, negative chip mining) use the same pyramid with ``cfg.proposals``: the top
``top_per_scale`` RPN boxes of every scale (no valid-range filter, as in the released code),
concatenated, then NMS at ``nms_thresh``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import nms

from sniper.boxes import xyxy_to_xywh
from sniper.config import InferConfig, ProposalConfig
from sniper.errors import BadImageError, SniperError
from sniper.scales import Scale, scaled_size

__all__ = [
    "IMAGE_EXTENSIONS",
    "Detections",
    "ImageItem",
    "Predictor",
    "Proposals",
    "Window",
    "coco_items",
    "detections_to_coco",
    "iter_loaded",
    "list_source",
    "paste_box_mask",
    "plan_windows",
    "predict_proposals",
    "proposals_to_coco",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# The padded batch is a multiple of the backbone's largest stride, so feature maps line up.
SIZE_DIVISIBILITY = 32
# A mask model's valid range in input px is widened by this (relative) so that rounding never drops
# a candidate the exact original-px filter would keep; that filter runs afterwards.
RANGE_SLACK = 1e-4
MASK_THRESHOLD = 0.5


# ------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Detections:
    """Final detections of one image, ORIGINAL pixels, by decreasing score.

    A mask model adds, per detection, ``masks``: the model's ``M x M`` probabilities over its box
    (pixel (r, c) at ``(x1 + (c + 0.5) * w / M, y1 + (r + 0.5) * h / M)``), and
    ``segmentations``: its mask in the original image (:func:`paste_box_mask`, threshold 0.5) as
    COCO compressed RLE ``{"size": [H, W], "counts": str}``. Both are None for a box model."""

    boxes: np.ndarray  # (K, 4) float32 xyxy
    scores: np.ndarray  # (K,) float32
    labels: np.ndarray  # (K,) int64, model labels 1..C
    category_ids: np.ndarray  # (K,) int64, the dataset's own category ids
    masks: np.ndarray | None = None  # (K, M, M) float32 probabilities over each box
    segmentations: list[dict] | None = None  # K COCO RLEs of the original image's size

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True)
class Proposals:
    """RPN proposals of one image, ORIGINAL pixels, by decreasing objectness."""

    boxes: np.ndarray  # (K, 4) float32 xyxy
    scores: np.ndarray  # (K,) float32

    def __len__(self) -> int:
        return len(self.boxes)


def _xywh_records(
    image_id: int, boxes: np.ndarray, scores: np.ndarray, category_ids: Iterable[int]
) -> list[dict]:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xywh = np.round(xyxy_to_xywh(b), 2)
    return [
        {
            "image_id": int(image_id),
            "category_id": int(c),
            "bbox": [float(v) for v in box],
            "score": round(float(s), 5),
        }
        for box, s, c in zip(xywh, scores, category_ids)
    ]


def detections_to_coco(image_id: int, dets: Detections) -> list[dict]:
    """COCO results records (``bbox`` xywh rounded to 0.01 px, the dataset's category ids), with
    ``segmentation`` (COCO RLE, ``counts`` a str) for a mask model's detections."""
    records = _xywh_records(image_id, dets.boxes, dets.scores, dets.category_ids)
    if dets.segmentations is not None:
        for rec, seg in zip(records, dets.segmentations):
            rec["segmentation"] = seg
    return records


def proposals_to_coco(image_id: int, props: Proposals) -> list[dict]:
    """COCO results records with ``category_id`` 1 and ``score`` = objectness."""
    return _xywh_records(image_id, props.boxes, props.scores, [1] * len(props))


# ------------------------------------------------------------------------------- masks


def _bilinear_weights(u: np.ndarray, n: int) -> np.ndarray:
    """``[len(u), n]`` weights that read a length-``n`` signal at the continuous coordinates ``u``
    (sample ``j`` at ``j``) by linear interpolation, zero beyond both ends (so values fall to 0
    half a sample outside, as ``grid_sample`` with zero padding)."""
    i0 = np.floor(u).astype(np.int64)
    t = (u - i0).astype(np.float32)
    w = np.zeros((len(u), n), dtype=np.float32)
    rows = np.arange(len(u))
    for idx, wt in ((i0, 1.0 - t), (i0 + 1, t)):
        ok = (idx >= 0) & (idx < n)
        w[rows[ok], idx[ok]] = wt[ok]
    return w


def paste_box_mask(
    mask: np.ndarray | torch.Tensor,
    box: Sequence[float],
    width: int,
    height: int,
    threshold: float = MASK_THRESHOLD,
) -> tuple[int, int, np.ndarray]:
    """A box-local probability mask pasted into a ``width x height`` image: ``(x0, y0, patch)``,
    ``patch`` bool ``(h, w)`` being image pixels ``[y0, y0 + h) x [x0, x0 + w)``; all else is 0.

    ``mask`` is ``(mh, mw)`` probabilities over ``box`` = (x1, y1, x2, y2) image px, pixel (r, c)
    at the point ``(x1 + (c + 0.5) * bw / mw, y1 + (r + 0.5) * bh / mh)``. It is read bilinearly
    at the centre of every image pixel whose centre lies in the box (and the image), with zero
    beyond the mask's border pixels (Detectron2's ``paste_masks_in_image`` with ``grid_sample``),
    and thresholded (``>= threshold``). Separable: two small matrix products over the box only.
    """
    m = mask.detach().float().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    m = m.reshape(m.shape[-2:]).astype(np.float32, copy=False)
    mh, mw = m.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    empty = (0, 0, np.zeros((0, 0), dtype=bool))
    if not (math.isfinite(x1 + x2 + y1 + y2) and x2 > x1 and y2 > y1):
        return empty
    c0, c1 = max(0, math.ceil(x1 - 0.5)), min(int(width), math.floor(x2 - 0.5) + 1)
    r0, r1 = max(0, math.ceil(y1 - 0.5)), min(int(height), math.floor(y2 - 0.5) + 1)
    if c1 <= c0 or r1 <= r0:  # no pixel centre of the image inside the box
        return empty
    wx = _bilinear_weights((np.arange(c0, c1) + 0.5 - x1) * (mw / (x2 - x1)) - 0.5, mw)
    wy = _bilinear_weights((np.arange(r0, r1) + 0.5 - y1) * (mh / (y2 - y1)) - 0.5, mh)
    return c0, r0, (wy @ m @ wx.T) >= threshold


def _encode_masks(masks: np.ndarray, boxes: np.ndarray, width: int, height: int) -> list[dict]:
    """COCO RLEs of box-local masks pasted at ``boxes`` into a ``width x height`` image, one at a time."""
    from sniper.data.masks import rle_from_patch

    out = []
    for m, box in zip(masks, boxes):
        x0, y0, patch = paste_box_mask(m, box, width, height)
        out.append(rle_from_patch(patch, x0, y0, width, height))
    return out


# ------------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """One model input: the integer window ``[x0, x1) x [y0, y1)`` of an image, resized to
    ``out_w`` x ``out_h``. ``own`` is the region whose detections this window reports
    (``x0, y0, x1, y1``, infinite at image borders); ``overlap`` is the overlap with the
    neighbouring window on each side (left, top, right, bottom; 0 at image borders)."""

    x0: int
    y0: int
    x1: int
    y1: int
    out_w: int
    out_h: int
    own: tuple[float, float, float, float] = (-math.inf, -math.inf, math.inf, math.inf)
    overlap: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    @property
    def factors(self) -> tuple[float, float]:
        """Input px per image px, per axis (exact for the resize we do)."""
        return self.out_w / (self.x1 - self.x0), self.out_h / (self.y1 - self.y0)

    def to_image(self, boxes: torch.Tensor) -> torch.Tensor:
        """Model-input boxes -> image pixels."""
        fx, fy = self.factors
        scale = boxes.new_tensor([1 / fx, 1 / fy, 1 / fx, 1 / fy])
        shift = boxes.new_tensor([self.x0, self.y0, self.x0, self.y0])
        return boxes * scale + shift

    def keep(self, boxes: torch.Tensor) -> torch.Tensor:
        """Mask of image-pixel ``boxes`` this window reports (ownership of the centre, and no
        box cut by an interior edge that the neighbour sees whole)."""
        if self.own == (-math.inf, -math.inf, math.inf, math.inf):
            return torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
        fx, fy = self.factors
        ex, ey = 0.5 / fx, 0.5 / fy  # half an input pixel: boxes clipped to the window edge
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        ox0, oy0, ox1, oy1 = self.own
        keep = (cx >= ox0) & (cx < ox1) & (cy >= oy0) & (cy < oy1)
        ol, ot, orr, ob = self.overlap
        if ol > 0:
            keep &= ~((boxes[:, 0] <= self.x0 + ex) & (w < ol - ex))
        if orr > 0:
            keep &= ~((boxes[:, 2] >= self.x1 - ex) & (w < orr - ex))
        if ot > 0:
            keep &= ~((boxes[:, 1] <= self.y0 + ey) & (h < ot - ey))
        if ob > 0:
            keep &= ~((boxes[:, 3] >= self.y1 - ey) & (h < ob - ey))
        return keep


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts covering ``[0, length)``; the last window ends at ``length``."""
    if tile >= length:
        return [0]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    return [i * stride for i in range(n - 1)] + [length - tile]


def _axis(length: int, tile: int, overlap: int) -> list[tuple[int, int, float, float, float, float]]:
    """Per window along one axis: (start, end, own_lo, own_hi, overlap_lo, overlap_hi)."""
    starts = _starts(length, tile, overlap)
    ends = [min(s + tile, length) for s in starts]
    out = []
    for k, (s, e) in enumerate(zip(starts, ends)):
        lo = -math.inf if k == 0 else (s + ends[k - 1]) / 2
        hi = math.inf if k == len(starts) - 1 else (e + starts[k + 1]) / 2
        ov_lo = 0.0 if k == 0 else float(ends[k - 1] - s)
        ov_hi = 0.0 if k == len(starts) - 1 else float(e - starts[k + 1])
        out.append((s, e, lo, hi, ov_lo, ov_hi))
    return out


def plan_windows(
    width: int, height: int, out_w: int, out_h: int, max_pixels: int, overlap: float
) -> list[Window]:
    """Model inputs for a ``width`` x ``height`` image resized to ``out_w`` x ``out_h``.

    One window (the whole image) when ``out_w * out_h <= max_pixels``; otherwise a grid of
    equal windows of at most ``max_pixels`` input pixels each, overlapping by at least
    ``overlap`` input px (capped at half a window).
    """
    if out_w * out_h <= max_pixels:
        return [Window(0, 0, width, height, out_w, out_h)]
    side = math.isqrt(max_pixels)
    if side < 2 * SIZE_DIVISIBILITY:
        raise SniperError(f"infer.max_pixels_per_pass={max_pixels} is too small to tile an image")
    if out_w <= side:
        tw, th = out_w, max_pixels // out_w
    elif out_h <= side:
        tw, th = max_pixels // out_h, out_h
    else:
        tw = th = side
    fx, fy = out_w / width, out_h / height
    cw, ch = min(width, max(1, math.floor(tw / fx))), min(height, max(1, math.floor(th / fy)))
    ow, oh = max(1, round(cw * fx)), max(1, round(ch * fy))
    ovx = min(math.ceil(overlap / fx), cw // 2)
    ovy = min(math.ceil(overlap / fy), ch // 2)
    windows = []
    for y0, y1, oy0, oy1, ot, ob in _axis(height, ch, ovy):
        for x0, x1, ox0, ox1, ol, orr in _axis(width, cw, ovx):
            windows.append(Window(x0, y0, x1, y1, ow, oh, (ox0, oy0, ox1, oy1), (ol, ot, orr, ob)))
    return windows


# ------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class _Image:
    """Pixels as given (``[3, h, w]`` uint8 or float in [0, 1], CPU) and how they relate to
    the original image: ``pixel = original * (sx, sy)`` (JPEG draft decoding)."""

    pixels: torch.Tensor
    original_size: tuple[int, int]  # (W, H)
    sx: float = 1.0
    sy: float = 1.0

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[2]), int(self.pixels.shape[1])


def _as_image(obj: Any, index: int) -> _Image:
    from sniper.data.images import LoadedImage, to_rgb8

    if isinstance(obj, LoadedImage):
        im = _as_image(obj.image, index)
        return _Image(im.pixels, obj.original_size, obj.scale_x, obj.scale_y)
    if isinstance(obj, Image.Image):
        arr = np.array(to_rgb8(obj))  # a writable copy
        t = torch.from_numpy(arr).permute(2, 0, 1)
    elif isinstance(obj, np.ndarray):
        arr = obj[..., None] if obj.ndim == 2 else obj
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"image {index}: expected an HxW or HxWx3 array, got shape {obj.shape}")
        arr = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    elif isinstance(obj, torch.Tensor):
        if obj.ndim != 3 or obj.shape[0] not in (1, 3):
            raise ValueError(f"image {index}: expected a [3, H, W] tensor, got shape {tuple(obj.shape)}")
        t = obj.expand(3, -1, -1) if obj.shape[0] == 1 else obj
    else:
        raise TypeError(
            f"image {index}: expected a PIL image, numpy array or tensor, got {type(obj).__name__}"
        )
    if t.dtype != torch.uint8:
        t = t.float()
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"image {index}: empty image of shape {tuple(t.shape)}")
    return _Image(t, (int(t.shape[2]), int(t.shape[1])))


def _pad_batch(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    d = SIZE_DIVISIBILITY
    h = math.ceil(max(t.shape[1] for t in tensors) / d) * d
    w = math.ceil(max(t.shape[2] for t in tensors) / d) * d
    batch = tensors[0].new_zeros((len(tensors), 3, h, w))
    for i, t in enumerate(tensors):
        batch[i, :, : t.shape[1], : t.shape[2]] = t
    return batch, [(int(t.shape[1]), int(t.shape[2])) for t in tensors]


# ------------------------------------------------------------------------------- predictor

# Per pass: model input batch + image_sizes + valid ranges (input px) -> per image (boxes, scores,
# labels, masks or None) in input px.
_Out = tuple[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"]
_Call = Callable[[torch.Tensor, list[tuple[int, int]], list[tuple[float, float]]], list[_Out]]


def _cat_masks(masks: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Concatenated ``[N, 1, M, M]`` masks; parts without rows may have any M."""
    full = [m for m in masks if len(m)]
    if full:
        return torch.cat(full)
    return masks[0] if masks else torch.zeros((0, 1, 1, 1), device=device)


@dataclass
class _Found:
    """Everything one image collected at one scale (image pixels)."""

    boxes: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)  # mask models only

    def cat(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.boxes:
            z = torch.zeros(0, device=device)
            return z.reshape(0, 4), z, torch.zeros(0, dtype=torch.int64, device=device)
        return torch.cat(self.boxes), torch.cat(self.scores), torch.cat(self.labels)


class Predictor:
    """Pyramid inference with a detector that follows the model contract.

    ``categories`` are the dataset's ``[{id, name}]``, e.g. as stored in ``model_final.pt``. Model
    label ``l`` is the ``l``-th category in increasing id order (the rule of
    ``CocoDataset.label_of``), whatever order they are given in. With ``fuse_bn`` (default), a model
    with BatchNorms after convs is run as an eval-mode copy with those norms folded in.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        infer_cfg: InferConfig,
        categories: Sequence[dict],
        device: str | torch.device = "cpu",
        *,
        batch_size: int | None = None,
        fuse_bn: bool = True,
    ) -> None:
        from sniper.data.coco import categories_in_label_order
        from sniper.model.fuse import fuse_conv_bn, has_foldable_norms
        from sniper.ops.merge import build_merge

        self.device = torch.device(device)
        model = getattr(model, "module", model)  # DDP: the wrapped model has .proposals
        # Folding BatchNorm into the convs (on a copy) saves ~1/3 of CPU backbone time.
        if fuse_bn and has_foldable_norms(model):
            model = fuse_conv_bn(model)
        self.model = model.to(self.device).eval()
        self.cfg = infer_cfg
        self.categories = categories_in_label_order(categories)
        self.batch_size = int(batch_size or infer_cfg.batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if not infer_cfg.scales:
            raise ValueError("infer.scales is empty")
        self.merge = build_merge(infer_cfg)
        self._category_ids = torch.tensor([int(c["id"]) for c in self.categories], dtype=torch.int64)
        # the mask branch: called with valid_ranges (no raw detections), masks pasted and encoded
        self.masks = bool(getattr(self.model, "has_masks", False))

    # -------------------------------------------------------------- public

    @torch.inference_mode()
    def predict(self, images: Sequence[Any]) -> list[Detections]:
        """Final detections per image (PIL, HxWx3 uint8 array, [3, H, W] tensor, or ``LoadedImage``)."""
        ims = [_as_image(im, i) for i, im in enumerate(images)]
        found = self._pyramid(ims, self.cfg.scales, self._detect)
        out = []
        for im, per_scale in zip(ims, found):
            parts, mask_parts = [], []
            for scale, f in zip(self.cfg.scales, per_scale):
                boxes, scores, labels = f.cat(self.device)
                boxes = self._to_original(boxes, im)
                keep = torch.where(_in_range(boxes, scale))[0]
                top = self.cfg.pre_merge_top_k
                if top is not None and len(keep) > top:  # the best in range (ties: earlier first)
                    keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices[:top]]
                parts.append((boxes[keep], scores[keep], labels[keep]))
                if self.masks:
                    mask_parts.append(_cat_masks(f.masks, self.device)[keep.to(self.device)])
            dets = {
                "boxes": torch.cat([p[0] for p in parts]),
                "scores": torch.cat([p[1] for p in parts]),
                "labels": torch.cat([p[2] for p in parts]),
            }
            if self.masks:  # travel by index with their boxes through the merge
                dets["masks"] = _cat_masks(mask_parts, self.device)
            merged = self.merge(dets)
            out.append(self._detections(merged, im))
        return out

    @torch.inference_mode()
    def proposals(self, images: Sequence[Any], proposal_cfg: ProposalConfig | None = None) -> list[Proposals]:
        """RPN proposals per image: top ``top_per_scale`` of every scale, concatenated, NMS."""
        pcfg = proposal_cfg or ProposalConfig()
        ims = [_as_image(im, i) for i, im in enumerate(images)]
        found = self._pyramid(ims, pcfg.scales, self._propose)
        out = []
        for im, per_scale in zip(ims, found):
            boxes_all, scores_all = [], []
            for f in per_scale:
                boxes, scores, _ = f.cat(self.device)
                top = torch.argsort(scores, descending=True)[: pcfg.top_per_scale]
                boxes_all.append(self._to_original(boxes[top], im))
                scores_all.append(scores[top])
            boxes, scores = torch.cat(boxes_all).float(), torch.cat(scores_all).float()
            keep = nms(boxes, scores, pcfg.nms_thresh)  # sorted by decreasing score
            out.append(Proposals(boxes[keep].cpu().numpy(), scores[keep].cpu().numpy()))
        return out

    # -------------------------------------------------------------- internals

    def _detect(self, batch: torch.Tensor, sizes: list[tuple[int, int]], ranges: list[tuple[float, float]]):
        if self.masks:  # masks of the final detections only: the range filter goes before NMS / top-k
            outs = self.model(batch, image_sizes=sizes, valid_ranges=ranges)
            return [(o["boxes"], o["scores"], o["labels"], o["masks"]) for o in outs]
        if getattr(self.model, "supports_raw_detections", False):  # no NMS / top-k before the range filter
            outs = self.model(batch, image_sizes=sizes, raw_detections=True)
        else:
            outs = self.model(batch, image_sizes=sizes)
        return [(o["boxes"], o["scores"], o["labels"], None) for o in outs]

    def _propose(self, batch: torch.Tensor, sizes: list[tuple[int, int]], ranges: list[tuple[float, float]]):
        outs = self.model.proposals(batch, sizes)
        return [(b, s, torch.ones(len(s), dtype=torch.int64, device=s.device), None) for b, s in outs]

    @staticmethod
    def _input_range(scale: Scale, im: _Image, win: Window) -> tuple[float, float]:
        """The scale's valid range (sqrt-area, original px) in the window's input px, slightly wider."""
        fx, fy = win.factors
        g = math.sqrt(fx * im.sx * fy * im.sy)  # input px per original px, as sqrt of area
        lo, hi = scale.lo * g * (1 - RANGE_SLACK), scale.hi * g * (1 + RANGE_SLACK)
        return float(lo), float(hi)

    def _overlap(self, scale: Scale, factor: float) -> float:
        """Tile overlap in input px: the configured one, raised to the largest valid object."""
        hi = scale.hi * factor
        return float(max(self.cfg.tile_overlap, math.ceil(hi) if math.isfinite(hi) else 0))

    def _pyramid(self, ims: list[_Image], scales: Sequence[Scale], call: _Call) -> list[list[_Found]]:
        """Run ``call`` over every scale (and window) of every image; boxes in image pixels."""
        found = [[_Found() for _ in scales] for _ in ims]
        for s, scale in enumerate(scales):
            passes: list[tuple[int, Window]] = []
            for i, im in enumerate(ims):
                W, H = im.original_size
                f = scale.resize_factor(W, H)
                out_w, out_h = scaled_size(W, H, f)
                w, h = im.size
                for win in plan_windows(
                    w, h, out_w, out_h, self.cfg.max_pixels_per_pass, self._overlap(scale, f)
                ):
                    passes.append((i, win))
            # landscape and portrait inputs apart, similar shapes together: less padding
            passes.sort(key=lambda p: (p[1].out_h > p[1].out_w, p[1].out_w / p[1].out_h))
            for b in range(0, len(passes), self.batch_size):
                chunk = passes[b : b + self.batch_size]
                batch, sizes = _pad_batch([self._input(ims[i], win) for i, win in chunk])
                ranges = [self._input_range(scale, ims[i], win) for i, win in chunk]
                for (i, win), (boxes, scores, labels, masks) in zip(chunk, call(batch, sizes, ranges)):
                    boxes = win.to_image(boxes.float())
                    keep = win.keep(boxes)
                    found[i][s].boxes.append(boxes[keep])
                    found[i][s].scores.append(scores[keep].float())
                    found[i][s].labels.append(labels[keep].long())
                    if masks is not None:
                        found[i][s].masks.append(masks[keep].float())
        return found

    def _input(self, im: _Image, win: Window) -> torch.Tensor:
        """The window cropped and resized: ``[3, out_h, out_w]`` float in [0, 1] on the device."""
        x = im.pixels[:, win.y0 : win.y1, win.x0 : win.x1].to(self.device, non_blocking=True)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if (win.out_h, win.out_w) != tuple(x.shape[1:]):
            x = F.interpolate(
                x[None], size=(win.out_h, win.out_w), mode="bilinear", align_corners=False, antialias=True
            )[0]  # a convex combination of pixels: stays in [0, 1]
        return x

    @staticmethod
    def _to_original(boxes: torch.Tensor, im: _Image) -> torch.Tensor:
        """Image pixels -> original pixels, clipped to the original image."""
        if im.sx != 1.0 or im.sy != 1.0:
            boxes = boxes / boxes.new_tensor([im.sx, im.sy, im.sx, im.sy])
        W, H = im.original_size
        return torch.stack(
            [
                boxes[:, 0].clamp(0, W),
                boxes[:, 1].clamp(0, H),
                boxes[:, 2].clamp(0, W),
                boxes[:, 3].clamp(0, H),
            ],
            1,
        )

    def _detections(self, merged: dict[str, torch.Tensor], im: _Image) -> Detections:
        labels = merged["labels"].long().cpu()
        if len(labels) and (int(labels.min()) < 1 or int(labels.max()) > len(self.categories)):
            raise SniperError(
                f"model label out of range 1..{len(self.categories)}: {sorted(set(labels.tolist()))[:10]}"
            )
        boxes = merged["boxes"].float().cpu().numpy()
        masks = segmentations = None
        if "masks" in merged:
            m = merged["masks"].float().cpu()
            masks = m.reshape(len(m), *m.shape[-2:]).numpy()
            segmentations = _encode_masks(masks, boxes, *im.original_size)
        return Detections(
            boxes=boxes,
            scores=merged["scores"].float().cpu().numpy(),
            labels=labels.numpy(),
            category_ids=self._category_ids[labels - 1].numpy() if len(labels) else np.zeros(0, np.int64),
            masks=masks,
            segmentations=segmentations,
        )


def _in_range(boxes: torch.Tensor, scale: Scale) -> torch.Tensor:
    """Boxes (original px) whose sqrt(w * h) lies in the scale's valid range (half-open)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    size = torch.sqrt(wh[:, 0] * wh[:, 1])
    return (size >= scale.lo) & (size < scale.hi)


# ------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class ImageItem:
    """One image to run on: its id in the output and its file, either a ``path`` as given
    (image and folder sources) or a ``file_name`` under ``root`` that must not leave it (COCO)."""

    image_id: int
    file_name: str
    path: Path | None = None
    root: Path | None = None
    # (width, height) the annotations claim (COCO sources): a file of another size (after EXIF
    # rotation) is a bad image, since boxes would come out in a frame the annotations do not use.
    expected_size: tuple[int, int] | None = None

    def resolve(self) -> Path:
        from sniper.data.images import resolve_image_path

        if self.path is not None:
            return self.path
        if self.root is None:
            raise ValueError(f"image {self.image_id}: ImageItem needs a path or a root")
        return resolve_image_path(self.root, self.file_name)


def coco_items(dataset: Any, image_root: str | os.PathLike[str]) -> list[ImageItem]:
    """The images of a ``CocoDataset`` whose files live under ``image_root``."""
    root = Path(image_root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: image root is not a folder")
    return [
        ImageItem(rec.id, rec.file_name, root=root, expected_size=(rec.width, rec.height)) for rec in dataset.images
    ]


def list_source(source: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None):
    """The images of ``source``: ``(items, kind, dataset)``.

    ``kind`` is ``"image"`` (one file), ``"folder"`` (the image files directly in a folder,
    sorted by name) or ``"coco"`` (a COCO JSON; ``image_root`` is required and file names must
    stay inside it). Images of files and folders get ids 1, 2, ... in that order; COCO
    images keep theirs. ``dataset`` is the ``CocoDataset`` for COCO sources, else None.
    """
    from sniper.data.coco import load_coco

    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"{src}: source not found")
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise SniperError(f"{src}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        return [ImageItem(i + 1, p.name, path=p) for i, p in enumerate(files)], "folder", None
    if src.suffix.lower() == ".json":
        if image_root is None:
            raise SniperError(f"{src}: a COCO JSON source needs --images IMAGE_ROOT")
        if not Path(image_root).is_dir():
            raise NotADirectoryError(f"{image_root}: image root is not a folder")
        dataset = load_coco(src, image_root=image_root)
        return coco_items(dataset, image_root), "coco", dataset
    if src.suffix.lower() in IMAGE_EXTENSIONS:
        return [ImageItem(1, src.name, path=src)], "image", None
    raise SniperError(f"{src}: not an image ({', '.join(IMAGE_EXTENSIONS)}), a folder or a COCO .json file")


def _required_size(path: Path, scales: Sequence[Scale], max_pixels: int) -> tuple[int, int] | None:
    """The largest scaled size over the pyramid (JPEGs may then decode at 1/2..1/8 size)."""
    from sniper.data.images import image_size

    W, H = image_size(path)
    if W * H > max_pixels:
        return None  # load_image reports it
    f = max(s.resize_factor(W, H) for s in scales)
    return (math.ceil(W * f), math.ceil(H * f)) if f < 1 else None


def _load(item: ImageItem, scales: Sequence[Scale], max_pixels: int):
    from sniper.data.images import load_image

    path = item.resolve()  # BadImageError if the name leaves the image root
    if item.expected_size is not None:
        from sniper.data.images import check_image_size

        problem = check_image_size(path, *item.expected_size)  # header only
        if problem is not None:
            raise BadImageError(str(path), problem.removeprefix(f"{path}: "))
    draft = _required_size(path, scales, max_pixels)
    return load_image(path, max_pixels=max_pixels, draft_size=draft)


def iter_loaded(
    items: Sequence[ImageItem],
    scales: Sequence[Scale],
    *,
    batch_size: int,
    on_bad_image: str = "error",
    max_pixels: int = 200_000_000,
    skipped: list[dict] | None = None,
) -> Iterator[tuple[int, list[tuple[ImageItem, Any]]]]:
    """``(n, loaded)`` per chunk of ``batch_size`` items: ``loaded`` holds ``(item, LoadedImage)``
    of the ``n`` items that decoded; chunks are decoded one ahead in a background thread.

    A bad image raises :class:`BadImageError` naming the file, or with ``on_bad_image="skip"``
    is left out and appended to ``skipped`` as ``{image_id, file_name, reason}``.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")

    def load_chunk(chunk: Sequence[ImageItem]) -> list[tuple[ImageItem, Any]]:
        out = []
        for item in chunk:
            try:
                out.append((item, _load(item, scales, max_pixels)))
            except BadImageError as e:
                if on_bad_image == "error":
                    raise
                if skipped is not None:
                    skipped.append({"image_id": item.image_id, "file_name": item.file_name, "reason": str(e)})
        return out

    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(load_chunk, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            current = nxt.result()
            nxt = pool.submit(load_chunk, chunks[k + 1]) if k + 1 < len(chunks) else None
            yield len(chunks[k]), current


def predict_proposals(
    model: torch.nn.Module,
    coco_or_images: Any,
    image_root: str | os.PathLike[str] | None,
    proposal_cfg: ProposalConfig,
    device: str | torch.device = "cpu",
    *,
    infer_cfg: InferConfig | None = None,
    batch_size: int = 2,
    on_bad_image: str = "error",
    max_image_pixels: int = 200_000_000,
    progress: bool = True,
    skipped: list[dict] | None = None,
) -> list[dict]:
    """RPN proposals over whole images as COCO results records (``category_id`` 1).

    ``coco_or_images``: a ``CocoDataset`` (files under ``image_root``), a path to a COCO
    JSON, an image file or folder (see :func:`list_source`), or a list of :class:`ImageItem`.
    Tiling settings come from ``infer_cfg`` (defaults if None). The model's train/eval mode
    is restored afterwards, so the trainer can call this with its in-memory model.
    """
    from tqdm import tqdm

    from sniper.data.coco import CocoDataset

    if isinstance(coco_or_images, CocoDataset):
        if image_root is None:
            raise SniperError("proposals over a COCO dataset need its image root")
        items = coco_items(coco_or_images, image_root)
    elif isinstance(coco_or_images, str | os.PathLike):
        items, _, _ = list_source(coco_or_images, image_root)
    else:
        items = list(coco_or_images)
    model = getattr(model, "module", model)
    was_training = model.training
    predictor = Predictor(model, infer_cfg or InferConfig(), [], device, batch_size=batch_size)
    records: list[dict] = []
    try:
        bar = tqdm(total=len(items), desc="proposals", unit="img", disable=not progress)
        for n, chunk in iter_loaded(
            items,
            proposal_cfg.scales,
            batch_size=batch_size,
            on_bad_image=on_bad_image,
            max_pixels=max_image_pixels,
            skipped=skipped,
        ):
            props = predictor.proposals([im for _, im in chunk], proposal_cfg) if chunk else []
            for (item, _), p in zip(chunk, props):
                records.extend(proposals_to_coco(item.image_id, p))
            bar.update(n)
        bar.close()
    finally:
        model.train(was_training)
    return records
