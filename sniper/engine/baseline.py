"""Whole-image baselines trained with the same loop, model and settings as SNIPER.

``single``: every image resized by one scale (e.g. short 800 / long <= 1333), all objects valid.
``pyramid``: every image at every training scale, with the scales' valid ranges (SNIP-style);
the expensive thing SNIPER replaces. Used by ``sniper demo`` and ``benchmarks/train.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from sniper.config import Config
from sniper.engine.checkpoint import save_model_final
from sniper.engine.train import StageResult, StageSpec, train_stage
from sniper.scales import Scale

__all__ = ["SINGLE_SCALE_800", "train_full_image"]

SINGLE_SCALE_800 = Scale(short=800, max_size=1333)


def train_full_image(
    cfg: Config,
    annotations: Path,
    image_root: Path,
    run_dir: Path,
    *,
    scales: Scale | list[Scale] = SINGLE_SCALE_800,
    time_budget_s: float | None = None,
    device: torch.device | str = "cpu",
    stage_name: str = "baseline",
) -> tuple[Path, StageResult]:
    """Train a detector on whole images; returns (``RUN_DIR/model_final.pt``, stage result).

    With a time budget the stage stops when it runs out (and the LR schedule is a constant rate
    after warm-up, since the number of iterations is not known in advance).
    """
    from sniper.data.coco import load_coco
    from sniper.data.full_image import FullImageBatchSource, FullImageDataset
    from sniper.model import build_model

    device = torch.device(device)
    run_dir = Path(run_dir)
    coco = load_coco(annotations, image_root=image_root)
    torch.manual_seed(cfg.seed)
    dataset = FullImageDataset(coco, image_root, scales, cfg.data)
    source = FullImageBatchSource(
        dataset, cfg.train.batch_size, seed=cfg.seed, num_workers=cfg.data.num_workers, flip=cfg.data.flip
    )
    train_cfg = cfg.train
    epochs, iterations = cfg.train.epochs, cfg.train.iterations
    if time_budget_s is not None:
        train_cfg = replace(cfg.train, time_budget_s=time_budget_s, lr_steps=[], lr_steps_iters=None)
        epochs, iterations = 10_000, None  # the budget ends the stage
    if cfg.model.masks:
        # whole-image targets carry no masks: the baseline is the box detector of the comparison
        cfg = replace(cfg, model=replace(cfg.model, masks=False))
    model = build_model(cfg.model, num_classes=coco.num_classes).to(device)
    spec = StageSpec(stage_name, epochs=epochs, lr=cfg.train.lr, iterations=iterations)
    result = train_stage(model, source, spec, train_cfg, run_dir, device=device)
    categories = coco.categories_by_label()  # label order, as model files store them
    final = run_dir / "model_final.pt"
    save_model_final(final, model, cfg, categories)
    return final, result
