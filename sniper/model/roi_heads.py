"""SNIPER's detection head: torchvision's RoIHeads with the chip's label rules (paper §3.4).

Training, per chip (``select_training_samples``):
1. proposals whose size sqrt(area) lies outside the chip's ``valid_range`` are dropped, then
   the best ``proposals_per_image`` (300) are kept;
2. the valid GT boxes are appended;
3. a RoI is foreground iff IoU > ``fg_iou_thresh`` (strictly) with a GT, else background. With
   ``roi_match="all_gt"`` (default, the paper: "a large ground-truth box which is cropped could
   generate a valid proposal") that is any non-crowd GT in the chip, valid or not (the invalid
   ones are the ignore boxes with ``ignore_labels`` > 0); with ``"valid_gt"`` only the valid GT.
   A crowd box (``ignore_labels`` 0, the default) never makes a RoI foreground;
4. a background RoI with IoU > ``ignore_iou_thresh`` against an ignore box is excluded (-1);
5. all remaining RoIs are used (the paper), or torchvision's balanced sampler picks
   ``batch_size_per_image`` of them.
Softmax cross entropy; class-agnostic or per-class box regression; fp32 predictor and losses.

Inference (``postprocess_detections``): every (RoI, class) with score > ``score_thresh``, then
torchvision's per-class NMS at ``nms_thresh`` and the best ``detections_per_img``; with
``raw=True`` neither of the two (all candidates by decreasing score), for callers that filter
and merge themselves (the pyramid Predictor: valid range first, then one Soft-NMS over scales).
With ``valid_ranges`` (one ``[lo, hi)`` per image, sqrt-area input px) candidates outside the
image's range are dropped first, before NMS and top-k.

Masks (optional, paper Table 3; ``sniper.model.mask_heads``): torchvision's mask RoIAlign,
MaskRCNNHeads and MaskRCNNPredictor. Trained on the foreground RoIs matched to a VALID GT only
(a RoI foreground against an invalid GT under ``all_gt`` has no mask); the target is that GT's
box-local mask resampled onto the RoI (``project_box_masks``). Inference computes masks for the
final detections only (so not with ``raw=True``: filter with ``valid_ranges`` instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from sniper.errors import SniperError
from sniper.model import mask_heads
from sniper.model.rpn import ignored_by

__all__ = ["ROI_MATCH", "SniperBoxPredictor", "SniperRoIHeads", "StrictMatcher"]

# Which GT a RoI may be foreground against: every non-crowd GT in the chip, or only the valid GT.
ROI_MATCH = ("all_gt", "valid_gt")


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
    BalancedPositiveNegativeSampler with ``positive_fraction``. ``roi_match``: ``"all_gt"``
    (the paper) or ``"valid_gt"``, see the module docstring.

    Masks: give ``mask_roi_pool``, ``mask_head`` and ``mask_predictor`` (torchvision's
    MultiScaleRoIAlign, MaskRCNNHeads, a MaskRCNNPredictor with C+1 outputs), ``mask_loss``
    (``"sigmoid"`` | ``"softmax"``), ``mask_loss_weight`` and ``mask_target_size`` (the side S
    of the box-local GT masks the targets carry); at inference a mask model returns at most
    ``mask_detections_per_img`` detections per image (each one costs a mask-head evaluation).
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
        roi_match: str = "all_gt",
        mask_roi_pool: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
        mask_loss: str = "sigmoid",
        mask_loss_weight: float = 1.0,
        mask_target_size: int = 56,
        mask_detections_per_img: int | None = None,
    ) -> None:
        if roi_match not in ROI_MATCH:
            raise ValueError(f"unknown roi_match {roi_match!r}; valid: {', '.join(ROI_MATCH)}")
        if mask_loss not in mask_heads.MASK_LOSSES:
            raise ValueError(f"unknown mask_loss {mask_loss!r}; valid: {', '.join(mask_heads.MASK_LOSSES)}")
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
            mask_roi_pool=mask_roi_pool,
            mask_head=mask_head,
            mask_predictor=mask_predictor,
        )
        self.proposal_matcher = StrictMatcher(fg_iou_thresh)
        self.ignore_iou_thresh = ignore_iou_thresh
        self.sample_all = batch_size_per_image is None
        self.proposals_per_image = proposals_per_image
        self.class_agnostic = box_predictor.class_agnostic
        self.roi_match = roi_match
        self.mask_loss = mask_loss
        self.mask_loss_weight = mask_loss_weight
        self.mask_target_size = mask_target_size
        # Each detection costs one mask-head evaluation (4 convs at 14x14 by default): a mask model
        # keeps at most this many per image pass (the best by score; None: detections_per_img).
        self.mask_detections_per_img = mask_detections_per_img

    # ------------------------------------------------------------ training samples

    @staticmethod
    def in_valid_range(boxes: Tensor, valid_range: Tensor) -> Tensor:
        """Bool mask: lo <= sqrt(w*h) < hi (chip px; hi may be inf): half-open, as ``Scale`` and the
        chip engine, so a box exactly at a boundary belongs to one scale only."""
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        size = (wh[:, 0] * wh[:, 1]).sqrt()
        return (size >= valid_range[0]) & (size < valid_range[1])

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

    def match_targets(
        self, targets: list[dict[str, Tensor]], dtype: torch.dtype
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image the GT boxes and labels RoIs are matched against: the valid GT, then (with
        ``all_gt``) the ignore boxes of non-crowd GT (``ignore_labels`` > 0)."""
        boxes = [t["boxes"].to(dtype) for t in targets]
        labels = [t["labels"] for t in targets]
        if self.roi_match == "valid_gt":
            return boxes, labels
        for i, t in enumerate(targets):
            ignore_labels = t.get("ignore_labels")
            if ignore_labels is None:
                continue
            invalid = ignore_labels > 0
            boxes[i] = torch.cat([boxes[i], t["ignore_boxes"][invalid].to(dtype)])
            labels[i] = torch.cat([labels[i], ignore_labels[invalid].to(labels[i].dtype)])
        return boxes, labels

    def subsample(self, labels: list[Tensor]) -> list[Tensor]:
        if self.sample_all:
            return [torch.where(lab >= 0)[0] for lab in labels]
        return super().subsample(labels)

    def select_training_samples(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]] | None
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        self.check_targets(targets)
        assert targets is not None
        valid_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
        gt_boxes, gt_labels = self.match_targets(targets, proposals[0].dtype)

        proposals = self.add_gt_proposals(self.filter_proposals(proposals, targets), valid_boxes)
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
        raw: bool = False,
        valid_ranges: list[Tensor] | None = None,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per image (boxes, scores, labels 1..C), clipped, score > ``score_thresh``, non-empty;
        with ``valid_ranges`` only those whose sqrt(area) lies in the image's ``[lo, hi)``; then
        per-class NMS and the top ``detections_per_img`` unless ``raw``."""
        if self.class_agnostic:  # the same box for every class
            box_regression = box_regression.repeat(1, class_logits.shape[-1])
        if not raw and valid_ranges is None:
            return super().postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        if valid_ranges is not None and len(valid_ranges) != len(proposals):
            raise SniperError(
                f"valid_ranges: one [lo, hi) per image ({len(proposals)}), got {len(valid_ranges)}"
            )
        # torchvision's steps without NMS and top-k, then sorted by score (as NMS leaves them)
        num_classes = class_logits.shape[-1]
        per_image = [len(p) for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals).split(per_image, 0)
        pred_scores = F.softmax(class_logits, -1).split(per_image, 0)
        all_boxes, all_scores, all_labels = [], [], []
        for i, (boxes, scores, shape) in enumerate(zip(pred_boxes, pred_scores, image_shapes)):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)[:, 1:].reshape(-1, 4)
            labels = torch.arange(1, num_classes, device=scores.device).expand(len(scores), -1).reshape(-1)
            scores = scores[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
            if valid_ranges is not None:
                vr = torch.as_tensor(valid_ranges[i], dtype=boxes.dtype, device=boxes.device).reshape(2)
                keep = keep[self.in_valid_range(boxes[keep], vr)]
            if raw:
                keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices]
            else:  # torchvision's per-class NMS (sorted by decreasing score) and top-k
                keep = keep[box_ops.batched_nms(boxes[keep], scores[keep], labels[keep], self.nms_thresh)]
                keep = keep[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels

    def predict(
        self, features: dict[str, Tensor], proposals: list[Tensor], pool_shapes: list[tuple[int, int]]
    ):
        """Class logits and box deltas (fp32) of every RoI."""
        x = self.box_head(self.box_roi_pool(features, proposals, pool_shapes))
        return self.box_predictor(x)

    # ------------------------------------------------------------ masks

    def predict_masks(
        self, features: dict[str, Tensor], boxes: list[Tensor], pool_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """Mask logits ``[K, C+1, M, M]`` (fp32) of the boxes of all images, concatenated."""
        x = self.mask_head(self.mask_roi_pool(features, boxes, pool_shapes))
        return self.mask_predictor(x)

    def mask_training_samples(
        self,
        proposals: list[Tensor],
        matched_idxs: list[Tensor],
        labels: list[Tensor],
        targets: list[dict[str, Tensor]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per image the RoIs that train the mask, their valid GT index and their class: the
        foreground RoIs (of ``select_training_samples``) matched to a VALID GT. ``match_targets``
        puts the valid GT first, so a match index >= #valid is an invalid GT (``all_gt``): that
        RoI trains the classifier and box regressor but has no mask; so does a RoI of a valid GT
        whose ``mask_valid`` is False (no usable segmentation in the annotation)."""
        rois, gt_idx, classes = [], [], []
        for p, m, lab, t in zip(proposals, matched_idxs, labels, targets):
            n_valid = t["boxes"].shape[0]
            fg = (lab > 0) & (m < n_valid)
            mask_valid = t.get("mask_valid")
            if mask_valid is not None and n_valid:
                fg &= mask_valid[m.clamp(0, n_valid - 1)]
            keep = torch.where(fg)[0]
            rois.append(p[keep])
            gt_idx.append(m[keep])
            classes.append(lab[keep])
        return rois, gt_idx, classes

    def mask_branch_loss(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        matched_idxs: list[Tensor],
        labels: list[Tensor],
        targets: list[dict[str, Tensor]],
        pool_shapes: list[tuple[int, int]],
    ) -> Tensor:
        """``mask_loss_weight`` x the mean per-pixel mask loss over the mask-training RoIs (fp32;
        zero but connected to every mask parameter when there is none)."""
        rois, gt_idx, classes = self.mask_training_samples(proposals, matched_idxs, labels, targets)
        mask_logits = self.predict_masks(features, rois, pool_shapes)
        size = mask_logits.shape[-1]
        mask_targets = [
            mask_heads.project_box_masks(t["masks"], t["boxes"], r, i, size)
            for t, r, i in zip(targets, rois, gt_idx)
        ]
        loss = mask_heads.mask_loss(mask_logits, torch.cat(classes), torch.cat(mask_targets), self.mask_loss)
        return loss * self.mask_loss_weight

    # ------------------------------------------------------------ forward

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
        pool_shapes: list[tuple[int, int]] | None = None,
        raw_detections: bool = False,
        valid_ranges: list[Tensor] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Losses in training, else detections clipped to ``image_shapes`` (``raw_detections``:
        without NMS and top-k; ``valid_ranges``: only candidates in the image's sqrt-area range,
        before NMS; see ``postprocess_detections``), with ``"masks"`` ``[D, 1, M, M]`` (the
        detection class's probability) when the mask branch is on. ``pool_shapes`` (the padded
        batch size) fixes the RoIAlign scale; defaults to ``image_shapes``."""
        pool_shapes = pool_shapes or image_shapes
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )
            class_logits, box_regression = self.predict(features, proposals, pool_shapes)
            loss_classifier, loss_box_reg = self.box_loss(
                class_logits, box_regression, labels, regression_targets
            )
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            if self.has_mask():
                assert targets is not None
                losses["loss_mask"] = self.mask_branch_loss(
                    features, proposals, matched_idxs, labels, targets, pool_shapes
                )
            return [], losses
        if raw_detections and self.has_mask():
            raise SniperError(
                "raw_detections=True is not available with model.masks: masks are computed for the "
                "final detections only; pass valid_ranges (one [lo, hi) per image) instead, which "
                "drops out-of-range candidates before the NMS and top-k"
            )
        class_logits, box_regression = self.predict(features, proposals, pool_shapes)
        boxes, scores, labels = self.postprocess_detections(
            class_logits,
            box_regression,
            proposals,
            image_shapes,
            raw=raw_detections,
            valid_ranges=valid_ranges,
        )
        if self.has_mask() and self.mask_detections_per_img is not None:  # sorted by score after NMS
            cap = self.mask_detections_per_img
            boxes, scores, labels = (
                [b[:cap] for b in boxes],
                [s[:cap] for s in scores],
                [lab[:cap] for lab in labels],
            )
        result = [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)]
        if self.has_mask():
            mask_logits = self.predict_masks(features, boxes, pool_shapes)
            for r, m in zip(result, mask_heads.mask_probabilities(mask_logits, labels, self.mask_loss)):
                r["masks"] = m
        return result, {}
