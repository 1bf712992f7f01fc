"""The baseline data path: whole images at one scale or a pyramid, batches, shards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sniper.data.coco import load_coco
from sniper.data.full_image import (
    FullImageBatchSource,
    FullImageDataset,
    collate_full_images,
    full_to_original,
    image_sizes,
)
from sniper.scales import Scale

# (width, height) and boxes (x, y, w, h, category, iscrowd) per image; sparse category ids.
IMAGES = [
    ((200, 120), [(20, 30, 40, 20, 5, 0), (120, 10, 60, 80, 9, 0), (0, 100, 30, 20, 5, 1)]),
    ((100, 160), [(10, 10, 16, 16, 9, 0), (40, 60, 50, 90, 5, 0)]),
    ((150, 150), []),
    ((240, 96), [(100, 20, 80, 60, 9, 0)]),
    ((90, 180), [(5, 100, 20, 70, 5, 0)]),
]
COLOURS = {5: (255, 0, 0), 9: (0, 0, 255)}


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    images, anns = [], []
    for i, ((w, h), boxes) in enumerate(IMAGES):
        canvas = np.full((h, w, 3), 96, dtype=np.uint8)
        for x, y, bw, bh, cat, crowd in boxes:
            canvas[y : y + bh, x : x + bw] = COLOURS[cat]
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat,
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": crowd})  # fmt: skip
        Image.fromarray(canvas).save(root / f"{i}.png")
        images.append({"id": 100 + i, "file_name": f"{i}.png", "width": w, "height": h})
    cats = [{"id": 5, "name": "red"}, {"id": 9, "name": "blue"}]
    return load_coco({"images": images, "annotations": anns, "categories": cats}), root


def _orig_boxes(i):
    return np.array([[x, y, x + w, y + h] for x, y, w, h, *_ in IMAGES[i][1]], dtype=np.float64).reshape(
        -1, 4
    )


def test_single_scale_boxes_scale_exactly(coco_dir):
    coco, root = coco_dir
    ds = FullImageDataset(coco, root, Scale(short=300, max_size=400))
    assert len(ds) == len(IMAGES)
    for i, ((w, h), spec) in enumerate(IMAGES):
        t = ds.target(i)
        f = min(300 / min(w, h), 400 / max(w, h))
        assert t["scale"] == pytest.approx(f)
        assert t["image_size"].tolist() == [round(h * f), round(w * f)]
        crowd = np.array([c for *_, c in spec], dtype=bool)
        b = _orig_boxes(i)
        np.testing.assert_allclose(t["boxes"].numpy(), (b[~crowd] * f).astype(np.float32), rtol=0, atol=1e-4)
        np.testing.assert_allclose(t["ignore_boxes"].numpy(), (b[crowd] * f).astype(np.float32), atol=1e-4)
        assert t["ignore_labels"].tolist() == [0] * int(crowd.sum())  # crowd: never foreground
        assert t["labels"].tolist() == [{5: 1, 9: 2}[c] for (*_, c, cr) in spec if not cr]
        assert t["valid_range"].tolist() == [0.0, math.inf]
        assert t["image_id"] == 100 + i and t["scale_index"] == 0 and t["flipped"] is False
        np.testing.assert_allclose(full_to_original(t["boxes"], t), b[~crowd], atol=1e-3)


def test_pixels_follow_the_boxes(coco_dir):
    coco, root = coco_dir
    ds = FullImageDataset(coco, root, Scale(factor=2.5))
    for i in (0, 1, 3):
        im, t = ds[i]
        h, w = t["image_size"].tolist()
        assert im.shape == (3, h, w) and im.dtype == torch.float32 and 0 <= im.min() and im.max() <= 1
        for box, label in zip(t["boxes"].numpy(), t["labels"].tolist()):
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            colour = COLOURS[{1: 5, 2: 9}[label]]
            np.testing.assert_allclose(im[:, cy, cx].numpy() * 255, colour, atol=2)


def test_pyramid_uses_valid_ranges(coco_dir):
    coco, root = coco_dir
    scales = [Scale(factor=2.0, valid_range=(None, 30.0)), Scale(factor=0.5, valid_range=(30.0, None))]
    ds = FullImageDataset(coco, root, scales)
    assert len(ds) == 2 * len(IMAGES)
    sizes = np.sqrt(np.prod(_orig_boxes(1)[:, 2:] - _orig_boxes(1)[:, :2], axis=1))  # 16, ~67
    fine, coarse = ds.target(2), ds.target(3)  # image 1 at each scale
    assert fine["scale"] == 2.0 and coarse["scale"] == 0.5 and coarse["scale_index"] == 1
    np.testing.assert_allclose(fine["boxes"].numpy(), _orig_boxes(1)[sizes < 30] * 2.0, atol=1e-4)
    np.testing.assert_allclose(fine["ignore_boxes"].numpy(), _orig_boxes(1)[sizes >= 30] * 2.0, atol=1e-4)
    assert fine["ignore_labels"].tolist() == [1]  # the out-of-range GT (category 5) keeps its label
    np.testing.assert_allclose(coarse["boxes"].numpy(), _orig_boxes(1)[sizes >= 30] * 0.5, atol=1e-4)
    assert fine["valid_range"].tolist() == [0.0, 60.0]
    assert coarse["valid_range"].tolist() == [15.0, math.inf]
    # A single scale is all-valid unless asked otherwise.
    one = FullImageDataset(coco, root, scales[0])
    assert one.target(1)["valid_range"].tolist() == [0.0, math.inf] and len(one.target(1)["boxes"]) == 2
    assert len(FullImageDataset(coco, root, scales[0], valid_ranges=True).target(1)["boxes"]) == 1


def test_flip_mirrors_pixels_and_boxes(coco_dir):
    coco, root = coco_dir
    ds = FullImageDataset(coco, root, Scale(factor=1.5))
    for i in (0, 1, 4):
        im, t = ds[i]
        imf, tf = ds[(i, True)]
        assert tf["flipped"] is True
        torch.testing.assert_close(imf, im.flip(-1))
        w = t["image_size"][1].item()
        b = t["boxes"].numpy()
        expect = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1)
        np.testing.assert_allclose(tf["boxes"].numpy(), expect, atol=1e-4)
        assert torch.equal(tf["labels"], t["labels"])
        np.testing.assert_allclose(full_to_original(tf["boxes"], tf), full_to_original(b, t), atol=1e-3)


def test_collate_pads_to_multiple_of_32(coco_dir):
    coco, root = coco_dir
    ds = FullImageDataset(coco, root, Scale(factor=1.0))
    items = [ds[0], ds[3]]  # 200x120 and 240x96
    images, targets = collate_full_images(items)
    assert images.shape == (2, 3, 128, 256)
    assert image_sizes(targets) == [(120, 200), (96, 240)]
    for (im, _), padded in zip(items, images):
        h, w = im.shape[1:]
        torch.testing.assert_close(padded[:, :h, :w], im)
        assert padded[:, h:, :].abs().sum() == 0 and padded[:, :, w:].abs().sum() == 0
    assert collate_full_images([ds[0]], size_divisible=1)[0].shape == (1, 3, 120, 200)


def _keys(source, epoch):
    return [k for batch in source.epoch_batches(epoch) for k in batch]


def test_shards_are_disjoint_and_cover_the_epoch(coco_dir):
    coco, root = coco_dir
    ds = FullImageDataset(coco, root, [Scale(factor=1.0), Scale(factor=0.5)])  # 10 items
    single = FullImageBatchSource(ds, batch_size=2, seed=3, group_aspect=False)
    ranks = [
        FullImageBatchSource(ds, batch_size=1, seed=3, rank=r, world_size=2, group_aspect=False)
        for r in (0, 1)
    ]
    assert ranks[0].batches_per_epoch() == ranks[1].batches_per_epoch() == single.batches_per_epoch() == 5
    for epoch in (0, 1):
        a = {i for i, _ in _keys(ranks[0], epoch)}
        b = {i for i, _ in _keys(ranks[1], epoch)}
        assert not a & b and a | b == set(range(len(ds)))
        # The ranks split the single-process batches between them.
        assert sorted(a | b) == sorted(i for i, _ in _keys(single, epoch))
    # Uneven: 10 items over 3 ranks -> equal batch counts, every item seen, only wrap-round repeats.
    three = [FullImageBatchSource(ds, batch_size=2, seed=0, rank=r, world_size=3) for r in range(3)]
    counts = {s.batches_per_epoch() for s in three}
    assert len(counts) == 1
    seen = [i for s in three for i, _ in _keys(s, 0)]
    assert set(seen) == set(range(len(ds))) and len(seen) - len(set(seen)) < 3 * three[0].batches_per_epoch()


def test_epochs_are_reproducible_and_resume_exactly(coco_dir):
    coco, root = coco_dir
    ds = FullImageDataset(coco, root, [Scale(factor=0.5), Scale(factor=0.25)])
    a = FullImageBatchSource(ds, batch_size=2, seed=7)
    b = FullImageBatchSource(ds, batch_size=2, seed=7)
    assert a.epoch_batches(0) == b.epoch_batches(0) and a.epoch_batches(1) == b.epoch_batches(1)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    assert a.epoch_batches(0) != FullImageBatchSource(ds, batch_size=2, seed=8).epoch_batches(0)
    flips = [f for _, f in _keys(a, 0) + _keys(a, 1)]
    assert any(flips) and not all(flips)
    assert not any(f for _, f in _keys(FullImageBatchSource(ds, batch_size=2, seed=7, flip=False), 0))
    # Grouping: a batch never mixes landscape and portrait images, nor scales.
    for batch in a.epoch_batches(0):
        assert len({bool(ds.sizes[i, 0] >= ds.sizes[i, 1]) for i, _ in batch}) == 1
        assert len({i % 2 for i, _ in batch}) == 1
    full = list(a.iterate(1, 0))
    assert len(full) == a.batches_per_epoch()
    resumed = list(b.iterate(1, 3))
    assert len(resumed) == len(full) - 3 > 0
    for (x, tx), (y, ty) in zip(full[3:], resumed):
        torch.testing.assert_close(x, y)
        assert len(tx) == len(x) and [t["image_id"] for t in tx] == [t["image_id"] for t in ty]
        assert all(torch.equal(p["boxes"], q["boxes"]) for p, q in zip(tx, ty))
    items = [(t["image_id"], t["scale_index"]) for _, ts in full for t in ts]
    assert len(items) == len(set(items)) == len(ds)  # every item once (no wrap-round on one rank)
    for images, targets in full:
        assert images.shape[-1] % 32 == 0 and images.shape[-2] % 32 == 0
        sizes = image_sizes(targets)
        assert len(sizes) == images.shape[0]
        assert all(h <= images.shape[-2] and w <= images.shape[-1] for h, w in sizes)


def test_bad_image_is_named_or_skipped(coco_dir, tmp_path):
    from sniper.config import DataConfig
    from sniper.errors import BadImageError

    coco, root = coco_dir
    for i in range(len(IMAGES)):
        (tmp_path / f"{i}.png").write_bytes((root / f"{i}.png").read_bytes())
    (tmp_path / "1.png").write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="1.png"):
        FullImageDataset(coco, tmp_path, Scale(factor=1.0))[1]
    ds = FullImageDataset(coco, tmp_path, Scale(factor=1.0), DataConfig(on_bad_image="skip"))
    with pytest.warns(UserWarning, match="1.png"):
        _, t = ds[1]
    assert t["image_id"] == 102 and any("1.png" in k for k in ds.bad_images.bad_files)
