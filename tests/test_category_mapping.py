"""COCO category ids <-> contiguous labels 1..C (sorted id order), on hand-made category lists.

Every expected value is written out by hand from the rule in ``sniper/data/coco.py``'s module
doc: labels are 1..C in increasing id order (0 is background), any id kind (0-based, sparse,
negative, large) is allowed, repeated ids are errors, and label-order category lists are
sorted by id with the name defaulting to the id.
"""

from __future__ import annotations

import numpy as np
import pytest

from sniper.data.coco import categories_in_label_order, load_coco
from sniper.errors import CocoFormatError, SniperError


def dataset(categories: list) -> object:
    return load_coco(
        {
            "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
            "categories": categories,
            "annotations": [],
        }
    )


# file order 90, 1, -4, 7: sorted ids -4, 1, 7, 90 -> labels 1, 2, 3, 4
CATS = [
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    {"id": 1, "name": "person"},
    {"id": -4, "name": "neg"},
    {"id": 7},
]


# ------------------------------------------------------------------ label_of


def test_label_of_is_the_rank_of_the_id_plus_one():
    ds = dataset(CATS)
    labels = ds.label_of([90, 1, -4, 7, 7])
    assert labels.tolist() == [4, 2, 1, 3, 3]
    assert labels.dtype == np.int64
    assert ds.label_of(np.array([1], dtype=np.int32)).tolist() == [2]
    assert ds.label_of([]).tolist() == []


def test_label_of_unknown_ids_are_listed_sorted_unique_at_most_ten():
    ds = dataset(CATS)
    with pytest.raises(ValueError, match=r"^unknown category id\(s\) \[2\]$"):
        ds.label_of([1, 2, 2, 7])
    unknown = [100 + i for i in range(12)][::-1]  # 12 unknown ids: the 10 smallest are named
    with pytest.raises(ValueError) as e:
        ds.label_of(unknown + [1])
    assert str(e.value) == f"unknown category id(s) {list(range(100, 110))}"


def test_label_of_with_no_categories_rejects_every_id():
    ds = dataset([])
    with pytest.raises(ValueError, match=r"unknown category id\(s\) \[0, 3\]"):
        ds.label_of([3, 0])


# ------------------------------------------------------------------ category_of


def test_category_of_inverts_label_of_at_both_ends():
    ds = dataset(CATS)
    ids = ds.category_of([1, 2, 3, 4, 4])
    assert ids.tolist() == [-4, 1, 7, 90, 90]
    assert ids.dtype == np.int64
    assert ds.category_of(np.array([4.0])).tolist() == [90]


@pytest.mark.parametrize("bad", [0, 5, -1])
def test_category_of_rejects_labels_outside_1_to_c(bad):
    ds = dataset(CATS)
    with pytest.raises(ValueError) as e:
        ds.category_of([1, bad, 4])
    assert str(e.value) == f"label(s) [{bad}] outside 1..4"


def test_category_of_lists_at_most_ten_bad_labels_sorted():
    ds = dataset(CATS)
    with pytest.raises(ValueError) as e:
        ds.category_of(list(range(20, 5, -1)) + [0])
    assert str(e.value) == f"label(s) {[0, *range(6, 15)]} outside 1..4"


# ------------------------------------------------------------------ label-order lists


def test_categories_by_label_is_sorted_by_id_with_names():
    ds = dataset(CATS)
    assert ds.categories_by_label() == [
        {"id": -4, "name": "neg"},
        {"id": 1, "name": "person"},
        {"id": 7, "name": "7"},  # no name: the id, as a string
        {"id": 90, "name": "toothbrush"},
    ]
    assert [c["id"] for c in ds.categories] == [90, 1, -4, 7]  # the file's order is kept
    assert ds.categories[0]["supercategory"] == "indoor"


def test_categories_in_label_order_converts_and_sorts():
    out = categories_in_label_order(
        [{"id": 3.0, "name": 12}, {"id": "2"}, {"id": 10, "name": "x", "extra": 1}]
    )
    assert out == [{"id": 2, "name": "2"}, {"id": 3, "name": "12"}, {"id": 10, "name": "x"}]
    assert [type(c["id"]) for c in out] == [int, int, int]
    assert categories_in_label_order([]) == []
    # label l is entry l - 1 for a model file saved from any order
    assert categories_in_label_order(reversed([{"id": 5, "name": "a"}, {"id": 6, "name": "b"}])) == [
        {"id": 5, "name": "a"},
        {"id": 6, "name": "b"},
    ]


def test_categories_in_label_order_rejects_repeated_ids():
    with pytest.raises(SniperError) as e:
        categories_in_label_order([{"id": 8}, {"id": 2}, {"id": 8, "name": "again"}])
    assert str(e.value) == "duplicate category id 8 in [2, 8, 8]"
    many = [{"id": i} for i in range(12)] + [{"id": 11}]
    with pytest.raises(SniperError) as e:
        categories_in_label_order(many)
    assert str(e.value) == f"duplicate category id 11 in {list(range(10))}"
    # adjacent after sorting only: distinct ids pass however they interleave
    assert [c["id"] for c in categories_in_label_order([{"id": 2}, {"id": 1}, {"id": 3}])] == [1, 2, 3]


# ------------------------------------------------------------------ parsing


def test_parse_categories_keeps_fields_and_makes_ids_int():
    ds = dataset([{"id": 4.0, "name": "a", "supercategory": "s"}, {"id": 2, "name": "b"}])
    assert ds.categories == [{"id": 4, "name": "a", "supercategory": "s"}, {"id": 2, "name": "b"}]
    assert type(ds.categories[0]["id"]) is int
    assert ds.label_of([2, 4]).tolist() == [1, 2]
    assert ds.category_names == ["b", "a"]


@pytest.mark.parametrize(
    "categories, message",
    [
        ([{"id": 1}, "cat"], "<memory>: categories[1]: expected an object, got str"),
        ([{"name": "x"}], "<memory>: categories[0] (id=None, name='x'): missing key 'id'"),
        ([{"id": 1.5, "name": "x"}], "<memory>: categories[0] (id=1.5, name='x'): id must be an integer"),
        ([{"id": "1"}], "<memory>: categories[0] (id='1', name=None): id must be an integer"),
        (
            [{"id": 5}, {"id": 6}, {"id": 5.0, "name": "y"}],
            "<memory>: categories[2] (id=5.0, name='y'): duplicate category id (first at categories[0])",
        ),
        (
            [{"id": 0}, {"id": 5}, {"id": 5}],
            "<memory>: categories[2] (id=5, name=None): duplicate category id (first at categories[1])",
        ),
    ],
)
def test_parse_categories_errors_name_the_record(categories, message):
    with pytest.raises(CocoFormatError) as e:
        dataset(categories)
    assert str(e.value).startswith(message)


def test_parse_categories_accepts_64_bit_ids():
    ds = dataset([{"id": 2**63 - 1}, {"id": -(2**63)}])
    assert ds.category_of([1, 2]).tolist() == [-(2**63), 2**63 - 1]


def test_label_of_message_names_only_the_unknown_ids_as_ints():
    ds = dataset(CATS)
    assert ds.label_of([7.0, -4.0]).tolist() == [3, 1]
    with pytest.raises(ValueError) as e:
        ds.label_of([-4, 2.0, 90])  # -4 is label 1 (position 0): known, not listed
    assert str(e.value) == "unknown category id(s) [2]"
