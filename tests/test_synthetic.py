"""The synthetic dataset: determinism, valid COCO, and the scene properties SNIPER needs.

Both presets run through the property tests; the aerial ones use 2 full-size images (each
2000-5000 px a side), made once per module.
"""

import hashlib
import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import PIL
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from sniper.boxes import iou_matrix, xywh_to_xyxy
from sniper.cli import main
from sniper.data import synthetic
from sniper.data.synthetic import (
    AERIAL_CATEGORIES,
    CATEGORIES,
    PRESETS,
    AerialSettings,
    SyntheticImage,
    SyntheticSettings,
    get_preset,
    make_dataset,
    make_image,
)
from sniper.errors import SniperError

SEED = 3
N_IMAGES = {"default": 10, "aerial": 2}
SMALL = {"default": SyntheticSettings(max_side=900), "aerial": AerialSettings(min_side=800, max_side=1200)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``built(preset)``: (out, summary, {"train": json, "val": json}) of a dataset, made once."""
    cache = {}

    def get(preset):
        if preset not in cache:
            out = tmp_path_factory.mktemp(f"synth-{preset}") / "ds"
            summary = make_dataset(out, images=N_IMAGES[preset], seed=SEED, preset=preset, progress=False)
            data = {k: json.loads((out / f"{k}.json").read_text()) for k in ("train", "val")}
            cache[preset] = (out, summary, data)
        return cache[preset]

    return get


@pytest.fixture(params=sorted(PRESETS))
def dataset(request, built):
    return built(request.param)


@pytest.fixture(scope="module")
def rendered():
    """``rendered(preset)``: the first 4 (default) or 2 (aerial) images as ``SyntheticImage``."""
    cache = {}

    def get(preset):
        if preset not in cache:
            n = {"default": 4, "aerial": 2}[preset]
            cache[preset] = [make_image(SEED, i, preset=preset) for i in range(n)]
        return cache[preset]

    return get


def _all(data, key):
    return data["train"][key] + data["val"][key]


def _files(out: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    files.update({p.name: p.read_bytes() for p in out.glob("*.json")})
    return files


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_same_seed_same_bytes_and_different_seed_differs(tmp_path, preset):
    small = SMALL[preset]  # same code paths, less pixel work

    def run(name, seed):
        return _files(
            make_dataset(
                tmp_path / name, images=2, seed=seed, settings=small, preset=preset, progress=False
            ).out_dir
        )

    a, b, c = run("a", 7), run("b", 7), run("c", 8)
    assert sorted(a) == ["000001.jpg", "000002.jpg", "train.json", "val.json"]
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_images_do_not_depend_on_dataset_size(dataset):
    out, summary, _ = dataset
    index = min(4, summary.images - 1)
    buf = io.BytesIO()
    Image.fromarray(make_image(SEED, index, preset=summary.preset).pixels).save(
        buf, format="JPEG", quality=90
    )
    assert buf.getvalue() == (out / "images" / f"{index + 1:06d}.jpg").read_bytes()


# sha256 of the default preset's output before the presets existed (10 images, seed 3, val 0.2);
# JSON and README depend on numpy only, the pixels on the Pillow version too
GOLDEN_DEFAULT = {
    "train.json": "958878cd35e055d25b10b082ccc3e5ee710c54a1c718bebfc12a75213f40fc8a",
    "val.json": "a072618b4b2d8757a7f003808b334af031c9cc9c4f1225079028904f2b57f64e",
    "README.txt": "6efa144503263322b2e01cab2e61aec8e3ca6ac5ab316658e5d49d6a48483796",
}
GOLDEN_PIXELS = {  # make_image(3, i).pixels with Pillow 13.0.0
    0: "7a486adcab073866b98adf4331537e328a1b6f19683796c81e8638294fda9d02",
    1: "331d1b1a48f2e51b239de6bff0c117a56dbe1a9484f04cfbe78f7e626c67d07b",
}


def _without_segmentation(text: str) -> bytes:
    """A dataset JSON as ``make_dataset(masks=False)`` writes it (``atomic_write_json``, indent 2)."""
    data = json.loads(text)
    for a in data["annotations"]:
        a.pop("segmentation")
    return (json.dumps(data, indent=2) + "\n").encode()


def test_default_preset_output_is_unchanged(built, rendered):
    """Masks are extra fields: without ``segmentation`` the JSON is the golden one, byte for byte."""
    out, summary, data = built("default")
    assert summary.preset == "default" and "preset" not in data["train"]["info"]
    for name, digest in GOLDEN_DEFAULT.items():
        raw = (out / name).read_bytes()
        if name.endswith(".json"):
            raw = _without_segmentation(raw.decode())
        assert hashlib.sha256(raw).hexdigest() == digest, name
    if PIL.__version__ != "13.0.0":
        pytest.skip(f"pixel digests were recorded with Pillow 13.0.0, not {PIL.__version__}")
    for index, digest in GOLDEN_PIXELS.items():
        assert hashlib.sha256(rendered("default")[index].pixels.tobytes()).hexdigest() == digest, index


def test_valid_coco(dataset):
    from pycocotools.coco import COCO

    out, summary, data = dataset
    n = N_IMAGES[summary.preset]
    for split in ("train", "val"):
        coco = COCO(str(out / f"{split}.json"))
        assert len(coco.getImgIds()) == len(data[split]["images"])
    assert len(data["train"]["images"]) == summary.train_images == n - max(1, round(0.2 * n))
    assert len(data["val"]["images"]) == summary.val_images == max(1, round(0.2 * n))
    images = {im["id"]: im for im in _all(data, "images")}
    assert sorted(images) == list(range(1, n + 1))
    anns = _all(data, "annotations")
    assert len({a["id"] for a in anns}) == len(anns) == summary.annotations
    categories = list(PRESETS[summary.preset].categories)
    cat_ids = [c["id"] for c in categories]
    assert data["train"]["categories"] == data["val"]["categories"] == categories
    assert summary.categories == tuple(c["name"] for c in categories)
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
    for split in ("train", "val"):  # every annotation has a mask pycocotools reads, inside its box
        coco = COCO(str(out / f"{split}.json"))
        for a in coco.dataset["annotations"][:: max(1, len(coco.dataset["annotations"]) // 40)]:
            m = coco.annToMask(a)  # (a sample: an aerial image is up to 25 MB per mask)
            x, y, w, h = (int(v) for v in a["bbox"])
            area = int(m.sum())
            assert 0 < area <= a["area"] and area == int(m[y : y + h, x : x + w].sum()), a["id"]


def test_scene_statistics(built):
    _, summary, data = built("default")
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


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_truncated_crowd_and_distractors_in_rendered_scenes(rendered, preset):
    n_trunc = n_crowd = n_dis = 0
    kinds = set()
    for img in rendered(preset):
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
    assert kinds == set(PRESETS[preset].distractor_kinds)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_annotated_objects_are_visible(rendered, preset):
    """Each annotated box differs from the background around it (the object shows)."""
    img = rendered(preset)[0]
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


# ---------------------------------------------------------------- the aerial preset


def test_presets_are_listed():
    assert list(PRESETS) == ["default", "aerial"]
    assert get_preset("aerial") is PRESETS["aerial"] and PRESETS["aerial"].images == 12
    assert PRESETS["default"].images == 160 and PRESETS["default"].settings == SyntheticSettings()
    assert isinstance(PRESETS["aerial"].settings, AerialSettings)
    assert [c["name"] for c in AERIAL_CATEGORIES] == ["vehicle", "building", "tree"]
    ids = [c["id"] for c in AERIAL_CATEGORIES]
    assert ids != list(range(1, len(ids) + 1)), "ids must be sparse to exercise id mapping"


def test_aerial_scene_statistics(built, rendered):
    """Large images, hundreds of small objects of 3 classes, a few large ones, crowds, distractors."""
    _, summary, data = built("aerial")
    for im in _all(data, "images"):
        assert 2000 <= im["width"] <= 5000 and 2000 <= im["height"] <= 5000, im
    per_image = Counter(a["image_id"] for a in _all(data, "annotations"))
    assert len(per_image) == 2 and all(200 <= n <= 3000 for n in per_image.values()), per_image
    for img in rendered("aerial"):
        anns = [a for a in img.annotations if not a["iscrowd"]]
        size = np.array([math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in anns])
        assert size.min() >= 5, "nothing below 5 px (sqrt of the box area)"
        assert ((size >= 5) & (size <= 80)).mean() > 0.95, "mostly small"
        assert np.median(size) < 40
        assert 1 <= (size >= 100).sum() <= 30 and size.max() <= 700, "a few large objects"
        per_class = Counter(a["category_id"] for a in anns)
        assert set(per_class) == {c["id"] for c in AERIAL_CATEGORIES}
        assert min(per_class.values()) >= 20, per_class
    assert summary.crowd_annotations >= 1 and summary.distractors >= 10


def _drawn_scene(monkeypatch, preset: str):
    """One image of ``preset`` with every composited patch recorded: (image, owner map: the index
    of the patch whose pixel (alpha >= 0.5) is on top, -1 for none, [(patch index, its tight box)])."""
    drawn = []
    composite = synthetic._composite

    def recording(canvas, origin, alpha, rgb):
        drawn.append((origin, alpha >= 0.5))
        composite(canvas, origin, alpha, rgb)

    monkeypatch.setattr(synthetic, "_composite", recording)
    img = make_image(SEED, 1, SMALL[preset])
    owner = np.full((img.height, img.width), -1, dtype=np.int32)
    tights = []
    for k, ((x0, y0), core) in enumerate(drawn):
        owner[y0 : y0 + core.shape[0], x0 : x0 + core.shape[1]][core] = k
        tight = synthetic._tight_box((x0, y0), core.astype(np.float32))
        if tight is not None:
            tights.append((k, tight))
    return img, owner, tights


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_boxes_are_the_exact_extent_of_visible_pixels(monkeypatch, preset):
    """Record every composited patch; the aerial scene never paints over an object's pixels.

    Each non-crowd aerial box is the tight box of pixels (alpha >= 0.5) that are still its own
    after everything is drawn, and its area is their count. The default preset lets items
    overlap up to 20 %, so there a box is only the extent of what its object drew.
    """
    img, owner, tights = _drawn_scene(monkeypatch, preset)
    by_box = {}
    for k, tight in tights:
        by_box.setdefault(tight[:4], []).append((k, tight[4]))
    anns = [a for a in img.annotations if not a["iscrowd"]]
    assert len(anns) >= (50 if preset == "aerial" else 5)
    hidden = 0
    for a in anns:
        x, y, w, h = a["bbox"]
        matches = [(k, area) for k, area in by_box.get((x, y, x + w, y + h), []) if area == a["area"]]
        assert matches, a  # the box is the tight box of one drawn object, area its pixel count
        visible = [(owner[int(y) : int(y + h), int(x) : int(x + w)] == k).sum() for k, _ in matches]
        hidden += max(visible) < a["area"]
    if preset == "aerial":
        assert hidden == 0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_masks_are_the_pixels_each_object_shows(monkeypatch, preset):
    """``segmentation`` is the set of pixels (alpha >= 0.5) still the object's own after the whole
    scene is drawn: inside the box, touching all four sides unless something covers an extreme
    (never in the aerial scene), and the box's pixel count when nothing covers it."""
    img, owner, tights = _drawn_scene(monkeypatch, preset)
    by_box = {}
    for k, tight in tights:
        by_box.setdefault(tight[:4], []).append(k)
    covered = n_crowd = 0
    for a in img.annotations:
        m = mask_utils.decode(a["segmentation"]).astype(bool)
        assert m.shape == (img.height, img.width)
        x, y, w, h = (int(v) for v in a["bbox"])
        inside = m[y : y + h, x : x + w]
        assert inside.sum() == m.sum() > 0, a  # nothing outside the box
        if a["iscrowd"]:  # the members' visible pixels
            n_crowd += 1
            members = np.unique(owner[y : y + h, x : x + w][inside])
            assert (members >= 0).all() and int(m.sum()) <= a["area"]
            continue
        ks = by_box[(float(x), float(y), float(x + w), float(y + h))]
        assert any(np.array_equal(m, owner == k) for k in ks), a
        if m.sum() == a["area"]:
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        else:
            covered += 1
            assert m.sum() < a["area"]
    if preset == "aerial":
        assert covered == 0
    assert len(img.annotations) - n_crowd >= (50 if preset == "aerial" else 5)
    # with masks=False: the same pixels and annotations, no segmentation (no extra random draws)
    plain = make_image(SEED, 1, SMALL[preset], masks=False)
    np.testing.assert_array_equal(plain.pixels, img.pixels)
    assert plain.annotations == [{k: v for k, v in a.items() if k != "segmentation"} for a in img.annotations]


def test_make_dataset_without_masks_writes_the_old_json(tmp_path):
    small = SMALL["default"]
    a = make_dataset(tmp_path / "a", images=2, seed=5, settings=small, progress=False)
    b = make_dataset(tmp_path / "b", images=2, seed=5, settings=small, progress=False, masks=False)
    for name in ("train.json", "val.json"):
        with_masks = (a.out_dir / name).read_text()
        assert '"segmentation"' in with_masks or not json.loads(with_masks)["annotations"]
        assert _without_segmentation(with_masks) == (b.out_dir / name).read_bytes()
    assert (a.out_dir / "README.txt").read_bytes() == (b.out_dir / "README.txt").read_bytes()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_settings_are_respected(preset):
    if preset == "default":
        s = SyntheticSettings(min_side=600, max_side=700, huge_prob=0.0, crowd_prob=0.0, truncate_prob=0.0)
    else:
        s = AerialSettings(min_side=600, max_side=700, crowd_prob=0.0, min_object=8.0)
    img = make_image(0, 0, s)
    assert 600 <= img.width <= 700 and 600 <= img.height <= 700
    assert not any(a["iscrowd"] for a in img.annotations)
    if preset == "default":
        assert not any(a["truncated"] for a in img.annotations)
    else:
        assert img.annotations and all(a["bbox"][2] * a["bbox"][3] >= 64 for a in img.annotations)


def test_cli_aerial_preset(tmp_path, capsys):
    """One real full-size aerial image through the CLI."""
    out = tmp_path / "aerial"
    assert main(["make-dataset", str(out), "--preset", "aerial", "--images", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 images" in printed and "(preset aerial; 1 train, 0 val)" in printed
    train = json.loads((out / "train.json").read_text())
    assert train["info"]["preset"] == "aerial" and train["categories"] == list(AERIAL_CATEGORIES)
    (im,) = train["images"]
    assert 2000 <= im["width"] <= 5000 and 2000 <= im["height"] <= 5000
    assert len(train["annotations"]) >= 200
    readme = (out / "README.txt").read_text()
    assert readme.startswith(synthetic.README_MARKER) and "--preset aerial --images 1 --seed 0" in readme
    assert "vehicle" in readme and '"vehicle_length"' in readme
    # an aerial dataset is rewritten in place like a default one
    assert main(["make-dataset", str(out), "--images", "1", "--quiet"]) == 0
    assert json.loads((out / "train.json").read_text())["categories"] == list(CATEGORIES)


def test_default_image_count_comes_from_the_preset(tmp_path, monkeypatch, capsys):
    def tiny(seed, index, settings=None, **_):
        return SyntheticImage(np.zeros((8, 8, 3), np.uint8), [], np.zeros((0, 4)), [])

    monkeypatch.setattr(synthetic, "make_image", tiny)
    for preset, n in (("aerial", 12), ("default", 160)):
        out = tmp_path / preset
        assert main(["make-dataset", str(out), "--preset", preset, "--quiet"]) == 0
        assert f"wrote {n} images to {out} (preset {preset}; " in capsys.readouterr().out
        assert len(list((out / "images").iterdir())) == n
    summary = make_dataset(tmp_path / "lib", preset="aerial", progress=False)
    assert (summary.images, summary.train_images, summary.val_images) == (12, 10, 2)


def test_unknown_preset_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["make-dataset", str(out), "--preset", "satellite"]) == 2
    err = capsys.readouterr().err
    assert err == "sniper make-dataset: error: unknown preset 'satellite'; choose one of: default, aerial\n"
    assert not out.exists()
    with pytest.raises(ValueError, match="unknown preset"):
        make_image(0, 0, preset="satellite")
    with pytest.raises(ValueError, match="do not fit preset 'default'"):
        make_dataset(out, images=1, settings=AerialSettings(), preset="default")
    with pytest.raises(ValueError, match="do not fit preset 'aerial'"):
        make_dataset(out, images=1, settings=SyntheticSettings(), preset="aerial")
    assert not out.exists()
