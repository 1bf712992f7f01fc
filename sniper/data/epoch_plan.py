"""Which chips an epoch trains on, in which order, on which rank and DataLoader worker.

The chips themselves come as a :class:`sniper.data.chip_table.ChipTable`.

* :func:`epoch_plan`: all positive chips plus up to ``n`` sampled negatives per image
  (``sniper.chips.sample_negatives``), grouped into *runs* (all chips of one image, finest
  scale first, so one decode serves them all), runs shuffled, reproducible from
  ``(seed, epoch)``. With ``mix_images = W > 1`` the chips of every ``W`` consecutive runs are
  shuffled together (a shuffle buffer over a window of images: a batch then mixes up to ``W``
  images, for wider BatchNorm statistics, while a worker's decode cache of ``W`` images still
  serves every chip of the window). ``length`` fixes the number of items of the epoch
  (wrapping round or cutting the shuffled order): chips mined anew each epoch vary in number,
  and the schedule, resume and DDP need a fixed epoch length. The epoch is then split into
  equal contiguous shards per rank (wrapping round so DDP stays in step); each chip's flip is a
  hash of ``(seed, epoch, chip)``, independent of the order.
* :class:`ChipBatchSampler`: batches of one rank's shard, laid out so that DataLoader worker
  ``k`` (which receives batches ``k, k + W, ...``) gets one contiguous stretch of the shard;
  ``start`` skips exactly the items already consumed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from torch.utils.data import Sampler

from sniper.data.chip_table import ChipTable

__all__ = [
    "ChipBatchSampler", "ChipKey", "EpochPlan", "epoch_plan", "flip_bits", "sampled_negatives", "worker_batches",
]  # fmt: skip


class ChipKey(NamedTuple):
    """What a sampler hands the dataset: row ``index`` of the chip table, mirrored or not."""

    index: int
    flip: bool = False



def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def flip_bits(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """A fair coin per chip, a pure function of ``(seed, epoch, chip index)``."""
    with np.errstate(over="ignore"):
        base = _splitmix64(np.array([seed & 0xFFFFFFFF], dtype=np.uint64))[0] ^ np.uint64(epoch & 0xFFFFFFFF)
    h = _splitmix64(np.asarray(index, dtype=np.uint64) ^ _splitmix64(np.array([base]))[0])
    return (h >> np.uint64(63)).astype(bool)


@dataclass(frozen=True)
class EpochPlan:
    """The chips of one epoch for one rank, in consumption order (before worker layout)."""

    index: np.ndarray  # (T,) int64 rows of the chip table
    flip: np.ndarray  # (T,) bool
    total: int  # chips in the epoch over all ranks (before the wrapping round for ranks)

    def __len__(self) -> int:
        return len(self.index)

    def keys(self) -> list[ChipKey]:
        return [ChipKey(int(i), bool(f)) for i, f in zip(self.index, self.flip)]


def sampled_negatives(table: ChipTable, n: int, seed: int, epoch: int) -> np.ndarray:
    """Rows of the negative chips chosen for this epoch: up to ``n`` per image.

    The choice is the chip engine's own :func:`sniper.chips.sample_negatives`; each image's pool
    is handed over with ``count`` set to table rows, which come back with the chosen chips.
    """
    from sniper.chips import ImageChips, sample_negatives

    neg = np.flatnonzero(table.is_neg)
    if n <= 0 or len(neg) == 0:
        return np.zeros(0, dtype=np.int64)
    neg = neg[np.argsort(table.image_id[neg], kind="stable")]
    cuts = np.flatnonzero(np.diff(table.image_id[neg])) + 1
    chosen = []
    for rows in np.split(neg, cuts):
        f = table.scale[rows]
        pool = ImageChips(
            image_id=int(table.image_id[rows[0]]),
            boxes=table.boxes[rows],
            scale=f,
            scale_index=table.scale_index[rows],
            negative=np.ones(len(rows), dtype=bool),
            windows=np.rint(table.boxes[rows] * f[:, None]).astype(np.int64),
            count=rows.astype(np.int64),
        )
        picked = sample_negatives(pool, n, seed=seed, epoch=epoch, image_id=pool.image_id)
        chosen.append(np.asarray(picked.count, dtype=np.int64))
    return np.concatenate(chosen)


def epoch_plan(
    table: ChipTable,
    *,
    seed: int,
    epoch: int,
    negatives: bool = True,
    neg_per_image: int = 2,
    flip: bool = True,
    rank: int = 0,
    world_size: int = 1,
    mix_images: int = 1,
    length: int | None = None,
) -> EpochPlan:
    """This rank's chips for ``epoch``; see the module docstring for the rules."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if mix_images < 1:
        raise ValueError(f"mix_images must be >= 1, got {mix_images}")
    rows = np.flatnonzero(~table.is_neg)
    if negatives:
        rows = np.concatenate([rows, sampled_negatives(table, neg_per_image, seed, epoch)])
    # Runs: chips of one image together, finest scale first (a full-resolution decode serves the rest).
    order = np.lexsort((rows, -table.scale[rows], table.image_id[rows]))
    rows = rows[order]
    ids = table.image_id[rows]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ids)) + 1]) if len(rows) else np.zeros(0, np.int64)
    lengths = np.diff(np.concatenate([starts, [len(rows)]]))
    rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, 0x5A1D])
    perm = rng.permutation(len(starts))
    if len(perm):
        rows = np.concatenate([rows[starts[p] : starts[p] + lengths[p]] for p in perm])
    if mix_images > 1 and len(perm):
        # Window w holds the chips of runs [w * W, (w + 1) * W) of the shuffled order; a random
        # key per chip orders the chips inside each window (one sort, no loop over windows).
        window = np.repeat(np.arange(len(perm)) // mix_images, lengths[perm])
        mix = np.random.default_rng([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, 0x313C])
        rows = rows[np.lexsort((mix.random(len(rows)), window))]
    if length is not None and len(rows) and length != len(rows):
        rows = np.resize(rows, int(length))
    total = len(rows)
    per_rank = math.ceil(total / world_size) if total else 0
    # Wrap round so every rank has the same number of items (DDP steps stay in sync).
    padded = np.resize(rows, per_rank * world_size) if total else rows
    mine = padded[rank * per_rank : (rank + 1) * per_rank].astype(np.int64)
    flips = flip_bits(seed, epoch, mine) if flip else np.zeros(len(mine), dtype=bool)
    return EpochPlan(mine, flips, total)


# ---------------------------------------------------------------- batching


def worker_batches(n_items: int, batch_size: int, num_workers: int, drop_last: bool = False) -> list[range]:
    """Batches (ranges of plan positions) in the order a DataLoader with ``num_workers`` should get them.

    The plan is cut into consecutive batches, the batches into ``W`` contiguous streams (longest
    first), and the streams interleaved: the DataLoader's round robin then hands worker ``k``
    stream ``k``, so a worker's chips of one image arrive back to back and hit its image cache.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n_batches = n_items // batch_size if drop_last else math.ceil(n_items / batch_size)
    batches = [range(b * batch_size, min((b + 1) * batch_size, n_items)) for b in range(n_batches)]
    w = max(1, num_workers)
    q, r = divmod(n_batches, w)
    streams, pos = [], 0
    for k in range(w):
        size = q + (1 if k < r else 0)
        streams.append(batches[pos : pos + size])
        pos += size
    out = []
    for i in range(q + (1 if r else 0)):
        out.extend(s[i] for s in streams if i < len(s))
    return out


class ChipBatchSampler(Sampler[list[ChipKey]]):
    """Batch sampler over the epoch plan of one rank (pass as ``DataLoader(batch_sampler=...)``).

    ``set_epoch(epoch, start)`` selects the epoch and skips its first ``start`` items (in the order
    batches are yielded), so a resumed run continues exactly where it stopped.
    """

    def __init__(
        self,
        table: ChipTable,
        batch_size: int,
        *,
        seed: int = 0,
        negatives: bool = True,
        neg_per_image: int = 2,
        flip: bool = True,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        drop_last: bool = False,
        mix_images: int = 1,
        tables: Callable[[int], ChipTable] | None = None,
    ) -> None:
        self.table = table
        # epoch -> that epoch's chip table (chips mined anew per epoch); None: `table` every epoch.
        # Every epoch then has the length of epoch 0 (see epoch_plan's `length`).
        self.tables = tables
        self.mix_images = mix_images
        self.batch_size = int(batch_size)
        self.seed = seed
        self.negatives = negatives
        self.neg_per_image = neg_per_image
        self.flip = flip
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        self._length = self._plan(0, fixed=False).total if tables is not None else None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.epoch = int(epoch)
        self.start = int(start)

    def table_for(self, epoch: int) -> ChipTable:
        """The chip table epoch ``epoch`` samples from."""
        return self.table if self.tables is None else self.tables(epoch)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        return self._plan(self.epoch if epoch is None else epoch, fixed=True)

    def _plan(self, epoch: int, fixed: bool) -> EpochPlan:
        return epoch_plan(
            self.table_for(epoch),
            seed=self.seed,
            epoch=epoch,
            negatives=self.negatives,
            neg_per_image=self.neg_per_image,
            flip=self.flip,
            rank=self.rank,
            world_size=self.world_size,
            mix_images=self.mix_images,
            length=self._length if fixed else None,
        )

    def epoch_batches(self, epoch: int | None = None, start: int | None = None) -> list[list[ChipKey]]:
        """All batches of the epoch from item ``start`` on, as lists of keys."""
        plan = self.plan(epoch)
        start = self.start if start is None else start
        out: list[list[ChipKey]] = []
        skipped = 0
        for rng in worker_batches(len(plan), self.batch_size, self.num_workers, self.drop_last):
            if skipped + len(rng) <= start:
                skipped += len(rng)
                continue
            keep = rng[start - skipped :] if skipped < start else rng
            skipped = start
            out.append([ChipKey(int(plan.index[i]), bool(plan.flip[i])) for i in keep])
        return out

    def __iter__(self) -> Iterator[list[ChipKey]]:
        yield from self.epoch_batches()

    def __len__(self) -> int:
        return len(self.epoch_batches())
