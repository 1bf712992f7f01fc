"""Streaming COCO JSON load (sniper.data.coco_stream) and the annotation cache.

The streamed load of a file must equal the in-memory load of the same file parsed with
``json.load`` array by array and message by message, whatever the chunk size (tiny chunks put
the chunk boundaries everywhere: inside strings, numbers, escapes, between elements), and a
broken file must give the error ``read_json`` gives.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sniper.data import annotation_cache, coco_stream
from sniper.data.coco import load_coco
from sniper.data.coco_stream import load_coco_json
from sniper.errors import CocoFormatError
from sniper.io import read_json

# real COCO annotations (a copy of shared/data/coco_val2014_100.json; tests/fixtures/README.md)
COCO_100 = Path(__file__).resolve().parent / "fixtures" / "coco_val2014_100.json"
FIELDS = (
    "image_ids",
    "widths",
    "heights",
    "category_ids",
    "_offsets",
    "_boxes",
    "_cats",
    "_crowd",
    "_ann_ids",
)
CHUNKS = (1, 2, 3, 5, 7, 16, 61, 300, 4096)


def assert_same(a, b) -> None:
    """Two datasets are equal array by array (dtype too), record by record and in their reports."""
    assert a.images == b.images
    assert a.categories == b.categories
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f
    assert a.report.source == b.report.source
    assert list(a.report.counts.items()) == list(b.report.counts.items())
    assert a.report.examples == b.report.examples
    assert a.report.totals == b.report.totals
    assert a.report._first_skip == b.report._first_skip
    assert a.report.format() == b.report.format()


def in_memory(path: Path, strict: bool = False):
    """Today's load: the whole file parsed, then checked (its report named after the file)."""
    from sniper.data.coco import _load_parsed

    return _load_parsed(str(path), read_json(path), strict=strict)


def outcome(fn):
    try:
        return "ok", fn()
    except (CocoFormatError, ValueError) as e:
        return type(e).__name__, str(e)


def check_file(path: Path, chunks=CHUNKS) -> None:
    for strict in (False, True):
        want = outcome(lambda s=strict: in_memory(path, s))
        for c in chunks:
            got = outcome(lambda c=c, s=strict: load_coco_json(path, strict=s, chunk_size=c, cache=False))
            assert got[0] == want[0], (c, got, want)
            if want[0] == "ok":
                assert_same(got[1], want[1])
            else:
                assert got[1] == want[1], c


# ---------------------------------------------------------------- equality with the in-memory load


def test_real_coco_file_streams_to_the_same_dataset():
    for c in (7, 300, 65536, coco_stream.CHUNK_SIZE):
        assert_same(load_coco_json(COCO_100, chunk_size=c, cache=False), in_memory(COCO_100))
    assert_same(load_coco(COCO_100), in_memory(COCO_100))  # load_coco streams a path


def every_reason() -> dict:
    """A file with every skip, fix and note, ids written as integral floats, mixed int/float bboxes."""
    return {
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30], "iscrowd": 0},
            {"id": 11.0, "image_id": 7.0, "category_id": 18.0, "bbox": [0, 0.5, 50, 59], "iscrowd": 1},
            {"id": 12, "image_id": 1, "category_id": 18, "bbox": [50.0, 40.0, 10.0, 10.0]},
            {"id": 13, "image_id": 1, "category_id": 3, "bbox": [1, 2, 0, 4]},  # non_positive_size
            {"id": 14, "image_id": 1, "category_id": 3, "bbox": [1, math.nan, 3, 4]},  # non_finite
            {"id": 15, "image_id": 1, "category_id": 3, "bbox": [1, 2, math.inf, 4]},  # non_finite
            {"id": 16, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3]},  # malformed
            {"id": 17, "image_id": 1, "category_id": 3, "bbox": ["1", 2, 3, 4]},  # malformed
            {"id": 18, "image_id": "1", "category_id": 3, "bbox": [1, 2, 3, 4]},  # malformed
            {"id": 19, "image_id": 1, "category_id": 3.5, "bbox": [1, 2, 3, 4]},  # malformed
            {"id": 2**64, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]},  # malformed (> int64)
            {"id": 20, "image_id": 12345, "category_id": 3, "bbox": [1, 2, 3, 4]},  # unknown_image
            {"id": 21.0, "image_id": 1, "category_id": 4.0, "bbox": [1, 2, 3, 4]},  # unknown_category
            {"id": 10, "image_id": 1.0, "category_id": 3, "bbox": [1, 2, 3, 4]},  # duplicate_id
            {"id": 22, "image_id": 1, "category_id": 3, "bbox": [200, 200, 5, 5]},  # outside_image
            {"id": 23, "image_id": 1, "category_id": 3, "bbox": [-20, 0.0, 10, 5]},  # outside_image
            {"id": 24, "image_id": 1, "category_id": 3, "bbox": [90, 70, 30, 30.25]},  # clipped
            {"image_id": 7.0, "category_id": 3, "bbox": [1, 2, 3, 4]},  # assigned_id
            {"id": None, "image_id": 7, "category_id": 3, "bbox": [1, 2, 3, 4]},  # assigned_id
            {"id": 25, "image_id": 1, "bbox": [1, 2, 3, 4]},  # missing_field
            "oops",  # missing_field
            {"id": 26, "image_id": 1, "category_id": 3, "bbox": [2**60, 5, 3, 4]},  # outside, big int
            {"id": 27, "image_id": 1, "category_id": 3, "bbox": [-(2**60), 5, 3, 4], "iscrowd": "0"},
            {"id": 28, "image_id": 7, "category_id": 3, "bbox": [1, 2, 3, 4], "iscrowd": []},
        ],
        "info": {
            "description": 'quotes " and } and ], and \\ and \u00e9 \U0001f600',
            "nested": [[{"a": []}]],
        },
        "categories": [{"id": 18, "name": "dog", "supercategory": "a}b"}, {"id": 3.0, "name": "cat"}],
        "images": [
            {
                "id": 1,
                "file_name": 'd\u00e9j\u00e0 vu/\U0001f600 "q" \\ a},{.jpg',
                "width": 100,
                "height": 80,
            },
            {"id": 7, "file_name": "b.jpg", "width": 50.0, "height": 60, "extra": {"x": [1, {"y": "}]"}]}},
            {"id": 8, "file_name": "c.jpg", "width": 10, "height": 10},  # no annotations
        ],
        "licenses": [],
    }


@pytest.mark.parametrize(
    "dump",
    [
        lambda d: json.dumps(d),
        lambda d: json.dumps(d, indent=3),
        lambda d: json.dumps(d, separators=(",", ":"), ensure_ascii=False),
        lambda d: json.dumps(d, indent="\t", ensure_ascii=True).replace("\n", "\r\n") + "\r\n\r\n",
        lambda d: " \n\t" + json.dumps(d, indent=1).replace(": ", " :  ").replace(",\n", "\n ,"),
    ],
    ids=["plain", "indent", "compact-utf8", "crlf-tabs", "odd-whitespace"],
)
def test_every_reason_unusual_order_whitespace_and_escapes(tmp_path, dump):
    p = tmp_path / "a.json"
    p.write_text(dump(every_reason()), encoding="utf-8", newline="")
    check_file(p)
    ds = load_coco_json(p, chunk_size=5, cache=False)
    assert set(ds.report.counts) == {
        "non_positive_size", "non_finite", "malformed", "unknown_image", "unknown_category", "duplicate_id",
        "outside_image", "clipped", "assigned_id", "missing_field", "images_without_annotations",
    }  # fmt: skip
    assert ds.images[0].file_name.startswith("d\u00e9j\u00e0 vu/\U0001f600")


def test_segmentations_of_every_kind_and_a_byte_order_mark(tmp_path):
    d = every_reason()
    segs = [
        [[1.5, 2, 3, 4e-3, 5, 6]],
        {"counts": 'a},{b}]c"\\', "size": [80, 100]},
        {"counts": [1, 2, 3, {"x": "}"}], "size": [80, 100]},
        [],
        [[[[]]]],
    ]
    for i, a in enumerate(d["annotations"]):
        if isinstance(a, dict):
            a["segmentation"] = segs[i % len(segs)]
            a["area"] = 1.0e-300 * i
    p = tmp_path / "seg.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(d).encode())
    check_file(p)


annotation = st.fixed_dictionaries(
    {
        "id": st.one_of(st.integers(0, 40), st.just(2**63), st.floats(0, 40).map(float)),
        "image_id": st.sampled_from([1, 7, 1.0, 9, "1"]),
        "category_id": st.sampled_from([3, 18, 3.0, 4]),
        "bbox": st.one_of(
            st.lists(
                st.one_of(st.integers(-50, 150), st.floats(-50, 150), st.sampled_from([math.nan, -math.inf])),
                min_size=4,
                max_size=4,
            ),
            st.lists(st.integers(0, 9), max_size=5),
            st.just([1, 2, math.nan, 4]),
        ),
    },
    optional={"iscrowd": st.sampled_from([0, 1, True, "0", None]), "segmentation": st.just([[1, 2, 3, 4]])},
)
records = st.lists(
    st.one_of(annotation, annotation.map(lambda a: {k: v for k, v in a.items() if k != "id"}), st.just(3))
)


@given(
    anns=st.lists(annotation, max_size=12) | records,
    chunk=st.integers(1, 80),
    indent=st.sampled_from([None, 0, 2]),
    first=st.sampled_from(["images", "annotations", "categories"]),
)
@settings(
    max_examples=min(40, settings.default.max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_random_files_stream_like_the_in_memory_load(tmp_path, anns, chunk, indent, first):
    base = every_reason()
    d = {first: None, **{k: base[k] for k in ("images", "categories")}, "annotations": anns}
    d[first] = base[first] if first != "annotations" else anns
    p = tmp_path / "r.json"
    p.write_text(json.dumps(d, indent=indent))
    check_file(p, chunks=(chunk,))


def test_duplicate_top_level_keys_last_wins_as_in_json(tmp_path):
    d = every_reason()
    text = json.dumps(d)
    text = text[:-1] + ', "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 3, 4]}]}'
    p = tmp_path / "dup.json"
    p.write_text('{"images": 5, ' + text[1:])
    check_file(p, chunks=(3, 4096))
    assert load_coco_json(p, cache=False).num_annotations == 1


# ---------------------------------------------------------------- errors


def small_file() -> str:
    return json.dumps(
        {
            "images": [{"id": 1, "file_name": "a \\ \u00e9.jpg", "width": 10, "height": 8}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 2.5, 3, -4e1]}, 7],
            "categories": [{"id": 2, "name": "x"}],
        },
        indent=1,
        ensure_ascii=False,
    )


def test_every_truncation_gives_the_one_line_error_of_read_json(tmp_path):
    text = small_file()
    p = tmp_path / "t.json"
    for cut in range(len(text)):
        p.write_text(text[:cut])
        want = outcome(lambda: in_memory(p))
        assert want[0] != "ok"
        for c in (1, 4096):
            got = outcome(lambda c=c: load_coco_json(p, chunk_size=c, cache=False))
            assert got == want, (cut, c)
            assert "\n" not in got[1] and str(p) in got[1]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (",", ""), (",", ",,"), ("]", ",]"), ("}", ",}"), (":", ""), ('"id"', "id"), ("1", "01"), ("2.5", "2."),
        ("true", "tru"), ("[", "[,"), ("\\\\", "\\x"), ("x", "x\u0001"), ("{", "{{"), ("]", "]]"), ("-4e1", "-"),
    ],
)  # fmt: skip
def test_syntax_errors_match_read_json(tmp_path, old, new):
    text = small_file().replace("7]", "true]")
    p = tmp_path / "e.json"
    for at in [i for i in range(len(text)) if text.startswith(old, i)][:6]:
        p.write_text(text[:at] + new + text[at + len(old) :], encoding="utf-8")
        want = outcome(lambda: in_memory(p))
        for c in (1, 5, 4096):
            assert outcome(lambda c=c: load_coco_json(p, chunk_size=c, cache=False)) == want, (at, c)
    p.write_text(text + "\n x")
    assert outcome(lambda: load_coco_json(p, chunk_size=3, cache=False)) == outcome(lambda: in_memory(p))


def test_not_utf8_and_not_an_object(tmp_path):
    text = small_file().encode()
    p = tmp_path / "u.json"
    cases = [
        text[:30] + b"\xff" + text[30:],
        b"\xef\xbb\xbf" + text[:40] + b"\xe2\x82" + text[40:],
        text[:-1] + b"\xe2\x82",
        b"\xef\xbb",
        b"",
        b"  [1, 2]",
        b"3",
        b'"x"',
        b"[1,",
        text[:10] + b"x" + text[10:50] + b"\xff",  # the UTF-8 error wins, as read_json decodes all first
    ]
    for data in cases:
        p.write_bytes(data)
        want = outcome(lambda: in_memory(p))
        assert want[0] != "ok"
        for c in (1, 2, 3, 4096):
            assert outcome(lambda c=c: load_coco_json(p, chunk_size=c, cache=False)) == want, (data[:20], c)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("annotations"),
        lambda d: d.update(annotations={"a": 1}),
        lambda d: d.update(images=[{"id": 1, "width": 1}]),  # bad image and ...
        lambda d: (d["images"].append(5), d["categories"].append({"id": 3.5})),  # image error first
        lambda d: (
            d["images"].append({"id": 1, "file_name": "b", "width": 1, "height": 1}),
            d.pop("categories"),
        ),
        lambda d: d["categories"].append({"name": "no id"}),
    ],
)
def test_structural_errors_keep_their_precedence(tmp_path, mutate):
    d = every_reason()
    mutate(d)
    p = tmp_path / "s.json"
    p.write_text(json.dumps(d))
    check_file(p, chunks=(2, 4096))
    assert outcome(lambda: load_coco(p))[0] == "CocoFormatError"


def test_strict_streamed_error_is_todays(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(every_reason()))
    with pytest.raises(CocoFormatError) as e:
        load_coco(p, strict=True)
    with pytest.raises(CocoFormatError) as want:
        load_coco(read_json(p), strict=True)
    assert str(e.value) == str(want.value).replace("<memory>", str(p))
    assert "annotations[3]" in str(e.value) and "more bad record(s)" in str(e.value)


def test_streaming_holds_one_run_of_records_not_the_file(tmp_path):
    """500 annotations with 400-number polygons: the in-memory load holds them all, the stream one run."""
    rng = np.random.default_rng(0)
    poly = [round(float(v), 2) for v in rng.random(400) * 100]
    d = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
        "annotations": [
            {"segmentation": [poly], "id": i, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}
            for i in range(500)
        ],
        "categories": [{"id": 1}],
    }
    p = tmp_path / "big.json"
    p.write_text(json.dumps(d))
    del d
    tracemalloc.start()
    try:
        ds = load_coco_json(p, chunk_size=1 << 14, cache=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ds.num_annotations == 500
    size = p.stat().st_size  # ~1.4 MB of text; json.load makes ~8 MB of objects of it
    assert peak < size / 4, (peak, size)


# ---------------------------------------------------------------- cache


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SNIPER_CACHE", str(folder))
    return folder / "annotations"


def settled(p: Path, age: float = 60.0) -> Path:
    """Give ``p`` a modification time in the past (a file just written is not cached, see SETTLE_S)."""
    t = time.time() - age
    os.utime(p, (t, t))
    return p


def no_parse(monkeypatch) -> None:
    def fail(*a, **k):
        raise AssertionError("parsed although the cache should have answered")

    monkeypatch.setattr(coco_stream, "_stream_parse", fail)


def test_cache_miss_then_hit(tmp_path, cache, monkeypatch):
    p = tmp_path / "a.json"
    p.write_text(json.dumps(every_reason()))
    settled(p)
    first = load_coco(p)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith(annotation_cache._hash(str(p.absolute()), 16))
    assert f"-{p.stat().st_size}-{p.stat().st_mtime_ns}-" in files[0].name
    no_parse(monkeypatch)
    again = load_coco(p)
    assert_same(again, first)
    assert not again._boxes.flags.writeable
    # strict from the cache raises what a fresh strict load raises
    monkeypatch.undo()
    monkeypatch.setenv("SNIPER_CACHE", str(cache.parent))
    with pytest.raises(CocoFormatError) as fresh:
        load_coco_json(p, strict=True, cache=False)
    no_parse(monkeypatch)
    with pytest.raises(CocoFormatError) as cached:
        load_coco(p, strict=True)
    assert str(cached.value) == str(fresh.value)
    # another spelling of the same path: the same cache, the report names the path as given
    monkeypatch.chdir(tmp_path)
    rel = load_coco("a.json")
    assert rel.report.source == "a.json" and len(list(cache.glob("*.npz"))) == 1


def test_changed_file_is_parsed_again_and_its_old_cache_removed(tmp_path, cache):
    p = tmp_path / "a.json"
    d = every_reason()
    p.write_text(json.dumps(d))
    settled(p, 100)
    assert load_coco(p).num_annotations == in_memory(p).num_annotations
    old = list(cache.glob("*.npz"))
    d["annotations"] = d["annotations"][:3]
    p.write_text(json.dumps(d))
    settled(p, 50)
    assert load_coco(p).num_annotations == 3
    now = list(cache.glob("*.npz"))
    assert len(now) == 1 and now != old
    # same size, new modification time: parsed again too
    p.write_text(p.read_text().replace('"id": 10', '"id": 99'))
    settled(p, 40)
    assert 99 in load_coco(p).annotations(1).ann_ids.tolist()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign"])
def test_corrupt_cache_is_ignored_and_rewritten(tmp_path, cache, damage, monkeypatch):
    p = tmp_path / "a.json"
    p.write_text(json.dumps(every_reason()))
    settled(p)
    want = load_coco(p)
    (f,) = cache.glob("*.npz")
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        f.write_bytes(data[:100] + bytes(reversed(data[100:])))
    elif damage == "empty":
        f.write_bytes(b"")
    else:
        with open(f, "wb") as out:
            np.savez(out, boxes=np.zeros((2, 4)))
    assert_same(load_coco(p), want)
    with np.load(f) as z:  # rewritten, whole again
        assert "boxes" in z.files and len(z["boxes"]) == want.num_annotations
    no_parse(monkeypatch)
    assert_same(load_coco(p), want)


def test_cache_off_fresh_files_and_unwritable_folders(tmp_path, cache, monkeypatch):
    p = tmp_path / "a.json"
    p.write_text(json.dumps(every_reason()))
    load_coco(p)  # just written: not cached (its modification time may not have settled)
    assert not cache.exists() or not list(cache.glob("*.npz"))
    settled(p)
    monkeypatch.setenv("SNIPER_CACHE", "off")
    load_coco(p)
    assert not cache.exists() or not list(cache.glob("*.npz"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SNIPER_CACHE", str(blocker))
    assert load_coco(p).num_annotations == in_memory(p).num_annotations  # no cache, still a load


def test_memory_inputs_are_never_cached(cache):
    d = every_reason()
    ds = load_coco(copy.deepcopy(d))
    assert ds.report.source == "<memory>" and not cache.exists()


def test_default_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("SNIPER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert annotation_cache.cache_dir() == tmp_path / "xdg" / "sniper" / "annotations"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert annotation_cache.cache_dir() == Path.home() / ".cache" / "sniper" / "annotations"
    for off in ("off", "OFF", "0", "none"):
        monkeypatch.setenv("SNIPER_CACHE", off)
        assert annotation_cache.cache_dir() is None
