"""The chip table of every epoch: chips mined anew per epoch, as the released code does.

Epoch 0 trains on the table mined before training (the run folder's ``chips.parquet``). Each
later epoch's chips are mined again by the chip engine with that epoch's stride
(:func:`sniper.chips.epoch_stride`, drawn from ``chips.random_stride``), tie-break order and
negative pools, all functions of ``(seed, epoch)``: a resumed run, and every DDP rank, mines
the same table without any file or message passing. Mining runs shard by shard, in a spawned
process pool for large datasets (``workers``); the main process only concatenates the columns.

Images set aside before training (bad files under ``data.on_bad_image=skip``) stay out of every
epoch's table. Only the current epoch's table is kept.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from sniper.config import ChipConfig
from sniper.data.chip_table import ChipTable, build_chip_table
from sniper.data.coco import CocoDataset, CocoResults

__all__ = ["EpochChips", "POOL_MIN_IMAGES"]

# Below this many images a process pool costs more to start than the mining it saves.
POOL_MIN_IMAGES = 2000


class EpochChips:
    """``tables(epoch) -> ChipTable``: the chips epoch ``epoch`` trains on (see the module docstring)."""

    def __init__(
        self,
        coco: CocoDataset,
        proposals: CocoResults | None,
        cfg: ChipConfig,
        *,
        seed: int,
        base: ChipTable,
        workers: int = 1,
        exclude_images: np.ndarray | None = None,
        verbose: bool = False,
    ) -> None:
        self.coco = coco
        self.proposals = proposals
        self.cfg = cfg
        self.seed = seed
        self.base = base
        self.workers = max(1, int(workers)) if len(coco) >= POOL_MIN_IMAGES else 1
        self.exclude_images = np.unique(np.asarray([] if exclude_images is None else exclude_images, np.int64))
        self.verbose = verbose
        self._epoch: int | None = None
        self._table: ChipTable | None = None
        self.seconds: dict[int, float] = {}  # epoch -> mining wall seconds

    def __call__(self, epoch: int) -> ChipTable:
        if epoch == 0:
            return self.base
        if epoch != self._epoch:
            self._table = None  # free the previous epoch's table before mining the next
            t0 = time.perf_counter()
            table, _ = build_chip_table(
                self.coco, self.proposals, self.cfg, seed=self.seed, epoch=epoch, workers=self.workers
            )
            if len(self.exclude_images):
                table = table.select(~np.isin(table.image_id, self.exclude_images))
            self._epoch, self._table = epoch, table
            self.seconds[epoch] = time.perf_counter() - t0
            if self.verbose:
                print(
                    f"epoch {epoch}: {len(table)} chips mined anew in {self.seconds[epoch]:.1f} s",
                    file=sys.stderr,
                )
        assert self._table is not None
        return self._table
