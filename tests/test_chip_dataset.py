"""The chip dataset: pixels, labels, flips, ids, epoch plan, bad images, draft decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sniper.chips import Chip, chip_labels, positive_chips
from sniper.config import ChipConfig, DataConfig
from sniper.data.chip_dataset import (
    ChipBatchSource,
    ChipDataset,
    check_images,
    chip_to_original,
    collate_chips,
)
from sniper.data.chip_table import ChipTable
from sniper.data.coco import load_coco
from sniper.data.epoch_plan import ChipBatchSampler, ChipKey, epoch_plan, worker_batches
from sniper.data.images import LoadedImage, load_image
from sniper.data.transforms import flip_boxes, render_chip
from sniper.errors import BadImageError
from sniper.scales import Scale
from sniper.viz.chips import draw_item

K = 128


def chip_cfg() -> ChipConfig:
    return ChipConfig(
        chip_size=K,
        stride=16,
        scales=[
            Scale(factor=2.0, valid_range=(None, 40.0)),  # upsampling
            Scale(factor=0.75, valid_range=(20.0, 90.0)),  # mild downsampling, no draft
            Scale(longest=100, valid_range=(60.0, None)),  # f = 1/3: JPEG draft at 1/2
        ],
        neg_min_proposals=[1, 1, 1],
        min_box_size=2.0,
    )


def smooth_image(w: int, h: int, seed: int) -> np.ndarray:
    """Low-frequency colour pattern: resampling methods agree on it to a grey level or two."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for _ in range(3):
        a, b, c, d = rng.uniform(0.01, 0.06, 4)
        chans.append(127 + 60 * np.sin(a * x + b * y) + 60 * np.cos(c * x - d * y + 1.0))
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)


def write_dataset(
    root: Path, *, fmt: str = "png", category_ids=(1, 3, 7), size=(300, 200), n_images=2
) -> Path:
    """Images with a few boxes each (one crowd); returns the annotation file (images in root/images)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    rng = np.random.default_rng(0)
    aid = 0
    for i in range(n_images):
        w, h = size
        arr = smooth_image(w, h, i)
        name = f"img{i}.{fmt}"
        Image.fromarray(arr).save(root / "images" / name, **({"quality": 95} if fmt == "jpg" else {}))
        images.append({"id": 10 + i, "file_name": name, "width": w, "height": h})
        for j in range(6):
            s = float(rng.uniform(8, 110))
            x, y = float(rng.uniform(0, w - s)), float(rng.uniform(0, h - s * 0.8))
            aid += 1
            anns.append({"id": aid, "image_id": 10 + i, "category_id": int(category_ids[j % len(category_ids)]),
                         "bbox": [x, y, s, s * 0.8], "area": s * s * 0.8, "iscrowd": int(j == 5)})  # fmt: skip
    cats = [{"id": int(c), "name": f"c{c}"} for c in category_ids]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def table_for(coco, cfg: ChipConfig) -> ChipTable:
    parts = []
    for rec in coco.images:
        a = coco.annotations(rec.id)
        parts.append(positive_chips(a.boxes, rec.width, rec.height, cfg, iscrowd=a.iscrowd, image_id=rec.id))
    return ChipTable.from_image_chips(parts)


@pytest.fixture(scope="module")
def png_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("png")
    coco = load_coco(write_dataset(root))
    cfg = chip_cfg()
    table = table_for(coco, cfg)
    assert set(table.scale_index.tolist()) == {0, 1, 2}
    return coco, table, root / "images", cfg


def reference_chip(full: np.ndarray, chip: Chip) -> np.ndarray:
    """Independent reference: torch-resize the WHOLE image by f (antialiased bilinear), then crop."""
    t = torch.from_numpy(full.copy()).permute(2, 0, 1)[None].double()
    pad = int(np.ceil(2 / chip.scale)) + 1  # a rounded scaled size may end past the image: replicate
    t = F.pad(t, (0, pad, 0, pad), mode="replicate")
    big = F.interpolate(t, scale_factor=chip.scale, mode="bilinear", align_corners=False,
                        antialias=chip.scale < 1, recompute_scale_factor=False)[0]  # fmt: skip
    x1, y1, x2, y2 = chip.window
    return (big[:, y1:y2, x1:x2] / 255.0).float().numpy()


# ---------------------------------------------------------------- pixels


def test_chip_pixels_equal_independent_resize(png_data):
    coco, table, images, cfg = png_data
    ds = ChipDataset(coco, table, images, cfg)
    for i in range(len(table)):
        img, t = ds[i]
        chip = ds.chip(i)
        full = np.asarray(Image.open(images / coco.image(t["image_id"]).file_name).convert("RGB"))
        ref = reference_chip(full, chip)
        h, w = (int(v) for v in t["image_size"])
        assert (w, h) == chip.size_px() and ref.shape[1:] == (h, w)
        got = img[:, :h, :w].numpy()
        inner = (slice(None), slice(2, h - 2), slice(2, w - 2))  # borders differ by edge handling
        diff = np.abs(got[inner] - ref[inner])
        assert diff.mean() < 1.0 / 255 and diff.max() < 4.0 / 255, (i, chip.scale, diff.mean(), diff.max())
        # zero padding outside the content
        assert img[:, h:, :].abs().sum() == 0 and img[:, :, w:].abs().sum() == 0
        assert img.shape == (3, K, K) and img.dtype == torch.float32


def test_draft_decoding_is_exact(tmp_path):
    """A white square in a JPEG lands at the same chip pixels with and without draft decoding."""
    W, H = 1600, 1200
    arr = np.zeros((H, W, 3), np.uint8)
    arr[300:700, 400:800] = 255  # square [400, 300, 800, 700]
    path = tmp_path / "sq.jpg"
    Image.fromarray(arr).save(path, quality=95)
    f = 0.25 * 0.99  # draft reduction 4 (4 * f <= 1)
    draft = load_image(path, max_pixels=10**9, draft_size=(W // 4, H // 4))
    full = load_image(path, max_pixels=10**9)
    assert draft.image.size == (400, 300) and draft.scale_x == 0.25 and full.scale_x == 1.0
    x1, y1 = 160.0, 120.0
    size = (int((W - x1) * f), int((H - y1) * f))
    a = render_chip(draft, x1, y1, f, size).astype(np.float64).mean(-1) / 255
    b = render_chip(full, x1, y1, f, size).astype(np.float64).mean(-1) / 255
    assert np.abs(a - b).mean() < 0.01
    for img in (a, b):
        # sub-pixel edge positions from the mass of the profiles: width = 400 f, left edge = (400 - x1) f
        col, row = img[int((500 - y1) * f)], img[:, int((600 - x1) * f)]
        assert col.sum() == pytest.approx(400 * f, abs=0.3) and row.sum() == pytest.approx(400 * f, abs=0.3)
        left = np.argmax(col > 0.5)
        assert abs(left - (400 - x1) * f) <= 1.0
        centre_x = (col * (np.arange(len(col)) + 0.5)).sum() / col.sum()
        assert centre_x == pytest.approx((600 - x1) * f, abs=0.3)


def test_jpeg_dataset_uses_draft_and_matches_full_decode(tmp_path):
    coco = load_coco(write_dataset(tmp_path, fmt="jpg", size=(900, 600), n_images=1))
    cfg = chip_cfg()
    table = table_for(coco, cfg)
    coarse = np.flatnonzero(table.scale_index == 2)
    assert len(coarse) == 1 and table.scale[coarse[0]] == pytest.approx(1 / 9)
    ds = ChipDataset(coco, table, tmp_path / "images", cfg)
    img, t = ds[int(coarse[0])]
    assert [r for _, r in ds.cache._entries] == [8]  # f = 1/9: decoded at 1/8
    full = np.asarray(Image.open(tmp_path / "images" / "img0.jpg").convert("RGB"))
    ref = reference_chip(full, ds.chip(int(coarse[0])))
    h, w = (int(v) for v in t["image_size"])
    diff = np.abs(img[:, 2 : h - 2, 2 : w - 2].numpy() - ref[:, 2:-2, 2:-2])
    assert diff.mean() < 3.0 / 255


def test_chip_past_the_image_edge_repeats_the_edge():
    """Rounded scaled sizes may put a chip's last column past the image: no stretch, edge repeated."""
    arr = np.tile(np.arange(10, dtype=np.uint8)[None, :, None] * 20, (4, 1, 3))
    im = LoadedImage(Image.fromarray(arr), 1.0, 1.0, (10, 4))
    out = render_chip(im, 0.0, 0.0, 2.05, (21, 8))  # 21 / 2.05 = 10.24 > 10 px
    assert out.shape == (8, 21, 3)
    ref = render_chip(im, 0.0, 0.0, 2.05, (20, 8))
    np.testing.assert_array_equal(out[:, :20], ref)
    np.testing.assert_array_equal(out[:, 20], out[:, 19])
    # and by hand: chip px x samples the ramp (20 per px) at (x + 0.5) / 2.05 - 0.5, clamped to the image
    x_src = np.minimum((np.arange(21) + 0.5) / 2.05 - 0.5, 9.0)
    np.testing.assert_allclose(out[0, :, 0], np.clip(20 * x_src, 0, 180), atol=1)


# ---------------------------------------------------------------- labels


def test_targets_agree_with_chip_labels(png_data):
    coco, table, images, cfg = png_data
    ds = ChipDataset(coco, table, images, cfg)
    n_ignore = n_crowd_ignored = n_invalid_labelled = 0
    for i in range(len(table)):
        t = ds.target(i)
        rec = coco.image(t["image_id"])
        a = coco.annotations(rec.id)
        lab = chip_labels(
            ds.chip(i), a.boxes, a.category_ids, a.iscrowd, cfg, image_size=(rec.width, rec.height)
        )
        np.testing.assert_array_equal(t["boxes"].numpy(), lab.boxes[lab.valid])
        np.testing.assert_array_equal(t["ignore_boxes"].numpy(), lab.boxes[lab.ignore])
        np.testing.assert_array_equal(coco.category_of(t["labels"].numpy()), lab.classes[lab.valid])
        # per ignore box: the class of an invalid non-crowd GT (the head may match it), 0 for crowd
        crowd = a.iscrowd[lab.gt_index[lab.ignore]]
        ignore_labels = t["ignore_labels"].numpy()
        assert t["ignore_labels"].dtype == torch.int64 and len(ignore_labels) == len(t["ignore_boxes"])
        assert (ignore_labels[crowd] == 0).all()
        invalid_classes = lab.classes[lab.ignore][~crowd]
        np.testing.assert_array_equal(coco.category_of(ignore_labels[~crowd]), invalid_classes)
        n_invalid_labelled += int((~crowd).sum())
        np.testing.assert_allclose(t["valid_range"].numpy(), lab.valid_range.astype(np.float32))
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
        assert t["origin"].dtype == torch.float64 and t["chip_box"].tolist()[:2] == t["origin"].tolist()
        n_ignore += len(t["ignore_boxes"])
        n_crowd_ignored += int(a.iscrowd[lab.gt_index].sum())
        assert not a.iscrowd[lab.gt_index[lab.valid]].any()
    assert n_ignore > 0 and n_crowd_ignored > 0 and n_invalid_labelled > 0


def test_predictions_map_back_to_the_image(png_data):
    coco, table, images, cfg = png_data
    ds = ChipDataset(coco, table, images, cfg)
    checked = 0
    for i in range(len(table)):
        for flip in (False, True):
            t = ds.target(i, flip)
            rec = coco.image(t["image_id"])
            a = coco.annotations(rec.id)
            lab = chip_labels(
                ds.chip(i), a.boxes, a.category_ids, a.iscrowd, cfg, image_size=(rec.width, rec.height)
            )
            gt = a.boxes[lab.gt_index[lab.valid]]  # valid boxes lie inside the chip: no clipping
            np.testing.assert_allclose(chip_to_original(t["boxes"], t), gt, atol=1e-3)
            checked += len(gt)
    assert checked > 0


@pytest.mark.parametrize("ids", [(0, 1, 2), (5, 90, 1000)])
def test_category_ids_round_trip(tmp_path, ids):
    coco = load_coco(write_dataset(tmp_path, category_ids=ids, n_images=1))
    cfg = chip_cfg()
    ds = ChipDataset(coco, table_for(coco, cfg), tmp_path / "images", cfg)
    seen = set()
    for i in range(len(ds)):
        lab = ds.target(i)["labels"].numpy()
        assert ((lab >= 1) & (lab <= 3)).all()
        seen |= set(coco.category_of(lab).tolist())
    assert seen and seen <= set(ids)


# ---------------------------------------------------------------- flips


@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50), st.floats(0, 50), st.floats(0, 50)), max_size=8),
       st.floats(60, 512))  # fmt: skip
@settings(max_examples=50, deadline=None)
def test_flipping_boxes_twice_is_identity(raw, width):
    b = np.array([[min(x1, x2), min(y1, y2), max(x1, x2) + 1, max(y1, y2) + 1] for x1, y1, x2, y2 in raw],
                 dtype=np.float32).reshape(-1, 4)  # fmt: skip
    f = flip_boxes(b, width)
    assert (f[:, 2] >= f[:, 0]).all() and (f[:, 0] >= width - 52).all()
    np.testing.assert_allclose(flip_boxes(f, width), b, atol=1e-4)
    np.testing.assert_allclose(f[:, 2] - f[:, 0], b[:, 2] - b[:, 0], atol=1e-4)


def test_flip_is_consistent_for_image_and_boxes(tmp_path):
    """A bright box drawn into the image lands under its (flipped) target box, inside the content."""
    w, h = 200, 100  # content narrower than K: flipping within K would put it in the padding
    arr = np.zeros((h, w, 3), np.uint8)
    box = [20.0, 30.0, 60.0, 70.0]
    arr[30:70, 20:60] = 255
    (tmp_path / "images").mkdir()
    Image.fromarray(arr).save(tmp_path / "images" / "a.png")
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [20, 30, 40, 40], "iscrowd": 0},
                           {"id": 2, "image_id": 1, "category_id": 4, "bbox": [150, 10, 30, 20], "iscrowd": 1}],
           "categories": [{"id": 4, "name": "x"}]}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(ann))
    coco = load_coco(tmp_path / "a.json")
    cfg = ChipConfig(chip_size=K * 2, stride=16, scales=[Scale(factor=1.0)], neg_min_proposals=[1])
    table = ChipTable.from_columns({"image_id": [1], "kind": ["pos"], "scale": [1.0], "scale_index": [0],
                                    "x1": [0.0], "y1": [0.0], "x2": [float(w)], "y2": [float(h)]})  # fmt: skip
    ds = ChipDataset(coco, table, tmp_path / "images", cfg)
    plain, t0 = ds[ChipKey(0, False)]
    flipped, t1 = ds[ChipKey(0, True)]
    assert t1["flipped"] and not t0["flipped"]
    np.testing.assert_allclose(t0["boxes"].numpy(), [box])
    np.testing.assert_allclose(t1["boxes"].numpy(), [[w - 60, 30, w - 20, 70]])
    np.testing.assert_allclose(t1["ignore_boxes"].numpy(), [[w - 180, 10, w - 150, 30]])
    assert t1["ignore_labels"].tolist() == [0]  # crowd
    x1, y1, x2, y2 = (int(v) for v in t1["boxes"][0])
    assert flipped[:, y1:y2, x1:x2].min() > 0.95
    assert flipped[:, :h, :w].sum() == pytest.approx(plain[:, :h, :w].sum())
    torch.testing.assert_close(flipped[:, :h, :w].flip(2), plain[:, :h, :w])
    assert flipped[:, :, w:].abs().sum() == 0  # padding stays on the right
    pic = np.asarray(draw_item(flipped, t1))
    assert tuple(pic[y1, (x1 + x2) // 2]) == (0, 230, 0)  # valid box edge drawn green
    assert tuple(pic[10, w - 165]) == (255, 40, 40)  # ignore box edge red


# ---------------------------------------------------------------- epoch plan


def toy_table(n_images=7, pos=(1, 4), negs=3, seed=0) -> ChipTable:
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("image_id", "kind", "scale", "scale_index", "x1", "y1", "x2", "y2")}
    for i in range(n_images):
        for kind, n in (("pos", int(rng.integers(*pos))), ("neg", negs if i % 2 else 0)):
            for _ in range(n):
                s = int(rng.integers(0, 3))
                x, y = rng.uniform(0, 100, 2)
                for k, v in zip(cols, (100 + i, kind, [3.0, 1.667, 0.5][s], s, x, y, x + 50, y + 50)):
                    cols[k].append(v)
    return ChipTable.from_columns(cols)


def test_epoch_plan_reproducible_reshuffled_and_complete():
    t = toy_table()
    a = epoch_plan(t, seed=1, epoch=0, neg_per_image=2)
    b = epoch_plan(t, seed=1, epoch=0, neg_per_image=2)
    c = epoch_plan(t, seed=1, epoch=1, neg_per_image=2)
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.flip, b.flip)
    assert not np.array_equal(a.index, c.index) and not np.array_equal(a.flip, c.flip)
    pos = set(np.flatnonzero(~t.is_neg).tolist())
    for p in (a, c):
        assert len(set(p.index.tolist())) == len(p)  # no repeats in one rank/epoch
        assert pos <= set(p.index.tolist())
        negs = p.index[t.is_neg[p.index]]
        per_image = np.bincount(t.image_id[negs] - 100, minlength=7)
        assert per_image.max() <= 2 and per_image[1::2].min() == 2
        # runs: all chips of an image adjacent, finest scale first
        ids = t.image_id[p.index]
        assert len(np.flatnonzero(np.diff(ids))) + 1 == len(np.unique(ids))
        for img in np.unique(ids):
            sc = t.scale[p.index[ids == img]]
            assert (np.diff(sc) <= 0).all()
    no_neg = epoch_plan(t, seed=1, epoch=0, negatives=False)
    assert set(no_neg.index.tolist()) == pos
    assert not epoch_plan(t, seed=1, epoch=0, flip=False).flip.any()
    assert len(a) >= 10 and 0.3 < a.flip.mean() < 0.7


@pytest.mark.parametrize("world", [2, 3, 5])
def test_shards_disjoint_complete_equal(world):
    t = toy_table(n_images=11)
    full = epoch_plan(t, seed=3, epoch=2)
    shards = [epoch_plan(t, seed=3, epoch=2, rank=r, world_size=world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) * world >= full.total
    cat = np.concatenate([s.index for s in shards])
    np.testing.assert_array_equal(cat[: full.total], full.index)  # together: all of it, once
    np.testing.assert_array_equal(cat[full.total :], full.index[: len(cat) - full.total])  # padding wraps
    np.testing.assert_array_equal(np.concatenate([s.flip for s in shards])[: full.total], full.flip)


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_batch_sampler_worker_layout_and_resume(workers):
    t = toy_table(n_images=13)
    s = ChipBatchSampler(t, 4, seed=0, num_workers=workers)
    s.set_epoch(1)
    batches = list(s)
    plan = s.plan(1)
    flat = [k for b in batches for k in b]
    assert sorted(k.index for k in flat) == sorted(plan.index.tolist())
    # the plan cut into consecutive batches of 4 (whatever the worker layout): one short batch at most,
    # the one holding the end of the plan
    n = len(plan)
    pos = {int(i): p for p, i in enumerate(plan.index)}
    assert n > 4 * max(1, workers)
    assert sorted(len(b) for b in batches) == sorted([4] * (n // 4) + ([n % 4] if n % 4 else []))
    assert all(pos[b[0].index] % 4 == 0 for b in batches)  # (contiguous: checked below)
    # worker k receives batches k, k+W, ...: each worker's items form one contiguous stretch of the
    # plan, and the stretches follow one another in worker order
    w = max(1, workers)
    stretches = [[pos[x.index] for b in batches[k::w] for x in b] for k in range(w)]
    assert all(stretches)
    assert [p for seq in stretches for p in seq] == list(range(n))
    for start in (0, 1, 4, 7, len(flat) - 1, len(flat)):
        s.set_epoch(1, start)
        rest = [k for b in s for k in b]
        assert rest == flat[start:]
    assert len(worker_batches(10, 4, 2, drop_last=True)) == 2


def test_batch_source_resume_and_collate(png_data):
    coco, table, images, cfg = png_data
    ds = ChipDataset(coco, table, images, cfg)
    sampler = ChipBatchSampler(table, 3, seed=0, num_workers=0)
    src = ChipBatchSource(ds, sampler)
    all_batches = list(src.iterate(0, 0))
    assert len(all_batches) == src.batches_per_epoch()
    imgs, targets = all_batches[0]
    assert imgs.shape == (3, 3, K, K) and len(targets) == 3
    later = list(src.iterate(0, 2))
    assert len(later) == len(all_batches) - 2
    torch.testing.assert_close(later[0][0], all_batches[2][0])
    assert [t["image_id"] for t in later[0][1]] == [t["image_id"] for t in all_batches[2][1]]
    one = collate_chips([ds[0]])
    assert one[0].shape == (1, 3, K, K)
    # with workers (uint8 pixels + numpy targets in transit): the same items, as float and tensors
    src2 = ChipBatchSource(ds, ChipBatchSampler(table, 3, seed=0, num_workers=2), num_workers=2)
    got = {}
    for imgs, targets in src2.iterate(0, 0):
        assert imgs.dtype == torch.float32
        for im, t in zip(imgs, targets):
            assert all(
                torch.is_tensor(t[k]) for k in ("boxes", "labels", "ignore_boxes", "origin", "chip_box")
            )
            got[(t["image_id"], tuple(t["chip_box"].tolist()), t["flipped"])] = (im, t)
    want = [(im, t) for imgs, ts in all_batches for im, t in zip(imgs, ts)]
    assert len(got) == len(want)
    for im, t in want:
        im2, t2 = got[(t["image_id"], tuple(t["chip_box"].tolist()), t["flipped"])]
        torch.testing.assert_close(im2, im, rtol=0, atol=0)
        torch.testing.assert_close(t2["boxes"], t["boxes"])


# ---------------------------------------------------------------- bad images


@pytest.fixture()
def bad_data(tmp_path):
    path = write_dataset(tmp_path, fmt="jpg", n_images=4)
    img = tmp_path / "images"
    (img / "img1.jpg").unlink()  # missing
    data = (img / "img2.jpg").read_bytes()
    (img / "img2.jpg").write_bytes(data[: len(data) // 3])  # truncated: header fine, pixels not
    (img / "img3.jpg").write_bytes(b"not an image at all")
    coco = load_coco(path)
    cfg = chip_cfg()
    return coco, table_for(coco, cfg), img, cfg


def test_bad_image_error_names_the_file(bad_data):
    coco, table, img, cfg = bad_data
    ds = ChipDataset(coco, table, img, cfg, DataConfig(on_bad_image="error"))
    row = int(np.flatnonzero(table.image_id == 13)[0])
    with pytest.raises(BadImageError, match="img3.jpg"):
        ds[row]
    with pytest.raises(BadImageError, match="img1.jpg"):
        check_images(coco, table, img, DataConfig(on_bad_image="error"), progress=False)


def test_bad_images_skipped_and_counted(bad_data):
    coco, table, img, cfg = bad_data
    skip = DataConfig(on_bad_image="skip")
    header = check_images(coco, table, img, skip, progress=False)
    assert sorted(Path(b.file).name for b in header.bad) == ["img1.jpg", "img3.jpg"]
    full = check_images(coco, table, img, skip, decode=True, progress=False)
    assert sorted(Path(b.file).name for b in full.bad) == ["img1.jpg", "img2.jpg", "img3.jpg"]
    assert full.dropped_chips == int(np.isin(table.image_id, [11, 12, 13]).sum()) > 0
    assert set(full.chips.image_id.tolist()) == {10} and "3 bad" in full.format()
    # after the header pass only the truncated file is left to fail at decode time: replaced, counted
    ds = ChipDataset(coco, header.chips, img, cfg, skip)
    rows = np.flatnonzero(header.chips.image_id == 12)
    with pytest.warns(UserWarning, match="img2.jpg"):
        image, t = ds[int(rows[0])]
    assert t["image_id"] == 10 and image.shape == (3, K, K)
    assert list(Path(f).name for f in ds.bad_images.bad_files) == ["img2.jpg"]
