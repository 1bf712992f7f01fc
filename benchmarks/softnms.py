"""Soft-NMS speed: ``sniper.ops.soft_nms`` vs the per-class Python reference of the tests
and vs ``ensemble_boxes.soft_nms`` (per-class numpy loop).

    .venv/bin/python benchmarks/softnms.py [--sizes 1000 5000 20000] [--classes 80 3]

Prints a table and writes ``benchmarks/results/softnms.json``. Gaussian Soft-NMS,
sigma 0.55, score threshold 0.001 (the paper's merge), boxes clustered in a
1000 x 1000 image. ``ours@200`` also keeps at most 200 detections, as inference does.
The reference is skipped when it would take longer than ``--ref-budget`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sniper.io import atomic_write_json
from sniper.ops.softnms import soft_nms

ROOT = Path(__file__).resolve().parents[1]


def _load_test_module():
    spec = importlib.util.spec_from_file_location("_test_softnms", ROOT / "tests" / "test_softnms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--classes", type=int, nargs="+", default=[80, 3])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ref-budget", type=float, default=60.0, help="skip the reference above this (s)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "softnms.json"))
    args = parser.parse_args()

    tests = _load_test_module()
    from ensemble_boxes import soft_nms as eb_soft_nms

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    rows = []
    ref_rate = None  # seconds per (boxes^2 / classes), measured on the first case
    for num_classes in args.classes:
        for n in args.sizes:
            rng = np.random.default_rng(n + num_classes)
            boxes, scores, labels = tests.random_detections(rng, n, num_classes, size=1000.0)
            scores = scores.astype(np.float32)
            tb = torch.as_tensor(boxes, dtype=torch.float32)
            ts = torch.as_tensor(scores)
            tl = torch.as_tensor(labels)

            t_ours = best_time(lambda: soft_nms(tb, ts, tl), args.repeat)  # noqa: B023
            t_ours200 = best_time(lambda: soft_nms(tb, ts, tl, max_detections=200), args.repeat)  # noqa: B023
            keep, _ = soft_nms(tb, ts, tl)

            norm = np.clip(boxes / 1000.0, 0, 1)

            def run_eb(norm=norm, scores=scores, labels=labels):
                with contextlib.redirect_stdout(io.StringIO()):  # it prints about zero-area boxes
                    eb_soft_nms([norm], [scores], [labels], method=2, sigma=0.55, thresh=0.001)

            t_eb = best_time(run_eb, 1 if n > 5000 else args.repeat)

            work = n * n / num_classes
            t_ref = None
            if ref_rate is None or ref_rate * work <= args.ref_budget:
                t0 = time.perf_counter()
                ref_keep, _ = tests.reference_soft_nms(
                    boxes, scores, labels, sigma=0.55, score_threshold=0.001
                )
                t_ref = time.perf_counter() - t0
                ref_rate = t_ref / work
            row = {
                "boxes": n,
                "classes": num_classes,
                "kept": int(keep.numel()),
                "ours_ms": t_ours * 1e3,
                "ours_max200_ms": t_ours200 * 1e3,
                "reference_ms": None if t_ref is None else t_ref * 1e3,
                "ensemble_boxes_ms": t_eb * 1e3,
                "speedup_vs_reference": None if t_ref is None else t_ref / t_ours,
                "speedup_vs_ensemble_boxes": t_eb / t_ours,
            }
            rows.append(row)

    def fmt(v, spec):
        return "skipped" if v is None else format(v, spec)

    header = (
        f"{'boxes':>6} {'classes':>7} {'kept':>6} {'ours ms':>9} {'ours@200 ms':>11} "
        f"{'reference ms':>12} {'ens_boxes ms':>12} {'x ref':>8} {'x ens_boxes':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['boxes']:>6} {r['classes']:>7} {r['kept']:>6} {r['ours_ms']:>9.1f} {r['ours_max200_ms']:>11.1f} "
            f"{fmt(r['reference_ms'], '.1f'):>12} {r['ensemble_boxes_ms']:>12.1f} "
            f"{fmt(r['speedup_vs_reference'], '.1f'):>8} {r['speedup_vs_ensemble_boxes']:>11.1f}"
        )
    table = "\n".join(lines)
    print(table)
    atomic_write_json(
        args.out,
        {
            "benchmark": "softnms",
            "settings": {"method": "gaussian", "sigma": 0.55, "score_threshold": 0.001, "dtype": "float32"},
            "device": "cpu",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "rows": rows,
            "table": table,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
