"""End-to-end training pipeline: all four stages, learning, exact resume, DDP, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sniper.config import load_config
from sniper.engine.pipeline import run_pipeline

TINY_CONFIG = [
    "chips.chip_size=128",
    "chips.stride=32",
    "chips.scales=[{factor: 1.0, range: [0, 100]}, {longest: 128, range: [64, null]}]",
    "chips.neg_min_proposals=[2, 2]",
    "data.num_workers=0",
    "model.backbone=mobilenet_v2",
    "model.pretrained=false",
    "model.head_channels=64",
    "model.fc_dim=128",
    "model.anchor_sizes=[32, 64, 128]",
    "model.rpn_post_nms_top_n_train=64",
    "model.rpn_pre_nms_top_n_test=300",
    "model.rpn_post_nms_top_n_test=100",
    "train.batch_size=4",
    "train.lr=0.02",
    "train.warmup_iters=5",
    "train.log_every=2",
    "train.rpn_epochs=1",
    "proposals.scales=[{factor: 1.0}]",
    "proposals.top_per_scale=50",
    "infer.scales=[{factor: 1.0}]",
]


def _make_tiny_dataset(out: Path, n_images: int = 6, seed: int = 0) -> None:
    """Easy scenes a randomly initialised net can learn in seconds: red squares (category 5) and
    blue discs (category 9) of 30-70 px on a noisy grey background, 2-3 per 192x160 image."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n_images):
        w, h = 192, 160
        bg = rng.normal(110, 12, size=(h, w, 3)).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(bg)
        draw = ImageDraw.Draw(im)
        boxes: list[list[float]] = []
        while len(boxes) < rng.integers(2, 4):
            s = float(rng.integers(30, 70))
            x, y = float(rng.integers(0, w - s)), float(rng.integers(0, h - s))
            if any(x < b[0] + b[2] + 4 and b[0] < x + s + 4 and y < b[1] + b[3] + 4 and b[1] < y + s + 4 for b in boxes):
                continue
            cat = int(rng.choice([5, 9]))
            if cat == 5:
                draw.rectangle([x, y, x + s - 1, y + s - 1], fill=(220, 40, 40))
            else:
                draw.ellipse([x, y, x + s - 1, y + s - 1], fill=(40, 60, 220))
            boxes.append([x, y, s, s])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, s, s],
                         "area": s * s, "iscrowd": 0})  # fmt: skip
        im.save(out / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
    # sparse ids listed out of order: a mapping that follows file order instead of sorted ids
    # swaps the two classes end to end (model labels 1, 2 are ids 5, 9)
    cats = [{"id": 9, "name": "disc"}, {"id": 5, "name": "square"}]
    (out / "train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    _make_tiny_dataset(out)
    return out


def _cfg(*extra: str):
    return load_config(None, [*TINY_CONFIG, *extra])



def test_all_four_stages_run_and_record(tiny_data, tmp_path):
    cfg = _cfg("train.epochs=1", "train.max_iters=2")
    res = run_pipeline(cfg, tiny_data / "train.json", tiny_data / "images", tmp_path, device="cpu")
    book = json.loads((tmp_path / "stages.json").read_text())
    assert [k for k in book if book[k]["done"]] == ["rpn", "proposals", "negatives", "detector"]
    assert res.model_path.is_file() and (tmp_path / "rpn_model.pt").is_file()
    props = json.loads((tmp_path / "proposals.json").read_text())
    assert props and {"image_id", "bbox", "score", "category_id"} <= set(props[0])
    assert (tmp_path / "chips.parquet").is_file() and (tmp_path / "config.yaml").is_file()
    for stage in ("rpn", "detector"):
        assert (tmp_path / "logs" / f"{stage}.jsonl").is_file()
        assert (tmp_path / "plots" / f"{stage}_loss.png").is_file()
    # a rerun with resume skips every finished stage
    mtime = res.model_path.stat().st_mtime_ns
    run_pipeline(cfg, tiny_data / "train.json", tiny_data / "images", tmp_path, device="cpu", resume=True)
    assert res.model_path.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_tiny_run_learns_and_finds_its_training_objects(tiny_data, tmp_path):
    from sniper.boxes import iou_matrix
    from sniper.engine.checkpoint import load_model_for_inference
    from sniper.engine.predict import Predictor, coco_items, iter_loaded

    # ~300 iterations from random init; balanced RoI sampling gives the head enough foreground.
    cfg = _cfg("train.negatives=false", "train.epochs=100", "train.lr_steps=[80]", "train.lr=0.04",
               "model.box_batch_size_per_image=32", "model.box_positive_fraction=0.5")  # fmt: skip
    res = run_pipeline(cfg, tiny_data / "train.json", tiny_data / "images", tmp_path, device="cpu")
    rows = [json.loads(x) for x in (tmp_path / "logs" / "detector.jsonl").read_text().splitlines()]
    first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-3:]])
    assert last < 0.5 * first, f"loss did not fall clearly: {first:.3f} -> {last:.3f}"

    model, cfg2, cats = load_model_for_inference(res.model_path)
    from sniper.data.coco import load_coco

    coco = load_coco(tiny_data / "train.json")
    predictor = Predictor(model, cfg2.infer, cats, "cpu")
    found = total = 0
    for _, chunk in iter_loaded(coco_items(coco, tiny_data / "images"), cfg2.infer.scales, batch_size=2):
        dets = predictor.predict([im for _, im in chunk])
        for (item, _), d in zip(chunk, dets, strict=True):
            ann = coco.annotations(item.image_id)
            keep = d.scores > 0.3
            iou = iou_matrix(ann.boxes, d.boxes[keep]) if keep.any() else np.zeros((len(ann.boxes), 0))
            same = ann.category_ids[:, None] == d.category_ids[keep][None, :]
            found += int(((iou > 0.5) & same).any(axis=1).sum())
            total += len(ann.boxes)
    assert total > 0
    assert found / total >= 0.5, f"found {found} of {total} training objects"  # untrained: 0


def _final_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def _log_rows(path: Path) -> list[dict]:
    """A stage's logged rows (JSONL or CSV) without the timing column, the only one a resume may change."""
    import csv

    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "chips_per_s"} for r in rows]


def test_resume_equals_straight_run(tiny_data, tmp_path):
    # Budgets below the anchors and RoIs there are, so that the samplers (torch's global RNG) pick a
    # subset and the RNG reaches the gradients: a resume that forgets the RNG state ends elsewhere.
    extra = ("train.negatives=false", "train.epochs=2", "train.batch_size=2", "train.checkpoint_every=3",
             "train.deterministic=true", "model.rpn_batch_size_per_image=32",
             "model.box_batch_size_per_image=16")  # fmt: skip
    a = run_pipeline(_cfg(*extra), tiny_data / "train.json", tiny_data / "images", tmp_path / "a", device="cpu")
    n = json.loads((tmp_path / "a" / "stages.json").read_text())["detector"]["iterations"]
    per_epoch = n // 2
    # killed between two checkpoints (the resumed run redoes iterations) and mid-epoch
    stop = next((k for k in range(4, n) if k % 3 and k % per_epoch), None)
    assert stop is not None, f"{n} iterations: no interruption point between checkpoints"
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_cfg(*extra), tiny_data / "train.json", tiny_data / "images", tmp_path / "b", device="cpu",
                     interrupt_after=stop)  # fmt: skip
    assert not (tmp_path / "b" / "model_final.pt").exists()
    torch.manual_seed(1234)  # a new process would not share the first run's RNG state
    b = run_pipeline(_cfg(*extra), tiny_data / "train.json", tiny_data / "images", tmp_path / "b", device="cpu",
                     resume=True)  # fmt: skip
    sa, sb = _final_state(a.model_path), _final_state(b.model_path)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs after resume"
    for log in ("detector.jsonl", "detector.csv"):
        rows_a, rows_b = _log_rows(tmp_path / "a" / "logs" / log), _log_rows(tmp_path / "b" / "logs" / log)
        assert [r["iter"] for r in rows_b] == [r["iter"] for r in rows_a], f"{log}: other rows after resume"
        for ra, rb in zip(rows_a, rows_b, strict=True):
            assert ra == rb, f"{log}: row {ra['iter']} differs after resume"


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_gloo(tiny_data, tmp_path):
    """All four stages under DDP (2 ranks, gloo, CPU): the RPN stage, proposals sharded over the
    ranks, the rank-0-only negative stage, then the detector on positives + negatives; the ranks end both training
    stages with identical weights (checked by the library at the end of each, recorded in stages.json)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "sniper", "train", "--annotations", str(tiny_data / "train.json"),
        "--images", str(tiny_data / "images"), "--out", str(tmp_path / "run"), "--device", "cpu",
    ]  # fmt: skip
    for s in [*TINY_CONFIG, "train.epochs=1", "train.batch_size=2", "train.max_iters=2"]:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    book = json.loads((run / "stages.json").read_text())
    assert [k for k in book if book[k]["done"]] == ["rpn", "proposals", "negatives", "detector"]
    for stage in ("rpn", "detector"):
        sync = book[stage]["ddp_sync"]
        assert sync["ranks"] == 2 and sync["in_sync"] and sync["parameters"] > 0, (stage, sync)
        assert len(sync["checksums"]) == 2 and sync["checksums"][0] == sync["checksums"][1], (stage, sync)
        rows = [json.loads(x) for x in (run / "logs" / f"{stage}.jsonl").read_text().splitlines()]
        assert rows[-1]["iter"] == 2 and np.isfinite(rows[-1]["loss"])
    # proposals sharded over the ranks, merged by rank 0: the same records, in the same order, as
    # one process proposing over every image with the same RPN
    from sniper.config import load_config
    from sniper.data.coco import load_coco
    from sniper.engine.checkpoint import load_model_for_inference
    from sniper.engine.predict import predict_proposals

    assert book["proposals"]["ranks"] == 2 and not list(run.glob("proposals.part*"))
    merged = json.loads((run / "proposals.json").read_text())
    cfg = load_config(run / "config.yaml")
    rpn, _, _ = load_model_for_inference(run / "rpn_model.pt")
    coco = load_coco(tiny_data / "train.json")
    alone = predict_proposals(rpn, coco, tiny_data / "images", cfg.proposals, infer_cfg=cfg.infer, progress=False)
    assert merged and [r["image_id"] for r in merged] == [r["image_id"] for r in alone]
    np.testing.assert_allclose([r["bbox"] for r in merged], [r["bbox"] for r in alone], atol=1e-3)
    assert len({r["image_id"] for r in merged}) == len(coco.images)
    assert (run / "chips.parquet").is_file() and book["negatives"]["neg_chips"] > 0, book["negatives"]
    assert (run / "rpn_model.pt").is_file() and (run / "model_final.pt").is_file()


def test_cli_reports_bad_annotations_without_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [{"id": 1}], "annotations": [], "categories": []}')
    proc = subprocess.run(
        [sys.executable, "-m", "sniper", "train", "--annotations", str(bad), "--images", str(tmp_path),
         "--out", str(tmp_path / "run")],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "sniper train: error:" in proc.stderr and "Traceback" not in proc.stderr


def test_model_categories_are_stored_in_label_order():
    """model_final.pt's categories come from the pipeline's helper: label l is entry l - 1."""
    from sniper.data.coco import load_coco
    from sniper.engine.pipeline import _categories

    cats_in_file = [{"id": 90, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 7}]
    coco = load_coco({"images": [], "annotations": [], "categories": cats_in_file})
    cats = _categories(coco)
    assert [c["id"] for c in cats] == coco.category_of([1, 2, 3]).tolist() == [1, 7, 90]
    assert [c["name"] for c in cats] == ["person", "7", "zebra"]
    assert cats == coco.categories_by_label()


def test_reuse_stages_copies_the_first_three_and_leaves_the_detector_to_train(tmp_path):
    from sniper.engine.pipeline import StageBook, reuse_stages

    src = tmp_path / "src"
    (src / "chips_pos").mkdir(parents=True)
    (src / "chips_pos" / "chips.parquet").write_bytes(b"pos")
    for name in ("rpn_model.pt", "proposals.json", "chips.parquet", "model_final.pt"):
        (src / name).write_bytes(name.encode())
    book = {s: {"done": True, "seconds": 1.0} for s in ("rpn", "proposals", "negatives", "detector")}
    (src / "stages.json").write_text(json.dumps(book))
    dst = tmp_path / "dst"
    reuse_stages(src, dst)
    assert sorted(p.name for p in dst.iterdir()) == [
        "chips.parquet", "chips_pos", "proposals.json", "rpn_model.pt", "stages.json"]  # fmt: skip
    assert (dst / "chips_pos" / "chips.parquet").read_bytes() == b"pos"
    b = StageBook(dst)
    assert b.done("rpn") and b.done("proposals") and b.done("negatives") and not b.done("detector")
