"""The multi-scale merge strategies on hand-made detections with known answers.

Expected values are worked out by hand from the rules: Soft-NMS (Bodla et al.) decays a
same-class neighbour by ``exp(-IoU^2 / sigma)`` (gaussian) or ``1 - IoU`` when
``IoU > iou_threshold`` (linear) and drops it below ``score_threshold``; hard NMS keeps a
box unless a higher-scoring box of its class overlaps it by IoU > ``iou_threshold``; both
drop inputs scoring below ``score_threshold`` (``>=`` kept) and return at most
``max_detections`` rows by decreasing score.
"""

from __future__ import annotations

import math

import pytest
import torch

from sniper.config import InferConfig
from sniper.ops.merge import NMSMerge, SoftNMSMerge, build_merge

T = torch.tensor


def dets(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {
        "boxes": T(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": T(scores, dtype=torch.float32),
        "labels": T(labels, dtype=torch.int64),
    }


# Box 0 and box 1 overlap by IoU 0.5 ([0,0,10,5] inside [0,0,10,10]); box 2 is box 0 in another
# class; box 3 is far away.
FOUR = dets(
    [[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 10], [50, 50, 60, 60]],
    [0.9, 0.6, 0.7, 0.2],
    [1, 1, 2, 1],
)


# ------------------------------------------------------------------ input checks


@pytest.mark.parametrize("merge", [SoftNMSMerge(), NMSMerge()])
def test_missing_keys_are_named(merge):
    with pytest.raises(ValueError) as e:
        merge({"boxes": torch.zeros(0, 4)})
    assert str(e.value) == "detections dict is missing ['labels', 'scores']"
    with pytest.raises(ValueError) as e:
        merge({"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)})
    assert str(e.value) == "detections dict is missing ['boxes']"


def test_unknown_softnms_method_is_an_error():
    with pytest.raises(ValueError) as e:
        SoftNMSMerge(method="hard")
    assert str(e.value) == "unknown soft-NMS method 'hard'; valid: gaussian, linear"
    assert SoftNMSMerge(method="linear").method == "linear"


# ------------------------------------------------------------------ Soft-NMS merge


def test_softnms_gaussian_decays_by_iou_and_sigma():
    out = SoftNMSMerge(sigma=0.5)(FOUR)
    # class 1: 0.9 picked; box 1 decays by exp(-0.25 / 0.5); box 3 untouched. Class 2: 0.7.
    w = math.exp(-0.25 / 0.5)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6 * w, 0.2], rel=1e-6)
    assert out["labels"].tolist() == [1, 2, 1, 1]
    assert out["boxes"].tolist() == [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5], [50, 50, 60, 60]]
    out = SoftNMSMerge(sigma=0.1)(FOUR)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.2, 0.6 * math.exp(-0.25 / 0.1)], rel=1e-6)


def test_softnms_linear_threshold_is_strict():
    out = SoftNMSMerge(method="linear", iou_threshold=0.4)(FOUR)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.3, 0.2], rel=1e-6)  # 0.6 * (1 - 0.5)
    out = SoftNMSMerge(method="linear", iou_threshold=0.5)(FOUR)  # IoU 0.5 is not above 0.5
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6, 0.2], rel=1e-6)


def test_softnms_score_threshold_and_max_detections():
    out = SoftNMSMerge(method="linear", iou_threshold=0.4, score_threshold=0.25)(FOUR)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.3])  # 0.2 < 0.25: dropped
    out = SoftNMSMerge(method="linear", iou_threshold=0.4, score_threshold=0.3)(FOUR)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.3])  # 0.3 >= 0.3 kept
    out = SoftNMSMerge(max_detections=2)(FOUR)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7]) and out["labels"].tolist() == [1, 2]
    assert len(SoftNMSMerge(max_detections=None)(FOUR)["scores"]) == 4
    many = dets([[i * 20, 0, i * 20 + 10, 10] for i in range(250)], [0.5] * 250, [1] * 250)
    assert len(SoftNMSMerge()(many)["scores"]) == 200  # the paper: at most 200 per image


# ------------------------------------------------------------------ hard NMS merge


def test_nms_suppresses_same_class_overlap_above_threshold_only():
    out = NMSMerge(iou_threshold=0.4)(FOUR)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.2])
    assert out["labels"].tolist() == [1, 2, 1]
    assert out["boxes"].tolist() == [[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]
    out = NMSMerge(iou_threshold=0.5)(FOUR)  # IoU exactly 0.5: kept
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6, 0.2])
    assert NMSMerge().iou_threshold == 0.5


def test_nms_score_threshold_is_inclusive_and_max_detections_cuts():
    out = NMSMerge(score_threshold=0.6)(FOUR)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])
    out = NMSMerge(score_threshold=0.61)(FOUR)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7])
    out = NMSMerge(max_detections=3)(FOUR)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert out["labels"].tolist() == [1, 2, 1]
    assert len(NMSMerge(max_detections=None)(FOUR)["scores"]) == 4
    one = dets([[0, 0, 10, 10]], [0.5], [3])
    assert NMSMerge()(one)["labels"].tolist() == [3]


# ------------------------------------------------------------------ from the config


def test_build_merge_passes_every_field():
    cfg = InferConfig(
        merge="softnms",
        softnms_method="linear",
        softnms_sigma=0.3,
        iou_thresh=0.6,
        score_thresh=0.05,
        max_detections=7,
    )
    assert build_merge(cfg) == SoftNMSMerge(
        method="linear", sigma=0.3, iou_threshold=0.6, score_threshold=0.05, max_detections=7
    )
    cfg = InferConfig(merge="nms", iou_thresh=0.45, score_thresh=0.02, max_detections=9)
    assert build_merge(cfg) == NMSMerge(iou_threshold=0.45, score_threshold=0.02, max_detections=9)


def test_build_merge_unknown_name():
    with pytest.raises(ValueError) as e:
        build_merge(InferConfig(merge="wbf"))
    assert str(e.value) == "unknown infer.merge 'wbf'; valid: softnms, nms"
