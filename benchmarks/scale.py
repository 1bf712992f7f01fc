"""OpenImages scale: load and mine a synthetic COCO file of OpenImagesV4's size, no pixels.

    .venv/bin/python benchmarks/scale.py [--images 1743042] [--work /tmp/sniper_scale] [--workers 2]
        [--shard-images 10000] [--out benchmarks/results/scale.json]

The paper pre-trains on OpenImagesV4: 1,743,042 images, 14.6M boxes. This generates (once,
cached in ``--work``) a COCO instances file of ``--images`` images with about 8.4 boxes each
(a negative binomial count, at least 1; sqrt-area log-uniform from 8 px to the whole image,
log-normal aspect, so many small boxes and a few large; 3 % crowd; 600 categories, Zipf-like),
images about 1024 px on the long side in the usual aspect ratios, written streamingly (never
the whole file in memory), plus a subset of its first tenth of the images. Then each phase
runs in a child process of its own, so peak RSS (``VmHWM`` of ``/proc/<pid>/status``) is that
phase's:

- ``load``: ``sniper.data.coco.load_coco(path)``, once with an empty annotation cache
  (``SNIPER_CACHE=<work>/cache``), once more in a fresh process (the cached load, when the
  loader caches).
- ``json``: a plain ``json.load`` of the 1/10 subset; its peak above the interpreter's, times
  the size ratio, is the **extrapolated** peak of a ``json.load`` of the whole file (not run:
  it could exceed the machine's memory).
- ``mine``: ``write_chip_shards`` with ``--workers`` processes and the default config's chip
  settings (``Config().chips``; no proposals, so positive chips only) into a fresh folder:
  images/s, wall and CPU seconds, peak RSS of the main process (it holds the loaded dataset)
  and of the largest worker (sampled every 0.2 s), rows and bytes on disk.

Goal: the whole set loaded (first, uncached load) and mined in under 15 minutes, peak RSS
under 6 GB (the largest process; the sampled peak of main + workers together is judged too).
On a shared machine wall times depend on the load (recorded); CPU seconds do not. Prints a table and
writes ``benchmarks/results/scale.json``. Use ``--images 50000`` for a quick run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPENIMAGES_V4 = {"images": 1_743_042, "boxes": 14_610_229}
GOAL_S = 15 * 60
GOAL_RSS_MB = 6 * 1024
GEN_VERSION = 1
CHUNK = 20_000  # images generated and written at a time
N_CATEGORIES = 600


# ---------------------------------------------------------------- generation


def _paths(work: Path, n: int) -> dict[str, Path]:
    stem = f"openimages_like_{n}"
    return {
        "full": work / f"{stem}.json",
        "subset": work / f"{stem}_sub10.json",
        "meta": work / f"{stem}.meta.json",
    }


def _image_sizes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 0])
    long = np.where(rng.random(n) < 0.8, 1024, rng.integers(640, 1601, n))
    aspect = rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0, 5 / 4], size=n, p=[0.45, 0.2, 0.15, 0.1, 0.1])
    aspect = aspect * np.exp(rng.normal(0, 0.03, n))
    short = np.maximum(np.round(long / aspect), 64).astype(np.int64)
    landscape = rng.random(n) < 0.75
    return np.where(landscape, long, short), np.where(landscape, short, long)


def _box_counts(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 1])
    mean_extra = 7.4  # 1 + 7.4 = 8.4 boxes per image on average (OpenImagesV4: 14.6M / 1.74M)
    return np.minimum(1 + rng.negative_binomial(1.0, 1 / (1 + mean_extra), n), 500)


def _annotation_chunk(
    seed: int, chunk: int, first_image: int, counts: np.ndarray, w: np.ndarray, h: np.ndarray, first_id: int
) -> str:
    rng = np.random.default_rng([seed, 2, chunk])
    img = np.repeat(np.arange(len(counts)), counts)
    m = len(img)
    iw, ih = w[img].astype(np.float64), h[img].astype(np.float64)
    side = np.exp(rng.uniform(np.log(8.0), np.log(np.sqrt(iw * ih))))
    ratio = np.exp(rng.normal(0.0, 0.6, m))
    bw = np.clip(side * np.sqrt(ratio), 1.0, iw)
    bh = np.clip(side / np.sqrt(ratio), 1.0, ih)
    x = rng.random(m) * (iw - bw)
    y = rng.random(m) * (ih - bh)
    weights = 1.0 / (np.arange(N_CATEGORIES) + 5.0)
    cat = rng.choice(N_CATEGORIES, size=m, p=weights / weights.sum()) + 1
    crowd = (rng.random(m) < 0.03).astype(np.int64)
    rows = zip(
        range(first_id, first_id + m),
        (img + first_image + 1).tolist(),
        cat.tolist(),
        np.round(x, 1).tolist(),
        np.round(y, 1).tolist(),
        np.round(bw, 1).tolist(),
        np.round(bh, 1).tolist(),
        np.round(bw * bh, 1).tolist(),
        crowd.tolist(),
    )
    return ",\n".join(
        f'{{"id":{a},"image_id":{i},"category_id":{c},"bbox":[{x1},{y1},{ww},{hh}],"area":{ar},"iscrowd":{cr}}}'
        for a, i, c, x1, y1, ww, hh, ar, cr in rows
    )


def generate(work: Path, n: int, seed: int = 0) -> dict:
    """Write (or find cached) the full file and its 1/10 subset; return their description."""
    from sniper.io import atomic_open, atomic_write_json

    paths = _paths(work, n)
    want = {"version": GEN_VERSION, "images": n, "seed": seed}
    if paths["meta"].is_file() and paths["full"].is_file() and paths["subset"].is_file():
        meta = json.loads(paths["meta"].read_text())
        if {k: meta.get(k) for k in want} == want and meta.get("bytes") == paths["full"].stat().st_size:
            return {**meta, "cached": True}
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    w, h = _image_sizes(n, seed)
    counts = _box_counts(n, seed)
    n_sub = max(1, n // 10)
    cats = ",\n".join(f'{{"id":{i},"name":"class_{i}"}}' for i in range(1, N_CATEGORIES + 1))
    head = f'{{"info":{{"description":"synthetic, OpenImagesV4-sized","images":{n}}},\n"categories":[\n{cats}],\n'
    boxes = crowd = 0
    with atomic_open(paths["full"]) as f, atomic_open(paths["subset"]) as g:
        f.write(head + '"images":[\n')
        g.write(head + '"images":[\n')
        for c, a in enumerate(range(0, n, CHUNK)):
            b = min(n, a + CHUNK)
            text = ",\n".join(
                f'{{"id":{i + 1},"file_name":"{i + 1:016x}.jpg","width":{ww},"height":{hh}}}'
                for i, ww, hh in zip(range(a, b), w[a:b].tolist(), h[a:b].tolist())
            )
            f.write(("," if c else "") + text)
            if a < n_sub:
                k = min(b, n_sub) - a
                g.write(("," if c else "") + (text if b <= n_sub else ",\n".join(text.split(",\n")[:k])))
        f.write('],\n"annotations":[\n')
        g.write('],\n"annotations":[\n')
        ann_id = 1
        for c, a in enumerate(range(0, n, CHUNK)):
            b = min(n, a + CHUNK)
            text = _annotation_chunk(seed, c, a, counts[a:b], w[a:b], h[a:b], ann_id)
            m = int(counts[a:b].sum())
            boxes += m
            crowd += text.count('"iscrowd":1')
            f.write(("," if c else "") + text)
            if a < n_sub:
                k = int(counts[a : min(b, n_sub)].sum())
                g.write(("," if c else "") + (text if b <= n_sub else ",\n".join(text.split(",\n")[:k])))
            ann_id += m
        f.write("]}\n")
        g.write("]}\n")
    meta = {
        **want,
        "boxes": boxes,
        "boxes_per_image": round(boxes / n, 3),
        "crowd_fraction": round(crowd / max(boxes, 1), 4),
        "subset_images": n_sub,
        "subset_boxes": int(counts[:n_sub].sum()),
        "bytes": paths["full"].stat().st_size,
        "subset_bytes": paths["subset"].stat().st_size,
        "generate_s": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(paths["meta"], meta)
    return {**meta, "cached": False}


# ---------------------------------------------------------------- phases (each in a child process)


def _status_mb(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, MB; {} when it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def _rss_mb() -> float:
    return _status_mb().get("VmRSS", float("nan"))


def _peak_mb() -> float:
    """This process's peak RSS. Not ``ru_maxrss``: after fork + exec that starts at the
    parent's peak (the kernel carries the old memory map's high-water mark over exec)."""
    return _status_mb().get("VmHWM", float("nan"))


class _ChildMemory(threading.Thread):
    """Samples, every 0.2 s, the peak RSS (VmHWM) of each child process (the pool's workers)
    and the sum of the RSS of this process and its children."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.halt = threading.Event()
        self.peak: dict[int, float] = {}
        self.peak_sum = 0.0

    def sample(self) -> None:
        kids: set[int] = set()
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                kids.update(int(x) for x in (task / "children").read_text().split())
        total = _rss_mb()
        for pid in kids:
            st = _status_mb(pid)
            if st:
                self.peak[pid] = max(self.peak.get(pid, 0.0), st.get("VmHWM", 0.0))
                total += st.get("VmRSS", 0.0)
        self.peak_sum = max(self.peak_sum, total)

    def run(self) -> None:
        while not self.halt.wait(0.2):
            self.sample()


def _cpu_s(who: int) -> float:  # RUSAGE_CHILDREN: the children waited for (the pool's workers)
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def phase_load(args: argparse.Namespace) -> dict:
    from sniper.data.coco import load_coco

    path = _paths(Path(args.work), args.images)["full"]
    base = _rss_mb()
    t0 = time.perf_counter()
    ds = load_coco(path)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "cpu_s": _cpu_s(resource.RUSAGE_SELF),
        "peak_rss_mb": _peak_mb(),
        "rss_before_mb": base,
        "rss_after_mb": _rss_mb(),
        "images": len(ds),
        "annotations": int(ds.num_annotations),
    }


def phase_json(args: argparse.Namespace) -> dict:
    path = _paths(Path(args.work), args.images)["subset"]
    base = _rss_mb()
    t0 = time.perf_counter()
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "peak_rss_mb": _peak_mb(),
        "rss_before_mb": base,
        "images": len(data["images"]),
        "annotations": len(data["annotations"]),
    }


def phase_mine(args: argparse.Namespace) -> dict:
    from sniper.config import Config
    from sniper.data.chip_table import dataset_fingerprint, write_chip_shards
    from sniper.data.coco import load_coco

    work = Path(args.work)
    t0 = time.perf_counter()
    ds = load_coco(_paths(work, args.images)["full"])
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    t0 = time.perf_counter()
    dataset_fingerprint(ds)
    fingerprint_s = time.perf_counter() - t0
    out = work / f"chips_{args.images}"
    shutil.rmtree(out, ignore_errors=True)
    cpu0 = _cpu_s(resource.RUSAGE_SELF)
    memory = _ChildMemory()
    memory.start()
    t0 = time.perf_counter()
    totals = write_chip_shards(
        ds,
        None,
        Config().chips,
        out,
        seed=0,
        workers=args.workers,
        shard_images=args.shard_images,
        progress=sys.stderr.isatty(),
    )
    wall = time.perf_counter() - t0
    memory.halt.set()
    memory.join()
    files = [p for p in out.iterdir() if p.is_file()]
    manifest = json.loads((out / "_manifest.json").read_text())
    return {
        "wall_s": wall,
        "images_per_s": len(ds) / wall if wall > 0 else float("nan"),
        "cpu_s_main": _cpu_s(resource.RUSAGE_SELF) - cpu0,
        "cpu_s_workers": _cpu_s(resource.RUSAGE_CHILDREN),
        "load_s": load_s,
        "fingerprint_s": fingerprint_s,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_main_mb": _peak_mb(),
        "peak_rss_worker_mb": max(memory.peak.values(), default=0.0),  # sampled: may miss the last 0.2 s
        "peak_rss_main_plus_workers_mb": memory.peak_sum,  # sampled sum of simultaneous RSS
        "workers": args.workers,
        "shard_images": args.shard_images,
        "parts": manifest["parts"],
        "rows": manifest["rows"],
        "pos_chips": totals.pos,
        "neg_chips": totals.neg,
        "images_without_pos": totals.images_without_pos,
        "bytes_on_disk": sum(p.stat().st_size for p in files),
    }


PHASES = {"load": phase_load, "json": phase_json, "mine": phase_mine}


def run_phase(name: str, args: argparse.Namespace, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--images", str(args.images),
           "--work", args.work, "--workers", str(args.workers), "--shard-images", str(args.shard_images)]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"phase {name} failed (exit {r.returncode}); its output:\n{r.stdout}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = time.perf_counter() - t0  # with interpreter start and imports
    out["loadavg"] = os.getloadavg()
    return out


# ---------------------------------------------------------------- report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=OPENIMAGES_V4["images"])
    parser.add_argument("--work", default="/tmp/sniper_scale", help="generated files, cache, chip table")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-images", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="of the generated data")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)  # a child's job
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return 0

    work = Path(args.work)
    results: dict = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "images": args.images,
        "openimages_v4": OPENIMAGES_V4,
    }
    print(f"generating {args.images} images in {work} (cached after the first run) ...", file=sys.stderr)
    gen = generate(work, args.images, args.seed)
    # the annotation cache skips a file modified in the last seconds (its mtime may not tell a rewrite)
    time.sleep(max(0.0, _paths(work, args.images)["full"].stat().st_mtime + 3.0 - time.time()))
    results["data"] = gen
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # the first load parses the file
    env = {**os.environ, "SNIPER_CACHE": str(cache)}
    phases = {}
    for key, name in (
        ("load_first", "load"),
        ("load_cached", "load"),
        ("json_subset", "json"),
        ("mine", "mine"),
    ):
        print(f"phase {key} ...", file=sys.stderr)
        phases[key] = run_phase(name, args, env)
    results["phases"] = phases

    first, cached, js, mine = (
        phases["load_first"],
        phases["load_cached"],
        phases["json_subset"],
        phases["mine"],
    )
    ratio = gen["bytes"] / gen["subset_bytes"]
    json_full_mb = js["rss_before_mb"] + (js["peak_rss_mb"] - js["rss_before_mb"]) * ratio
    results["json_load_full_extrapolated"] = {
        "peak_rss_mb": json_full_mb,
        "wall_s": js["wall_s"] * ratio,
        "size_ratio": ratio,
        "extrapolated": True,
    }
    cached_faster = cached["wall_s"] < 0.8 * first["wall_s"]
    total_s = first["wall_s"] + mine["wall_s"]
    peak_process = max(
        first["peak_rss_mb"], cached["peak_rss_mb"], mine["peak_rss_main_mb"], mine["peak_rss_worker_mb"]
    )
    peak_sum = mine["peak_rss_main_plus_workers_mb"]
    goals = {
        "load_and_mine_under_15_min": {"value_s": total_s, "pass": total_s < GOAL_S},
        "peak_rss_under_6_gb_largest_process": {"value_mb": peak_process, "pass": peak_process < GOAL_RSS_MB},
        "peak_rss_under_6_gb_main_plus_workers": {"value_mb": peak_sum, "pass": peak_sum < GOAL_RSS_MB},
    }
    results["goals"] = goals
    results["loadavg_at_end"] = os.getloadavg()

    def mb(x: float) -> str:
        return f"{x:,.0f}"

    rows = [
        ("data", "", "", f"{gen['images']:,} images, {gen['boxes']:,} boxes ({gen['boxes_per_image']}/image, "
         f"{gen['crowd_fraction']:.1%} crowd), {gen['bytes'] / 2**20:,.0f} MiB json"
         + (" [cached]" if gen["cached"] else f" [generated in {gen['generate_s']:.0f} s]")),
        ("load_coco, first (empty cache)", f"{first['wall_s']:.1f}", mb(first["peak_rss_mb"]),
         f"{first['images']:,} images, {first['annotations']:,} boxes kept"),
        ("load_coco, again (cache)", f"{cached['wall_s']:.1f}", mb(cached["peak_rss_mb"]),
         "faster: the columnar cache served it" if cached_faster else "not faster: no cache hit"),
        ("json.load, 1/10 subset (measured)", f"{js['wall_s']:.1f}", mb(js["peak_rss_mb"]),
         f"{js['images']:,} images, {js['annotations']:,} boxes, {gen['subset_bytes'] / 2**20:,.0f} MiB"),
        ("json.load, full (EXTRAPOLATED)", f"~{js['wall_s'] * ratio:.0f}", f"~{mb(json_full_mb)}",
         f"linear in file size (x{ratio:.2f}); not run"),
        (f"write_chip_shards, {args.workers} workers", f"{mine['wall_s']:.1f}",
         f"{mb(mine['peak_rss_main_mb'])} main / {mb(mine['peak_rss_worker_mb'])} worker",
         f"{mine['images_per_s']:,.0f} img/s, {mine['rows']:,} rows ({mine['pos_chips'] / args.images:.2f}/image), "
         f"{mine['parts']} parts, {mine['bytes_on_disk'] / 2**20:,.1f} MiB; CPU {mine['cpu_s_main']:.0f} s main + "
         f"{mine['cpu_s_workers']:.0f} s workers; fingerprint {mine['fingerprint_s']:.1f} s"),
    ]  # fmt: skip
    w0 = max(len(r[0]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    head = f"{'phase':{w0}s}  {'wall s':>7s}  {'peak RSS MB':>{w2}s}  notes"
    print(head)
    print("-" * len(head))
    for name, wall, rss, note in rows:
        print(f"{name:{w0}s}  {wall:>7s}  {rss:>{w2}s}  {note}")
    print()
    scale = OPENIMAGES_V4["images"] / args.images
    print(
        f"goals (for {args.images:,} images"
        + ("" if scale == 1 else f"; x{scale:.1f} for OpenImagesV4")
        + "):"
    )
    print(f"  load (first) + mine < 15 min: {total_s:,.0f} s  "
          f"{'PASS' if goals['load_and_mine_under_15_min']['pass'] else 'FAIL'}")  # fmt: skip
    print(f"  peak RSS < 6 GB, largest process: {mb(peak_process)} MB  "
          f"{'PASS' if goals['peak_rss_under_6_gb_largest_process']['pass'] else 'FAIL'}")  # fmt: skip
    print(f"  peak RSS < 6 GB, main + {args.workers} workers: {mb(peak_sum)} MB  "
          f"{'PASS' if goals['peak_rss_under_6_gb_main_plus_workers']['pass'] else 'FAIL'}")  # fmt: skip
    if scale != 1:
        print(f"  (linear estimate at full size: {total_s * scale:,.0f} s; not a measurement)")
    print("load average:", results["loadavg_at_start"], "->", results["loadavg_at_end"])
    from sniper.io import atomic_write_json

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
