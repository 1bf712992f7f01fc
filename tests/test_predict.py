"""Pyramid inference: exact geometry, valid ranges, merge, tiling, outputs, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sniper.config import Config, InferConfig, ProposalConfig
from sniper.engine.predict import (
    Predictor,
    list_source,
    plan_windows,
    predict_proposals,
)
from sniper.errors import SniperError
from sniper.scales import Scale, scaled_size
from sniper.viz.detections import draw_detections

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}, {"id": 90, "name": "zebra"}]  # sparse ids


class FixedModel(torch.nn.Module):
    """Returns the same detections (input px) for every image; records what it was given."""

    def __init__(self, boxes, scores=None, labels=None, by_size=None):
        super().__init__()
        self.boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        self.scores = torch.tensor(scores if scores is not None else [0.9] * len(self.boxes))
        self.labels = torch.tensor(labels if labels is not None else [1] * len(self.boxes), dtype=torch.int64)
        self.by_size = by_size  # optional (h, w) -> (boxes, scores, labels)
        self.calls: list[tuple[tuple[int, ...], list[tuple[int, int]]]] = []

    def _one(self, size):
        if self.by_size is not None:
            b, s, lab = self.by_size(size)
            return {"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(s),
                    "labels": torch.tensor(lab, dtype=torch.int64)}  # fmt: skip
        return {"boxes": self.boxes.clone(), "scores": self.scores.clone(), "labels": self.labels.clone()}

    def forward(self, images, image_sizes=None):
        sizes = image_sizes or [tuple(images.shape[-2:])] * len(images)
        self.calls.append((tuple(images.shape), list(sizes)))
        return [self._one(s) for s in sizes]

    def proposals(self, images, image_sizes):
        outs = self.forward(images, image_sizes)
        return [(o["boxes"], o["scores"]) for o in outs]


class BrightModel(torch.nn.Module):
    """'Detects' the bright rectangle of an image: the box of pixels > 0.5 inside image_sizes."""

    def __init__(self):
        super().__init__()
        self.max_input_pixels = 0

    def forward(self, images, image_sizes=None):
        out = []
        for img, (h, w) in zip(images, image_sizes):
            self.max_input_pixels = max(self.max_input_pixels, h * w)
            mask = img[0, :h, :w] > 0.5
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if len(xs) == 0:
                out.append(
                    {
                        "boxes": torch.zeros(0, 4),
                        "scores": torch.zeros(0),
                        "labels": torch.zeros(0, dtype=torch.int64),
                    }
                )
                continue
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
            out.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([2])})
        return out

    def proposals(self, images, image_sizes):
        return [(o["boxes"], o["scores"]) for o in self.forward(images, image_sizes)]


def infer_cfg(scales, **kw) -> InferConfig:
    return InferConfig(scales=scales, **kw)


def open_scale(**kw) -> Scale:
    return Scale(valid_range=(None, None), **kw)


def bright_image(w, h, box) -> np.ndarray:
    a = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    a[y1:y2, x1:x2] = 255
    return a


# ------------------------------------------------------------------ geometry


# (w, h) -> the size at short=800, max_size=1333, worked out by hand (not by the code under test)
@pytest.mark.parametrize(
    "w, h, ow, oh",
    [
        (640, 480, 1067, 800),  # x 5/3: 1066.7
        (480, 640, 800, 1067),
        (333, 500, 800, 1201),  # x 800/333: 1201.2
        (1000, 200, 1333, 267),  # x 4 would be 4000 wide: capped, x 1.333 (266.6 high)
    ],
)
def test_mapping_back_is_exact(w, h, ow, oh):
    scale = open_scale(short=800, max_size=1333)
    model = FixedModel([[100.0, 200.0, 300.0, 420.0]])
    det = Predictor(model, infer_cfg([scale], merge="nms"), CATEGORIES).predict(
        [np.zeros((h, w, 3), np.uint8)]
    )[0]
    assert scaled_size(w, h, scale.resize_factor(w, h)) == (ow, oh)
    assert model.calls[0][1] == [(oh, ow)]  # the model saw the image at the scale's size
    expected = np.array([100 * w / ow, 200 * h / oh, 300 * w / ow, 420 * h / oh])
    expected = np.minimum(expected, [w, h, w, h])
    np.testing.assert_allclose(det.boxes[0], expected, rtol=1e-6)


def test_batched_images_of_different_sizes_each_map_back():
    scale = open_scale(factor=0.5)
    model = FixedModel([[10.0, 20.0, 40.0, 60.0]])
    pred = Predictor(model, infer_cfg([scale], merge="nms", batch_size=4), CATEGORIES)
    dets = pred.predict([np.zeros((200, 300, 3), np.uint8), np.zeros((400, 100, 3), np.uint8)])
    shape, sizes = model.calls[0]
    assert len(model.calls) == 1 and shape[0] == 2  # one padded batch
    assert shape[2] % 32 == 0 and shape[3] % 32 == 0
    assert sorted(sizes) == [(100, 150), (200, 50)]
    for d in dets:
        np.testing.assert_allclose(d.boxes[0], [20, 40, 80, 120], rtol=1e-6)


def test_inputs_pil_numpy_tensor_agree():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    model = BrightModel()
    pred = Predictor(model, infer_cfg([open_scale(factor=1.0)], merge="nms"), CATEGORIES)
    outs = pred.predict(
        [
            a,
            Image.fromarray(a),
            torch.from_numpy(a).permute(2, 0, 1),
            torch.from_numpy(a).permute(2, 0, 1) / 255.0,
        ]
    )
    for d in outs[1:]:
        np.testing.assert_allclose(d.boxes, outs[0].boxes)
    with pytest.raises(ValueError, match="image 0"):
        pred.predict([np.zeros((5, 5, 7), np.uint8)])


def test_valid_range_filter_per_scale():
    # scale A (x1) keeps [0, 50), scale B (x2) keeps [50, inf); each sees a 30 px and an 80 px object
    a, b = Scale(factor=1.0, valid_range=(None, 50)), Scale(factor=2.0, valid_range=(50, None))

    def by_size(size):
        h, _ = size
        f = 1.0 if h == 400 else 2.0
        score = 0.8 if f == 1.0 else 0.7
        boxes = [[0, 0, 30 * f, 30 * f], [200 * f, 0, 280 * f, 80 * f], [0, 200 * f, 50 * f, 250 * f]]
        return boxes, [score] * 3, [1, 1, 1]

    model = FixedModel([], by_size=by_size)
    det = Predictor(model, infer_cfg([a, b], merge="nms"), CATEGORIES).predict(
        [np.zeros((400, 400, 3), np.uint8)]
    )[0]
    got = sorted(
        (tuple(np.round(bx).astype(int)), round(float(s), 2)) for bx, s in zip(det.boxes, det.scores)
    )
    # 30 px from A only; 80 px and exactly-50 px (half-open range) from B only
    assert got == [((0, 0, 30, 30), 0.8), ((0, 200, 50, 250), 0.7), ((200, 0, 280, 80), 0.7)]


def test_duplicates_across_scales_are_merged():
    scales = [open_scale(factor=1.0), open_scale(factor=2.0)]

    def by_size(size):
        f = size[0] / 100
        return [[10 * f, 10 * f, 60 * f, 50 * f]], [0.9 if f == 1 else 0.6], [2]

    img = np.zeros((100, 100, 3), np.uint8)
    det = Predictor(FixedModel([], by_size=by_size), infer_cfg(scales, merge="nms"), CATEGORIES).predict(
        [img]
    )[0]
    assert len(det) == 1 and det.scores[0] == pytest.approx(0.9)
    np.testing.assert_allclose(det.boxes[0], [10, 10, 60, 50])
    assert det.category_ids.tolist() == [17]  # label 2 -> second category's dataset id
    # Soft-NMS (default): the duplicate survives only with a gaussian-decayed score (IoU 1)
    det = Predictor(FixedModel([], by_size=by_size), infer_cfg(scales), CATEGORIES).predict([img])[0]
    np.testing.assert_allclose(det.scores, [0.9, 0.6 * math.exp(-1 / 0.55)], rtol=1e-5)


def test_max_detections_and_score_threshold():
    boxes = [[i * 10, 0, i * 10 + 8, 8] for i in range(30)]
    scores = [0.0005] * 5 + [0.5] * 25
    model = FixedModel(boxes, scores, [1] * 30)
    cfg = infer_cfg([open_scale(factor=1.0)], max_detections=20)
    det = Predictor(model, cfg, CATEGORIES).predict([np.zeros((50, 400, 3), np.uint8)])[0]
    assert len(det) == 20 and det.scores.min() >= 0.001


# ------------------------------------------------------------------ tiling


def test_plan_windows_cover_and_bound():
    wins = plan_windows(1000, 600, 2000, 1200, 400 * 400, overlap=100)
    assert len(wins) > 1
    assert all(w.out_w * w.out_h <= 400 * 400 for w in wins)
    assert len({(w.out_w, w.out_h) for w in wins}) == 1  # equal windows batch without padding
    cover = np.zeros((600, 1000), bool)
    own = np.zeros((600, 1000), int)
    ys, xs = np.mgrid[0:600, 0:1000] + 0.5
    for w in wins:
        cover[w.y0 : w.y1, w.x0 : w.x1] = True
        ox0, oy0, ox1, oy1 = w.own
        own += (xs >= ox0) & (xs < ox1) & (ys >= oy0) & (ys < oy1)
        assert all(o == 0 or o >= 50 for o in w.overlap)  # >= 100 input px = 50 image px
    assert all(any(o > 0 for o in w.overlap) for w in wins)  # each window overlaps a neighbour
    assert cover.all() and (own == 1).all()  # ownership partitions the image
    assert plan_windows(100, 80, 200, 160, 200 * 160, 10) == plan_windows(100, 80, 200, 160, 10**9, 10)
    assert len(plan_windows(100, 80, 200, 160, 200 * 160, 10)) == 1


@pytest.mark.parametrize("x1", [0, 100, 115, 118, 125, 130, 135, 150, 230, 248, 255, 480])
@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_tiling_finds_object_once(x1, factor):
    """A 500 x 300 image above the pixel limit; one 20 x 15 object swept across window borders."""
    box = (x1, 140, min(x1 + 20, 500), 155)
    img = bright_image(500, 300, box)
    model = BrightModel()
    limit = int(150 * 150 * factor * factor)
    cfg = infer_cfg(
        [open_scale(factor=factor)], merge="nms", max_pixels_per_pass=limit, tile_overlap=int(32 * factor)
    )
    det = Predictor(model, cfg, CATEGORIES, batch_size=3).predict([img])[0]
    assert 0 < model.max_input_pixels <= limit  # every pass respected the limit ...
    assert len(det) == 1  # ... and the object was reported once
    np.testing.assert_allclose(det.boxes[0], box, atol=0.51 if factor != 1 else 1e-4)


def test_tiling_overlap_covers_the_largest_valid_object():
    """tile_overlap is small, but a 75 px object in range must still be seen whole."""
    box = (115, 100, 190, 175)  # 75 x 75, crosses window borders
    scale = Scale(factor=1.0, valid_range=(None, 80))
    model = BrightModel()
    cfg = infer_cfg([scale], merge="nms", max_pixels_per_pass=200 * 200, tile_overlap=8)
    det = Predictor(model, cfg, CATEGORIES).predict([bright_image(500, 300, box)])[0]
    assert model.max_input_pixels <= 200 * 200
    assert len(det) == 1
    np.testing.assert_allclose(det.boxes[0], box)


# ------------------------------------------------------------------ proposals


def test_proposals_top_per_scale_and_nms():
    def by_size(size):
        f = size[0] / 100
        boxes = [[0, 0, 20 * f, 20 * f], [1 * f, 1 * f, 21 * f, 21 * f], [50 * f, 50 * f, 90 * f, 90 * f]]
        return boxes, [0.9, 0.8, 0.3 if f == 1 else 0.35], [1, 1, 1]

    pcfg = ProposalConfig(
        scales=[Scale(factor=1.0, valid_range=(None, 10)), Scale(factor=2.0)], top_per_scale=2, nms_thresh=0.7
    )
    pred = Predictor(FixedModel([], by_size=by_size), InferConfig(), [], "cpu")
    (props,) = pred.proposals([np.zeros((100, 100, 3), np.uint8)], pcfg)
    # top 2 of each scale (the 0.3 / 0.35 box is 3rd at both), no valid-range filter, NMS 0.7
    np.testing.assert_allclose(props.scores, [0.9])
    np.testing.assert_allclose(props.boxes, [[0, 0, 20, 20]])
    pcfg.top_per_scale = 3
    (props,) = pred.proposals([np.zeros((100, 100, 3), np.uint8)], pcfg)
    np.testing.assert_allclose(props.scores, [0.9, 0.35])


def test_predict_proposals_library(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(bright_image(120, 80, (10 + i, 10, 50, 40))).save(folder / f"{i}.png")
    model = BrightModel().train()
    pcfg = ProposalConfig(scales=[open_scale(factor=1.0), open_scale(factor=0.5)])
    recs = predict_proposals(model, folder, None, pcfg, "cpu", progress=False)
    assert model.training  # mode restored for the trainer
    assert [r["image_id"] for r in recs] == [1, 2, 3]
    assert all(r["category_id"] == 1 and len(r["bbox"]) == 4 for r in recs)
    assert recs[2]["bbox"] == [12.0, 10.0, 38.0, 30.0]


# ------------------------------------------------------------------ sources and CLI


@pytest.fixture
def fake_weights(tmp_path, monkeypatch):
    """A weights file and a patched loader that returns BrightModel with sparse categories."""
    import sniper.engine.checkpoint as ckpt

    cfg = Config()

    cfg.model.pretrained = False  # tests never need ImageNet weights
    cfg.infer.scales = [
        Scale(factor=1.0, valid_range=(None, None)),
        Scale(factor=0.5, valid_range=(None, None)),
    ]
    cfg.proposals.scales = [Scale(factor=1.0)]
    monkeypatch.setattr(
        ckpt, "load_model_for_inference", lambda path, map_location="cpu": (BrightModel(), cfg, CATEGORIES)
    )
    w = tmp_path / "model.pt"
    w.write_bytes(b"x")
    return w


def run_cli(*args):
    from sniper.cli import main

    return main(["predict", "--no-progress", *map(str, args)])


def make_folder(tmp_path, n=3):
    folder = tmp_path / "imgs"
    folder.mkdir()
    boxes = []
    for i in range(n):
        b = (10 + 5 * i, 20, 60 + 5 * i, 70)
        Image.fromarray(bright_image(160, 120, b)).save(folder / f"img{i}.png")
        boxes.append(b)
    (folder / "notes.txt").write_text("not an image")
    return folder, boxes


def test_cli_folder_source(tmp_path, fake_weights, capsys):
    folder, boxes = make_folder(tmp_path)
    out = tmp_path / "out"
    assert (
        run_cli(
            "--weights",
            fake_weights,
            "--source",
            folder,
            "--out",
            out,
            "--visualize",
            2,
            "--set",
            "infer.merge=nms",
        )
        == 0
    )
    dets = json.loads((out / "detections.json").read_text())
    images = json.loads((out / "images.json").read_text())["images"]
    assert [(im["id"], im["file_name"]) for im in images] == [
        (1, "img0.png"),
        (2, "img1.png"),
        (3, "img2.png"),
    ]
    assert len(dets) == 3
    for d, b in zip(sorted(dets, key=lambda d: d["image_id"]), boxes):
        assert d["category_id"] == 17  # dataset id of label 2
        assert d["bbox"] == [b[0], b[1], b[2] - b[0], b[3] - b[1]]
    assert sorted(p.name for p in (out / "vis").iterdir()) == ["1_img0.jpg", "2_img1.jpg"]
    assert "3 images" in capsys.readouterr().out


def test_cli_single_image_and_proposals(tmp_path, fake_weights):
    folder, boxes = make_folder(tmp_path, 1)
    out = tmp_path / "out"
    assert (
        run_cli("--weights", fake_weights, "--source", folder / "img0.png", "--out", out, "--proposals") == 0
    )
    props = json.loads((out / "proposals.json").read_text())
    assert not (out / "detections.json").exists()
    assert props == [{"image_id": 1, "category_id": 1, "bbox": [10.0, 20.0, 50.0, 50.0], "score": 0.9}]


def test_cli_coco_source_with_bad_image(tmp_path, fake_weights, capsys):
    folder, _ = make_folder(tmp_path, 2)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    coco = {
        "images": [
            {"id": 42, "file_name": "img0.png", "width": 160, "height": 120},
            {"id": 7, "file_name": "broken.jpg", "width": 160, "height": 120},
            {"id": 9, "file_name": "img1.png", "width": 160, "height": 120},
            {"id": 11, "file_name": "../escape.png", "width": 160, "height": 120},
        ],
        "annotations": [],
        "categories": CATEGORIES,
    }
    src = tmp_path / "val.json"
    src.write_text(json.dumps(coco))
    out = tmp_path / "out"
    # default: a clear error naming the file
    assert run_cli("--weights", fake_weights, "--source", src, "--images", folder, "--out", out) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert (
        run_cli(
            "--weights",
            fake_weights,
            "--source",
            src,
            "--images",
            folder,
            "--out",
            out,
            "--on-bad-image",
            "skip",
        )
        == 0
    )
    dets = json.loads((out / "detections.json").read_text())
    assert sorted({d["image_id"] for d in dets}) == [9, 42]  # the dataset's own image ids
    summary = json.loads((out / "summary.json").read_text())
    assert [s["image_id"] for s in summary["skipped"]] == [7, 11] and summary["images"] == 2
    assert "skipped 2" in capsys.readouterr().out
    assert not (out / "images.json").exists()
    # a COCO source needs the image root
    assert run_cli("--weights", fake_weights, "--source", src, "--out", out) == 2
    assert "--images" in capsys.readouterr().err


def test_cli_errors(tmp_path, fake_weights, capsys):
    folder, _ = make_folder(tmp_path, 1)
    assert run_cli("--weights", tmp_path / "missing.pt", "--source", folder, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and "not found" in err and "Traceback" not in err
    assert run_cli("--weights", fake_weights, "--source", tmp_path / "nope", "--out", tmp_path / "o") == 2
    assert "nope" in capsys.readouterr().err
    assert (
        run_cli(
            "--weights", fake_weights, "--source", folder, "--out", tmp_path / "o", "--set", "model.fc_dim=3"
        )
        == 2
    )
    assert "model.fc_dim" in capsys.readouterr().err


def test_list_source_kinds(tmp_path):
    folder, _ = make_folder(tmp_path, 2)
    items, kind, _ = list_source(folder)
    assert kind == "folder" and [i.file_name for i in items] == ["img0.png", "img1.png"]
    items, kind, _ = list_source(folder / "img1.png")
    assert kind == "image" and items[0].image_id == 1
    with pytest.raises(Exception, match="not an image"):
        list_source(folder / "notes.txt")


def test_draft_decoded_jpeg_maps_to_original(tmp_path):
    """A large JPEG only needed at 1/4 size is decoded small; boxes still come out in original px."""
    from sniper.data.images import load_image

    box = (800, 400, 1600, 1200)
    path = tmp_path / "big.jpg"
    Image.fromarray(bright_image(2400, 1600, box)).save(path, quality=95)
    scales = [open_scale(short=400, max_size=600)]
    from sniper.engine.predict import _required_size

    loaded = load_image(path, max_pixels=10**9, draft_size=_required_size(path, scales, 10**9))
    assert loaded.image.size == (600, 400)  # decoded at 1/4
    det = Predictor(BrightModel(), infer_cfg(scales, merge="nms"), CATEGORIES).predict([loaded])[0]
    np.testing.assert_allclose(det.boxes[0], box, atol=4.01)  # one input px = 4 original px


def test_draw_detections_marks_boxes():
    img = np.zeros((100, 100, 3), np.uint8)
    pic = draw_detections(img, np.array([[20, 30, 80, 90], [0, 0, 10, 10]]), np.array([0.9, 0.1]), np.array([3, 17]),
                          {3: "cat", 17: "dog"})  # fmt: skip
    a = np.asarray(pic)
    assert a[60, 20].any() and not a[5, 9].any()  # the 0.1 box is below the threshold
    pic = draw_detections(img, np.array([[0, 0, 10, 10]]), np.array([0.1]), np.array([17]), top_k=1)
    assert np.asarray(pic)[5, 9].any()


def test_end_to_end_tiny_real_model(tmp_path):
    from sniper.engine.checkpoint import save_model_final
    from sniper.model import build_model

    cfg = Config()

    cfg.model.pretrained = False  # tests never need ImageNet weights
    cfg.infer.scales = [Scale(short=96, max_size=128, valid_range=(None, 40)), Scale(short=160, max_size=200)]
    cfg.proposals.scales = cfg.infer.scales
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=len(CATEGORIES))
    weights = tmp_path / "model_final.pt"
    save_model_final(weights, model, cfg, CATEGORIES)
    folder, _ = make_folder(tmp_path, 2)
    out = tmp_path / "out"
    assert (
        run_cli("--weights", weights, "--source", folder, "--out", out, "--device", "cpu", "--visualize", 1)
        == 0
    )
    dets = json.loads((out / "detections.json").read_text())
    # an untrained head scores every class ~1/4, far above box_score_thresh: detections on both images
    assert isinstance(dets, list) and {d["image_id"] for d in dets} == {1, 2}
    assert all(d["category_id"] in {3, 17, 90} and len(d["bbox"]) == 4 for d in dets)
    assert run_cli("--weights", weights, "--source", folder, "--out", out, "--proposals") == 0
    props = json.loads((out / "proposals.json").read_text())
    assert props and all(p["category_id"] == 1 for p in props)


# ------------------------------------------------------------------ category order

# Categories NOT sorted by id in the file: labels follow sorted ids (1 -> label 1, 90 -> label 2).
UNSORTED_CATEGORIES = [{"id": 90, "name": "zebra"}, {"id": 1, "name": "person"}]


def test_model_file_and_predictor_map_labels_to_the_right_ids(tmp_path):
    from sniper.data.coco import load_coco
    from sniper.engine.checkpoint import load_model_for_inference, save_checkpoint, save_model_final
    from sniper.model import build_model

    coco = load_coco({"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
                      "annotations": [], "categories": UNSORTED_CATEGORIES})  # fmt: skip
    assert coco.label_of([1, 90]).tolist() == [1, 2]
    cfg = Config()
    cfg.model.pretrained = False  # tests never need ImageNet weights
    cfg.model.pretrained = False
    cfg.model.fc_dim = 16
    model = build_model(cfg.model, num_classes=2)
    # the model sees a zebra (0.9) and a person (0.8), as labels of the dataset
    fixed = FixedModel([[0, 0, 5, 5], [5, 5, 10, 10]], [0.9, 0.8], coco.label_of([90, 1]).tolist())
    icfg = infer_cfg([open_scale(factor=1.0)], merge="nms")
    image = np.zeros((10, 10, 3), np.uint8)

    def ids_from(categories) -> list[int]:
        return Predictor(fixed, icfg, categories).predict([image])[0].category_ids.tolist()

    # save_model_final given the categories in file order (as the pipeline used to pass them)
    weights = tmp_path / "model_final.pt"
    save_model_final(weights, model, cfg, coco.categories)
    _, _, cats = load_model_for_inference(weights)
    assert [c["id"] for c in cats] == [1, 90] and [c["name"] for c in cats] == ["person", "zebra"]
    assert ids_from(cats) == [90, 1]
    # a model file written in file order (before categories were stored in label order) reads back right
    state = torch.load(weights, weights_only=True)
    state["categories"] = [dict(c) for c in UNSORTED_CATEGORIES]
    old = tmp_path / "old_model_final.pt"
    save_checkpoint(old, state)
    _, _, cats = load_model_for_inference(old)
    assert [c["id"] for c in cats] == [1, 90]
    assert ids_from(cats) == [90, 1]
    # the Predictor itself follows the label rule whatever order it is given
    assert ids_from(UNSORTED_CATEGORIES) == [90, 1]
    with pytest.raises(SniperError, match="duplicate category id"):
        Predictor(fixed, icfg, [{"id": 3}, {"id": 3}])


# ------------------------------------------------------------------ order: range filter, then merge


class FixedProposals(torch.nn.Module):
    """Stands in for the RPN: the same proposals (input px) for every image."""

    def __init__(self, boxes):
        super().__init__()
        self.boxes = torch.tensor(boxes, dtype=torch.float32)

    def forward(self, images, features, targets=None, need_proposals=True):
        return [self.boxes.clone() for _ in images.image_sizes], None, {}


def model_with_head_output(rois, num_classes=2, **model_cfg):
    """A real SniperFasterRCNN whose RPN proposes ``rois`` [(box, probabilities incl. background)]
    and whose box head predicts exactly those class probabilities with zero box deltas."""
    from sniper.model import build_model

    cfg = Config()

    cfg.model.pretrained = False  # tests never need ImageNet weights
    cfg.model.pretrained = False
    cfg.model.fc_dim = 16
    for k, v in model_cfg.items():
        setattr(cfg.model, k, v)
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=num_classes).eval()
    model.rpn = FixedProposals([b for b, _ in rois])
    logits = torch.tensor([p for _, p in rois], dtype=torch.float32).clamp(min=1e-12).log()

    def predict(features, proposals, pool_shapes):
        n = sum(len(p) for p in proposals)
        return logits.repeat(len(proposals), 1), torch.zeros(n, 4)

    model.roi_heads.predict = predict
    return model


# One scale (factor 1, valid sqrt-area < 50). The head's top-k is 3 and its per-class NMS 0.5.
RANGE_ROIS = [
    ([0, 0, 80, 80], [0.0495, 0.95, 0.0005]),  # out of range, best scores: fill the head's top 3
    ([100, 0, 180, 80], [0.0495, 0.95, 0.0005]),
    ([200, 0, 280, 80], [0.0495, 0.95, 0.0005]),
    ([0, 100, 55, 155], [0.0995, 0.9, 0.0005]),  # out of range (55 px); IoU 0.53 with the next box
    ([0, 100, 40, 140], [0.1995, 0.8, 0.0005]),  # in range: hard NMS with the one above removes it
    ([200, 200, 230, 230], [0.2995, 0.0005, 0.7]),  # in range, class 2, below the head's top 3
]


@pytest.mark.parametrize("merge", ["softnms", "nms"])
@pytest.mark.parametrize("top_k", [3, 300])  # 3: both in-range boxes lost (top-k and NMS); 300: NMS
def test_valid_range_filter_comes_before_the_heads_nms_and_top_k(merge, top_k):
    model = model_with_head_output(RANGE_ROIS, box_detections_per_img=top_k, box_nms_thresh=0.5)
    cfg = infer_cfg([Scale(factor=1.0, valid_range=(None, 50))], merge=merge)
    det = Predictor(model, cfg, CATEGORIES[:2]).predict([np.zeros((300, 300, 3), np.uint8)])[0]
    np.testing.assert_allclose(det.boxes, [[0, 100, 40, 140], [200, 200, 230, 230]], atol=1e-3)
    np.testing.assert_allclose(det.scores, [0.8, 0.7], rtol=1e-4)
    assert det.category_ids.tolist() == [3, 17]
    # the model's own eval output (the contract) still applies the head's NMS and top-k
    (out,) = model(torch.zeros(1, 3, 300, 300))
    assert out["scores"].tolist() == pytest.approx([0.95] * 3 + ([0.9, 0.7] if top_k > 3 else []))


def test_pre_merge_cap_applies_after_the_range_filter():
    # 20 out-of-range 60 px boxes score above 3 in-range 20 px boxes; the cap keeps the best 2 in range
    boxes = [[i * 70, 0, i * 70 + 60, 60] for i in range(20)]
    boxes += [[i * 30, 100, i * 30 + 20, 120] for i in range(3)]
    scores = [0.9] * 20 + [0.5, 0.7, 0.6]
    model = FixedModel(boxes, scores, [1] * 23)
    cfg = infer_cfg([Scale(factor=1.0, valid_range=(None, 50))], merge="nms", pre_merge_top_k=2)
    det = Predictor(model, cfg, CATEGORIES).predict([np.zeros((200, 1500, 3), np.uint8)])[0]
    np.testing.assert_allclose(det.scores, [0.7, 0.6], rtol=1e-6)
    np.testing.assert_allclose(det.boxes, [[30, 100, 50, 120], [60, 100, 80, 120]])


def test_dense_detections_are_drawn_thin_with_a_legend():
    from sniper.viz.detections import DENSE

    img = np.zeros((200, 300, 3), np.uint8)
    n = DENSE + 40
    x = np.arange(n, dtype=np.float64) % 25 * 12
    y = np.arange(n, dtype=np.float64) // 25 * 40
    boxes = np.stack([x, y, x + 9, y + 30], axis=1)
    classes = np.where(np.arange(n) % 3 == 0, 3, 17)
    few = draw_detections(img, boxes[:DENSE], np.full(DENSE, 0.9), classes[:DENSE], {3: "cat", 17: "dog"})
    many = draw_detections(img, boxes, np.full(n, 0.9), classes, {3: "cat", 17: "dog"})
    assert few.size == (300, 200)  # labelled boxes, no legend
    assert many.width == 300 and many.height > 200  # a legend strip below the image
    a = np.asarray(many)
    # thin boxes: the pixel just inside the first box's left edge stays black, no label tag over it
    assert a[15, 0].any() and not a[15, 1].any() and not a[3, 3].any()
    legend = a[200:]
    assert legend.any()
