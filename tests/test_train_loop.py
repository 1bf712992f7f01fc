"""The stage loop on a toy model: learning, exact resume, checkpoints, logs, schedules."""

import csv
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from sniper.config import TrainConfig
from sniper.engine.train import StageSpec, build_lr_lambda, latest_checkpoint, train_stage


class ToyDetector(nn.Module):
    """Stands in for the detector: a conv + BN net with a loss dict, using torch's RNG in forward."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.drop = nn.Dropout(dropout)  # with dropout > 0 torch's RNG reaches the gradients
        self.head = nn.Linear(4, 1)
        self.rpn_only = False

    def forward(self, images, targets):
        feats = self.drop(self.body(images).mean(dim=(2, 3)))
        pred = self.head(feats).squeeze(1)
        goal = torch.stack([t["goal"] for t in targets])
        noise = torch.rand(()) * 1e-3  # consumes RNG like the samplers do
        return {"loss_a": ((pred - goal) ** 2).mean() + noise, "loss_b": 0.1 * pred.abs().mean()}


class ToySource:
    """``augment``: random augmentation drawn from the global torch, numpy and Python RNGs (as
    third-party transforms do), so that every one of them reaches the gradients."""

    def __init__(self, n=24, batch=4, seed=0, augment=False):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 8, 8, generator=g)
        self.goals = self.images.mean(dim=(1, 2, 3)) * 4
        self.batch = batch
        self.augment = augment

    def batches_per_epoch(self):
        return len(self.images) // self.batch

    def iterate(self, epoch, start):
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(1000 + epoch))
        for b in range(start, self.batches_per_epoch()):
            idx = order[b * self.batch : (b + 1) * self.batch]
            images = self.images[idx]
            if self.augment:
                images = images + 0.1 * torch.randn_like(images)
                images = images * float(np.random.uniform(0.8, 1.2))  # noqa: NPY002 - the global RNG on purpose
                if random.random() < 0.5:
                    images = images.flip(-1)
            yield images, [{"goal": self.goals[i]} for i in idx]


def _cfg(**kw):
    base = dict(lr=0.05, warmup_iters=3, epochs=4, lr_steps=[3.0], log_every=2, checkpoint_every=2, keep_checkpoints=2)
    base.update(kw)
    return TrainConfig(**base)


def _run(tmp_path, resume=False, interrupt_after=None, seed=0):
    torch.manual_seed(seed)
    model = ToyDetector()
    cfg = _cfg()
    spec = StageSpec("toy", epochs=cfg.epochs, lr=cfg.lr)
    res = train_stage(model, ToySource(), spec, cfg, tmp_path, device=torch.device("cpu"), resume=resume,
                      interrupt_after=interrupt_after)
    return model, res


def test_loss_falls(tmp_path):
    _, res = _run(tmp_path)
    assert res.iterations == 24
    first, last = res.history[0]["loss_a"], res.history[-1]["loss_a"]
    assert last < 0.5 * first


def _rows(path, drop=("chips_per_s",)):
    """The logged rows without the timing columns (the only ones a resume may change)."""
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def _run_random(run_dir, resume=False, interrupt_after=None, seed=0):
    """Dropout in the model, global-RNG augmentation in the source; checkpoints every 3
    iterations, logs every 2, 6 iterations an epoch, 24 in all."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)
    model = ToyDetector(dropout=0.5)
    cfg = _cfg(checkpoint_every=3, log_every=2)
    spec = StageSpec("toy", epochs=cfg.epochs, lr=cfg.lr)
    res = train_stage(model, ToySource(augment=True), spec, cfg, run_dir, device=torch.device("cpu"), resume=resume,
                      interrupt_after=interrupt_after)  # fmt: skip
    return model, res


@pytest.mark.parametrize(
    "interrupts",
    [
        [4],  # mid-epoch 0, one iteration past the checkpoint at 3, inside a log window
        [5, 5, 7],  # killed at 5, 8 and 13: each resume redoes iterations (from 3, 6, 12)
    ],
)
def test_resume_between_checkpoints_is_exact(tmp_path, interrupts):
    straight, res_a = _run_random(tmp_path / "a")
    assert res_a.iterations == 24
    b = tmp_path / "b"
    # the same run as "a", killed; each resume is a fresh process with another RNG state (torch,
    # numpy, Python): the checkpoint's must be restored
    for n, k in enumerate(interrupts):
        with pytest.raises(KeyboardInterrupt):
            _run_random(b, resume=n > 0, interrupt_after=k, seed=0 if n == 0 else 100 + n)
    resumed, res = _run_random(b, resume=True, seed=999)
    assert res.iterations == 24
    for (k, x), y in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(x, y), f"{k} differs after resume"
    for log in ("toy.jsonl", "toy.csv"):
        rows_a, rows_b = _rows(tmp_path / "a" / "logs" / log), _rows(b / "logs" / log)
        assert [r["iter"] for r in rows_b] == [r["iter"] for r in rows_a], f"{log}: other rows after resume"
        for ra, rb in zip(rows_a, rows_b, strict=True):
            assert ra == rb, f"{log}: row {ra['iter']} differs after resume"


def test_randomness_reaches_the_gradients(tmp_path):
    """Guards the resume test above: were the runs' randomness without effect on the weights, a
    resume that forgets the RNG state would still pass it."""
    a, _ = _run_random(tmp_path / "a", seed=0)
    b, _ = _run_random(tmp_path / "b", seed=1)
    assert not torch.equal(a.head.weight, b.head.weight)


def test_checkpoints_rotate_and_plots_written(tmp_path):
    _run(tmp_path)
    ckpts = sorted((tmp_path / "checkpoints").glob("toy_it*.pt"))
    assert len(ckpts) == 2 and latest_checkpoint(tmp_path, "toy").name == "toy_it00000024.pt"
    assert (tmp_path / "plots" / "toy_loss.png").stat().st_size > 1000
    assert (tmp_path / "logs" / "toy.csv").read_text().startswith("chips_per_s,epoch,iter,loss,loss_a,loss_b,lr")
    state = torch.load(ckpts[-1], weights_only=True)
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "iteration", "rng"}


def test_lr_schedule_warmup_and_steps():
    f = build_lr_lambda(TrainConfig(warmup_iters=10, warmup_factor=0.1, lr_steps=[1.0, 2.0], lr_gamma=0.1), 20)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.55)
    assert f(10) == pytest.approx(1.0)
    assert f(19) == pytest.approx(1.0)
    assert f(20) == pytest.approx(0.1)
    assert f(40) == pytest.approx(0.01)


def test_schedule_in_iterations_runs_exactly_that_long_with_its_steps(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(iterations=15, lr_steps_iters=[9], warmup_iters=0, checkpoint_every=0, log_every=1)
    spec = StageSpec("toy", epochs=cfg.epochs, lr=cfg.lr, iterations=cfg.iterations)
    res = train_stage(ToyDetector(), ToySource(), spec, cfg, tmp_path, device=torch.device("cpu"))
    assert res.iterations == 15  # not 4 epochs x 6 batches, and past the end of epoch 2 (12)
    lrs = {r["iter"]: r["lr"] for r in map(json.loads, (tmp_path / "logs" / "toy.jsonl").read_text().splitlines())}
    # a row logs the lr of the next iteration: step 9 (0-based) is the first at 0.1x, not epoch 3's
    assert lrs[8] == pytest.approx(0.05) and lrs[9] == pytest.approx(0.005) and lrs[15] == pytest.approx(0.005)
    assert latest_checkpoint(tmp_path, "toy").name == "toy_it00000015.pt"


def test_iteration_steps_replace_epoch_steps():
    f = build_lr_lambda(TrainConfig(warmup_iters=0, lr_steps=[1.0], lr_steps_iters=[7], lr_gamma=0.1), 100)
    assert f(6) == pytest.approx(1.0) and f(7) == pytest.approx(0.1) and f(99) == pytest.approx(0.1)
    with pytest.raises(Exception, match="no iterations"):
        train_stage(ToyDetector(), ToySource(), StageSpec("t", epochs=0, lr=0.1), _cfg(), "/nonexistent-unused",
                    device=torch.device("cpu"))  # fmt: skip
