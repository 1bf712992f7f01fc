"""``build_model(cfg, num_classes)``: the one place where ModelConfig becomes modules."""

from __future__ import annotations

import torch
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops import MultiScaleRoIAlign

from sniper.config import ModelConfig
from sniper.errors import SniperError
from sniper.model.backbones import SniperBackbone, build_backbone
from sniper.model.detector import SniperFasterRCNN
from sniper.model.mask_heads import MASK_LOSSES, SniperMaskPredictor
from sniper.model.roi_heads import ROI_MATCH, SniperBoxPredictor, SniperRoIHeads
from sniper.model.rpn import Fp32AnchorGenerator, SniperRPN, SniperRPNHead

__all__ = ["INFERENCE_MODEL_KEYS", "build_anchor_generator", "build_mask_branch", "build_model", "set_inference_settings"]

# Model settings that shape a trained model's detections but no weight: the ones
# ``set_inference_settings`` applies, and that ``sniper predict --set model.KEY=...`` may change.
INFERENCE_MODEL_KEYS = ("box_score_thresh", "box_nms_thresh", "box_detections_per_img", "mask_detections_per_img")


def build_anchor_generator(cfg: ModelConfig, backbone: SniperBackbone) -> Fp32AnchorGenerator:
    """All sizes x ratios on a single map; with several maps (FPN) the sizes are split evenly
    over the levels, finest first."""
    sizes = [float(s) for s in cfg.anchor_sizes]
    ratios = tuple(float(r) for r in cfg.aspect_ratios)
    levels = len(backbone.rpn_features)
    if not sizes or not ratios:
        raise SniperError("model.anchor_sizes and model.aspect_ratios must not be empty")
    if len(sizes) % levels:
        raise SniperError(
            f"model.anchor_sizes has {len(sizes)} sizes; {cfg.backbone} has {levels} RPN levels, "
            f"so give a multiple of {levels} (one group per level, finest first)"
        )
    per = len(sizes) // levels
    size_groups = tuple(tuple(sizes[i * per : (i + 1) * per]) for i in range(levels))
    return Fp32AnchorGenerator(size_groups, (ratios,) * levels)


def build_mask_branch(cfg: ModelConfig, backbone: SniperBackbone, num_classes: int) -> dict:
    """``cfg.masks``: torchvision's Mask R-CNN pieces on the head features, as SniperRoIHeads
    keyword arguments: a ``mask_pool_size`` RoIAlign, MaskRCNNHeads (``mask_head_layers``) and
    a MaskRCNNPredictor (2x upsampling, ``num_classes + 1`` logits for either loss)."""
    if cfg.mask_loss not in MASK_LOSSES:
        raise SniperError(f"model.mask_loss must be one of {', '.join(MASK_LOSSES)}, got {cfg.mask_loss!r}")
    if not cfg.mask_head_layers or min(cfg.mask_head_layers) < 1:
        raise SniperError(
            f"model.mask_head_layers must be a non-empty list of widths >= 1, got {cfg.mask_head_layers}"
        )
    if cfg.mask_pool_size < 1 or cfg.mask_target_size < 1:
        raise SniperError(
            f"model.mask_pool_size ({cfg.mask_pool_size}) and model.mask_target_size "
            f"({cfg.mask_target_size}) must be >= 1"
        )
    if not cfg.mask_loss_weight >= 0:
        raise SniperError(f"model.mask_loss_weight must be >= 0, got {cfg.mask_loss_weight}")
    width = cfg.mask_head_layers[-1]
    return dict(
        mask_roi_pool=MultiScaleRoIAlign(
            backbone.head_features, output_size=cfg.mask_pool_size, sampling_ratio=cfg.roi_sampling_ratio
        ),
        mask_head=MaskRCNNHeads(backbone.head_in_channels, list(cfg.mask_head_layers), dilation=1),
        mask_predictor=SniperMaskPredictor(width, width, num_classes + 1),
        mask_loss=cfg.mask_loss,
        mask_loss_weight=cfg.mask_loss_weight,
        mask_target_size=cfg.mask_target_size,
        mask_detections_per_img=cfg.mask_detections_per_img,
    )


def build_model(cfg: ModelConfig, num_classes: int) -> SniperFasterRCNN:
    """SNIPER Faster R-CNN for ``num_classes`` object classes (background excluded)."""
    if num_classes < 1:
        raise SniperError(f"num_classes must be >= 1, got {num_classes}")
    if cfg.roi_match not in ROI_MATCH:
        raise SniperError(f"model.roi_match must be one of {', '.join(ROI_MATCH)}, got {cfg.roi_match!r}")
    backbone = build_backbone(cfg)
    anchors = build_anchor_generator(cfg, backbone)
    rpn = SniperRPN(
        anchors,
        SniperRPNHead(backbone.rpn_in_channels, cfg.rpn_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=cfg.rpn_fg_iou_thresh,
        bg_iou_thresh=cfg.rpn_bg_iou_thresh,
        batch_size_per_image=cfg.rpn_batch_size_per_image,
        positive_fraction=cfg.rpn_positive_fraction,
        pre_nms_top_n={"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
        # training keeps every NMS survivor: the head drops out-of-range ones, then keeps the top n
        post_nms_top_n={"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
        nms_thresh=cfg.rpn_nms_thresh,
        ignore_iou_thresh=cfg.rpn_ignore_iou_thresh,
    )
    pool = MultiScaleRoIAlign(backbone.head_features, output_size=7, sampling_ratio=cfg.roi_sampling_ratio)
    box_head = TwoMLPHead(backbone.head_in_channels * 7 * 7, cfg.fc_dim)
    box_predictor = SniperBoxPredictor(cfg.fc_dim, num_classes + 1, cfg.class_agnostic_bbox_reg)
    # built after every box module: a box model's initial weights do not depend on cfg.masks
    masks = build_mask_branch(cfg, backbone, num_classes) if cfg.masks else {}
    roi_heads = SniperRoIHeads(
        pool,
        box_head,
        box_predictor,
        fg_iou_thresh=cfg.box_fg_iou_thresh,
        ignore_iou_thresh=cfg.box_ignore_iou_thresh,
        batch_size_per_image=cfg.box_batch_size_per_image,
        positive_fraction=cfg.box_positive_fraction,
        proposals_per_image=cfg.rpn_post_nms_top_n_train,
        bbox_reg_weights=tuple(cfg.bbox_reg_weights),
        score_thresh=cfg.box_score_thresh,
        nms_thresh=cfg.box_nms_thresh,
        detections_per_img=cfg.box_detections_per_img,
        roi_match=cfg.roi_match,
        **masks,
    )
    model = SniperFasterRCNN(backbone, rpn, roi_heads, num_classes, norm=cfg.norm)
    if cfg.channels_last:
        model.channels_last = True
        model.backbone.to(memory_format=torch.channels_last)
    set_inference_settings(model, cfg)  # checks them, for predict-time overrides too
    return model


def set_inference_settings(model: torch.nn.Module, cfg: ModelConfig) -> None:
    """Applies ``INFERENCE_MODEL_KEYS`` of ``cfg`` to a built ``model``; a model without
    ``roi_heads`` (a stand-in of another kind) is left as it is."""
    if cfg.mask_detections_per_img < 1 or cfg.box_detections_per_img < 1:
        raise SniperError(
            f"model.box_detections_per_img ({cfg.box_detections_per_img}) and model.mask_detections_per_img "
            f"({cfg.mask_detections_per_img}) must be >= 1"
        )
    heads = getattr(model, "roi_heads", None)
    if heads is None:
        return
    heads.score_thresh = cfg.box_score_thresh
    heads.nms_thresh = cfg.box_nms_thresh
    heads.detections_per_img = cfg.box_detections_per_img
    heads.mask_detections_per_img = cfg.mask_detections_per_img
