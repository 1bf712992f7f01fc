"""``sniper chips``: mine positive (and, with proposals, negative) chips for a COCO file.

Writes ``OUT/chips.parquet`` (one row per chip: the positives and the whole negative
pool, from which training samples ``chips.neg_per_image`` per image each epoch) and
``OUT/stats.json``, and prints the same statistics as a table. Chips are those of
epoch 0 (stride :func:`sniper.chips.epoch_stride` of ``(seed, 0)``, tie-breaks from
``(seed, 0, image_id)``), so the output is a function of the inputs and the seed,
whatever ``--workers`` is.

Pixel counts: a chip counts its content pixels (its window in the scaled image, at most
``K x K``; the ``_padded`` variants count ``K * K`` per chip, what a padded batch feeds the
network). ``pixels_vs_single_scale`` divides by the pixels
of every image resized to short side 800, long side at most 1333;
``pixels_vs_full_pyramid`` by the pixels of every image at every training scale.
Both count positives plus ``min(pool, neg_per_image)`` negatives per image (one
epoch); the ``_pos`` variants count positives only.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sniper.chips import ImageChips, chip_labels, epoch_pool, epoch_stride
from sniper.config import ChipConfig, Config, load_config, to_dict
from sniper.data.coco import CocoDataset, CocoResults, load_coco, load_results
from sniper.errors import BadImageError
from sniper.io import atomic_path, atomic_write_json
from sniper.scales import Scale, scaled_size

__all__ = ["add_arguments", "run"]

SINGLE_SCALE = Scale(short=800, max_size=1333)
SHARD_SIZE = 64  # images per task sent to a worker
WRITE_ROWS = 65_536  # rows buffered before a parquet row group is written


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sniper.cli import add_config_arguments

    p.add_argument("--annotations", required=True, help="COCO instances JSON")
    p.add_argument(
        "--proposals", default=None, help="COCO results JSON of RPN proposals (enables negative chips)"
    )
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="output folder (chips.parquet, stats.json, viz/)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1: in this process)")
    p.add_argument(
        "--visualize", type=int, default=0, metavar="N", help="write pictures of the first N images"
    )
    p.add_argument("--seed", type=int, default=None, help="tie-break seed (default: config seed)")
    p.add_argument(
        "--images", default=None, help="image folder (only used for --visualize; else a gray canvas)"
    )
    p.add_argument(
        "--strict", action="store_true", help="any malformed annotation is an error instead of a skip"
    )


# ------------------------------------------------------------------ per-image work


@dataclass(frozen=True)
class ImageTask:
    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    iscrowd: np.ndarray
    proposals: np.ndarray | None


def image_chips(task: ImageTask, cfg: ChipConfig, seed: int) -> tuple[ImageChips, ImageChips]:
    """(positives, negative pool) of one image, epoch 0."""
    return epoch_pool(
        task.image_id,
        task.boxes,
        task.width,
        task.height,
        cfg,
        iscrowd=task.iscrowd,
        proposals=task.proposals,
        seed=seed,
        epoch=0,
    )


@dataclass
class Totals:
    images: int = 0
    pos: int = 0
    neg: int = 0
    neg_sampled: int = 0
    images_without_pos: int = 0
    single_px: float = 0.0
    pyramid_px: float = 0.0
    pos_px: float = 0.0  # content pixels of the positive chips
    neg_sampled_px: float = 0.0  # expected content pixels of the negatives sampled per epoch
    pos_per_scale: list[int] = field(default_factory=list)
    neg_per_scale: list[int] = field(default_factory=list)

    def merge(self, o: Totals) -> None:
        for k in ("images", "pos", "neg", "neg_sampled", "images_without_pos", "single_px", "pyramid_px",
                  "pos_px", "neg_sampled_px"):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        self.pos_per_scale = _add_lists(self.pos_per_scale, o.pos_per_scale)
        self.neg_per_scale = _add_lists(self.neg_per_scale, o.neg_per_scale)


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


_worker_state: dict[str, Any] = {}


def _init_worker(cfg: ChipConfig, seed: int) -> None:
    _worker_state["cfg"] = cfg
    _worker_state["seed"] = seed


def _content_px(chips: ImageChips) -> np.ndarray:
    w = chips.windows
    return ((w[:, 2] - w[:, 0]) * (w[:, 3] - w[:, 1])).astype(np.float64)


def _process_shard(tasks: list[ImageTask]) -> tuple[dict[str, np.ndarray], Totals]:
    """Chips of a shard of images as parquet columns, plus its totals."""
    cfg: ChipConfig = _worker_state["cfg"]
    seed: int = _worker_state["seed"]
    n_scales = len(cfg.scales)
    t = Totals(pos_per_scale=[0] * n_scales, neg_per_scale=[0] * n_scales)
    parts = []
    for task in tasks:
        pos, neg = image_chips(task, cfg, seed)
        parts += [pos, neg]
        t.images += 1
        t.pos += len(pos)
        t.neg += len(neg)
        t.neg_sampled += min(len(neg), cfg.neg_per_image)
        t.pos_px += float(_content_px(pos).sum())
        if len(neg):
            t.neg_sampled_px += float(_content_px(neg).mean()) * min(len(neg), cfg.neg_per_image)
        t.images_without_pos += len(pos) == 0
        t.pos_per_scale = _add_lists(
            t.pos_per_scale, np.bincount(pos.scale_index, minlength=n_scales).tolist()
        )
        t.neg_per_scale = _add_lists(
            t.neg_per_scale, np.bincount(neg.scale_index, minlength=n_scales).tolist()
        )
        sw, sh = scaled_size(task.width, task.height, SINGLE_SCALE.resize_factor(task.width, task.height))
        t.single_px += sw * sh
        for s in cfg.scales:
            pw, ph = scaled_size(task.width, task.height, s.resize_factor(task.width, task.height))
            t.pyramid_px += pw * ph
    return _columns(parts), t


def _columns(parts: list[ImageChips]) -> dict[str, np.ndarray]:
    cols: dict[str, list[np.ndarray]] = {k: [] for k in COLUMN_TYPES}
    for p in parts:
        c = p.columns()
        for k in ("image_id", "kind", "scale", "scale_index", "x1", "y1", "x2", "y2", "count"):
            cols[k].append(np.asarray(c[k]))
        cols["w"].append((p.windows[:, 2] - p.windows[:, 0]).astype(np.int32))
        cols["h"].append((p.windows[:, 3] - p.windows[:, 1]).astype(np.int32))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}


# column -> pyarrow type name (the schema of chips.parquet)
COLUMN_TYPES: dict[str, str] = {
    "image_id": "int64",
    "kind": "string",
    "scale": "float64",
    "scale_index": "int32",
    "x1": "float64",
    "y1": "float64",
    "x2": "float64",
    "y2": "float64",
    "w": "int32",  # chip px (<= K); the chip tensor is K x K with this content top-left
    "h": "int32",
    "count": "int64",  # boxes (or proposals) newly covered when the greedy picked the chip
}


def _schema():
    import pyarrow as pa

    return pa.schema([(k, getattr(pa, "string" if v == "string" else v)()) for k, v in COLUMN_TYPES.items()])


# ------------------------------------------------------------------ driver


def _tasks(ds: CocoDataset, props: CocoResults | None, indices: range | list[int]) -> Iterator[ImageTask]:
    for i in indices:
        im = ds.images[i]
        a = ds.annotations_at(i)
        p = None if props is None else props.at(i)[0]
        yield ImageTask(im.id, im.width, im.height, a.boxes, a.iscrowd, p)


def _shards(tasks: Iterator[ImageTask], size: int) -> Iterator[list[ImageTask]]:
    shard: list[ImageTask] = []
    for t in tasks:
        shard.append(t)
        if len(shard) == size:
            yield shard
            shard = []
    if shard:
        yield shard


def _results(ds, props, cfg, seed, workers) -> Iterator[tuple[dict[str, np.ndarray], Totals]]:
    shards = _shards(_tasks(ds, props, range(len(ds))), SHARD_SIZE)
    if workers <= 1:
        _init_worker(cfg, seed)
        yield from map(_process_shard, shards)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, seed)) as pool:
        yield from pool.imap(_process_shard, shards, chunksize=1)


def write_chips(
    ds: CocoDataset, props: CocoResults | None, cfg: ChipConfig, seed: int, out: Path, workers: int
) -> Totals:
    """Stream every image's chips into ``out/chips.parquet`` (atomically); return the totals."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    schema = _schema()
    totals = Totals(pos_per_scale=[0] * len(cfg.scales), neg_per_scale=[0] * len(cfg.scales))
    buffer: list[dict[str, np.ndarray]] = []
    buffered = 0
    with atomic_path(out / "chips.parquet") as tmp:
        writer = pq.ParquetWriter(tmp, schema)
        try:

            def flush() -> None:
                nonlocal buffer, buffered
                if buffer:
                    cols = {k: np.concatenate([b[k] for b in buffer]) for k in COLUMN_TYPES}
                    writer.write_table(
                        pa.table({k: pa.array(v, type=schema.field(k).type) for k, v in cols.items()})
                    )
                buffer, buffered = [], 0

            with tqdm(total=len(ds), desc="chips", unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
                for cols, t in _results(ds, props, cfg, seed, workers):
                    totals.merge(t)
                    buffer.append(cols)
                    buffered += len(cols["image_id"])
                    if buffered >= WRITE_ROWS:
                        flush()
                    bar.update(t.images)
                    bar.set_postfix(pos=totals.pos, neg=totals.neg, refresh=False)
            flush()
        finally:
            writer.close()
    return totals


def stats_dict(
    totals: Totals, cfg: Config, seed: int, ds: CocoDataset, props: CocoResults | None
) -> dict[str, Any]:
    c = cfg.chips
    chip_px = float(c.chip_size) ** 2
    n = max(totals.images, 1)
    epoch_px = totals.pos_px + totals.neg_sampled_px
    pos_px = totals.pos_px
    epoch_px_padded = (totals.pos + totals.neg_sampled) * chip_px

    def ratio(a: float, b: float) -> float:
        return round(a / b, 4) if b > 0 else 0.0

    return {
        "images": totals.images,
        "pos_chips": totals.pos,
        "neg_chips": totals.neg,
        "pos_chips_per_image": round(totals.pos / n, 4),
        "neg_chips_per_image": round(totals.neg / n, 4),
        "neg_chips_sampled_per_image": round(totals.neg_sampled / n, 4),
        "images_without_pos_chips": totals.images_without_pos,
        "pixels_vs_single_scale": ratio(epoch_px, totals.single_px),
        "pixels_vs_single_scale_pos": ratio(pos_px, totals.single_px),
        "pixels_vs_full_pyramid": ratio(epoch_px, totals.pyramid_px),
        "pixels_vs_full_pyramid_pos": ratio(pos_px, totals.pyramid_px),
        "pixels_vs_single_scale_padded": ratio(epoch_px_padded, totals.single_px),
        "pixels_vs_full_pyramid_padded": ratio(epoch_px_padded, totals.pyramid_px),
        "chip_pixels": f"content pixels of each chip window (<= {c.chip_size}x{c.chip_size}); "
        "_padded: K*K per chip",
        "single_scale": "short side 800, long side <= 1333",
        "per_scale": [
            {
                "scale": s.describe(),
                "pos_chips": totals.pos_per_scale[i],
                "neg_chips": totals.neg_per_scale[i],
            }
            for i, s in enumerate(c.scales)
        ],
        "stride": epoch_stride(c, seed, 0),
        "seed": seed,
        "annotations": ds.report.to_dict(),
        "proposals": None if props is None else props.report.to_dict(),
        "config": to_dict(c),
    }


def format_stats(stats: dict[str, Any]) -> str:
    rows = [
        ("images", f"{stats['images']}"),
        ("positive chips", f"{stats['pos_chips']}  ({stats['pos_chips_per_image']:.2f} / image)"),
        (
            "negative chips (pool)",
            f"{stats['neg_chips']}  ({stats['neg_chips_per_image']:.2f} / image, "
            f"{stats['neg_chips_sampled_per_image']:.2f} sampled per epoch)",
        ),
        ("images without positive chips", f"{stats['images_without_pos_chips']}"),
        (
            "pixels vs single scale 800x1333",
            f"{stats['pixels_vs_single_scale']:.3f}  (positives only {stats['pixels_vs_single_scale_pos']:.3f})",
        ),
        (
            "pixels vs full pyramid",
            f"{stats['pixels_vs_full_pyramid']:.3f}  (positives only {stats['pixels_vs_full_pyramid_pos']:.3f})",
        ),
        (
            "  counting K x K per chip",
            f"{stats['pixels_vs_single_scale_padded']:.3f} vs single scale, "
            f"{stats['pixels_vs_full_pyramid_padded']:.3f} vs pyramid",
        ),
    ]
    rows += [
        (f"  scale {p['scale']}", f"{p['pos_chips']} pos, {p['neg_chips']} neg") for p in stats["per_scale"]
    ]
    rows.append(("stride / seed", f"{stats['stride']} / {stats['seed']}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# ------------------------------------------------------------------ pictures


def visualize(
    ds: CocoDataset,
    props: CocoResults | None,
    cfg: Config,
    seed: int,
    n: int,
    out: Path,
    image_root: str | None,
) -> list[Path]:
    """For the first ``n`` images: chips on the image (Fig. 1) and each chip with its labels (Fig. 2)."""
    from sniper import viz
    from sniper.data.images import load_image, resolve_image_path

    c = cfg.chips
    names = [s.describe() for s in c.scales]
    written = []
    for i in range(min(n, len(ds))):
        task = next(_tasks(ds, props, [i]))
        rec = ds.images[i]
        ann = ds.annotations_at(i)
        pos, neg = image_chips(task, c, seed)
        image = None
        if image_root is not None:
            try:
                image = load_image(
                    resolve_image_path(image_root, rec.file_name), max_pixels=cfg.data.max_image_pixels
                )
                if image.original_size != (rec.width, rec.height):
                    print(
                        f"sniper chips: warning: {rec.file_name} is {image.original_size[0]}x{image.original_size[1]}, "
                        f"annotations say {rec.width}x{rec.height}; drawing on a gray canvas",
                        file=sys.stderr,
                    )
                    image = None
                else:
                    image = image.image
            except BadImageError as e:
                print(f"sniper chips: warning: {e}; drawing on a gray canvas", file=sys.stderr)
        if image is None:
            image = viz.gray_canvas(rec.width, rec.height)
        both = ImageChips.concat([pos, neg], image_id=rec.id)
        overview = viz.draw_image_chips(
            image,
            both.boxes,
            both.scale_index,
            both.negative,
            ann.boxes,
            gt_iscrowd=ann.iscrowd,
            scale_names=names,
        )
        p1 = out / f"{rec.id}_chips.png"
        with atomic_path(p1) as tmp:
            overview.save(tmp, format="PNG")
        written.append(p1)
        pictures, captions, colors = [], [], []
        for chip in both.chips():
            lab = chip_labels(
                chip, ann.boxes, ann.category_ids, ann.iscrowd, c, image_size=(rec.width, rec.height)
            )
            pictures.append(
                viz.render_chip(
                    image, chip, lab, c.chip_size, proposals=task.proposals if chip.kind == "neg" else None
                )
            )
            w, h = chip.size_px()
            captions.append(
                f"{chip.kind} {names[chip.scale_index].split(' ')[0]} {w}x{h}: "
                f"{int(lab.valid.sum())} valid, {int(lab.ignore.sum())} ignore"
            )
            colors.append(viz.scale_color(chip.scale_index))
        p2 = out / f"{rec.id}_labels.png"
        if pictures:
            with atomic_path(p2) as tmp:
                viz.tile(pictures, captions, colors=colors, cell=320, cols=4).save(tmp, format="PNG")
            written.append(p2)
        if image_root is not None and len(both):
            p3 = out / f"{rec.id}_items.png"
            if _draw_items(ds, both, cfg, image_root, p3):
                written.append(p3)
    return written


def _draw_items(ds: CocoDataset, chips: ImageChips, cfg: Config, image_root: str, path: Path) -> bool:
    """Dataset items exactly as the model receives them (crop, resize, pad; every other one flipped)."""
    from sniper import viz
    from sniper.data.chip_dataset import ChipDataset
    from sniper.data.draw import draw_item
    from sniper.data.plan import ChipKey, ChipTable

    names = {i + 1: str(c.get("name", c["id"])) for i, c in enumerate(ds.categories)}
    dataset = ChipDataset(ds, ChipTable.from_image_chips([chips]), image_root, cfg.chips, cfg.data)
    pictures, captions = [], []
    try:
        for i in range(len(dataset)):
            flip = i % 2 == 1
            image, target = dataset[ChipKey(i, flip)]
            pictures.append(draw_item(image, target, names=names))
            captions.append(
                f"item {i}{' flipped' if flip else ''}: {len(target['boxes'])} valid, "
                f"{len(target['ignore_boxes'])} ignore"
            )
    except BadImageError as e:
        print(f"sniper chips: warning: {e}; no dataset items drawn", file=sys.stderr)
        return False
    with atomic_path(path) as tmp:
        viz.tile(pictures, captions, cell=320, cols=4).save(tmp, format="PNG")
    return True


# ------------------------------------------------------------------ entry point


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.visualize < 0:
        raise ValueError(f"--visualize must be >= 0, got {args.visualize}")
    cfg = load_config(args.config, args.overrides)
    seed = cfg.seed if args.seed is None else args.seed
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    ds = load_coco(args.annotations, strict=args.strict)
    print(ds.report.format())
    props = None
    if args.proposals is not None:
        props = load_results(args.proposals, ds, strict=args.strict)
        print(props.report.format())
    totals = write_chips(ds, props, cfg.chips, seed, out, args.workers)
    stats = stats_dict(totals, cfg, seed, ds, props)
    atomic_write_json(out / "stats.json", stats)
    print(format_stats(stats))
    print(f"wrote {out / 'chips.parquet'} ({totals.pos + totals.neg} chips) and {out / 'stats.json'}")
    if args.visualize:
        files = visualize(ds, props, cfg, seed, args.visualize, out / "viz", args.images)
        print(f"wrote {len(files)} pictures to {out / 'viz'}")
    return 0
