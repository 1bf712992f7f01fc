"""SNIPER's detection head: torchvision's RoIHeads with the chip's label rules (paper §3.4).

Training, per chip (``select_training_samples``):
1. proposals whose size sqrt(area) lies outside the chip's ``valid_range`` are dropped, then
   the best ``proposals_per_image`` (300) are kept;
2. the valid GT boxes are appended;
3. a RoI is foreground iff IoU > ``fg_iou_thresh`` (strictly) with a valid GT, else background;
4. a background RoI with IoU > ``ignore_iou_thresh`` against an ignore box is excluded (-1);
5. all remaining RoIs are used (the paper), or torchvision's balanced sampler picks
   ``batch_size_per_image`` of them.
Softmax cross entropy; class-agnostic or per-class box regression; fp32 predictor and losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads

from sniper.model.rpn import ignored_by

__all__ = ["SniperBoxPredictor", "SniperRoIHeads", "StrictMatcher"]


class StrictMatcher(det_utils.Matcher):
    """Matcher whose foreground is IoU > ``iou_thresh`` (strictly); everything else background.

    torchvision's Matcher takes IoU >= high as a match (Fast R-CNN's rule is > 0.5), so an IoU
    equal to the threshold is moved to background here. (A "next float" threshold would not
    do: torch compares float32 IoU with the scalar rounded to float32.)
    """

    def __init__(self, iou_thresh: float) -> None:
        super().__init__(iou_thresh, iou_thresh, allow_low_quality_matches=False)

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        matches = super().__call__(match_quality_matrix)
        matches[match_quality_matrix.amax(dim=0) <= self.high_threshold] = self.BELOW_LOW_THRESHOLD
        return matches


class SniperBoxPredictor(FastRCNNPredictor):
    """FastRCNNPredictor run in fp32; ``class_agnostic`` predicts one box per RoI."""

    def __init__(self, in_channels: int, num_classes: int, class_agnostic: bool) -> None:
        super().__init__(in_channels, num_classes)
        self.class_agnostic = class_agnostic
        if class_agnostic:
            self.bbox_pred = nn.Linear(in_channels, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class SniperRoIHeads(RoIHeads):
    """RoIHeads with SNIPER's label assignment (see module docstring).

    ``batch_size_per_image=None`` uses every RoI (the paper); an int uses torchvision's
    BalancedPositiveNegativeSampler with ``positive_fraction``.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: SniperBoxPredictor,
        *,
        fg_iou_thresh: float,
        ignore_iou_thresh: float,
        batch_size_per_image: int | None,
        positive_fraction: float,
        proposals_per_image: int,
        bbox_reg_weights: tuple[float, float, float, float],
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
    ) -> None:
        super().__init__(
            box_roi_pool,
            box_head,
            box_predictor,
            fg_iou_thresh,
            fg_iou_thresh,
            batch_size_per_image or 1,
            positive_fraction,
            bbox_reg_weights,
            score_thresh,
            nms_thresh,
            detections_per_img,
        )
        self.proposal_matcher = StrictMatcher(fg_iou_thresh)
        self.ignore_iou_thresh = ignore_iou_thresh
        self.sample_all = batch_size_per_image is None
        self.proposals_per_image = proposals_per_image
        self.class_agnostic = box_predictor.class_agnostic

    # ------------------------------------------------------------ training samples

    @staticmethod
    def in_valid_range(boxes: Tensor, valid_range: Tensor) -> Tensor:
        """Bool mask: lo <= sqrt(w*h) <= hi (chip px; hi may be inf)."""
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        size = (wh[:, 0] * wh[:, 1]).sqrt()
        return (size >= valid_range[0]) & (size <= valid_range[1])

    def filter_proposals(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> list[Tensor]:
        """Drop out-of-range proposals, then keep the best ``proposals_per_image`` (they come sorted)."""
        return [
            p[self.in_valid_range(p, t["valid_range"])][: self.proposals_per_image]
            for p, t in zip(proposals, targets)
        ]

    def mark_ignored(
        self, proposals: list[Tensor], labels: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> None:
        """Background RoIs overlapping an ignore box by IoU > ``ignore_iou_thresh`` become -1 (in place)."""
        for p, lab, t in zip(proposals, labels, targets):
            lab[(lab == 0) & ignored_by(p, t["ignore_boxes"], self.ignore_iou_thresh)] = -1

    def subsample(self, labels: list[Tensor]) -> list[Tensor]:
        if self.sample_all:
            return [torch.where(lab >= 0)[0] for lab in labels]
        return super().subsample(labels)

    def select_training_samples(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]] | None
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        self.check_targets(targets)
        assert targets is not None
        gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]

        proposals = self.add_gt_proposals(self.filter_proposals(proposals, targets), gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        self.mark_ignored(proposals, labels, targets)
        sampled_inds = self.subsample(labels)

        matched_gt_boxes = []
        for i, inds in enumerate(sampled_inds):
            proposals[i], labels[i], matched_idxs[i] = (
                proposals[i][inds],
                labels[i][inds],
                matched_idxs[i][inds],
            )
            gt = gt_boxes[i] if gt_boxes[i].numel() else proposals[i].new_zeros((1, 4))
            matched_gt_boxes.append(gt[matched_idxs[i]])
        regression_targets = self.box_coder.encode(matched_gt_boxes, proposals)
        return proposals, matched_idxs, labels, regression_targets

    # ------------------------------------------------------------ losses and outputs

    def box_loss(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        labels: list[Tensor],
        regression_targets: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """torchvision's fastrcnn_loss (mean CE, box loss summed over fg / #RoIs), class-agnostic
        aware and finite (zero, still connected to the graph) when a batch has no RoI."""
        labels_all = torch.cat(labels)
        num = labels_all.numel()
        if num == 0:
            zero = class_logits.sum() * 0.0 + box_regression.sum() * 0.0
            return zero, zero.clone()
        targets_all = torch.cat(regression_targets)
        classification_loss = F.cross_entropy(class_logits, labels_all)
        pos = torch.where(labels_all > 0)[0]
        if self.class_agnostic:
            pred = box_regression[pos]
        else:
            pred = box_regression.reshape(num, -1, 4)[pos, labels_all[pos]]
        box_loss = F.smooth_l1_loss(pred, targets_all[pos], beta=1 / 9, reduction="sum") / num
        return classification_loss, box_loss

    def postprocess_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        if self.class_agnostic:  # the same box for every class
            box_regression = box_regression.repeat(1, class_logits.shape[-1])
        return super().postprocess_detections(class_logits, box_regression, proposals, image_shapes)

    def predict(
        self, features: dict[str, Tensor], proposals: list[Tensor], pool_shapes: list[tuple[int, int]]
    ):
        """Class logits and box deltas (fp32) of every RoI."""
        x = self.box_head(self.box_roi_pool(features, proposals, pool_shapes))
        return self.box_predictor(x)

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
        pool_shapes: list[tuple[int, int]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Losses in training, else detections clipped to ``image_shapes``. ``pool_shapes``
        (the padded batch size) fixes the RoIAlign scale; defaults to ``image_shapes``."""
        pool_shapes = pool_shapes or image_shapes
        if self.training:
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
            class_logits, box_regression = self.predict(features, proposals, pool_shapes)
            loss_classifier, loss_box_reg = self.box_loss(
                class_logits, box_regression, labels, regression_targets
            )
            return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        class_logits, box_regression = self.predict(features, proposals, pool_shapes)
        boxes, scores, labels = self.postprocess_detections(
            class_logits, box_regression, proposals, image_shapes
        )
        return [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)], {}
