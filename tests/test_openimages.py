"""OpenImages box CSVs read by load_coco: ids, sizes (side file or image headers), names, bad boxes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sniper.data import openimages
from sniper.data.coco import load_coco
from sniper.data.openimages import image_ids_for, load_openimages
from sniper.errors import CocoFormatError

HEADER = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
A, B, C = "000002b66c9c498e", "0000b9fcba019d36", "00a0d634ee8ce2fb"


def box(image_id: str, mid: str, x1, x2, y1, y2, group: int | str = 0) -> str:
    return f"{image_id},xclick,{mid},1,{x1},{x2},{y1},{y2},0,0,{group},0,0"


def write(
    folder: Path, rows: list[str], *, sizes: dict[str, tuple[int, int]] | None = None, name="boxes.csv"
):
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text("\n".join([HEADER, *rows]) + "\n")
    if sizes is not None:
        lines = ["ImageID,Width,Height"] + [f"{k},{w},{h}" for k, (w, h) in sizes.items()]
        (folder / f"{p.stem}-sizes.csv").write_text("\n".join(lines) + "\n")
    return p


def test_boxes_sizes_names_and_group_of(tmp_path):
    p = write(
        tmp_path,
        [
            box(B, "/m/01g317", 0.1, 0.5, 0.25, 0.75),
            box(A, "/m/0284d", 0.0, 1.0, 0.0, 0.5, group=1),
            box(A, "/m/01g317", 0.25, 0.5, 0.5, 1.0),
        ],
        sizes={A: (1024, 768), B: (640, 480)},
    )
    (tmp_path / "class-descriptions-boxable.csv").write_text(
        "/m/01g317,Person\n/m/0284d,Dairy Product\n/m/0zz,Zebra\n"
    )
    ds = load_coco(p)
    assert [im.file_name for im in ds.images] == [A + ".jpg", B + ".jpg"]  # sorted by ImageID
    assert [im.id for im in ds.images] == [int(A, 16), int(B, 16)]
    assert [(im.width, im.height) for im in ds.images] == [(1024, 768), (640, 480)]
    # every class of the names file is a category, ids 1..C in sorted-MID order
    assert ds.categories == [
        {"id": 1, "name": "Person", "mid": "/m/01g317"},
        {"id": 2, "name": "Dairy Product", "mid": "/m/0284d"},
        {"id": 3, "name": "Zebra", "mid": "/m/0zz"},
    ]
    assert ds.category_names == ["Person", "Dairy Product", "Zebra"]
    a = ds.annotations(int(A, 16))
    np.testing.assert_allclose(a.boxes, [[0, 0, 1024, 384], [256, 384, 512, 768]])
    assert a.iscrowd.tolist() == [True, False]  # IsGroupOf=1: an ignore region
    assert a.category_ids.tolist() == [2, 1] and a.ann_ids.tolist() == [2, 3]  # ids: data row numbers
    b = ds.annotations(int(B, 16))
    np.testing.assert_allclose(b.boxes, [[64, 120, 320, 360]])
    assert ds.report.counts == {} and ds.report.totals["crowd"] == 1


def test_names_file_with_header_or_none(tmp_path):
    p = write(tmp_path, [box(A, "/m/b", 0, 1, 0, 1), box(A, "/m/a", 0, 1, 0, 1)], sizes={A: (10, 10)})
    assert [c["name"] for c in load_coco(p).categories] == ["/m/a", "/m/b"]  # no names file: the MIDs
    (tmp_path / "class-descriptions-boxable.csv").write_text('LabelName,DisplayName\n/m/a,"Apple, red"\n')
    assert load_coco(p).categories == [
        {"id": 1, "name": "Apple, red", "mid": "/m/a"},
        {"id": 2, "name": "/m/b", "mid": "/m/b"},  # not in the names file: under its MID
    ]


def test_bad_boxes_are_skipped_and_counted_like_coco(tmp_path):
    rows = [
        box(A, "/m/x", 0.1, 0.2, 0.1, 0.2),  # good
        box(A, "/m/x", "", 0.2, 0.1, 0.2),  # missing_field
        box("", "/m/x", 0.1, 0.2, 0.1, 0.2),  # missing_field
        box(A, "/m/x", "nan", 0.2, 0.1, 0.2),  # non_finite
        box(A, "/m/x", 0.1, "inf", 0.1, 0.2),  # non_finite
        box(A, "/m/x", 0.3, 0.2, 0.1, 0.2),  # non_positive_size (x2 < x1)
        box(A, "/m/x", 0.1, 0.2, 0.2, 0.2),  # non_positive_size (y2 = y1)
        box(A, "/m/x", 1.2, 1.5, 0.1, 0.2),  # outside_image
        box(A, "/m/x", 0.1, 0.2, -0.5, -0.1),  # outside_image
        box(A, "/m/x", 0.5, 1.25, -0.1, 0.5),  # clipped
    ]
    p = write(tmp_path, rows, sizes={A: (200, 100)})
    ds = load_coco(p)
    assert ds.report.counts == {
        "missing_field": 2, "non_finite": 2, "non_positive_size": 2, "outside_image": 2, "clipped": 1,
    }  # fmt: skip
    assert ds.num_annotations == 2
    np.testing.assert_allclose(ds.annotations(int(A, 16)).boxes, [[20, 10, 40, 20], [100, 0, 200, 50]])
    assert ds.report.examples["non_positive_size"][0] == (
        f"row 6 (ImageID={A!r}, LabelName='/m/x'): XMin 0.3, XMax 0.2, YMin 0.1, YMax 0.2"
    )
    assert (
        "row 10" in ds.report.examples["clipped"][0] and "200x100 image" in ds.report.examples["clipped"][0]
    )
    assert ds.report.totals == {
        "images": 1, "annotations_read": 10, "annotations_kept": 2, "crowd": 0, "categories": 1,
    }  # fmt: skip
    with pytest.raises(CocoFormatError) as e:
        load_coco(p, strict=True)
    msg = str(e.value)
    assert msg.startswith(f"{p}: row 2 (ImageID={A!r}") and "(missing_field); 7 more bad record(s)" in msg


def test_a_coordinate_that_is_not_a_number_is_malformed(tmp_path):
    p = write(
        tmp_path,
        [box(A, "/m/x", 0.1, 0.2, 0.1, 0.2), box(A, "/m/x", "abc", 0.2, 0.1, 0.2)],
        sizes={A: (10, 10)},
    )
    ds = load_coco(p)
    assert ds.report.counts == {"malformed": 1} and ds.num_annotations == 1
    assert "row 2" in ds.report.examples["malformed"][0]


def test_sizes_side_files(tmp_path):
    p = write(tmp_path, [box(A, "/m/x", 0, 0.5, 0, 0.5), box(B, "/m/x", 0, 0.5, 0, 0.5)])
    (tmp_path / "image_sizes.csv").write_text(f"ImageID,Width,Height\n{A},100,50\n{B},20,10\nffff,1,1\n")
    ds = load_coco(p)
    assert [(im.width, im.height) for im in ds.images] == [(100, 50), (20, 10)]  # extra rows ignored
    (tmp_path / "boxes-sizes.csv").write_text(f"ImageID,Width,Height\n{A},8,6\n{B},4,2\n")
    assert [(im.width, im.height) for im in load_coco(p).images] == [(8, 6), (4, 2)]  # <stem>-sizes first
    (tmp_path / "boxes-sizes.csv").write_text(f"ImageID,Width,Height\n{A},8,6\n")
    with pytest.raises(CocoFormatError, match=r"1 image\(s\) have no size in .*boxes-sizes.csv.*image_root"):
        load_coco(p)
    (tmp_path / "boxes-sizes.csv").write_text(f"ImageID,Width,Height\n{A},8,0\n{B},4,2\n")
    with pytest.raises(CocoFormatError, match=r"boxes-sizes.csv: row 1 .*positive integers"):
        load_coco(p)
    (tmp_path / "boxes-sizes.csv").write_text(f"ImageID,W,H\n{A},8,6\n")
    with pytest.raises(CocoFormatError, match=r"missing column\(s\) \['Width', 'Height'\]"):
        load_coco(p)


def test_no_sizes_is_a_one_line_error_saying_what_to_provide(tmp_path):
    p = write(tmp_path, [box(A, "/m/x", 0, 0.5, 0, 0.5)])
    with pytest.raises(CocoFormatError) as e:
        load_coco(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    assert "boxes-sizes.csv" in msg and "image_sizes.csv" in msg and "image_root" in msg


def jpeg(path: Path, size: tuple[int, int], orientation: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, (120, 30, 200))
    if orientation is None:
        im.save(path, "JPEG")
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, "JPEG", exif=exif)


def test_sizes_from_image_headers_with_exif_rotation_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SNIPER_CACHE", str(tmp_path / "cache"))
    images = tmp_path / "images"
    jpeg(images / f"{A}.jpg", (40, 20))
    jpeg(images / f"{B}.jpg", (30, 10), orientation=6)  # stored 30x10, shown 10x30
    p = write(
        tmp_path / "ann",
        [box(A, "/m/x", 0, 0.5, 0, 0.5), box(B, "/m/x", 0, 0.5, 0, 0.5), box(C, "/m/x", 0, 1, 0, 1)],
    )
    ds = load_coco(p, image_root=images)
    assert [(im.file_name, im.width, im.height) for im in ds.images] == [
        (A + ".jpg", 40, 20),
        (B + ".jpg", 10, 30),
    ]
    np.testing.assert_allclose(ds.annotations(int(B, 16)).boxes, [[0, 0, 5, 15]])  # the oriented frame
    # C has no image file: left out, its box skipped as unknown_image
    assert ds.report.counts == {"unknown_image": 1}
    assert (
        C in ds.report.examples["unknown_image"][0]
        and "file not found" in ds.report.examples["unknown_image"][0]
    )
    (sizes_cache,) = (tmp_path / "cache" / "annotations").glob("image-sizes-*.json")
    # the header sizes are kept: a changed box file reads them from the cache, not the images
    os.remove(images / f"{A}.jpg")
    p.write_text(p.read_text() + box(A, "/m/y", 0, 1, 0, 1) + "\n")
    ds2 = load_coco(p, image_root=images)
    assert [(im.width, im.height) for im in ds2.images] == [(40, 20), (10, 30)] and ds2.num_annotations == 3
    assert sizes_cache.exists()


def test_side_file_first_then_image_headers(tmp_path):
    images = tmp_path / "images"
    jpeg(images / f"{B}.jpg", (30, 10))
    p = write(tmp_path, [box(A, "/m/x", 0, 1, 0, 1), box(B, "/m/x", 0, 1, 0, 1)], sizes={A: (7, 5)})
    ds = load_openimages(p, image_root=images, cache=False)
    assert [(im.width, im.height) for im in ds.images] == [(7, 5), (30, 10)]


def test_image_id_mapping():
    assert image_ids_for([A, B]).tolist() == [int(A, 16), int(B, 16)]
    # beyond int64 (half the real OpenImages ids), not hex, or colliding values: 1..N in sorted order
    assert image_ids_for(["0fffffffffffffff", "ffffffffffffffff"]).tolist() == [1, 2]
    assert image_ids_for(["abc", "img_1"]).tolist() == [1, 2]
    assert image_ids_for(["00a", "0a"]).tolist() == [1, 2]
    assert image_ids_for(["0x1f"]).tolist() == [1]  # int() would take the prefix; the rule does not
    assert image_ids_for([]).tolist() == []


def test_large_image_ids_load_as_positions(tmp_path):
    big = "f" * 16
    p = write(
        tmp_path, [box(big, "/m/x", 0, 1, 0, 1), box(A, "/m/x", 0, 1, 0, 1)], sizes={A: (4, 4), big: (8, 8)}
    )
    ds = load_coco(p)
    assert [(im.id, im.file_name) for im in ds.images] == [(1, A + ".jpg"), (2, big + ".jpg")]


def test_not_a_box_csv(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(CocoFormatError, match=r"x.csv: missing column\(s\) \['ImageID', 'LabelName'"):
        load_coco(p)
    p.write_text(HEADER + "\n" + box(A, "/m/x", 0, 1, 0, 1) + ",extra,cells\n")
    (tmp_path / "x-sizes.csv").write_text(f"ImageID,Width,Height\n{A},4,4\n")
    with pytest.raises(CocoFormatError, match=r"x.csv: not a valid CSV file"):
        load_coco(p)
    p.write_text(HEADER + "\n")
    ds = load_coco(p)
    assert len(ds) == 0 and ds.num_annotations == 0


def test_csv_load_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SNIPER_CACHE", str(tmp_path / "cache"))
    p = write(
        tmp_path, [box(A, "/m/x", 0, 0.5, 0, 0.5, group=1), box(A, "/m/x", 0.5, 0.4, 0, 1)], sizes={A: (4, 4)}
    )
    t = time.time() - 60
    for f in tmp_path.glob("*.csv"):
        os.utime(f, (t, t))
    first = load_coco(p)

    def fail(*a, **k):
        raise AssertionError("parsed although the cache should have answered")

    monkeypatch.setattr(openimages, "_load", fail)
    again = load_coco(p)
    assert again.images == first.images and again.categories == first.categories
    assert np.array_equal(again._boxes, first._boxes) and again._crowd.tolist() == [True]
    assert again.report.to_dict() == first.report.to_dict()
    with pytest.raises(CocoFormatError, match="non_positive_size"):
        load_coco(p, strict=True)
    # a names file appearing beside it changes the categories: a miss
    (tmp_path / "class-descriptions-boxable.csv").write_text("/m/x,Thing\n")
    monkeypatch.undo()
    monkeypatch.setenv("SNIPER_CACHE", str(tmp_path / "cache"))
    assert load_coco(p).category_names == ["Thing"]
