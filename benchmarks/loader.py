"""Data-loading speed: chips/s of a DataLoader over ``ChipDataset`` with 0, 1 and 2 workers,
without and with instance masks, and the memory of cropping masks into chips.

    .venv/bin/python benchmarks/loader.py [--batch-size 16] [--max-chips 640] [--workdir /tmp/sniper_bench_loader]
        [--mix 1 4 8]      # data.mix_images: chips of N consecutive images shuffled together
        [--masks off on]   # chips without / with box-local 56 x 56 masks (model.masks)
        [--no-crop]        # skip the mask-cropping memory table

Cases (paper scales x3 / x1.667 / longest 512, K = 512, stride 32, flips on):

- synthetic: ``sniper make-dataset`` images (600-2000 px JPEGs, train split), epoch 0 chips.
- large: 10 generated 4000 x 3000 JPEGs with 150 small objects each (8-64 px polygons of
  12-40 vertices; most of the chips are at x3, so every decode must serve many chips).

Masks "on" loads the segmentations (``load_coco(..., masks=True)``) and gives every chip's valid
GT its 56 x 56 box-local mask (``ChipDataset(masks=56)``, what ``model.masks`` trains on): RLE
on the synthetic case (what ``sniper make-dataset`` writes), polygons on the large one.

Mask cropping memory (``--no-crop`` skips it): one 4000 x 3000 image with 500 polygon objects
(8-1000 px, 16-200 vertices), the chip engine's epoch-0 chips of it, and every chip's targets
computed with and without masks (no pixels decoded), once with the objects as polygons and
once as compressed RLE. Peak is tracemalloc's (Python + numpy allocations) over all of the
chips; for scale, one image-sized uint8 mask is 12 MB, which is what rasterising each object at
image size (pycocotools ``annToMask``) allocates per object.

Chips/s counts the items of the batches after the first one (worker start-up and the first
decode excluded; ``first_batch_s`` shows that separately). ``CPU ms/chip`` is the CPU time of
the main process and its workers per chip over the same stretch: unlike chips/s it does not
depend on what else runs on the machine (``2 cores / CPU per chip`` bounds the throughput of
an idle 2-core machine). Peak memory is the largest, over samples every 200 ms, of the main process's
RSS plus each worker's anonymous + shared-memory resident pages (libraries mapped by the
workers are the main process's pages and are not counted twice). The machine may be shared: the load average is recorded with the results. Prints a table and writes
``benchmarks/results/loader.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sniper.chips import chips_columns, epoch_pool
from sniper.config import Config
from sniper.data.chip_dataset import ChipBatchSource, ChipDataset
from sniper.data.chip_table import ChipTable
from sniper.data.coco import load_coco
from sniper.data.epoch_plan import ChipBatchSampler

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"synthetic": 150.0, "large": 40.0}  # chips/s with 2 workers on a 2-core machine


# ---------------------------------------------------------------- data


def synthetic_data(workdir: Path) -> tuple[Path, Path]:
    from sniper.data.synthetic import make_dataset

    out = workdir / "synthetic"
    if not (out / "train.json").is_file():
        make_dataset(out, images=40, seed=0, progress=True)
    return out / "train.json", out / "images"


def star_polygon(rng: np.random.Generator, cx: float, cy: float, r: float, vertices: int) -> np.ndarray:
    """A star-shaped ``(vertices, 2)`` polygon of mean radius ``r`` around (cx, cy)."""
    ang = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    rad = r * rng.uniform(0.55, 1.0, vertices)
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)


def large_data(workdir: Path, n_images: int = 10, objects: int = 150) -> tuple[Path, Path]:
    out = workdir / "large-polygons"
    ann = out / "train.json"
    if ann.is_file():
        return ann, out / "images"
    (out / "images").mkdir(parents=True, exist_ok=True)
    W, H = 4000, 3000
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i in range(n_images):
        # a cheap textured background: a small random image upsampled, plus noise
        base = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).resize(
            (W, H), Image.BILINEAR
        )
        arr = np.asarray(base).copy()
        arr += rng.integers(0, 20, (H, W, 1), dtype=np.uint8)
        picture = Image.fromarray(arr)
        draw = ImageDraw.Draw(picture)
        for _ in range(objects):
            s = float(np.exp(rng.uniform(np.log(8), np.log(64))))
            poly = star_polygon(rng, rng.uniform(s, W - s), rng.uniform(s, H - s), s / 2, int(rng.integers(12, 41)))
            draw.polygon([tuple(p) for p in poly.tolist()], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
            (x1, y1), (x2, y2) = poly.min(0), poly.max(0)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 4)),
                         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "iscrowd": 0,
                         "segmentation": [poly.round(2).ravel().tolist()]})  # fmt: skip
        name = f"{i:03d}.jpg"
        picture.save(out / "images" / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
        print(f"large: wrote {name}", file=sys.stderr)
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann, out / "images"


def chip_table(coco, cfg: Config) -> ChipTable:
    """Epoch-0 positive chips (what `sniper chips` writes; no proposals, so no negatives)."""
    parts = []
    for i, rec in enumerate(coco.images):
        a = coco.annotations_at(i)
        parts += epoch_pool(
            rec.id, a.boxes, rec.width, rec.height, cfg.chips, iscrowd=a.iscrowd, seed=0, epoch=0
        )
    cols = chips_columns(parts)
    cols["kind"] = np.asarray(cols["kind"]).astype(str)
    return ChipTable.from_columns(cols)


def crop_scene(objects: int = 500, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(polygon annotations, the same objects as compressed RLE) of one 4000 x 3000 image."""
    from pycocotools import mask as mask_utils

    W, H = 4000, 3000
    rng = np.random.default_rng(seed)
    polys, rles = [], []
    for k in range(objects):
        r = float(np.exp(rng.uniform(np.log(4), np.log(500))))
        poly = star_polygon(rng, rng.uniform(r, W - r), rng.uniform(r, H - r), r, int(rng.integers(16, 201)))
        (x1, y1), (x2, y2) = poly.min(0), poly.max(0)
        ann = {"id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
               "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}  # fmt: skip
        flat = poly.ravel().tolist()
        polys.append({**ann, "segmentation": [flat]})
        rle = mask_utils.merge(mask_utils.frPyObjects([flat], H, W))
        rles.append({**ann, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return polys, rles


def _reset_peak_rss() -> int | None:
    """Resets this process's peak RSS (VmHWM) to its current RSS; returns that RSS in kB (None
    where /proc/self/clear_refs is not writable). C allocations tracemalloc cannot see count here."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _status_kb(os.getpid(), ("VmRSS",))


def crop_memory(workdir: Path, cfg: Config, objects: int = 500) -> list[dict]:
    """Targets of every epoch-0 chip of one 4000 x 3000 image with ``objects`` objects, without
    and with 56 x 56 masks, the objects as polygons and as RLE: seconds and tracemalloc peak."""
    polys, rles = crop_scene(objects)
    image = {"id": 1, "file_name": "none.jpg", "width": 4000, "height": 3000}
    rows = []
    for kind, anns in (("polygons", polys), ("RLE", rles)):
        path = workdir / f"crop-{kind}.json"
        path.write_text(json.dumps({"images": [image], "annotations": anns, "categories": [{"id": 1, "name": "o"}]}))
        coco = load_coco(path, masks=True)
        table = chip_table(coco, cfg)
        for masks in (None, 56):
            ds = ChipDataset(coco, table, workdir, cfg.chips, cfg.data, masks=masks)
            ds.target(0)  # imports and first-call allocations outside the measurement
            ds.mask_cache.clear()  # the RLE crops decoded above are measured too
            rss0 = _reset_peak_rss()
            tracemalloc.start()
            t0 = time.perf_counter()
            cropped = 0
            try:
                for i in range(len(table)):
                    t = ds.target(i)
                    cropped += len(t["masks"]) if masks else 0
                seconds = time.perf_counter() - t0
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            hwm = _status_kb(os.getpid(), ("VmHWM",))
            rows.append({"segmentation": kind, "masks": masks is not None, "chips": len(table),
                         "masks_cropped": cropped, "ms_per_chip": 1e3 * seconds / len(table),
                         "peak_mb": peak / 2**20,
                         "rss_growth_mb": None if rss0 is None else max(0, hwm - rss0) / 1024})  # fmt: skip
    return rows


# ---------------------------------------------------------------- measuring


def _status_kb(pid: int, keys: tuple[str, ...]) -> int:
    """Sum of the given ``/proc/PID/status`` fields (kB); cheap enough to sample often, unlike
    ``smaps_rollup``, whose page-table walk slowed the measured loader down several-fold."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name = line.split(":", 1)[0]
                if name in keys:
                    total += int(line.split()[1])
    except OSError:
        pass
    return total


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


class ProcessMonitor:
    """Peak memory of this process + its children, and the children's CPU seconds (sampled)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_kb = 0
        self.child_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        me = os.getpid()
        kids = _children(me)
        # main: all resident pages; workers: their private (anonymous) and shared-memory pages, since
        # the libraries they map are the main process's pages (counting them again would double them)
        worker_kb = sum(_status_kb(c, ("RssAnon", "RssShmem")) for c in kids)
        self.peak_kb = max(self.peak_kb, _status_kb(me, ("VmRSS",)) + worker_kb)
        for c in kids:
            self.child_cpu[c] = max(self.child_cpu.get(c, 0.0), _cpu_s(c))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self) -> ProcessMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    dataset: ChipDataset,
    table: ChipTable,
    workers: int,
    batch_size: int,
    max_chips: int,
    mix: int = 1,
) -> dict:
    sampler = ChipBatchSampler(table, batch_size, seed=0, num_workers=workers, mix_images=mix)
    source = ChipBatchSource(dataset, sampler, num_workers=workers)
    n = first = 0
    t_first = None
    with ProcessMonitor() as mon:
        start = time.perf_counter()
        cpu0 = time.process_time()
        for images, _targets in source.iterate(0, 0):
            if t_first is None:
                t_first = time.perf_counter()
                first = images.shape[0]
                mon.sample()
                cpu_first = time.process_time() - cpu0 + sum(mon.child_cpu.values())
            else:
                n += images.shape[0]
            if n + first >= max_chips:
                break
        end = time.perf_counter()
        mon.sample()
        cpu = time.process_time() - cpu0 + sum(mon.child_cpu.values())
    del source
    return {
        "workers": workers,
        "mix_images": mix,
        "masks": dataset.masks is not None,
        "chips": n + first,
        "chips_per_s": n / max(end - t_first, 1e-9),
        "cpu_ms_per_chip": 1e3 * (cpu - cpu_first) / max(n, 1),  # main + workers, after the first batch
        "first_batch_s": t_first - start,
        "seconds": end - start,
        "peak_mem_mb": mon.peak_kb / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--max-chips", type=int, default=640, help="chips per measurement (after the first batch)"
    )
    ap.add_argument("--workdir", default="/tmp/sniper_bench_loader")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cases", nargs="+", default=["synthetic", "large"])
    ap.add_argument(
        "--mix", type=int, nargs="+", default=[1], help="data.mix_images values (chips of N images shuffled together)"
    )
    ap.add_argument(
        "--masks", nargs="+", choices=["off", "on"], default=["off", "on"],
        help="chips without (off) and with (on) 56 x 56 box-local instance masks",
    )  # fmt: skip
    ap.add_argument("--no-crop", action="store_true", help="skip the mask-cropping memory table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_start": os.getloadavg()},
        "settings": {"batch_size": args.batch_size, "max_chips": args.max_chips, "chip_size": cfg.chips.chip_size,
                     "image_cache_size": cfg.data.image_cache_size, "image_cache_pixels": cfg.data.image_cache_pixels},
        "targets_chips_per_s_2_workers": TARGETS,
        "cases": {},
    }  # fmt: skip
    rows = []
    for case in args.cases:
        ann, images = synthetic_data(workdir) if case == "synthetic" else large_data(workdir)
        coco = load_coco(ann, masks="on" in args.masks)
        table = chip_table(coco, cfg)
        info = {
            "images": len(coco),
            "chips": len(table),
            "chips_per_image": len(table) / max(1, len(coco)),
            "runs": [],
        }
        for mix in args.mix:
            for w in args.workers:
                for m in args.masks:  # side by side, so that load changes hit both alike
                    ds = ChipDataset(coco, table, images, cfg.chips, replace(cfg.data, mix_images=mix),
                                     masks=56 if m == "on" else None)  # fmt: skip
                    r = measure(ds, table, w, args.batch_size, args.max_chips, mix)
                    info["runs"].append(r)
                    target = TARGETS[case] if w == 2 else None
                    rows.append((case, w, r, target))
                    print(f"{case:9s} workers={w} mix={mix} masks={m}: {r['chips_per_s']:7.1f} chips/s, {r['cpu_ms_per_chip']:.1f} CPU ms/chip, peak mem {r['peak_mem_mb']:.0f} MB",
                          file=sys.stderr)  # fmt: skip
        results["cases"][case] = info
    if not args.no_crop:
        print("mask cropping memory ...", file=sys.stderr)
        results["mask_crop_4000x3000_500_objects"] = crop_memory(workdir, cfg)
    results["machine"]["load_avg_end"] = os.getloadavg()

    head = (
        f"{'case':10s} {'workers':>7s} {'mix':>4s} {'masks':>5s} {'chips':>6s} {'chips/s':>8s} {'target':>7s} {'CPU ms/chip':>11s} "
        f"{'first batch s':>13s} {'peak mem MB':>11s}"
    )
    print(head)
    print("-" * len(head))
    for case, w, r, target in rows:
        t = f"{target:.0f}" if target else "-"
        ok = "" if target is None else ("  ok" if r["chips_per_s"] >= target else "  BELOW")
        print(f"{case:10s} {w:7d} {r['mix_images']:4d} {'on' if r['masks'] else 'off':>5s} {r['chips']:6d} {r['chips_per_s']:8.1f} {t:>7s} {r['cpu_ms_per_chip']:11.1f} "
              f"{r['first_batch_s']:13.2f} {r['peak_mem_mb']:11.0f}{ok}")  # fmt: skip
    for case, info in results["cases"].items():
        print(
            f"{case}: {info['images']} images, {info['chips']} chips ({info['chips_per_image']:.1f} / image)"
        )
    crop = results.get("mask_crop_4000x3000_500_objects")
    if crop:
        print("\nmask cropping, one 4000 x 3000 image, 500 objects, every epoch-0 chip's targets (no pixels):")
        head = (f"{'segmentation':12s} {'masks':>5s} {'chips':>6s} {'masks cropped':>13s} {'ms/chip':>8s} "
                f"{'peak MB':>8s} {'RSS peak growth MB':>18s}")  # fmt: skip
        print(head)
        print("-" * len(head))
        for r in crop:
            print(f"{r['segmentation']:12s} {'on' if r['masks'] else 'off':>5s} {r['chips']:6d} {r['masks_cropped']:13d} "
                  f"{r['ms_per_chip']:8.2f} {r['peak_mb']:8.2f} {'-' if r['rss_growth_mb'] is None else format(r['rss_growth_mb'], '18.2f')}")  # fmt: skip
        print("(peak MB: tracemalloc, Python + numpy; RSS peak growth: the process's peak RSS over its RSS before;"
              " one image-sized uint8 mask is 11.4 MB)")  # fmt: skip
    la = results["machine"]
    print(
        f"load average: start {la['load_avg_start'][0]:.2f}, end {la['load_avg_end'][0]:.2f} on {la['cpus']} cpus"
    )
    out = ROOT / "benchmarks" / "results" / "loader.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
