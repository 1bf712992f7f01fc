"""End-to-end demo on the embedded synthetic dataset: the README's main job.

Generates the dataset, mines and draws chips, runs the whole SNIPER pipeline (RPN stage,
proposals, negative chips, detector), runs pyramid inference on the val split, evaluates, trains
a single-scale whole-image baseline with the same time budget, and writes ``OUT/report.html``
and ``OUT/metrics.json``. Rerunning continues where a previous run stopped.

``masks=True`` (``sniper demo --masks``) sets ``model.masks``: the SNIPER model gets the Mask
R-CNN branch and trains it on the dataset's segmentations, and its mask AP (COCO ``segm``) is
reported beside box AP (``metrics.json``: ``sniper_mask``), with pictures of the predicted masks.
The baseline stays a box detector (whole-image batches carry no masks; ``baseline_mask`` is
None): it gets the same wall time without paying for a mask branch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG = "cpu_small"  # a shipped config (sniper/configs/cpu_small.yaml)
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
BASELINE_BATCH = 2


def _imagenet_weights_available() -> bool:
    """True when torchvision can load ImageNet MobileNetV2 weights without the network."""
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE).is_file()


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        from sniper.runtime import release_memory

        print(f"\n== {name}")
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        release_memory()  # one step's freed heap must not add to the next one's peak
        return out


def _ap_row(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    return {k: metrics.get(k) for k in keys} | {"per_class": metrics.get("per_class", {})}


def mask_metrics(gt_json: Path, detections_json: Path, max_dets: Sequence[int]) -> dict[str, Any] | None:
    """COCO mask AP (``segm``) of a prediction folder's detections, or None (with a printed note)
    when the detections carry no ``segmentation`` (a box model) or the ground truth has none."""
    from sniper.engine.evaluate import evaluate_detections
    from sniper.errors import CocoFormatError

    records = json.loads(Path(detections_json).read_text())
    if records and not all("segmentation" in r for r in records):
        print(f"note: {detections_json} has no segmentations (a box model): no mask AP")
        return None
    try:
        return evaluate_detections(gt_json, records, max_dets=max_dets, iou_type="segm")
    except CocoFormatError as e:
        print(f"note: no mask AP: {e}")
        return None


@dataclass(frozen=True)
class DemoResult:
    out: Path
    report: Path
    metrics: dict[str, Any]


def _mine_and_draw_chips(train_json: Path, image_root: Path, cfg, out: Path, n_pictures: int) -> None:
    """What ``sniper chips --visualize`` does: the chip table, its statistics and pictures."""
    from sniper.data.chip_table import chip_stats, format_chip_stats, write_chip_table
    from sniper.data.coco import load_coco
    from sniper.io import atomic_write_json
    from sniper.viz.chips import visualize_chips

    ds = load_coco(train_json)
    totals = write_chip_table(ds, None, cfg.chips, out / "chips.parquet", seed=cfg.seed)
    stats = chip_stats(totals, cfg, cfg.seed, ds, None)
    print(format_chip_stats(stats))
    visualize_chips(ds, None, cfg, cfg.seed, n_pictures, out / "viz", str(image_root))
    atomic_write_json(out / "stats.json", stats)  # last: its presence marks the step done


def run_demo(
    out: str | os.PathLike[str] = "demo_out",
    *,
    images: int = 48,
    seed: int = 0,
    device: str = "auto",
    fresh: bool = False,
    config: str | None = CONFIG,
    overrides: Sequence[str] = (),
    masks: bool = False,
) -> DemoResult:
    """The whole demo into ``out`` (see the module docstring); a rerun continues where one stopped.
    ``masks``: with the Mask R-CNN branch (``model.masks=true``) and mask AP."""
    import shutil

    import torch

    from sniper.config import load_config, save_config
    from sniper.data.synthetic import make_dataset
    from sniper.engine.baseline import SINGLE_SCALE_800, train_full_image
    from sniper.engine.distributed import pick_device
    from sniper.engine.evaluate import evaluate_detections, max_dets_for
    from sniper.engine.pipeline import run_pipeline
    from sniper.engine.predict_run import predict_to_folder
    from sniper.io import atomic_write_json, remove_stale_temps

    started = time.perf_counter()
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    clock = _Clock()
    dev = pick_device(device)

    cfg = load_config(config, [f"seed={seed}", *overrides, *(["model.masks=true"] if masks else [])])
    masks = bool(cfg.model.masks)  # also when set by an override
    pretrained = _imagenet_weights_available()
    cfg.model.pretrained = pretrained
    weights_note = (
        "ImageNet MobileNetV2 (torchvision MobileNet_V2_Weights.IMAGENET1K_V1)"
        if pretrained
        else f"random init (torchvision's {WEIGHTS_FILE} not in {torch.hub.get_dir()}/checkpoints; `make weights` puts it there)"
    )
    print(f"backbone weights: {weights_note}")
    save_config(cfg, out / "config.yaml")

    # 1. Data.
    data = out / "data"
    if not (data / "val.json").exists():
        clock.run("dataset", make_dataset, data, images=images, seed=seed)
    train_json, val_json, image_root = data / "train.json", data / "val.json", data / "images"

    # 2. Chips over the training set, drawn for a few images (paper Figs. 1 and 2).
    chips_dir = out / "chips"
    if not (chips_dir / "stats.json").exists():
        clock.run("chips", _mine_and_draw_chips, train_json, image_root, cfg, chips_dir, 3)

    # 3. The SNIPER pipeline.
    run_dir = out / "sniper_run"
    t0 = time.perf_counter()
    result = run_pipeline(cfg, train_json, image_root, run_dir, resume=True, device=str(dev))
    clock.seconds["sniper_training"] = round(time.perf_counter() - t0, 2)
    stage_seconds = dict(result.stage_seconds)
    train_budget = sum(stage_seconds.values())

    # 4. Multi-scale inference + evaluation on val.
    sniper_pred = out / "sniper_predict"

    mask_results: dict[str, dict[str, Any] | None] = {}

    def predict_and_evaluate(name: str, weights: Path, out_dir: Path, *extra: str) -> dict[str, Any]:
        """Prediction on the val split (once), then COCO box AP (and mask AP) of its detections."""
        if not (out_dir / "detections.json").exists():
            clock.run(
                name, predict_to_folder, weights, val_json, out_dir, image_root=image_root, overrides=extra,
                device=dev.type, visualize=4,
            )  # fmt: skip
        max_dets = max_dets_for(val_json)[0]
        if masks:
            mask_results[name] = mask_metrics(val_json, out_dir / "detections.json", max_dets)
        return evaluate_detections(val_json, out_dir / "detections.json", max_dets=max_dets)

    sniper_metrics = predict_and_evaluate("sniper_inference", result.model_path, sniper_pred)

    # 5. Baseline: single scale 800x1333 whole images, same model and settings, same time budget.
    base_dir = out / "baseline_run"
    base_model = base_dir / "model_final.pt"
    if not base_model.exists():
        # Whole 800x1333 images cost ~16 chips each: a smaller batch, learning rate scaled linearly.
        from dataclasses import replace

        bs = BASELINE_BATCH
        base_cfg = replace(cfg, train=replace(cfg.train, batch_size=bs, lr=cfg.train.lr * bs / cfg.train.batch_size))
        clock.run(
            "baseline_training",
            train_full_image,
            base_cfg, train_json, image_root, base_dir,
            scales=SINGLE_SCALE_800, time_budget_s=train_budget, device=dev,
        )  # fmt: skip
    base_pred = out / "baseline_predict"
    base_metrics = predict_and_evaluate(
        "baseline_inference", base_model, base_pred, "infer.scales=[{short: 800, max_size: 1333}]", "infer.merge=nms"
    )

    # 6. Report.
    metrics = {
        "sniper": _ap_row(sniper_metrics),
        "baseline": _ap_row(base_metrics),
        # every timed step, and the pipeline's stages (parts of sniper_training) by name
        "stage_seconds": {**stage_seconds, **clock.seconds},
        "pipeline_stages": list(stage_seconds),
        "total_seconds": round(time.perf_counter() - started, 1),
        "weights": "imagenet" if pretrained else "random",
        "baseline_time_budget_s": round(train_budget, 1),
        "device": str(dev),
        "masks": masks,
    }
    sniper_mask, base_mask = mask_results.get("sniper_inference"), mask_results.get("baseline_inference")
    if masks:
        metrics["sniper_mask"] = None if sniper_mask is None else _ap_row(sniper_mask)
        metrics["baseline_mask"] = None if base_mask is None else _ap_row(base_mask)
    atomic_write_json(out / "metrics.json", metrics)
    report = _write_report(out, cfg, metrics, sniper_metrics, base_metrics, weights_note, chips_dir, run_dir,
                           base_dir, sniper_pred, base_pred, sniper_mask, base_mask)  # fmt: skip
    _print_table(metrics)
    print(f"\nreport: {report}\nmetrics: {out / 'metrics.json'}")
    return DemoResult(out, report, metrics)


def _print_table(metrics: dict[str, Any]) -> None:
    def cell(row: dict[str, Any] | None, k: str) -> str:
        v = None if row is None else row.get(k)
        return "   n/a" if v is None else f"{v:6.3f}"

    rows = [("", "sniper", "baseline")]
    if metrics.get("masks"):
        rows.append(("mask ", "sniper_mask", "baseline_mask"))
    print("\nmetric          SNIPER  baseline(800x1333)")
    for prefix, a, b in rows:
        for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            print(f"{prefix + k:<14} {cell(metrics.get(a), k)}  {cell(metrics.get(b), k)}")


def _write_report(out, cfg, metrics, sm, bm, weights_note, chips_dir, run_dir, base_dir, sniper_pred,
                  base_pred, smask=None, bmask=None) -> Path:  # fmt: skip
    from sniper.viz.report import ReportData, write_report

    stats = json.loads((chips_dir / "stats.json").read_text())
    chip_pics = sorted((chips_dir / "viz").glob("*.png"))[:8] if (chips_dir / "viz").exists() else []
    curves = sorted((run_dir / "plots").glob("*.png")) + sorted((base_dir / "plots").glob("*.png"))
    dets = sorted((sniper_pred / "vis").glob("*.jpg"))[:4] + sorted((base_pred / "vis").glob("*.jpg"))[:2]
    ap = {"SNIPER": {k: sm.get(k) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
          "baseline 800x1333": {k: bm.get(k) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}}  # fmt: skip
    per_class = {"SNIPER": sm.get("per_class", {}), "baseline 800x1333": bm.get("per_class", {})}
    better = "SNIPER" if (sm.get("AP") or 0) >= (bm.get("AP") or 0) else "the baseline"
    mask_ap, mask_per_class = _mask_tables(smask, bmask)
    masks_note = mask_notes = pictured = ""
    if metrics.get("masks"):
        mask_notes = (
            " Mask AP is COCO segm AP of the predicted masks (each detection's M x M mask pasted at its box, "
            "threshold 0.5) against the ground-truth segmentations."
            if mask_ap
            else " Mask AP is missing: the detections or the ground truth have no segmentations."
        )
        pictured = " (boxes over predicted masks)"
        masks_note = (
            " The SNIPER model has a Mask R-CNN branch (model.masks): its detection pictures show the "
            "predicted masks, and its mask AP (COCO segm) is reported beside box AP"
            + ("" if mask_ap else " (not available: see the notes)")
            + ". The baseline is a box detector (whole-image batches carry no masks), so it gets the "
            "same wall time without the mask branch's cost, and has no mask AP."
        )
    data = ReportData(
        title="sniper demo: SNIPER vs single-scale training on the synthetic dataset",
        summary=(
            "The full SNIPER pipeline (RPN-only stage on positive chips, RPN proposals over the training "
            "images, negative chip mining, detector training on positive + negative chips, 3-scale "
            "inference merged with Soft-NMS) against a detector with the same model and settings trained "
            "on whole images at a single scale (short side 800, long side at most 1333) for the same wall "
            f"time. On this run {better} has the higher AP.{masks_note}"
        ),
        dataset="embedded synthetic dataset (sniper make-dataset): textured shapes, 8 px to half-image objects, "
        "unlabeled look-alike distractors, crowds, truncation",
        weights=weights_note,
        facts={
            "chips per training image": f"{stats['pos_chips_per_image']:.2f} positive (+ negatives from proposals)",
            "chip size": f"{cfg.chips.chip_size} px",
            "training scales": ", ".join(s.describe() for s in cfg.chips.scales),
            "inference scales": ", ".join(s.describe() for s in cfg.infer.scales),
            "baseline time budget": f"{metrics['baseline_time_budget_s']:.0f} s",
            "device": metrics["device"],
            "total wall time": f"{metrics['total_seconds']:.0f} s",
        },
        stage_times={k: v for k, v in metrics["stage_seconds"].items() if k not in metrics["pipeline_stages"]},
        stage_parts={"sniper_training": {k: metrics["stage_seconds"][k] for k in metrics["pipeline_stages"]}},
        chip_images=[(p, p.stem.replace("_", " ")) for p in chip_pics],
        loss_curves=[(p, p.parent.parent.name + ": " + p.stem) for p in curves],
        detections=[(p, p.parent.parent.name + ": " + p.stem + pictured) for p in dets],
        ap=ap,
        per_class_ap=per_class,
        mask_ap=mask_ap,
        mask_per_class_ap=mask_per_class,
        notes=(
            "AP is COCO AP (pycocotools) on the val split. The baseline uses a constant learning rate after "
            "warm-up because its number of iterations is set by the time budget."
            + mask_notes
        ),
    )
    return write_report(out, data)


def _mask_tables(smask: dict[str, Any] | None, bmask: dict[str, Any] | None) -> tuple[dict, dict]:
    """The report's mask AP table (method -> metric) and per-class table, for the models that have them."""
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    ap, per_class = {}, {}
    for name, m in (("SNIPER", smask), ("baseline 800x1333", bmask)):
        if m is not None:
            ap[name] = {k: m.get(k) for k in keys}
            per_class[name] = m.get("per_class", {})
    return ap, per_class
