"""Planned SNIPER against two single-scale baselines on the aerial preset, at equal training time.

    .venv/bin/python benchmarks/aerial.py [--images 12] [--base cpu_small] [--workdir DIR]

The aerial preset (``sniper make-dataset --preset aerial``: few large images, hundreds of small
objects in clusters) is trained three ways with the same model settings, the same number of
training seconds and evaluated with enough max detections per image (``max_dets_for``):

- **SNIPER**: the config planned from the training split (``sniper plan`` on top of ``--base``),
  the whole 4-stage pipeline; its summed stage time is the budget of the others.
- **whole image, single scale**: every image resized to short side 800 / long side <= 1333,
  all objects valid (``train_full_image``), inference at the same scale, NMS.
- **native-resolution tiling**: one scale, factor 1, every object valid (range [0, inf)), chips
  where the objects are (the chip engine with that single scale, no negatives), inference at
  factor 1 over the whole image in tiles.

Prints the table and writes ``benchmarks/results/aerial.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--max-side", type=int, default=2600, help="aerial image sides in [2000, MAX] (CPU budget)")
    ap.add_argument("--iters", type=int, default=None, help="SNIPER detector iterations (default: planned)")
    ap.add_argument("--base", default="cpu_small")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="overrides for every method")
    args = ap.parse_args()

    import torch

    from sniper.config import apply_overrides, load_config
    from sniper.data.coco import load_coco
    from sniper.data.planner import plan_from_dataset
    from sniper.data.synthetic import AerialSettings, make_dataset
    from sniper.engine.baseline import SINGLE_SCALE_800, train_full_image
    from sniper.engine.evaluate import evaluate_detections, max_dets_for
    from sniper.engine.pipeline import run_pipeline
    from sniper.engine.predict_run import predict_to_folder
    from sniper.runtime import release_memory, tune_malloc

    tune_malloc()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sniper_aerial_"))
    data = work / "data"
    if not (data / "val.json").exists():
        make_dataset(data, images=args.images, seed=0, preset="aerial",
                     settings=AerialSettings(min_side=2000, max_side=args.max_side))  # fmt: skip
    train_json, val_json, images = data / "train.json", data / "val.json", data / "images"
    base = load_config(args.base)
    base.model.pretrained = (Path(torch.hub.get_dir()) / "checkpoints" / "mobilenet_v2-b0353104.pth").is_file()
    plan = plan_from_dataset(load_coco(train_json), base)
    print(plan.summary())
    max_dets = max_dets_for(val_json)[0]
    results: dict[str, dict] = {}

    def evaluate(name: str, weights: Path, *overrides: str) -> None:
        pred = work / f"pred_{name}"
        t0 = time.perf_counter()
        if not (pred / "detections.json").exists():
            predict_to_folder(weights, val_json, pred, image_root=images, overrides=overrides, visualize=2,
                              progress=False)  # fmt: skip
        m = evaluate_detections(val_json, pred / "detections.json", max_dets=max_dets, per_class=False)
        results[name].update(AP=m["AP"], AP50=m["AP50"], APs=m["APs"], infer_seconds=round(time.perf_counter() - t0, 1))
        release_memory()

    # 1. SNIPER, planned.
    extra = []
    if args.iters:
        extra = [f"train.iterations={args.iters}", f"train.lr_steps_iters=[{round(0.76 * args.iters)}]",
                 f"train.warmup_iters={min(plan.config.train.warmup_iters, args.iters // 10)}"]  # fmt: skip
    cfg = apply_overrides(plan.config, [*extra, *args.overrides])
    run = run_pipeline(cfg, train_json, images, work / "sniper", resume=True)
    budget = sum(run.stage_seconds.values())
    results["sniper"] = {"train_seconds": round(budget, 1), "scales": [s.describe() for s in cfg.chips.scales]}
    evaluate("sniper", run.model_path)

    # 2. Whole image, single scale 800 x 1333, same budget.
    bs = 2
    full = replace(cfg, train=replace(cfg.train, batch_size=bs, lr=cfg.train.lr * bs / cfg.train.batch_size))
    weights = work / "whole" / "model_final.pt"
    if not weights.exists():
        t0 = time.perf_counter()
        train_full_image(full, train_json, images, work / "whole", scales=SINGLE_SCALE_800, time_budget_s=budget)
        results["whole_image_800"] = {"train_seconds": round(time.perf_counter() - t0, 1)}
    else:
        results["whole_image_800"] = {}
    release_memory()
    evaluate("whole_image_800", weights, "infer.scales=[{short: 800, max_size: 1333}]", "infer.merge=nms")

    # 3. Native-resolution tiling: one scale x1, every object valid, no negatives, same budget.
    one = "[{factor: 1.0, range: [0, null]}]"
    tiles = apply_overrides(cfg, [f"chips.scales={one}", "chips.neg_min_proposals=[10]", "train.negatives=false",
                                  f"infer.scales={one}", f"proposals.scales={one}"])  # fmt: skip
    tiles = replace(tiles, train=replace(tiles.train, time_budget_s=budget, iterations=None, epochs=10_000,
                                         lr_steps=[], lr_steps_iters=None))  # fmt: skip
    run_t = run_pipeline(tiles, train_json, images, work / "tiles", resume=True)
    results["native_tiling"] = {"train_seconds": round(sum(run_t.stage_seconds.values()), 1)}
    evaluate("native_tiling", run_t.model_path)

    print(f"\naerial preset: {plan.stats.images} train images, {plan.stats.objects} objects; "
          f"val evaluated with max dets {max_dets}")  # fmt: skip
    print(f"{'method':<30} {'train s':>8} {'AP':>7} {'AP50':>7} {'APs':>7}")
    for k, r in results.items():
        print(f"{k:<30} {r.get('train_seconds', float('nan')):>8.0f} {r['AP']:>7.3f} {r['AP50']:>7.3f} "
              f"{(r['APs'] if r['APs'] is not None else float('nan')):>7.3f}")  # fmt: skip
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "aerial.json").write_text(json.dumps({"plan": plan.to_dict()["scales"], "results": results,
                                                 "max_dets": max_dets}, indent=2))  # fmt: skip
    print(f"wrote {out / 'aerial.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
