"""The HTML report: self-contained, every section present, honest bolding, graceful omissions."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
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
