"""Under DDP, skip and stop are decided by all ranks together, never by one alone.

Two gloo processes train the toy model of test_train_loop. A rank that alone skips a step for a
non-finite loss, or alone stops on its time budget, would leave the other waiting forever in the
next gradient all-reduce: here each case must end, in step, on both ranks.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))

WORKER_TIMEOUT_S = 120  # a hang fails the test here instead of stalling the suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str, case: str) -> None:
    import torch.distributed as dist
    from test_train_loop import ToyDetector, ToySource, _cfg

    from sniper.engine.distributed import DistInfo
    from sniper.engine.train import StageSpec, train_stage

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ToyDetector()

    class NanOnRank1(torch.nn.Module):
        """Rank 1's loss is NaN at its 3rd forward pass; rank 0 never sees one."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.calls = 0
            self.rpn_only = False

        def forward(self, images, targets):
            self.calls += 1
            losses = self.inner(images, targets)
            if case == "nan" and rank == 1 and self.calls == 3:
                losses["loss_a"] = losses["loss_a"] * float("nan")
            return losses

    wrapped = NanOnRank1(model)
    ddp = torch.nn.parallel.DistributedDataParallel(wrapped)
    if case == "nan":
        cfg = _cfg(epochs=2, checkpoint_every=0)
    else:  # rank 0's budget runs out after about one step; rank 1's never would
        cfg = _cfg(epochs=50, checkpoint_every=0, time_budget_s=1e-3 if rank == 0 else 1e6)
    spec = StageSpec("toy", epochs=cfg.epochs, lr=cfg.lr)
    res = train_stage(
        wrapped, ToySource(), spec, cfg, Path(out) / f"run{rank}", device=torch.device("cpu"),
        dist_info=DistInfo(rank=rank, world_size=2), ddp_model=ddp,
    )  # fmt: skip
    weights = float(sum(p.double().sum() for p in model.parameters()))
    Path(out, f"rank{rank}.json").write_text(
        json.dumps({"iterations": res.iterations, "stopped_early": res.stopped_early, "weights": weights})
    )
    dist.destroy_process_group()


def _run_two(tmp_path: Path, case: str) -> list[dict]:
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(tmp_path), case)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(WORKER_TIMEOUT_S)
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"rank process(es) {hung} still running after {WORKER_TIMEOUT_S} s: a rank waits alone"
    assert [p.exitcode for p in procs] == [0, 0]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("case", ["nan", "budget"])
def test_ranks_skip_and_stop_together(tmp_path, case):
    r0, r1 = _run_two(tmp_path, case)
    assert r0["iterations"] == r1["iterations"] and r0["weights"] == r1["weights"]
    if case == "nan":
        assert r0["iterations"] == 12 and not r0["stopped_early"]  # 2 epochs of 6 batches, to the end
    else:
        assert r0["stopped_early"] and r1["stopped_early"]
        assert 1 <= r0["iterations"] < 300  # stopped by rank 0's budget, long before rank 1's


def test_process_group_gets_the_configured_timeout(monkeypatch):
    import datetime

    import torch.distributed as dist

    from sniper.config import TrainConfig
    from sniper.engine import distributed

    seen = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    info, device = distributed.init_distributed("cpu", timeout_s=123.0)
    assert info.rank == 1 and info.enabled and device.type == "cpu"
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(seconds=123)}
    assert TrainConfig().dist_timeout_s > 600  # above NCCL's 10-minute default: rank-0 stages run long
