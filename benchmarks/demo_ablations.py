"""Two ablations on a finished ``sniper demo`` run (same data, same seed, same stages 1-3).

    .venv/bin/python benchmarks/demo_ablations.py --demo demo_out

1. **Inference order**: the demo's SNIPER model evaluated on val with the old per-scale order
   (the head's per-class NMS 0.5 and top-``box_detections_per_img`` before each scale's valid
   range filter) against the new one (range filter on every detection above the score
   threshold, then one Soft-NMS over all scales, as the authors do).
2. **RoI labels** (paper §3.4): the detector stage retrained with ``model.roi_match=valid_gt``
   (RoIs foreground only against valid GT: the old rule) against the demo's ``all_gt`` (any
   non-crowd GT, the paper's rule). Stages 1-3 (RPN, proposals, negatives) are reused.

Prints a table and writes ``benchmarks/results/demo_ablations.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="demo_out", help="a finished `sniper demo` folder")
    ap.add_argument("--skip-roi", action="store_true", help="only the inference ablation")
    args = ap.parse_args()

    from sniper.config import apply_overrides, load_config
    from sniper.engine.evaluate import evaluate_detections, max_dets_for
    from sniper.engine.pipeline import reuse_stages, run_pipeline
    from sniper.engine.predict_run import predict_to_folder
    from sniper.model.detector import SniperFasterRCNN
    from sniper.runtime import release_memory, tune_malloc

    tune_malloc()
    demo = Path(args.demo)
    val, images = demo / "data" / "val.json", demo / "data" / "images"
    model = demo / "sniper_run" / "model_final.pt"
    max_dets = max_dets_for(val)[0]
    rows: dict[str, dict] = {}

    def score(name: str, weights: Path, out: Path) -> None:
        t0 = time.perf_counter()
        if not (out / "detections.json").exists():
            predict_to_folder(weights, val, out, image_root=images, progress=False)
        m = evaluate_detections(val, out / "detections.json", max_dets=max_dets, per_class=False)
        rows[name] = {k: m[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
        rows[name]["infer_seconds"] = round(time.perf_counter() - t0, 1)
        release_memory()

    work = demo / "ablations"
    score("all_gt, range filter first (the demo now)", model, work / "pred_new")
    SniperFasterRCNN.supports_raw_detections = False  # the old order: head NMS + top-k per scale first
    try:
        score("all_gt, head NMS + top-k per scale first (old)", model, work / "pred_old_order")
    finally:
        SniperFasterRCNN.supports_raw_detections = True

    if not args.skip_roi:
        run = work / "valid_gt_run"
        if not (run / "model_final.pt").exists():
            reuse_stages(demo / "sniper_run", run)
            cfg = apply_overrides(load_config(demo / "config.yaml"), ["model.roi_match=valid_gt"])
            run_pipeline(cfg, demo / "data" / "train.json", images, run, resume=True)
            release_memory()
        score("valid_gt, range filter first", run / "model_final.pt", work / "pred_valid_gt")

    print(f"\n{'variant':<48} {'AP':>6} {'AP50':>6} {'AP75':>6} {'APs':>6} {'APm':>6} {'APl':>6}")
    for k, r in rows.items():
        vals = " ".join(f"{(r[m] if r[m] is not None else float('nan')):>6.3f}"
                        for m in ("AP", "AP50", "AP75", "APs", "APm", "APl"))  # fmt: skip
        print(f"{k:<48} {vals}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_ablations.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {out / 'demo_ablations.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
