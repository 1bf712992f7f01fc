"""Wiring: what ModelConfig says is what the model from ``build_model`` does.

Every setting in ``WIRED`` differs from both the package default and torchvision's, so a build
that dropped one (the module kept its own default) fails here. Each is checked on the built
module and by behaviour on hand-made boxes through the real built RPN / RoI heads.

Then one chip, with and without an ignore box, through the real model's training forward: the
ignore box has to reach the RPN's anchor labels and the RoI heads' samples (``prepare_targets``
-> ``rpn`` / ``roi_heads``); the head's class of an invalid GT (``ignore_labels``) too.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torchvision.ops import box_iou

from sniper.config import ModelConfig
from sniper.model import SniperFasterRCNN, build_model

T = torch.tensor
NUM_CLASSES = 2
SMALL = dict(pretrained=False, backbone="mobilenet_v2", channels_last=False, head_channels=16)

# Non-default values for every setting the RPN / RoI heads take from the config.
WIRED = dict(
    anchor_sizes=[24.0, 48.0],
    aspect_ratios=[0.5, 1.0],
    rpn_channels=24,
    fc_dim=20,
    roi_sampling_ratio=3,
    rpn_pre_nms_top_n_train=40,
    rpn_post_nms_top_n_train=30,
    rpn_pre_nms_top_n_test=50,
    rpn_post_nms_top_n_test=20,
    rpn_nms_thresh=0.66,
    rpn_batch_size_per_image=77,
    rpn_positive_fraction=0.37,
    rpn_fg_iou_thresh=0.61,
    rpn_bg_iou_thresh=0.29,
    rpn_ignore_iou_thresh=0.23,
    box_fg_iou_thresh=0.55,
    box_ignore_iou_thresh=0.45,
    roi_match="valid_gt",
    box_batch_size_per_image=48,
    box_positive_fraction=0.3,
    box_score_thresh=0.011,
    box_nms_thresh=0.44,
    box_detections_per_img=123,
    class_agnostic_bbox_reg=False,
    bbox_reg_weights=[8.0, 9.0, 4.0, 3.0],
)
# torchvision's fasterrcnn_* defaults (what a module left to itself would use)
TORCHVISION = dict(
    rpn_pre_nms_top_n_train=2000,
    rpn_post_nms_top_n_train=2000,
    rpn_pre_nms_top_n_test=1000,
    rpn_post_nms_top_n_test=1000,
    rpn_nms_thresh=0.7,
    rpn_batch_size_per_image=256,
    rpn_positive_fraction=0.5,
    rpn_fg_iou_thresh=0.7,
    rpn_bg_iou_thresh=0.3,
    box_fg_iou_thresh=0.5,
    box_batch_size_per_image=512,
    box_positive_fraction=0.25,
    box_score_thresh=0.05,
    box_nms_thresh=0.5,
    box_detections_per_img=100,
    bbox_reg_weights=[10.0, 10.0, 5.0, 5.0],
)


@pytest.fixture(scope="module")
def wired() -> tuple[ModelConfig, SniperFasterRCNN]:
    cfg = ModelConfig(**SMALL, **WIRED)
    torch.manual_seed(0)
    return cfg, build_model(cfg, NUM_CLASSES)


def target(boxes=(), labels=(), ignore=(), ignore_labels=None, valid_range=(0.0, math.inf)) -> dict:
    t = {
        "boxes": T(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": T(labels, dtype=torch.int64),
        "ignore_boxes": T(ignore, dtype=torch.float32).reshape(-1, 4),
        "valid_range": T(valid_range, dtype=torch.float32),
    }
    if ignore_labels is not None:
        t["ignore_labels"] = T(ignore_labels, dtype=torch.int64)
    return t


def test_wired_values_are_not_defaults():
    """The premise of this file: a build that ignores any of WIRED sees a different value."""
    default = ModelConfig()
    for key, value in WIRED.items():
        assert value != getattr(default, key), key
        assert value != TORCHVISION.get(key, object()), key
    assert default.rpn_ignore_iou_thresh == 0.3  # the paper's invalid-anchor threshold


# ---------------------------------------------------------------- the built modules' settings


def test_built_rpn_has_the_configs_settings(wired):
    cfg, model = wired
    rpn = model.rpn
    assert rpn.proposal_matcher.high_threshold == cfg.rpn_fg_iou_thresh
    assert rpn.proposal_matcher.low_threshold == cfg.rpn_bg_iou_thresh
    assert rpn.proposal_matcher.allow_low_quality_matches  # each GT's best anchors are positive
    assert rpn.ignore_iou_thresh == cfg.rpn_ignore_iou_thresh
    assert rpn.fg_bg_sampler.batch_size_per_image == cfg.rpn_batch_size_per_image
    assert rpn.fg_bg_sampler.positive_fraction == cfg.rpn_positive_fraction
    assert rpn.nms_thresh == cfg.rpn_nms_thresh
    # training keeps every NMS survivor (pre = post); the head keeps rpn_post_nms_top_n_train
    assert rpn._pre_nms_top_n == {"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test}
    assert rpn._post_nms_top_n == {"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test}
    ag = rpn.anchor_generator
    assert ag.sizes == ((24.0, 48.0),) and ag.aspect_ratios == ((0.5, 1.0),)
    assert rpn.head.cls_logits.out_channels == 4 and rpn.head.bbox_pred.out_channels == 16  # 2 sizes x 2 ratios
    assert rpn.head.conv[0][0].out_channels == cfg.rpn_channels


def test_built_roi_heads_have_the_configs_settings(wired):
    cfg, model = wired
    heads = model.roi_heads
    assert heads.proposal_matcher.high_threshold == heads.proposal_matcher.low_threshold == cfg.box_fg_iou_thresh
    assert heads.ignore_iou_thresh == cfg.box_ignore_iou_thresh
    assert not heads.sample_all
    assert heads.fg_bg_sampler.batch_size_per_image == cfg.box_batch_size_per_image
    assert heads.fg_bg_sampler.positive_fraction == cfg.box_positive_fraction
    assert heads.proposals_per_image == cfg.rpn_post_nms_top_n_train
    assert heads.box_coder.weights == tuple(cfg.bbox_reg_weights)
    assert heads.score_thresh == cfg.box_score_thresh
    assert heads.nms_thresh == cfg.box_nms_thresh
    assert heads.detections_per_img == cfg.box_detections_per_img
    assert heads.roi_match == cfg.roi_match
    assert heads.class_agnostic is False and heads.box_predictor.bbox_pred.out_features == 4 * (NUM_CLASSES + 1)
    assert heads.box_predictor.cls_score.out_features == NUM_CLASSES + 1
    assert heads.box_head.fc7.out_features == cfg.fc_dim
    assert heads.box_roi_pool.sampling_ratio == cfg.roi_sampling_ratio
    # the defaults: every RoI used (no sampler), the paper's all_gt matching, class-agnostic boxes
    default = build_model(ModelConfig(**SMALL, anchor_sizes=[32], rpn_channels=8, fc_dim=8), NUM_CLASSES)
    assert default.roi_heads.sample_all and default.roi_heads.roi_match == "all_gt"
    assert default.roi_heads.class_agnostic and default.rpn.ignore_iou_thresh == 0.3
    assert default.roi_heads.ignore_iou_thresh == ModelConfig().box_ignore_iou_thresh


# ---------------------------------------------------------------- ... and what they do with them

# GT [0,0,100,100]; each anchor's IoU with it (or with the ignore box [200,200,300,300]) noted.
RPN_ANCHORS = T(
    [
        [0, 0, 100, 100],  # 1.0   positive
        [0, 0, 100, 64],  # 0.64  positive (>= 0.61; torchvision's 0.7 would make it -1)
        [0, 0, 100, 58],  # 0.58  between -> -1 (the default 0.5 would make it positive)
        [0, 0, 100, 35],  # 0.35  between -> -1 (the default bg 0.4 would make it negative)
        [0, 0, 100, 29.5],  # 0.295 between -> -1 (torchvision's bg 0.3 would make it negative)
        [0, 0, 100, 28],  # 0.28  negative
        [200, 200, 300, 300],  # ignore IoU 1.0  -> -1
        [200, 200, 300, 225],  # ignore IoU 0.25 -> -1 (> 0.23; the default 0.3 would leave it negative)
        [200, 200, 300, 222],  # ignore IoU 0.22 -> negative
        [500, 500, 600, 600],  # nothing -> negative
    ],
    dtype=torch.float32,
)


def test_rpn_labels_follow_the_configs_thresholds(wired):
    _, model = wired
    t = model.prepare_targets([target([[0, 0, 100, 100]], [1], ignore=[[200, 200, 300, 300]])], 1, "cpu")
    labels, matched = model.rpn.assign_targets_to_anchors([RPN_ANCHORS], t)
    assert labels[0].tolist() == [1, 1, -1, -1, -1, 0, -1, -1, 0, 0]
    assert torch.equal(matched[0][:2], T([[0.0, 0, 100, 100]] * 2))


def sampled_by_rpn_loss(rpn, labels: list[torch.Tensor]) -> torch.Tensor:
    """Indices of the anchors ``rpn.compute_loss`` samples: those the objectness loss reaches."""
    n = sum(len(lab) for lab in labels)
    objectness = torch.zeros(n, 1, requires_grad=True)
    loss, box_loss = rpn.compute_loss(objectness, torch.zeros(n, 4), labels, [torch.zeros(n, 4)])
    loss.backward()
    inds = torch.where(objectness.grad.flatten() != 0)[0]
    assert loss.item() == pytest.approx(math.log(2))  # mean BCE at logit 0 over the sampled anchors
    assert box_loss.item() == 0
    return inds


def test_rpn_samples_the_configs_batch_and_positive_fraction(wired):
    """77 per image, int(77 * 0.37) = 28 positives, never an ignored anchor (the real assign + loss)."""
    cfg, model = wired
    torch.manual_seed(0)
    anchors = torch.cat(
        [
            T([[0.0, 0, 100, 100]]).repeat(100, 1),  # positive
            T([[500.0, 500, 600, 600]]).repeat(100, 1),  # negative
            T([[200.0, 200, 300, 300]]).repeat(100, 1),  # on the ignore box
        ]
    )
    t = model.prepare_targets([target([[0, 0, 100, 100]], [1], ignore=[[200, 200, 300, 300]])], 1, "cpu")
    labels, _ = model.rpn.assign_targets_to_anchors([anchors], t)
    assert labels[0].tolist() == [1] * 100 + [0] * 100 + [-1] * 100
    inds = sampled_by_rpn_loss(model.rpn, labels)
    assert len(inds) == cfg.rpn_batch_size_per_image == 77
    assert int((inds < 100).sum()) == int(77 * 0.37) == 28
    assert not (inds >= 200).any()


def test_rpn_nms_and_top_n_follow_the_config(wired):
    """rpn_nms_thresh 0.66; pre/post NMS top n: 40/40 training, 50/20 testing."""
    _, model = wired
    rpn = model.rpn

    def kept(boxes, mode_training: bool) -> int:
        rpn.train(mode_training)
        n = len(boxes)
        scores = torch.linspace(5, 1, n)  # logits, best first
        out, _ = rpn.filter_proposals(boxes[None], scores[:, None], [(10000, 10000)], [n])
        return len(out[0])

    def distinct(n):  # disjoint boxes
        x = torch.arange(n, dtype=torch.float32)[:, None] * 20
        return torch.cat([x, torch.zeros(n, 1), x + 10, torch.full((n, 1), 10.0)], dim=1)

    def duplicates_then_distinct(n_dup, n_distinct):
        return torch.cat([T([[5000.0, 5000, 5010, 5010]]).repeat(n_dup, 1), distinct(n_distinct)])

    try:
        # IoU 0.68 > 0.66 suppressed, 0.64 kept (the default / torchvision 0.7 keeps both)
        assert kept(T([[0.0, 0, 100, 100], [0, 0, 100, 68]]), False) == 1
        assert kept(T([[0.0, 0, 100, 100], [0, 0, 100, 64]]), False) == 2
        # testing: post 20; pre 50 (50 copies of one box fill it: the distinct ones never reach NMS)
        assert kept(distinct(30), False) == 20
        assert kept(duplicates_then_distinct(50, 10), False) == 1
        assert kept(duplicates_then_distinct(49, 10), False) == 2
        # training: pre 40, and post 40 too (every survivor goes on to the head)
        assert kept(distinct(45), True) == 40
        assert kept(duplicates_then_distinct(40, 10), True) == 1
        assert kept(duplicates_then_distinct(39, 10), True) == 2
    finally:
        rpn.train()


# GT [0,0,100,100] class 1; an invalid GT (class 1, ignore box) at [200,200,300,300].
HEAD_ROIS = T(
    [
        [0, 0, 100, 60],  # IoU 0.60 -> class 1 (> 0.55)
        [0, 0, 100, 53],  # IoU 0.53 -> background (the default 0.5 would make it class 1)
        [200, 200, 300, 248],  # ignore IoU 0.48 -> excluded (> 0.45; the default 0.5 keeps it)
        [200, 200, 300, 243],  # ignore IoU 0.43 -> background
        [400, 400, 450, 450],  # background
        [200, 200, 300, 290],  # IoU 0.9 with the invalid GT: valid_gt -> background on it -> excluded
    ],
    dtype=torch.float32,
)


def test_roi_labels_follow_the_configs_thresholds_and_roi_match(wired):
    _, model = wired
    heads = model.roi_heads
    t = model.prepare_targets(
        [target([[0, 0, 100, 100]], [1], ignore=[[200, 200, 300, 300]], ignore_labels=[1])], 1, "cpu"
    )
    props, _, labels, reg = heads.select_training_samples([HEAD_ROIS], t)
    # fewer than the 48 sampled: all kept, in order, GT appended last
    assert torch.equal(props[0], torch.cat([HEAD_ROIS[[0, 1, 3, 4]], T([[0.0, 0, 100, 100]])]))
    assert labels[0].tolist() == [1, 0, 0, 0, 1]
    # bbox_reg_weights (8, 9, 4, 3): [0,0,100,60] -> GT: dy = 9 * 20 / 60, dh = 3 * log(100 / 60)
    assert reg[0][0].tolist() == pytest.approx([0, 3.0, 0, 3 * math.log(100 / 60)], abs=1e-5)


def test_roi_heads_sample_the_configs_batch_and_keep_proposals_per_image(wired, monkeypatch):
    cfg, model = wired
    heads = model.roi_heads
    torch.manual_seed(0)
    rois = torch.cat([T([[0.0, 0, 100, 90]]).repeat(100, 1), T([[400.0, 400, 450, 450]]).repeat(100, 1)])
    t = model.prepare_targets([target([[0, 0, 100, 100]], [1])], 1, "cpu")
    with monkeypatch.context() as m:  # all 200 RoIs to the sampler (the cap is checked below)
        m.setattr(heads, "proposals_per_image", 1000)
        _, _, labels, _ = heads.select_training_samples([rois], t)
    assert len(labels[0]) == cfg.box_batch_size_per_image == 48
    assert int((labels[0] > 0).sum()) == int(48 * 0.3) == 14
    assert heads.proposals_per_image == cfg.rpn_post_nms_top_n_train
    # proposals_per_image = rpn_post_nms_top_n_train (30), after the valid-range filter
    many = torch.cat([torch.zeros(100, 2), torch.full((100, 2), 40.0)], dim=1)
    many[::2, 2:] = 10.0  # every other one out of the valid range [20, 50): 50 left
    kept = heads.filter_proposals([many], model.prepare_targets([target(valid_range=(20.0, 50.0))], 1, "cpu"))
    assert kept[0].shape == (cfg.rpn_post_nms_top_n_train, 4) and (kept[0][:, 2] == 40).all()


def test_roi_postprocess_follows_the_configs_score_nms_and_top_k(wired):
    cfg, model = wired
    heads = model.roi_heads
    tiny = 1e-6
    rois = [
        ([0, 0, 100, 100], [0.1, 0.9]),  # class 1
        ([0, 0, 100, 47], [0.2, 0.8]),  # IoU 0.47 with the first: NMS 0.44 removes it (0.5 would not)
        ([0, 0, 100, 40], [0.3, 0.7]),  # IoU 0.40 with the first: kept
        ([300, 300, 400, 400], [0.988, 0.012]),  # above 0.011 (torchvision's 0.05 would drop it)
        ([600, 600, 700, 700], [0.99, 0.010]),  # below 0.011 (the default 0.001 would keep it)
    ]
    probs = T([[p[0] - tiny, p[1], tiny] for _, p in rois])  # background, class 1, class 2
    boxes, scores, labels = heads.postprocess_detections(
        probs.log(), torch.zeros(len(rois), 4 * (NUM_CLASSES + 1)), [T([b for b, _ in rois]).float()], [(1000, 1000)]
    )
    assert scores[0].tolist() == pytest.approx([0.9, 0.7, 0.012], rel=1e-4)
    assert torch.equal(boxes[0], T([[0.0, 0, 100, 100], [0, 0, 100, 40], [300, 300, 400, 400]]))
    assert labels[0].tolist() == [1, 1, 1]
    # at most box_detections_per_img (123) of 200 disjoint candidates
    x = torch.arange(200, dtype=torch.float32)[:, None] * 20
    many = torch.cat([x, torch.zeros(200, 1), x + 10, torch.full((200, 1), 10.0)], dim=1)
    logits = T([[0.5, 0.5 - tiny, tiny]]).log().repeat(200, 1)
    _, scores, _ = heads.postprocess_detections(logits, torch.zeros(200, 12), [many], [(100, 5000)])
    assert len(scores[0]) == cfg.box_detections_per_img == 123


# ---------------------------------------------------------------- ignore boxes through the model

GT = [[8.0, 8.0, 56.0, 60.0]]


class Spy:
    """Records what the model's own RPN / RoI heads compute in one training forward."""

    def __init__(self, model: SniperFasterRCNN, monkeypatch) -> None:
        self.model, self.record = model, {}
        rpn, heads = model.rpn, model.roi_heads
        assign, sampler, select = rpn.assign_targets_to_anchors, rpn.fg_bg_sampler, heads.select_training_samples

        def spy_assign(anchors, targets):
            labels, matched = assign(anchors, targets)
            self.record.update(anchors=anchors[0].clone(), rpn_labels=labels[0].clone())
            return labels, matched

        def spy_sampler(labels):
            pos, neg = sampler(labels)
            self.record["rpn_sampled"] = pos[0].bool() | neg[0].bool()
            return pos, neg

        def spy_select(proposals, targets):
            out = select(proposals, targets)
            self.record.update(proposals=proposals[0].clone(), rois=out[0][0].clone(), roi_labels=out[2][0].clone())
            return out

        monkeypatch.setattr(rpn, "assign_targets_to_anchors", spy_assign)
        monkeypatch.setattr(rpn, "fg_bg_sampler", spy_sampler)
        monkeypatch.setattr(heads, "select_training_samples", spy_select)

    def __call__(self, image: torch.Tensor, t: dict) -> dict[str, torch.Tensor]:
        self.record = {}
        losses = self.model(image, [t])
        assert torch.isfinite(sum(losses.values()))
        assert set(self.record) == {"anchors", "rpn_labels", "rpn_sampled", "proposals", "rois", "roi_labels"}
        return self.record


def test_ignore_box_changes_rpn_and_roi_labels_through_the_model(monkeypatch):
    """The same chip and GT with and without an ignore box (crowd, then an invalid GT of class 2),
    through ``model(images, targets)``: only anchors / RoIs on the ignore box change."""
    cfg = ModelConfig(**SMALL, anchor_sizes=[16, 32, 64], rpn_channels=16, fc_dim=16)
    torch.manual_seed(0)
    model = build_model(cfg, NUM_CLASSES).train()
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    run = Spy(model, monkeypatch)
    base = run(image, target(GT, [1]))
    # the ignore box: an RPN proposal of this chip that is background in the head (far from the GT)
    far = box_iou(base["proposals"], T(GT))[:, 0] < 0.05
    size = (base["proposals"][:, 2:] - base["proposals"][:, :2]).prod(dim=1).sqrt()
    candidates = base["proposals"][far & (size > 20)]
    assert len(candidates) > 0
    box = candidates[0].tolist()

    crowd = run(image, target(GT, [1], ignore=[box]))
    invalid = run(image, target(GT, [1], ignore=[box], ignore_labels=[2]))
    for other in (crowd, invalid):  # the forward itself does not depend on the targets
        assert torch.equal(other["anchors"], base["anchors"]) and torch.equal(other["proposals"], base["proposals"])

    # RPN: anchors with IoU > 0.3 (the paper's) against the ignore box become -1, and only they
    on_box = box_iou(base["anchors"], T([box]))[:, 0] > 0.3
    assert model.rpn.ignore_iou_thresh == 0.3 and on_box.any()
    assert (base["rpn_labels"][on_box] >= 0).any()  # without the ignore box some of them train
    for run_ in (crowd, invalid):
        assert (run_["rpn_labels"][on_box] == -1).all()
        assert torch.equal(run_["rpn_labels"][~on_box], base["rpn_labels"][~on_box])
    # ... and are never sampled (fewer anchors than the batch: every labelled anchor is sampled)
    for run_ in (base, crowd, invalid):
        assert torch.equal(run_["rpn_sampled"], run_["rpn_labels"] >= 0)

    # RoI heads (every RoI used): background RoIs with IoU > 0.5 against a crowd box are left out
    roi_on_box = box_iou(base["rois"], T([box]))[:, 0] > 0.5
    assert roi_on_box.any() and (base["roi_labels"][roi_on_box] == 0).all()
    assert torch.equal(crowd["rois"], base["rois"][~roi_on_box])
    assert torch.equal(crowd["roi_labels"], base["roi_labels"][~roi_on_box])
    # an invalid GT of class 2 (roi_match all_gt, the paper): those RoIs are class 2 instead
    assert torch.equal(invalid["rois"], base["rois"])
    expected = base["roi_labels"].clone()
    expected[roi_on_box] = 2
    assert torch.equal(invalid["roi_labels"], expected)


def test_model_config_fields_reaching_the_heads_are_all_covered():
    """A new RPN / RoI-head setting in ModelConfig needs a non-default value in WIRED."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    head_settings = {n for n in names if n.startswith(("rpn_", "box_", "anchor_", "aspect_", "roi_", "bbox_"))}
    head_settings |= {"fc_dim", "class_agnostic_bbox_reg"}
    assert head_settings <= set(WIRED), sorted(head_settings - set(WIRED))
