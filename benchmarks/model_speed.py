"""Training throughput of the model in chips/s on CPU: fp32 and bf16 autocast.

    python benchmarks/model_speed.py [--backbone mobilenet_v2] [--size 512] [--batch 8]
        [--warmup 2] [--iters 5] [--threads N] [--no-channels-last] [--modes fp32,bf16] [--bf16-batch N]

Random chips with a few boxes each, SGD step included. Prints a table and writes
benchmarks/results/model_speed.json. Numbers depend on the CPU (bf16 is fast only with
AVX512-BF16/AMX; elsewhere PyTorch emulates it) and on whatever else runs on the machine,
so the JSON records the CPU capability, the thread count and the load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from sniper.config import ModelConfig
from sniper.io import atomic_write_json
from sniper.model import build_model

RESULTS = Path(__file__).resolve().parent / "results" / "model_speed.json"


def make_batch(batch: int, size: int, num_classes: int, gen: torch.Generator):
    images = torch.rand(batch, 3, size, size, generator=gen)
    targets = []
    for _ in range(batch):
        n = 6
        xy = torch.rand(n, 2, generator=gen) * size * 0.7
        wh = 16 + torch.rand(n, 2, generator=gen) * size * 0.25
        targets.append(
            {
                "boxes": torch.cat([xy, (xy + wh).clamp(max=size)], dim=1),
                "labels": torch.randint(1, num_classes + 1, (n,), generator=gen),
                "ignore_boxes": torch.zeros(0, 4),
                "valid_range": torch.tensor([0.0, float("inf")]),
            }
        )
    return images, targets


def measure(cfg: ModelConfig, batch: int, size: int, amp: bool, warmup: int, iters: int):
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=80)  # cfg.channels_last: the model converts its input
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    images, targets = make_batch(batch, size, 80, gen)
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    return {"chips_per_s": batch / median, "s_per_iter_median": median, "s_per_iter_min": times[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-channels-last", action="store_true", help="model.channels_last=false")
    ap.add_argument("--modes", default="fp32,bf16")
    ap.add_argument("--bf16-batch", type=int, default=None, help="batch for bf16 (default: --batch)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig(backbone=args.backbone, channels_last=not args.no_channels_last)
    rows = []
    for mode in args.modes.split(","):
        batch = args.bf16_batch if mode == "bf16" and args.bf16_batch else args.batch
        r = measure(cfg, batch, args.size, mode == "bf16", args.warmup, args.iters)
        rows.append({"mode": mode, "batch": batch, **r})
        print(f"  {mode}: {r['chips_per_s']:.2f} chips/s", flush=True)
    info = {
        "backbone": args.backbone,
        "chip_size": args.size,
        "threads": torch.get_num_threads(),
        "channels_last": cfg.channels_last,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "loadavg_1min": os.getloadavg()[0],
        "rows": rows,
    }
    print()
    print(
        f"{args.backbone} train step, {args.size}px chips, {info['threads']} threads, "
        f"{info['cpu_capability']}, mkldnn bf16: {info['mkldnn_bf16']}, load {info['loadavg_1min']:.1f}"
    )
    print("| mode | batch | chips/s | s/iter (median) | s/iter (min) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['batch']} | {r['chips_per_s']:.2f} | {r['s_per_iter_median']:.2f} "
            f"| {r['s_per_iter_min']:.2f} |"
        )
    atomic_write_json(args.out, info)


if __name__ == "__main__":
    main()
