"""The chip table: every chip of a dataset, mined, written, read and summarised.

One row per chip (positives and the whole negative pool of each image) in original
coordinates. :func:`mine_chips` runs the chip engine (:func:`sniper.chips.epoch_pool`) over a
dataset, shard by shard, in this process or a process pool; :func:`write_chip_table` streams
it into a parquet file atomically; :func:`build_chip_table` keeps it in memory;
:meth:`ChipTable.read_parquet` reads it back. :class:`ChipTotals` accumulates what
:func:`chip_stats` reports.

Chips are those of one ``epoch`` (stride :func:`sniper.chips.epoch_stride` of ``(seed, epoch)``,
tie-breaks from ``(seed, epoch, image_id)``), so the table is a function of the inputs, the seed
and the epoch, whatever the number of workers: a per-epoch table is the same call with another
epoch, and a sharded one the same shards written to separate files.

Pixel counts: a chip counts its content pixels (its window in the scaled image, at most
``K x K``; the ``_padded`` variants count ``K * K`` per chip, what a padded batch feeds the
network). ``pixels_vs_single_scale`` divides by the pixels of every image resized to short
side 800, long side at most 1333; ``pixels_vs_full_pyramid`` by the pixels of every image at
every training scale. Both count positives plus ``min(pool, neg_per_image)`` negatives per
image (one epoch); the ``_pos`` variants count positives only.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sniper.chips import ImageChips, epoch_pool, epoch_stride
from sniper.config import ChipConfig, Config, to_dict
from sniper.data.coco import CocoDataset, CocoResults
from sniper.errors import SniperError
from sniper.io import atomic_path, remove_stale_temps
from sniper.scales import Scale, scaled_size

__all__ = [
    "CHIP_COLUMNS", "COLUMN_TYPES", "ChipTable", "ChipTotals", "ImageTask", "build_chip_table", "chip_stats",
    "format_chip_stats", "image_chips", "image_tasks", "mine_chips", "write_chip_table",
]  # fmt: skip

SINGLE_SCALE = Scale(short=800, max_size=1333)
SHARD_SIZE = 64  # images per task sent to a worker
WRITE_ROWS = 65_536  # rows buffered before a parquet row group is written

# The columns every chip table has; the file may hold more (see COLUMN_TYPES).
CHIP_COLUMNS = ("image_id", "kind", "scale", "scale_index", "x1", "y1", "x2", "y2")

# column -> pyarrow type name: the schema of a written chip table
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


@dataclass(frozen=True)
class ChipTable:
    """Chips as arrays; row ``i`` is one chip in original coordinates."""

    image_id: np.ndarray  # (M,) int64
    is_neg: np.ndarray  # (M,) bool
    scale: np.ndarray  # (M,) float64 resize factor
    scale_index: np.ndarray  # (M,) int64
    boxes: np.ndarray  # (M, 4) float64 x1, y1, x2, y2, original px

    def __post_init__(self) -> None:
        m = len(self.image_id)
        for name in ("is_neg", "scale", "scale_index", "boxes"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"ChipTable.{name} has {len(getattr(self, name))} rows, image_id has {m}")
        if self.boxes.shape != (m, 4):
            raise ValueError(f"ChipTable.boxes must be (M, 4), got {self.boxes.shape}")

    def __len__(self) -> int:
        return len(self.image_id)

    @classmethod
    def from_columns(cls, cols: Mapping[str, Any]) -> ChipTable:
        missing = [c for c in CHIP_COLUMNS if c not in cols]
        if missing:
            raise ValueError(f"chip table lacks column(s) {missing}; expected {list(CHIP_COLUMNS)}")
        kind = np.asarray(cols["kind"])
        if kind.dtype == bool:
            is_neg = kind
        else:
            kind = kind.astype(str)
            bad = ~np.isin(kind, ["pos", "neg"])
            if bad.any():
                raise ValueError(
                    f"chip kind must be 'pos' or 'neg', got {sorted(set(kind[bad].tolist()))[:5]}"
                )
            is_neg = kind == "neg"
        boxes = np.stack([np.asarray(cols[c], dtype=np.float64) for c in ("x1", "y1", "x2", "y2")], axis=1)
        return cls(
            image_id=np.asarray(cols["image_id"], dtype=np.int64),
            is_neg=np.asarray(is_neg, dtype=bool),
            scale=np.asarray(cols["scale"], dtype=np.float64),
            scale_index=np.asarray(cols["scale_index"], dtype=np.int64),
            boxes=boxes.reshape(-1, 4),
        )

    @classmethod
    def read_parquet(cls, path: str | Path) -> ChipTable:
        """Read ``chips.parquet`` (``sniper chips`` output); a folder means ``folder/chips.parquet``."""
        import pyarrow.parquet as pq

        path = Path(path)
        if path.is_dir():
            path = path / "chips.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such chips file (run `sniper chips` first)")
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid / ArrowIOError: not parquet, truncated
            raise SniperError(f"{path}: not a readable chip table ({e})") from None
        try:
            return cls.from_columns(
                {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
            )
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_image_chips(cls, chips: Mapping[int, Any] | list[Any]) -> ChipTable:
        """From ``sniper.chips.ImageChips`` objects (one per image; a mapping or a list)."""
        items = list(chips.values()) if isinstance(chips, Mapping) else list(chips)
        cols: dict[str, list[np.ndarray]] = {
            c: [] for c in ("image_id", "kind", "scale", "scale_index", "boxes")
        }
        for ic in items:
            n = len(ic.boxes)
            cols["image_id"].append(np.full(n, int(ic.image_id), dtype=np.int64))
            kind = np.asarray(ic.kind)
            cols["kind"].append(kind if kind.dtype == bool else (kind.astype(str) == "neg"))
            cols["scale"].append(np.asarray(ic.scale, dtype=np.float64))
            cols["scale_index"].append(np.asarray(ic.scale_index, dtype=np.int64))
            cols["boxes"].append(np.asarray(ic.boxes, dtype=np.float64).reshape(-1, 4))
        if not items:
            return cls.empty()
        return cls(
            image_id=np.concatenate(cols["image_id"]),
            is_neg=np.concatenate(cols["kind"]).astype(bool),
            scale=np.concatenate(cols["scale"]),
            scale_index=np.concatenate(cols["scale_index"]),
            boxes=np.concatenate(cols["boxes"]),
        )

    @classmethod
    def empty(cls) -> ChipTable:
        return cls(
            np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0), np.zeros(0, np.int64), np.zeros((0, 4))
        )

    def select(self, mask_or_index: np.ndarray) -> ChipTable:
        return ChipTable(
            self.image_id[mask_or_index],
            self.is_neg[mask_or_index],
            self.scale[mask_or_index],
            self.scale_index[mask_or_index],
            self.boxes[mask_or_index],
        )


# ------------------------------------------------------------------ per-image work


@dataclass(frozen=True)
class ImageTask:
    """What the chip engine needs of one image (picklable, sent to workers)."""

    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    iscrowd: np.ndarray
    proposals: np.ndarray | None


def image_tasks(
    ds: CocoDataset, props: CocoResults | None, indices: Sequence[int] | range | None = None
) -> Iterator[ImageTask]:
    """One task per image at ``indices`` (default: all) of ``ds``."""
    for i in range(len(ds)) if indices is None else indices:
        im = ds.images[i]
        a = ds.annotations_at(i)
        p = None if props is None else props.at(i)[0]
        yield ImageTask(im.id, im.width, im.height, a.boxes, a.iscrowd, p)


def image_chips(task: ImageTask, cfg: ChipConfig, seed: int, epoch: int = 0) -> tuple[ImageChips, ImageChips]:
    """(positives, negative pool) of one image at ``epoch``."""
    return epoch_pool(
        task.image_id,
        task.boxes,
        task.width,
        task.height,
        cfg,
        iscrowd=task.iscrowd,
        proposals=task.proposals,
        seed=seed,
        epoch=epoch,
    )


@dataclass
class ChipTotals:
    """Counts and pixel sums over mined images; shards merge with :meth:`merge`."""

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

    _SUMS = ("images", "pos", "neg", "neg_sampled", "images_without_pos", "single_px", "pyramid_px", "pos_px",
             "neg_sampled_px")  # fmt: skip

    @classmethod
    def zeros(cls, n_scales: int) -> ChipTotals:
        return cls(pos_per_scale=[0] * n_scales, neg_per_scale=[0] * n_scales)

    def merge(self, o: ChipTotals) -> None:
        for k in self._SUMS:
            setattr(self, k, getattr(self, k) + getattr(o, k))
        self.pos_per_scale = _add_lists(self.pos_per_scale, o.pos_per_scale)
        self.neg_per_scale = _add_lists(self.neg_per_scale, o.neg_per_scale)

    def add_image(self, task: ImageTask, pos: ImageChips, neg: ImageChips, cfg: ChipConfig) -> None:
        n_scales = len(cfg.scales)
        self.images += 1
        self.pos += len(pos)
        self.neg += len(neg)
        sampled = min(len(neg), cfg.neg_per_image)
        self.neg_sampled += sampled
        self.pos_px += float(_content_px(pos).sum())
        if len(neg):
            self.neg_sampled_px += float(_content_px(neg).mean()) * sampled
        self.images_without_pos += len(pos) == 0
        self.pos_per_scale = _add_lists(self.pos_per_scale, np.bincount(pos.scale_index, minlength=n_scales).tolist())
        self.neg_per_scale = _add_lists(self.neg_per_scale, np.bincount(neg.scale_index, minlength=n_scales).tolist())
        sw, sh = scaled_size(task.width, task.height, SINGLE_SCALE.resize_factor(task.width, task.height))
        self.single_px += sw * sh
        for s in cfg.scales:
            pw, ph = scaled_size(task.width, task.height, s.resize_factor(task.width, task.height))
            self.pyramid_px += pw * ph


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


def _content_px(chips: ImageChips) -> np.ndarray:
    w = chips.windows
    return ((w[:, 2] - w[:, 0]) * (w[:, 3] - w[:, 1])).astype(np.float64)


def _columns(parts: list[ImageChips]) -> dict[str, np.ndarray]:
    """Columns of COLUMN_TYPES for many images' chips."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in COLUMN_TYPES}
    for p in parts:
        c = p.columns()
        for k in ("image_id", "kind", "scale", "scale_index", "x1", "y1", "x2", "y2", "count"):
            cols[k].append(np.asarray(c[k]))
        cols["w"].append((p.windows[:, 2] - p.windows[:, 0]).astype(np.int32))
        cols["h"].append((p.windows[:, 3] - p.windows[:, 1]).astype(np.int32))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}


# ------------------------------------------------------------------ mining over a dataset

_worker_state: dict[str, Any] = {}


def _init_worker(cfg: ChipConfig, seed: int, epoch: int) -> None:
    _worker_state.update(cfg=cfg, seed=seed, epoch=epoch)


def _mine_shard(tasks: list[ImageTask]) -> tuple[dict[str, np.ndarray], ChipTotals]:
    """Chips of a shard of images as columns, plus its totals."""
    cfg: ChipConfig = _worker_state["cfg"]
    totals = ChipTotals.zeros(len(cfg.scales))
    parts = []
    for task in tasks:
        pos, neg = image_chips(task, cfg, _worker_state["seed"], _worker_state["epoch"])
        parts += [pos, neg]
        totals.add_image(task, pos, neg, cfg)
    return _columns(parts), totals


def _shards(tasks: Iterator[ImageTask], size: int) -> Iterator[list[ImageTask]]:
    shard: list[ImageTask] = []
    for t in tasks:
        shard.append(t)
        if len(shard) == size:
            yield shard
            shard = []
    if shard:
        yield shard


def mine_chips(
    ds: CocoDataset,
    props: CocoResults | None,
    cfg: ChipConfig,
    *,
    seed: int,
    epoch: int = 0,
    workers: int = 1,
    shard_size: int | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], ChipTotals]]:
    """(columns, totals) per shard of ``shard_size`` images (default ``SHARD_SIZE``), in dataset order.

    ``workers > 1`` mines shards in a spawned process pool (no fork of a process that may hold
    threads); the output does not depend on ``workers``."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    shards = _shards(image_tasks(ds, props), shard_size or SHARD_SIZE)
    if workers == 1:
        _init_worker(cfg, seed, epoch)
        yield from map(_mine_shard, shards)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, seed, epoch)) as pool:
        yield from pool.imap(_mine_shard, shards, chunksize=1)


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([(k, getattr(pa, "string" if v == "string" else v)()) for k, v in COLUMN_TYPES.items()])


def write_chip_table(
    ds: CocoDataset,
    props: CocoResults | None,
    cfg: ChipConfig,
    path: str | Path,
    *,
    seed: int,
    epoch: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> ChipTotals:
    """Stream every image's chips into the parquet file ``path`` (atomically); return the totals."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    schema = _arrow_schema()
    totals = ChipTotals.zeros(len(cfg.scales))
    buffer: list[dict[str, np.ndarray]] = []
    buffered = 0
    path = Path(path)
    # a run killed outright (kill -9) could not delete its temp file: this rerun does
    removed = remove_stale_temps(path.parent, [path.name])
    if removed:
        print(f"removed {removed} temp file(s) of an interrupted run from {path.parent}", file=sys.stderr)
    with atomic_path(path) as tmp:
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

            with tqdm(
                total=len(ds), desc="chips", unit="img", file=sys.stderr, dynamic_ncols=True, disable=not progress
            ) as bar:
                for cols, t in mine_chips(ds, props, cfg, seed=seed, epoch=epoch, workers=workers):
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


def build_chip_table(
    ds: CocoDataset,
    props: CocoResults | None,
    cfg: ChipConfig,
    *,
    seed: int,
    epoch: int = 0,
    workers: int = 1,
) -> tuple[ChipTable, ChipTotals]:
    """The rows :func:`write_chip_table` would write, in memory."""
    totals = ChipTotals.zeros(len(cfg.scales))
    parts = []
    for cols, t in mine_chips(ds, props, cfg, seed=seed, epoch=epoch, workers=workers):
        totals.merge(t)
        parts.append(cols)
    if not parts:
        return ChipTable.empty(), totals
    cols = {k: np.concatenate([p[k] for p in parts]) for k in CHIP_COLUMNS}
    cols["kind"] = cols["kind"].astype(str)
    return ChipTable.from_columns(cols), totals


# ------------------------------------------------------------------ statistics


def chip_stats(
    totals: ChipTotals, cfg: Config, seed: int, ds: CocoDataset, props: CocoResults | None, epoch: int = 0
) -> dict[str, Any]:
    """The numbers of ``stats.json`` (see the module docstring for the pixel ratios)."""
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
        "stride": epoch_stride(c, seed, epoch),
        "seed": seed,
        "epoch": epoch,
        "annotations": ds.report.to_dict(),
        "proposals": None if props is None else props.report.to_dict(),
        "config": to_dict(c),
    }


def format_chip_stats(stats: Mapping[str, Any]) -> str:
    """:func:`chip_stats` as an aligned two-column table."""
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
