"""SNIPER's RPN: torchvision's RegionProposalNetwork plus the invalid-GT (ignore) rule.

Label rule (paper §3.4, as in SNIP): valid GT assign labels, invalid GT invalidate anchors.
An anchor with IoU > ``ignore_iou_thresh`` against any ignore box is -1 (never sampled), even
if a valid GT would make it positive; the rest is torchvision's: IoU >= fg positive (plus each
GT's best anchors), IoU < bg negative, in between -1. Anchors, decoding and losses are fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.ops import Conv2dNormActivation, box_iou

__all__ = ["Fp32AnchorGenerator", "SniperRPN", "SniperRPNHead", "ignored_by"]


def ignored_by(boxes: Tensor, ignore_boxes: Tensor, iou_thresh: float) -> Tensor:
    """Bool mask over ``boxes``: IoU > ``iou_thresh`` with at least one ignore box."""
    if ignore_boxes.numel() == 0 or boxes.numel() == 0:
        return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    return box_iou(ignore_boxes.to(boxes.dtype), boxes).amax(dim=0) > iou_thresh


class Fp32AnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator, always in fp32 (bf16 cannot hold chip px coordinates)."""

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        shapes = [
            torch.empty((0, 0, *f.shape[-2:]), dtype=torch.float32, device=f.device) for f in feature_maps
        ]
        return super().forward(image_list, shapes)


class SniperRPNHead(RPNHead):
    """RPNHead whose 3x3 conv maps ``in_channels`` to ``channels`` (the paper's 256/512-d RPN),
    with the objectness and box layers run in fp32 (as in the paper's mixed precision)."""

    def __init__(self, in_channels: int, channels: int, num_anchors: int) -> None:
        super().__init__(channels, num_anchors)
        self.conv = nn.Sequential(Conv2dNormActivation(in_channels, channels, kernel_size=3, norm_layer=None))
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, bbox_reg = [], []
        for feature in x:
            t = self.conv(feature)
            with torch.autocast(t.device.type, enabled=False):
                t = t.float()
                logits.append(self.cls_logits(t))
                bbox_reg.append(self.bbox_pred(t))
        return logits, bbox_reg


class SniperRPN(RegionProposalNetwork):
    """RegionProposalNetwork with ``ignore_boxes`` in the targets (see module docstring).

    ``forward`` returns ``(boxes, scores, losses)``: per image the proposals after NMS (sorted
    by score) and their objectness probabilities; proposals are skipped when not needed, and
    losses are computed in training mode when targets are given.
    """

    def __init__(self, *args, ignore_iou_thresh: float = 0.3, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ignore_iou_thresh = ignore_iou_thresh

    def assign_targets_to_anchors(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        for labels_per_image, anchors_per_image, t in zip(labels, anchors, targets):
            labels_per_image[ignored_by(anchors_per_image, t["ignore_boxes"], self.ignore_iou_thresh)] = -1.0
        return labels, matched_gt_boxes

    def compute_loss(
        self,
        objectness: Tensor,
        pred_bbox_deltas: Tensor,
        labels: list[Tensor],
        regression_targets: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """torchvision's loss (256 sampled per image, box loss over positives), in fp32 and
        finite when nothing could be sampled."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(sampled_pos))[0]
        inds = torch.cat([pos, torch.where(torch.cat(sampled_neg))[0]])
        num = max(inds.numel(), 1)
        objectness = objectness.flatten().float()
        labels_all = torch.cat(labels)
        box_loss = (
            F.smooth_l1_loss(
                pred_bbox_deltas[pos].float(), torch.cat(regression_targets)[pos], beta=1 / 9, reduction="sum"
            )
            / num
        )
        objectness_loss = (
            F.binary_cross_entropy_with_logits(objectness[inds], labels_all[inds], reduction="sum") / num
        )
        return objectness_loss, box_loss

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        need_proposals: bool = True,
    ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        feature_list = list(features.values())
        objectness, deltas = self.head(feature_list)
        anchors = self.anchor_generator(images, feature_list)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)

        boxes: list[Tensor] = []
        scores: list[Tensor] = []
        if need_proposals:
            # Faster R-CNN does not backprop through the proposals
            proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
            boxes, scores = self.filter_proposals(
                proposals, objectness, images.image_sizes, num_anchors_per_level
            )

        losses: dict[str, Tensor] = {}
        if self.training and targets is not None:
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_box = self.compute_loss(objectness, deltas, labels, regression_targets)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
        return boxes, scores, losses
