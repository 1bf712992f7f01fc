"""`sniper export`: chip images + COCO JSON + mapping, round trip back to the source."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools.coco import COCO
from test_chip_dataset import chip_cfg, table_for, write_dataset  # tests/ is on sys.path under pytest

from sniper.chips import chip_labels
from sniper.cli import main
from sniper.config import Config, to_dict
from sniper.data.chip_dataset import ChipDataset
from sniper.data.chip_table import ChipTable, build_chip_table
from sniper.data.coco import load_coco
from sniper.data.export import export_chips, select_chips


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
