"""The Mask R-CNN branch (paper Table 3) on SNIPER's RoI sampling, on hand-made cases.

Box-local GT masks resampled onto RoIs against a direct rasterisation; which RoIs train the
mask (valid-GT-matched foreground only); both losses by hand; the zero-RoI loss; eval masks and
the valid-range filter before NMS; masks off leaves the box model as it was; a tiny model
learns a mask.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou

from sniper.config import ModelConfig
from sniper.errors import SniperError
from sniper.model import build_model, mask_heads
from sniper.model.mask_heads import SniperMaskPredictor, mask_loss, project_box_masks
from sniper.model.roi_heads import SniperBoxPredictor, SniperRoIHeads

T = torch.tensor
SMALL = dict(
    pretrained=False,
    channels_last=False,
    head_channels=16,
    anchor_sizes=[16, 32, 64],
    rpn_channels=16,
    fc_dim=16,
)
MASKS = dict(masks=True, mask_head_layers=[8, 8], mask_pool_size=7, mask_target_size=28)


def box_local(fn, box, s: int) -> torch.Tensor:
    """The object ``fn(x, y) -> bool`` (chip px) sampled over ``box`` on an s x s grid: the
    target format (pixel (r, c) at ``(x1 + (c + 0.5) * w / s, y1 + (r + 0.5) * h / s)``)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    c = torch.arange(s, dtype=torch.float64) + 0.5
    ys, xs = torch.meshgrid(y1 + c * (y2 - y1) / s, x1 + c * (x2 - x1) / s, indexing="ij")
    return fn(xs, ys)


def make_heads(kind: str = "sigmoid", weight: float = 1.0, s: int = 28, **kw) -> SniperRoIHeads:
    """Heads on a 4-channel map with a [8, 8] mask head, 7x7 mask pool (14x14 masks), 2 classes."""
    return SniperRoIHeads(
        MultiScaleRoIAlign(["0"], 7, 2),
        TwoMLPHead(4 * 49, 8),
        SniperBoxPredictor(8, 3, True),
        fg_iou_thresh=0.5,
        ignore_iou_thresh=0.5,
        batch_size_per_image=None,
        positive_fraction=0.25,
        proposals_per_image=300,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        score_thresh=0.001,
        nms_thresh=0.5,
        detections_per_img=100,
        mask_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        mask_head=MaskRCNNHeads(4, [8, 8], 1),
        mask_predictor=SniperMaskPredictor(8, 8, 3),
        mask_loss=kind,
        mask_loss_weight=weight,
        mask_target_size=s,
        **kw,
    )


def target(boxes=(), labels=(), masks=None, ignore=(), ignore_labels=None, s: int = 28) -> dict:
    boxes = T(boxes, dtype=torch.float32).reshape(-1, 4)
    t = {
        "boxes": boxes,
        "labels": T(labels, dtype=torch.int64),
        "ignore_boxes": T(ignore, dtype=torch.float32).reshape(-1, 4),
        "valid_range": T([0.0, math.inf]),
        "masks": torch.ones(len(boxes), s, s) if masks is None else masks,
    }
    if ignore_labels is not None:
        t["ignore_labels"] = T(ignore_labels, dtype=torch.int64)
    return t


def mask_params(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if "mask" in n}


# ---------------------------------------------------------------- RoI mask targets

GT_BOX = (10.0, 20.0, 50.0, 44.0)  # w 40, h 24 (not square: x and y scale differently)
S = 56
OBJECTS = {
    "disc": lambda x, y: (x - 30) ** 2 + (y - 32) ** 2 <= 11**2,  # inside the GT box
    "rectangle": lambda x, y: (x >= 18) & (x < 41) & (y >= 26) & (y < 40),
}
ROIS = [
    GT_BOX,  # the GT box itself
    (17.0, 15.0, 57.0, 39.0),  # shifted by (+7, -5)
    (0.0, 5.0, 70.0, 60.0),  # larger: the object in its middle
    (22.0, 25.0, 40.0, 40.0),  # smaller: inside the object's box
    (30.0, 30.0, 80.0, 70.0),  # partly outside the GT box (and the object)
    (25.0, 11.0, 33.0, 90.0),  # thin and tall, beyond the box above and below
]


@pytest.mark.parametrize("name", list(OBJECTS))
def test_project_box_masks_matches_rasterising_the_object_at_the_roi_grid(name):
    fn = OBJECTS[name]
    gt_masks = box_local(fn, GT_BOX, S).to(torch.uint8)[None]
    rois = T(ROIS)
    m = 28
    out = project_box_masks(gt_masks, T([GT_BOX]), rois, torch.zeros(len(rois), dtype=torch.int64), m)
    assert out.shape == (len(rois), m, m) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    for k, roi in enumerate(ROIS):
        truth = box_local(fn, roi, m)  # the object at the RoI grid's pixel centres
        agree = ((out[k] >= 0.5) == truth).float().mean().item()
        assert agree > 0.97, (name, roi, agree)
        assert truth.any()  # every case sees part of the object


def test_project_box_masks_identity_outside_and_several_gt():
    """RoI = GT box at the GT's own resolution reads the mask back exactly; a RoI away from the
    object reads 0; each RoI reads its own GT's mask."""
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, 8, 8, generator=g) > 0.5).float()
    boxes = T([[0.0, 0, 16, 8], [100, 100, 104, 108]])
    rois = T([[0.0, 0, 16, 8], [100, 100, 104, 108], [40, 40, 60, 60], [0, 0, 16, 8]])
    out = project_box_masks(masks, boxes, rois, T([0, 1, 0, 1]), 8)
    assert torch.allclose(out[0], masks[0], atol=1e-6) and torch.allclose(out[1], masks[1], atol=1e-6)
    assert out[2].abs().max() == 0  # far outside GT 0's box
    # GT 1's mask mapped onto GT 0's box: the affine map uses GT 1's box, so all outside -> 0
    assert out[3].abs().max() == 0
    assert project_box_masks(masks, boxes, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 5).shape == (
        0,
        5,
        5,
    )


# ---------------------------------------------------------------- which RoIs train the mask

# valid GT (class 2), an invalid GT (ignore box of class 1) and a crowd box
CHIP = dict(
    boxes=[[0, 0, 40, 40]],
    labels=[2],
    ignore=[[100, 100, 140, 140], [200, 200, 240, 240]],
    ignore_labels=[1, 0],
)
CHIP_ROIS = T(
    [
        [0, 0, 40, 30],  # IoU 0.75 with the valid GT: class 2, trains the mask
        [100, 100, 140, 130],  # IoU 0.75 with the invalid GT: class 1 (all_gt), but no mask
        [200, 200, 240, 230],  # on the crowd box: ignored
        [0, 0, 40, 15],  # IoU 0.375: background
        [300, 300, 340, 340],  # background
    ],
    dtype=torch.float32,
)


def spy_mask_loss(monkeypatch) -> list:
    """Records (labels, mask_targets) of every call of the loss the heads use."""
    calls = []
    real = mask_heads.mask_loss

    def spy(mask_logits, labels, mask_targets, kind):
        calls.append((labels.clone(), mask_targets.clone(), mask_logits.shape))
        return real(mask_logits, labels, mask_targets, kind)

    monkeypatch.setattr(mask_heads, "mask_loss", spy)
    return calls


@pytest.mark.parametrize("roi_match", ["all_gt", "valid_gt"])
def test_only_foreground_rois_matched_to_a_valid_gt_train_the_mask(monkeypatch, roi_match):
    torch.manual_seed(0)
    heads = make_heads(roi_match=roi_match).train()  # every RoI used: no random sampling
    # the valid GT's mask: its left half
    masks = torch.zeros(1, 28, 28)
    masks[:, :, :14] = 1
    t = target(**CHIP, masks=masks)
    props, matched, labels, _ = heads.select_training_samples([CHIP_ROIS], [t])
    expected_labels = [2, 1, 0, 0, 2] if roi_match == "all_gt" else [2, 0, 0, 2]
    assert labels[0].tolist() == expected_labels  # the RoI on the invalid GT is foreground under all_gt
    rois, gt_idx, classes = heads.mask_training_samples(props, matched, labels, [t])
    gt = T([[0.0, 0, 40, 40]])
    assert torch.equal(rois[0], torch.cat([CHIP_ROIS[:1], gt])) and gt_idx[0].tolist() == [0, 0]
    assert classes[0].tolist() == [2, 2]
    # through forward: the loss sees those two RoIs and their targets (left half of the GT)
    calls = spy_mask_loss(monkeypatch)
    feats = {"0": torch.randn(1, 4, 48, 48)}
    _, losses = heads(feats, [CHIP_ROIS], [(384, 384)], [t])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    ((lab, tgt, shape),) = calls
    assert lab.tolist() == [2, 2] and shape == (2, 3, 14, 14)
    half = torch.zeros(14, 14)
    half[:, :7] = 1
    assert torch.allclose(tgt[1], half, atol=1e-6)  # RoI = GT box
    # [0,0,40,30]: the same columns, fewer rows (bilinear: the top row samples half a mask
    # pixel into the zero border)
    assert torch.allclose(tgt[0], half, atol=0.1)


def test_a_chip_whose_only_foreground_is_an_invalid_gt_gives_a_zero_mask_loss(monkeypatch):
    heads = make_heads().train()
    t = target(ignore=[[100, 100, 140, 140]], ignore_labels=[1])
    calls = spy_mask_loss(monkeypatch)
    _, losses = heads({"0": torch.randn(1, 4, 48, 48)}, [CHIP_ROIS], [(384, 384)], [t])
    assert calls[0][0].numel() == 0  # RoI 1 is class 1 for the classifier, no mask RoI
    assert losses["loss_mask"].item() == 0 and losses["loss_box_reg"].item() > 0


def test_a_valid_gt_without_a_usable_segmentation_trains_box_but_not_mask():
    """``mask_valid`` False (the annotation had no usable segmentation): its RoIs stay foreground
    for the classifier and the box regressor, and never enter the mask loss."""
    heads = make_heads().train()
    two = dict(boxes=[[0, 0, 40, 40], [300, 300, 340, 340]], labels=[2, 1])
    rois = T([[0, 0, 40, 30], [300, 300, 340, 330]], dtype=torch.float32)
    for flags, expected in (([True, True], [0, 1, 0, 1]), ([True, False], [0, 0]), ([False, True], [1, 1])):
        t = target(**two)
        t["mask_valid"] = T(flags)
        props, matched, labels, _ = heads.select_training_samples([rois], [t])
        assert sorted(labels[0].tolist()) == [1, 1, 2, 2]  # all four RoIs (2 + 2 GT) foreground
        _, gt_idx, _ = heads.mask_training_samples(props, matched, labels, [t])
        assert sorted(gt_idx[0].tolist()) == sorted(expected), flags


# ---------------------------------------------------------------- losses


def constant_logits(heads: SniperRoIHeads, bias) -> None:
    """The mask predictor outputs ``bias`` (one logit per class) at every pixel."""
    with torch.no_grad():
        heads.mask_predictor.mask_fcn_logits.weight.zero_()
        heads.mask_predictor.mask_fcn_logits.bias.copy_(T(bias))


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_one_roi_loss_equals_the_hand_computation(kind):
    """One RoI (the GT box, no proposals), logits (0.3, -0.2, 1.1) everywhere, label 2, a GT
    mask whose 14x14 projection is exactly a 6 x 8 block: 48 object pixels of 196."""
    heads = make_heads(kind, weight=0.5).train()
    constant_logits(heads, [0.3, -0.2, 1.1])
    masks = torch.zeros(1, 28, 28)
    masks[0, 4:16, 8:24] = 1  # 2x2 mask px per RoI px: rows 2..7, cols 4..11 at 14x14
    t = target([[8, 8, 64, 64]], [2], masks=masks)
    _, losses = heads({"0": torch.randn(1, 4, 16, 16)}, [torch.zeros(0, 4)], [(128, 128)], [t])
    n_in, n_all = 48, 196
    a = [0.3, -0.2, 1.1]
    if kind == "softmax":
        lse = math.log(sum(math.exp(v) for v in a))
        inside, outside = lse - a[2], lse - a[0]  # -log p(class 2), -log p(background)
    else:
        inside, outside = math.log(1 + math.exp(-a[2])), math.log(1 + math.exp(a[2]))  # BCE on channel 2
    expected = 0.5 * (n_in * inside + (n_all - n_in) * outside) / n_all
    assert losses["loss_mask"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_mask"].dtype == torch.float32


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_both_losses_are_finite_with_gradients_on_every_mask_parameter(kind):
    torch.manual_seed(0)
    heads = make_heads(kind).train()
    masks = box_local(OBJECTS["disc"], (10, 20, 50, 44), 28).float()[None]
    t = target([[10, 20, 50, 44]], [1], masks=masks)
    rois = T([[12.0, 20, 50, 44], [10, 18, 48, 46], [100, 100, 120, 120]])
    feats = {"0": torch.randn(1, 4, 16, 16, requires_grad=True)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = heads(feats, [rois], [(128, 128)], [t])
    loss = losses["loss_mask"]
    assert torch.isfinite(loss) and loss.dtype == torch.float32 and loss.item() > 0
    loss.backward()
    for name, p in mask_params(heads).items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert feats["0"].grad.abs().sum() > 0  # and into the features


def test_mask_loss_softmax_target_is_the_class_inside_background_outside():
    logits = torch.zeros(2, 3, 2, 2, requires_grad=True)
    targets = T([[[1.0, 0.6], [0.4, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    loss = mask_loss(logits, T([1, 2]), targets, "softmax")
    assert loss.item() == pytest.approx(math.log(3))  # uniform logits
    loss.backward()
    g = logits.grad * 8  # d/dlogit of mean CE: (softmax - onehot) / 8 pixels
    want = torch.full((2, 3, 2, 2), 1 / 3)
    onehot = T([[[1, 1], [0, 0]], [[0, 0], [0, 2]]])  # >= 0.5: the class, else 0
    want -= torch.nn.functional.one_hot(onehot, 3).permute(0, 3, 1, 2).float()
    assert torch.allclose(g, want, atol=1e-6)
    with pytest.raises(ValueError, match="mask loss"):
        mask_loss(logits, T([1, 2]), targets, "dice")


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_no_mask_roi_gives_zero_loss_still_connected_to_every_mask_parameter(kind):
    """A negative chip: no foreground RoI. DDP (find_unused_parameters=False) needs a gradient,
    zero, on every mask parameter."""
    heads = make_heads(kind).train()
    _, losses = heads({"0": torch.randn(1, 4, 16, 16)}, [T([[0.0, 0, 20, 20]])], [(128, 128)], [target()])
    loss = losses["loss_mask"]
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    for name, p in mask_params(heads).items():
        assert p.grad is not None and p.grad.abs().sum() == 0, name


# ---------------------------------------------------------------- inference


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_eval_masks_are_the_detection_class_probability(kind):
    heads = make_heads(kind).eval()
    bias = [0.3, -0.2, 1.1]
    constant_logits(heads, bias)
    feats = {"0": torch.randn(1, 4, 16, 16)}
    (det,), _ = heads(feats, [T([[0.0, 0, 40, 40], [60, 60, 100, 90]])], [(128, 128)])
    n = len(det["boxes"])
    assert n > 0 and det["masks"].shape == (n, 1, 14, 14) and det["masks"].dtype == torch.float32
    b = T(bias)
    for lab, m in zip(det["labels"], det["masks"]):
        p = torch.sigmoid(b[lab]) if kind == "sigmoid" else b.softmax(0)[lab]
        assert torch.allclose(m, p.expand_as(m), atol=1e-6)
    # no detection: an empty [0, 1, 14, 14]
    heads.score_thresh = 1.0
    (det,), _ = heads(feats, [T([[0.0, 0, 40, 40]])], [(128, 128)])
    assert det["masks"].shape == (0, 1, 14, 14)
    with pytest.raises(SniperError, match="valid_ranges"):
        heads(feats, [T([[0.0, 0, 40, 40]])], [(128, 128)], raw_detections=True)


def test_a_mask_model_keeps_its_best_mask_detections_per_img_only():
    """The mask head runs on every returned detection: the cap keeps the best by score, each with
    its own mask, and is exactly the uncapped output's head."""
    torch.manual_seed(0)
    feats = {"0": torch.randn(1, 4, 32, 32)}
    props = [torch.tensor([[x, y, x + 20.0, y + 20.0] for x in range(0, 100, 25) for y in range(0, 100, 25)])]
    full = make_heads().eval()
    capped = make_heads(mask_detections_per_img=3).eval()
    capped.load_state_dict(full.state_dict())
    (a,), _ = full(feats, props, [(128, 128)])
    (b,), _ = capped(feats, props, [(128, 128)])
    assert len(a["boxes"]) > 3 and len(b["boxes"]) == 3 == len(b["masks"])
    assert (b["scores"][:-1] >= b["scores"][1:]).all()
    for k in ("boxes", "scores", "labels", "masks"):
        assert torch.allclose(b[k].float(), a[k][:3].float(), atol=1e-6), k


def test_valid_ranges_drop_candidates_before_nms_and_top_k():
    """[0, 90): the out-of-range A (0.9) would suppress B by NMS and D would take a top-3 slot."""
    heads = make_heads().eval()
    heads.detections_per_img = 3
    rois = [
        ([0, 0, 100, 100], 1, 0.9),  # A: size 100, out of range
        ([0, 0, 100, 60], 1, 0.8),  # B: size 77.5, in; IoU 0.6 with A
        ([200, 200, 260, 260], 1, 0.7),  # C: in
        ([300, 300, 395, 395], 2, 0.95),  # D: size 95, out
        ([400, 400, 410, 410], 2, 0.6),  # E: in
        ([400, 400, 410, 409], 2, 0.5),  # F: in, IoU 0.9 with E: NMS removes it
        ([500, 500, 590, 590], 1, 0.4),  # G: size exactly 90: out (half-open)
    ]
    probs = torch.full((len(rois), 3), 1e-6)
    for k, (_, lab, p) in enumerate(rois):
        probs[k, lab], probs[k, 0] = p, 1 - p
    proposals = [T([b for b, _, _ in rois], dtype=torch.float32)]
    logits, deltas, shapes = probs.log(), torch.zeros(len(rois), 4), [(1000, 1000)]
    vr = [T([0.0, 90.0])]
    boxes, scores, labels = heads.postprocess_detections(logits, deltas, proposals, shapes, valid_ranges=vr)
    assert scores[0].tolist() == pytest.approx([0.8, 0.7, 0.6], rel=1e-4)
    assert boxes[0].tolist() == [[0, 0, 100, 60], [200, 200, 260, 260], [400, 400, 410, 410]]
    assert labels[0].tolist() == [1, 1, 2]
    # = the raw candidates filtered by hand, then per-class NMS and the top 3
    rb, rs, rl = (x[0] for x in heads.postprocess_detections(logits, deltas, proposals, shapes, raw=True))
    size = ((rb[:, 2] - rb[:, 0]) * (rb[:, 3] - rb[:, 1])).sqrt()
    inr = (size >= 0) & (size < 90)
    keep = batched_nms(rb[inr], rs[inr], rl[inr], 0.5)[:3]
    assert torch.equal(boxes[0], rb[inr][keep]) and torch.equal(scores[0], rs[inr][keep])
    # without valid_ranges: A and D take the slots, B is suppressed
    boxes, scores, _ = heads.postprocess_detections(logits, deltas, proposals, shapes)
    assert scores[0].tolist() == pytest.approx([0.95, 0.9, 0.7], rel=1e-4)
    # with raw: filtered, not suppressed, by decreasing score
    _, scores, _ = heads.postprocess_detections(logits, deltas, proposals, shapes, raw=True, valid_ranges=vr)
    assert scores[0].tolist() == pytest.approx([0.8, 0.7, 0.6, 0.5], rel=1e-4)
    with pytest.raises(SniperError, match="valid_ranges"):
        heads.postprocess_detections(logits, deltas, proposals, shapes, valid_ranges=vr * 2)


def test_an_all_inclusive_valid_range_changes_nothing():
    torch.manual_seed(0)
    heads = make_heads().eval()
    n = 200
    xy = torch.rand(n, 2) * 300
    proposals = [torch.cat([xy, xy + 10 + torch.rand(n, 2) * 100], 1)]
    logits, deltas = torch.randn(n, 3) * 2, torch.randn(n, 4) * 0.3
    plain = heads.postprocess_detections(logits, deltas, proposals, [(400, 400)])
    ranged = heads.postprocess_detections(
        logits, deltas, proposals, [(400, 400)], valid_ranges=[T([0.0, math.inf])]
    )
    for a, b in zip(plain, ranged):
        assert torch.equal(a[0], b[0])


# ---------------------------------------------------------------- through the model


def test_masks_off_keeps_the_box_model_and_masks_on_only_adds_the_branch():
    torch.manual_seed(0)
    off = build_model(ModelConfig(**SMALL), 2)
    torch.manual_seed(0)
    on = build_model(ModelConfig(**SMALL, **MASKS), 2)
    assert not ModelConfig().masks and not off.has_masks and on.has_masks
    keys_off, keys_on = set(off.state_dict()), set(on.state_dict())
    assert not any("mask" in k for k in keys_off)
    extra = keys_on - keys_off
    assert keys_off <= keys_on and extra and all(k.startswith("roi_heads.mask_") for k in extra)
    for k in keys_off:  # the same initial weights: the mask branch is built last
        assert torch.equal(off.state_dict()[k], on.state_dict()[k]), k
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    box = [[20.0, 10, 60, 50]]
    t_off = [{"boxes": T(box), "labels": T([1])}]
    t_on = [{**t_off[0], "masks": torch.ones(1, 28, 28, dtype=torch.uint8)}]
    torch.manual_seed(1)
    l_off = off.train()(image, t_off)
    torch.manual_seed(1)
    l_on = on.train()(image, t_on)
    assert set(l_on) == set(l_off) | {"loss_mask"}
    for k, v in l_off.items():
        assert torch.equal(v, l_on[k]), k
    off.eval()
    on.eval()
    with torch.no_grad():
        (d_off,), (d_on,) = off(image), on(image)
        (raw,) = off(image, raw_detections=True)
    assert set(d_off) == {"boxes", "scores", "labels"} and set(d_on) == set(d_off) | {"masks"}
    for k in d_off:
        assert torch.equal(d_off[k], d_on[k]), k
    assert d_on["masks"].shape == (len(d_on["boxes"]), 1, 14, 14)
    assert len(raw["scores"]) >= len(d_off["scores"])
    with pytest.raises(SniperError, match="valid_ranges"):
        on(image, raw_detections=True)


def test_model_valid_ranges_filter_the_final_detections():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL, **MASKS), 2).eval()
    image = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dets = model(image, valid_ranges=[T([20.0, 40.0]), (0.0, math.inf)])
        (plain,) = model(image[1:])
    size = (dets[0]["boxes"][:, 2:] - dets[0]["boxes"][:, :2]).prod(1).sqrt()
    assert len(size) and ((size >= 20) & (size < 40)).all()
    assert dets[0]["masks"].shape[0] == len(size)
    assert torch.allclose(dets[1]["scores"], plain["scores"]) and torch.allclose(
        dets[1]["masks"], plain["masks"]
    )


def test_mask_targets_are_checked_and_required_when_the_branch_trains():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL, **MASKS), 2).train()
    box = {"boxes": T([[20.0, 10, 60, 50]]), "labels": T([1])}

    def prepare(**kw):
        return model.prepare_targets([{**box, **kw}], 1, "cpu")

    with pytest.raises(SniperError, match=r"target 0: .*'masks' \[N, 28, 28\]"):
        prepare()
    with pytest.raises(SniperError, match=r"\[1, 28, 28\].*got \(1, 56, 56\)"):
        prepare(masks=torch.ones(1, 56, 56))
    with pytest.raises(SniperError, match=r"got \(2, 28, 28\)"):
        prepare(masks=torch.ones(2, 28, 28))
    with pytest.raises(SniperError, match="0/255"):
        prepare(masks=torch.full((1, 28, 28), 255, dtype=torch.uint8))
    with pytest.raises(SniperError, match="uint8, bool or float"):
        prepare(masks=torch.ones(1, 28, 28, dtype=torch.int64))
    (t,) = prepare(masks=torch.ones(1, 28, 28, dtype=torch.bool))
    assert t["masks"].dtype == torch.float32 and t["masks"].shape == (1, 28, 28)
    # a negative chip needs none; stage 1 (rpn_only) needs none; a box model ignores them
    (t,) = model.prepare_targets([{"boxes": torch.zeros(0, 4), "labels": T([], dtype=torch.int64)}], 1, "cpu")
    assert t["masks"].shape == (0, 28, 28)
    model.rpn_only = True
    losses = model(torch.rand(1, 3, 96, 96), [box])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    assert all(p.grad is None for p in mask_params(model).values())
    box_model = build_model(ModelConfig(**SMALL), 2)
    (t,) = box_model.prepare_targets([{**box, "masks": torch.ones(3, 5, 5)}], 1, "cpu")
    assert "masks" not in t


def test_build_model_wires_the_mask_config():
    cfg = ModelConfig(
        **SMALL,
        masks=True,
        mask_loss="softmax",
        mask_pool_size=5,
        mask_head_layers=[6, 7, 9],
        mask_target_size=20,
        mask_loss_weight=0.25,
        roi_sampling_ratio=3,
    )
    model = build_model(cfg, 4)
    heads = model.roi_heads
    assert heads.mask_roi_pool.output_size == (5, 5) and heads.mask_roi_pool.sampling_ratio == 3
    assert heads.mask_roi_pool.featmap_names == model.backbone.head_features
    convs = [m for m in heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 7, 9] and convs[0].in_channels == cfg.head_channels
    assert (
        heads.mask_predictor.conv5_mask.in_channels == 9
        and heads.mask_predictor.mask_fcn_logits.out_channels == 5
    )
    assert (heads.mask_loss, heads.mask_target_size, heads.mask_loss_weight) == ("softmax", 20, 0.25)
    assert heads.mask_detections_per_img == 100 and heads.detections_per_img == cfg.box_detections_per_img
    assert (
        build_model(
            ModelConfig(**SMALL, **MASKS, mask_detections_per_img=7), 2
        ).roi_heads.mask_detections_per_img
        == 7
    )
    for bad in (
        dict(mask_loss="dice"),
        dict(mask_head_layers=[]),
        dict(mask_pool_size=0),
        dict(mask_loss_weight=-1.0),
        dict(mask_detections_per_img=0),
    ):
        with pytest.raises(SniperError, match="model.mask_"):
            build_model(ModelConfig(**SMALL, **{**MASKS, **bad}), 2)


# ---------------------------------------------------------------- a tiny model learns a mask


def test_a_tiny_model_learns_the_masks_of_two_chips():
    """Two 64 px chips, a disc (class 1) and an L (class 2), trained end to end: loss_mask falls
    by more than half, and the eval mask of the detection on each object (with valid_ranges)
    pasted into the chip overlaps the true object by IoU > 0.5."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        **{**SMALL, "head_channels": 32, "rpn_channels": 32, "fc_dim": 64},
        output_stride=16,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=64,
        rpn_batch_size_per_image=64,
        **{**MASKS, "mask_head_layers": [16, 16]},
    )
    model = build_model(cfg, 2).train()
    size, s = 64, cfg.mask_target_size
    c = torch.arange(size, dtype=torch.float64) + 0.5
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    objects = [
        (lambda x, y: (x - 28) ** 2 + (y - 32) ** 2 <= 15**2, (13.0, 17.0, 43.0, 47.0), 1),
        (
            lambda x, y: (x >= 10) & (x < 54) & (y >= 14) & (y < 44) & ~((x >= 32) & (y < 29)),
            (10.0, 14.0, 54.0, 44.0),
            2,
        ),
    ]
    images = torch.zeros(2, 3, size, size)
    images[0][:, objects[0][0](xs, ys)] = 1.0  # a white disc
    images[1, 0][objects[1][0](xs, ys)] = 1.0  # a red L
    targets = [
        {"boxes": T([box]), "labels": T([label]), "masks": box_local(fn, box, s).to(torch.uint8)[None]}
        for fn, box, label in objects
    ]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    history = []
    for _ in range(100):
        losses = model(images, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append(losses["loss_mask"].item())
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:3]) / 3, history
    # eval BatchNorm statistics of these two chips (the running averages lag a fast optimiser)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average
    with torch.no_grad():
        model.backbone(model.preprocess(images, None).tensors)
    model.eval()
    with torch.no_grad():
        dets = model(images, valid_ranges=[T([0.0, math.inf])] * 2)
    for det, (fn, box, label) in zip(dets, objects):
        on = (box_iou(det["boxes"], T([box]))[:, 0] > 0.5) & (det["labels"] == label)
        assert on.any()
        j = int(torch.where(on)[0][det["scores"][on].argmax()])  # the best detection on the object
        pasted = (
            paste_masks_in_image(det["masks"][j : j + 1], det["boxes"][j : j + 1], (size, size))[0, 0] > 0.5
        )
        truth = fn(xs, ys)
        iou = ((pasted & truth).sum() / (pasted | truth).sum()).item()
        assert iou > 0.5, iou
