"""Demo AP of the detector stage trained on chips mined anew every epoch and on batches that mix
images, against the demo's own fixed-chip, image-run training (issue #12 §1-2).

    .venv/bin/python benchmarks/chip_sampling.py --demo demo_out [--variants anew mix8] [--retrain-fixed]

A finished ``sniper demo`` folder supplies the data, the config and stages 1-3 (RPN, proposals,
negative pool, reused as they are); each variant retrains stage 4 only, with the demo's
schedule, and is evaluated on the demo's val split like the demo. ``fixed`` is the demo's own
detector (trained with ``chips.regenerate=false, data.mix_images=1`` semantics by a demo run
from before these options); ``--retrain-fixed`` trains it again under the current code, which
also shows the run-to-run noise. Prints a table and writes ``benchmarks/results/chip_sampling.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "fixed": ["chips.regenerate=false", "data.mix_images=1"],
    "anew": ["chips.regenerate=true", "data.mix_images=1"],
    "mix8": ["chips.regenerate=true", "data.mix_images=8"],
    "fixed_mix8": ["chips.regenerate=false", "data.mix_images=8"],
}
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="demo_out", help="a finished `sniper demo` folder")
    ap.add_argument("--variants", nargs="+", default=["anew", "mix8"], choices=[k for k in VARIANTS if k != "fixed"])
    ap.add_argument("--retrain-fixed", action="store_true", help="also retrain the fixed-chip detector")
    args = ap.parse_args()

    from sniper.config import apply_overrides, load_config
    from sniper.engine.evaluate import evaluate_detections, max_dets_for
    from sniper.engine.pipeline import reuse_stages, run_pipeline
    from sniper.engine.predict_run import predict_to_folder
    from sniper.runtime import release_memory, tune_malloc

    tune_malloc()
    demo = Path(args.demo)
    val, train, images = demo / "data" / "val.json", demo / "data" / "train.json", demo / "data" / "images"
    max_dets = max_dets_for(val)[0]
    work = demo / "chip_sampling"
    rows: dict[str, dict] = {}

    def score(name: str, weights: Path, out: Path, train_s: float | None, log: Path | None) -> None:
        t0 = time.perf_counter()
        if not (out / "detections.json").exists():
            predict_to_folder(weights, val, out, image_root=images, progress=False)
        m = evaluate_detections(val, out / "detections.json", max_dets=max_dets, per_class=False)
        rows[name] = {k: m[k] for k in METRICS}
        rows[name]["train_seconds"] = train_s
        rows[name]["infer_seconds"] = round(time.perf_counter() - t0, 1)
        if log is not None and log.exists():
            last = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            rows[name]["final_loss_window"] = last[-1].get("loss") if last else None
        release_memory()

    book = json.loads((demo / "sniper_run" / "stages.json").read_text())
    score("fixed (the demo's detector)", demo / "sniper_run" / "model_final.pt", work / "pred_fixed_demo",
          book["detector"]["seconds"], demo / "sniper_run" / "logs" / "detector.jsonl")  # fmt: skip
    todo = (["fixed"] if args.retrain_fixed else []) + args.variants
    for name in todo:
        run = work / f"run_{name}"
        if not (run / "model_final.pt").exists():
            reuse_stages(demo / "sniper_run", run)
            cfg = apply_overrides(load_config(demo / "config.yaml"), VARIANTS[name])
            run_pipeline(cfg, train, images, run, resume=True)
            release_memory()
        secs = json.loads((run / "stages.json").read_text())["detector"]["seconds"]
        score(f"{name} ({', '.join(VARIANTS[name])})", run / "model_final.pt", work / f"pred_{name}", secs,
              run / "logs" / "detector.jsonl")  # fmt: skip

    print(f"\n{'variant':<62} " + " ".join(f"{m:>6}" for m in METRICS) + f" {'train s':>8}")
    for k, r in rows.items():
        vals = " ".join(f"{(r[m] if r[m] is not None else float('nan')):>6.3f}" for m in METRICS)
        print(f"{k:<62} {vals} {r['train_seconds'] or float('nan'):>8.0f}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "chip_sampling.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out / 'chip_sampling.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
