"""SNIPER label assignment on hand-made boxes with known answers (RPN and detection head)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from sniper.model.roi_heads import SniperBoxPredictor, SniperRoIHeads, StrictMatcher
from sniper.model.rpn import Fp32AnchorGenerator, SniperRPN, SniperRPNHead

T = torch.tensor



def make_rpn(batch_size_per_image: int = 256) -> SniperRPN:
    return SniperRPN(
        Fp32AnchorGenerator(((32.0,),), ((1.0,),)),
        SniperRPNHead(4, 4, 1),
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.4,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=0.5,
        pre_nms_top_n={"training": 100, "testing": 100},
        post_nms_top_n={"training": 100, "testing": 100},
        nms_thresh=0.7,
        ignore_iou_thresh=0.3,
    )


def make_heads(
    batch_size_per_image: int | None = None, class_agnostic: bool = True, n: int = 300, **kw
) -> SniperRoIHeads:
    return SniperRoIHeads(
        MultiScaleRoIAlign(["0"], 7, 2),
        TwoMLPHead(4 * 49, 8),
        SniperBoxPredictor(8, 3, class_agnostic),
        fg_iou_thresh=0.5,
        ignore_iou_thresh=0.5,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=0.25,
        proposals_per_image=n,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        score_thresh=0.001,
        nms_thresh=0.5,
        detections_per_img=100,
        **kw,
    )


def target(
    boxes=(), labels=(), ignore=(), valid_range=(0.0, math.inf), ignore_labels=None
) -> dict[str, torch.Tensor]:
    t = {
        "boxes": T(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": T(labels, dtype=torch.int64),
        "ignore_boxes": T(ignore, dtype=torch.float32).reshape(-1, 4),
        "valid_range": T(valid_range, dtype=torch.float32),
    }
    if ignore_labels is not None:  # class of an invalid non-crowd GT, 0 for crowd
        t["ignore_labels"] = T(ignore_labels, dtype=torch.int64)
    return t


# ---------------------------------------------------------------- RPN

# GT [0,0,10,10] (area 100). Each anchor's IoU with it is written next to it.
ANCHORS = T(
    [
        [0, 0, 10, 10],  # 1.0  -> positive
        [0, 0, 10, 5],  # 0.5  -> positive (>= 0.5)
        [0, 0, 10, 4.5],  # 0.45 -> between -> -1
        [0, 0, 10, 4],  # 0.4  -> not < 0.4 -> between -> -1
        [0, 0, 10, 3.9],  # 0.39 -> negative
        [50, 50, 60, 60],  # 0.0  -> negative
    ]
)


def test_rpn_thresholds_on_valid_gt():
    labels, matched = make_rpn().assign_targets_to_anchors([ANCHORS], [target([[0, 0, 10, 10]], [1])])
    assert labels[0].tolist() == [1, 1, -1, -1, 0, 0]
    assert torch.equal(matched[0][0], T([0.0, 0, 10, 10]))


def test_rpn_best_anchor_of_each_gt_is_positive_even_below_threshold():
    gt = [[100, 100, 110, 130]]  # best anchor [100,100,110,110]: IoU 1/3
    anchors = T([[100, 100, 110, 110], [100, 120, 110, 125], [0, 0, 5, 5]])
    labels, _ = make_rpn().assign_targets_to_anchors([anchors], [target(gt, [2])])
    assert labels[0].tolist() == [1, 0, 0]


def test_rpn_ignore_boxes_invalidate_anchors_above_0_3_even_positives():
    # ignore box [100,100,110,110]: anchor IoU 0.4 -> -1, IoU exactly 0.3 -> stays negative
    anchors = torch.cat(
        [
            ANCHORS,
            T([[100, 100, 110, 104], [100, 100, 110, 103], [0, 0, 10, 10]]),
        ]  # last: positive AND ignored
    )
    t = target(
        [[0, 0, 10, 10]], [1], ignore=[[100, 100, 110, 110], [0, 0, 10, 12]]
    )  # 2nd: IoU 0.83 w/ anchor 0
    labels, _ = make_rpn().assign_targets_to_anchors([anchors], [t])
    # anchors 0 and 8 overlap the ignore box [0,0,10,12] by 0.83 -> ignored; anchor 1 ([0,0,10,5]) 0.42 -> ignored
    assert labels[0].tolist() == [-1, -1, -1, -1, -1, 0, -1, 0, -1]


def test_rpn_chip_without_gt_all_non_ignored_anchors_are_negative():
    anchors = T([[0, 0, 10, 10], [100, 100, 110, 104], [100, 100, 110, 103]])
    labels, _ = make_rpn().assign_targets_to_anchors([anchors], [target(ignore=[[100, 100, 110, 110]])])
    assert labels[0].tolist() == [0, -1, 0]
    labels, _ = make_rpn().assign_targets_to_anchors([anchors], [target()])
    assert labels[0].tolist() == [0, 0, 0]


def test_rpn_samples_256_at_most_half_positive_and_never_ignored():
    torch.manual_seed(0)
    labels = [torch.cat([torch.ones(400), torch.zeros(500), -torch.ones(300)])]
    rpn = make_rpn()
    pos, neg = rpn.fg_bg_sampler(labels)
    assert int(pos[0].sum()) == 128 and int(neg[0].sum()) == 128
    assert not (pos[0].bool() | neg[0].bool())[900:].any()
    # few positives: the rest are negatives, still 256
    pos, neg = rpn.fg_bg_sampler([torch.cat([torch.ones(3), torch.zeros(500)])])
    assert int(pos[0].sum()) == 3 and int(neg[0].sum()) == 253


def test_rpn_loss_is_finite_when_nothing_can_be_sampled():
    rpn = make_rpn()
    obj, box = rpn.compute_loss(torch.zeros(3, 1), torch.zeros(3, 4), [-torch.ones(3)], [torch.zeros(3, 4)])
    assert obj.item() == 0 and box.item() == 0


# ---------------------------------------------------------------- detection head


def test_strict_matcher_iou_exactly_half_is_background():
    m = StrictMatcher(0.5)
    q = T([[0.5, 0.51, 0.2], [0.1, 0.5, 0.9]])
    assert m(q).tolist() == [-1, 0, 1]


def test_head_labels_fg_strictly_above_half_ignore_and_gt_appended():
    heads = make_heads()
    gt = [[0, 0, 10, 10]]
    proposals = T(
        [
            [0, 0, 10, 6],  # IoU 0.6 -> fg (label 2)
            [0, 0, 10, 5],  # IoU 0.5 -> background (not > 0.5)
            [100, 100, 110, 106],  # bg, IoU 0.6 with ignore box -> excluded
            [100, 100, 110, 105],  # bg, IoU 0.5 with ignore box -> kept as background
            [50, 50, 60, 60],  # bg
        ]
    )
    t = target(gt, [2], ignore=[[100, 100, 110, 110]])
    props, matched, labels, reg = heads.select_training_samples([proposals], [t])
    expected = T([[0, 0, 10, 6], [0, 0, 10, 5], [100, 100, 110, 105], [50, 50, 60, 60], [0, 0, 10, 10]])
    assert torch.equal(props[0], expected)  # GT appended last, the ignored RoI gone
    assert labels[0].tolist() == [2, 0, 0, 0, 2]
    assert torch.allclose(reg[0][4], torch.zeros(4))  # the GT itself: zero deltas
    assert reg[0][0][3].item() == pytest.approx(5 * math.log(10 / 6), rel=1e-5)  # dh with weight 5


def test_head_ignore_does_not_override_foreground():
    heads = make_heads()
    t = target([[0, 0, 10, 10]], [1], ignore=[[0, 0, 10, 10]])
    _, _, labels, _ = heads.select_training_samples([T([[0, 0, 10, 9]])], [t])
    assert labels[0].tolist() == [1, 1]


def test_head_drops_proposals_outside_valid_range_then_keeps_top_n():
    heads = make_heads(n=2)
    # sizes (sqrt area): 10, 40, 20, 100, 30; valid range [15, 50] keeps 40, 20, 30 -> top 2: 40, 20
    proposals = T([[0, 0, 10, 10], [0, 0, 40, 40], [0, 0, 20, 20], [0, 0, 100, 100], [0, 0, 30, 30]])
    t = target(valid_range=(15.0, 50.0))
    props, _, labels, _ = heads.select_training_samples([proposals], [t])
    assert torch.equal(props[0], T([[0, 0, 40, 40], [0, 0, 20, 20]]))
    assert labels[0].tolist() == [0, 0]
    # open upper end, and a valid GT is appended even when its size is out of range
    t = target([[0, 0, 5, 5]], [1], valid_range=(25.0, math.inf))
    props, _, labels, _ = make_heads().select_training_samples([proposals], [t])
    assert torch.equal(props[0][:, 2], T([40.0, 100, 30, 5]))
    assert labels[0].tolist() == [0, 0, 0, 1]


def test_head_uses_all_rois_by_default_and_balanced_sampler_when_asked():
    torch.manual_seed(0)
    gt = [[0, 0, 10, 10]]
    proposals = torch.cat([T([[0, 0, 10, 9]] * 10), T([[50, 50, 60, 60]] * 90)])
    _, _, labels, _ = make_heads().select_training_samples([proposals], [target(gt, [1])])
    assert labels[0].numel() == 101 and int((labels[0] > 0).sum()) == 11
    _, _, labels, _ = make_heads(batch_size_per_image=16).select_training_samples(
        [proposals], [target(gt, [1])]
    )
    assert labels[0].numel() == 16 and int((labels[0] > 0).sum()) == 4  # 25% of 16


def test_head_negative_chip_losses_finite_and_box_loss_zero():
    heads = make_heads()
    _, _, labels, reg = heads.select_training_samples([T([[0, 0, 10, 10], [5, 5, 20, 20]])], [target()])
    assert labels[0].tolist() == [0, 0]
    logits = torch.randn(2, 3, requires_grad=True)
    cls, box = heads.box_loss(logits, torch.randn(2, 4), labels, reg)
    assert torch.isfinite(cls) and box.item() == 0
    # nothing at all (all proposals out of range, no GT): zero losses, still differentiable
    _, _, labels, reg = heads.select_training_samples(
        [T([[0, 0, 10, 10]])], [target(valid_range=(50.0, 60.0))]
    )
    cls, box = heads.box_loss(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, 4), labels, reg)
    assert cls.item() == 0 and box.item() == 0 and cls.requires_grad


def test_class_specific_and_agnostic_box_loss_pick_the_right_deltas():
    labels = [T([2, 0])]
    reg_t = [T([[1.0, 1, 1, 1], [0, 0, 0, 0]])]
    logits = torch.zeros(2, 3)
    per_class = torch.zeros(2, 12)
    per_class[0, 8:12] = 1.0  # class 2's deltas == target -> zero loss
    _, box = make_heads(class_agnostic=False).box_loss(logits, per_class, labels, reg_t)
    assert box.item() == 0
    _, box = make_heads(class_agnostic=True).box_loss(logits, torch.ones(2, 4), labels, reg_t)
    assert box.item() == 0
    _, box = make_heads(class_agnostic=True).box_loss(logits, torch.zeros(2, 4), labels, reg_t)
    assert box.item() == pytest.approx(4 * (1 - 0.5 / 9) / 2)  # smooth-L1 beta 1/9, / #RoIs


def test_head_raw_detections_skip_nms_and_top_k():
    heads = make_heads().eval()
    heads.detections_per_img = 1
    proposals = [T([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60]])]  # the first two: IoU 0.9
    probs = T([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.3, 0.0005, 0.6995]])  # background, class 1, class 2
    logits, deltas = probs.clamp(min=1e-12).log(), torch.zeros(3, 4)
    boxes, scores, labels = heads.postprocess_detections(logits, deltas, proposals, [(100, 100)])
    assert scores[0].tolist() == pytest.approx([0.9]) and labels[0].tolist() == [1]  # NMS + top 1
    boxes, scores, labels = heads.postprocess_detections(logits, deltas, proposals, [(100, 100)], raw=True)
    # every (RoI, class) above score_thresh (0.001), by decreasing score; no NMS, no cut
    assert scores[0].tolist() == pytest.approx([0.9, 0.8, 0.6995])
    assert labels[0].tolist() == [1, 1, 2]
    assert torch.equal(boxes[0], T([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60]]))


# ---------------------------------------------------------------- head: invalid GT (paper §3.4)

# A chip with valid range [5, 50] (sqrt area, chip px): a valid GT (class 2), a truncated GT
# (class 1, invalid here), a crowd box, and a large out-of-range GT (class 1, invalid here).
INVALID_GT_CHIP = dict(
    boxes=[[0, 0, 10, 10]],
    labels=[2],
    ignore=[[100, 100, 110, 110], [200, 200, 210, 210], [300, 300, 400, 400]],
    ignore_labels=[1, 0, 1],
    valid_range=(5.0, 50.0),
)
INVALID_GT_ROIS = T(
    [
        [0, 0, 10, 6],  # IoU 0.6 with the valid GT -> class 2
        [100, 100, 110, 106],  # IoU 0.6 with the truncated GT, in range (7.7 px)
        [200, 200, 210, 206],  # IoU 0.6 with the crowd box -> never foreground: ignored
        [300, 300, 400, 390],  # IoU 0.9 with the out-of-range GT, but itself out of range (95 px): dropped
        [50, 50, 60, 60],  # background
    ]
)


def test_head_roi_on_an_invalid_gt_is_foreground_by_default():
    """'A large ground-truth box which is cropped could generate a valid proposal': a RoI is
    foreground against any non-crowd GT in the chip; out-of-range RoIs are dropped as before."""
    heads = make_heads()
    props, _, labels, reg = heads.select_training_samples([INVALID_GT_ROIS], [target(**INVALID_GT_CHIP)])
    expected = T([[0, 0, 10, 6], [100, 100, 110, 106], [50, 50, 60, 60], [0, 0, 10, 10]])
    assert torch.equal(props[0], expected)  # valid GT appended, out-of-range and crowd-ignored RoIs gone
    assert labels[0].tolist() == [2, 1, 0, 2]
    # regressed towards the truncated GT box (as it is clipped to the chip)
    assert reg[0][1].tolist() == pytest.approx([0, 10 * 2 / 6, 0, 5 * math.log(10 / 6)], rel=1e-5, abs=1e-6)
    assert heads.roi_match == "all_gt"


def test_head_valid_gt_matching_keeps_the_old_rule():
    heads = make_heads(roi_match="valid_gt")
    props, _, labels, _ = heads.select_training_samples([INVALID_GT_ROIS], [target(**INVALID_GT_CHIP)])
    # the RoI on the truncated GT is background overlapping an ignore box: left out, like the crowd one
    assert torch.equal(props[0], T([[0, 0, 10, 6], [50, 50, 60, 60], [0, 0, 10, 10]]))
    assert labels[0].tolist() == [2, 0, 2]
    with pytest.raises(ValueError, match="roi_match"):
        make_heads(roi_match="any")


def test_head_crowd_never_makes_a_roi_foreground():
    heads = make_heads()
    crowd = [[0, 0, 10, 10]]
    rois = [T([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60]])]
    for t in (target(ignore=crowd, ignore_labels=[0]), target(ignore=crowd)):  # 0 = crowd, the default
        _, _, labels, _ = heads.select_training_samples(rois, [t])
        assert labels[0].tolist() == [0]  # the two on the crowd box ignored, the other background
    # a chip without valid GT still learns from a truncated GT
    _, _, labels, reg = heads.select_training_samples(rois, [target(ignore=crowd, ignore_labels=[2])])
    assert labels[0].tolist() == [2, 2, 0]
    assert torch.isfinite(reg[0]).all()
