"""The synthetic dataset: determinism, valid COCO, and the scene properties SNIPER needs."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sniper.boxes import iou_matrix, xywh_to_xyxy
from sniper.cli import main
from sniper.data import synthetic
from sniper.data.synthetic import CATEGORIES, SyntheticSettings, make_dataset, make_image
from sniper.errors import SniperError

N_IMAGES = 10
SEED = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    summary = make_dataset(out, images=N_IMAGES, seed=SEED, progress=False)
    data = {k: json.loads((out / f"{k}.json").read_text()) for k in ("train", "val")}
    return out, summary, data


def _all(data, key):
    return data["train"][key] + data["val"][key]


def _files(out: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    files.update({p.name: p.read_bytes() for p in out.glob("*.json")})
    return files


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    small = SyntheticSettings(max_side=900)  # same code paths, less pixel work

    def run(name, seed):
        return _files(
            make_dataset(tmp_path / name, images=2, seed=seed, settings=small, progress=False).out_dir
        )

    a, b, c = run("a", 7), run("b", 7), run("c", 8)
    assert sorted(a) == ["000001.jpg", "000002.jpg", "train.json", "val.json"]
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_images_do_not_depend_on_dataset_size(dataset):
    out, _, _ = dataset
    buf = io.BytesIO()
    Image.fromarray(make_image(SEED, 4).pixels).save(buf, format="JPEG", quality=90)
    assert buf.getvalue() == (out / "images" / "000005.jpg").read_bytes()


def test_valid_coco(dataset):
    from pycocotools.coco import COCO

    out, summary, data = dataset
    for split in ("train", "val"):
        coco = COCO(str(out / f"{split}.json"))
        assert len(coco.getImgIds()) == len(data[split]["images"])
    assert len(data["train"]["images"]) == summary.train_images == 8
    assert len(data["val"]["images"]) == summary.val_images == 2
    images = {im["id"]: im for im in _all(data, "images")}
    assert sorted(images) == list(range(1, N_IMAGES + 1))
    anns = _all(data, "annotations")
    assert len({a["id"] for a in anns}) == len(anns) == summary.annotations
    cat_ids = [c["id"] for c in CATEGORIES]
    assert data["train"]["categories"] == data["val"]["categories"] == list(CATEGORIES)
    assert cat_ids != list(range(1, len(cat_ids) + 1)), "ids must be sparse to exercise id mapping"
    for split in ("train", "val"):
        split_ids = {im["id"] for im in data[split]["images"]}
        assert all(a["image_id"] in split_ids for a in data[split]["annotations"])
    for im in images.values():
        with Image.open(out / "images" / im["file_name"]) as f:
            assert f.size == (im["width"], im["height"]) and f.format == "JPEG"
    for a in anns:
        x, y, w, h = a["bbox"]
        im = images[a["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0, a
        assert x + w <= im["width"] and y + h <= im["height"], a
        assert a["category_id"] in cat_ids and a["iscrowd"] in (0, 1) and 0 < a["area"] <= w * h


def test_scene_statistics(dataset):
    _, summary, data = dataset
    images = {im["id"]: im for im in _all(data, "images")}
    sides = [(im["width"], im["height"]) for im in images.values()]
    assert all(600 <= s <= 2000 for wh in sides for s in wh)
    assert max(max(wh) for wh in sides) > 1500 and len({round(w / h, 2) for w, h in sides}) > 5
    anns = [a for a in _all(data, "annotations") if not a["iscrowd"]]
    size = np.array([math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in anns])
    half = np.array(
        [
            max(a["bbox"][2:]) > 0.5 * min(images[a["image_id"]]["width"], images[a["image_id"]]["height"])
            for a in anns
        ]
    )
    assert (size < 16).sum() >= 20, "many small objects"
    assert half.sum() >= 1, "some objects larger than half the image side"
    assert (size < 32).mean() > 0.25 and (size > 96).mean() > 0.1, "log-uniform-ish spread"
    assert len({a["category_id"] for a in anns}) >= 5
    assert summary.crowd_annotations >= 1
    assert sum(a["iscrowd"] for a in _all(data, "annotations")) == summary.crowd_annotations
    assert summary.truncated_annotations >= 3


def test_truncated_crowd_and_distractors_in_rendered_scenes():
    n_trunc = n_crowd = n_dis = 0
    kinds = set()
    for index in range(4):
        img = make_image(SEED, index)
        boxes = xywh_to_xyxy(np.array([a["bbox"] for a in img.annotations]))
        for a, (x1, y1, x2, y2) in zip(img.annotations, boxes):
            touches = x1 <= 0 or y1 <= 0 or x2 >= img.width or y2 >= img.height
            if a["truncated"]:
                n_trunc += 1
                assert touches, a
            if a["iscrowd"]:
                n_crowd += 1
                # one crowd box stands for many members: no individual boxes of them inside it
                inside = (boxes[:, 0] >= x1) & (boxes[:, 1] >= y1) & (boxes[:, 2] <= x2) & (boxes[:, 3] <= y2)
                assert inside.sum() == 1
        d = xywh_to_xyxy(img.distractor_boxes)
        n_dis += len(d)
        kinds.update(img.distractor_kinds)
        # distractors are drawn but never annotated: no annotation matches one
        assert len(d) and (iou_matrix(d, boxes) < 0.5).all()
    assert n_trunc >= 1 and n_crowd >= 1 and n_dis >= 10
    assert kinds == set(synthetic.DISTRACTOR_KINDS)


def test_annotated_objects_are_visible():
    """Each annotated box differs from the background around it (the object shows)."""
    img = make_image(SEED, 0)
    px = img.pixels.astype(float)
    for a in img.annotations:
        x, y, w, h = (int(v) for v in a["bbox"])
        patch = px[y : y + h, x : x + w]
        assert patch.std() > 5, a


@pytest.mark.parametrize("shape", sorted(synthetic.SHAPES))
def test_shapes_fit_their_circle(shape):
    """Every shape lies inside its circle of radius r: the patch never cuts a shape off."""
    r = 50.0
    ang = np.linspace(0, 2 * np.pi, 3601)
    for rho in (1.01 * r, 1.5 * r):
        assert (synthetic.SHAPES[shape](rho * np.cos(ang), rho * np.sin(ang), r) > 0).all()
    xs = np.linspace(-r, r, 201)
    inside = synthetic.SHAPES[shape](xs[None, :], xs[:, None], r) < 0
    assert inside.mean() > 0.15, "the shape has substance"


@settings(max_examples=60, deadline=None)
@given(
    shape=st.sampled_from(sorted(synthetic.SHAPES)),
    texture=st.sampled_from([None, *sorted(synthetic.TEXTURES)]),
    cx=st.floats(-50, 250),
    cy=st.floats(-50, 150),
    radius=st.floats(2, 120),
    seed=st.integers(0, 2**16),
)
def test_shape_patch_stays_in_image(shape, texture, cx, cy, radius, seed):
    rng = np.random.default_rng(seed)
    colours = (np.array([10, 20, 30], np.float32), np.array([200, 210, 220], np.float32))
    drawn = synthetic._shape_patch(rng, 200, 100, cx, cy, radius, shape, texture, colours)
    if drawn is None:
        return
    (x0, y0), alpha, rgb = drawn
    h, w = alpha.shape
    assert 0 <= x0 and 0 <= y0 and x0 + w <= 200 and y0 + h <= 100
    assert rgb.shape == (h, w, 3) and alpha.min() >= 0 and alpha.max() <= 1 and alpha.max() > 0
    assert rgb.min() >= 10 - 1e-3 and rgb.max() <= 220 + 1e-3
    tight = synthetic._tight_box((x0, y0), alpha)
    if tight is not None:
        assert x0 <= tight[0] < tight[2] <= x0 + w and y0 <= tight[1] < tight[3] <= y0 + h
        # the shape never extends beyond its circumscribed circle
        assert tight[0] >= math.floor(cx - radius - 1.5) and tight[2] <= math.ceil(cx + radius + 1.5)


def test_cli_writes_dataset_and_rewrites_in_place(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["make-dataset", str(out), "--images", "3", "--seed", "1", "--quiet"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000001.jpg", "000002.jpg", "000003.jpg"]
    readme = (out / "README.txt").read_text()
    assert readme.startswith(synthetic.README_MARKER) and "--seed 1" in readme
    # regenerating an earlier dataset in place drops the stale images
    assert main(["make-dataset", str(out), "--images", "1", "--val-fraction", "0", "--quiet"]) == 0
    assert [p.name for p in (out / "images").iterdir()] == ["000001.jpg"]
    assert json.loads((out / "val.json").read_text())["images"] == []


def test_cli_errors(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["make-dataset", str(foreign), "--images", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert main(["make-dataset", str(tmp_path / "x"), "--val-fraction", "1.5"]) == 2
    assert "val_fraction" in capsys.readouterr().err
    with pytest.raises(ValueError, match="images"):
        make_dataset(tmp_path / "y", images=0)
    with pytest.raises(SniperError):
        make_dataset(foreign / "notes.txt", images=1)


def test_settings_are_respected():
    s = SyntheticSettings(min_side=600, max_side=700, huge_prob=0.0, crowd_prob=0.0, truncate_prob=0.0)
    img = make_image(0, 0, s)
    assert 600 <= img.width <= 700 and 600 <= img.height <= 700
    assert not any(a["iscrowd"] or a["truncated"] for a in img.annotations)
