"""COCO loading: the bad-input policy record by record, category mapping, grouping by image."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniper.data.coco import _fast_columns, load_coco, load_results
from sniper.errors import CocoFormatError


def base() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 7, "file_name": "b.jpg", "width": 50, "height": 60},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30], "iscrowd": 0},
            {"id": 11, "image_id": 7, "category_id": 18, "bbox": [0, 0, 50, 60], "iscrowd": 1},
            {"id": 12, "image_id": 1, "category_id": 18, "bbox": [50, 40, 10, 10]},
        ],
    }


def with_ann(**fields) -> dict:
    d = base()
    d["annotations"].append({"id": 99, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], **fields})
    return d


def test_valid_file_groups_annotations_by_image(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps(base()))
    ds = load_coco(p)
    assert len(ds) == 2 and ds.num_annotations == 3 and ds.num_classes == 2
    a = ds.annotations(1)
    assert a.ann_ids.tolist() == [10, 12]
    np.testing.assert_allclose(a.boxes, [[10, 10, 30, 40], [50, 40, 60, 50]])
    assert a.category_ids.tolist() == [3, 18] and a.iscrowd.tolist() == [False, False]
    b = ds.annotations(7)
    assert b.iscrowd.tolist() == [True]  # crowd kept, flagged
    assert ds.report.counts == {}
    assert not a.boxes.flags.writeable
    with pytest.raises(KeyError):
        ds.annotations(2)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.pop("images"), "missing top-level key 'images'"),
        (lambda d: d.pop("annotations"), "missing top-level key 'annotations'"),
        (lambda d: d.pop("categories"), "missing top-level key 'categories'"),
        (lambda d: d.update(images={}), "'images' must be a list"),
        (lambda d: d["images"][1].pop("width"), "images[1] (id=7): missing key(s) ['width']"),
        (lambda d: d["images"][1].pop("file_name"), "images[1] (id=7): missing key(s) ['file_name']"),
        (lambda d: d["images"][0].update(height=0), "images[0] (id=1): non-positive image size 100 x 0"),
        (lambda d: d["images"][0].update(width=-3), "non-positive image size"),
        (lambda d: d["images"][0].update(width=math.nan), "width/height must be numbers"),
        (lambda d: d["images"][0].update(id="x"), "images[0] (id='x'): id must be an integer"),
        (lambda d: d["images"][1].update(id=1), "images[1] (id=1): duplicate image id (first at images[0])"),
        (lambda d: d["images"].append(5), "images[2]: expected an object"),
        (
            lambda d: d["categories"][1].update(id=3),
            "categories[1] (id=3, name='dog'): duplicate category id",
        ),
        (lambda d: d["categories"][0].pop("id"), "categories[0] (id=None, name='cat'): missing key 'id'"),
    ],
)
def test_structural_problems_are_errors_naming_the_record(tmp_path, mutate, needle):
    d = base()
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(CocoFormatError) as e:
        load_coco(p)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_not_json_and_not_object(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco(p)
    p.write_text("[1, 2]")
    with pytest.raises(CocoFormatError, match="expected a JSON object at the top level, got list"):
        load_coco(p)
    with pytest.raises(FileNotFoundError):
        load_coco(tmp_path / "missing.json")


SKIPS = [
    ({"bbox": [1, 2, 0, 4]}, "non_positive_size"),
    ({"bbox": [1, 2, 3, -4]}, "non_positive_size"),
    ({"bbox": [1, math.nan, 3, 4]}, "non_finite"),
    ({"bbox": [1, 2, math.inf, 4]}, "non_finite"),
    ({"bbox": [1, 2, 3]}, "malformed"),
    ({"bbox": ["1", 2, 3, 4]}, "malformed"),
    ({"bbox": None}, "malformed"),
    ({"image_id": "1"}, "malformed"),
    ({"image_id": 12345}, "unknown_image"),
    ({"category_id": 4}, "unknown_category"),
    ({"id": 10}, "duplicate_id"),
    ({"bbox": [200, 200, 5, 5]}, "outside_image"),
    ({"bbox": [-20, 0, 10, 5]}, "outside_image"),
]


@pytest.mark.parametrize(("fields", "reason"), SKIPS)
def test_bad_annotations_are_skipped_and_counted_or_strict_errors(fields, reason):
    d = with_ann(**fields)
    ds = load_coco(copy.deepcopy(d))
    assert ds.num_annotations == 3  # only the bad one dropped
    assert ds.report.counts == {reason: 1}
    (example,) = ds.report.examples[reason]
    assert "annotations[3]" in example
    assert ds.report.to_dict()["reasons"][reason]["count"] == 1
    assert ds.report.to_dict()["skipped"] == 1
    assert reason in ds.report.format()
    with pytest.raises(CocoFormatError, match=r"annotations\[3\].*" + reason):
        load_coco(d, strict=True)


@pytest.mark.parametrize("missing", ["bbox", "image_id", "category_id"])
def test_missing_annotation_fields(missing):
    d = with_ann()
    del d["annotations"][3][missing]
    ds = load_coco(d)
    assert ds.report.counts == {"missing_field": 1}
    assert missing in ds.report.examples["missing_field"][0]
    d["annotations"].append("oops")
    assert load_coco(d).report.counts == {"missing_field": 2}


def test_partly_outside_is_clipped_and_counted():
    ds = load_coco(with_ann(bbox=[90, 70, 30, 30]))
    assert ds.report.counts == {"clipped": 1}
    np.testing.assert_allclose(ds.annotations(1).boxes[-1], [90, 70, 100, 80])
    # clipping is a fix, not a skip: strict mode keeps it
    assert load_coco(with_ann(bbox=[90, 70, 30, 30]), strict=True).num_annotations == 4


def test_missing_annotation_id_gets_fresh_id():
    d = with_ann()
    del d["annotations"][3]["id"]
    ds = load_coco(d)
    assert ds.report.counts == {"assigned_id": 1}
    assert 13 in ds.annotations(1).ann_ids.tolist()


def test_images_without_annotations_are_kept_and_counted():
    d = base()
    d["images"].append({"id": 8, "file_name": "c.jpg", "width": 10, "height": 10})
    d["annotations"].append({"id": 50, "image_id": 8, "category_id": 3, "bbox": [1, 1, 0, 1]})
    ds = load_coco(d)
    assert len(ds) == 3 and len(ds.annotations(8)) == 0
    assert ds.report.counts == {"images_without_annotations": 1, "non_positive_size": 1}
    assert "id=8" in ds.report.examples["images_without_annotations"][0]


def test_many_bad_records_keep_few_examples_but_count_all():
    d = base()
    d["annotations"] += [
        {"id": 100 + i, "image_id": 1, "category_id": 3, "bbox": [0, 0, 0, 1]} for i in range(50)
    ]
    r = load_coco(d).report
    assert r.counts == {"non_positive_size": 50} and len(r.examples["non_positive_size"]) == 3


@given(
    ids=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=30, unique=True),
)
@settings(max_examples=50, deadline=None)
def test_category_ids_round_trip(ids):
    d = base()
    d["categories"] = [{"id": i, "name": str(i)} for i in ids]
    d["annotations"] = []
    ds = load_coco(d)
    labels = ds.label_of(ids)
    assert sorted(labels.tolist()) == list(range(1, len(ids) + 1))
    assert ds.category_of(labels).tolist() == ids
    # order-preserving: sorted ids get increasing labels
    assert np.all(np.diff(ds.label_of(sorted(ids))) == 1)


def test_zero_based_and_sparse_category_ids():
    d = base()
    d["categories"] = [{"id": 0, "name": "a"}, {"id": 90, "name": "z"}, {"id": 5, "name": "m"}]
    d["annotations"] = [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [0, 0, 5, 5]}]
    ds = load_coco(d)
    assert ds.label_of([0, 5, 90]).tolist() == [1, 2, 3]
    assert ds.category_of([1, 2, 3]).tolist() == [0, 5, 90]
    assert ds.category_names == ["a", "m", "z"]
    with pytest.raises(ValueError, match="unknown category id"):
        ds.label_of([4])
    with pytest.raises(ValueError, match="outside 1..3"):
        ds.category_of([0])


def test_results_validation():
    ds = load_coco(base())
    res = [
        {"image_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 1, "bbox": [95, 0, 10, 10], "score": 0.5},  # clipped
        {"image_id": 42, "bbox": [0, 0, 10, 10], "score": 0.5},  # unknown image
        {"image_id": 7, "bbox": [0, 0, 10, math.nan], "score": 0.5},
        {"image_id": 7, "bbox": [0, 0, 10, 10], "score": math.inf},
        {"image_id": 7, "bbox": [0, 0, 10, 10]},  # no score
        {"image_id": 7, "bbox": [1, 2, 3, 4], "score": 0.1},
    ]
    r = load_results(res, ds)
    assert r.report.counts == {"clipped": 1, "unknown_image": 1, "non_finite": 2, "missing_field": 1}
    boxes, scores, cats = r.for_image(1)
    np.testing.assert_allclose(boxes, [[0, 0, 10, 10], [95, 0, 100, 10]])
    assert scores.tolist() == [0.9, 0.5] and cats.tolist() == [1, 1]
    assert r.for_image(7)[0].tolist() == [[1, 2, 4, 6]]
    with pytest.raises(CocoFormatError, match="expected a JSON list"):
        load_results({"a": 1}, ds)
    with pytest.raises(CocoFormatError, match=r"results\[2\].*unknown_image"):
        load_results(res, ds, strict=True)


def test_large_file_groups_every_image():
    """100k annotations over 10k images: every image gets exactly its own annotations."""
    rng = np.random.default_rng(0)
    n_img, n_ann = 10_000, 100_000
    img = rng.integers(0, n_img, n_ann)
    d = {
        "images": [{"id": i * 3, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(n_img)],
        "categories": [{"id": c} for c in range(1, 81)],
        "annotations": [
            {"id": j, "image_id": int(img[j]) * 3, "category_id": 1 + j % 80, "bbox": [1.0, 2.0, 30.5, 40.0]}
            for j in range(n_ann)
        ],
    }
    ds = load_coco(d)
    assert ds.num_annotations == n_ann
    counts = np.bincount(img, minlength=n_img)
    for i in (0, 17, n_img - 1):
        a = ds.annotations(i * 3)
        assert a.ann_ids.tolist() == np.flatnonzero(img == i).tolist()  # file order kept within an image
    assert sum(len(ds.annotations_at(i)) for i in range(n_img)) == n_ann
    assert np.array_equal([len(ds.annotations_at(i)) for i in range(n_img)], counts)


def test_careful_path_matches_fast_path():
    """One malformed record switches to the per-record parser; the other records load identically."""
    d = base()
    d["images"][0]["id"] = 1
    d["annotations"].append({"id": 13, "image_id": 1, "category_id": 3, "bbox": [5, 5, 5, 5.5], "iscrowd": 1})
    assert _fast_columns(d["annotations"], True, False) is not None
    fast = load_coco(copy.deepcopy(d))
    d["annotations"].append({"id": 14, "image_id": 1, "category_id": 3, "bbox": "oops"})
    assert _fast_columns(d["annotations"], True, False) is None
    slow = load_coco(d)
    assert slow.report.counts == {"malformed": 1}
    for iid in (1, 7):
        a, b = fast.annotations(iid), slow.annotations(iid)
        for field in ("boxes", "category_ids", "iscrowd", "ann_ids"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
