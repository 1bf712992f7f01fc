"""The training loop of one stage: SGD + warm-up + step decay, AMP, checkpoints, exact resume, logs.

The loop knows nothing about chips: it pulls batches ``(images [B,3,K,K], targets)`` from a
``BatchSource`` that can start any epoch at any batch (so a resumed run skips exactly what it
had consumed), sums the model's loss dict, and steps. The pipeline (``pipeline.py``) decides
what a stage trains on.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sniper.config import TrainConfig
from sniper.engine.checkpoint import load_checkpoint, save_checkpoint
from sniper.engine.distributed import DistInfo, all_reduce_mean, any_rank
from sniper.errors import BadImageError, SniperError
from sniper.io import remove_stale_temps
from sniper.viz.plots import plot_losses

__all__ = ["BatchSource", "StageResult", "StageSpec", "build_lr_lambda", "build_optimizer", "train_stage"]

Batch = tuple[torch.Tensor, list[dict[str, Any]]]


class BatchSource(Protocol):
    """Batches of one rank for a given epoch, starting at batch ``start``."""

    def batches_per_epoch(self) -> int: ...

    def iterate(self, epoch: int, start: int) -> Iterable[Batch]: ...


@dataclass(frozen=True)
class StageSpec:
    name: str  # "rpn" | "detector" | ...; names checkpoints and logs
    epochs: int
    lr: float
    rpn_only: bool = False
    iterations: int | None = None  # the stage's length in iterations instead of epochs


@dataclass
class StageResult:
    iterations: int
    epochs: int
    seconds: float
    chips: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    # file -> reason: images that failed to decode during this stage and were skipped
    # (data.on_bad_image=skip), over all ranks
    bad_images: dict[str, str] = field(default_factory=dict)
    # under DDP: {"ranks", "in_sync", "parameters", "checksums" (one per rank)}, see _check_replicas
    ddp_sync: dict[str, Any] | None = None


# ---------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum; no weight decay on normalisation parameters."""
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (no_decay if is_norm else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)


def build_lr_lambda(cfg: TrainConfig, iters_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up from ``warmup_factor`` over ``warmup_iters``, then x``lr_gamma`` at each step
    (``lr_steps_iters`` in iterations when set, else ``lr_steps`` in epochs)."""
    if cfg.lr_steps_iters is not None:
        steps = sorted(int(s) for s in cfg.lr_steps_iters)
    else:
        steps = sorted(int(round(s * iters_per_epoch)) for s in cfg.lr_steps)

    def factor(it: int) -> float:
        f = cfg.lr_gamma ** sum(it >= s for s in steps)
        if it < cfg.warmup_iters:
            alpha = it / max(1, cfg.warmup_iters)
            f *= cfg.warmup_factor * (1 - alpha) + alpha
        return f

    return factor


# ---------------------------------------------------------------- RNG state


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.frombuffer(json.dumps(_np_state()).encode(), dtype=np.uint8).copy()),
        "python": torch.from_numpy(np.frombuffer(json.dumps(_py_state()).encode(), dtype=np.uint8).copy()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _np_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - third-party code may use the global RNG
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _py_state() -> list:
    v, internal, gauss = random.getstate()
    return [v, list(internal), gauss]


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = json.loads(bytes(state["numpy"].numpy()).decode())
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    v, internal, gauss = json.loads(bytes(state["python"].numpy()).decode())
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- checkpoints


_CKPT_RE = re.compile(r"^(?P<stage>.+)_it(?P<it>\d+)\.pt$")


def _checkpoints(ckpt_dir: Path, stage: str) -> list[Path]:
    found = []
    for p in ckpt_dir.glob(f"{stage}_it*.pt"):
        m = _CKPT_RE.match(p.name)
        if m and m.group("stage") == stage:
            found.append((int(m.group("it")), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path, stage: str) -> Path | None:
    found = _checkpoints(run_dir / "checkpoints", stage)
    return found[-1] if found else None


# ---------------------------------------------------------------- logging


def read_log_rows(jsonl: Path) -> list[dict]:
    """The rows of a JSONL log. A run killed while appending leaves a partial last line: it is
    dropped (the resumed run rewrites the file without it), never a crash."""
    rows = []
    for line in jsonl.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "iter" in row:
            rows.append(row)
    return rows


class MetricLog:
    """Appends one JSON line (and one CSV row) per logged step; rank 0 only."""

    def __init__(self, log_dir: Path, stage: str, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.jsonl = log_dir / f"{stage}.jsonl"
        self.csv = log_dir / f"{stage}.csv"
        self.tb = None
        if enabled:
            log_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(log_dir / "tb" / stage))
                except ImportError:
                    print("tensorboard is not installed (pip install tensorboard); logging to JSONL/CSV only")

    def truncate_after(self, iteration: int) -> None:
        """On resume, drop lines written after the checkpoint so curves have no duplicates."""
        if not (self.enabled and self.jsonl.exists()):
            return
        rows = [r for r in read_log_rows(self.jsonl) if r["iter"] <= iteration]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self._rewrite_csv(rows)

    def _rewrite_csv(self, rows: list[dict]) -> None:
        if not rows:
            self.csv.unlink(missing_ok=True)
            return
        keys = sorted({k for r in rows for k in r})
        with open(self.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        new_file = not self.csv.exists()
        if not new_file:
            with open(self.csv) as f:
                header = f.readline().strip().split(",")
            if set(header) != set(row):
                self._rewrite_csv(read_log_rows(self.jsonl))
                return
        with open(self.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=sorted(row) if new_file else header)
            if new_file:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "iter":
                    self.tb.add_scalar(k, v, row["iter"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------- the loop


def _to_device(batch: Batch, device: torch.device) -> Batch:
    images, targets = batch
    images = images.to(device, non_blocking=True)
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    return images, targets


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _autocast(device: torch.device, enabled: bool):
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def train_stage(
    model: nn.Module,
    source: BatchSource,
    spec: StageSpec,
    cfg: TrainConfig,
    run_dir: Path,
    *,
    device: torch.device,
    dist_info: DistInfo = DistInfo(),
    resume: bool = False,
    ddp_model: nn.Module | None = None,
    interrupt_after: int | None = None,
) -> StageResult:
    """Train ``model`` for ``spec.epochs`` epochs of ``source``.

    ``ddp_model`` is the DDP wrapper when distributed (forward goes through it; checkpoints store
    the plain module). ``interrupt_after`` raises KeyboardInterrupt after that many iterations of
    this call: tests use it to simulate a killed run.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if dist_info.is_main:
        remove_stale_temps(ckpt_dir)  # a checkpoint write killed half-way
    net = ddp_model if ddp_model is not None else model
    core = getattr(model, "module", model)
    if hasattr(core, "rpn_only"):
        core.rpn_only = spec.rpn_only

    iters_per_epoch = source.batches_per_epoch()
    if iters_per_epoch <= 0:
        raise SniperError(f"stage '{spec.name}': no training batches (no chips? batch size larger than the data?)")
    total_iters = iters_per_epoch * spec.epochs if spec.iterations is None else int(spec.iterations)
    if total_iters <= 0:
        raise SniperError(f"stage '{spec.name}': the schedule has no iterations (epochs or iterations must be > 0)")
    if cfg.max_iters is not None:
        total_iters = min(total_iters, cfg.max_iters)

    if cfg.amp and device.type == "cpu" and not _cpu_has_bf16():
        # Without native bf16 the CPU emulates it and autocast runs tens of times slower than fp32.
        if dist_info.is_main:
            print(f"[{spec.name}] train.amp: this CPU has no native bf16 support; training in fp32")
        from dataclasses import replace

        cfg = replace(cfg, amp=False)

    optimizer = build_optimizer(model, cfg, spec.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_lr_lambda(cfg, iters_per_epoch))
    use_scaler = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    it = 0
    resumed_window: dict[str, Any] = {}
    if resume:
        ckpt = latest_checkpoint(run_dir, spec.name)
        if ckpt is not None:
            state = load_checkpoint(ckpt, map_location=device)
            core.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            it = int(state["iteration"])
            _set_rng_state(state["rng"])
            resumed_window = state.get("log_window") or {}
            if dist_info.is_main:
                print(f"[{spec.name}] resumed from {ckpt.name} at iteration {it}")

    log = MetricLog(run_dir / "logs", spec.name, dist_info.is_main, cfg.tensorboard)
    if resume:
        log.truncate_after(it)

    def checkpoint(window_sums: dict[str, float] | None = None) -> None:
        if not dist_info.is_main:
            return
        # The log window not logged yet (``window_sums``: averaged over ranks), so that a resumed
        # run logs the same rows as an uninterrupted one.
        sums = dict(window if window_sums is None else window_sums)
        state = {
            "stage": spec.name,
            "iteration": it,
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(),
            "log_window": {"n": window_n, "chips": window_chips, "sums": sums},
        }
        save_checkpoint(ckpt_dir / f"{spec.name}_it{it:08d}.pt", state)
        for old in _checkpoints(ckpt_dir, spec.name)[: -max(1, cfg.keep_checkpoints)]:
            old.unlink(missing_ok=True)

    net.train()
    started = time.perf_counter()
    budget_end = started + cfg.time_budget_s if cfg.time_budget_s else math.inf
    chips_seen = 0
    done_this_call = 0
    history: list[dict[str, float]] = []
    window: dict[str, float] = {k: float(v) for k, v in resumed_window.get("sums", {}).items()}
    window_n = int(resumed_window.get("n", 0))
    window_t = time.perf_counter()
    window_chips = int(resumed_window.get("chips", 0))
    skipped_nonfinite = 0
    stopped_early = False

    # Under a time budget the stage may end before its iteration total: show no total (or ETA).
    bar_total = None if cfg.time_budget_s else total_iters
    bar = tqdm(total=bar_total, initial=it, desc=spec.name, disable=not dist_info.is_main, dynamic_ncols=True)
    try:
        while it < total_iters:
            epoch, start = divmod(it, iters_per_epoch)
            batches: Iterator[Batch] = iter(source.iterate(epoch, start))
            it_before = it
            for batch in batches:
                images, targets = _to_device(batch, device)
                # Whole-image batches (baselines) carry each image's unpadded size.
                sizes = [tuple(int(v) for v in t["image_size"]) for t in targets] if "image_size" in targets[0] else None
                with _autocast(device, cfg.amp):
                    losses = net(images, targets) if sizes is None else net(images, targets, image_sizes=sizes)
                loss = sum(losses.values())
                # Under DDP every rank skips when any rank's loss is not finite: a rank skipping
                # alone would leave the others waiting in the gradient all-reduce.
                if any_rank(not bool(torch.isfinite(loss)), dist_info, device):
                    # A non-finite loss would poison the weights; skip the step, but never silently.
                    skipped_nonfinite += 1
                    if ddp_model is not None:
                        # DDP expects a backward after each forward (its reducer stays in step);
                        # these gradients are discarded below, whatever they hold.
                        (loss * 0.0).backward()
                    optimizer.zero_grad(set_to_none=True)
                    if skipped_nonfinite > 10:
                        raise SniperError(
                            f"stage '{spec.name}': loss is not finite ({ {k: float(v) for k, v in losses.items()} }) "
                            f"for {skipped_nonfinite} steps; lower train.lr or check the data"
                        )
                else:
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                scheduler.step()
                it += 1
                done_this_call += 1
                chips_seen += images.shape[0]
                window_chips += images.shape[0]
                for k, v in losses.items():
                    window[k] = window.get(k, 0.0) + float(v.detach())
                window["loss"] = window.get("loss", 0.0) + float(loss.detach())
                window_n += 1
                bar.update(1)

                last_of_epoch = it % iters_per_epoch == 0 or it >= total_iters
                if window_n >= cfg.log_every or last_of_epoch:
                    means = all_reduce_mean({k: v / window_n for k, v in window.items()}, dist_info, device)
                    dt = max(time.perf_counter() - window_t, 1e-9)
                    row = {"iter": it, "epoch": it / iters_per_epoch, "lr": optimizer.param_groups[0]["lr"], **means}
                    row["chips_per_s"] = window_chips * dist_info.world_size / dt
                    history.append(row)
                    log.write(row)
                    bar.set_postfix(loss=f"{means['loss']:.3f}", lr=f"{row['lr']:.2e}", cps=f"{row['chips_per_s']:.1f}")
                    window, window_n, window_chips, window_t = {}, 0, 0, time.perf_counter()

                if last_of_epoch or (cfg.checkpoint_every and it % cfg.checkpoint_every == 0):
                    checkpoint(all_reduce_mean(window, dist_info, device))  # every rank: a collective
                if interrupt_after is not None and done_this_call >= interrupt_after:
                    raise KeyboardInterrupt
                # the budget ends the stage on every rank at the same step (a rank stopping alone
                # would leave the others in the next all-reduce); decided together, per step
                if cfg.time_budget_s and any_rank(time.perf_counter() > budget_end, dist_info, device):
                    stopped_early = True
                    break
                if it >= total_iters or last_of_epoch:
                    break
            if stopped_early:
                checkpoint()
                break
            if it == it_before:
                raise SniperError(f"stage '{spec.name}': epoch {epoch} yielded no batches from batch {start}")
    except BadImageError as e:
        # data.on_bad_image=error and a file that passed the header check fails to decode: keep
        # the progress (the checkpoint is at the batch that failed, which --resume redoes).
        checkpoint()
        raise SniperError(
            f"{e.file}: {e.reason} (stage '{spec.name}', iteration {it}; checkpoint written: fix or remove "
            "the file and rerun with --resume, or skip such files with --on-bad-image skip)"
        ) from None
    finally:
        bar.close()
        log.close()
    if skipped_nonfinite and dist_info.is_main:
        print(f"[{spec.name}] skipped {skipped_nonfinite} steps with a non-finite loss")
    bad_images = _gather_bad_images(getattr(source, "skipped_images", {}), dist_info)
    if bad_images and dist_info.is_main:
        print(f"[{spec.name}] {len(bad_images)} image(s) failed to decode and were skipped (data.on_bad_image=skip):")
        for f, reason in list(bad_images.items())[:10]:
            print(f"  {f}: {reason}")
    ddp_sync = _check_replicas(core, dist_info, device, spec.name) if dist_info.enabled else None
    if dist_info.is_main:
        plot_losses(log.jsonl, run_dir / "plots" / f"{spec.name}_loss.png", f"stage {spec.name}")
    return StageResult(
        iterations=it,
        epochs=spec.epochs,
        seconds=time.perf_counter() - started,
        chips=chips_seen,
        history=history,
        stopped_early=stopped_early,
        bad_images=bad_images,
        ddp_sync=ddp_sync,
    )


def _gather_bad_images(local: dict[str, str], dist_info: DistInfo) -> dict[str, str]:
    """The skipped files of every rank (each rank's loader sees only its own)."""
    if not dist_info.enabled:
        return dict(local)
    import torch.distributed as dist

    parts: list[dict[str, str] | None] = [None] * dist_info.world_size
    dist.all_gather_object(parts, dict(local))
    merged: dict[str, str] = {}
    for part in parts:
        merged.update(part or {})
    return merged


def _check_replicas(model: nn.Module, dist_info: DistInfo, device: torch.device, stage: str) -> dict[str, Any]:
    """Under DDP every rank must end a stage with the same weights (rank 0's start, averaged
    gradients). All ranks compare one float64 sum per parameter; a divergence (a step without
    gradient sync, a rank-local update) is a SniperError naming the first differing parameter, on
    every rank. Buffers are not compared: DDP broadcasts rank 0's at each forward, so BN running
    statistics legitimately differ after the last one (only rank 0's are saved)."""
    import torch.distributed as dist

    names = [name for name, _ in model.named_parameters()]
    local = torch.zeros(len(names), dtype=torch.float64)
    if names:
        local = torch.stack([p.detach().double().sum() for p in model.parameters()])
    local = local.to(device)
    parts = [torch.empty_like(local) for _ in range(dist_info.world_size)]
    dist.all_gather(parts, local)
    sums = torch.stack(parts).cpu()  # [ranks, parameters]
    same = (sums == sums[0]) | (sums.isnan() & sums[0].isnan())
    if not bool(same.all()):
        i = int((~same).any(dim=0).nonzero()[0])
        raise SniperError(
            f"stage '{stage}': the weights of the {dist_info.world_size} ranks diverged under DDP; first differing "
            f"parameter: {names[i]} (sums per rank: {sums[:, i].tolist()})"
        )
    return {
        "ranks": dist_info.world_size,
        "in_sync": True,
        "parameters": len(names),
        "checksums": [float(s) for s in sums.sum(dim=1)],
    }
