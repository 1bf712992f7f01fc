"""`sniper demo` end to end at toy size: every stage runs, the report and metrics are written,
and a rerun continues instead of starting over."""

from __future__ import annotations

import json

import pytest

from sniper.cli import main

AP_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}


@pytest.mark.slow
def test_demo_writes_report_and_metrics_then_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = [
        "demo", "--out", str(out), "--images", "5", "--device", "cpu",
        "--set", "train.max_iters=2", "--set", "train.batch_size=2", "--set", "data.num_workers=0",
        "--set", "infer.scales=[{factor: 0.2}]", "--set", "proposals.scales=[{factor: 0.2}]",
    ]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sniper"]) == AP_KEYS and set(metrics["baseline"]) == AP_KEYS
    for name in ("rpn", "proposals", "negatives", "detector", "sniper_inference", "baseline_training"):
        assert metrics["stage_seconds"][name] >= 0, name
    assert metrics["weights"] in ("imagenet", "random")
    # the baseline's budget is SNIPER's four stages
    four = sum(metrics["stage_seconds"][k] for k in ("rpn", "proposals", "negatives", "detector"))
    assert abs(metrics["baseline_time_budget_s"] - four) < 0.2
    html = (out / "report.html").read_text()
    for section in ("<h2>Chips</h2>", "<h2>Loss curves</h2>", "<h2>Detections on validation images</h2>", "AP50"):
        assert section in html, section
    assert (out / "sniper_run" / "model_final.pt").is_file() and (out / "baseline_run" / "model_final.pt").is_file()

    # A rerun reuses every finished step: no stage is timed again.
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "== dataset" not in printed and "== sniper_inference" not in printed and "== baseline_training" not in printed
