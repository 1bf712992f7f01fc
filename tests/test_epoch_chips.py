"""Chips mined anew every epoch and chips of a window of images shuffled together (issue #12 §1-2)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_chip_dataset import chip_cfg, toy_table, write_dataset  # tests/ is on sys.path under pytest

from sniper.config import DataConfig
from sniper.data.chip_dataset import ChipBatchSource, ChipDataset
from sniper.data.chip_table import build_chip_table
from sniper.data.coco import load_coco
from sniper.data.epoch_chips import EpochChips
from sniper.data.epoch_plan import ChipBatchSampler, epoch_plan

# ---------------------------------------------------------------- windows of images (mix_images)


@settings(max_examples=40, deadline=None)
@given(
    n_images=st.integers(1, 15),
    window=st.integers(2, 6),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 5),
)
def test_mixed_windows_hold_exactly_the_chips_of_consecutive_runs(n_images, window, seed, epoch):
    t = toy_table(n_images=n_images, seed=seed % 97)
    runs = epoch_plan(t, seed=seed, epoch=epoch)
    mixed = epoch_plan(t, seed=seed, epoch=epoch, mix_images=window)
    again = epoch_plan(t, seed=seed, epoch=epoch, mix_images=window)
    np.testing.assert_array_equal(mixed.index, again.index)  # a function of (seed, epoch)
    assert sorted(mixed.index.tolist()) == sorted(runs.index.tolist())
    # the image order of the unmixed plan, cut every `window` images
    ids = t.image_id[runs.index]
    order = ids[np.concatenate([[0], np.flatnonzero(np.diff(ids)) + 1])]
    pos = 0
    for w in range(0, len(order), window):
        images = set(order[w : w + window].tolist())
        n = int(np.isin(ids, list(images)).sum())
        got = mixed.index[pos : pos + n]
        assert set(t.image_id[got].tolist()) == images
        assert sorted(got.tolist()) == sorted(runs.index[pos : pos + n].tolist())
        pos += n
    assert pos == len(mixed)
    # the flip of a chip does not depend on where it lands
    flips = dict(zip(runs.index.tolist(), runs.flip.tolist()))
    assert all(flips[i] == f for i, f in zip(mixed.index.tolist(), mixed.flip.tolist()))


def test_mixing_interleaves_images_and_one_means_runs():
    t = toy_table(n_images=12, pos=(3, 6))
    runs = epoch_plan(t, seed=4, epoch=1)
    np.testing.assert_array_equal(epoch_plan(t, seed=4, epoch=1, mix_images=1).index, runs.index)
    mixed = epoch_plan(t, seed=4, epoch=1, mix_images=4)
    changes = lambda p: int((np.diff(t.image_id[p.index]) != 0).sum())  # noqa: E731
    assert changes(runs) == 11  # one run per image
    assert changes(mixed) > 2 * changes(runs)  # images interleave inside each window
    with pytest.raises(ValueError, match="mix_images"):
        epoch_plan(t, seed=4, epoch=1, mix_images=0)


@pytest.mark.parametrize("length", [1, 7, 20, 55])
@pytest.mark.parametrize("world", [1, 3])
def test_fixed_length_wraps_or_cuts_the_shuffled_order(length, world):
    t = toy_table(n_images=9)
    free = epoch_plan(t, seed=2, epoch=3)
    full = epoch_plan(t, seed=2, epoch=3, length=length)
    assert full.total == length
    np.testing.assert_array_equal(full.index, np.resize(free.index, length))
    shards = [epoch_plan(t, seed=2, epoch=3, length=length, rank=r, world_size=world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    np.testing.assert_array_equal(np.concatenate([s.index for s in shards])[:length], full.index)


# ---------------------------------------------------------------- chips mined anew


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("epochs")
    coco = load_coco(write_dataset(root, n_images=4, size=(420, 300)))
    cfg = dataclasses.replace(chip_cfg(), random_stride=[9, 40])
    base, _ = build_chip_table(coco, None, cfg, seed=5, epoch=0)
    return coco, cfg, base, root / "images"


def chip_set(table, image_id=None):
    keep = np.ones(len(table), bool) if image_id is None else table.image_id == image_id
    return {(int(i), int(s), *np.round(b, 6).tolist()) for i, s, b in
            zip(table.image_id[keep], table.scale_index[keep], table.boxes[keep])}  # fmt: skip


def test_epoch_tables_are_mined_anew_and_reproducible(data):
    coco, cfg, base, _ = data
    tables = EpochChips(coco, None, cfg, seed=5, base=base)
    assert tables(0) is base
    one, two = tables(1), EpochChips(coco, None, cfg, seed=5, base=base)(1)
    assert chip_set(one) == chip_set(two)  # same (seed, epoch): same chips, in any process
    assert chip_set(one) == chip_set(build_chip_table(coco, None, cfg, seed=5, epoch=1)[0])
    changed = [e for e in range(1, 5) if chip_set(tables(e)) != chip_set(base)]
    assert len(changed) >= 3  # new strides / tie-breaks move the chips
    assert tables(4) is tables(4)  # the current epoch is mined once
    assert set(tables.seconds) == {1, 2, 3, 4}


def test_images_set_aside_stay_out_of_every_epoch(data):
    coco, cfg, base, _ = data
    tables = EpochChips(coco, None, cfg, seed=5, base=base, exclude_images=np.array([11, 13]))
    for e in (1, 2):
        assert set(tables(e).image_id.tolist()) == {10, 12}


def test_fixed_stride_still_changes_tie_breaks_but_not_the_count_rule(data):
    coco, cfg, base, _ = data
    fixed = dataclasses.replace(cfg, random_stride=None)
    b0, _ = build_chip_table(coco, None, fixed, seed=5, epoch=0)
    tables = EpochChips(coco, None, fixed, seed=5, base=b0)
    # every epoch covers every coverable box (the greedy's guarantee), whatever the tie-breaks
    for e in (1, 2, 3):
        assert set(tables(e).image_id.tolist()) == set(b0.image_id.tolist())


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_source_trains_each_epoch_on_its_own_chips_and_resumes_exactly(data, workers):
    coco, cfg, base, images = data
    tables = EpochChips(coco, None, cfg, seed=5, base=base)
    ds = ChipDataset(coco, base, images, cfg, DataConfig())
    sampler = ChipBatchSampler(base, 2, seed=5, num_workers=workers, drop_last=True, tables=tables)
    src = ChipBatchSource(ds, sampler, num_workers=workers)
    n = src.batches_per_epoch()
    seen = {}
    for epoch in (0, 1, 2):
        batches = list(src.iterate(epoch, 0))
        assert len(batches) == n  # every epoch has epoch 0's length
        boxes = {(int(t["image_id"]), *np.round(t["chip_box"].numpy(), 6).tolist()) for _, ts in batches for t in ts}
        table = tables(epoch)
        expect = {(int(i), *np.round(b, 6).tolist()) for i, b in zip(table.image_id, table.boxes)}
        assert boxes <= expect  # items are chips of this epoch's table
        seen[epoch] = (boxes, batches)
    assert seen[1][0] != seen[0][0] and seen[2][0] != seen[1][0]
    # resume in the middle of epoch 1 after epoch 2 ran: the same batches as the first time
    tail = list(src.iterate(1, 3))
    assert len(tail) == n - 3
    for (a, ta), (b, tb) in zip(tail, seen[1][1][3:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert [t["chip_box"].tolist() for t in ta] == [t["chip_box"].tolist() for t in tb]
