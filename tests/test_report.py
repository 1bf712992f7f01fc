"""The HTML report: self-contained, every section present, honest bolding, graceful omissions."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from sniper.viz.report import ReportData, embed_image, write_report


def _png(path, w, h, colour):
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:] = colour
    a[h // 4 : h // 2, w // 4 : w // 2] = 255 - np.array(colour, dtype=np.uint8)
    Image.fromarray(a).save(path)
    return path


def _data(tmp_path) -> ReportData:
    chip = _png(tmp_path / "chip.png", 2400, 600, (200, 30, 30))
    loss = _png(tmp_path / "loss.png", 300, 200, (30, 30, 200))
    det = _png(tmp_path / "det.png", 640, 480, (30, 160, 30))
    return ReportData(
        title="SNIPER vs baseline <synthetic>",
        summary="Trained on chips.\n\nSecond paragraph.",
        dataset="synthetic, 128 train / 32 val images",
        weights="random init",
        facts={"backbone": "mobilenet_v2"},
        stage_times={"rpn": 61.0, "proposals": 12.5, "detector": 3725.0},
        chip_images=[(chip, "chips of image 1")],
        loss_curves=[(loss, "stage rpn")],
        detections=[(det, "val image 7"), (tmp_path / "gone.png", "lost picture")],
        ap={
            "SNIPER": {"AP": 0.4123, "AP50": 0.61, "AP75": 0.40, "APs": 0.30, "APm": 0.45, "APl": 0.5},
            "baseline": {
                "AP": 0.3011,
                "AP50": 0.65,
                "AP75": 0.40,
                "APs": 0.12,
                "APm": 0.44,
                "APl": float("nan"),
            },
        },
        per_class_ap={"SNIPER": {"disc": 0.5, "star": 0.2}, "baseline": {"disc": 0.25, "star": 0.333}},
        notes="Baseline is single-scale 800x1333.",
    )


def test_report_is_self_contained_and_complete(tmp_path):
    path = write_report(tmp_path / "out", _data(tmp_path))
    assert path == tmp_path / "out" / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # No external resources, no scripts: every src is a data URI.
    assert not re.search(r"https?://|<script|<link", text, re.I)
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 3 and all(s.startswith("data:image/") for s in srcs)
    # Pictures are downscaled to <= 1000 px wide and decode.
    for s in srcs:
        with Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) as im:
            assert im.width <= 1000
    assert "picture not available" in text and "gone.png" in text
    for heading in (
        "Summary",
        "Chips",
        "Loss curves",
        "Detections on validation images",
        "Average precision",
        "Notes",
    ):
        assert f"<h2>{heading}</h2>" in text
    assert "&lt;synthetic&gt;" in text  # escaped, not markup
    assert "random init" in text and "mobilenet_v2" in text and "128 train" in text
    assert "1:02:05" in text and "1:01" in text  # stage times; total 3798.5 s
    assert "3798.5" in text
    # AP table: better value of each row bold, whichever method; ties both bold; NaN as a dash.
    assert "<b>41.2</b>" in text and ">30.1<" in text
    assert "<b>65.0</b>" in text and ">61.0<" in text
    assert text.count("<b>40.0</b>") == 2
    assert re.search(r"<th>APl</th><td class=\"num\">50.0</td><td class=\"num\">–</td>", text)
    assert "+11.1" in text and "-4.0" in text  # SNIPER - baseline column
    assert "<b>50.0</b>" in text and "<b>33.3</b>" in text and ">20.0<" in text  # per class


def test_missing_sections_are_omitted(tmp_path):
    text = write_report(tmp_path, ReportData(title="bare", notes="only notes")).read_text()
    assert "<h2>Notes</h2>" in text and "only notes" in text
    for heading in ("Summary", "Chips", "Loss curves", "Average precision"):
        assert f"<h2>{heading}</h2>" not in text
    one = write_report(tmp_path, ReportData(ap={"SNIPER": {"AP": 0.2}})).read_text()
    assert ">20.0<" in one and "<b>" not in one  # nothing to compare with


def test_embed_keeps_plots_sharp_and_photos_small(tmp_path):
    plot = _png(tmp_path / "plot.png", 400, 300, (255, 255, 255))
    assert embed_image(plot, photo=False).startswith("data:image/png;base64,")
    assert embed_image(plot, photo=True).startswith("data:image/jpeg;base64,")
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (50, 40), (0, 0, 0, 0)).save(rgba)
    with Image.open(io.BytesIO(base64.b64decode(embed_image(rgba).split(",", 1)[1]))) as im:
        assert im.size == (50, 40) and im.getpixel((5, 5))[0] > 240  # transparent -> white


def test_stage_parts_are_listed_but_not_added_to_the_total(tmp_path):
    # a 572 s run: the pipeline's four stages are parts of "training", not further steps
    data = ReportData(
        stage_times={"dataset": 12.0, "training": 500.0, "inference": 60.0},
        stage_parts={"training": {"rpn": 100.0, "proposals": 50.0, "negatives": 10.0, "detector": 340.0}},
    )
    text = write_report(tmp_path, data).read_text()
    total = re.search(r"<th>total</th><th class=\"num\">([0-9:]+)</th><th class=\"num\">([0-9.]+)</th>", text)
    assert total is not None and total.group(2) == "572.0" and total.group(1) == "9:32"
    for part in ("rpn", "proposals", "negatives", "detector"):
        assert re.search(rf'<tr class="part"><td>\W*{part}</td>', text), part
    rows = re.findall(r"<tr(?: class=\"part\")?><td>", text)
    assert len(rows) == 7  # 3 steps + 4 parts


def test_mask_ap_gets_its_own_table_after_the_box_table(tmp_path):
    data = ReportData(
        ap={"SNIPER": {"AP": 0.4}, "baseline": {"AP": 0.3}},
        mask_ap={"SNIPER": {"AP": 0.35, "AP50": 0.6}, "baseline": {"AP": 0.25, "AP50": 0.61}},
        mask_per_class_ap={"SNIPER": {"disc": 0.5}, "baseline": {"disc": 0.2}},
    )
    text = write_report(tmp_path, data).read_text()
    assert text.index("<h2>Average precision</h2>") < text.index("<h2>Mask average precision</h2>")
    mask = text[text.index("<h2>Mask average precision</h2>") :]
    assert "<b>35.0</b>" in mask and ">25.0<" in mask and "<b>61.0</b>" in mask and "+10.0" in mask
    assert "AP per class" in mask and "<b>50.0</b>" in mask
    assert "Mask average precision" not in write_report(tmp_path, ReportData(ap={"S": {"AP": 0.1}})).read_text()


def _demo_dirs(tmp_path):
    import json

    chips = tmp_path / "chips"
    chips.mkdir()
    (chips / "stats.json").write_text(json.dumps({"pos_chips_per_image": 2.5}))
    folders = {}
    for name in ("sniper_run", "baseline_run", "sniper_predict", "baseline_predict"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
    (folders["sniper_predict"] / "vis").mkdir()
    _png(folders["sniper_predict"] / "vis" / "1_a.jpg", 64, 48, (10, 200, 10))
    return chips, folders


def test_demo_report_with_masks_shows_mask_ap_and_mask_pictures(tmp_path, capsys):
    from sniper.config import Config
    from sniper.engine import demo

    chips, f = _demo_dirs(tmp_path)
    box = {"AP": 0.5, "AP50": 0.7, "per_class": {"disc": 0.5}}
    mask = {"AP": 0.42, "AP50": 0.66, "per_class": {"disc": 0.42}}
    metrics = {
        "sniper": demo._ap_row(box),
        "baseline": demo._ap_row(box),
        "sniper_mask": demo._ap_row(mask),
        "baseline_mask": None,
        "stage_seconds": {"rpn": 1.0, "sniper_training": 1.0},
        "pipeline_stages": ["rpn"],
        "total_seconds": 3.0,
        "baseline_time_budget_s": 1.0,
        "device": "cpu",
        "masks": True,
    }
    path = demo._write_report(tmp_path, Config(), metrics, box, box, "random init", chips, f["sniper_run"],
                              f["baseline_run"], f["sniper_predict"], f["baseline_predict"], mask, None)  # fmt: skip
    text = path.read_text()
    section = text[text.index("<h2>Mask average precision</h2>") :]
    assert ">42.0<" in section and ">66.0<" in section and "baseline" not in section.split("</table>")[0]
    assert "boxes over predicted masks" in text and "mask AP (COCO segm)" in text
    # only the SNIPER model has the mask branch: the report must not claim the baseline has one
    assert "The baseline is a box detector" in text and "Both models" not in text
    demo._print_table(metrics)
    out = capsys.readouterr().out
    assert "mask AP" in out and " 0.420" in out and "n/a" in out
    # a box demo: no mask table, no mask rows
    metrics.update(masks=False)
    text = demo._write_report(tmp_path, Config(), metrics, box, box, "random init", chips, f["sniper_run"],
                              f["baseline_run"], f["sniper_predict"], f["baseline_predict"]).read_text()  # fmt: skip
    assert "Mask average precision" not in text and "predicted masks" not in text
    demo._print_table(metrics)
    assert "mask" not in capsys.readouterr().out


def test_demo_mask_metrics_evaluate_segm_or_say_why_not(tmp_path, capsys):
    import json

    from pycocotools import mask as mask_utils

    from sniper.engine.demo import mask_metrics

    m = np.zeros((20, 30), np.uint8, order="F")
    m[5:15, 4:20] = 1
    rle = mask_utils.encode(m)
    rle = {"size": [20, 30], "counts": rle["counts"].decode("ascii")}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 5, 16, 10], "area": 160.0, "iscrowd": 0}
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
          "annotations": [{**ann, "segmentation": rle}], "categories": [{"id": 1, "name": "box"}]}  # fmt: skip
    gt_path, dets = tmp_path / "gt.json", tmp_path / "detections.json"
    gt_path.write_text(json.dumps(gt))
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [4, 5, 16, 10], "score": 0.9, "segmentation": rle}]))
    got = mask_metrics(gt_path, dets, [1, 10, 100])
    assert got["iou_type"] == "segm" and got["AP"] == pytest.approx(1.0)
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [4, 5, 16, 10], "score": 0.9}]))
    assert mask_metrics(gt_path, dets, [1, 10, 100]) is None
    assert "no segmentations" in capsys.readouterr().out
    gt["annotations"] = [ann]  # a GT without segmentations
    gt_path.write_text(json.dumps(gt))
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": rle}]))
    assert mask_metrics(gt_path, dets, [1, 10, 100]) is None
    assert "no mask AP" in capsys.readouterr().out
