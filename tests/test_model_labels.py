"""SNIPER label assignment on hand-made boxes with known answers (RPN and detection head)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from sniper.model.roi_heads import SniperBoxPredictor, SniperRoIHeads, StrictMatcher
from sniper.model.rpn import Fp32AnchorGenerator, SniperRPN, SniperRPNHead, ignored_by

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


def sampled_by_rpn_loss(rpn: SniperRPN, labels: list[torch.Tensor]) -> torch.Tensor:
    """The anchors our ``compute_loss`` samples: those whose objectness gets a gradient."""
    n = sum(len(lab) for lab in labels)
    objectness = torch.zeros(n, 1, requires_grad=True)
    loss, _ = rpn.compute_loss(objectness, torch.zeros(n, 4), labels, [torch.zeros(n, 4)])
    loss.backward()
    inds = torch.where(objectness.grad.flatten() != 0)[0]
    # BCE at logit 0 is log 2 per sampled anchor, averaged over the sampled ones
    assert loss.item() == pytest.approx(math.log(2))
    assert torch.allclose(objectness.grad.flatten()[inds].abs(), torch.tensor(0.5 / max(len(inds), 1)))
    return inds


def test_rpn_samples_256_at_most_half_positive_and_never_ignored():
    """Our path: the labels SniperRPN assigns, then what its loss samples from them."""
    torch.manual_seed(0)
    gt = [[0, 0, 10, 10], [50, 0, 60, 10]]
    ignore = [[100, 100, 110, 110], [50, 0, 60, 11]]  # the 2nd covers GT 2 (IoU 0.91)
    anchors = torch.cat(
        [
            T([[0.0, 0, 10, 10]]).repeat(400, 1),  # positive
            T([[300.0, 300, 310, 310]]).repeat(500, 1),  # negative
            T([[100.0, 100, 110, 110]]).repeat(300, 1),  # on the 1st ignore box
            T([[50.0, 0, 60, 10]]).repeat(50, 1),  # positive (GT 2) but ignored
        ]
    )
    rpn = make_rpn()
    labels, _ = rpn.assign_targets_to_anchors([anchors], [target(gt, [1, 2], ignore=ignore)])
    assert labels[0].tolist() == [1] * 400 + [0] * 500 + [-1] * 350
    inds = sampled_by_rpn_loss(rpn, labels)
    assert len(inds) == 256 and int((inds < 400).sum()) == 128  # at most half positive
    assert not (inds >= 900).any()  # never an ignored anchor
    # few positives: the rest are negatives, still 256, still none ignored
    labels, _ = rpn.assign_targets_to_anchors([anchors[397:]], [target(gt, [1, 2], ignore=ignore)])
    inds = sampled_by_rpn_loss(rpn, labels)
    assert len(inds) == 256 and int((inds < 3).sum()) == 3 and not (inds >= 503).any()
    # a chip with only ignored anchors samples nothing (and the loss stays finite)
    labels, _ = rpn.assign_targets_to_anchors([anchors[900:]], [target(gt, [1, 2], ignore=ignore)])
    n = len(labels[0])
    obj, box = rpn.compute_loss(torch.zeros(n, 1), torch.zeros(n, 4), labels, [torch.zeros(n, 4)])
    assert obj.item() == 0 and box.item() == 0


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


def test_head_valid_range_is_half_open_like_scale():
    from sniper.scales import Scale

    # sqrt areas exactly 15 (lo: kept) and 50 (hi: dropped, it belongs to the next scale)
    proposals = T([[0, 0, 15, 15], [0, 0, 50, 50], [0, 0, 49.9, 50]])
    props, _, _, _ = make_heads().select_training_samples([proposals], [target(valid_range=(15.0, 50.0))])
    assert props[0][:, 2].tolist() == pytest.approx([15.0, 49.9])
    s = Scale(factor=1.0, valid_range=(15.0, 50.0))
    assert s.in_range(np.array([15.0, 49.9, 50.0])).tolist() == [True, True, False]


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


# ---------------------------------------------------------------- RPN: plumbing with known numbers


def test_ignored_by_keeps_the_device_and_compares_in_the_boxes_dtype():
    meta = torch.zeros(3, 4, device="meta")
    assert ignored_by(meta, torch.zeros(0, 4, device="meta"), 0.3).device.type == "meta"
    assert ignored_by(torch.zeros(0, 4), T([[0.0, 0, 10, 10]]), 0.3).tolist() == []
    # the ignore box is taken at the anchors' precision: 10 - 1e-7 is 10.0 in float32, where the
    # IoU is exactly 0.3 (not above); in float64 it would be just above 0.3
    anchor = T([[0.0, 0, 10, 3]])
    ignore = torch.tensor([[0.0, 0, 10, 10 - 1e-7]], dtype=torch.float64)
    assert ignored_by(anchor, ignore, 0.3).tolist() == [False]
    assert ignored_by(anchor.double(), ignore, 0.3).tolist() == [True]


def test_rpn_defaults_to_the_papers_ignore_threshold():
    rpn = SniperRPN(
        Fp32AnchorGenerator(((32.0,),), ((1.0,),)),
        SniperRPNHead(4, 4, 1),
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.4,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n={"training": 10, "testing": 10},
        post_nms_top_n={"training": 10, "testing": 10},
        nms_thresh=0.7,
    )
    assert rpn.ignore_iou_thresh == 0.3


def test_rpn_loss_values_by_hand():
    rpn = make_rpn()
    # one positive and one negative anchor, both sampled; logits 0: BCE ln 2 each, mean ln 2
    labels = [T([1.0, 0.0])]
    deltas = T([[1.0, 0, 0, 0], [5.0, 5, 5, 5]])  # the negative's deltas never count
    obj, box = rpn.compute_loss(torch.zeros(2, 1), deltas, labels, [torch.zeros(2, 4)])
    assert obj.item() == pytest.approx(math.log(2))
    # smooth-L1 (beta 1/9) of |1|: 1 - 1/18, summed over positives, divided by the 2 sampled
    assert box.item() == pytest.approx((1 - 1 / 18) / 2)
    # a single sampled anchor: divided by 1
    obj, box = rpn.compute_loss(torch.zeros(1, 1), T([[0.5, 0, 0, 0]]), [T([1.0])], [torch.zeros(1, 4)])
    assert obj.item() == pytest.approx(math.log(2))
    assert box.item() == pytest.approx(0.5 - 1 / 18)


def test_rpn_head_shapes_init_and_fp32_outputs():
    torch.manual_seed(0)
    head = SniperRPNHead(3, 64, 2)
    conv = head.conv[0][0]
    assert tuple(conv.weight.shape) == (64, 3, 3, 3) and conv.padding == (1, 1)
    assert tuple(head.cls_logits.weight.shape) == (2, 64, 1, 1)
    assert tuple(head.bbox_pred.weight.shape) == (8, 64, 1, 1)
    for layer in (conv, head.cls_logits, head.bbox_pred):
        assert 0.007 < layer.weight.std().item() < 0.013 and not layer.bias.any()
    x = torch.randn(1, 3, 5, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, reg = head([x, x[..., :3, :4]])
    assert [tuple(t.shape) for t in logits] == [(1, 2, 5, 7), (1, 2, 3, 4)]
    assert [tuple(t.shape) for t in reg] == [(1, 8, 5, 7), (1, 8, 3, 4)]
    assert all(t.dtype == torch.float32 for t in logits + reg)
    t = torch.relu(conv(x))  # what the head computes, layer by layer
    assert torch.allclose(logits[0], head.cls_logits(t), atol=2e-2)


def test_anchor_generator_is_fp32_on_the_grid():
    from torchvision.models.detection.image_list import ImageList

    gen = Fp32AnchorGenerator(((32.0,),), ((1.0,),))
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    (anchors,) = gen(images, [torch.zeros(1, 4, 8, 8, dtype=torch.bfloat16)])
    assert anchors.dtype == torch.float32 and anchors.shape == (64, 4)
    # stride 64 / 8 = 8; a 32 px square centred on each cell corner, row-major (x fastest)
    assert anchors[0].tolist() == [-16, -16, 16, 16]
    assert anchors[1].tolist() == [-8, -16, 24, 16]
    assert anchors[8].tolist() == [-16, -8, 16, 24]


def test_rpn_forward_training_and_inference():
    from torchvision.models.detection.image_list import ImageList

    torch.manual_seed(0)
    rpn = make_rpn()
    for m in (rpn.head.conv[0][0], rpn.head.cls_logits, rpn.head.bbox_pred):
        torch.nn.init.zeros_(m.weight)  # objectness logit 0 everywhere, zero deltas
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    feats = {"0": torch.zeros(1, 4, 8, 8)}
    t = target([[8.0, 8, 40, 40]], [1])
    rpn.train()
    boxes, scores, losses = rpn(images, feats, [t], need_proposals=False)
    assert boxes == [] and scores == []
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    assert losses["loss_objectness"].item() == pytest.approx(math.log(2), rel=1e-5)  # every logit 0
    assert losses["loss_rpn_box_reg"].item() > 0  # only the anchor equal to the GT has zero targets
    boxes, scores, losses = rpn(images, feats, [t])
    assert len(boxes) == 1 and len(boxes[0]) > 0 and losses
    rpn.eval()
    boxes, scores, losses = rpn(images, feats, [t])
    assert losses == {}
    assert torch.allclose(scores[0], torch.full_like(scores[0], 0.5))  # sigmoid(0)
    assert (boxes[0] >= 0).all() and (boxes[0] <= 64).all() and len(boxes[0]) <= 100
    # zero deltas: each proposal is an anchor clipped to the image
    (anchors,) = rpn.anchor_generator(images, list(feats.values()))
    clipped = anchors.clamp(0, 64)
    assert all((clipped == b).all(dim=1).any() for b in boxes[0])


# ---------------------------------------------------------------- head: plumbing with known numbers


def test_match_targets_casts_and_appends_per_image():
    heads = make_heads()
    plain = {
        k: (v.double() if v.is_floating_point() else v) for k, v in target([[0, 0, 10, 10]], [2]).items()
    }
    chip = target([[0, 0, 10, 10]], [2], ignore=[[20, 20, 30, 30], [40, 40, 50, 50]], ignore_labels=[1, 0])
    boxes, labels = heads.match_targets([plain, chip], torch.float32)
    assert [b.dtype for b in boxes] == [torch.float32, torch.float32]
    assert boxes[0].tolist() == [[0, 0, 10, 10]] and labels[0].tolist() == [2]
    # the second image (after one without ignore_labels) still gets its non-crowd invalid GT
    assert boxes[1].tolist() == [[0, 0, 10, 10], [20, 20, 30, 30]] and labels[1].tolist() == [2, 1]
    chip64 = {k: (v.double() if v.is_floating_point() else v) for k, v in chip.items()}
    boxes, _ = heads.match_targets([chip64], torch.float32)
    assert boxes[0].dtype == torch.float32


def test_box_loss_counts_class_1_foreground():
    labels = [T([1, 0])]
    reg_t = [T([[1.0, 1, 1, 1], [0, 0, 0, 0]])]
    _, box = make_heads(class_agnostic=True).box_loss(torch.zeros(2, 3), torch.zeros(2, 4), labels, reg_t)
    assert box.item() == pytest.approx(4 * (1 - 0.5 / 9) / 2)


def test_raw_detections_with_more_rois_than_classes_and_tied_scores():
    heads = make_heads().eval()  # 3 classes (background + 2), class-agnostic boxes
    n = 1500
    proposals = [
        torch.stack(
            [torch.arange(n) * 1.0, torch.zeros(n), torch.arange(n) + 10.0, torch.full((n,), 10.0)], 1
        )
    ]
    logits = torch.zeros(n, 3)  # every probability 1/3: all 2n candidates tie
    boxes, scores, labels = heads.postprocess_detections(
        logits, torch.zeros(n, 4), proposals, [(10, 2000)], raw=True
    )
    assert scores[0].shape == (2 * n,) and torch.allclose(scores[0], torch.full((2 * n,), 1 / 3))
    # ties keep the (RoI, class) order: RoI 0 class 1, RoI 0 class 2, RoI 1 class 1, ...
    assert labels[0].tolist() == [1, 2] * n
    assert torch.equal(boxes[0][::2], proposals[0]) and torch.equal(boxes[0][1::2], proposals[0])
    # two images, split back per image
    p2 = [T([[0.0, 0, 10, 10]]), T([[0.0, 0, 5, 5], [5, 5, 9, 9]])]
    probs = T([[0.1, 0.9, 0.0], [0.2, 0.0, 0.8], [0.5, 0.3, 0.2]])
    boxes, scores, labels = heads.postprocess_detections(
        probs.clamp(min=1e-12).log(), torch.zeros(3, 4), p2, [(20, 20), (20, 20)], raw=True
    )
    assert scores[0].tolist() == pytest.approx([0.9]) and labels[0].tolist() == [1]
    assert scores[1].tolist() == pytest.approx([0.8, 0.3, 0.2]) and labels[1].tolist() == [2, 1, 2]
    assert boxes[1].tolist() == [[0, 0, 5, 5], [5, 5, 9, 9], [5, 5, 9, 9]]


def test_box_predictor_is_fp32_and_class_agnostic_predicts_one_box():
    torch.manual_seed(0)
    agn, per = SniperBoxPredictor(8, 3, True), SniperBoxPredictor(8, 3, False)
    assert tuple(agn.bbox_pred.weight.shape) == (4, 8) and tuple(per.bbox_pred.weight.shape) == (12, 8)
    assert not agn.cls_score.bias.any() and not agn.bbox_pred.bias.any()
    assert agn.bbox_pred.weight.std().item() < 0.002 < agn.cls_score.weight.std().item() < 0.02
    x = torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cls, box = agn(x)
    assert cls.dtype == box.dtype == torch.float32 and cls.shape == (5, 3) and box.shape == (5, 4)
    assert torch.allclose(cls, agn.cls_score(x)) and torch.allclose(box, agn.bbox_pred(x))


def test_head_forward_training_losses_and_eval_detections():
    torch.manual_seed(0)
    heads = make_heads()
    feats = {"0": torch.randn(1, 4, 16, 16)}
    proposals = [T([[0.0, 0, 10, 6], [20, 20, 30, 30], [0, 0, 10, 10]])]
    heads.train()
    dets, losses = heads(feats, proposals, [(32, 32)], [target([[0, 0, 10, 10]], [2])])
    assert dets == [] and set(losses) == {"loss_classifier", "loss_box_reg"}
    # near-zero initial logits over 3 classes: cross entropy about ln 3
    assert losses["loss_classifier"].item() == pytest.approx(math.log(3), abs=0.05)
    heads.eval()
    heads.score_thresh = 0.0
    dets, losses = heads(feats, proposals, [(32, 32)])
    assert losses == {} and set(dets[0]) == {"boxes", "labels", "scores"}
    assert set(dets[0]["labels"].tolist()) <= {1, 2} and len(dets[0]["boxes"]) > 0
    raw, _ = heads(feats, proposals, [(32, 32)], raw_detections=True)
    assert len(raw[0]["scores"]) == 6  # 3 RoIs x 2 classes, nothing removed
    # pool_shapes fixes RoIAlign's scale: the same features read as a 64 x 64 batch differ
    fresh = make_heads().eval()  # RoIAlign caches its scale on the first call
    fresh.load_state_dict(heads.state_dict())
    fresh.score_thresh = 0.0
    other, _ = fresh(feats, proposals, [(32, 32)], pool_shapes=[(64, 64)], raw_detections=True)
    assert not torch.equal(other[0]["scores"].sort().values, raw[0]["scores"].sort().values)


def test_anchor_generator_stays_fp32_and_on_the_features_device():
    from torchvision.models.detection.image_list import ImageList

    gen = Fp32AnchorGenerator(((32.0,),), ((1.0,),))
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
        (anchors,) = gen(images, [torch.zeros(1, 4, 8, 8)])
    finally:
        torch.set_default_dtype(old)
    assert anchors.dtype == torch.float32
    images = ImageList(torch.zeros(1, 3, 64, 64, device="meta"), [(64, 64)])
    (anchors,) = gen(images, [torch.zeros(1, 4, 8, 8, device="meta", dtype=torch.bfloat16)])
    assert anchors.device.type == "meta" and anchors.dtype == torch.float32 and anchors.shape == (64, 4)


def test_head_forward_applies_nms_and_top_k_unless_raw():
    torch.manual_seed(0)
    heads = make_heads().eval()
    heads.score_thresh, heads.detections_per_img = 0.0, 1
    feats = {"0": torch.randn(1, 4, 16, 16)}
    proposals = [T([[0.0, 0, 10, 6], [20, 20, 30, 30], [0, 0, 10, 10]])]
    dets, _ = heads(feats, proposals, [(32, 32)])
    assert len(dets[0]["scores"]) == 1  # top 1 after NMS
    raw, _ = heads(feats, proposals, [(32, 32)], raw_detections=True)
    assert len(raw[0]["scores"]) == 6
