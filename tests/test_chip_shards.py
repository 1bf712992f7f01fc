"""The sharded, resumable chip table (`write_chip_shards`): same rows as `write_chip_table`,
resume after an interruption (even SIGKILL), corrupt parts mined again, inputs checked."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_chips_cmd import synthetic_coco  # tests/ is on sys.path under pytest

from sniper.config import Config
from sniper.data import chip_table
from sniper.data.chip_table import (
    COLUMN_TYPES,
    MANIFEST,
    ChipTable,
    ChipTotals,
    iter_chip_shards,
    part_name,
    write_chip_shards,
    write_chip_table,
)
from sniper.data.coco import load_coco, load_results
from sniper.errors import SniperError

CFG = Config().chips


@pytest.fixture(scope="module")
def data():
    d, props = synthetic_coco(7)
    ds = load_coco(d)
    return ds, load_results(props, ds)


def shards(ds, props, out, **kw):
    kw = {"seed": 5, "shard_images": 3, "progress": False, **kw}
    return write_chip_shards(ds, props, CFG, out, **kw)


def parts_of(folder) -> list[pa.Table]:
    m = json.loads((folder / MANIFEST).read_text())
    return [pq.read_table(folder / part_name(i)) for i in range(m["parts"])]


def assert_same_folder(a, b):
    assert json.loads((a / MANIFEST).read_text()) == json.loads((b / MANIFEST).read_text())
    ta, tb = parts_of(a), parts_of(b)
    assert len(ta) == len(tb) and all(x.equals(y) for x, y in zip(ta, tb))
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def assert_same_table(a: ChipTable, b: ChipTable):
    for f in dataclasses.fields(ChipTable):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype and np.array_equal(x, y), f.name


@pytest.fixture
def count_mining(monkeypatch):
    """Images mined in this process, by image id (wraps chip_table._mine_shard)."""
    mined: list[int] = []
    real = chip_table._mine_shard

    def counted(tasks):
        mined.extend(t.image_id for t in tasks)
        return real(tasks)

    monkeypatch.setattr(chip_table, "_mine_shard", counted)
    return mined


def test_shard_columns_and_totals_are_those_of_each_image(data):
    ds, props = data
    tasks = list(chip_table.image_tasks(ds, props))
    tasks.append(dataclasses.replace(tasks[0], image_id=1, boxes=np.zeros((0, 4)), iscrowd=np.zeros(0, bool)))
    chip_table._init_worker(CFG, 5, 0)
    cols, totals = chip_table._mine_shard(tasks)
    ref, ref_cols = ChipTotals.zeros(len(CFG.scales)), {k: [] for k in COLUMN_TYPES}
    for task in tasks:  # image by image, with ImageChips.columns and ChipTotals.add_image
        pos, neg = chip_table.image_chips(task, CFG, 5, 0)
        ref.add_image(task, pos, neg, CFG)
        for p in (pos, neg):
            for k, v in p.columns().items():
                ref_cols[k].append(np.asarray(v))
            ref_cols["w"].append((p.windows[:, 2] - p.windows[:, 0]).astype(np.int32))
            ref_cols["h"].append((p.windows[:, 3] - p.windows[:, 1]).astype(np.int32))
    assert totals == ref and totals.images_without_pos == 1 and totals.neg > 0
    for k, v in ref_cols.items():
        v = np.concatenate(v)
        assert cols[k].dtype == v.dtype and np.array_equal(cols[k], v), k


def test_same_rows_as_write_chip_table(tmp_path, data):
    ds, props = data
    single = write_chip_table(ds, props, CFG, tmp_path / "chips.parquet", seed=5, progress=False)
    totals = shards(ds, props, tmp_path / "chips")
    assert sorted(p.name for p in (tmp_path / "chips").iterdir()) == [MANIFEST] + [
        part_name(i) for i in range(3)
    ]
    # every column, row for row, in dataset order; each part holds its range of images
    whole = pq.read_table(tmp_path / "chips.parquet")
    parts = parts_of(tmp_path / "chips")
    assert whole.num_rows > 0 and pa.concat_tables(parts).equals(whole)
    for i, t in enumerate(parts):
        assert set(t.column("image_id").to_pylist()) == {int(x) for x in ds.image_ids[3 * i : 3 * i + 3]}
    assert_same_table(
        ChipTable.read_parquet(tmp_path / "chips"), ChipTable.read_parquet(tmp_path / "chips.parquet")
    )
    cols = list(iter_chip_shards(tmp_path / "chips", columns=["image_id", "kind"]))
    assert [set(c) for c in cols] == [{"image_id", "kind"}] * 3
    assert np.array_equal(np.concatenate([c["image_id"] for c in cols]), whole.column("image_id").to_numpy())
    # the totals: the same counts; float sums in another order
    a, b = dataclasses.asdict(single), dataclasses.asdict(totals)
    assert b.pop("neg_sampled_px") == pytest.approx(a.pop("neg_sampled_px"), rel=1e-12) and a == b
    m = json.loads((tmp_path / "chips" / MANIFEST).read_text())
    assert m["complete"] and m["rows"] == whole.num_rows and m["images"] == 7 and m["parts"] == 3
    assert m["totals"] == dataclasses.asdict(totals)
    for i in range(3):  # the part's totals are in its footer
        meta = json.loads(pq.read_metadata(tmp_path / "chips" / part_name(i)).metadata[b"sniper.chip_part"])
        assert (meta["index"], meta["start"], meta["stop"], meta["rows"]) == (
            i,
            3 * i,
            min(7, 3 * i + 3),
            parts[i].num_rows,
        )


def test_an_output_folder_reads_as_its_table(tmp_path, data):
    ds, props = data
    shards(ds, props, tmp_path / "out" / "chips")
    assert len(ChipTable.read_parquet(tmp_path / "out")) == sum(
        t.num_rows for t in parts_of(tmp_path / "out" / "chips")
    )
    write_chip_table(ds, props, CFG, tmp_path / "out" / "chips.parquet", seed=5, progress=False)
    with pytest.raises(SniperError, match=r"out: holds both chips.parquet and a sharded chips/"):
        ChipTable.read_parquet(tmp_path / "out")


def test_workers_do_not_change_the_table(tmp_path, data):
    ds, props = data
    t1 = shards(ds, props, tmp_path / "w1", shard_images=2)
    t2 = shards(ds, props, tmp_path / "w2", shard_images=2, workers=2)
    assert t1 == t2
    assert_same_folder(tmp_path / "w1", tmp_path / "w2")


def test_rerun_keeps_finished_parts(tmp_path, data, count_mining):
    ds, props = data
    out = tmp_path / "chips"
    first = shards(ds, props, out)
    assert count_mining == ds.image_ids.tolist()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    count_mining.clear()
    assert shards(ds, props, out) == first  # complete: nothing mined, nothing rewritten
    assert count_mining == [] and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    (out / part_name(1)).unlink()
    assert shards(ds, props, out) == first
    assert count_mining == ds.image_ids[3:6].tolist()  # only the missing part's images
    for i in (0, 2):
        assert (out / part_name(i)).stat().st_mtime_ns == stamps[part_name(i)]


def test_interrupted_run_resumes(tmp_path, data, monkeypatch, capsys):
    ds, props = data
    shards(ds, props, tmp_path / "ref", shard_images=2)
    monkeypatch.setattr(chip_table, "SHARD_SIZE", 1)
    monkeypatch.setattr(chip_table, "WRITE_ROWS", 1)  # rows reach the temp file before the interruption
    real, calls, resumed = chip_table._mine_shard, [], False

    def interrupted(tasks):
        calls.append(tasks[0].image_id)
        if len(calls) == 4 and not resumed:  # the second image of part 1
            raise KeyboardInterrupt
        return real(tasks)

    monkeypatch.setattr(chip_table, "_mine_shard", interrupted)
    out = tmp_path / "chips"
    with pytest.raises(KeyboardInterrupt):
        shards(ds, props, out, shard_images=2)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, part_name(0)]  # no temp file left
    assert not json.loads((out / MANIFEST).read_text())["complete"]
    with pytest.raises(SniperError, match=r"chips: incomplete chip table \(1 of 4 parts written\); rerun"):
        ChipTable.read_parquet(out)
    calls.clear()
    resumed = True
    shards(ds, props, out, shard_images=2)
    assert calls == ds.image_ids[2:].tolist()
    assert "resuming, 1 of 4 parts already written" in capsys.readouterr().err
    assert_same_folder(out, tmp_path / "ref")


def test_unreadable_parts_are_mined_again(tmp_path, data, count_mining, capsys):
    ds, props = data
    out = tmp_path / "chips"
    ref = shards(ds, props, out)
    shards(ds, props, tmp_path / "other", seed=6)
    good = {i: (out / part_name(i)).read_bytes() for i in range(3)}
    (out / part_name(0)).write_bytes(good[0][: len(good[0]) // 2])  # truncated: no footer
    # a complete folder with a bad part: reading names the part
    with pytest.raises(SniperError, match=r"part-00000.parquet: not a readable chip table part"):
        ChipTable.read_parquet(out)
    (out / part_name(1)).write_bytes(b"PAR1 not really PAR1")
    (out / part_name(2)).write_bytes((tmp_path / "other" / part_name(2)).read_bytes())  # another table's part
    count_mining.clear()
    assert shards(ds, props, out) == ref
    assert count_mining == ds.image_ids.tolist()
    assert "mining 3 part(s) again (part-00000.parquet: unreadable" in capsys.readouterr().err
    assert {i: (out / part_name(i)).read_bytes() for i in range(3)} == good  # the same bytes as before


@pytest.mark.parametrize(
    "change, differs",
    [
        ({"seed": 6}, "seed (5 -> 6)"),
        ({"epoch": 1}, "epoch (0 -> 1)"),
        ({"shard_images": 4}, "shard_images (3 -> 4), parts (3 -> 2)"),
        ({"props": None}, "proposals (given -> none)"),
        ({"cfg": dataclasses.replace(CFG, stride=48)}, "chips.stride (32 -> 48)"),
        ({"ds": "moved box"}, "dataset (other images, image sizes or boxes)"),
    ],
)
def test_other_inputs_are_an_error_unless_overwrite(tmp_path, data, change, differs):
    ds, props = data
    out = tmp_path / "chips"
    shards(ds, props, out)
    kw = {"seed": 5, "shard_images": 3, "epoch": 0, **change}
    props2 = kw.pop("props", props)
    cfg = kw.pop("cfg", CFG)
    ds2 = kw.pop("ds", ds)
    if ds2 == "moved box":
        d, _ = synthetic_coco(7)
        d["annotations"][4]["bbox"][0] += 0.5
        ds2 = load_coco(d)
    args = (ds2, props2, cfg)
    with pytest.raises(SniperError) as e:
        write_chip_shards(*args, out, progress=False, **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{out}: holds a chip table of other inputs: {differs} differ")
    totals = write_chip_shards(*args, out, progress=False, overwrite=True, **kw)
    assert totals == write_chip_shards(*args, tmp_path / "fresh", progress=False, **kw)
    assert_same_folder(out, tmp_path / "fresh")


def test_empty_dataset_and_images_without_chips(tmp_path):
    cats = [{"id": 1, "name": "a"}]
    empty = load_coco({"images": [], "annotations": [], "categories": cats})
    totals = write_chip_shards(empty, None, CFG, tmp_path / "empty", seed=0, progress=False)
    assert totals.images == 0 and sorted(p.name for p in (tmp_path / "empty").iterdir()) == [MANIFEST]
    assert len(ChipTable.read_parquet(tmp_path / "empty")) == 0
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(3)]
    bare = load_coco({"images": images, "annotations": [], "categories": cats})
    totals = write_chip_shards(bare, None, CFG, tmp_path / "bare", seed=0, shard_images=2, progress=False)
    assert totals.images == 3 and totals.pos == totals.neg == 0
    assert [t.num_rows for t in parts_of(tmp_path / "bare")] == [0, 0]
    assert len(ChipTable.read_parquet(tmp_path / "bare")) == 0


def test_not_a_chip_table_folder(tmp_path, data):
    ds, props = data
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / part_name(0)).write_bytes(b"?")
    with pytest.raises(SniperError, match=r"x: holds part files but no _manifest.json"):
        shards(ds, props, tmp_path / "x")
    (tmp_path / "f").write_text("")
    with pytest.raises(SniperError, match=r"f: exists and is not a folder"):
        shards(ds, props, tmp_path / "f")
    with pytest.raises(ValueError, match="shard_images must be >= 1"):
        shards(ds, props, tmp_path / "y", shard_images=0)


KILLED = """
import sys, time
sys.path.insert(0, sys.argv[3])
from sniper.config import Config
from sniper.data import chip_table
from sniper.data.coco import load_coco, load_results
from test_chips_cmd import synthetic_coco
chip_table.SHARD_SIZE, chip_table.WRITE_ROWS = 1, 1  # rows reach the temp file before the kill
real, calls = chip_table._mine_shard, []
def stalled(tasks):
    calls.append(1)
    if len(calls) == int(sys.argv[2]):
        print("stalled", flush=True)
        time.sleep(60)
    return real(tasks)
chip_table._mine_shard = stalled
d, props = synthetic_coco(7)
ds = load_coco(d)
chip_table.write_chip_shards(ds, load_results(props, ds), Config().chips, sys.argv[1], seed=5, shard_images=2,
                             progress=False)
"""


def test_sigkill_mid_run_then_rerun_is_identical(tmp_path, data):
    ds, props = data
    out = tmp_path / "chips"
    tests = os.path.dirname(__file__)
    p = subprocess.Popen([sys.executable, "-c", KILLED, str(out), "6", tests], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert "stalled\n" in iter(p.stdout.readline, "")  # in part 2, after 2 parts were written
    finally:
        p.kill()  # SIGKILL: no clean-up runs in the child
        p.wait()
        p.stdout.close()
    left = sorted(x.name for x in out.iterdir())
    assert left[0].startswith(f".{part_name(2)}.{p.pid}-") and left[0].endswith(".tmp")
    assert left[1:] == [MANIFEST, part_name(0), part_name(1)]
    stamps = {i: (out / part_name(i)).stat().st_mtime_ns for i in (0, 1)}
    time.sleep(0.01)
    shards(ds, props, out, shard_images=2)  # removes the dead writer's temp file, keeps parts 0 and 1
    assert {i: (out / part_name(i)).stat().st_mtime_ns for i in (0, 1)} == stamps
    shards(ds, props, tmp_path / "ref", shard_images=2)
    assert_same_folder(out, tmp_path / "ref")  # same rows (row groups differ: the child wrote 1-row groups)
    assert_same_table(ChipTable.read_parquet(out), ChipTable.read_parquet(tmp_path / "ref"))


def test_pool_keeps_a_bounded_window_and_passes_errors_on():
    drawn = []

    def items():
        for i in range(12):
            drawn.append(i)
            yield "x" if i == 9 else str(-i)

    results = chip_table._pool_map(int, items(), CFG, 0, 0, 2, ordered=False)
    first = next(results)
    assert len(drawn) == chip_table.IN_FLIGHT_PER_WORKER * 2  # drawn lazily: only the window is in flight
    got = [first]
    with pytest.raises(ValueError, match="invalid literal for int"):  # raised in a worker, re-raised here
        for r in results:
            got.append(r)
    assert set(got) <= {-i for i in range(12)} and len(drawn) <= 12
