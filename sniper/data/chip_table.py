"""The chip table: every chip of a dataset, mined, written, read and summarised.

One row per chip (positives and the whole negative pool of each image) in original
coordinates. :func:`mine_chips` runs the chip engine (:func:`sniper.chips.epoch_pool`) over a
dataset, shard by shard, in this process or a process pool; :func:`write_chip_table` streams
it into a parquet file atomically; :func:`build_chip_table` keeps it in memory;
:meth:`ChipTable.read_parquet` reads it back. :class:`ChipTotals` accumulates what
:func:`chip_stats` reports. :func:`write_chip_shards` writes the same rows as a resumable
folder of parquet parts (see "Sharded tables" below).

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

Sharded tables (:func:`write_chip_shards`, for datasets of millions of images): a folder of
``part-00000.parquet``, ``part-00001.parquet``, ..., part ``i`` holding the chips of images
``[i * shard_images, (i + 1) * shard_images)`` in dataset order, each written atomically by the
worker that mined it, with its image range, row count and :class:`ChipTotals` in the parquet
footer's key-value metadata, plus ``_manifest.json`` (atomic): what the folder is a function
of (image count, fingerprints of the dataset and the proposals, the chip config, seed, epoch,
``shard_images``, the schema) and, once every part is written, ``complete: true`` with the
merged totals. A rerun with the same inputs keeps every part whose footer reads and agrees
with its metadata and mines the others, so a run killed at any point (even ``kill -9``)
finishes with the same table as an uninterrupted one; other inputs are a
:class:`~sniper.errors.SniperError` naming what differs (``overwrite=True`` starts afresh).
The concatenated parts are row for row what :func:`write_chip_table` writes.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sniper.chips import ImageChips, epoch_pool, epoch_stride
from sniper.config import ChipConfig, Config, to_dict
from sniper.data.coco import CocoDataset, CocoResults
from sniper.errors import SniperError
from sniper.io import atomic_path, atomic_write_json, read_json, remove_stale_temps
from sniper.scales import Scale, scaled_size

__all__ = [
    "CHIP_COLUMNS", "COLUMN_TYPES", "MANIFEST", "SHARD_IMAGES", "ChipTable", "ChipTotals", "ImageTask",
    "build_chip_table", "chip_shard_manifest", "chip_stats", "dataset_fingerprint", "format_chip_stats",
    "image_chips", "image_tasks", "iter_chip_shards", "mine_chips", "part_name", "proposals_fingerprint",
    "write_chip_shards", "write_chip_table",
]  # fmt: skip

SINGLE_SCALE = Scale(short=800, max_size=1333)
SHARD_SIZE = 64  # images per task sent to a worker
WRITE_ROWS = 65_536  # rows buffered before a parquet row group is written
SHARD_IMAGES = 10_000  # images per part of a sharded table (write_chip_shards)
MANIFEST = "_manifest.json"  # of a sharded table folder
SHARDS_FORMAT = "sniper-chip-shards/1"
PART_KEY = b"sniper.chip_part"  # parquet footer key-value metadata of a part: its range, rows, totals
IN_FLIGHT_PER_WORKER = 2  # shards submitted to the pool and not yet consumed, per worker

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
        is_neg = _is_neg(cols["kind"])
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
        """Read a chip table: ``chips.parquet``, or a sharded folder (:func:`write_chip_shards`;
        its parts in order, i.e. dataset order). A ``sniper chips`` output folder means its
        ``chips.parquet`` or its sharded ``chips/``."""
        import pyarrow.parquet as pq

        path = _resolve_chip_path(Path(path))
        if path.is_dir():
            parts: dict[str, list[np.ndarray]] = {}
            for cols in iter_chip_shards(path):
                cols["kind"] = _is_neg(cols["kind"])  # bools, not a Python string per row
                for k, v in cols.items():
                    parts.setdefault(k, []).append(v)
            if not parts:
                return cls.empty()
            try:
                return cls.from_columns({k: np.concatenate(v) for k, v in parts.items()})
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
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


def _is_neg(kind: Any) -> np.ndarray:
    """The ``kind`` column ('pos'/'neg', or already bools) as bools: True for a negative chip."""
    kind = np.asarray(kind)
    if kind.dtype == bool:
        return kind
    kind = kind.astype(str)
    bad = ~np.isin(kind, ["pos", "neg"])
    if bad.any():
        raise ValueError(f"chip kind must be 'pos' or 'neg', got {sorted(set(kind[bad].tolist()))[:5]}")
    return kind == "neg"


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
        self.pos_per_scale = _add_lists(
            self.pos_per_scale, np.bincount(pos.scale_index, minlength=n_scales).tolist()
        )
        self.neg_per_scale = _add_lists(
            self.neg_per_scale, np.bincount(neg.scale_index, minlength=n_scales).tolist()
        )
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
    """Columns of COLUMN_TYPES for many images' chips (what ``ImageChips.columns`` gives, plus
    ``w``, ``h``, concatenated; built field by field: one array operation per column)."""
    if not parts:
        return {k: np.zeros(0) for k in COLUMN_TYPES}
    boxes = np.concatenate([p.boxes for p in parts]).reshape(-1, 4)
    windows = np.concatenate([p.windows for p in parts]).reshape(-1, 4)
    ids = np.array([p.image_id for p in parts], dtype=np.int64)
    return {
        "image_id": np.repeat(ids, [len(p) for p in parts]),
        "kind": np.where(np.concatenate([p.negative for p in parts]), "neg", "pos").astype(object),
        "scale": np.concatenate([p.scale for p in parts]),
        "scale_index": np.concatenate([p.scale_index for p in parts]),
        "x1": np.ascontiguousarray(boxes[:, 0]),
        "y1": np.ascontiguousarray(boxes[:, 1]),
        "x2": np.ascontiguousarray(boxes[:, 2]),
        "y2": np.ascontiguousarray(boxes[:, 3]),
        "w": (windows[:, 2] - windows[:, 0]).astype(np.int32),
        "h": (windows[:, 3] - windows[:, 1]).astype(np.int32),
        "count": np.concatenate([p.count for p in parts]),
    }


def _shard_totals(
    tasks: Sequence[ImageTask], chips: Sequence[tuple[ImageChips, ImageChips]], cfg: ChipConfig
) -> ChipTotals:
    """``ChipTotals.add_image`` over a shard's images, summed with array operations: the same
    numbers (the pixel sums are sums of integers, exact in any order; the one non-integer sum,
    ``neg_sampled_px``, is added image by image as there)."""
    n_scales = len(cfg.scales)
    t = ChipTotals.zeros(n_scales)
    t.images = len(tasks)
    if not tasks:
        return t
    pos_n = np.array([len(p) for p, _ in chips], dtype=np.int64)
    neg_n = np.array([len(n) for _, n in chips], dtype=np.int64)
    sampled = np.minimum(neg_n, cfg.neg_per_image)
    t.pos, t.neg, t.neg_sampled = int(pos_n.sum()), int(neg_n.sum()), int(sampled.sum())
    t.images_without_pos = int((pos_n == 0).sum())
    pos = [p for p, _ in chips]
    t.pos_px = float(_content_px_int(pos).sum())
    t.pos_per_scale = np.bincount(np.concatenate([p.scale_index for p in pos]), minlength=n_scales).tolist()
    negs = [n for _, n in chips]
    t.neg_per_scale = np.bincount(np.concatenate([n.scale_index for n in negs]), minlength=n_scales).tolist()
    for neg, k in zip(negs, sampled.tolist()):
        if len(neg):
            t.neg_sampled_px += float(_content_px(neg).mean()) * k
    # pixels of the whole image at single scale and at every scale: by image size (sizes repeat)
    cache: dict[tuple[int, int], tuple[int, int]] = _worker_state.setdefault("image_px", {})
    single = pyramid = 0
    for task in tasks:
        key = (task.width, task.height)
        px = cache.get(key)
        if px is None:
            if len(cache) > 100_000:
                cache.clear()
            sw, sh = scaled_size(task.width, task.height, SINGLE_SCALE.resize_factor(task.width, task.height))
            pyr = 0
            for s in cfg.scales:
                pw, ph = scaled_size(task.width, task.height, s.resize_factor(task.width, task.height))
                pyr += pw * ph
            px = cache[key] = (sw * sh, pyr)
        single += px[0]
        pyramid += px[1]
    t.single_px, t.pyramid_px = float(single), float(pyramid)
    return t


def _content_px_int(chips: Sequence[ImageChips]) -> np.ndarray:
    w = np.concatenate([c.windows for c in chips]).reshape(-1, 4)
    return (w[:, 2] - w[:, 0]) * (w[:, 3] - w[:, 1])


# ------------------------------------------------------------------ mining over a dataset

_worker_state: dict[str, Any] = {}


def _init_worker(cfg: ChipConfig, seed: int, epoch: int) -> None:
    _worker_state.update(cfg=cfg, seed=seed, epoch=epoch, image_px={})


def _init_pool_worker(cfg: ChipConfig, seed: int, epoch: int) -> None:
    _init_worker(cfg, seed, epoch)
    # A pool worker outlives a parent killed outright (kill -9, OOM killer), waiting for tasks
    # forever: end it with its parent instead. Its temp file, if any, goes at the next run.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_with, args=(parent.sentinel,), name="exit-with-parent", daemon=True
        ).start()


def _exit_with(sentinel: int) -> None:
    from multiprocessing.connection import wait

    wait([sentinel])
    os._exit(1)


def _mine_shard(tasks: list[ImageTask]) -> tuple[dict[str, np.ndarray], ChipTotals]:
    """Chips of a shard of images as columns, plus its totals."""
    cfg: ChipConfig = _worker_state["cfg"]
    seed, epoch = _worker_state["seed"], _worker_state["epoch"]
    chips = [image_chips(task, cfg, seed, epoch) for task in tasks]
    return _columns([c for pair in chips for c in pair]), _shard_totals(tasks, chips, cfg)


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
    shards = _shards(image_tasks(ds, props), shard_size or SHARD_SIZE)
    yield from _pool_map(_mine_shard, shards, cfg, seed, epoch, workers)


def _pool_map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    cfg: ChipConfig,
    seed: int,
    epoch: int,
    workers: int,
    *,
    ordered: bool = True,
) -> Iterator[Any]:
    """``map(fn, items)`` in this process (``workers == 1``) or a spawned pool of ``workers``
    processes (no fork of a process that may hold threads) with at most
    ``IN_FLIGHT_PER_WORKER * workers`` items submitted and not yet consumed: ``items`` is
    drawn lazily and results never pile up when the consumer is slower than the pool (which
    ``Pool.imap`` allows). ``ordered=False`` yields results as they come (a slow item does
    not hold up the others)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        _init_worker(cfg, seed, epoch)
        yield from map(fn, items)
        return
    ctx = multiprocessing.get_context("spawn")
    window = IN_FLIGHT_PER_WORKER * workers
    with ctx.Pool(workers, initializer=_init_pool_worker, initargs=(cfg, seed, epoch)) as pool:
        if ordered:
            pending: collections.deque = collections.deque()
            for item in items:
                pending.append(pool.apply_async(fn, (item,)))
                if len(pending) >= window:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
            return
        done: queue.SimpleQueue = queue.SimpleQueue()  # (ok, result or exception), as they finish
        in_flight = 0

        def take() -> Any:
            ok, value = done.get()
            if not ok:
                raise value
            return value

        for item in items:
            pool.apply_async(
                fn,
                (item,),
                callback=lambda r: done.put((True, r)),
                error_callback=lambda e: done.put((False, e)),
            )
            in_flight += 1
            if in_flight >= window:
                in_flight -= 1
                yield take()
        while in_flight:
            in_flight -= 1
            yield take()


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([(k, getattr(pa, "string" if v == "string" else v)()) for k, v in COLUMN_TYPES.items()])


def _write_rows(writer: Any, schema: Any, buffer: list[dict[str, np.ndarray]]) -> None:
    """Write the buffered columns (of :func:`_mine_shard`) as one row group."""
    import pyarrow as pa

    if buffer:
        cols = {k: np.concatenate([b[k] for b in buffer]) for k in COLUMN_TYPES}
        writer.write_table(pa.table({k: pa.array(v, type=schema.field(k).type) for k, v in cols.items()}))


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
                _write_rows(writer, schema, buffer)
                buffer, buffered = [], 0

            with tqdm(
                total=len(ds),
                desc="chips",
                unit="img",
                file=sys.stderr,
                dynamic_ncols=True,
                disable=not progress,
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


# ------------------------------------------------------------------ sharded, resumable tables

# the manifest keys a sharded table is a function of (the rest: progress and totals)
_INPUT_KEYS = ("format", "images", "shard_images", "parts", "seed", "epoch", "dataset", "proposals", "chips",
               "schema")  # fmt: skip
_PART_FILE = re.compile(r"part-\d{5,}\.parquet")


def part_name(index: int) -> str:
    """File name of part ``index`` of a sharded table."""
    return f"part-{index:05d}.parquet"


def _hash(h: Any, a: Any, dtype: Any) -> None:
    h.update(np.ascontiguousarray(np.asarray(a, dtype=dtype)).reshape(-1).view(np.uint8))


def _grouped(obj: Any, n: int, *names: str) -> tuple[np.ndarray, ...] | None:
    """``(offsets, *arrays)`` of a CocoDataset/CocoResults's per-image grouped columns, when it
    keeps them as arrays (the fast path of the fingerprints), else None."""
    offsets = getattr(obj, "_offsets", None)
    arrays = [getattr(obj, k, None) for k in names]
    if not isinstance(offsets, np.ndarray) or offsets.shape != (n + 1,):
        return None
    if not all(isinstance(a, np.ndarray) and len(a) == int(offsets[-1]) for a in arrays):
        return None
    return (offsets, *arrays)


def dataset_fingerprint(ds: CocoDataset) -> str:
    """Hash of what the chips of ``ds`` depend on: image ids and sizes, and per image its boxes
    and crowd flags (numpy buffers hashed in place: about a second for 15M boxes)."""
    n = len(ds)
    head, counts, boxes, crowd = (hashlib.blake2b(digest_size=16) for _ in range(4))
    for a in (ds.image_ids, ds.widths, ds.heights):
        _hash(head, a, np.int64)
    fast = _grouped(ds, n, "_boxes", "_crowd")
    if fast is not None:
        offsets, b, c = fast
        _hash(counts, np.diff(offsets), np.int64)
        _hash(boxes, b, np.float64)
        _hash(crowd, c, bool)
    else:  # the same bytes, image by image
        for i in range(n):
            a = ds.annotations_at(i)
            _hash(counts, [len(a.boxes)], np.int64)
            _hash(boxes, a.boxes, np.float64)
            _hash(crowd, a.iscrowd, bool)
    return _combine(n, head, counts, boxes, crowd)


def proposals_fingerprint(props: CocoResults, n_images: int) -> str:
    """Hash of the proposal boxes of each of the ``n_images`` images (what negative chips use)."""
    counts, boxes = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
    fast = _grouped(props, n_images, "_boxes")
    if fast is not None:
        _hash(counts, np.diff(fast[0]), np.int64)
        _hash(boxes, fast[1], np.float64)
    else:
        for i in range(n_images):
            b = props.at(i)[0]
            _hash(counts, [len(b)], np.int64)
            _hash(boxes, b, np.float64)
    return _combine(n_images, counts, boxes)


def _combine(n: int, *hashes: Any) -> str:
    h = hashlib.blake2b(str(n).encode(), digest_size=16)
    for x in hashes:
        h.update(x.digest())
    return h.hexdigest()


def _shard_inputs(
    ds: CocoDataset, props: CocoResults | None, cfg: ChipConfig, seed: int, epoch: int, shard_images: int
) -> dict[str, Any]:
    n = len(ds)
    inputs = {
        "format": SHARDS_FORMAT,
        "images": n,
        "shard_images": shard_images,
        "parts": -(-n // shard_images),
        "seed": int(seed),
        "epoch": int(epoch),
        "dataset": dataset_fingerprint(ds),
        "proposals": None if props is None else proposals_fingerprint(props, n),
        "chips": to_dict(cfg),
        "schema": dict(COLUMN_TYPES),
    }
    return json.loads(json.dumps(inputs))  # as a manifest reads back (tuples -> lists)


def _inputs_id(inputs: Mapping[str, Any]) -> str:
    text = json.dumps({k: inputs.get(k) for k in _INPUT_KEYS}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    out = []
    for k in _INPUT_KEYS:
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if k == "dataset":
            out.append("dataset (other images, image sizes or boxes)")
        elif k == "proposals":
            out.append(
                "proposals (other boxes)"
                if a and b
                else f"proposals ({'given' if a else 'none'} -> {'given' if b else 'none'})"
            )
        elif k == "chips" and isinstance(a, Mapping):
            keys = sorted(x for x in set(a) | set(b) if a.get(x) != b.get(x))
            out += [f"chips.{x} ({a.get(x)!r} -> {b.get(x)!r})" for x in keys]
        elif k == "schema":
            out.append("schema")
        else:
            out.append(f"{k} ({a!r} -> {b!r})")
    return ", ".join(out)


def _part_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _PART_FILE.fullmatch(p.name))


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        m = read_json(path)
    except (OSError, ValueError) as e:
        raise SniperError(f"{path}: not a readable chip table manifest ({e})") from None
    if (
        not isinstance(m, dict)
        or not isinstance(m.get("format"), str)
        or not m["format"].startswith("sniper-chip-shards/")
    ):
        raise SniperError(f"{path}: not a sniper chip table manifest")
    return m


def chip_shard_manifest(path: str | Path) -> dict[str, Any]:
    """The ``_manifest.json`` of the complete sharded table ``path``; a missing or incomplete
    one is a :class:`~sniper.errors.SniperError` saying so."""
    folder = Path(path)
    m = _read_manifest(folder)
    if m is None:
        raise SniperError(
            f"{folder}: not a sharded chip table (no {MANIFEST}; run `sniper chips --shard-images N`)"
        )
    if m["format"] != SHARDS_FORMAT:
        raise SniperError(
            f"{folder}: chip table format {m['format']!r}, this version reads {SHARDS_FORMAT!r}"
        )
    if not m.get("complete"):
        have = sum(1 for p in _part_files(folder) if int(p.name[5:-8]) < m.get("parts", 0))
        raise SniperError(
            f"{folder}: incomplete chip table ({have} of {m.get('parts')} parts written); "
            "rerun the same `sniper chips` command (or write_chip_shards call) to finish it"
        )
    return m


def iter_chip_shards(
    path: str | Path, columns: Sequence[str] | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """The columns (default: all) of each part of the complete sharded table ``path``, in part
    order (= dataset order), one part in memory at a time."""
    import pyarrow.parquet as pq

    folder = Path(path)
    m = chip_shard_manifest(folder)
    inputs_id = _inputs_id(m)
    for i in range(m["parts"]):
        p = folder / part_name(i)
        if not p.is_file():
            raise SniperError(
                f"{p}: part missing from a complete chip table; rerun `sniper chips` to re-mine it"
            )
        try:
            f = pq.ParquetFile(p)
            meta = json.loads((f.metadata.metadata or {})[PART_KEY])
            ok = meta["inputs"] == inputs_id and meta["index"] == i and meta["rows"] == f.metadata.num_rows
            table = f.read(columns=None if columns is None else list(columns)) if ok else None
        except Exception as e:  # pyarrow's ArrowInvalid / OSError, missing metadata: not a part
            raise SniperError(
                f"{p}: not a readable chip table part ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None
        if table is None:
            raise SniperError(f"{p}: part of another chip table than {folder / MANIFEST} describes")
        yield {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}


def _resolve_chip_path(path: Path) -> Path:
    """A chip table path: a file, a sharded folder, or a `sniper chips` output folder holding one."""
    if not path.is_dir() or (path / MANIFEST).exists():
        return path
    single, sharded = path / "chips.parquet", path / "chips"
    if (sharded / MANIFEST).exists():
        if single.exists():
            raise SniperError(f"{path}: holds both chips.parquet and a sharded chips/; pass the one to read")
        return sharded
    return single


def _part_totals(path: Path, index: int, start: int, stop: int, inputs_id: str) -> ChipTotals | str | None:
    """A finished part's totals; None when it is missing; why it cannot be kept otherwise."""
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    try:
        md = pq.read_metadata(path)
        meta = json.loads((md.metadata or {})[PART_KEY])
        totals = ChipTotals(**meta["totals"])
    except Exception as e:  # truncated (no footer), not parquet, no or bad part metadata
        return f"unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if (meta.get("inputs"), meta.get("index"), meta.get("start"), meta.get("stop")) != (
        inputs_id,
        index,
        start,
        stop,
    ):
        return "written for other inputs"
    if not md.num_rows == meta.get("rows") == totals.pos + totals.neg or totals.images != stop - start:
        return f"{md.num_rows} rows, its metadata says {meta.get('rows')} rows of {totals.images} images"
    return totals


@dataclass(frozen=True)
class _PartJob:
    """One part to mine and write (sent to a worker)."""

    index: int
    start: int
    tasks: list[ImageTask]
    path: str
    inputs_id: str


def _write_part(job: _PartJob) -> tuple[int, ChipTotals]:
    """Mine a part's images (``SHARD_SIZE`` at a time) and write its parquet file atomically,
    its range, row count and totals in the footer's key-value metadata."""
    import pyarrow.parquet as pq

    cfg: ChipConfig = _worker_state["cfg"]
    schema = _arrow_schema()
    totals = ChipTotals.zeros(len(cfg.scales))
    with atomic_path(job.path) as tmp:
        writer = pq.ParquetWriter(tmp, schema)
        try:
            buffer: list[dict[str, np.ndarray]] = []
            buffered = 0
            for shard in _shards(iter(job.tasks), SHARD_SIZE):
                cols, t = _mine_shard(shard)
                totals.merge(t)
                buffer.append(cols)
                buffered += len(cols["image_id"])
                if buffered >= WRITE_ROWS:
                    _write_rows(writer, schema, buffer)
                    buffer, buffered = [], 0
            _write_rows(writer, schema, buffer)
            meta = {
                "index": job.index,
                "start": job.start,
                "stop": job.start + len(job.tasks),
                "rows": totals.pos + totals.neg,
                "inputs": job.inputs_id,
                "totals": dataclasses.asdict(totals),
            }
            writer.add_key_value_metadata({PART_KEY.decode(): json.dumps(meta)})
        finally:
            writer.close()
    return job.index, totals


def write_chip_shards(
    ds: CocoDataset,
    props: CocoResults | None,
    cfg: ChipConfig,
    out_dir: str | Path,
    *,
    seed: int,
    epoch: int = 0,
    workers: int = 1,
    shard_images: int = SHARD_IMAGES,
    overwrite: bool = False,
    progress: bool = True,
) -> ChipTotals:
    """Write the chip table as the resumable folder ``out_dir`` of parquet parts of
    ``shard_images`` images each (see the module docstring); return the totals.

    Parts already written by an earlier run with the same inputs are kept (their footers are
    read and checked), the others mined in ``workers`` processes, a few at a time; other inputs
    raise :class:`~sniper.errors.SniperError` unless ``overwrite``. The parts do not depend on
    ``workers``, nor on where earlier runs were interrupted."""
    from tqdm import tqdm

    if shard_images < 1:
        raise ValueError(f"shard_images must be >= 1, got {shard_images}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SniperError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temps(out)  # of workers killed outright (kill -9) in an earlier run
    if removed:
        print(f"removed {removed} temp file(s) of an interrupted run from {out}", file=sys.stderr)
    inputs = _shard_inputs(ds, props, cfg, seed, epoch, shard_images)
    inputs_id = _inputs_id(inputs)
    old = None if overwrite else _read_manifest(out)
    if not overwrite:
        if old is not None and {k: old.get(k) for k in _INPUT_KEYS} != inputs:
            raise SniperError(
                f"{out}: holds a chip table of other inputs: {_differences(old, inputs)} differ; "
                "write it elsewhere or overwrite it (overwrite=True, sniper chips --overwrite)"
            )
        if old is None and _part_files(out):
            raise SniperError(f"{out}: holds part files but no {MANIFEST}; write elsewhere or overwrite it")
    else:
        (out / MANIFEST).unlink(missing_ok=True)
        for p in _part_files(out):
            p.unlink()
        old = None
    n, n_parts = inputs["images"], inputs["parts"]
    done: dict[int, ChipTotals] = {}
    bad: list[str] = []
    if old is not None:
        for i in range(n_parts):
            state = _part_totals(
                out / part_name(i), i, i * shard_images, min(n, (i + 1) * shard_images), inputs_id
            )
            if isinstance(state, ChipTotals):
                done[i] = state
            elif state is not None:
                bad.append(f"{part_name(i)}: {state}")
    if bad:
        print(
            f"{out}: mining {len(bad)} part(s) again ({bad[0]}{', ...' if len(bad) > 1 else ''})",
            file=sys.stderr,
        )
    if done and len(done) < n_parts:
        print(f"{out}: resuming, {len(done)} of {n_parts} parts already written", file=sys.stderr)
    todo = [i for i in range(n_parts) if i not in done]
    if todo or old is None or not old.get("complete"):
        atomic_write_json(out / MANIFEST, {**inputs, "complete": False})

    def jobs() -> Iterator[_PartJob]:  # built lazily: only the parts in flight hold their tasks
        for i in todo:
            start, stop = i * shard_images, min(n, (i + 1) * shard_images)
            tasks = list(image_tasks(ds, props, range(start, stop)))
            yield _PartJob(i, start, tasks, str(out / part_name(i)), inputs_id)

    initial = sum(t.images for t in done.values())
    with tqdm(total=n, initial=initial, desc="chips", unit="img", file=sys.stderr, dynamic_ncols=True,
              disable=not progress) as bar:  # fmt: skip
        results = _pool_map(_write_part, jobs(), cfg, seed, epoch, workers, ordered=False)
        try:
            for i, t in results:
                done[i] = t
                bar.update(t.images)
        except BaseException:
            results.close()  # terminates the pool: its workers' temp files can go now
            remove_stale_temps(out)
            raise
    totals = ChipTotals.zeros(len(cfg.scales))
    for i in range(n_parts):  # in part order, whichever run wrote which part
        totals.merge(done[i])
    if todo or old is None or not old.get("complete"):
        manifest = {
            **inputs,
            "complete": True,
            "rows": totals.pos + totals.neg,
            "totals": dataclasses.asdict(totals),
        }
        atomic_write_json(out / MANIFEST, manifest)
    return totals


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
