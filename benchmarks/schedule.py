"""Learning curves: val AP against detector iterations, for the schedule floor of ``sniper plan``.

    .venv/bin/python benchmarks/schedule.py --preset default --images 48 --iters 1200 --every 150
    .venv/bin/python benchmarks/schedule.py --preset aerial --iters 1200 --every 150

On an embedded synthetic dataset: plan the config from the training split on top of
``--base`` (``cpu_small`` by default, ImageNet MobileNetV2 if torchvision's file is on disk),
run the whole pipeline (RPN stage, proposals, negatives) with a detector stage of ``--iters``
iterations at a constant learning rate after warm-up (no step: each point is "stop here"), a
checkpoint every ``--every`` iterations, then predict and evaluate the val split with each
checkpoint. Prints a table (iterations, chips seen, AP, AP50, seconds) and writes
``benchmarks/results/schedule_<preset>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--images", type=int, default=None, help="synthetic images (default: the preset's)")
    ap.add_argument("--base", default="cpu_small")
    ap.add_argument("--iters", type=int, default=1200)
    ap.add_argument("--every", type=int, default=150)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--name", default=None, help="results file stem (default: schedule_<preset>)")
    ap.add_argument("--no-plan", action="store_true", help="train with --base as it is instead of planning")
    ap.add_argument("--data", default=None, help="an existing dataset folder (train.json, val.json, images/)")
    ap.add_argument("--reuse", default=None,
                    help="a finished run on the same data and config: copy its stages 1-3 (RPN, proposals, negatives)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    import torch

    from sniper.config import apply_overrides, load_config
    from sniper.data.coco import load_coco
    from sniper.data.planner import plan_from_dataset
    from sniper.data.synthetic import make_dataset
    from sniper.engine.checkpoint import load_checkpoint, save_model_final
    from sniper.engine.evaluate import evaluate_detections, max_dets_for
    from sniper.engine.pipeline import reuse_stages, run_pipeline
    from sniper.engine.predict_run import predict_to_folder
    from sniper.model import build_model
    from sniper.runtime import release_memory, tune_malloc

    tune_malloc()
    work = Path(args.workdir or tempfile.mkdtemp(prefix=f"sniper_sched_{args.preset}_"))
    data = Path(args.data) if args.data else work / "data"
    if not (data / "val.json").exists():
        make_dataset(data, images=args.images, seed=0, preset=args.preset)
    train_json, val_json, images = data / "train.json", data / "val.json", data / "images"
    base = load_config(args.base)
    base.model.pretrained = (Path(torch.hub.get_dir()) / "checkpoints" / "mobilenet_v2-b0353104.pth").is_file()
    plan = plan_from_dataset(load_coco(train_json), base)
    print(plan.summary())
    cfg = apply_overrides(base if args.no_plan else plan.config, [
        f"train.iterations={args.iters}", "train.lr_steps_iters=[]", f"train.checkpoint_every={args.every}",
        "train.keep_checkpoints=1000", *args.overrides,
    ])  # fmt: skip
    run = work / "run"
    if args.reuse and not (run / "stages.json").exists():
        reuse_stages(Path(args.reuse), run)
    t0 = time.perf_counter()
    result = run_pipeline(cfg, train_json, images, run, resume=True)
    train_s = time.perf_counter() - t0
    release_memory()

    logs = [json.loads(x) for x in (run / "logs" / "detector.jsonl").read_text().splitlines() if x.strip()]
    rows = []
    ckpts = sorted(run.glob("checkpoints/detector_it*.pt"))
    cats = load_coco(train_json).categories_by_label()
    max_dets = max_dets_for(val_json)[0]
    for ck in ckpts:
        it = int(re.search(r"_it(\d+)", ck.name).group(1))
        model = build_model(cfg.model, num_classes=len(cats))
        model.load_state_dict(load_checkpoint(ck)["model"])
        weights = work / "eval" / f"model_it{it}.pt"
        save_model_final(weights, model, cfg, cats)
        pred = work / "eval" / f"pred_it{it}"
        if not (pred / "detections.json").exists():
            predict_to_folder(weights, val_json, pred, image_root=images, progress=False)
        m = evaluate_detections(val_json, pred / "detections.json", max_dets=max_dets, per_class=False)
        sec = next((r.get("seconds", None) for r in logs if r["iter"] >= it), None)
        rows.append({"iterations": it, "chips_seen": it * cfg.train.batch_size, "AP": m["AP"], "AP50": m["AP50"],
                     "train_seconds_at": sec})  # fmt: skip
        weights.unlink()
        release_memory()
    print(f"\n{args.preset}: {len(load_coco(train_json))} train images, batch {cfg.train.batch_size}, "
          f"constant lr {cfg.train.lr} after {cfg.train.warmup_iters} warm-up iterations")  # fmt: skip
    print(f"{'iterations':>10} {'chips seen':>10} {'AP':>7} {'AP50':>7}")
    for r in rows:
        print(f"{r['iterations']:>10} {r['chips_seen']:>10} {r['AP']:>7.3f} {r['AP50']:>7.3f}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    payload = {"preset": args.preset, "planned": not args.no_plan, "train_images": len(load_coco(train_json)), "batch": cfg.train.batch_size,
               "lr": cfg.train.lr, "pipeline_seconds": round(train_s, 1), "stage_seconds": result.stage_seconds,
               "rows": rows, "plan": plan.to_dict()["scales"]}  # fmt: skip
    stem = args.name or f"schedule_{args.preset}"
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    _plot(rows, out / f"{stem}.png", f"{args.preset}, {payload['train_images']} train images")
    print(f"wrote {out / f'{stem}.json'}")
    return 0


def _plot(rows, path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = [r["chips_seen"] for r in rows]
    ax.plot(x, [r["AP50"] for r in rows], "o-", label="AP50")
    ax.plot(x, [r["AP"] for r in rows], "s-", label="AP")
    ax.set_xlabel("chips seen by the detector")
    ax.set_ylabel("val AP")
    ax.set_title(f"learning curve, {name} preset")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
