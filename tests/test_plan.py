"""`sniper plan`: a config derived from the dataset reproduces the paper on COCO, trains every
box at one scale at least, overlaps its ranges and gives dense scenes enough detections."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sniper.boxes import sqrt_area
from sniper.chips import selection_mask
from sniper.cli import main
from sniper.config import load_config, to_dict
from sniper.data.coco import load_coco
from sniper.data.planner import MIN_CHIPS_SEEN, plan_from_dataset

# real COCO box statistics (a copy of shared/data/coco_val2014_100.json; tests/fixtures/README.md)
COCO_100 = Path(__file__).resolve().parent / "fixtures" / "coco_val2014_100.json"


def coco_dict(images: list[tuple[int, int]], boxes: list[list[tuple[float, float, float, float, int]]]):
    """Images (w, h) with boxes (x, y, w, h, iscrowd) each; one category with a sparse id."""
    anns = []
    for i, bs in enumerate(boxes):
        for x, y, w, h, crowd in bs:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 7, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": crowd})  # fmt: skip
    return {
        "images": [{"id": i + 1, "file_name": f"{i}.jpg", "width": w, "height": h} for i, (w, h) in enumerate(images)],
        "annotations": anns,
        "categories": [{"id": 7, "name": "thing"}],
    }


def valid_anywhere(ds, chips) -> tuple[int, int]:
    """(non-crowd boxes valid at no scale, non-crowd boxes)."""
    missing = total = 0
    for i, rec in enumerate(ds.images):
        a = ds.annotations_at(i)
        if not len(a.boxes):
            continue
        ok = selection_mask(a.boxes, rec.width, rec.height, chips, iscrowd=a.iscrowd).any(axis=0)
        missing += int((~ok & ~a.iscrowd).sum())
        total += int((~a.iscrowd).sum())
    return missing, total


@pytest.fixture(scope="module")
def coco_plan():
    ds = load_coco(COCO_100)
    return ds, plan_from_dataset(ds)


def test_coco_reproduces_the_papers_scales_and_ranges(coco_plan):
    _, plan = coco_plan
    c = plan.config.chips
    assert c.chip_size == 512
    fine, mid, coarse = c.scales  # paper: x3 (0, 80), x1.667 (32, 150), longest 512 (120, inf)
    assert fine.factor == pytest.approx(3.0, rel=0.1)
    assert mid.factor == pytest.approx(1.667, rel=0.15)
    assert coarse.longest == 512 and coarse.factor is None
    assert fine.valid_range[0] is None and fine.hi == pytest.approx(80, rel=0.2)
    assert mid.hi == pytest.approx(150, rel=0.2) and 32 / 1.5 <= mid.lo <= 32 * 1.5
    assert coarse.valid_range[1] is None and 120 / 1.6 <= coarse.lo <= 120 * 1.6
    # test ranges wider than training, as in the paper; same pyramid for proposals
    for tr, te in zip(c.scales, plan.config.infer.scales):
        assert te.lo <= tr.lo and te.hi >= tr.hi
    assert plan.config.proposals.scales == plan.config.infer.scales
    # the paper's cost: ~5 chips per image (positives + 2 negatives), ~30% more pixels than 800x1333
    assert 4 <= plan.chips_per_image <= 7
    assert 1.0 <= plan.pixels_vs_single_scale <= 1.7
    assert plan.config.model.aspect_ratios == [0.5, 1.0, 2.0]


def test_coco_every_box_trains_at_one_scale_and_ranges_overlap(coco_plan):
    ds, plan = coco_plan
    missing, total = valid_anywhere(ds, plan.config.chips)
    assert total > 800 and missing == 0 and plan.unassigned == 0
    scales = plan.config.chips.scales
    for a, b in zip(scales, scales[1:]):
        assert b.lo < a.hi, (a, b)  # neighbouring ranges overlap
    assert sum(p.share_valid for p in plan.scales) >= 1.0


def test_plan_is_a_config_train_can_use(tmp_path, capsys):
    out = tmp_path / "plan"
    assert main(["plan", "--annotations", str(COCO_100), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 scale(s)" in printed and "schedule:" in printed
    cfg = load_config(out / "config.yaml")
    again = plan_from_dataset(load_coco(COCO_100))
    assert to_dict(cfg) == to_dict(again.config)  # deterministic, and the file holds the whole config
    assert cfg.model.pretrained
    info = json.loads((out / "plan.json").read_text())
    assert len(info["scales"]) == 3 and info["reasons"]["train.iterations"]
    html = (out / "plan.html").read_text()
    assert "data:image/png;base64" in html and "Why each number" in html


def test_dense_scene_gets_enough_detections_and_roi_slots():
    rng = np.random.default_rng(0)
    images, boxes = [], []
    for _ in range(4):
        n = 400
        xy = rng.uniform(0, 1900, size=(n, 2))
        wh = rng.uniform(8, 40, size=(n, 2))
        images.append((2000, 2000))
        boxes.append([(float(x), float(y), float(w), float(h), 0) for (x, y), (w, h) in zip(xy, wh)])
    ds = load_coco(coco_dict(images, boxes))
    plan = plan_from_dataset(ds)
    c = plan.config
    assert c.infer.max_detections >= math.ceil(1.2 * 400)
    assert c.model.box_detections_per_img >= c.infer.max_detections
    assert c.model.rpn_post_nms_top_n_test >= 400 and c.proposals.top_per_scale >= 400
    assert c.model.rpn_post_nms_top_n_train >= 4 * plan.objects_per_chip_p99 - 1
    # small objects on big images: upsampled at the finest scale, never the whole image in one chip
    assert c.chips.scales[0].factor > 1 and c.chips.scales[-1].longest is None
    assert valid_anywhere(ds, c.chips)[0] == 0


def test_small_images_get_a_smaller_chip_and_sparse_data_a_floor_schedule():
    ds = load_coco(coco_dict([(200, 150), (180, 180)], [[(10, 10, 30, 30, 0)], [(50, 60, 90, 70, 0)]]))
    plan = plan_from_dataset(ds)
    assert plan.config.chips.chip_size == 192  # median long side 190 -> 64 * ceil(190 / 64)
    t = plan.config.train
    assert t.iterations == math.ceil(MIN_CHIPS_SEEN / t.batch_size)  # 2 images: the floor, not 7 epochs
    assert t.lr_steps_iters == [round(0.76 * t.iterations)] and t.warmup_iters <= t.iterations // 10
    big = plan_from_dataset(ds, chip_size=128)
    assert big.config.chips.chip_size == 128


def test_base_config_keeps_its_model_and_optimiser():
    ds = load_coco(coco_dict([(800, 600)], [[(10, 10, 30, 30, 0), (100, 100, 300, 200, 0)]]))
    base = load_config("cpu_small")
    plan = plan_from_dataset(ds, base)
    assert plan.config.model.backbone == base.model.backbone and plan.config.model.output_stride == 16
    assert plan.config.train.lr == base.train.lr and plan.config.train.batch_size == base.train.batch_size
    assert plan.config.chips.scales != base.chips.scales


def test_a_box_that_fits_no_default_range_widens_the_nearest_scale():
    # An 8 x 600 px pole on a 3000 px image: sqrt area 69 px. Too long for the chip at the scales
    # whose range holds 69 px, so the plain rule would never train it.
    small = [(x, 100.0, 6.0, 6.0, 0) for x in range(100, 2900, 50)]
    big = [(100.0, 1000.0, 1200.0, 900.0, 0)]
    pole = [(2000.0, 1500.0, 8.0, 600.0, 0)]
    ds = load_coco(coco_dict([(3000, 3000)] * 3, [small, big, pole + small[:5]]))
    plan = plan_from_dataset(ds)
    assert plan.widened >= 1
    assert valid_anywhere(ds, plan.config.chips)[0] == plan.unassigned == 0


def test_an_unplannable_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="without images"):
        plan_from_dataset(load_coco(coco_dict([], [])))
    with pytest.raises(ValueError, match="without .*objects"):
        plan_from_dataset(load_coco(coco_dict([(100, 100)], [[(1, 1, 5, 5, 1)]])))


@st.composite
def datasets(draw):
    n_img = draw(st.integers(1, 4))
    images, boxes = [], []
    for _ in range(n_img):
        w, h = draw(st.integers(64, 2500)), draw(st.integers(64, 2500))
        bs = []
        for _ in range(draw(st.integers(1, 25))):
            bw = draw(st.floats(1.0, float(w)))
            bh = draw(st.floats(1.0, float(h)))
            x = draw(st.floats(0.0, max(0.0, w - bw)))
            y = draw(st.floats(0.0, max(0.0, h - bh)))
            bs.append((x, y, bw, bh, int(draw(st.integers(0, 9)) == 0)))
        images.append((w, h))
        boxes.append(bs)
    if not any(c == 0 for bs in boxes for *_, c in bs):
        boxes[0].append((0.0, 0.0, 10.0, 10.0, 0))
    return coco_dict(images, boxes)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_any_dataset_gets_overlapping_ranges_and_trains_what_can_train(d):
    ds = load_coco(d)
    plan = plan_from_dataset(ds)
    chips = plan.config.chips
    scales = chips.scales
    assert 1 <= len(scales) <= 4
    factors = [p.factor for p in plan.scales]
    assert factors == sorted(factors, reverse=True)  # fine to coarse
    assert scales[0].valid_range[0] is None and scales[-1].valid_range[1] is None
    for a, b in zip(scales, scales[1:]):
        assert b.lo < a.hi
    missing, total = valid_anywhere(ds, chips)
    assert missing == plan.unassigned  # what could train does; what is reported as unfit cannot
    sizes = np.concatenate([sqrt_area(ds.annotations_at(i).boxes) for i in range(len(ds))])
    assert plan.stats.objects == total <= len(sizes)
    assert plan.config.infer.max_detections >= 1.2 * plan.stats.objects_per_image["p99"] - 1


def test_train_without_config_plans_first(tmp_path, monkeypatch, capsys):
    import sniper.engine.pipeline as pipeline

    seen = {}

    class Result:
        is_main = True

        def format(self):
            return "done"

    def fake_pipeline(cfg, annotations, images, out, **kw):
        seen["cfg"] = cfg
        return Result()

    monkeypatch.setattr(pipeline, "run_pipeline", fake_pipeline)
    d = coco_dict([(640, 480)] * 3, [[(10, 10, 20, 20, 0), (100, 100, 200, 150, 0)]] * 3)
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(d))
    run = tmp_path / "run"
    argv = ["train", "--annotations", str(ann), "--images", str(tmp_path), "--out", str(run)]
    assert main([*argv, "--set", "train.lr=0.5"]) == 0
    cfg = seen["cfg"]
    assert (run / "plan" / "config.yaml").is_file() and (run / "plan" / "plan.html").is_file()
    assert "plan saved in" in capsys.readouterr().out
    planned = load_config(run / "plan" / "config.yaml")
    assert cfg.train.lr == 0.5 and to_dict(cfg.chips) == to_dict(planned.chips)
    assert cfg.model.pretrained and cfg.train.iterations is not None
    # the paper's settings stay one flag away
    assert main([*argv[:-1], str(tmp_path / "run2"), "--config", "paper_resnet101"]) == 0
    assert to_dict(seen["cfg"]) == to_dict(load_config("paper_resnet101"))
    assert not (tmp_path / "run2" / "plan").exists()


def test_train_warns_in_one_line_when_the_schedule_is_far_below_the_floor(capsys):
    from sniper.config import Config
    from sniper.engine.pipeline import _warn_if_short

    cfg = Config()
    cfg.train.batch_size, cfg.train.epochs = 8, 6
    _warn_if_short(cfg, batches_per_epoch=21, world_size=1)  # 126 iterations: the 2-image dataset of the issue
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "warning" in out[0] and "1008 chips" in out[0] and "train.iterations" in out[0]
    cfg.train.iterations = MIN_CHIPS_SEEN // 8  # planned: at the floor
    _warn_if_short(cfg, batches_per_epoch=21, world_size=1)
    assert capsys.readouterr().out == ""
    cfg.train.iterations = None  # 6 epochs of 200 batches x 8 chips x 2 ranks
    _warn_if_short(cfg, batches_per_epoch=200, world_size=2)
    assert capsys.readouterr().out == ""
