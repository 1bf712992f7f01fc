"""The stage loop on a toy model: learning, exact resume, checkpoints, logs, schedules."""

import json

import pytest
import torch
from torch import nn

from sniper.config import TrainConfig
from sniper.engine.train import StageSpec, build_lr_lambda, latest_checkpoint, train_stage


class ToyDetector(nn.Module):
    """Stands in for the detector: a conv + BN net with a loss dict, using torch's RNG in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 1)
        self.rpn_only = False

    def forward(self, images, targets):
        feats = self.body(images).mean(dim=(2, 3))
        pred = self.head(feats).squeeze(1)
        goal = torch.stack([t["goal"] for t in targets])
        noise = torch.rand(()) * 1e-3  # consumes RNG like the samplers do
        return {"loss_a": ((pred - goal) ** 2).mean() + noise, "loss_b": 0.1 * pred.abs().mean()}


class ToySource:
    def __init__(self, n=24, batch=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 8, 8, generator=g)
        self.goals = self.images.mean(dim=(1, 2, 3)) * 4
        self.batch = batch

    def batches_per_epoch(self):
        return len(self.images) // self.batch

    def iterate(self, epoch, start):
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(1000 + epoch))
        for b in range(start, self.batches_per_epoch()):
            idx = order[b * self.batch : (b + 1) * self.batch]
            yield self.images[idx], [{"goal": self.goals[i]} for i in idx]


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


def test_resume_is_exact(tmp_path):
    straight, _ = _run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", interrupt_after=10)  # killed after a checkpoint at 10
    # a fresh process would start from a different RNG state: make sure it is restored
    torch.manual_seed(12345)
    resumed, res = _run(tmp_path / "b", resume=True, seed=999)
    assert res.iterations == 24
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    rows = [json.loads(x) for x in (tmp_path / "b" / "logs" / "toy.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == sorted({r["iter"] for r in rows}), "no duplicated log rows after resume"


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
