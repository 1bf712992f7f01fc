"""SniperFasterRCNN: normalise -> backbone -> RPN -> RoI heads, on chips as they come (no resize)."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from sniper.errors import SniperError
from sniper.model.backbones import SniperBackbone
from sniper.model.roi_heads import SniperRoIHeads
from sniper.model.rpn import SniperRPN

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SniperFasterRCNN"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SniperFasterRCNN(nn.Module):
    """Faster R-CNN trained on chips, optionally with a Mask R-CNN branch (see ``docs/model.md``).

    ``forward(images, targets=None, image_sizes=None, *, raw_detections=False, valid_ranges=None)``:
      - images: float ``[B, 3, H, W]`` in [0, 1], RGB; never resized, zero-padded on the
        right/bottom to the backbone's ``size_divisible`` (coordinates unchanged).
      - image_sizes: ``[(h, w)]`` unpadded extent per image (default: the full tensor).
      - training: ``targets`` (one dict per image: ``boxes``, ``labels``, ``ignore_boxes``,
        ``ignore_labels``, ``valid_range``, and ``masks`` with ``model.masks``) -> dict of
        losses (``loss_mask`` too with masks); only the RPN's when ``rpn_only``.
        ``ignore_labels`` (optional, default 0): per ignore box the class 1..C of an invalid
        non-crowd GT (the head may match it, ``roi_match: all_gt``), 0 for crowd.
        ``masks``: uint8/bool/float ``[N, S, S]`` in [0, 1], S = ``mask_target_size`` (56), one
        per valid GT box in the order of ``boxes``: the object's binary mask sampled over ITS
        OWN box ``boxes[j]`` = (x1, y1, x2, y2) chip px, w = x2 - x1, h = y2 - y1: pixel (r, c)
        is the object at chip point ``(x1 + (c + 0.5) * w / S, y1 + (r + 0.5) * h / S)``
        (box-local: a chip's masks cost N * S * S bytes, whatever the chip size). Required when
        the mask branch trains (masks on, not ``rpn_only``) and the chip has boxes.
      - eval: list of ``{"boxes", "scores", "labels"}`` in input px, clipped to image_sizes,
        after the head's per-class NMS and top ``box_detections_per_img``; with
        ``raw_detections=True`` every (RoI, class) above ``box_score_thresh`` instead, by
        decreasing score, for callers that filter and merge themselves (the pyramid Predictor).
        ``valid_ranges`` (eval only; one ``(lo, hi)`` per image, sqrt-area input px, hi inf ok): only
        candidates with lo <= sqrt(area) < hi, dropped BEFORE the NMS and top-k (and before
        the raw output). With masks on each dict also has ``"masks"`` ``[D, 1, M, M]`` float
        probabilities (M = 2 * ``mask_pool_size``) of the detection's class over its box;
        ``raw_detections=True`` is then an error (masks are computed for the final detections
        only): use ``valid_ranges``.
    """

    # Predictor: this model can return detections before NMS (``raw_detections=True``).
    supports_raw_detections = True

    def __init__(
        self,
        backbone: SniperBackbone,
        rpn: SniperRPN,
        roi_heads: SniperRoIHeads,
        num_classes: int,
        norm: str = "bn",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = num_classes
        self.norm = norm  # "sync_bn": the trainer converts with backbones.convert_sync_batchnorm
        self.rpn_only = False
        self.channels_last = False  # set by build_model with the backbone's memory format
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def has_masks(self) -> bool:
        """The mask branch is on: targets need ``masks``, eval dicts carry ``"masks"``, and
        ``raw_detections`` is refused (filter with ``valid_ranges``)."""
        return self.roi_heads.has_mask()

    # ------------------------------------------------------------ inputs

    def preprocess(self, images: Tensor, image_sizes: list[tuple[int, int]] | None) -> ImageList:
        """Normalise with ImageNet mean/std and pad; an ImageList with the unpadded sizes."""
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise SniperError(
                f"images must be a float tensor [B, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        b, _, h, w = images.shape
        if image_sizes is None:
            image_sizes = [(h, w)] * b
        image_sizes = [(int(s[0]), int(s[1])) for s in image_sizes]
        if len(image_sizes) != b or any(not (0 < sh <= h and 0 < sw <= w) for sh, sw in image_sizes):
            raise SniperError(f"image_sizes {image_sizes} do not fit a batch of {b} images of {h}x{w}")
        x = (images - self.image_mean.to(images.dtype)) / self.image_std.to(images.dtype)
        d = self.backbone.size_divisible
        pad_h, pad_w = math.ceil(h / d) * d - h, math.ceil(w / d) * d - w
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return ImageList(x, image_sizes)

    def prepare_targets(
        self, targets: list[dict[str, Tensor]] | None, batch: int, device
    ) -> list[dict[str, Tensor]]:
        """Targets as fp32/int64 tensors on ``device`` with defaults for the optional keys; bad
        boxes, labels or masks raise a SniperError naming the image and the box. ``masks`` are
        passed on (fp32) only when the model has the mask branch."""
        if targets is None or len(targets) != batch:
            raise SniperError(f"training needs one target dict per image ({batch}), got {targets!r:.80}")
        out = []
        for i, t in enumerate(targets):
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
            labels = torch.as_tensor(t["labels"], dtype=torch.int64, device=device).reshape(-1)
            ignore = t.get("ignore_boxes")
            ignore = (
                torch.zeros((0, 4), device=device)
                if ignore is None
                else torch.as_tensor(ignore, dtype=torch.float32, device=device).reshape(-1, 4)
            )
            ignore_labels = t.get("ignore_labels")
            ignore_labels = (
                torch.zeros(ignore.shape[0], dtype=torch.int64, device=device)
                if ignore_labels is None
                else torch.as_tensor(ignore_labels, dtype=torch.int64, device=device).reshape(-1)
            )
            vr = t.get("valid_range")
            vr = (
                torch.tensor([0.0, math.inf], device=device)
                if vr is None
                else torch.as_tensor(vr, dtype=torch.float32, device=device).reshape(2)
            )
            if labels.numel() != boxes.shape[0]:
                raise SniperError(f"target {i}: {boxes.shape[0]} boxes but {labels.numel()} labels")
            bad = ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
            if bad.any():
                j = int(torch.where(bad)[0][0])
                raise SniperError(
                    f"target {i}: box {j} {boxes[j].tolist()} is not finite with x2 > x1, y2 > y1"
                )
            if labels.numel() and (labels.min() < 1 or labels.max() > self.num_classes):
                raise SniperError(
                    f"target {i}: labels must be in 1..{self.num_classes}, got {labels.tolist()[:10]}"
                )
            if ignore_labels.numel() != ignore.shape[0]:
                raise SniperError(
                    f"target {i}: {ignore.shape[0]} ignore boxes but {ignore_labels.numel()} ignore_labels"
                )
            if ignore_labels.numel() and (ignore_labels.min() < 0 or ignore_labels.max() > self.num_classes):
                raise SniperError(
                    f"target {i}: ignore_labels must be in 0..{self.num_classes} (0 = crowd), "
                    f"got {ignore_labels.tolist()[:10]}"
                )
            prepared = {
                "boxes": boxes,
                "labels": labels,
                "ignore_boxes": ignore,
                "ignore_labels": ignore_labels,
                "valid_range": vr,
            }
            if self.has_masks:
                prepared["masks"] = self.prepare_masks(i, t.get("masks"), boxes.shape[0], device)
                # False: the box's annotation has no usable segmentation; its mask is not trained
                mv = t.get("mask_valid")
                mv = (
                    torch.ones(boxes.shape[0], dtype=torch.bool, device=device)
                    if mv is None
                    else torch.as_tensor(mv, device=device).to(torch.bool).reshape(-1)
                )
                if mv.numel() != boxes.shape[0]:
                    raise SniperError(f"target {i}: {boxes.shape[0]} boxes but {mv.numel()} mask_valid flags")
                prepared["mask_valid"] = mv
            out.append(prepared)
        return out

    def prepare_masks(self, i: int, masks, n: int, device) -> Tensor:
        """Target ``i``'s box-local masks as fp32 ``[n, S, S]`` (see the class docstring)."""
        s = self.roi_heads.mask_target_size
        if masks is None:
            if n and not self.rpn_only:
                raise SniperError(
                    f"target {i}: model.masks is on, so 'masks' [N, {s}, {s}] (one box-local mask per box, "
                    f"model.mask_target_size = {s}) is required; the chip has {n} boxes and no 'masks'"
                )
            return torch.zeros((n, s, s), device=device)
        masks = torch.as_tensor(masks, device=device)
        if not (masks.is_floating_point() or masks.dtype in (torch.uint8, torch.bool)):
            raise SniperError(f"target {i}: masks must be uint8, bool or float, got {masks.dtype}")
        if masks.numel() == 0 and n == 0:
            return torch.zeros((0, s, s), device=device)
        if tuple(masks.shape) != (n, s, s):
            raise SniperError(
                f"target {i}: masks must be [N, S, S] = [{n}, {s}, {s}] (one box-local mask per box, "
                f"model.mask_target_size = {s}), got {tuple(masks.shape)}"
            )
        masks = masks.float()
        if n and not (torch.isfinite(masks).all() and masks.min() >= 0 and masks.max() <= 1):
            raise SniperError(f"target {i}: mask values must lie in [0, 1] (binary masks as 0/1, not 0/255)")
        return masks

    # ------------------------------------------------------------ forward

    def forward(
        self,
        images: Tensor,
        targets: list[dict[str, Tensor]] | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
        *,
        raw_detections: bool = False,
        valid_ranges: list[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        image_list = self.preprocess(images, image_sizes)
        if self.training:
            targets = self.prepare_targets(targets, images.shape[0], images.device)
            rpn_only = self.rpn_only
        else:
            targets, rpn_only = None, False
        feats = self.backbone(image_list.tensors, with_head=not rpn_only)
        rpn_feats = OrderedDict((k, feats[k]) for k in self.backbone.rpn_features)
        proposals, _, losses = self.rpn(image_list, rpn_feats, targets, need_proposals=not rpn_only)
        if rpn_only:
            return losses
        head_feats = OrderedDict((k, feats[k]) for k in self.backbone.head_features)
        pool_shapes = [tuple(image_list.tensors.shape[-2:])] * images.shape[0]
        detections, head_losses = self.roi_heads(
            head_feats,
            proposals,
            image_list.image_sizes,
            targets,
            pool_shapes,
            raw_detections=raw_detections,
            valid_ranges=None if self.training else valid_ranges,
        )
        if self.training:
            return {**losses, **head_losses}
        return detections

    @torch.no_grad()
    def proposals(
        self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """RPN proposals after NMS per image: ``(boxes [K, 4] input px, objectness probabilities [K])``,
        best first. Uses the test settings (pre/post NMS top-n) in eval mode."""
        image_list = self.preprocess(images, image_sizes)
        feats = self.backbone(image_list.tensors, with_head=False)
        rpn_feats = OrderedDict((k, feats[k]) for k in self.backbone.rpn_features)
        boxes, scores, _ = self.rpn(image_list, rpn_feats, None, need_proposals=True)
        return list(zip(boxes, scores))
