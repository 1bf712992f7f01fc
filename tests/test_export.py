"""`sniper export`: chip images + COCO JSON + mapping, round trip back to the source."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from test_chip_dataset import chip_cfg, table_for, write_dataset  # tests/ is on sys.path under pytest

from sniper.chips import chip_labels
from sniper.cli import main
from sniper.config import Config, to_dict
from sniper.data import export as export_module
from sniper.data.chip_dataset import ChipDataset
from sniper.data.chip_table import ChipTable, build_chip_table
from sniper.data.coco import load_coco
from sniper.data.export import export_chips, select_chips
from sniper.errors import BadImageError
from sniper.io import owner_tag


def small_config() -> Config:
    cfg = Config()
    cfg.model.pretrained = False  # tests never need ImageNet weights
    cfg.chips = chip_cfg()
    return cfg


def config_file(tmp_path, cfg: Config):
    import yaml

    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({"chips": to_dict(cfg.chips)}))
    return p


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    ann = write_dataset(root, category_ids=(0, 5, 90), n_images=2)
    cfg = small_config()
    code = main(["export", "--annotations", str(ann), "--images", str(root / "images"), "--out", str(root / "out"),
                 "--config", str(config_file(root, cfg)), "--format", "png"])  # fmt: skip
    assert code == 0
    return root, load_coco(ann), cfg


def test_export_round_trip(exported):
    root, coco, cfg = exported
    data = json.loads((root / "out" / "chips_coco.json").read_text())
    assert data["categories"] == coco.categories
    table, _ = build_chip_table(coco, None, cfg.chips, seed=cfg.seed)  # what export ran: the chip engine at epoch 0
    assert len(data["images"]) == len(table) > 0
    ds = ChipDataset(coco, table, root / "images", cfg.chips)
    by_source = {}
    for i in range(len(table)):
        by_source.setdefault(int(table.image_id[i]), []).append(i)
    anns = {}
    for a in data["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    n_valid = n_crowd = 0
    for im in data["images"]:
        src = im["source_image_id"]
        rec = coco.image(src)
        assert im["source_file_name"] == rec.file_name
        gt = coco.annotations(src)
        chip_anns = anns.get(im["id"], [])
        # map every exported box back with the mapping: valid ones give the original GT boxes
        s, (ox, oy) = im["scale"], im["origin"]
        for a in chip_anns:
            x, y, w, h = a["bbox"]
            back = np.array([x / s + ox, y / s + oy, (x + w) / s + ox, (y + h) / s + oy])
            k = int(np.flatnonzero(gt.ann_ids == a["source_annotation_id"])[0])
            assert a["category_id"] == int(gt.category_ids[k])
            if a["iscrowd"] == 0:
                np.testing.assert_allclose(back, gt.boxes[k], atol=1e-3)  # float32 chip px
                n_valid += 1
            else:
                n_crowd += 1
                o = gt.boxes[k]  # ignore regions are clipped to the chip: inside the original box
                assert back[0] >= o[0] - 1e-3 and back[2] <= o[2] + 1e-3
        # the same labels the training dataset uses
        match = [i for i in by_source[src] if np.allclose(table.boxes[i], im["chip_box"])]
        assert len(match) == 1
        lab = chip_labels(ds.chip(match[0]), gt.boxes, gt.category_ids, gt.iscrowd, cfg.chips,
                          image_size=(rec.width, rec.height))  # fmt: skip
        assert sum(a["iscrowd"] == 0 for a in chip_anns) == int(lab.valid.sum())
        assert sum(a["iscrowd"] == 1 for a in chip_anns) == int(lab.ignore.sum())
        # pixels are the dataset's chip content (lossless PNG)
        pixels = np.asarray(Image.open(root / "out" / "images" / im["file_name"]))
        np.testing.assert_array_equal(pixels, ds.render(match[0]))
        assert (im["width"], im["height"]) == ds.chip(match[0]).size_px()
    assert n_valid > 0 and n_crowd > 0


def test_pycocotools_loads_export_and_mapping_csv(exported):
    root, coco, _ = exported
    c = COCO(str(root / "out" / "chips_coco.json"))
    assert len(c.getImgIds()) > 0 and sorted(c.getCatIds()) == [0, 5, 90]
    crowd = c.getAnnIds(iscrowd=True)
    assert len(crowd) > len(c.getAnnIds(iscrowd=False))  # iscrowd=True lists all; some are ignore regions
    assert any(c.anns[i]["iscrowd"] == 1 for i in crowd)
    with open(root / "out" / "mapping.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(c.getImgIds())
    r0 = rows[0]
    img = c.imgs[int(r0["chip_image_id"])]
    assert float(r0["origin_x"]) == img["origin"][0] and int(r0["source_image_id"]) == img["source_image_id"]


def test_export_from_chips_parquet_with_negatives(tmp_path):
    ann = write_dataset(tmp_path, n_images=1)
    coco = load_coco(ann)
    cfg = small_config()
    pos = table_for(coco, cfg.chips)
    neg = [[0.0, 0.0, 50.0, 40.0], [100.0, 50.0, 160.0, 110.0], [200.0, 100.0, 260.0, 160.0]]
    cols = {
        "image_id": np.concatenate([pos.image_id, [10, 10, 10]]),
        "kind": ["pos"] * len(pos) + ["neg"] * 3,
        "scale": np.concatenate([pos.scale, [0.75] * 3]),
        "scale_index": np.concatenate([pos.scale_index, [1, 1, 1]]),
    }
    boxes = np.concatenate([pos.boxes, np.array(neg)])
    for j, k in enumerate(("x1", "y1", "x2", "y2")):
        cols[k] = boxes[:, j]
    (tmp_path / "chips").mkdir()
    pq.write_table(pa.table(cols), tmp_path / "chips" / "chips.parquet")
    base = ["export", "--annotations", str(ann), "--images", str(tmp_path / "images"),
            "--chips", str(tmp_path / "chips"), "--config", str(config_file(tmp_path, cfg))]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 0  # default: neg_per_image (2) sampled
    assert main([*base, "--out", str(tmp_path / "b"), "--no-negatives"]) == 0
    assert main([*base, "--out", str(tmp_path / "c"), "--all-negatives", "--workers", "2"]) == 0
    kinds = {}
    for k in "abc":
        d = json.loads((tmp_path / k / "chips_coco.json").read_text())
        kinds[k] = [im["kind"] for im in d["images"]]
    assert kinds["a"].count("neg") == 2 and kinds["b"].count("neg") == 0 and kinds["c"].count("neg") == 3
    assert kinds["a"].count("pos") == kinds["b"].count("pos") == kinds["c"].count("pos") == len(pos)
    # same selection as the training plan's epoch 0
    sel = select_chips(
        ChipTable.from_columns(cols), negatives=True, all_negatives=False, neg_per_image=2, seed=0
    )
    assert int(sel.is_neg.sum()) == 2


def test_export_skips_bad_images_counted(tmp_path):
    ann = write_dataset(tmp_path, fmt="jpg", n_images=3)
    (tmp_path / "images" / "img1.jpg").write_bytes(b"garbage")
    coco = load_coco(ann)
    cfg = small_config()
    cfg.data.on_bad_image = "skip"
    table = select_chips(
        table_for(coco, cfg.chips), negatives=False, all_negatives=False, neg_per_image=0, seed=0
    )
    summary = export_chips(coco, table, tmp_path / "images", cfg, tmp_path / "out", progress=False)
    assert [b.image_id for b in summary.bad_images] == [11]
    assert summary.dropped_chips == int((table.image_id == 11).sum()) > 0
    assert summary.chips == len(table) - summary.dropped_chips
    data = json.loads((tmp_path / "out" / "chips_coco.json").read_text())
    assert 11 not in {im["source_image_id"] for im in data["images"]}
    cfg.data.on_bad_image = "error"
    assert main(["export", "--annotations", str(ann), "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / "out2"), "--config", str(config_file(tmp_path, cfg))]) == 2  # fmt: skip


# ---------------------------------------------------------------- instance masks


def _ellipse(x, y, w, h, n=40) -> list[float]:
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    cx, cy, rx, ry = x + w / 2, y + h / 2, w / 2, h / 2
    return np.stack([cx + rx * np.cos(ang), cy + ry * np.sin(ang)], 1).ravel().tolist()


def _full_mask(seg, w: int, h: int) -> np.ndarray:
    """pycocotools' rasterisation of the source object at the source image's size."""
    if isinstance(seg, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
    return mask_utils.decode(seg)


def _chip_reference(full: np.ndarray, im: dict) -> np.ndarray:
    """The full-image mask cropped to the chip window and resized to the chip (nearest at the
    chip's pixel centres: chip pixel (r, c) is original origin + (c + 0.5, r + 0.5) / scale)."""
    s, (ox, oy), w, h = im["scale"], im["origin"], im["width"], im["height"]
    cols = np.floor(ox + (np.arange(w) + 0.5) / s).astype(np.int64)
    rows = np.floor(oy + (np.arange(h) + 0.5) / s).astype(np.int64)
    ok_c, ok_r = (cols >= 0) & (cols < full.shape[1]), (rows >= 0) & (rows < full.shape[0])
    out = np.zeros((h, w), dtype=np.uint8)
    out[np.ix_(ok_r, ok_c)] = full[np.ix_(rows[ok_r], cols[ok_c])]
    return out


def _ties(im: dict) -> np.ndarray:
    """Chip pixels whose centre maps onto an edge between source pixels (floor is a coin toss)."""
    s, (ox, oy), w, h = im["scale"], im["origin"], im["width"], im["height"]
    xs, ys = ox + (np.arange(w) + 0.5) / s, oy + (np.arange(h) + 0.5) / s
    tx, ty = np.abs(xs - np.round(xs)) < 1e-6, np.abs(ys - np.round(ys)) < 1e-6
    return ty[:, None] | tx[None, :]


@pytest.mark.parametrize("kind", ["polygon", "rle"])
def test_export_writes_each_valid_object_mask_as_chip_rle(tmp_path, kind):
    """Each exported object's RLE is its source mask over the chip window at chip resolution:
    RLE sources exactly, polygons (rasterised in chip px) > 98 % of the pixels of the boxes."""
    ann = write_dataset(tmp_path, category_ids=(0, 5, 90), n_images=2)
    data = json.loads(ann.read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    for a in data["annotations"]:
        poly = [_ellipse(*a["bbox"])]
        if kind == "rle":
            w, h = sizes[a["image_id"]]
            rle = mask_utils.encode(np.asfortranarray(_full_mask(poly, w, h)))
            a["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        else:
            a["segmentation"] = poly
    data["annotations"][1].pop("segmentation")  # a box without a mask keeps its box polygon
    ann.write_text(json.dumps(data))
    source = {a["id"]: a for a in data["annotations"]}
    cfg = small_config()
    code = main(["export", "--annotations", str(ann), "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / "out"), "--config", str(config_file(tmp_path, cfg))])  # fmt: skip
    assert code == 0
    out = json.loads((tmp_path / "out" / "chips_coco.json").read_text())
    images = {im["id"]: im for im in out["images"]}
    agree = total = n_masks = 0
    for a in out["annotations"]:
        src = source[a["source_annotation_id"]]
        seg = a["segmentation"]
        if a["iscrowd"] or "segmentation" not in src:
            x, y, w, h = a["bbox"]
            assert seg == [[x, y, x + w, y, x + w, y + h, x, y + h]] and a["area"] == pytest.approx(w * h)
            continue
        im = images[a["image_id"]]
        assert seg["size"] == [im["height"], im["width"]] and isinstance(seg["counts"], str)
        m = mask_utils.decode(seg)
        assert a["area"] == int(m.sum()) > 0
        ref = _chip_reference(_full_mask(src["segmentation"], *sizes[src["image_id"]]), im)
        if kind == "rle":  # exact, but where a pixel centre falls on a source pixel edge (a tie)
            ties = _ties(im)
            assert (m == ref)[~ties].all() and (m != ref).sum() <= ties.sum()
        x, y, w, h = a["bbox"]
        box = (slice(int(y), int(np.ceil(y + h))), slice(int(x), int(np.ceil(x + w))))
        agree += int((m[box] == ref[box]).sum())
        total += m[box].size
        assert (m == ref).mean() > 0.98
        n_masks += 1
    assert n_masks >= 4 and agree / total > 0.98, agree / total
    c = COCO(str(tmp_path / "out" / "chips_coco.json"))  # readable, annToMask works on the chips
    some = next(a for a in c.dataset["annotations"] if isinstance(a["segmentation"], dict))
    assert c.annToMask(some).sum() == some["area"]


# ---------------------------------------------------------------- staging: OUT is whole or absent

HOST = owner_tag().split("-")[1]


def dead_tag() -> str:
    """The writer tag of a process that has exited (and been reaped): what a killed run leaves."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return f"{p.pid}-{HOST}"


def work_dirs(folder: Path) -> list[str]:
    """Hidden staging / old folders of export runs in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".staging-" in p.name or ".old-" in p.name)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_complete(out: Path, suffix: str) -> None:
    """OUT holds one whole export: the COCO file lists exactly the chip files there are."""
    data = json.loads((out / "chips_coco.json").read_text())
    names = sorted(im["file_name"] for im in data["images"])
    assert names and all(n.endswith(suffix) for n in names)
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    with open(out / "mapping.csv") as f:
        assert sorted(r["file_name"] for r in csv.DictReader(f)) == names


@pytest.fixture
def three_jpgs(tmp_path):
    """A dataset of 3 images and a way to truncate the second (header fine, pixels cut off)."""
    ann = write_dataset(tmp_path, fmt="jpg", n_images=3)
    coco = load_coco(ann)
    cfg = small_config()
    table = select_chips(
        table_for(coco, cfg.chips), negatives=False, all_negatives=False, neg_per_image=0, seed=0
    )
    img1 = tmp_path / "images" / "img1.jpg"
    good = img1.read_bytes()

    def break_second(broken: bool = True) -> None:
        img1.write_bytes(good[: len(good) // 2] if broken else good)

    def export(out: Path, fmt: str = "jpg"):
        return export_chips(coco, table, tmp_path / "images", cfg, out, fmt=fmt, progress=False)

    return tmp_path, ann, cfg, export, break_second


def test_failing_on_the_second_image_leaves_no_out(three_jpgs):
    root, _, cfg, export, break_second = three_jpgs
    assert cfg.data.on_bad_image == "error"
    break_second()
    with pytest.raises(BadImageError, match="img1.jpg"):  # found only while writing its chips
        export(root / "out")
    assert not (root / "out").exists() and work_dirs(root) == []


def test_failing_export_keeps_the_previous_one(three_jpgs):
    root, _, _, export, break_second = three_jpgs
    out = root / "out"
    export(out, fmt="png")
    before = snapshot(out)
    break_second()
    with pytest.raises(BadImageError):
        export(out, fmt="jpg")  # other file names: a mix would show
    assert snapshot(out) == before and work_dirs(root) == []


KILLED_EXPORT = """
import sys, time
from sniper.cli import main
from sniper.data import export
real = export._export_image
def stalled(rows):
    result = real(rows)
    print("one image written", flush=True)
    time.sleep(60)
    return result
export._export_image = stalled
main(["export", *sys.argv[1:]])
"""


def test_rerun_after_kill_gives_a_complete_export(three_jpgs):
    root, ann, cfg, _, _ = three_jpgs
    out = root / "out"
    args = ["--annotations", str(ann), "--images", str(root / "images"), "--out", str(out),
            "--config", str(config_file(root, cfg)), "--no-negatives"]  # fmt: skip
    p = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert "one image written\n" in iter(p.stdout.readline, "")
    finally:
        p.kill()  # SIGKILL: nothing of the child's clean-up runs
        p.wait()
        p.stdout.close()
    assert not out.exists()  # the first image's chips are in the killed run's staging folder only
    [staging] = work_dirs(root)
    assert staging.startswith(f".out.staging-{p.pid}-") and any((root / staging / "images").iterdir())
    live = root / f".out.staging-{os.getppid()}-{HOST}.abcd_123"  # a live run's: must survive
    (live / "images").mkdir(parents=True)
    assert main(["export", *args]) == 0
    assert_complete(out, ".jpg")
    assert work_dirs(root) == [live.name]


def test_rerun_after_kill_between_the_commit_renames(three_jpgs):
    """A kill after OUT was moved aside, before the new export took its place: the next run puts
    the previous export back (even if it then fails), and a successful one replaces it whole,
    keeping the user's own files and dropping temp files older versions left in OUT."""
    root, _, _, export, break_second = three_jpgs
    out = root / "out"
    export(out, fmt="png")
    (out / "data.yaml").write_text("path: out\n")  # the user's own files (see docs/export.md: YOLO)
    (out / "labels").mkdir()
    (out / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (out / ".chips_coco.json.abcd_123.tmp").write_bytes(b"{")  # what kill -9 left before staging
    (out / "images" / ".10_000_s0.jpg.abcd_123.tmp").write_bytes(b"\xff\xd8")
    before = snapshot(out)
    tag = dead_tag()
    os.rename(out, root / f".out.old-{tag}.abcd_123")
    (root / f".out.staging-{tag}.abcd_123" / "images").mkdir(parents=True)
    break_second()
    with pytest.raises(BadImageError):
        export(out)
    assert snapshot(out) == before and work_dirs(root) == []
    break_second(False)
    summary = export(out)
    assert_complete(out, ".jpg")  # no .png chips of the previous export left
    assert (out / "data.yaml").read_text() == "path: out\n" and (out / "labels" / "a.txt").exists()
    kept = ["chips_coco.json", "data.yaml", "images", "labels", "mapping.csv"]
    assert sorted(p.name for p in out.iterdir()) == kept
    assert work_dirs(root) == [] and summary.leftovers_removed == 0


def test_out_that_cannot_be_renamed_is_filled_in_place(three_jpgs, monkeypatch):
    """A mount point (a container volume) cannot be replaced by a rename: staging goes inside OUT."""
    root, _, _, export, break_second = three_jpgs
    out = root / "out"
    out.mkdir()
    monkeypatch.setattr(export_module, "_stage_in_place", lambda out: True)
    dead = out / f".out.staging-{dead_tag()}.abcd_123"
    (dead / "images").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    summary = export(out, fmt="png")
    assert summary.leftovers_removed == 1
    assert_complete(out, ".png")
    before = snapshot(out)
    break_second()
    with pytest.raises(BadImageError):
        export(out)
    assert snapshot(out) == before
    break_second(False)
    export(out)
    assert_complete(out, ".jpg")
    assert sorted(p.name for p in out.iterdir()) == ["chips_coco.json", "images", "mapping.csv", "notes.txt"]
    assert work_dirs(root) == []
