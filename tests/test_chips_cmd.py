"""`sniper chips` end to end on a tiny synthetic COCO file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sniper.cli import main
from sniper.data import chip_table


def synthetic_coco(n_images: int = 7) -> tuple[dict, list]:
    rng = np.random.default_rng(3)
    sizes = [(640, 480), (300, 200), (1000, 800), (480, 640)]
    images, anns, props = [], [], []
    aid = 1
    for i in range(n_images):
        w, h = sizes[i % len(sizes)]
        iid = 100 + 3 * i
        images.append({"id": iid, "file_name": f"img{i}.png", "width": w, "height": h})
        for side, cat in ((20, 5), (100, 9), (170, 5)):
            x = float(rng.uniform(0, w - side))
            y = float(rng.uniform(0, h - side))
            anns.append({"id": aid, "image_id": iid, "category_id": cat, "bbox": [x, y, side, side * 0.8]})
            aid += 1
        if i == 0:
            anns.append({"id": aid, "image_id": iid, "category_id": 9, "bbox": [0, 0, 60, 60], "iscrowd": 1})
            aid += 1
        # a cluster of proposals away from the GT: negative-chip material at the finest scale
        for _ in range(40):
            props.append({"image_id": iid, "bbox": [w - 60.0, h - 50.0, 40.0, 30.0], "score": 0.5})
    props.append({"image_id": 999, "bbox": [1, 1, 5, 5], "score": 0.1})  # unknown image: counted
    cats = [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}]
    return {"images": images, "annotations": anns, "categories": cats}, props


@pytest.fixture
def coco_files(tmp_path):
    d, props = synthetic_coco()
    a = tmp_path / "ann.json"
    a.write_text(json.dumps(d))
    p = tmp_path / "props.json"
    p.write_text(json.dumps(props))
    return a, p


def run_chips(*args: str) -> int:
    return main(["chips", *args])


STATS_KEYS = {
    "images",
    "pos_chips_per_image",
    "neg_chips_per_image",
    "pixels_vs_single_scale",
    "pixels_vs_full_pyramid",
    "annotations",
}


def test_end_to_end(tmp_path, coco_files, capsys):
    ann, props = coco_files
    out = tmp_path / "out"
    assert run_chips("--annotations", str(ann), "--proposals", str(props), "--out", str(out)) == 0
    t = pq.read_table(out / "chips.parquet")
    assert {"image_id", "kind", "scale", "scale_index", "x1", "y1", "x2", "y2", "w", "h"} <= set(
        t.column_names
    )
    cols = {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}
    stats = json.loads((out / "stats.json").read_text())
    assert STATS_KEYS <= set(stats)
    d, _ = synthetic_coco()
    n = len(d["images"])
    kind = cols["kind"].astype(str)
    assert set(kind) == {"pos", "neg"}
    assert stats["images"] == n
    assert stats["pos_chips_per_image"] == pytest.approx((kind == "pos").sum() / n, abs=1e-4)
    assert stats["neg_chips_per_image"] == pytest.approx((kind == "neg").sum() / n, abs=1e-4)
    assert set(cols["image_id"].tolist()) <= {im["id"] for im in d["images"]}
    # chip w, h are chip px: the original extent times the factor, at most K
    np.testing.assert_allclose(cols["w"], (cols["x2"] - cols["x1"]) * cols["scale"], atol=1e-6)
    np.testing.assert_allclose(cols["h"], (cols["y2"] - cols["y1"]) * cols["scale"], atol=1e-6)
    assert cols["w"].max() <= 512 and cols["h"].max() <= 512
    # pixel ratios recomputed from the rows: K*K per chip over the 800/1333 single-scale pixels
    single = 0
    for im in d["images"]:
        f = min(800 / min(im["width"], im["height"]), 1333 / max(im["width"], im["height"]))
        single += round(im["width"] * f) * round(im["height"] * f)
    area = cols["w"] * cols["h"]
    pos = kind == "pos"
    assert stats["pixels_vs_single_scale_pos"] == pytest.approx(area[pos].sum() / single, abs=1e-4)
    sampled = sampled_px = 0
    for im in d["images"]:
        neg = (kind == "neg") & (cols["image_id"] == im["id"])
        k = min(2, int(neg.sum()))
        sampled += k
        sampled_px += area[neg].mean() * k if k else 0.0
    assert stats["pixels_vs_single_scale"] == pytest.approx((area[pos].sum() + sampled_px) / single, abs=1e-4)
    assert stats["pixels_vs_single_scale_padded"] == pytest.approx(
        (pos.sum() + sampled) * 512**2 / single, abs=1e-4
    )
    assert 0 < stats["pixels_vs_full_pyramid"] < stats["pixels_vs_single_scale"]
    # load reports: the crowd box is kept, the unknown proposal image is counted
    assert stats["annotations"]["crowd"] == 1
    assert stats["proposals"]["reasons"]["unknown_image"]["count"] == 1
    printed = capsys.readouterr().out
    assert "pixels vs single scale" in printed and "unknown_image" in printed
    # nothing left behind but the outputs
    assert sorted(p.name for p in out.iterdir()) == ["chips.parquet", "stats.json"]


def test_workers_give_the_same_parquet(tmp_path, coco_files, monkeypatch):
    monkeypatch.setattr(chip_table, "SHARD_SIZE", 2)  # several shards over 2 processes
    ann, props = coco_files
    common = ["--annotations", str(ann), "--proposals", str(props), "--seed", "5"]
    assert run_chips(*common, "--out", str(tmp_path / "w1"), "--workers", "1") == 0
    assert run_chips(*common, "--out", str(tmp_path / "w2"), "--workers", "2") == 0
    t1 = pq.read_table(tmp_path / "w1" / "chips.parquet")
    t2 = pq.read_table(tmp_path / "w2" / "chips.parquet")
    assert t1.num_rows > 0 and t1.equals(t2)
    s1 = json.loads((tmp_path / "w1" / "stats.json").read_text())
    s2 = json.loads((tmp_path / "w2" / "stats.json").read_text())
    assert s1 == s2


def test_interrupted_run_leaves_no_parquet(tmp_path, coco_files, monkeypatch):
    monkeypatch.setattr(chip_table, "SHARD_SIZE", 1)
    monkeypatch.setattr(chip_table, "WRITE_ROWS", 1)  # row groups hit the temp file before the interruption
    real = chip_table._mine_shard
    calls = []

    def interrupted(tasks):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(tasks)

    monkeypatch.setattr(chip_table, "_mine_shard", interrupted)
    ann, _ = coco_files
    out = tmp_path / "out"
    assert run_chips("--annotations", str(ann), "--out", str(out)) == 130
    assert len(calls) == 4
    assert list(out.iterdir()) == []  # no chips.parquet, no temp file, no stats.json


KILLED_CHIPS = """
import sys, time
from sniper.cli import main
from sniper.data import chip_table
chip_table.SHARD_SIZE, chip_table.WRITE_ROWS = 1, 1  # rows reach the temp file before the kill
real, calls = chip_table._mine_shard, []
def stalled(tasks):
    calls.append(1)
    if len(calls) == 3:
        print("writing", flush=True)
        time.sleep(60)
    return real(tasks)
chip_table._mine_shard = stalled
main(["chips", "--annotations", sys.argv[1], "--out", sys.argv[2]])
"""


def test_rerun_after_kill_removes_the_temp_file(tmp_path, coco_files, capsys):
    ann, _ = coco_files
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", KILLED_CHIPS, str(ann), str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert "writing\n" in iter(p.stdout.readline, "")  # the CLI prints its load report first
    finally:
        p.kill()  # SIGKILL: no clean-up runs in the child
        p.wait()
        p.stdout.close()
    left = [x.name for x in out.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".chips.parquet.{p.pid}-") and left[0].endswith(".tmp")
    # a live writer's temp file (here: named after pytest's parent process) must survive the rerun
    live = f".chips.parquet.{os.getppid()}-{left[0].split('-')[1].split('.')[0]}.abcd_123.tmp"
    (out / live).write_bytes(b"being written")
    assert run_chips("--annotations", str(ann), "--out", str(out)) == 0
    assert sorted(x.name for x in out.iterdir()) == sorted([live, "chips.parquet", "stats.json"])
    assert "removed 1 temp file(s) of an interrupted run" in capsys.readouterr().err


def test_malformed_annotations_cli_error(tmp_path):
    d, _ = synthetic_coco(2)
    d["images"][1]["id"] = d["images"][0]["id"]
    a = tmp_path / "bad.json"
    a.write_text(json.dumps(d))
    r = subprocess.run(
        [sys.executable, "-m", "sniper", "chips", "--annotations", str(a), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("sniper chips: error: ")
    assert "images[1] (id=100): duplicate image id" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "chips.parquet").exists()


def test_bad_annotation_is_skipped_or_strict_error(tmp_path, capsys):
    d, _ = synthetic_coco(2)
    d["annotations"][0]["bbox"][2] = float("nan")
    a = tmp_path / "nan.json"
    a.write_text(json.dumps(d))
    assert run_chips("--annotations", str(a), "--out", str(tmp_path / "o")) == 0
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["annotations"]["reasons"]["non_finite"]["count"] == 1
    assert "non_finite" in capsys.readouterr().out
    assert run_chips("--annotations", str(a), "--out", str(tmp_path / "s"), "--strict") == 2
    err = capsys.readouterr().err
    assert "sniper chips: error:" in err and "annotations[0]" in err and "non_finite" in err


def test_not_json_and_bad_proposals(tmp_path, coco_files, capsys):
    ann, _ = coco_files
    bad = tmp_path / "p.json"
    bad.write_text('{"image_id": 1}')
    assert run_chips("--annotations", str(ann), "--proposals", str(bad), "--out", str(tmp_path / "o")) == 2
    assert "expected a JSON list of results" in capsys.readouterr().err
    bad.write_text("[{")
    assert run_chips("--annotations", str(bad), "--out", str(tmp_path / "o")) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_visualize(tmp_path, coco_files):
    ann, props = coco_files
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (640, 480), (200, 30, 30)).save(images / "img0.png")  # only the first image exists
    out = tmp_path / "out"
    args = ["--annotations", str(ann), "--proposals", str(props), "--out", str(out)]
    # a missing image stops the default run naming the file; --on-bad-image skip draws a gray canvas
    assert run_chips(*args, "--visualize", "2", "--images", str(images)) == 2
    assert run_chips(*args, "--visualize", "2", "--images", str(images), "--on-bad-image", "skip") == 0
    viz = sorted(p.name for p in (out / "viz").iterdir())
    assert viz == ["100_chips.png", "100_items.png", "100_labels.png", "103_chips.png", "103_labels.png"]
    overview = np.asarray(Image.open(out / "viz" / "100_chips.png"))
    assert overview.shape[1:] == (640, 3) and overview.shape[0] > 480  # image + legend strip
    overview = overview[:480]
    assert (overview == [200, 30, 30]).all(axis=-1).mean() > 0.5  # drawn on the real image
    gray = np.asarray(Image.open(out / "viz" / "103_chips.png"))  # missing file: gray canvas
    assert gray.shape[1] == 300 and (gray[:200] == 128).all(axis=-1).mean() > 0.3
    labels = np.asarray(Image.open(out / "viz" / "100_labels.png"))
    green = (labels[..., 1] > 200) & (labels[..., 0] < 50)
    red = (labels[..., 0] > 240) & (labels[..., 1] < 50)
    assert green.any() and red.any()  # valid boxes and ignore regions / proposal dots


def test_argument_errors(tmp_path, coco_files, capsys):
    ann, _ = coco_files
    assert run_chips("--annotations", str(ann), "--out", str(tmp_path / "o"), "--workers", "0") == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert run_chips("--annotations", str(ann), "--out", str(tmp_path / "o"), "--set", "chips.stride=0") == 2
    assert "stride" in capsys.readouterr().err


# ---------------------------------------------------------------- --shard-images: the resumable folder


def test_sharded_table(tmp_path, coco_files, capsys):
    ann, props = coco_files
    common = ["--annotations", str(ann), "--proposals", str(props), "--seed", "5"]
    assert run_chips(*common, "--out", str(tmp_path / "one")) == 0
    assert run_chips(*common, "--out", str(tmp_path / "sh"), "--shard-images", "3") == 0
    assert "sh/chips/ (3 parts, " in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "sh").iterdir()) == ["chips", "stats.json"]
    parts = sorted(p.name for p in (tmp_path / "sh" / "chips").iterdir())
    assert parts == ["_manifest.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    whole = pq.read_table(tmp_path / "one" / "chips.parquet")
    assert pq.read_table(tmp_path / "sh" / "chips").sort_by("image_id").num_rows == whole.num_rows
    a = chip_table.ChipTable.read_parquet(tmp_path / "one")
    b = chip_table.ChipTable.read_parquet(tmp_path / "sh")  # the output folder: its chips/
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.image_id, b.image_id)
    s1 = json.loads((tmp_path / "one" / "stats.json").read_text())
    s2 = json.loads((tmp_path / "sh" / "stats.json").read_text())
    assert s1 == s2
    # other inputs: one line naming the folder and the difference; --overwrite replaces the table
    assert run_chips(*common[:-1], "6", "--out", str(tmp_path / "sh"), "--shard-images", "3") == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "sh/chips: holds a chip table of other inputs: seed (5 -> 6) differ" in err
    )
    assert (
        run_chips(*common[:-1], "6", "--out", str(tmp_path / "sh"), "--shard-images", "3", "--overwrite") == 0
    )
    assert json.loads((tmp_path / "sh" / "stats.json").read_text())["seed"] == 6
    assert run_chips(*common, "--out", str(tmp_path / "x"), "--shard-images", "-1") == 2
    assert "--shard-images must be >= 0" in capsys.readouterr().err


KILLED_SHARDED = """
import os, sys, time
from sniper.data import chip_table
# top level: spawned workers run this file too (as __mp_main__), so they mine through `stalled`
chip_table.SHARD_SIZE = 1
real = chip_table._mine_shard
def stalled(tasks):
    if tasks[0].image_id == 112:  # images[4], the first image of part 2
        print(f"stalled {os.getpid()}", flush=True)
        time.sleep(60)
    return real(tasks)
chip_table._mine_shard = stalled
if __name__ == "__main__":
    from sniper.cli import main
    main(["chips", "--annotations", sys.argv[1], "--proposals", sys.argv[2], "--out", sys.argv[3],
          "--shard-images", "2", "--workers", "2"])
"""


def _running(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie no parent has reaped yet is gone too


def test_sharded_resume_after_sigkill(tmp_path, coco_files, capsys):
    ann, props = coco_files
    out = tmp_path / "out"
    script = tmp_path / "child.py"
    script.write_text(KILLED_SHARDED)
    p = subprocess.Popen([sys.executable, str(script), str(ann), str(props), str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        line = next(x for x in iter(p.stdout.readline, "") if x.startswith("stalled ") or x == "")
        assert line.startswith("stalled ")  # a worker is inside part 2
        children = {int(line.split()[1])}
        for task in os.listdir(f"/proc/{p.pid}/task"):
            children.update(int(x) for x in open(f"/proc/{p.pid}/task/{task}/children").read().split())
    finally:
        p.kill()  # SIGKILL of `sniper chips`: its pool workers get no clean-up either
        p.wait()
        p.stdout.close()
    deadline = time.monotonic() + 15
    while any(map(_running, children)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_running, children))  # pool workers end with their parent, not wait forever
    chips = out / "chips"
    assert not (out / "stats.json").exists() and not (chips / "part-00002.parquet").exists()
    assert not json.loads((chips / "_manifest.json").read_text())["complete"]
    done = {p.name: p.stat().st_mtime_ns for p in chips.glob("part-*.parquet")}
    assert "part-00000.parquet" in done or "part-00001.parquet" in done
    args = ["--annotations", str(ann), "--proposals", str(props), "--shard-images", "2"]
    assert run_chips(*args, "--out", str(out)) == 0
    assert f"resuming, {len(done)} of 4 parts already written" in capsys.readouterr().err
    assert {n: (chips / n).stat().st_mtime_ns for n in done} == done  # finished parts kept as they were
    assert run_chips(*args, "--out", str(tmp_path / "ref")) == 0
    names = ["_manifest.json"] + [f"part-0000{i}.parquet" for i in range(4)]
    assert sorted(p.name for p in chips.iterdir()) == names  # no temp file left
    for n in names[1:]:
        assert pq.read_table(chips / n).equals(pq.read_table(tmp_path / "ref" / "chips" / n))
    assert (chips / "_manifest.json").read_text() == (
        tmp_path / "ref" / "chips" / "_manifest.json"
    ).read_text()
    assert (out / "stats.json").read_text() == (tmp_path / "ref" / "stats.json").read_text()
