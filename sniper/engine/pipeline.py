"""The SNIPER training pipeline (paper §3.3, §4), as restartable stages.

1. ``rpn``        RPN-only training on positive chips (short schedule, no negatives).
2. ``proposals``  that RPN over every training image at all proposal scales -> ``proposals.json``
                  (under DDP each rank takes every N-th image and writes its part; rank 0 merges).
3. ``negatives``  negative chip mining from those proposals -> ``chips.parquet`` (pos + neg pool).
4. ``detector``   full training on positive chips plus negatives resampled every epoch
                  -> ``model_final.pt``.

With ``chips.regenerate`` (the default) stages 1 and 4 train each epoch after the first on chips
mined anew for it (:mod:`sniper.data.epoch_chips`); the tables written here are epoch 0's.

With ``train.negatives: false`` (the paper's "w/o negatives" ablation) stages 1-3 are skipped.
Finished stages are recorded in ``RUN_DIR/stages.json``; a rerun with ``resume`` skips them and
continues an interrupted stage from its last checkpoint. A folder holding an earlier run is
refused without ``resume`` or ``overwrite`` (:func:`prepare_run_dir`).

Bad images (``data.on_bad_image``): before each chip stage every image's header is checked
(missing, unreadable, size disagreeing with the annotation). A file that passes that check but
fails to decode during training (a truncated JPEG) is, under "skip", replaced by the next good
chip, never tried again, and counted in ``stages.json`` (``bad_images_in_training``); under
"error" the stage writes a checkpoint at the batch it reached and stops with one line naming the
file: fix or remove it, then ``--resume``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sniper.config import Config, save_config, to_dict
from sniper.engine.distributed import DistInfo, any_rank, barrier, cleanup, init_distributed
from sniper.engine.train import StageSpec, train_stage
from sniper.errors import SniperError
from sniper.io import atomic_write_json, read_json, remove_stale_temps
from sniper.runtime import release_memory

__all__ = ["PipelineResult", "StageBook", "prepare_run_dir", "previous_run", "run_pipeline"]

# What a run writes into its folder. The first group marks a folder as holding a run; all of it
# goes with --overwrite. Anything else in the folder (the plan, the user's own files) stays.
_RUN_MARKERS = ("stages.json", "checkpoints", "logs", "chips_pos", "rpn_model.pt", "model_final.pt")
_RUN_OUTPUTS = (*_RUN_MARKERS, "plots", "proposals.json", "chips.parquet", "config.yaml")


def previous_run(run_dir: Path) -> list[str]:
    """The artefacts of an earlier run found in ``run_dir`` (empty: the folder is free)."""
    run_dir = Path(run_dir)
    found = []
    for name in _RUN_MARKERS:
        p = run_dir / name
        if p.is_file() or (p.is_dir() and any(p.iterdir())):
            found.append(name)
    return found


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """A fresh run never mixes with an old one in the same folder.

    ``resume``: continue what is there. ``overwrite``: rank 0 deletes the old run's outputs
    (only those, never other files). Neither, and the folder holds a run: ``OutputError`` naming
    both flags (the old checkpoints would otherwise outrank the new ones, and logs would mix).
    """
    import shutil

    from sniper.errors import OutputError

    run_dir = Path(run_dir)
    if resume and overwrite:
        raise OutputError("--resume and --overwrite contradict each other: continue the run, or start afresh")
    if resume:
        return
    found = previous_run(run_dir)
    if not found:
        return
    if not overwrite:
        raise OutputError(
            f"{run_dir} holds a previous run ({', '.join(found)}): --resume continues it, "
            "--overwrite deletes its results and starts afresh, or choose another --out"
        )
    if is_main:
        for name in _RUN_OUTPUTS:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        for p in run_dir.glob("proposals.part*-of*.json"):  # the ranks' shares of stage 'proposals'
            p.unlink()


class StageBook:
    """``RUN_DIR/stages.json``: which stages finished, when, and what they produced."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "stages.json"
        self.data: dict[str, Any] = read_json(self.path) if self.path.exists() else {}

    def done(self, name: str) -> bool:
        return bool(self.data.get(name, {}).get("done"))

    def seconds(self, name: str) -> float:
        return float(self.data.get(name, {}).get("seconds", 0.0))

    def mark(self, name: str, seconds: float, **info: Any) -> None:
        self.data[name] = {"done": True, "seconds": round(seconds, 3), **info}
        atomic_write_json(self.path, self.data)

    def run(self, name: str, work: Callable[[], dict | None], dist_info: DistInfo, *, all_ranks: bool) -> float:
        """Run stage ``name`` unless it is finished; return its recorded seconds.

        ``work`` runs on every rank (training) or on rank 0 only (the others wait); rank 0 records
        the dict it returns, then every rank rereads the book.
        """
        if not self.done(name):
            t0 = time.perf_counter()
            info = work() if (all_ranks or dist_info.is_main) else None
            if dist_info.is_main:
                self.mark(name, time.perf_counter() - t0, **(info or {}))
            barrier(dist_info)
            self.data = read_json(self.path)
            release_memory()  # this stage's freed heap must not add to the next one's peak
        return self.seconds(name)


@dataclass
class PipelineResult:
    run_dir: Path
    model_path: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    is_main: bool = True

    def format(self) -> str:
        lines = [f"run directory: {self.run_dir}", f"model: {self.model_path}", "stage          seconds"]
        lines += [f"{k:<14} {v:8.1f}" for k, v in self.stage_seconds.items()]
        return "\n".join(lines)


def _categories(coco: Any) -> list[dict]:
    """The categories stored in the model files: label order (sorted ids), not file order."""
    return coco.categories_by_label()


def _chip_source(
    coco,
    table,
    image_root: Path,
    cfg: Config,
    dist_info: DistInfo,
    negatives: bool,
    proposals=None,
    stats=None,
    rpn_only: bool = False,
):
    from sniper.data.chip_dataset import ChipBatchSource, ChipDataset
    from sniper.data.epoch_chips import EpochChips
    from sniper.data.epoch_plan import ChipBatchSampler

    # with model.masks the chips carry box-local masks (sniper.data.masks), except for the RPN stage
    masks = cfg.model.mask_target_size if cfg.model.masks and not rpn_only else None
    dataset = ChipDataset(coco, table, image_root, cfg.chips, cfg.data, masks=masks)
    workers = cfg.data.num_workers
    tables = None
    if cfg.chips.regenerate:
        bad = [b["image_id"] for b in (stats or {}).get("bad_images", [])]
        tables = EpochChips(
            coco, proposals if negatives else None, cfg.chips, seed=cfg.seed, base=table,
            workers=max(1, workers), exclude_images=np.asarray(bad, dtype=np.int64), verbose=dist_info.is_main,
        )  # fmt: skip
    sampler = ChipBatchSampler(
        table,
        cfg.train.batch_size,
        seed=cfg.seed,
        negatives=negatives,
        neg_per_image=cfg.chips.neg_per_image,
        flip=cfg.data.flip,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        num_workers=workers,
        drop_last=True,
        mix_images=cfg.data.mix_images,
        tables=tables,
    )
    return ChipBatchSource(dataset, sampler, num_workers=workers, pin_memory=torch.cuda.is_available())


def _checked_table(coco, table, image_root: Path, cfg: Config, dist_info: DistInfo, stats: dict):
    """Check image files once (headers) and apply ``data.on_bad_image``; bad files are listed.
    No chip left to train on is an error that says why, in those words."""
    from sniper.data.chip_dataset import check_images

    if len(table) == 0:
        raise SniperError(
            f"0 usable images for training: none of the {len(coco)} images has an object the chips can "
            f"train on ({coco.num_annotations} usable annotations; see the load report above)"
        )
    check = check_images(coco, table, image_root, cfg.data, progress=dist_info.is_main)
    if check.bad:
        stats["bad_images"] = [{"image_id": b.image_id, "file": b.file, "reason": b.reason} for b in check.bad]
        if dist_info.is_main:
            print(check.format())
    chips = check.chips if check.chips is not None else table
    if len(chips) == 0:
        raise SniperError(
            f"0 usable images for training: all {check.checked} images with objects are bad files "
            f"(skipped under data.on_bad_image=skip; the first: {check.bad[0].file}: {check.bad[0].reason})"
        )
    return chips


def _build(cfg: Config, num_classes: int, device: torch.device, dist_info: DistInfo):
    from sniper.model import build_model, convert_sync_batchnorm

    model = build_model(cfg.model, num_classes=num_classes)
    if cfg.model.norm == "sync_bn" and dist_info.enabled:
        model = convert_sync_batchnorm(model)
    return model.to(device)


def _wrap(model: torch.nn.Module, device: torch.device, dist_info: DistInfo, rpn_only: bool):
    if not dist_info.enabled:
        return None
    from torch.nn.parallel import DistributedDataParallel as DDP

    # The RPN stage leaves the detection head unused: DDP must be told.
    return DDP(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=rpn_only,
    )


def reuse_stages(src: Path, dst: Path, stages: tuple[str, ...] = ("rpn", "proposals", "negatives")) -> None:
    """Start run ``dst`` with the finished ``stages`` of run ``src`` (same data and config up to
    them): their files are copied and marked done, so ``run_pipeline(..., dst)`` trains only the
    rest (ablations of the detector stage)."""
    import shutil

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    files = {"rpn": ("chips_pos", "rpn_model.pt"), "proposals": ("proposals.json",), "negatives": ("chips.parquet",)}
    for stage in stages:
        for name in files.get(stage, ()):
            p = src / name
            if p.is_dir():
                shutil.copytree(p, dst / name, dirs_exist_ok=True)
            elif p.exists():
                shutil.copy2(p, dst / name)
    book = read_json(src / "stages.json")
    atomic_write_json(dst / "stages.json", {k: v for k, v in book.items() if k in stages})


def _warn_if_short(cfg: Config, batches_per_epoch: int, world_size: int) -> None:
    """One line when the detector schedule is far below the floor under which little is learned."""
    from sniper.data.planner import MIN_CHIPS_SEEN

    t = cfg.train
    iters = t.iterations if t.iterations is not None else t.epochs * batches_per_epoch
    if t.max_iters is not None:
        iters = min(iters, t.max_iters)
    chips = iters * t.batch_size * max(1, world_size)
    if chips < MIN_CHIPS_SEEN / 2 and not t.time_budget_s:
        print(
            f"warning: the detector trains on {chips} chips ({iters} iterations of {t.batch_size}); below about "
            f"{MIN_CHIPS_SEEN} chips little is learned: set train.iterations, or plan it (sniper plan)"
        )


def _train(
    name: str, model, source, cfg: Config, run_dir: Path, device, dist_info, resume: bool, rpn_only: bool, **kw
):
    epochs = cfg.train.rpn_epochs if rpn_only else cfg.train.epochs
    iterations = cfg.train.rpn_iterations if rpn_only else cfg.train.iterations
    lr = (cfg.train.rpn_lr or cfg.train.lr) if rpn_only else cfg.train.lr
    spec = StageSpec(name, epochs=epochs, lr=lr, rpn_only=rpn_only, iterations=iterations)
    train_cfg = cfg.train
    if rpn_only:
        # The short RPN schedule uses a fixed learning rate (paper §4): no step decay.
        from dataclasses import replace

        train_cfg = replace(cfg.train, lr_steps=[], lr_steps_iters=None)
    return train_stage(
        model,
        source,
        spec,
        train_cfg,
        run_dir,
        device=device,
        dist_info=dist_info,
        resume=resume,
        ddp_model=_wrap(model, device, dist_info, rpn_only),
        **kw,
    )


def _sync_info(result) -> dict:
    """Under DDP, the stage's cross-rank weight check for stages.json (see train._check_replicas)."""
    return {"ddp_sync": result.ddp_sync} if result.ddp_sync is not None else {}


def run_pipeline(
    cfg: Config,
    annotations: Path,
    image_root: Path,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    interrupt_after: int | None = None,
) -> PipelineResult:
    """Run (or finish) every stage; see the module docstring.

    Into a folder that holds an earlier run, ``resume`` continues it (finished stages are
    skipped, an interrupted one continues from its last checkpoint) and ``overwrite`` starts
    afresh; with neither, :func:`prepare_run_dir` refuses."""
    from sniper.data.chip_table import ChipTable, write_chip_table
    from sniper.data.coco import load_coco, load_results
    from sniper.engine.checkpoint import load_checkpoint, load_model_for_inference, save_model_final

    run_dir = Path(run_dir)
    dist_info, dev = init_distributed(device, timeout_s=cfg.train.dist_timeout_s)
    try:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, is_main=dist_info.is_main)
        barrier(dist_info)
        torch.manual_seed(cfg.seed)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        if dist_info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(run_dir)  # of a run killed while writing a model, config or book
            saved = run_dir / "config.yaml"
            if saved.exists() and (resume or StageBook(run_dir).data):
                import yaml

                before = yaml.safe_load(saved.read_text())
                if before != json.loads(json.dumps(to_dict(cfg))):
                    print(f"note: the config differs from the one saved in {saved}; the new one is used and saved")
            save_config(cfg, saved)
        barrier(dist_info)

        # segmentations are read (and kept) only when the model trains masks
        coco = load_coco(annotations, image_root=image_root, masks=cfg.model.masks)
        if dist_info.is_main and coco.report.counts:
            print(coco.report.format())
        categories = _categories(coco)
        book = StageBook(run_dir)
        stats: dict[str, Any] = {}
        seconds: dict[str, float] = {}

        # Positive chips (fast; recomputed rather than stored per stage).
        pos_dir = run_dir / "chips_pos"
        if dist_info.is_main and not (pos_dir / "chips.parquet").exists():
            write_chip_table(
                coco, None, cfg.chips, pos_dir / "chips.parquet", seed=cfg.seed, workers=max(1, cfg.data.num_workers)
            )
        barrier(dist_info)
        pos_table = _checked_table(coco, ChipTable.read_parquet(pos_dir / "chips.parquet"), image_root, cfg, dist_info, stats)

        final_path = run_dir / "model_final.pt"
        rpn_path = run_dir / "rpn_model.pt"
        props_path = run_dir / "proposals.json"
        chips_path = run_dir / "chips.parquet"

        def train_rpn() -> dict:
            model = _build(cfg, coco.num_classes, dev, dist_info)
            source = _chip_source(
                coco, pos_table, image_root, cfg, dist_info, negatives=False, stats=stats, rpn_only=True
            )
            result = _train(
                "rpn", model, source, cfg, run_dir, dev, dist_info, resume, True, interrupt_after=interrupt_after
            )
            if dist_info.is_main:
                save_model_final(rpn_path, model, cfg, categories)
            return {"model": rpn_path.name, "bad_images_in_training": result.bad_images, **_sync_info(result)}

        def propose() -> dict:
            # Every rank proposes over its share of the images (strided: similar sizes on every
            # rank) and writes its part; rank 0 merges them in dataset order.
            from sniper.engine.predict import coco_items, predict_proposals

            part = props_path.with_name(f"proposals.part{dist_info.rank}-of{dist_info.world_size}.json")
            failed: BaseException | None = None
            if not part.exists():  # a part is final once written: a resumed stage reuses it
                try:
                    rpn_model, _, _ = load_model_for_inference(rpn_path, map_location=dev)
                    skipped: list[dict] = []
                    items = coco_items(coco, image_root)[dist_info.rank :: dist_info.world_size]
                    records = predict_proposals(
                        rpn_model,
                        items,
                        image_root,
                        cfg.proposals,
                        dev,
                        infer_cfg=cfg.infer,
                        batch_size=cfg.infer.batch_size,
                        on_bad_image=cfg.data.on_bad_image,
                        max_image_pixels=cfg.data.max_image_pixels,
                        progress=dist_info.is_main,
                        skipped=skipped,
                    )
                    atomic_write_json(part, {"records": records, "skipped": skipped}, indent=None)
                except Exception as e:  # re-raised below, once the ranks agree
                    failed = e
            # A rank that failed must not leave the others waiting at the barrier until the timeout.
            if any_rank(failed is not None, dist_info, dev):
                if failed is not None:
                    raise failed
                raise SniperError("stage 'proposals' failed on another rank (its error is in that rank's output)")
            if not dist_info.is_main:
                return {}
            parts = [props_path.with_name(f"proposals.part{r}-of{dist_info.world_size}.json")
                     for r in range(dist_info.world_size)]  # fmt: skip
            by_image: dict[int, list[dict]] = {}
            n_skipped = 0
            for path in parts:
                data = read_json(path)
                n_skipped += len(data["skipped"])
                for rec in data["records"]:
                    by_image.setdefault(int(rec["image_id"]), []).append(rec)
            records = [r for im in coco.images for r in by_image.get(im.id, ())]
            atomic_write_json(props_path, records, indent=None)
            for path in props_path.parent.glob("proposals.part*-of*.json"):  # also those of other world sizes
                path.unlink()
            return {"proposals": len(records), "skipped": n_skipped, "ranks": dist_info.world_size}

        def mine_negatives() -> dict:
            props = load_results(props_path, coco)
            totals = write_chip_table(
                coco, props, cfg.chips, chips_path, seed=cfg.seed, workers=max(1, cfg.data.num_workers)
            )
            return {"pos_chips": totals.pos, "neg_chips": totals.neg}

        def train_detector() -> dict:
            model = _build(cfg, coco.num_classes, dev, dist_info)
            if cfg.train.init_from_rpn and cfg.train.negatives:
                model.load_state_dict(load_checkpoint(rpn_path, map_location=dev)["model"])
            props = load_results(props_path, coco) if cfg.train.negatives and cfg.chips.regenerate else None
            source = _chip_source(
                coco, table, image_root, cfg, dist_info, negatives=cfg.train.negatives, proposals=props, stats=stats
            )
            if dist_info.is_main:
                _warn_if_short(cfg, source.batches_per_epoch(), dist_info.world_size)
            result = _train(
                "detector", model, source, cfg, run_dir, dev, dist_info, resume, False, interrupt_after=interrupt_after
            )
            if dist_info.is_main:
                save_model_final(final_path, model, cfg, categories)
            return {
                "iterations": result.iterations,
                "chips": result.chips,
                "stopped_early": result.stopped_early,
                "bad_images_in_training": result.bad_images,
                **_sync_info(result),
                **stats,
            }

        if cfg.train.negatives:
            # 1. RPN-only training on positive chips; 2. its proposals over whole training images
            # (sharded over the ranks); 3. negative chip mining (rank 0; the others wait).
            seconds["rpn"] = book.run("rpn", train_rpn, dist_info, all_ranks=True)
            seconds["proposals"] = book.run("proposals", propose, dist_info, all_ranks=True)
            seconds["negatives"] = book.run("negatives", mine_negatives, dist_info, all_ranks=False)
            table = _checked_table(coco, ChipTable.read_parquet(chips_path), image_root, cfg, dist_info, stats)
        else:
            table = pos_table
        # 4. Full training.
        seconds["detector"] = book.run("detector", train_detector, dist_info, all_ranks=True)
        if not final_path.exists() and dist_info.is_main:
            raise SniperError(f"{final_path} is missing although stage 'detector' is marked done; delete stages.json")
        return PipelineResult(run_dir, final_path, seconds, is_main=dist_info.is_main)
    finally:
        cleanup()
