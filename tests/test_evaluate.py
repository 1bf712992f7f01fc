"""`sniper.engine.evaluate` and `sniper evaluate` against raw pycocotools and hand-made cases,
on both backends (pycocotools, faster-coco-eval)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sniper.cli import main
from sniper.engine.evaluate import evaluate_detections, evaluate_proposals
from sniper.errors import CocoFormatError, SniperError

FIXTURES = Path(__file__).parent / "fixtures"
GT = FIXTURES / "eval_gt.json"
DETS = FIXTURES / "eval_dets.json"
KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100", "ARs", "ARm", "ARl"]
FAST = "faster-coco-eval"


def _needs(backend):
    if backend == FAST:
        pytest.importorskip("faster_coco_eval")  # in the dev extra, so CI runs both


@pytest.fixture(params=["pycocotools", FAST])
def backend(request):
    """Each backend by name; faster-coco-eval's cases skip (visibly) when it is not installed."""
    _needs(request.param)
    return request.param


def raw_cocoeval(gt_path, dets_path, *, use_cats=True, max_dets=None, area_rng=None, area_lbl=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(dets_path))
        ev = COCOeval(gt, dt, "bbox")
        ev.params.useCats = int(use_cats)
        if max_dets is not None:
            ev.params.maxDets = max_dets
        if area_rng is not None:
            ev.params.areaRng, ev.params.areaRngLbl = area_rng, area_lbl
        ev.evaluate()
        ev.accumulate()
        if max_dets is None and area_rng is None:
            ev.summarize()
    return ev


# ----------------------------------------------------------------- AP == pycocotools


def test_fixture_has_what_the_test_needs():
    gt = json.loads(GT.read_text())
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert len({a["category_id"] for a in gt["annotations"]}) == 3 and len(gt["categories"]) == 4
    assert {img["id"] for img in gt["images"]} - {
        a["image_id"] for a in gt["annotations"]
    }  # an image without GT


def test_matches_pycocotools_exactly(backend):
    ev = raw_cocoeval(GT, DETS)
    m = evaluate_detections(GT, DETS, backend=backend)
    assert m["backend"] == backend
    assert m["stats"] == [float(s) for s in ev.stats]  # exact, every stat
    for key, s in zip(KEYS, ev.stats):
        assert m[key] == (None if s == -1 else float(s)), key
    assert 0 < m["AP"] < 1 and m["AP"] != m["AR@100"]
    # per class: pycocotools precision averaged per category, by name
    precision = ev.eval["precision"][:, :, :, 0, -1]
    expected = {}
    names = {c["id"]: c["name"] for c in ev.cocoGt.dataset["categories"]}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        expected[names[cat]] = float(np.mean(p[p > -1])) if (p > -1).any() else None
    assert m["per_class"] == expected
    assert m["per_class"]["unused"] is None and all(
        m["per_class"][n] is not None for n in ("circle", "square")
    )


def test_accepts_dict_and_list_and_does_not_modify_them():
    gt = json.loads(GT.read_text())
    dets = json.loads(DETS.read_text())
    gt0, dets0 = copy.deepcopy(gt), copy.deepcopy(dets)
    m = evaluate_detections(gt, dets)
    assert gt == gt0 and dets == dets0
    assert m["stats"] == evaluate_detections(GT, DETS)["stats"]


def test_custom_max_dets_and_area_ranges_match_pycocotools(backend):
    rng_lbl = ["all", "tiny", "big"]
    rng = [[0.0, 1e10], [0.0, 20.0**2], [20.0**2, 1e10]]
    ev = raw_cocoeval(GT, DETS, max_dets=[2, 5], area_rng=rng, area_lbl=rng_lbl)
    areas = {"tiny": (0, 20), "big": (20, 1e5)}
    m = evaluate_detections(GT, DETS, max_dets=[5, 2], area_ranges=areas, backend=backend)
    assert m["backend"] == backend
    p, r = ev.eval["precision"], ev.eval["recall"]

    def mean(s):
        return float(np.mean(s[s > -1]))

    assert m["AP"] == mean(p[:, :, :, 0, 1])
    assert m["AP50"] == mean(p[0, :, :, 0, 1])
    assert m["AP_tiny"] == mean(p[:, :, :, 1, 1])
    assert m["AP_big"] == mean(p[:, :, :, 2, 1])
    assert m["AR@2"] == mean(r[:, :, 0, 0]) and m["AR@5"] == mean(r[:, :, 0, 1])
    assert m["AR_tiny"] == mean(r[:, :, 1, 1])
    assert m["max_dets"] == [2, 5]


def test_empty_detections_give_zeros():
    m = evaluate_detections(GT, [])
    assert m["AP"] == 0.0 and m["AP50"] == 0.0 and m["AR@100"] == 0.0
    assert all(v in (0.0, None) for v in m["per_class"].values())
    assert m["per_class"]["circle"] == 0.0
    p = evaluate_proposals(GT, [])
    assert p["AR"] == 0.0 and p["AR50"] == 0.0


def test_perfect_detections_give_one():
    gt = json.loads(GT.read_text())
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    m = evaluate_detections(gt, dets)
    assert m["AP"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)


# ----------------------------------------------------------------- proposal recall


def _tiny_gt(sizes, image_size=1000):
    """One image, GT squares of the given side lengths laid out on a diagonal without overlap."""
    anns, x = [], 0.0
    for i, side in enumerate(sizes):
        anns.append(
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1 + i % 2,
                "bbox": [x, x, side, side],
                "area": side * side,
                "iscrowd": 0,
            }
        )
        x += side + 5
    return {
        "images": [{"id": 1, "width": image_size, "height": image_size, "file_name": "a.png"}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def test_proposal_recall_hand_checked():
    gt = _tiny_gt([40, 40, 40, 40])
    b = [a["bbox"] for a in gt["annotations"]]
    props = [
        {"image_id": 1, "category_id": 1, "bbox": b[0], "score": 0.9},  # exact
        {"image_id": 1, "category_id": 7, "bbox": b[1], "score": 0.8},  # exact; category ignored
    ]
    m = evaluate_proposals(gt, props)
    assert (
        m["AR50"] == pytest.approx(0.5) and m["AR75"] == pytest.approx(0.5) and m["AR"] == pytest.approx(0.5)
    )
    # third GT covered at IoU 0.62: counts at thresholds 0.50, 0.55, 0.60 only
    x, y, w, h = b[2]
    props.append({"image_id": 1, "category_id": 1, "bbox": [x, y, w, h * 0.62], "score": 0.7})
    m = evaluate_proposals(gt, props)
    assert m["AR50"] == pytest.approx(0.75)
    assert m["AR75"] == pytest.approx(0.5)
    assert m["AR"] == pytest.approx((3 * 0.75 + 7 * 0.5) / 10)
    assert m["max_proposals"] == 300 and m["num_gt"]["all"] == 4


def test_proposal_recall_respects_max_proposals():
    gt = _tiny_gt([40, 40])
    b = [a["bbox"] for a in gt["annotations"]]
    junk = [{"image_id": 1, "category_id": 1, "bbox": [900, 900, 10, 10], "score": 0.99}] * 5
    props = junk + [
        {"image_id": 1, "bbox": b[0], "score": 0.5, "category_id": 1},
        {"image_id": 1, "bbox": b[1], "score": 0.4, "category_id": 1},
    ]
    m = evaluate_proposals(gt, props, max_proposals=[5, 6, 100])
    assert m["by_max_proposals"]["5"]["AR50"] == 0.0
    assert m["by_max_proposals"]["6"]["AR50"] == pytest.approx(0.5)
    assert m["by_max_proposals"]["100"]["AR50"] == pytest.approx(1.0)
    assert m["AR50"] == pytest.approx(1.0) and m["max_proposals"] == 100


def test_size_buckets():
    # sqrt-areas 10, 30, 70, 150, 250, 400: one per paper bucket plus one above all of them
    sides = [10, 30, 70, 150, 250, 400]
    gt = _tiny_gt(sides, image_size=2000)
    b = [a["bbox"] for a in gt["annotations"]]
    found = [1, 3, 4]  # 30, 150, 250 found
    props = [{"image_id": 1, "category_id": 1, "bbox": b[i], "score": 1.0 - i / 10} for i in found]
    m = evaluate_proposals(gt, props)
    assert m["num_gt"] == {"all": 6, "0-25": 1, "25-50": 1, "50-100": 1, "100-200": 1, "200-300": 1}
    assert (m["AR_0-25"], m["AR_25-50"], m["AR_50-100"], m["AR_100-200"], m["AR_200-300"]) == (0, 1, 0, 1, 1)
    assert m["AR"] == pytest.approx(0.5)


def test_size_bucket_bound_is_inclusive_like_pycocotools():
    gt = _tiny_gt([50], image_size=200)  # sqrt-area exactly 50: in 25-50 and 50-100
    m = evaluate_proposals(gt, [{"image_id": 1, "bbox": gt["annotations"][0]["bbox"], "score": 1.0}])
    assert m["num_gt"]["25-50"] == 1 and m["num_gt"]["50-100"] == 1
    assert m["AR_25-50"] == 1.0 and m["AR_50-100"] == 1.0 and m["AR_0-25"] is None


def test_proposals_match_raw_pycocotools(backend):
    rng = [
        [0.0, 1e10],
        [0.0, 625.0],
        [625.0, 2500.0],
        [2500.0, 10000.0],
        [10000.0, 40000.0],
        [40000.0, 90000.0],
    ]
    lbl = ["all", "0-25", "25-50", "50-100", "100-200", "200-300"]
    ev = raw_cocoeval(GT, DETS, use_cats=False, max_dets=[300], area_rng=rng, area_lbl=lbl)
    r = ev.eval["recall"]
    m = evaluate_proposals(GT, DETS, backend=backend)
    assert m["backend"] == backend
    assert m["AR"] == float(np.mean(r[:, 0, 0, 0]))
    assert m["AR50"] == float(r[0, 0, 0, 0]) and m["AR75"] == float(r[5, 0, 0, 0])
    for a, name in enumerate(lbl[1:], start=1):
        s = r[:, 0, a, 0]
        assert m[f"AR_{name}"] == (float(np.mean(s[s > -1])) if (s > -1).any() else None)


# ----------------------------------------------------------------- bad input


def test_unknown_image_id_is_named():
    dets = json.loads(DETS.read_text()) + [
        {"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}
    ]
    with pytest.raises(CocoFormatError, match="image_id not in the ground truth: 999"):
        evaluate_detections(GT, dets)
    with pytest.raises(CocoFormatError, match="999"):
        evaluate_proposals(GT, dets)


def test_unknown_category_is_named():
    dets = [{"image_id": 10, "category_id": 42, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(
        CocoFormatError, match=r"category_id not in the ground truth: 42 .*valid: \[1, 2, 5, 7\]"
    ):
        evaluate_detections(GT, dets)


@pytest.mark.parametrize(
    ("dets", "message"),
    [
        ({"annotations": []}, "expected a JSON list"),
        ([{"image_id": 10, "category_id": 1, "score": 0.5}], "result 0: missing 'bbox'"),
        ([{"image_id": 10, "category_id": 1, "bbox": [0, 0, 5], "score": 0.5}], "result 0: bbox must be 4"),
        (
            [{"image_id": 10, "category_id": 1, "bbox": [0, 0, 5, 5], "score": "high"}],
            "score must be a finite",
        ),
        ([{"image_id": 10, "category_id": 1, "bbox": [0, 0, -5, 5], "score": 0.5}], "negative width"),
    ],
)
def test_malformed_results(dets, message):
    with pytest.raises(CocoFormatError, match=message):
        evaluate_detections(GT, dets)


def test_malformed_ground_truth():
    gt = json.loads(GT.read_text())
    gt["annotations"][2]["bbox"] = [1, 2, float("nan"), 4]
    with pytest.raises(CocoFormatError, match=r"annotations\[2\] \(id 3\): bbox"):
        evaluate_detections(gt, [])
    with pytest.raises(CocoFormatError, match="'images' must be a list"):
        evaluate_detections({"annotations": [], "categories": []}, [])


def test_missing_area_is_box_area():
    gt = json.loads(GT.read_text())
    for a in gt["annotations"]:
        a.pop("area")
    dets = json.loads(DETS.read_text())
    assert (
        evaluate_detections(gt, dets)["stats"] == evaluate_detections(GT, dets)["stats"]
    )  # fixture area = w*h


# ----------------------------------------------------------------- CLI


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--annotations", str(GT), "--detections", str(DETS), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "AP50" in text and "per-class AP" in text and "triangle" in text
    data = json.loads(out.read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert isinstance(data[key], float) and 0 <= data[key] <= 1
    assert set(data["per_class"]) == {"circle", "square", "triangle", "unused"}
    assert data["stats"] == evaluate_detections(GT, DETS)["stats"]


def test_cli_table_is_fixed_width(capsys):
    assert main(["evaluate", "--annotations", str(GT), "--detections", str(DETS), "--no-per-class"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [ln for ln in lines[1:] if ln.strip()]
    assert "per-class" not in "\n".join(lines)
    assert len({len(r) for r in rows}) == 1  # every row of the table has the same width


def test_cli_proposals(tmp_path, capsys):
    out = tmp_path / "recall.json"
    args = ["evaluate", "--annotations", str(GT), "--detections", str(DETS), "--proposals"]
    assert main([*args, "--max-dets", "100", "300", "1000", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "@100" in text and "@1000" in text and "AR_200-300" in text
    data = json.loads(out.read_text())
    assert data["max_proposals"] == 1000 and set(data["by_max_proposals"]) == {"100", "300", "1000"}


def test_cli_custom_area_range(capsys):
    args = ["evaluate", "--annotations", str(GT), "--detections", str(DETS), "--area-range", "tiny=0,20"]
    assert main([*args, "--area-range", "rest=20,inf"]) == 0
    assert "AP_tiny" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{", "not valid JSON"),
        (
            '[{"image_id": 999, "category_id": 1, "bbox": [0,0,1,1], "score": 1}]',
            "image_id not in the ground truth: 999",
        ),
        (
            '[{"image_id": 10, "category_id": 3, "bbox": [0,0,1,1], "score": 1}]',
            "category_id not in the ground truth: 3",
        ),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, capsys, content, message):
    bad = tmp_path / "dets.json"
    bad.write_text(content)
    assert main(["evaluate", "--annotations", str(GT), "--detections", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sniper evaluate: error:") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_missing_file_exits_2(tmp_path, capsys):
    assert main(["evaluate", "--annotations", str(tmp_path / "nope.json"), "--detections", str(DETS)]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_max_dets_follow_dense_ground_truth(tmp_path, capsys):
    from sniper.engine.evaluate import max_dets_for

    def gt(n):
        return {
            "images": [{"id": 1, "file_name": "a.jpg", "width": 2000, "height": 2000}],
            "annotations": [
                {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [k % 50 * 40, k // 50 * 40, 20, 20],
                 "area": 400, "iscrowd": 0}
                for k in range(n)
            ],  # fmt: skip
            "categories": [{"id": 1, "name": "car"}],
        }

    assert max_dets_for(gt(100)) == ([1, 10, 100], None)
    dets, note = max_dets_for(gt(250))
    assert dets == [1, 10, 100, 300] and "250 objects" in note
    # all 250 found: with COCO's 100 the recall (and AP) would be capped at 0.4
    g = gt(250)
    d = [{"image_id": 1, "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in g["annotations"]]
    (tmp_path / "gt.json").write_text(json.dumps(g))
    (tmp_path / "d.json").write_text(json.dumps(d))
    assert main(["evaluate", "--annotations", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "d.json"),
                 "--out", str(tmp_path / "m.json")]) == 0  # fmt: skip
    assert "250 objects" in capsys.readouterr().out
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["AP"] == pytest.approx(1.0) and m["AR@300"] == pytest.approx(1.0) and m["AR@100"] == pytest.approx(0.4)


# ----------------------------------------------------------------- backends agree, bit for bit


def _without_backend(m):
    return {k: v for k, v in m.items() if k != "backend"}


def _forbid_pycocotools_matching(mp) -> None:
    """pycocotools' ``COCOeval.evaluate`` (its slow Python matching) raises: the fast backend
    uses pycocotools only to accumulate, and a silent fallback must fail, not pass."""
    from pycocotools.cocoeval import COCOeval

    def forbidden(self):
        raise AssertionError("pycocotools' COCOeval.evaluate ran under the faster-coco-eval backend")

    mp.setattr(COCOeval, "evaluate", forbidden)


def _on_both(fn, *args, **kwargs):
    """``fn`` on pycocotools, then on faster-coco-eval with pycocotools' matching forbidden."""
    _needs(FAST)
    py = fn(*args, backend="pycocotools", **kwargs)
    with pytest.MonkeyPatch.context() as mp:
        _forbid_pycocotools_matching(mp)
        fast = fn(*args, backend=FAST, **kwargs)
    assert (py["backend"], fast["backend"]) == ("pycocotools", FAST)
    return py, fast


def test_the_guard_of_on_both_catches_pycocotools_matching():
    _needs(FAST)
    with pytest.MonkeyPatch.context() as mp:
        _forbid_pycocotools_matching(mp)
        with pytest.raises(AssertionError, match="COCOeval.evaluate ran"):
            evaluate_detections(GT, DETS, backend="pycocotools")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"max_dets": [5, 2], "area_ranges": {"tiny": (0, 20), "big": (20, 1e5)}},
        {"max_dets": [1]},
        {"max_dets": [1, 10, 100, 5000], "area_ranges": {}},
    ],
)
def test_backends_report_the_same_numbers(kwargs):
    py, fast = _on_both(evaluate_detections, GT, DETS, **kwargs)
    assert _without_backend(fast) == _without_backend(py)  # exact: every metric, per class, stats
    if not kwargs:
        assert fast["stats"] == [float(s) for s in raw_cocoeval(GT, DETS).stats]


def test_backends_give_pycocotools_precision_and_recall_arrays():
    from sniper.engine.evaluate import _run_cocoeval, load_ground_truth, load_results

    _needs(FAST)
    for use_cats, areas in ((True, {"s": (0, 32), "l": (32, 1e5)}), (False, {"a": (0, 25), "b": (25, 50)})):
        runs = {}
        for name in ("pycocotools", FAST):
            gt = load_ground_truth(GT)
            res = load_results(DETS, gt, check_categories=use_cats)
            kw = {"use_cats": use_cats, "max_dets": [1, 3, 100], "area_ranges": areas}
            runs[name] = _run_cocoeval(gt, res, backend=name, **kw)
        py, fast = runs["pycocotools"], runs[FAST]
        assert fast.backend == FAST
        assert np.array_equal(fast.precision, py.precision) and np.array_equal(fast.recall, py.recall)
        assert [int(c) for c in fast.cat_ids] == [int(c) for c in py.cat_ids]


def _dense_image(seed=0, many=1500, few=25):
    """One image, two categories: "a" has `few` GT boxes and `many` results (half of them
    near a GT box), "b" has `many` GT boxes and `few` results; crowd boxes, tied scores.
    pycocotools' matching is quadratic per (image, category), so this keeps it ~2 s."""
    rng = np.random.default_rng(seed)

    def boxes(n):
        return np.concatenate([rng.uniform(0, 1900, (n, 2)), rng.uniform(4, 90, (n, 2))], axis=1)

    def near(src, n):
        return src[rng.integers(len(src), size=n)] + rng.normal(0, 4, (n, 4)) * [1, 1, 0.5, 0.5]

    gt_a, gt_b = boxes(few), boxes(many)
    cats = [4] * few + [9] * many
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": c, "bbox": b.tolist(), "iscrowd": int(i % 50 == 7)}
        for i, (c, b) in enumerate(zip(cats, np.concatenate([gt_a, gt_b])))
    ]
    results = []
    for cat, bs in (
        (4, np.concatenate([near(gt_a, many // 2), boxes(many - many // 2)])),
        (9, near(gt_b, few)),
    ):
        for x, y, w, h in bs.tolist():
            score = round(float(rng.uniform()), 2)  # ties: broken by input order, identically
            results.append(
                {"image_id": 1, "category_id": cat, "bbox": [x, y, max(w, 1), max(h, 1)], "score": score}
            )
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 2000, "height": 2000}],
        "annotations": anns,
        "categories": [{"id": 9, "name": "b"}, {"id": 4, "name": "a"}],
    }
    return gt, results


def test_backends_agree_on_a_dense_image():
    gt, results = _dense_image()
    assert len(gt["annotations"]) + len(results) > 3000
    py, fast = _on_both(evaluate_detections, gt, results, max_dets=[1, 10, 100, 1000])
    assert _without_backend(fast) == _without_backend(py)
    assert 0 < fast["AP"] < 1 and fast["AR@100"] < fast["AR@1000"]  # the 1000 limit matters
    # class-agnostic, both categories pool into one matching: smaller, or pycocotools takes long
    gt, results = _dense_image(seed=1, many=300)
    areas = {"small": (0, 40), "large": (40, 1e5)}
    py, fast = _on_both(evaluate_proposals, gt, results, max_proposals=[10, 100], area_ranges=areas)
    assert _without_backend(fast) == _without_backend(py)
    assert 0 < fast["by_max_proposals"]["10"]["AR"] < fast["AR"] < 1


@pytest.mark.parametrize("string_image_ids", [False, True])
def test_backends_agree_with_sparse_unsorted_ids(string_image_ids):
    # categories listed out of order with sparse ids, image ids sparse and unsorted (or
    # strings), annotation ids 0 and huge: faster-coco-eval gets ranks, results must not move
    gt = json.loads(GT.read_text())
    cat_map = {1: 90, 2: 3, 5: 41, 7: 1000}
    img_map = {
        img["id"]: (f"img-{k}" if string_image_ids else 10**9 - 7 * k) for k, img in enumerate(gt["images"])
    }
    gt["categories"] = sorted(
        ({**c, "id": cat_map[c["id"]], "name": "shape"} for c in gt["categories"]), key=lambda c: -c["id"] % 7
    )  # one name for all: per-class keys carry the id
    gt["images"] = [{**img, "id": img_map[img["id"]]} for img in reversed(gt["images"])]
    for n, a in enumerate(gt["annotations"]):
        a.update(
            id=0 if n == 3 else 10**12 + n,
            category_id=cat_map[a["category_id"]],
            image_id=img_map[a["image_id"]],
        )
    dets = [
        {**d, "category_id": cat_map[d["category_id"]], "image_id": img_map[d["image_id"]]}
        for d in json.loads(DETS.read_text())
    ]
    py, fast = _on_both(evaluate_detections, gt, dets, max_dets=[1, 2, 100])
    assert _without_backend(fast) == _without_backend(py)
    assert list(fast["per_class"]) == ["shape (3)", "shape (41)", "shape (90)", "shape (1000)"]
    plain = evaluate_detections(GT, DETS, max_dets=[1, 2, 100], backend="pycocotools")["per_class"]
    assert fast["per_class"]["shape (90)"] == plain["circle"]
    assert fast["per_class"]["shape (3)"] == plain["square"]
    # annotation id 0 (a triangle) never counts as matched, in pycocotools as here
    assert fast["per_class"]["shape (41)"] < plain["triangle"]
    py, fast = _on_both(evaluate_proposals, gt, dets, max_proposals=[1, 5, 300])
    assert _without_backend(fast) == _without_backend(py)


def test_backends_agree_on_proposal_recall():
    areas = {"small": (0, 30), "rest": (30, 1e5)}
    py, fast = _on_both(evaluate_proposals, GT, DETS, max_proposals=[1, 3, 300], area_ranges=areas)
    assert _without_backend(fast) == _without_backend(py)
    assert fast["by_max_proposals"]["1"]["AR"] < fast["by_max_proposals"]["300"]["AR"]


@pytest.mark.parametrize("backend_name", ["pycocotools", FAST])
def test_proposals_count_when_the_ground_truth_has_no_category_1(backend_name):
    _needs(backend_name)
    gt = _tiny_gt([40, 40])
    for c, a in zip(gt["categories"], gt["annotations"]):
        c["id"] = a["category_id"] = c["id"] + 10  # categories 11 and 12
    props = [{"image_id": 1, "bbox": a["bbox"], "score": 0.5} for a in gt["annotations"]]
    assert evaluate_proposals(gt, props, backend=backend_name)["AR"] == pytest.approx(1.0)


def test_empty_results_on_both_backends():
    py, fast = _on_both(evaluate_detections, GT, [])
    assert _without_backend(fast) == _without_backend(py) and fast["AP"] == 0.0
    py, fast = _on_both(evaluate_proposals, GT, [])
    assert _without_backend(fast) == _without_backend(py) and fast["AR"] == 0.0


def test_iscrowd_must_be_a_flag():
    gt = json.loads(GT.read_text())
    gt["annotations"][1]["iscrowd"] = 2
    with pytest.raises(CocoFormatError, match=r"annotations\[1\] \(id 2\): iscrowd must be 0 or 1"):
        evaluate_detections(gt, [])


# ----------------------------------------------------------------- backend choice


def test_auto_backend_prefers_faster_coco_eval():
    _needs(FAST)
    assert evaluate_detections(GT, DETS)["backend"] == FAST
    assert evaluate_proposals(GT, DETS)["backend"] == FAST


def test_faster_backend_not_installed(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # `import faster_coco_eval` fails
    for fn in (evaluate_detections, evaluate_proposals):
        with pytest.raises(SniperError, match=r"not installed: pip install faster-coco-eval") as err:
            fn(GT, DETS, backend=FAST)
        assert "\n" not in str(err.value)
        assert fn(GT, DETS)["backend"] == "pycocotools"  # auto
    args = ["evaluate", "--annotations", str(GT), "--detections", str(DETS)]
    assert main([*args, "--backend", FAST]) == 2
    err = capsys.readouterr().err
    assert "pip install faster-coco-eval" in err and len(err.strip().splitlines()) == 1
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("(pycocotools)")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        evaluate_detections(GT, DETS, backend="cocoapi")


def test_cli_backend_option(tmp_path, capsys):
    _needs(FAST)
    stats = {}
    for name in ("pycocotools", FAST):
        out = tmp_path / f"{name}.json"
        args = ["evaluate", "--annotations", str(GT), "--detections", str(DETS), "--backend", name]
        assert main([*args, "--out", str(out)]) == 0
        assert capsys.readouterr().out.splitlines()[0].endswith(f"({name})")
        data = json.loads(out.read_text())
        assert data["backend"] == name
        stats[name] = data["stats"]
    assert stats["pycocotools"] == stats[FAST]
    args = ["evaluate", "--annotations", str(GT), "--detections", str(DETS), "--proposals", "--backend", FAST]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f"({FAST})")


# ----------------------------------------------------------------- mask AP (iou_type="segm")

# pycocotools' decode under numpy 2 (its __array__ has no copy keyword): noise, not a problem
_QUIET_DECODE = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _rle(mask):
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}


def _segm_case():
    """Two images; GT as polygons, compressed RLE and an uncompressed-RLE crowd region; results:
    perfect masks, shifted ones, a false positive and a miss, scores not in GT order."""
    from pycocotools import mask as mask_utils

    h1, w1, h2, w2 = 60, 80, 48, 64
    yy, xx = np.mgrid[0:h1, 0:w1]
    blob = ((xx - 55) ** 2 + (yy - 35) ** 2 <= 12**2) | ((xx >= 40) & (xx < 70) & (yy >= 32) & (yy < 38))
    crowd = np.zeros((h2, w2), bool)
    crowd[30:46, 2:30] = True
    flat = crowd.flatten(order="F")  # uncompressed RLE: column-major runs, zeros first
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    anns = [
        # polygons (a square in two parts, a triangle), RLE, crowd RLE
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[5, 5, 25, 5, 25, 25, 5, 25], [27, 5, 32, 5, 32, 10]],
         "bbox": [5, 5, 27, 20], "area": 412.5, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": _rle(blob), "bbox": [40, 23, 30, 25],
         "area": float(blob.sum()), "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 2, "segmentation": [[40, 4, 60, 4, 50, 24]], "bbox": [40, 4, 20, 20],
         "area": 200.0, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "segmentation": {"size": [h2, w2], "counts": runs},
         "bbox": [2, 30, 28, 16], "area": float(crowd.sum()), "iscrowd": 1},
        {"id": 5, "image_id": 2, "category_id": 1, "segmentation": [[8, 8, 20, 8, 20, 20, 8, 20]], "bbox": [8, 8, 12, 12],
         "area": 144.0, "iscrowd": 0},
    ]  # fmt: skip
    gt = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": h1, "width": w1},
            {"id": 2, "file_name": "b.png", "height": h2, "width": w2},
        ],
        "annotations": anns,
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "blob"}],
    }
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
    masks = {a["id"]: coco.annToMask(copy.deepcopy(a)).astype(bool) for a in anns}
    fp = np.zeros((h1, w1), bool)
    fp[40:55, 2:20] = True
    in_crowd = np.zeros((h2, w2), bool)
    in_crowd[32:40, 5:15] = True
    dets = [
        (1, 1, masks[1], 0.7),  # perfect
        (1, 2, np.roll(masks[2], 3, axis=1), 0.9),  # shifted 3 px: IoU ~0.7
        (1, 2, np.roll(masks[2], 9, axis=0), 0.5),  # shifted far: a duplicate / false positive
        (1, 1, fp, 0.8),  # nothing there
        (2, 2, np.roll(masks[3], (1, 1), axis=(0, 1)), 0.6),
        (2, 1, in_crowd, 0.95),  # inside the crowd region: ignored
        (2, 1, masks[5], 0.4),  # perfect
    ]
    results = [
        {"image_id": i, "category_id": c, "segmentation": _rle(m), "score": s,
         "bbox": [float(v) for v in mask_utils.toBbox(_rle(m))]}
        for i, c, m, s in dets
    ]  # fmt: skip
    return gt, results


def _raw_segm_cocoeval(gt, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        # the COCO segmentation results format: no bbox (pycocotools takes area and box from the mask)
        dt = coco_gt.loadRes([{k: v for k, v in copy.deepcopy(r).items() if k != "bbox"} for r in results])
        ev = COCOeval(coco_gt, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@_QUIET_DECODE
def test_segm_fixture_has_what_the_test_needs():
    gt, results = _segm_case()
    kinds = {type(a["segmentation"]).__name__ + str(type(a["segmentation"].get("counts")).__name__ if isinstance(a["segmentation"], dict) else "")
             for a in gt["annotations"]}  # fmt: skip
    assert kinds == {"list", "dictstr", "dictlist"}  # polygons, compressed and uncompressed RLE
    assert any(a["iscrowd"] for a in gt["annotations"])
    ev = _raw_segm_cocoeval(gt, results)
    assert 0 < ev.stats[0] < 1 and ev.stats[0] != ev.stats[1]  # shifted masks matter


@_QUIET_DECODE
def test_segm_matches_pycocotools_exactly(backend):
    gt, results = _segm_case()
    ev = _raw_segm_cocoeval(gt, results)
    m = evaluate_detections(gt, results, iou_type="segm", backend=backend)
    assert m["iou_type"] == "segm" and m["backend"] == backend
    assert m["stats"] == [float(s) for s in ev.stats]
    for key, s in zip(KEYS, ev.stats):
        assert m[key] == (None if s == -1 else float(s)), key
    box = evaluate_detections(gt, results, backend=backend)  # the default stays box AP
    assert box["iou_type"] == "bbox" and box["stats"] != m["stats"]
    # the same without bbox in the results; the results are not modified
    before = copy.deepcopy(results)
    assert evaluate_detections(gt, [{k: v for k, v in r.items() if k != "bbox"} for r in results],
                               iou_type="segm", backend=backend)["stats"] == m["stats"]  # fmt: skip
    assert results == before


@_QUIET_DECODE
def test_segm_backends_report_the_same_numbers():
    gt, results = _segm_case()
    for kw in ({}, {"max_dets": [1, 2, 100], "area_ranges": {"tiny": (0, 15), "big": (15, 1e5)}}):
        py, fast = _on_both(evaluate_detections, gt, results, iou_type="segm", **kw)
        assert _without_backend(fast) == _without_backend(py)
    py, fast = _on_both(evaluate_detections, gt, [], iou_type="segm")
    assert _without_backend(fast) == _without_backend(py) and fast["AP"] == 0.0


@_QUIET_DECODE
def test_segm_perfect_masks_give_one(backend):
    from pycocotools.coco import COCO

    gt, _ = _segm_case()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
         "segmentation": _rle(coco.annToMask(copy.deepcopy(a)))}
        for a in gt["annotations"] if not a["iscrowd"]
    ]  # fmt: skip
    m = evaluate_detections(gt, results, iou_type="segm", backend=backend)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)


@_QUIET_DECODE
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda gt, r: r[0].pop("segmentation"), r"result 0: missing 'segmentation'"),
        (lambda gt, r: r[1].update(segmentation={"size": [10, 10], "counts": "PP"}), r"result 1: .*\[10, 10\].*\[60, 80\]"),
        (lambda gt, r: r[2].update(segmentation=[[0, 0, 5, 0, 5, 5]]), r"result 2: segmentation must be a COCO RLE"),
        (lambda gt, r: gt["annotations"][2].pop("segmentation"), r"annotations\[2\] \(id 3\): mask evaluation needs"),
        (lambda gt, r: gt["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), r"id 1\): segmentation polygon 0 .*>= 6"),
        (lambda gt, r: gt["annotations"][3]["segmentation"]["counts"].append(5), r"id 4\): uncompressed RLE counts sum"),
        (lambda gt, r: gt["images"][1].pop("height"), r"images\[1\] \(id 2\): mask evaluation needs its 'height'"),
    ],
)  # fmt: skip
def test_segm_inputs_are_checked(edit, message):
    gt, results = _segm_case()
    edit(gt, results)
    with pytest.raises(CocoFormatError, match=message):
        evaluate_detections(gt, results, iou_type="segm")


def test_unknown_iou_type_is_refused():
    with pytest.raises(ValueError, match="iou_type must be one of bbox, segm"):
        evaluate_detections(GT, DETS, iou_type="mask")


@_QUIET_DECODE
def test_cli_iou_type(tmp_path, capsys):
    gt, results = _segm_case()
    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(gt))
    dets_path.write_text(json.dumps(results))
    args = ["evaluate", "--annotations", str(gt_path), "--detections", str(dets_path), "--backend", "pycocotools"]
    out = tmp_path / "m.json"
    assert main([*args, "--iou-type", "segm", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("COCO mask evaluation: 2 images, 7 detections")
    segm = json.loads(out.read_text())
    assert segm["iou_type"] == "segm" and segm["stats"] == [float(s) for s in _raw_segm_cocoeval(gt, results).stats]
    assert main([*args, "--iou-type", "both", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.index("COCO box evaluation") < text.index("COCO mask evaluation")
    both = json.loads(out.read_text())
    assert set(both) == {"bbox", "segm"} and both["segm"] == segm and both["bbox"]["iou_type"] == "bbox"
    assert main([*args, "--proposals", "--iou-type", "segm"]) == 2
    assert "--proposals evaluates boxes only" in capsys.readouterr().err
