"""Training speed: SNIPER chips vs the full 3-scale image pyramid vs single-scale 800 x 1333.

    .venv/bin/python benchmarks/train.py [--quick] [--data /tmp/syn] [--workers 1] [--no-masks] [--chips-only]

Same model and settings everywhere: a MobileNetV2 SNIPER detector (ImageNet weights only if
torchvision's file is already on disk, else random init), batch 8, the real training loop
(``sniper.engine.train.train_stage``: forward, backward, SGD step) fed by the real loaders,
so data loading is included. On the synthetic dataset (``sniper make-dataset``; generated into
``--workdir`` when ``--data`` has none):

(a) chips/s at 512 px chips (``ChipDataset`` + ``ChipBatchSampler``, positives + 2 negatives per
    image) with ``train.amp`` off (batch 8) and on (bf16 autocast on CPU; batch ``--amp-batch``,
    2 by default). On a CPU without native bf16 the trainer trains in fp32 even with amp on, and
    the amp row says so (``--force-bf16`` times the emulated bf16 anyway: ~150 s for 2 chips);
    and, unless ``--no-masks``, the same at fp32 with instance masks (``model.masks``: the
    Mask R-CNN branch, chips carrying 56 x 56 box-local masks of the synthetic RLE
    segmentations), the same chips in the same order and the same initial box weights;
(b) time per epoch of
    - SNIPER: the epoch plan's chips (all positive chips + ``neg_per_image`` negatives per image,
      from the chip engine; negatives mined from RANDOM boxes standing in for RPN proposals),
      iterations per epoch x measured seconds per iteration (from (a), amp off);
    - single scale (short 800, long <= 1333, ``FullImageBatchSource``): measured at
      ``--full-batch`` (2; a batch of 8 such images needs ~10 GB), time per image x images;
    - (skipped with ``--chips-only``) the full pyramid (every image at each of ``cfg.chips.scales``: x3, x1.667, longest 512):
      a batch of 8 images at x3 (up to ~19 MP each) does not fit in RAM, so pyramid items are
      timed one image per iteration on a sample below ``--max-pixels``, a line
      ``seconds = a + b * pixels`` is fitted, and the epoch is extrapolated over every item.
      The same line's prediction for the single-scale batches is printed next to the measured
      value as a check of the extrapolation.

Pixel ratios count network input pixels (padded batch tensors: chips are 512 x 512) and image
content pixels. Prints tables and writes ``benchmarks/results/train.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sniper.chips import chips_columns
from sniper.config import Config, to_dict
from sniper.data.chip_dataset import ChipBatchSource, ChipDataset
from sniper.data.chip_table import ChipTable, ImageTask, image_chips
from sniper.data.coco import CocoDataset, load_coco
from sniper.data.epoch_plan import ChipBatchSampler
from sniper.data.full_image import FullImageBatchSource, FullImageDataset
from sniper.engine import train as train_engine
from sniper.engine.train import StageSpec, train_stage
from sniper.io import atomic_write_json
from sniper.model import build_model
from sniper.scales import Scale

ROOT = Path(__file__).resolve().parents[1]
SINGLE_SCALE = Scale(short=800, max_size=1333)


# ---------------------------------------------------------------- data


def dataset(data: Path | None, workdir: Path, images: int) -> tuple[Path, Path]:
    """(train.json, image root) of a synthetic dataset, generated if needed."""
    if data is not None and (data / "train.json").is_file():
        return data / "train.json", data / "images"
    from sniper.data.synthetic import make_dataset

    out = workdir / f"syn{images}"
    if not (out / "train.json").is_file():
        print(f"generating a synthetic dataset of {images} images in {out}", file=sys.stderr)
        make_dataset(out, images=images, seed=0)
    return out / "train.json", out / "images"


def random_proposals(rng: np.random.Generator, w: int, h: int, n: int) -> np.ndarray:
    """Boxes of log-uniform size (8 px .. half the short side) anywhere in the image."""
    side = np.exp(rng.uniform(np.log(8), np.log(max(9, min(w, h) / 2)), (n, 2)))
    x1 = rng.uniform(0, w - side[:, 0])
    y1 = rng.uniform(0, h - side[:, 1])
    return np.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], axis=1)


def chip_table(coco: CocoDataset, cfg: Config, proposals_per_image: int) -> ChipTable:
    rng = np.random.default_rng(0)
    parts = []
    for i, rec in enumerate(coco.images):
        a = coco.annotations_at(i)
        props = random_proposals(rng, rec.width, rec.height, proposals_per_image)
        task = ImageTask(rec.id, rec.width, rec.height, a.boxes, a.iscrowd, props)
        parts += list(image_chips(task, cfg.chips, cfg.seed))
    cols = chips_columns(parts)
    cols["kind"] = np.asarray(cols["kind"]).astype(str)
    return ChipTable.from_columns(cols)


# ---------------------------------------------------------------- timing


class CountingSource:
    """Wraps a BatchSource; records the batch size and padded tensor pixels of each batch it yields."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.batches: list[tuple[int, int]] = []

    def batches_per_epoch(self) -> int:
        return self.inner.batches_per_epoch()

    def iterate(self, epoch: int, start: int):
        for images, targets in self.inner.iterate(epoch, start):
            self.batches.append((images.shape[0], images.shape[0] * images.shape[2] * images.shape[3]))
            yield images, targets


def _run(model, source, cfg: Config, iters: int, amp: bool, budget_s: float | None) -> list[float]:
    tc = cfg.train
    tc.amp, tc.max_iters, tc.log_every, tc.warmup_iters, tc.time_budget_s = amp, iters, 1, 0, budget_s
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stderr(io.StringIO()):
        res = train_stage(
            model, source, StageSpec("bench", 1, 1e-3), tc, Path(run_dir), device=torch.device("cpu")
        )
    return [row["chips_per_s"] for row in res.history]


def measure(model, source, cfg: Config, iters: int, amp: bool, budget_s: float) -> dict:
    """One warm-up iteration, then up to ``iters`` timed iterations of the real loop, stopping after
    the first iteration that ends past ``budget_s``; seconds and input pixels of each timed iteration."""
    counting = CountingSource(source)
    _run(model, counting, cfg, 1, amp, None)
    counting.batches.clear()
    rates = _run(model, counting, cfg, iters, amp, budget_s)
    sizes = counting.batches[: len(rates)]
    secs = [b / r for (b, _), r in zip(sizes, rates)]
    return {
        "s_per_iter": float(np.mean(secs)),
        "s_per_iter_each": [round(s, 3) for s in secs],
        "px_per_iter_each": [p for _, p in sizes],
        "items_per_iter": float(np.mean([b for b, _ in sizes])),
        "timed_iters": len(secs),
    }


class ListSource:
    """A BatchSource over a fixed list of batches (keys) of a dataset, for the pyramid sample."""

    def __init__(self, source: FullImageBatchSource, batches: list[list[tuple[int, bool]]]) -> None:
        self.source = source
        self.batches = batches

    def batches_per_epoch(self) -> int:
        return len(self.batches)

    def iterate(self, epoch: int, start: int):
        from torch.utils.data import DataLoader

        from sniper.data.full_image import collate_full_images

        return DataLoader(
            self.source.dataset, batch_sampler=self.batches[start:], collate_fn=collate_full_images
        )


def epoch_pixels(source: FullImageBatchSource) -> tuple[int, int, int]:
    """(batches, padded tensor pixels, content pixels) of epoch 0, from the plan (no decoding)."""
    ds = source.dataset
    tensor = content = 0
    batches = source.epoch_batches(0)
    for batch in batches:
        idx = np.array([i for i, _ in batch])
        w, h = ds.sizes[idx, 0], ds.sizes[idx, 1]
        H, W = -(-int(h.max()) // 32) * 32, -(-int(w.max()) // 32) * 32
        tensor += len(idx) * H * W
        content += int((w * h).sum())
    return len(batches), tensor, content


def fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
    ]
    return "\n".join(out)


def print_throughput(args, amp_runs: dict, mask_run: dict | None, amp_mode: str, amp_batch: int, weights: str) -> None:
    fp, am = amp_runs[False], amp_runs[True]
    rows = [["off (fp32)", "off", str(args.batch_size), f"{fp['chips_per_s']:.2f}", f"{fp['s_per_iter']:.2f}", str(fp["timed_iters"])],
            [f"on ({amp_mode})", "off", str(amp_batch), f"{am['chips_per_s']:.2f}", f"{am['s_per_iter']:.2f}", str(am["timed_iters"])]]  # fmt: skip
    if mask_run:
        rows.append(["off (fp32)", "on", str(args.batch_size), f"{mask_run['chips_per_s']:.2f}",
                     f"{mask_run['s_per_iter']:.2f}", str(mask_run["timed_iters"])])  # fmt: skip
    print(f"\n(a) training throughput, 512 px chips, data loading included ({weights})")
    print(table(["amp", "masks", "batch", "chips/s", "s/iter", "iters timed"], rows))
    if mask_run:
        print(f"masks on / off (fp32): {mask_run['chips_per_s'] / fp['chips_per_s']:.2f}x the chips/s")


# ---------------------------------------------------------------- main


def local_imagenet_weights() -> bool:
    from torchvision.models import MobileNet_V2_Weights

    url = MobileNet_V2_Weights.IMAGENET1K_V1.url
    hub = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return hub.is_file()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations and samples (< 3 min)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/syn"), help="a `sniper make-dataset` folder")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sniper_bench_train"))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--amp-batch", type=int, default=None, help="batch of the amp-on run (default 2, quick 1)"
    )
    ap.add_argument("--force-bf16", action="store_true", help="time bf16 autocast even without native bf16")
    ap.add_argument("--full-batch", type=int, default=2, help="batch of the timed whole-image iterations")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per case (after warm-up)")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed iterations per case")
    ap.add_argument("--max-pixels", type=float, default=None, help="largest pyramid item timed (MP)")
    ap.add_argument("--proposals", type=int, default=1000, help="random proposals per image for negatives")
    ap.add_argument("--no-masks", action="store_true", help="skip the chips/s row with instance masks")
    ap.add_argument("--chips-only", action="store_true", help="(a) only: no epoch times (b)")
    ap.add_argument("--out", type=Path, default=None, help="default results/train.json (train_chips.json with --chips-only)")
    args = ap.parse_args()
    args.out = args.out or ROOT / "benchmarks" / "results" / ("train_chips.json" if args.chips_only else "train.json")
    iters = args.iters or (2 if args.quick else 8)
    budget = args.budget or (10.0 if args.quick else 60.0)
    max_px = (args.max_pixels or (2.5 if args.quick else 4.0)) * 1e6
    pyramid_samples = 6 if args.quick else 9
    # bf16 autocast is several times slower than fp32 on CPUs without AVX512-BF16/AMX (~150 s for 2
    # chips here): the amp run uses a smaller batch so the benchmark stays within its time budget.
    amp_batch = args.amp_batch or (1 if args.quick else 2)
    started = time.perf_counter()
    load_start = os.getloadavg()

    cfg = Config()
    cfg.model.backbone = "mobilenet_v2"
    cfg.model.pretrained = local_imagenet_weights()
    cfg.train.batch_size = args.batch_size
    cfg.data.num_workers = args.workers
    ann, image_root = dataset(args.data, args.workdir, 40 if args.quick else 160)
    coco = load_coco(ann)
    torch.manual_seed(0)
    model = build_model(cfg.model, coco.num_classes)
    weights = "ImageNet (torchvision file on disk)" if cfg.model.pretrained else "random init"
    print(f"data {ann} ({len(coco)} train images), mobilenet_v2 {weights}, batch {args.batch_size}, "
          f"{args.workers} loader worker(s), torch threads {torch.get_num_threads()}", file=sys.stderr)  # fmt: skip

    # ---- SNIPER chips
    t0 = time.perf_counter()
    chips = chip_table(coco, cfg, args.proposals)
    chip_s = time.perf_counter() - t0
    chip_ds = ChipDataset.from_config(coco, chips, image_root, cfg)

    def chip_source(batch_size: int = args.batch_size, dataset: ChipDataset = chip_ds) -> ChipBatchSource:
        sampler = ChipBatchSampler(
            chips, batch_size, seed=cfg.seed, negatives=True, neg_per_image=cfg.chips.neg_per_image,
            num_workers=args.workers,
        )  # fmt: skip
        return ChipBatchSource(dataset, sampler, num_workers=args.workers)

    src = chip_source()
    plan = src.sampler.plan(0)
    n_chips = len(plan)
    n_pos = int((~chips.is_neg[plan.index]).sum())
    content = chips.boxes[plan.index]
    chip_w = np.minimum(
        np.rint((content[:, 2] - content[:, 0]) * chips.scale[plan.index]), cfg.chips.chip_size
    )
    chip_h = np.minimum(
        np.rint((content[:, 3] - content[:, 1]) * chips.scale[plan.index]), cfg.chips.chip_size
    )
    sniper_px = {"tensor": n_chips * cfg.chips.chip_size**2, "content": int((chip_w * chip_h).sum())}
    sniper_iters = src.batches_per_epoch()
    print(
        f"chips: {n_pos} positive + {n_chips - n_pos} negative in epoch 0 ({chip_s:.1f} s to compute)",
        file=sys.stderr,
    )

    # Without native bf16 the trainer turns train.amp off (fp32); --force-bf16 times emulated bf16 anyway.
    native_bf16 = train_engine._cpu_has_bf16()
    if args.force_bf16:
        train_engine._cpu_has_bf16 = lambda: True
    amp_mode = "bf16 autocast" if native_bf16 or args.force_bf16 else "falls back to fp32: no native bf16"
    amp_runs = {}
    for amp in (False, True):
        if amp and not (native_bf16 or args.force_bf16):
            amp_runs[amp] = {**amp_runs[False], "fallback_to_fp32": True}
            amp_batch = args.batch_size
            continue
        print(f"(a) chips, amp={amp} ...", file=sys.stderr)
        amp_runs[amp] = measure(
            model, chip_source(amp_batch if amp else args.batch_size), cfg, iters, amp, budget
        )
        amp_runs[amp]["chips_per_s"] = amp_runs[amp]["items_per_iter"] / amp_runs[amp]["s_per_iter"]
        print(f"  {amp_runs[amp]['s_per_iter']:.2f} s/iter", file=sys.stderr)

    mask_run = None
    if not args.no_masks:
        print("(a) chips with instance masks, amp=False ...", file=sys.stderr)
        mask_cfg = copy.deepcopy(cfg)
        mask_cfg.model.masks = True
        mask_coco = load_coco(ann, masks=True)
        n_segs = sum(s is not None for i in range(len(mask_coco)) for s in mask_coco.annotations_at(i).segmentations)
        if n_segs == 0:
            raise SystemExit(f"{ann} has no segmentations: regenerate it with `sniper make-dataset` for the masks row")
        torch.manual_seed(0)  # the box modules are built first: the same initial box weights as above
        mask_model = build_model(mask_cfg.model, mask_coco.num_classes)
        mask_ds = ChipDataset.from_config(mask_coco, chips, image_root, mask_cfg)
        mask_run = measure(mask_model, chip_source(dataset=mask_ds), mask_cfg, iters, False, budget)
        mask_run["chips_per_s"] = mask_run["items_per_iter"] / mask_run["s_per_iter"]
        mask_run["segmentations"] = n_segs
        print(f"  {mask_run['s_per_iter']:.2f} s/iter", file=sys.stderr)
        del mask_model, mask_ds

    head = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "load_avg_start": load_start},
        "settings": {"backbone": "mobilenet_v2", "weights": weights, "batch_size": args.batch_size,
                     "loader_workers": args.workers, "amp_batch": amp_batch, "amp_mode": amp_mode, "max_timed_iters": iters, "warmup_iters": 1,
                     "budget_s_per_case": budget, "chips_only": args.chips_only,
                     "quick": args.quick, "data": str(ann), "train_images": len(coco),
                     "negatives": f"{cfg.chips.neg_per_image}/image from {args.proposals} random boxes (not RPN)",
                     "chips": to_dict(cfg.chips)},
        "throughput": {**{("amp" if k else "fp32"): v for k, v in amp_runs.items()},
                       **({"fp32_masks": mask_run} if mask_run else {})},
    }  # fmt: skip
    if args.chips_only:
        results = {**head, "seconds": time.perf_counter() - started, "load_avg_end": os.getloadavg()}
        atomic_write_json(args.out, results)
        print_throughput(args, amp_runs, mask_run, amp_mode, amp_batch, weights)
        print(f"total {results['seconds']:.0f} s; load average {load_start[0]:.1f} at start, "
              f"{results['load_avg_end'][0]:.1f} at end ({os.cpu_count()} cpus); wrote {args.out}")  # fmt: skip
        return 0

    # ---- single scale 800 x 1333
    print("(b) single scale 800x1333 ...", file=sys.stderr)
    single_ds = FullImageDataset(coco, image_root, SINGLE_SCALE, cfg.data)
    single_src = FullImageBatchSource(single_ds, args.batch_size, seed=cfg.seed, num_workers=args.workers)
    single_iters, single_tensor, single_content = epoch_pixels(single_src)
    # Measured at --full-batch (8 whole images at 800x1333 need ~10 GB): time per image x batch size.
    small_src = FullImageBatchSource(single_ds, args.full_batch, seed=cfg.seed, num_workers=args.workers)
    single = measure(model, small_src, cfg, iters, amp=False, budget_s=budget)
    single["s_per_iter_batch"] = single["s_per_iter"] / single["items_per_iter"] * args.batch_size
    print(f"  {single['s_per_iter']:.2f} s/iter at batch {args.full_batch}", file=sys.stderr)

    # ---- pyramid: per-item times on a sample, fitted against pixels
    print("(b) pyramid sample ...", file=sys.stderr)
    pyr_ds = FullImageDataset(coco, image_root, cfg.chips.scales, cfg.data)
    pyr_src = FullImageBatchSource(pyr_ds, args.batch_size, seed=cfg.seed, num_workers=args.workers)
    pyr_iters, pyr_tensor, pyr_content = epoch_pixels(pyr_src)
    px = pyr_ds.pixels()
    sample = []
    for s in range(len(cfg.chips.scales)):  # the sample spans the scales (and sizes below the cap)
        cand = np.flatnonzero((np.arange(len(pyr_ds)) % len(cfg.chips.scales) == s) & (px <= max_px))
        if len(cand):
            order = np.argsort(px[cand])
            picks = cand[
                order[np.linspace(0, len(cand) - 1, max(1, pyramid_samples // 3)).round().astype(int)]
            ]
            sample += [int(i) for i in picks]
    # Smallest, largest, 2nd smallest, ...: the warm-up is cheap and a budget cut keeps the span.
    by_px = sorted(set(sample), key=lambda i: px[i])
    sample = [by_px[(k // 2) if k % 2 == 0 else -(k // 2) - 1] for k in range(len(by_px))]
    pyr_list = ListSource(pyr_src, [[(i, False)] for i in sample])
    pyr = measure(model, pyr_list, cfg, len(sample), amp=False, budget_s=budget)
    x = np.array(pyr["px_per_iter_each"], dtype=np.float64)
    y = np.array(pyr["s_per_iter_each"], dtype=np.float64)
    if len(set(x.tolist())) >= 2:
        b, a = np.polyfit(x, y, 1)
    else:  # one point: proportional to pixels
        a, b = 0.0, float(y.mean() / x.mean())
    n_items = len(pyr_ds)
    pyr_epoch_s = n_items * a + b * pyr_tensor
    # Check: the same line's prediction for a single-scale batch, against the measured time.
    single_pred = a * single["items_per_iter"] + b * float(np.mean(single["px_per_iter_each"]))

    sniper_epoch = sniper_iters * amp_runs[False]["s_per_iter"]
    single_epoch = len(single_ds) * single["s_per_iter"] / single["items_per_iter"]
    results = {
        **head,
        "epoch": {
            "sniper": {"chips": n_chips, "positive": n_pos, "iters": sniper_iters,
                       "s_per_iter": amp_runs[False]["s_per_iter"], "epoch_s": sniper_epoch,
                       "px_tensor": sniper_px["tensor"], "px_content": sniper_px["content"], "how": "measured"},
            "pyramid": {"items": n_items, "iters": pyr_iters, "epoch_s": pyr_epoch_s,
                        "px_tensor": pyr_tensor, "px_content": pyr_content,
                        "how": "extrapolated: s = a + b*px fitted on items timed one per iteration",
                        "fit": {"a_s": a, "b_s_per_mp": b * 1e6}, "sample": pyr},
            "single_800x1333": {"items": len(single_ds), "iters": single_iters, "s_per_iter": single["s_per_iter_batch"],
                                "measured_at_batch": args.full_batch,
                                "epoch_s": single_epoch, "px_tensor": single_tensor, "px_content": single_content,
                                "how": "measured", "fit_prediction_s_per_iter": single_pred, "runs": single},
        },
        "ratios": {
            "pyramid_over_sniper_px_tensor": pyr_tensor / sniper_px["tensor"],
            "pyramid_over_sniper_px_content": pyr_content / sniper_px["content"],
            "sniper_over_pyramid_px_tensor": sniper_px["tensor"] / pyr_tensor,
            "pyramid_over_sniper_epoch_time": pyr_epoch_s / sniper_epoch,
        },
        "seconds": time.perf_counter() - started,
        "load_avg_end": os.getloadavg(),
    }  # fmt: skip
    atomic_write_json(args.out, results)

    print_throughput(args, amp_runs, mask_run, amp_mode, amp_batch, weights)
    print(
        f"\n(b) one epoch over {len(coco)} synthetic train images, batch {args.batch_size}, fp32, data loading included"
    )
    e = results["epoch"]
    print(table(
        ["training on", "items", "iters", "s/iter", "epoch", "MP in (tensor)", "MP content", "how"],
        [["SNIPER chips (pos + 2 neg/img)", f"{n_chips}", f"{sniper_iters}", f"{e['sniper']['s_per_iter']:.2f}",
          fmt_s(sniper_epoch), f"{sniper_px['tensor'] / 1e6:.0f}", f"{sniper_px['content'] / 1e6:.0f}", "measured"],
         ["full pyramid (3 scales)", f"{n_items}", f"{pyr_iters}", f"{pyr_epoch_s / pyr_iters:.2f}",
          fmt_s(pyr_epoch_s), f"{pyr_tensor / 1e6:.0f}", f"{pyr_content / 1e6:.0f}", "extrapolated (px fit)"],
         ["single scale 800x1333", f"{len(single_ds)}", f"{single_iters}", f"{single['s_per_iter_batch']:.2f}",
          fmt_s(single_epoch), f"{single_tensor / 1e6:.0f}", f"{single_content / 1e6:.0f}", f"measured at batch {args.full_batch}, x{args.batch_size / args.full_batch:g}"]],
    ))  # fmt: skip
    r = results["ratios"]
    print(f"\npixels SNIPER / pyramid: {1 / r['pyramid_over_sniper_px_tensor']:.3f} of network input "
          f"(pyramid {r['pyramid_over_sniper_px_tensor']:.1f}x more), {1 / r['pyramid_over_sniper_px_content']:.3f} "
          f"of image content (pyramid {r['pyramid_over_sniper_px_content']:.1f}x more); paper: ~3x fewer")  # fmt: skip
    print(f"epoch time pyramid / SNIPER: {r['pyramid_over_sniper_epoch_time']:.1f}x")
    print(f"pyramid fit: s = {a:.3f} + {b * 1e6:.3f} * MP over {len(x)} items of {x.min() / 1e6:.2f}-{x.max() / 1e6:.2f} MP "
          f"(largest pyramid item {px.max() / 1e6:.1f} MP); predicts {single_pred:.2f} s for a "
          f"single-scale batch of {args.full_batch}, measured {single['s_per_iter']:.2f} s")  # fmt: skip
    print(f"negatives: mined from {args.proposals} random boxes per image (stand-ins for RPN proposals)")
    la0, la1 = results["machine"]["load_avg_start"][0], results["load_avg_end"][0]
    print(f"total {results['seconds']:.0f} s; load average {la0:.1f} at start, {la1:.1f} at end "
          f"({os.cpu_count()} cpus); wrote {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
