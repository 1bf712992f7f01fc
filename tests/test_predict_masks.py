"""Pyramid inference with instance masks: pasting, RLE, masks through window mapping, range filter
and merge, a tiny real mask model end to end, the CLI's detections.json and mask pictures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from sniper.config import Config, InferConfig
from sniper.engine.predict import Predictor, detections_to_coco, paste_box_mask
from sniper.ops.merge import NMSMerge, SoftNMSMerge
from sniper.scales import Scale
from sniper.viz.detections import draw_detections
from sniper.viz.draw import class_colour

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}]
M = 28
# pycocotools' decode under numpy 2 (its __array__ has no copy keyword): noise, not a problem
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def disc(m: int = M, radius: float = 0.4) -> np.ndarray:
    """A binary disc of ``radius`` (fraction of the side) centred in an m x m box-local grid."""
    c = (np.arange(m) + 0.5) / m - 0.5
    return ((c[None, :] ** 2 + c[:, None] ** 2) <= radius**2).astype(np.float32)


def full_mask(x0: int, y0: int, patch: np.ndarray, w: int, h: int) -> np.ndarray:
    out = np.zeros((h, w), dtype=bool)
    out[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch
    return out


# ------------------------------------------------------------------ pasting and RLE


def test_a_pasted_disc_is_the_analytically_resized_disc():
    box = (10.3, 20.7, 90.3, 60.7)  # 80 x 40: the disc becomes an ellipse
    w, h = 120, 100
    x0, y0, patch = paste_box_mask(disc(), box, w, h)
    got = full_mask(x0, y0, patch, w, h)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    truth = ((xs - cx) / (0.4 * 80)) ** 2 + ((ys - cy) / (0.4 * 40)) ** 2 <= 1
    inside = (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])
    assert (got == truth)[inside].mean() > 0.98
    assert not (got & ~inside).any()  # nothing outside the box
    # exactly Detectron2's paste: grid_sample (align_corners=False, zero padding) at pixel centres
    gx = (xs - box[0]) / (box[2] - box[0]) * 2 - 1
    gy = (ys - box[1]) / (box[3] - box[1]) * 2 - 1
    grid = torch.from_numpy(np.stack([gx, gy], -1)).float()[None]
    ref = F.grid_sample(torch.from_numpy(disc())[None, None], grid, align_corners=False)[0, 0].numpy()
    assert (got != (ref >= 0.5))[inside].sum() <= 2  # float rounding at exactly 0.5 aside: the same


def test_a_soft_mask_is_interpolated_then_thresholded():
    # a horizontal ramp 0..1 over a 10 px wide box: the pixels right of the middle survive
    ramp = np.tile((np.arange(M) + 0.5) / M, (M, 1)).astype(np.float32)
    x0, y0, patch = paste_box_mask(ramp, (0, 0, 10, 4), 10, 4)
    assert (x0, y0, patch.shape) == (0, 0, (4, 10))
    assert patch[:, 5:].all() and not patch[:, :5].any()
    assert paste_box_mask(torch.from_numpy(ramp)[None], (0, 0, 10, 4), 10, 4)[2].tolist() == patch.tolist()


@pytest.mark.parametrize(
    "box",
    [
        (5.2, 3.9, 30.6, 20.1),  # inside
        (-10.0, -5.0, 12.0, 9.0),  # over the top-left corner
        (40.0, 0.0, 64.0, 48.0),  # full height, to the right edge: runs join across columns
        (0.0, 0.0, 64.0, 48.0),  # the whole image
        (20.0, 20.0, 20.4, 20.4),  # no pixel centre inside
        (70.0, 10.0, 90.0, 30.0),  # outside the image
    ],
)
def test_rle_of_a_pasted_mask_equals_pycocotools_encode_of_the_full_mask(box):
    from sniper.engine.predict import _encode_masks

    w, h = 64, 48
    prob = np.maximum(disc(), np.eye(M, dtype=np.float32))  # a disc and a diagonal
    x0, y0, patch = paste_box_mask(prob, box, w, h)
    full = full_mask(x0, y0, patch, w, h)
    (rle,) = _encode_masks(prob[None], np.array([box], np.float32), w, h)
    ref = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
    assert rle["size"] == [h, w] and isinstance(rle["counts"], str)
    assert rle["counts"] == ref["counts"].decode("ascii")
    assert np.array_equal(mask_utils.decode(rle).astype(bool), full)


# ------------------------------------------------------------------ masks through the pyramid


class FixedMaskModel(torch.nn.Module):
    """A 'mask model' (``has_masks``) whose detections (input px) and masks depend on the input
    size; records the valid_ranges it was given."""

    has_masks = True

    def __init__(self, by_size):
        super().__init__()
        self.by_size = by_size  # (h, w) -> (boxes, scores, labels, masks [N, M, M])
        self.calls: list[dict] = []

    def forward(self, images, image_sizes=None, *, valid_ranges=None, raw_detections=False):
        assert not raw_detections
        self.calls.append({"sizes": list(image_sizes), "valid_ranges": list(valid_ranges)})
        out = []
        for size in image_sizes:
            b, s, lab, m = self.by_size(tuple(size))
            out.append(
                {
                    "boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.tensor(s, dtype=torch.float32),
                    "labels": torch.tensor(lab, dtype=torch.int64),
                    "masks": torch.as_tensor(np.asarray(m, np.float32)).reshape(-1, 1, M, M),
                }
            )
        return out


def half(side: str) -> np.ndarray:
    m = np.zeros((M, M), np.float32)
    if side == "left":
        m[:, : M // 2] = 1
    elif side == "top":
        m[: M // 2] = 1
    else:
        m[:, M // 2 :] = 1
    return m


def two_scale_duplicates(size):
    """The same object (original px [10, 10, 50, 50]) at factor 1 and 2, with different masks;
    plus, at factor 1, an out-of-range 80 px box with its own mask."""
    if size == (100, 100):  # factor 1
        return [[10, 10, 50, 50], [0, 0, 80, 80]], [0.9, 0.95], [1, 2], [half("left"), half("top")]
    assert size == (200, 200)
    return [[20, 20, 100, 100]], [0.8], [1], [half("right")]


@pytest.mark.parametrize("merge", ["softnms", "nms"])
def test_masks_stay_with_their_boxes_through_range_filter_and_merge(merge):
    model = FixedMaskModel(two_scale_duplicates)
    scales = [Scale(factor=1.0, valid_range=(None, 50)), Scale(factor=2.0, valid_range=(None, None))]
    det = Predictor(model, InferConfig(scales=scales, merge=merge), CATEGORIES).predict(
        [np.zeros((100, 100, 3), np.uint8)]
    )[0]
    # the model got each scale's range in ITS input px (factor 1: < 50; factor 2: open), a bit wider
    (r1,), (r2,) = (c["valid_ranges"] for c in model.calls)
    assert r1[0] == 0 and r1[1] == pytest.approx(50, rel=2e-4) and r1[1] >= 50
    assert r2 == (0.0, math.inf)
    # the 80 px box is out of range: it and its mask are gone; the duplicate keeps its own mask
    if merge == "softnms":
        np.testing.assert_allclose(det.scores, [0.9, 0.8 * math.exp(-1 / 0.55)], rtol=1e-5)
        np.testing.assert_allclose(det.boxes, [[10, 10, 50, 50]] * 2, atol=1e-5)
        assert np.array_equal(det.masks, np.stack([half("left"), half("right")]))
    else:
        np.testing.assert_allclose(det.scores, [0.9])
        assert np.array_equal(det.masks, half("left")[None])
    # the segmentation is the survivor's own mask pasted at its box in the original image
    left = mask_utils.decode(det.segmentations[0]).astype(bool)
    assert left.shape == (100, 100) and left[10:50, 10:30].all() and left.sum() == 40 * 20
    if merge == "softnms":
        right = mask_utils.decode(det.segmentations[1]).astype(bool)
        assert right[10:50, 30:50].all() and right.sum() == 40 * 20
    recs = detections_to_coco(7, det)
    assert [r["segmentation"] for r in recs] == det.segmentations
    assert all(set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"} for r in recs)


def test_merges_carry_any_per_detection_key_by_index():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    dets = {
        "boxes": boxes,
        "scores": torch.tensor([0.5, 0.9, 0.7, 0.3]),
        "labels": torch.tensor([1, 1, 1, 2]),
        "masks": torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 1, 3, 3),
    }
    for merge in (SoftNMSMerge(), NMSMerge()):
        out = merge(dets)
        # each kept row's mask is the input row's: find it by its box and label
        for b, lab, m in zip(out["boxes"], out["labels"], out["masks"]):
            src = int(m[0, 0, 0])
            assert torch.equal(boxes[src], b) and int(dets["labels"][src]) == int(lab)
        assert out["masks"].shape[1:] == (1, 3, 3)
    out = NMSMerge()(dets)
    assert out["masks"][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]  # the 0.5 duplicate is suppressed
    with pytest.raises(ValueError, match="one row per box"):
        SoftNMSMerge()({**dets, "masks": dets["masks"][:2]})


def test_masks_are_kept_by_the_window_that_owns_the_detection():
    """Tiled: each window's detections are cut by ownership; the masks are cut with them."""
    w, h = 400, 100

    def per_window(size):
        hh, ww = size
        # in every window: one box near its left edge (mask 'left') and one in its middle ('right')
        return [[2, 40, 22, 60], [ww / 2 - 10, 40, ww / 2 + 10, 60]], [0.9, 0.8], [1, 2], [half("left"), half("right")]

    model = FixedMaskModel(per_window)
    cfg = InferConfig(scales=[Scale(factor=1.0, valid_range=(None, None))], merge="nms", max_pixels_per_pass=200 * 100)
    det = Predictor(model, cfg, CATEGORIES).predict([np.zeros((h, w, 3), np.uint8)])[0]
    assert sum(len(c["sizes"]) for c in model.calls) > 1  # tiled
    assert set(det.labels.tolist()) == {1, 2}
    for box, label, m, seg in zip(det.boxes, det.labels, det.masks, det.segmentations):
        assert np.array_equal(m, half("left") if label == 1 else half("right"))
        full = mask_utils.decode(seg).astype(bool)
        ys, xs = np.nonzero(full)
        assert xs.min() >= box[0] - 0.5 and xs.max() + 1 <= box[2] + 0.5


# ------------------------------------------------------------------ a tiny real mask model


def tiny_mask_config() -> Config:
    cfg = Config()
    cfg.model.pretrained = False  # tests never need ImageNet weights
    cfg.model.fc_dim = 16
    cfg.model.masks = True
    cfg.model.mask_head_layers = [8, 8]
    cfg.infer.scales = [
        Scale(short=96, max_size=128, valid_range=(None, 40)),
        Scale(short=160, max_size=200, valid_range=(20, None)),
    ]
    cfg.proposals.scales = cfg.infer.scales
    return cfg


def test_a_tiny_mask_model_over_a_two_scale_pyramid():
    from sniper.model import build_model

    cfg = tiny_mask_config()
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=len(CATEGORIES))
    pred = Predictor(model, cfg.infer, CATEGORIES)
    assert pred.masks
    calls = []
    forward = pred.model.forward

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return forward(*args, **kwargs)

    pred.model.forward = spy
    w, h = 150, 120
    image = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    det = pred.predict([image])[0]
    # each scale is called with its range in its input px (x0.8 and x4/3), never with raw_detections
    assert [c.get("raw_detections", False) for c in calls] == [False, False]
    (lo1, hi1), (lo2, hi2) = (c["valid_ranges"][0] for c in calls)
    assert lo1 == 0 and hi1 == pytest.approx(40 * 0.8, rel=2e-4)
    assert lo2 == pytest.approx(20 * 4 / 3, rel=2e-4) and hi2 == math.inf
    assert len(det) > 0 and det.masks.shape == (len(det), M, M) and len(det.segmentations) == len(det)
    recs = detections_to_coco(1, det)
    for r, box in zip(recs, det.boxes):
        seg = r["segmentation"]
        assert seg["size"] == [h, w] and isinstance(seg["counts"], str)
        full = mask_utils.decode(seg).astype(bool)
        ys, xs = np.nonzero(full)
        if len(xs):  # every pixel centre inside the box
            assert xs.min() + 0.5 >= box[0] and xs.max() + 0.5 <= box[2]
            assert ys.min() + 0.5 >= box[1] and ys.max() + 0.5 <= box[3]
    assert any(mask_utils.area(r["segmentation"]) > 0 for r in recs)
    json.dumps(recs)  # JSON-ready


def test_a_box_model_is_called_raw_and_gives_no_masks():
    from sniper.model import build_model

    cfg = tiny_mask_config()
    cfg.model.masks = False
    torch.manual_seed(0)
    pred = Predictor(build_model(cfg.model, num_classes=2), cfg.infer, CATEGORIES)
    assert not pred.masks
    calls = []
    forward = pred.model.forward
    pred.model.forward = lambda *a, **k: calls.append(k) or forward(*a, **k)
    det = pred.predict([np.zeros((60, 80, 3), np.uint8)])[0]
    assert all(c == {"image_sizes": c["image_sizes"], "raw_detections": True} for c in calls)
    assert det.masks is None and det.segmentations is None
    assert all("segmentation" not in r for r in detections_to_coco(1, det))


# ------------------------------------------------------------------ pictures and the CLI


def test_drawn_masks_tint_their_pixels_in_the_class_colour():
    img = np.full((100, 100, 3), 100, np.uint8)
    box = np.array([[20.0, 30.0, 80.0, 90.0]])  # the label tag goes above the box
    x0, y0, patch = paste_box_mask(disc(), box[0], 100, 100)
    full = full_mask(x0, y0, patch, 100, 100)
    pic = np.asarray(draw_detections(img, box, np.array([0.9]), np.array([17]), {17: "dog"}, masks=[(x0, y0, patch)]))
    colour = np.array(class_colour(17), np.float64)
    np.testing.assert_allclose(pic[60, 50], 100 * 0.55 + colour * 0.45, atol=1)  # semi-transparent fill
    assert (pic[86, 76] == 100).all()  # inside the box, outside the disc: untouched
    below_right = np.zeros((100, 100), bool)
    below_right[92:], below_right[:, 82:] = True, True
    assert (pic[below_right] == 100).all()  # nothing outside the box
    left_border = full & ~np.roll(full, 1, axis=1)  # the disc's leftmost pixel in each row: the outline
    assert left_border.sum() > 10 and (pic[left_border] == np.array(class_colour(17), np.uint8)).all()
    # the fill sits under the box: the box outline is drawn over it where they meet
    assert (pic[60, 20] != 100).any()
    # a full-picture bool mask draws the same; a detection that is not shown has no mask drawn
    same = np.asarray(draw_detections(img, box, np.array([0.9]), np.array([17]), {17: "dog"}, masks=[full]))
    assert np.array_equal(same, pic)
    hidden = np.asarray(draw_detections(img, box, np.array([0.1]), np.array([17]), masks=[full]))
    assert (hidden == 100).all()
    with pytest.raises(ValueError, match="masks for"):
        draw_detections(img, box, np.array([0.9]), np.array([17]), masks=[])


def test_cli_predict_writes_segmentations_and_draws_masks(tmp_path, capsys):
    from sniper.cli import main
    from sniper.engine.checkpoint import save_model_final
    from sniper.model import build_model

    cfg = tiny_mask_config()
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=len(CATEGORIES))
    weights = tmp_path / "model_final.pt"
    save_model_final(weights, model, cfg, CATEGORIES)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((90 + 10 * i, 120, 3)) * 255).astype(np.uint8)).save(folder / f"im{i}.png")
    out = tmp_path / "out"
    args = ["predict", "--no-progress", "--weights", str(weights), "--source", str(folder), "--out", str(out)]
    assert main([*args, "--device", "cpu", "--visualize", "1", "--vis-top-k", "5"]) == 0
    dets = json.loads((out / "detections.json").read_text())
    sizes = {1: [90, 120], 2: [100, 120]}
    assert dets and {d["image_id"] for d in dets} == {1, 2}
    assert all(d["segmentation"]["size"] == sizes[d["image_id"]] for d in dets)
    assert json.loads((out / "summary.json").read_text())["masks"] is True
    (pic,) = sorted((out / "vis").glob("*.jpg"))
    assert Image.open(pic).size == (120, 90)
    # the inference-only model settings may change at predict time; the others come from the weights
    capped = tmp_path / "capped"
    cap_args = ["predict", "--no-progress", "--weights", str(weights), "--source", str(folder), "--out", str(capped)]
    assert main([*cap_args, "--device", "cpu", "--set", "model.mask_detections_per_img=2"]) == 0
    few = json.loads((capped / "detections.json").read_text())
    per_image = [sum(d["image_id"] == i for d in few) for i in (1, 2)]
    assert max(per_image) <= 2 * len(cfg.infer.scales) < min(sum(d["image_id"] == i for d in dets) for i in (1, 2))
    cap_args[cap_args.index(str(capped))] = str(tmp_path / "other")
    assert main([*cap_args, "--set", "model.fc_dim=32"]) != 0
    assert "model.fc_dim" in capsys.readouterr().err
