"""The mask branch's pieces that torchvision does not have in SNIPER's form (paper Table 3).

torchvision's ``MaskRCNNHeads`` (3x3 convs) and ``MaskRCNNPredictor`` (2x deconv + 1x1 logits)
are used as they are (the predictor run in fp32). What differs from torchvision's Mask R-CNN:

- GT masks are box-local: chip ``i``'s ``targets["masks"][j]`` is GT box ``j``'s binary mask
  sampled on an S x S grid over that box (pixel (r, c) = chip point
  ``(x1 + (c + 0.5) * w / S, y1 + (r + 0.5) * h / S)``), not a full-chip mask, so a chip's
  masks cost N * S * S bytes whatever the chip size. ``project_box_masks`` resamples them
  onto each RoI's M x M grid (torchvision's ``project_masks_on_boxes`` does that from
  full-image masks).
- Two losses: ``"sigmoid"`` (torchvision's ``maskrcnn_loss``: per-class binary cross entropy on
  the RoI class's channel) and ``"softmax"`` (C+1-way cross entropy per pixel: the RoI's class
  inside the object, background outside).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference
from torchvision.ops import roi_align

__all__ = ["MASK_LOSSES", "SniperMaskPredictor", "mask_loss", "mask_probabilities", "project_box_masks"]

MASK_LOSSES = ("sigmoid", "softmax")


@torch.no_grad()
def project_box_masks(
    gt_masks: Tensor, gt_boxes: Tensor, rois: Tensor, gt_index: Tensor, size: int, border: int = 1
) -> Tensor:
    """Box-local GT masks resampled onto RoI grids: ``[K, size, size]`` fp32 in [0, 1].

    Args:
        gt_masks: ``[N, S, S]`` (any real or uint8/bool dtype, values in [0, 1]): mask ``j`` is
            GT ``j``'s object sampled over its own box, pixel (r, c) at the chip point
            ``(x1 + (c + 0.5) * w / S, y1 + (r + 0.5) * h / S)`` of ``gt_boxes[j]``.
        gt_boxes: ``[N, 4]`` x1, y1, x2, y2 chip px (x2 > x1, y2 > y1).
        rois: ``[K, 4]`` chip px; ``gt_index``: ``[K]`` the GT each RoI is matched to.
        size: M, the side of the RoI grid; pixel (r, c) of RoI k is the chip point
            ``(rx1 + (c + 0.5) * rw / M, ry1 + (r + 0.5) * rh / M)``.
        border: zero pixels padded around each mask first, so that samples outside the GT box
            read 0 (an object's mask lies inside its box); RoIAlign returns 0 further out.

    Each RoI is mapped affinely into its GT box's mask frame (mask px = (chip px - x1) * S / w)
    and read with ``torchvision.ops.roi_align`` (``aligned=True``: mask pixel c covers
    [c, c + 1), as above; adaptive sampling, so a bin averages the mask pixels it covers).
    The result is soft at object edges; threshold at 0.5 for a binary mask.
    """
    if rois.shape[0] == 0:
        return torch.zeros((0, size, size), dtype=torch.float32, device=rois.device)
    sh, sw = gt_masks.shape[-2:]
    masks = F.pad(gt_masks[:, None].float(), (border, border, border, border))
    g, r = gt_boxes[gt_index].float(), rois.float()
    sx, sy = sw / (g[:, 2] - g[:, 0]), sh / (g[:, 3] - g[:, 1])
    boxes = torch.stack(
        [
            gt_index.float(),
            (r[:, 0] - g[:, 0]) * sx + border,
            (r[:, 1] - g[:, 1]) * sy + border,
            (r[:, 2] - g[:, 0]) * sx + border,
            (r[:, 3] - g[:, 1]) * sy + border,
        ],
        dim=1,
    )
    with torch.autocast(rois.device.type, enabled=False):
        out = roi_align(masks, boxes, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return out[:, 0].clamp_(0.0, 1.0)


class SniperMaskPredictor(MaskRCNNPredictor):
    """torchvision's MaskRCNNPredictor (2x2 stride-2 deconv, ReLU, 1x1 conv to ``num_classes``
    logits incl. background) run in fp32; the logits layer starts near zero (std 0.001, zero
    bias, as Detectron), so both losses start at their chance values."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__(in_channels, dim_reduced, num_classes)
        nn.init.normal_(self.mask_fcn_logits.weight, std=0.001)
        nn.init.zeros_(self.mask_fcn_logits.bias)
        nn.init.zeros_(self.conv5_mask.bias)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def mask_loss(mask_logits: Tensor, labels: Tensor, mask_targets: Tensor, kind: str) -> Tensor:
    """Mean per-pixel loss over the mask-training RoIs (fp32).

    ``mask_logits``: ``[K, C+1, M, M]``; ``labels``: ``[K]`` the RoIs' classes 1..C;
    ``mask_targets``: ``[K, M, M]`` in [0, 1] (``project_box_masks``).
    ``"sigmoid"``: binary cross entropy of the RoI class's channel against the (soft) target,
    as torchvision's ``maskrcnn_loss``. ``"softmax"``: cross entropy over the C+1 channels per
    pixel, the target being the RoI's class where ``mask_targets >= 0.5`` and 0 (background)
    elsewhere. No RoI: a zero that is still connected to every parameter behind ``mask_logits``.
    """
    if labels.numel() == 0:
        return mask_logits.sum() * 0.0
    logits = mask_logits.float()
    if kind == "sigmoid":
        picked = logits[torch.arange(labels.numel(), device=labels.device), labels]
        return F.binary_cross_entropy_with_logits(picked, mask_targets.float())
    if kind == "softmax":
        pixel_class = torch.where(
            mask_targets >= 0.5, labels[:, None, None], torch.zeros_like(labels)[:, None, None]
        )
        return F.cross_entropy(logits, pixel_class)
    raise ValueError(f"unknown mask loss {kind!r}; valid: {', '.join(MASK_LOSSES)}")


def mask_probabilities(mask_logits: Tensor, labels: list[Tensor], kind: str) -> list[Tensor]:
    """Per image ``[D, 1, M, M]`` fp32 probabilities of each detection's class (``labels``):
    ``"sigmoid"``: torchvision's ``maskrcnn_inference`` (sigmoid of that class's channel);
    ``"softmax"``: that class's softmax probability over the C+1 channels."""
    if kind == "sigmoid":
        return list(maskrcnn_inference(mask_logits.float(), labels))
    probs = mask_logits.float().softmax(dim=1)
    flat = torch.cat(labels)
    picked = probs[torch.arange(flat.numel(), device=flat.device), flat][:, None]
    return list(picked.split([len(lab) for lab in labels], dim=0))
