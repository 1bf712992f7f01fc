"""Instance masks on the data side: segmentations, box-local masks, COCO reading, chip targets."""

from __future__ import annotations

import copy
import json
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from sniper.chips import Chip, chip_labels
from sniper.config import ChipConfig
from sniper.data.chip_dataset import ChipDataset
from sniper.data.chip_table import ChipTable
from sniper.data.coco import load_coco
from sniper.data.masks import (
    MaskCache,
    box_local_mask,
    check_segmentation,
    encode_mask,
    rle_from_patch,
    sample_mask,
)
from sniper.errors import CocoFormatError
from sniper.scales import Scale

# ---------------------------------------------------------------- references (pycocotools, full image)


def full_mask(seg, w: int, h: int) -> np.ndarray:
    """pycocotools' own rasterisation of ``seg`` at image size (what COCO's annToMask gives)."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle)


def nearest(full: np.ndarray, box, out_w: int, out_h: int) -> np.ndarray:
    """``full`` sampled at the grid's pixel centres over ``box`` (nearest; 0 outside the image)."""
    h, w = full.shape
    x1, y1, x2, y2 = box
    cols = np.floor(x1 + (np.arange(out_w) + 0.5) * (x2 - x1) / out_w).astype(np.int64)
    rows = np.floor(y1 + (np.arange(out_h) + 0.5) * (y2 - y1) / out_h).astype(np.int64)
    ok_c, ok_r = (cols >= 0) & (cols < w), (rows >= 0) & (rows < h)
    out = np.zeros((out_h, out_w), dtype=np.uint8)
    out[np.ix_(ok_r, ok_c)] = full[np.ix_(rows[ok_r], cols[ok_c])]
    return out


def uncompressed(m: np.ndarray) -> dict:
    """Uncompressed RLE of a mask, written out by hand (column-major runs, zeros first)."""
    flat = m.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
    counts = np.diff(np.concatenate([[0], edges, [flat.size]]))
    counts = counts[:-1] if len(counts) > 1 and counts[-1] == 0 else counts
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts.tolist()}


def star_polygon(cx, cy, radius, n, jitter, phase=0.0) -> list[float]:
    ang = phase + 2 * np.pi * np.arange(n) / n
    r = radius * np.asarray(jitter)
    return np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1).ravel().tolist()


@st.composite
def polygon_case(draw):
    w, h = draw(st.integers(120, 500)), draw(st.integers(120, 500))
    n = draw(st.integers(3, 16))
    radius = draw(st.floats(40, 200))
    jitter = draw(st.lists(st.floats(0.6, 1.0), min_size=n, max_size=n))
    cx, cy = draw(st.floats(0, w)), draw(st.floats(0, h))
    poly = star_polygon(cx, cy, radius, n, jitter, draw(st.floats(0, 2 * np.pi)))
    p = np.asarray(poly).reshape(-1, 2)
    lo, hi = np.maximum(p.min(axis=0), 0), np.minimum(p.max(axis=0), [w, h])
    d = [draw(st.floats(-0.15, 0.15)) for _ in range(4)]
    size = hi - lo
    box = [lo[0] + d[0] * size[0], lo[1] + d[1] * size[1], hi[0] + d[2] * size[0], hi[1] + d[3] * size[1]]
    S = draw(st.sampled_from([28, 56]))
    return w, h, [poly], box, S


# ---------------------------------------------------------------- box-local masks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases=st.lists(polygon_case(), min_size=6, max_size=6))
def test_polygon_path_agrees_with_full_image_rle(cases):
    """The polygon path (rasterised in the S x S frame) samples what pycocotools' full-image
    raster of the same polygon, sampled at the pixel centres, shows: > 98 % of the pixels.

    (They differ where a sample point is within half an original pixel of the outline, so the
    boxes here are at least 40 px a side: the share of such points falls with the box size.)"""
    agree = total = 0
    for w, h, seg, box, S in cases:
        if not (box[2] - box[0] >= 40 and box[3] - box[1] >= 40):
            continue
        full = full_mask(seg, w, h)
        rle = mask_utils.encode(np.asfortranarray(full))
        poly_path = box_local_mask(seg, (w, h), box, S)
        rle_path = box_local_mask(rle, (w, h), box, S)
        np.testing.assert_array_equal(rle_path, nearest(full, box, S, S))
        assert poly_path.shape == (S, S) and poly_path.dtype == np.uint8
        a = (poly_path == rle_path).mean()
        assert a > 0.94, (a, box, S)
        agree += (poly_path == rle_path).sum()
        total += S * S
    if total:
        assert agree / total > 0.98


@settings(max_examples=80, deadline=None)
@given(
    w=st.integers(1, 90),
    h=st.integers(1, 90),
    rects=st.lists(
        st.tuples(st.integers(-5, 95), st.integers(-5, 95), st.integers(0, 60), st.integers(0, 60)),
        max_size=4,
    ),  # fmt: skip
    box=st.tuples(st.floats(-10, 80), st.floats(-10, 80), st.floats(0.5, 120), st.floats(0.5, 120)),
    S=st.integers(1, 40),
)
def test_rle_paths_equal_pycocotools_decode(w, h, rects, box, S):
    """Compressed (bytes and str) and uncompressed RLE: exactly pycocotools' decode, sampled nearest."""
    m = np.zeros((h, w), dtype=np.uint8)
    for x, y, rw, rh in rects:
        m[max(0, y) : max(0, y + rh), max(0, x) : max(0, x + rw)] = 1
    b = (box[0], box[1], box[0] + box[2], box[1] + box[3])
    ref = nearest(m, b, S, S)
    comp = mask_utils.encode(np.asfortranarray(m))
    as_str = {"size": comp["size"], "counts": comp["counts"].decode("ascii")}
    for seg in (comp, as_str, uncompressed(m)):
        if m.any():
            assert check_segmentation(seg, w, h) is None
        np.testing.assert_array_equal(box_local_mask(seg, (w, h), b, S), ref)
        np.testing.assert_array_equal(sample_mask(seg, (w, h), b, S + 3, S), nearest(m, b, S + 3, S))
    assert encode_mask(m)["counts"] == as_str["counts"]


@settings(max_examples=80, deadline=None)
@given(
    w=st.integers(1, 60),
    h=st.integers(1, 60),
    seed=st.integers(0, 2**31),
    density=st.floats(0, 1),
)
def test_rle_from_patch_equals_pycocotools_encode(w, h, seed, density):
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), dtype=bool)
    x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
    x1, y1 = int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
    m[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < density
    if rng.random() < 0.3:
        m[y0:y1, x0:x1] = True  # whole columns: runs that go on into the next column
    got = rle_from_patch(m[y0:y1, x0:x1], x0, y0, w, h)
    assert got["counts"] == mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
    assert got["size"] == [h, w]


def test_rle_crops_are_cached_and_bounded():
    w, h = 300, 200
    m = np.zeros((h, w), dtype=np.uint8)
    m[50:150, 40:140] = 1  # a 100 x 100 object
    rle = mask_utils.encode(np.asfortranarray(m))
    cache = MaskCache(max_pixels=25_000)
    box = (40.0, 50.0, 140.0, 150.0)
    first = box_local_mask(rle, (w, h), box, 28, cache=cache, key=("img", 1))
    assert (cache.misses, cache.hits, len(cache)) == (1, 0, 1) and cache.pixels == 100 * 100
    for _ in range(3):
        np.testing.assert_array_equal(
            box_local_mask(rle, (w, h), box, 28, cache=cache, key=("img", 1)), first
        )
    assert cache.hits == 3
    box_local_mask(rle, (w, h), box, 28, cache=cache, key=("img", 2))
    box_local_mask(rle, (w, h), box, 28, cache=cache, key=("img", 3))  # 3 x 10k > 25k: the oldest goes
    assert len(cache) == 2 and cache.pixels <= cache.max_pixels
    assert cache.get(("img", 1)) is None and cache.get(("img", 3)) is not None
    big = MaskCache(max_pixels=10)  # a crop larger than the cache is used, never kept
    np.testing.assert_array_equal(box_local_mask(rle, (w, h), box, 28, cache=big, key=1), first)
    assert len(big) == 0
    assert first.all()  # the box is the object's: every sample inside


def test_box_local_mask_memory_is_not_image_sized():
    """4000 x 3000 image, a 500-vertex polygon: no image-sized array anywhere (tracemalloc)."""
    w, h = 4000, 3000
    ang = np.linspace(0, 2 * np.pi, 500, endpoint=False)
    r = 1300 * (0.85 + 0.15 * np.sin(9 * ang))
    poly = np.stack([2000 + r * np.cos(ang), 1500 + r * np.sin(ang)], 1)
    seg = [poly.ravel().tolist()]
    boxes = [
        (*poly.min(axis=0), *poly.max(axis=0)),  # the object's own box (largest case)
        (2000.0, 1500.0, 2100.0, 1580.0),  # a small box inside it
        (0.0, 0.0, 4000.0, 3000.0),  # the whole image
    ]
    box_local_mask(seg, (w, h), boxes[0], 56)  # imports, first-call allocations
    tracemalloc.start()
    try:
        for box in boxes:
            m = box_local_mask(seg, (w, h), box, 56)
            assert m.shape == (56, 56)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5e6, peak  # the image alone would be 12 MB as uint8
    assert 0.4 < box_local_mask(seg, (w, h), boxes[0], 56).mean() < 0.9


def test_polygon_parts_outside_the_box_and_image():
    """A polygon much larger than the box is clipped before rasterising; parts outside the image
    are not the object."""
    w, h = 100, 80
    seg = [[-500.0, -500.0, 600.0, -500.0, 600.0, 600.0, -500.0, 600.0]]  # covers the image and more
    assert box_local_mask(seg, (w, h), (10, 10, 20, 20), 8).all()
    m = sample_mask(seg, (w, h), (90, 70, 110, 90), 20, 20)  # half the window is past the image
    np.testing.assert_array_equal(m, nearest(np.ones((h, w), np.uint8), (90, 70, 110, 90), 20, 20))
    two = [[0, 0, 10, 0, 10, 10, 0, 10], [20, 20, 30, 20, 30, 30, 20, 30]]  # two parts: the union
    got = sample_mask(two, (w, h), (0, 0, 40, 40), 40, 40)
    np.testing.assert_array_equal(got, full_mask(two, w, h)[:40, :40])


@pytest.mark.parametrize(
    "seg, reason",
    [
        ([], "empty"),
        ([[1.0, 2.0, 3.0, 4.0]], "fewer than 3"),
        ([[0, 0, 5, 5, 10, 10]], "zero area"),
        ([[0, 0, 5, 0, 5, 5], [1, 1, 2]], "odd number"),
        ([[0, 0, 5, 0, float("nan"), 5]], "not finite"),
        ([[0, 0, 5, 0, "5", 5]], "not finite"),
        ([0, 0, 5, 0, 5, 5], "malformed"),  # a flat list is not a list of polygons
        ({"size": [20, 30], "counts": [600]}, "disagrees"),
        ({"size": [10, 10], "counts": [100]}, "empty"),
        ({"size": [10, 10], "counts": [50, 10, 30]}, "cover 90"),
        ({"size": [10, 10], "counts": "z!"}, "alphabet"),
        ({"size": [10, 10]}, "malformed"),
        ({"counts": "PPY1"}, "malformed"),
        ("polygon", "malformed"),
        (None, "malformed"),
    ],
)
def test_check_segmentation_names_the_problem(seg, reason):
    problem = check_segmentation(seg, 10, 10)
    assert problem is not None and reason in problem, problem


def test_check_segmentation_accepts_good_ones():
    m = np.zeros((10, 10), dtype=np.uint8)
    m[2:5, 3:8] = 1
    comp = mask_utils.encode(np.asfortranarray(m))
    for seg in ([[0, 0, 5, 0, 5, 5]], comp, {**comp, "counts": comp["counts"].decode()}, uncompressed(m)):
        assert check_segmentation(seg, 10, 10) is None


# ---------------------------------------------------------------- COCO reading


def _coco_dict(anns, w=100, h=80):
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}],
        "annotations": anns,
        "categories": [{"id": 3, "name": "thing"}],
    }


def _ann(i, seg="poly", crowd=0, bbox=(10, 10, 20, 20)):
    a = {"id": i, "image_id": 1, "category_id": 3, "bbox": list(bbox), "area": 1.0, "iscrowd": crowd}
    if seg == "poly":
        x, y, w, h = bbox
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    elif seg is not None:
        a["segmentation"] = seg
    return a


@pytest.fixture(params=["memory", "file"])
def loader(request, tmp_path):
    def load(data, **kw):
        if request.param == "memory":
            return load_coco(copy.deepcopy(data), **kw)
        p = tmp_path / "ann.json"
        p.write_text(json.dumps(data))
        return load_coco(p, **kw)

    return load


def test_load_coco_keeps_segmentations_with_masks(loader):
    m = np.zeros((80, 100), dtype=np.uint8)
    m[30:50, 40:70] = 1
    comp = mask_utils.encode(np.asfortranarray(m))
    rle = {"size": comp["size"], "counts": comp["counts"].decode()}
    anns = [_ann(1), _ann(2, seg=rle, bbox=(40, 30, 30, 20)), _ann(3, seg=uncompressed(m)), _ann(4, seg=None)]
    data = _coco_dict(anns)
    plain = loader(data)
    assert plain.annotations(1).segmentations is None and not plain.has_segmentations
    assert "no_segmentation" not in plain.report.counts
    ds = loader(data, masks=True)
    assert ds.has_segmentations
    a = ds.annotations(1)
    by_id = dict(zip(a.ann_ids.tolist(), a.segmentations))
    # compact forms: polygons as float32 arrays, every RLE compressed with a str counts
    (poly,) = by_id[1]
    assert poly.dtype == np.float32 and poly.tolist() == anns[0]["segmentation"][0]
    assert by_id[2] == rle and by_id[3] == rle  # the uncompressed one too
    assert by_id[4] is None
    assert ds.report.counts.get("no_segmentation") == 1 and "bad_segmentation" not in ds.report.counts
    assert ds.report.skipped == 0 and len(a) == 4
    np.testing.assert_array_equal(plain.annotations(1).boxes, a.boxes)  # boxes do not depend on masks


BAD = [
    ([], "empty"),
    ([[10, 10, 30, 10]], "fewer than 3"),
    ([[10, 10, 20, 20, 30, 30]], "zero area"),
    ({"size": [40, 50], "counts": [1000, 1000]}, "disagrees"),
    ({"size": [80, 100], "counts": "not an rle!"}, "malformed"),
    ("oops", "malformed"),
]


@pytest.mark.parametrize("seg, reason", BAD)
def test_bad_segmentation_is_counted_and_the_box_kept(loader, seg, reason):
    data = _coco_dict([_ann(7), _ann(8, seg=seg), _ann(9, seg=seg, crowd=1)])
    ds = loader(data, masks=True)
    a = ds.annotations(1)
    assert len(a) == 3  # every box stays
    segs = dict(zip(a.ann_ids.tolist(), a.segmentations))
    assert segs[8] is None and segs[7] is not None
    assert ds.report.counts["bad_segmentation"] == 1  # crowds need no mask: not checked
    (example,) = ds.report.examples["bad_segmentation"]
    assert "annotations[1] (id=8" in example and reason in example
    assert "bad_segmentation" in ds.report.format()
    with pytest.raises(CocoFormatError, match=r"annotations\[1\] \(id=8.*bad_segmentation"):
        loader(data, masks=True, strict=True)
    loader(data, strict=True)  # without masks segmentations are not read at all


def test_strict_reports_the_earliest_bad_record():
    data = _coco_dict([_ann(1, seg=[]), {"id": 2, "image_id": 1, "bbox": [1, 2, 3, 4]}])
    with pytest.raises(
        CocoFormatError,
        match=r"annotations\[0\] \(id=1, image_id=1\): bad segmentation: empty.*\(bad_segmentation\); 1 more",
    ):
        load_coco(data, masks=True, strict=True)


def test_streamed_in_tiny_chunks_keeps_every_segmentation(tmp_path):
    from sniper.data import coco as coco_module
    from sniper.data.coco_stream import load_coco_json

    anns = [_ann(i, bbox=(i % 50, 5 + i % 11, 10 + i % 7, 12)) for i in range(1, 120)]
    anns[5]["segmentation"] = [[1, 1, 2, 2]]  # bad
    del anns[9]["segmentation"]  # none
    data = _coco_dict(anns)
    p = tmp_path / "a.json"
    p.write_text(json.dumps(data))
    token = coco_module._KEEP_SEGMENTATIONS.set(True)  # what load_coco(..., masks=True) sets
    try:
        streamed = load_coco_json(p, chunk_size=97, cache=False)
    finally:
        coco_module._KEEP_SEGMENTATIONS.reset(token)
    ref = load_coco(copy.deepcopy(data), masks=True)
    a, b = streamed.annotations(1), ref.annotations(1)
    np.testing.assert_array_equal(a.ann_ids, b.ann_ids)
    for x, y in zip(a.segmentations, b.segmentations):
        assert (x is None and y is None) or [p.tolist() for p in x] == [p.tolist() for p in y]
    assert streamed.report.counts == ref.report.counts
    assert ref.report.counts["bad_segmentation"] == 1 and ref.report.counts["no_segmentation"] == 1


def test_masks_load_bypasses_the_annotation_cache(tmp_path, monkeypatch):
    import os
    import time

    monkeypatch.setenv("SNIPER_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "a.json"
    p.write_text(json.dumps(_coco_dict([_ann(1), _ann(2)])))
    old = time.time() - 100
    os.utime(p, (old, old))  # settled: a plain load may cache it
    cached = lambda: sorted((tmp_path / "cache").rglob("*.npz"))  # noqa: E731
    ds = load_coco(p, masks=True)
    assert ds.has_segmentations and cached() == []
    assert not load_coco(p).has_segmentations and len(cached()) == 1
    assert load_coco(p, masks=True).has_segmentations  # not served from the box-only cache


# ---------------------------------------------------------------- chip targets

K = 128


def _chip_cfg() -> ChipConfig:
    return ChipConfig(
        chip_size=K,
        stride=16,
        scales=[Scale(factor=1.0, valid_range=(None, None)), Scale(factor=0.5, valid_range=(40.0, None))],
        neg_min_proposals=[1, 1],
        min_box_size=2.0,
    )


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    """One 200 x 150 image: a pentagon (valid in the chip), a disc cut by the chip's right edge
    (truncated: ignore), a square without segmentation (valid, mask_valid False)."""
    root = tmp_path_factory.mktemp("masks")
    (root / "images").mkdir()
    w, h = 200, 150
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "images" / "a.png")
    pent = star_polygon(40, 50, 30, 5, [1.0] * 5, phase=-np.pi / 2)
    disc = star_polygon(120, 60, 25, 64, [1.0] * 64)
    anns = []
    for i, poly in ((1, pent), (2, disc)):
        p = np.asarray(poly).reshape(-1, 2)
        x0, y0 = p.min(axis=0)
        x1, y1 = p.max(axis=0)
        anns.append({"id": i, "image_id": 1, "category_id": 3, "bbox": [x0, y0, x1 - x0, y1 - y0],
                     "area": 1.0, "iscrowd": 0, "segmentation": [poly]})  # fmt: skip
    anns.append(
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [20, 88, 30, 30], "area": 900.0, "iscrowd": 0}
    )
    data = {"images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}], "annotations": anns,
            "categories": [{"id": 3, "name": "thing"}]}  # fmt: skip
    (root / "ann.json").write_text(json.dumps(data))
    coco = load_coco(root / "ann.json", masks=True)
    # chip 0 at scale 1: x in [0, 128) cuts the disc (x 95..145); chip 1: the whole image at 1/2
    chip = Chip(0.0, 0.0, 128.0, 128.0, 1.0, 0)
    chips = ChipTable(
        image_id=np.array([1, 1]),
        boxes=np.array([[0.0, 0.0, 128.0, 128.0], [0.0, 0.0, 200.0, 150.0]]),
        scale=np.array([1.0, 0.5]),
        scale_index=np.array([0, 1]),
        is_neg=np.array([False, False]),
    )
    return coco, chips, root / "images", data, chip


def test_chip_targets_have_masks_for_valid_gt_only(hand_made):
    coco, chips, images, data, chip = hand_made
    ds = ChipDataset(coco, chips, images, _chip_cfg(), masks=28)
    t = ds.target(0)
    lab = ds.labels(0)
    ids = coco.annotations(1).ann_ids[lab.gt_index]
    assert sorted(ids[lab.valid].tolist()) == [1, 3] and ids[lab.ignore].tolist() == [2]  # the disc is cut
    masks, valid = t["masks"].numpy(), t["mask_valid"].numpy()
    assert masks.shape == (2, 28, 28) and masks.dtype == np.uint8 and valid.dtype == bool
    valid_ids = ids[lab.valid].tolist()
    k_pent, k_sq = valid_ids.index(1), valid_ids.index(3)
    assert valid[k_pent] and not valid[k_sq] and masks[k_sq].sum() == 0
    # the pentagon's mask: its own box, sampled from the full-image raster (chip px = original here)
    full = full_mask(data["annotations"][0]["segmentation"], 200, 150)
    box = t["boxes"][k_pent].numpy().astype(np.float64)
    ref = nearest(full, box, 28, 28)
    assert (masks[k_pent] == ref).mean() > 0.97
    assert masks[k_pent].mean() > 0.5  # a pentagon fills most of its box
    # at scale 0.5 (chip px = original / 2) the same object, the same box-local mask
    t2 = ds.target(1)
    ids2 = coco.annotations(1).ann_ids[ds.labels(1).gt_index[ds.labels(1).valid]].tolist()
    m2 = t2["masks"].numpy()[ids2.index(1)]
    assert (m2 == masks[k_pent]).mean() > 0.97


def test_flipped_chip_flips_each_mask(hand_made):
    coco, chips, images, _, _ = hand_made
    ds = ChipDataset(coco, chips, images, _chip_cfg(), masks=56)
    for i in range(len(chips)):
        a, b = ds.target(i), ds.target(i, flip=True)
        np.testing.assert_array_equal(b["masks"].numpy(), a["masks"].numpy()[:, :, ::-1])
        np.testing.assert_array_equal(b["mask_valid"].numpy(), a["mask_valid"].numpy())
        # the flipped mask is also what sampling the flipped object over the flipped box gives
        assert b["masks"].shape[0] == b["boxes"].shape[0]


def test_masks_travel_as_numpy_in_worker_mode(hand_made):
    coco, chips, images, _, _ = hand_made
    ds = ChipDataset(coco, chips, images, _chip_cfg(), masks=28)
    ds.uint8_pixels = True
    img, t = ds[0]
    assert isinstance(t["masks"], np.ndarray) and isinstance(t["mask_valid"], np.ndarray)
    assert ds.mask_cache is not None
    import pickle

    clone = pickle.loads(pickle.dumps(ds))
    assert clone._mask_cache is None  # each worker decodes its own


def test_masks_need_segmentations(hand_made, tmp_path):
    _, chips, images, data, _ = hand_made
    plain = load_coco(copy.deepcopy(data))
    with pytest.raises(ValueError, match=r"masks=True"):
        ChipDataset(plain, chips, images, _chip_cfg(), masks=28)
    t = ChipDataset(plain, chips, images, _chip_cfg()).target(0)
    assert "masks" not in t and "mask_valid" not in t


def test_from_config_passes_the_mask_size(hand_made):
    from sniper.config import Config

    coco, chips, images, _, _ = hand_made
    cfg = Config()
    cfg.chips = _chip_cfg()
    assert ChipDataset.from_config(coco, chips, images, cfg).masks is None
    cfg.model.masks = True
    cfg.model.mask_target_size = 24
    assert ChipDataset.from_config(coco, chips, images, cfg).target(0)["masks"].shape[1:] == (24, 24)


def test_mask_targets_time_per_chip(hand_made, capsys):
    """Not a benchmark: the mask part of a target stays small next to decoding pixels."""
    import time

    coco, chips, images, _, _ = hand_made
    ds = ChipDataset(coco, chips, images, _chip_cfg(), masks=56)
    chip, lab = ds.chip(0), ds.labels(0)
    ds.box_masks(0, chip, lab)
    t0 = time.perf_counter()
    for _ in range(50):
        ds.box_masks(0, chip, lab)
    per_chip = (time.perf_counter() - t0) / 50
    assert per_chip < 0.05
    with capsys.disabled():
        print(f"\nmask targets: {per_chip * 1e3:.2f} ms per chip ({int(lab.valid.sum())} valid GT, S=56)")


def test_chip_labels_gt_index_is_what_masks_use(hand_made):
    coco, chips, _, _, chip = hand_made
    a = coco.annotations(1)
    lab = chip_labels(chip, a.boxes, a.category_ids, a.iscrowd, _chip_cfg(), image_size=(200, 150))
    assert len(lab.gt_index) == 3 and math.isclose(float(lab.boxes[:, 2].max()), 128.0)
