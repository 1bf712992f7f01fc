"""OpenImages box CSVs, read directly (``load_coco("train-annotations-bbox.csv")``).

The box file has a header and one row per box::

    ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside

with coordinates normalised to [0, 1]. It is read with ``pyarrow.csv`` (multi-threaded,
columnar); only ``ImageID``, ``LabelName``, ``XMin``, ``XMax``, ``YMin``, ``YMax`` are required
(``IsGroupOf`` is optional, the other columns are not used).

* **Images**: the ImageIDs of the box file, in sorted ImageID order, each with ``file_name =
  ImageID + ".jpg"``. Image ids: ``int(ImageID, 16)`` when every ImageID is 1-16 hex digits, its
  value fits in int64 and no two ImageIDs give the same value; otherwise (the full OpenImages
  set, whose 64-bit ImageIDs half overflow int64) 1..N in sorted ImageID order. Either way the
  mapping is a function of the set of ImageIDs in the file.
* **Image sizes** (pixels, EXIF orientation applied, to turn normalised coordinates into
  pixels): from a side file next to the box file, ``<stem>-sizes.csv`` or ``image_sizes.csv``
  (header ``ImageID,Width,Height``); images it lacks, or all images when there is no side file,
  are read from the image headers under ``image_root`` (``<ImageID>.jpg``, header only) and kept
  in the cache folder (``SNIPER_CACHE``) for the next load (an image replaced by one of another
  size is not noticed: delete the cache). Without either: a one-line
  :class:`~sniper.errors.CocoFormatError` saying what to provide. An image whose header cannot be
  read is left out and its boxes are skipped as ``unknown_image`` (and the dataset is not cached,
  so the image is looked for again next time).
* **Categories**: ``{"id", "name", "mid"}``, one per class MID (``/m/01g317``), ids 1..C in sorted
  MID order. Names come from ``class-descriptions-boxable.csv`` next to the box file
  (``LabelName,DisplayName``; the header is optional, the real file has none), else the MID.
  With a names file every class it lists is a category, so a train and a validation file next
  to the same names file share their labels; a MID of the box file that it lacks is added under
  its MID.
* **Boxes**: ``IsGroupOf=1`` -> ``iscrowd`` (an ignore region). Annotation ids are the data row
  numbers (1-based). Bad rows follow :mod:`sniper.data.coco`'s policy and reasons: an empty
  ImageID, LabelName or coordinate is ``missing_field``, a coordinate that is not a number
  ``malformed``, NaN or infinite ``non_finite``, ``XMax <= XMin`` or ``YMax <= YMin``
  ``non_positive_size``, a box entirely outside [0, 1] ``outside_image``; one partly outside is
  clipped (``clipped``). ``strict=True`` makes the first skipped row an error.

The loaded dataset is cached like a COCO file (:mod:`sniper.data.annotation_cache`, keyed on
the box file, the side files and ``image_root``).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from sniper.data import annotation_cache
from sniper.data.coco import (
    _BLOCK,
    _MAX_EXAMPLES,
    CocoDataset,
    ImageRecord,
    LoadReport,
    _clip_and_check_outside,
    _finish,
)
from sniper.errors import BadImageError, CocoFormatError
from sniper.io import atomic_write_json

__all__ = ["BOX_COLUMNS", "NAMES_FILES", "image_ids_for", "load_openimages", "sizes_files"]

BOX_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
NAMES_FILES = (
    "class-descriptions-boxable.csv",
    "oidv7-class-descriptions-boxable.csv",
    "oidv6-class-descriptions-boxable.csv",
)
_COORDS = ("XMin", "XMax", "YMin", "YMax")
_ALL_HEX = re.compile(r"(?:[0-9a-fA-F]{1,16}\n)*")
_DICT = pa.dictionary(pa.int32(), pa.string())


def sizes_files(path: Path) -> tuple[Path, ...]:
    """The side files that may hold the image sizes of box file ``path``, in the order they are tried."""
    return (path.with_name(f"{path.stem}-sizes.csv"), path.with_name("image_sizes.csv"))


def _first_file(candidates: tuple[Path, ...]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def load_openimages(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    image_root: str | os.PathLike[str] | None = None,
    cache: bool = True,
) -> CocoDataset:
    """Read an OpenImages box CSV into a :class:`~sniper.data.coco.CocoDataset` (see the module doc)."""
    path = Path(path)
    source = str(path)
    names_file = _first_file(tuple(path.with_name(n) for n in NAMES_FILES))
    sizes_file = _first_file(sizes_files(path))
    root = Path(image_root) if image_root is not None else None
    key = None
    if cache:
        params = {"kind": "openimages-csv", "image_root": str(root.absolute()) if root is not None else None}
        side = [path.with_name(n) for n in NAMES_FILES] + list(sizes_files(path))
        key = annotation_cache.key_for([path], params, extra_paths=side)
    if key is not None:
        hit = annotation_cache.load(key, source, strict=strict)
        if hit is not None:
            return hit
    ds, complete = _load(path, source, names_file, sizes_file, root, use_cache=cache)
    if key is not None and complete:  # (an image that could not be read may be there next time)
        annotation_cache.store(key, ds)
    if strict:
        ds.report.raise_first_skip()
    return ds


# ------------------------------------------------------------------ reading


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            return next(csv.reader(f))
        except StopIteration:
            return []
        except (UnicodeDecodeError, csv.Error) as e:
            raise CocoFormatError(f"{path}: not a CSV file with a header row ({e})") from None


def _read_csv(path: Path, columns: list[str], types: dict[str, pa.DataType]) -> pa.Table:
    try:
        return pacsv.read_csv(
            path,
            # only an empty cell is missing: "nan" is a (non-finite) number, not pyarrow's default null
            convert_options=pacsv.ConvertOptions(
                include_columns=columns, column_types=types, null_values=[""], strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as e:
        if "conversion error" in str(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CocoFormatError(f"{path}: not a valid CSV file ({first})") from None


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _dict_codes(arr: pa.Array) -> tuple[np.ndarray, list[str]]:
    """(per-row codes, -1 where null or empty; the distinct non-empty values) of a string column."""
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    values = arr.dictionary.to_pylist()
    codes = arr.indices.to_numpy(zero_copy_only=False)
    codes = np.where(arr.is_null().to_numpy(zero_copy_only=False), -1, codes).astype(np.int32)
    empty = [i for i, v in enumerate(values) if v is None or v.strip() == ""]
    if empty:
        codes[np.isin(codes, empty)] = -1
    return codes, values


def _used_codes(codes: np.ndarray, n: int) -> np.ndarray:
    """The codes 0..n-1 that occur in ``codes`` (-1 = none), ascending."""
    return np.flatnonzero(np.bincount(codes[codes >= 0], minlength=n))


def _coords(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, missing, malformed) of a coordinate column read as float64 or, after a conversion
    error, as text."""
    arr = _column(table, name)
    if pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type):
        missing = arr.is_null().to_numpy(zero_copy_only=False)
        values = pc.fill_null(arr.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        return values.astype(np.float64, copy=False), missing, np.zeros(len(values), dtype=bool)
    text = arr.to_pylist()
    values = np.full(len(text), np.nan)
    missing = np.zeros(len(text), dtype=bool)
    malformed = np.zeros(len(text), dtype=bool)
    for i, t in enumerate(text):
        if t is None or t.strip() == "":
            missing[i] = True
            continue
        try:
            values[i] = float(t)
        except ValueError:
            malformed[i] = True
    return values, missing, malformed


def _read_boxes(path: Path) -> tuple[pa.Table, list[str]]:
    header = _header(path)
    missing = [c for c in BOX_COLUMNS if c not in header]
    if missing:
        raise CocoFormatError(
            f"{path}: missing column(s) {missing}; an OpenImages box CSV has the header "
            "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,..."
        )
    columns = list(BOX_COLUMNS) + (["IsGroupOf"] if "IsGroupOf" in header else [])
    types: dict[str, pa.DataType] = {"ImageID": _DICT, "LabelName": _DICT, "IsGroupOf": _DICT}
    try:
        table = _read_csv(path, columns, {**types, **dict.fromkeys(_COORDS, pa.float64())})
    except pa.ArrowInvalid:  # a coordinate that is not a number: read them as text, judge each row
        table = _read_csv(path, columns, {**types, **dict.fromkeys(_COORDS, pa.string())})
    return table, columns


def _names(names_file: Path | None) -> dict[str, str]:
    if names_file is None:
        return {}
    out: dict[str, str] = {}
    with open(names_file, encoding="utf-8-sig", newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and [c.strip() for c in row[:2]] == ["LabelName", "DisplayName"]):
                continue
            if len(row) < 2:
                raise CocoFormatError(
                    f"{names_file}: row {i + 1}: expected LabelName,DisplayName, got {row!r}"
                )
            out[row[0].strip()] = row[1]
    return out


def image_ids_for(image_ids: list[str]) -> np.ndarray:
    """int64 ids of sorted, distinct ``image_ids`` (see the module doc for the rule)."""
    if _ALL_HEX.fullmatch("".join(s + "\n" for s in image_ids)):  # one C-level check of them all
        values = list(map(int, image_ids, itertools.repeat(16)))
        if max(values, default=0) < 2**63 and len(set(values)) == len(values):
            return np.array(values, dtype=np.int64)
    return np.arange(1, len(image_ids) + 1, dtype=np.int64)


def _sizes_from_file(sizes_file: Path, wanted: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(width, height) of each of ``wanted`` from a sizes file, -1 where it has none."""
    header = _header(sizes_file)
    missing = [c for c in ("ImageID", "Width", "Height") if c not in header]
    if missing:
        raise CocoFormatError(
            f"{sizes_file}: missing column(s) {missing}; a sizes file has the header ImageID,Width,Height"
        )
    table = _read_csv(
        sizes_file,
        ["ImageID", "Width", "Height"],
        {"ImageID": pa.string(), "Width": pa.float64(), "Height": pa.float64()},
    )
    ids = _column(table, "ImageID")
    w = pc.fill_null(_column(table, "Width"), np.nan).to_numpy(zero_copy_only=False)
    h = pc.fill_null(_column(table, "Height"), np.nan).to_numpy(zero_copy_only=False)
    del table
    bad = ~(np.isfinite(w) & np.isfinite(h) & (w > 0) & (h > 0) & (w == np.round(w)) & (h == np.round(h)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CocoFormatError(
            f"{sizes_file}: row {i + 1} (ImageID={ids[i].as_py()}): width/height must be positive integers, "
            f"got {w[i]} x {h[i]}"
        )
    w, h = w.astype(np.int64), h.astype(np.int64)
    # a repeated ImageID must repeat its size: each row against the first row of its ImageID
    first = pc.index_in(ids, value_set=ids).to_numpy(zero_copy_only=False)
    differ = (w != w[first]) | (h != h[first])
    if differ.any():
        i = int(np.flatnonzero(differ)[0])
        j = int(first[i])
        raise CocoFormatError(
            f"{sizes_file}: row {i + 1} (ImageID={ids[i].as_py()}): size {w[i]} x {h[i]} differs from row "
            f"{j + 1}'s {w[j]} x {h[j]}"
        )
    at = pc.fill_null(pc.index_in(pa.array(wanted, pa.string()), value_set=ids), -1).to_numpy(
        zero_copy_only=False
    )
    found = at >= 0
    return np.where(found, w[at], -1), np.where(found, h[at], -1)


def _sizes_from_images(
    root: Path, wanted: list[str], use_cache: bool
) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Header sizes of ``<root>/<ImageID>.jpg`` (cached per image root); and the ImageIDs that failed, why."""
    from sniper.data.images import image_size, resolve_image_path

    folder = annotation_cache.cache_dir() if use_cache else None
    cache_file = None
    known: dict[str, tuple[int, int]] = {}
    if folder is not None:
        cache_file = folder / f"image-sizes-{annotation_cache._hash(str(root.resolve()), 16)}.json"
        try:
            known = {k: (int(v[0]), int(v[1])) for k, v in json.loads(cache_file.read_text()).items()}
        except (OSError, ValueError, TypeError, IndexError, AttributeError):
            known = {}
    sizes: dict[str, tuple[int, int]] = {}
    failed: dict[str, str] = {}
    new = 0
    for iid in wanted:
        if iid in known:
            sizes[iid] = known[iid]
            continue
        try:
            sizes[iid] = image_size(resolve_image_path(root, iid + ".jpg"))
        except BadImageError as e:
            failed[iid] = str(e)
            continue
        known[iid] = sizes[iid]
        new += 1
    if cache_file is not None and new:
        try:
            atomic_write_json(cache_file, {k: list(v) for k, v in known.items()}, indent=None)
        except OSError:
            pass  # the sizes are only read again next time
    return sizes, failed


# ------------------------------------------------------------------ building


def _load(
    path: Path,
    source: str,
    names_file: Path | None,
    sizes_file: Path | None,
    root: Path | None,
    *,
    use_cache: bool,
) -> tuple[CocoDataset, bool]:
    """The dataset, and whether every image had a size (only then is it cached)."""
    table, columns = _read_boxes(path)
    n = table.num_rows
    img_code, img_values = _dict_codes(_column(table, "ImageID"))
    lab_code, lab_values = _dict_codes(_column(table, "LabelName"))
    if "IsGroupOf" in columns:
        g_code, g_values = _dict_codes(_column(table, "IsGroupOf"))
        is_one = np.array([v is not None and v.strip() == "1" for v in g_values] + [False])
        crowd = is_one[g_code]  # code -1 picks the trailing False
        del g_code
    else:
        crowd = np.zeros(n, dtype=bool)
    coords = {c: _coords(table, c) for c in _COORDS}
    del table
    with contextlib.suppress(AttributeError):  # pyarrow's pool keeps freed memory otherwise
        pa.default_memory_pool().release_unused()

    # images: the distinct ImageIDs, sorted; code -> image position
    used = _used_codes(img_code, len(img_values))
    order = sorted(range(len(used)), key=[img_values[i] for i in used].__getitem__)
    used = used[np.asarray(order, dtype=np.int64)]
    id_strings = [img_values[i] for i in used]
    code_to_pos = np.full(len(img_values) + 1, -1, dtype=np.int64)  # the last entry: code -1
    code_to_pos[used] = np.arange(len(used))
    int_ids = image_ids_for(id_strings).tolist()

    if sizes_file is not None:
        width, height = _sizes_from_file(sizes_file, id_strings)
    else:
        width = height = np.full(len(id_strings), -1, dtype=np.int64)
    lacking = [id_strings[k] for k in np.flatnonzero(width < 0)]
    failed: dict[str, str] = {}
    if lacking:
        if root is None:
            if sizes_file is None:
                raise CocoFormatError(
                    f"{path}: no image sizes: put {path.stem}-sizes.csv or image_sizes.csv "
                    "(ImageID,Width,Height) next to it, or give the image folder (image_root= / --images) "
                    "to read them from the images"
                )
            raise CocoFormatError(
                f"{path}: {len(lacking)} image(s) have no size in {sizes_file} (e.g. {lacking[:3]}); "
                "add them, or give the image folder (image_root= / --images) to read them from the images"
            )
        got, failed = _sizes_from_images(root, lacking, use_cache)
        width, height = width.copy(), height.copy()
        for k in np.flatnonzero(width < 0):
            width[k], height[k] = got.get(id_strings[k], (-1, -1))
    del lacking

    # the images that have a size; old position -> new position (-1: left out)
    have = width > 0
    new_pos = np.full(len(id_strings) + 1, -1, dtype=np.int64)
    new_pos[np.flatnonzero(have)] = np.arange(int(have.sum()))
    images = [
        ImageRecord(i, s + ".jpg", w, h)
        for i, s, w, h, ok in zip(int_ids, id_strings, width.tolist(), height.tolist(), have.tolist())
        if ok
    ]
    del width, height, have, int_ids, id_strings
    image_pos = new_pos[code_to_pos[img_code]]  # -1 for rows without an ImageID or a size

    # categories: the names file's classes and the box file's MIDs, sorted by MID
    names = _names(names_file)
    used_labels = _used_codes(lab_code, len(lab_values))
    mids = sorted(set(names) | {lab_values[i] for i in used_labels})
    cat_of_mid = {m: k + 1 for k, m in enumerate(mids)}
    categories = [{"id": cat_of_mid[m], "name": names.get(m, m), "mid": m} for m in mids]
    code_to_cat = np.zeros(len(lab_values) + 1, dtype=np.int64)
    for i in used_labels:
        code_to_cat[i] = cat_of_mid[lab_values[i]]
    cat_ids = code_to_cat[lab_code]

    report = LoadReport(source=source)
    x1n, x2n, y1n, y2n = (coords[c][0] for c in _COORDS)
    missing = (img_code < 0) | (lab_code < 0)
    malformed = np.zeros(n, dtype=bool)
    for c in _COORDS:
        missing |= coords[c][1]
        malformed |= coords[c][2]
    del coords

    def row(i: int) -> str:
        iid = img_values[img_code[i]] if img_code[i] >= 0 else ""
        mid = lab_values[lab_code[i]] if lab_code[i] >= 0 else ""
        return f"row {i + 1} (ImageID={iid!r}, LabelName={mid!r})"

    def box(i: int) -> str:
        x1, x2, y1, y2 = (float(v[i]) for v in (x1n, x2n, y1n, y2n))
        return f"XMin {x1!r}, XMax {x2!r}, YMin {y1!r}, YMax {y2!r}"

    valid = np.ones(n, dtype=bool)

    def skip(mask: np.ndarray, reason: str, describe) -> None:
        idx = np.flatnonzero(valid & mask)
        if len(idx) == 0:
            return
        report.skip_all(idx, reason, describe)
        valid[idx] = False

    skip(missing, "missing_field", lambda i: f"{row(i)}: empty ImageID, LabelName or coordinate")
    skip(malformed, "malformed", lambda i: f"{row(i)}: a coordinate is not a number")
    finite = np.isfinite(x1n) & np.isfinite(x2n) & np.isfinite(y1n) & np.isfinite(y2n)
    skip(~finite, "non_finite", lambda i: f"{row(i)}: {box(i)}")
    skip(~((x2n > x1n) & (y2n > y1n)), "non_positive_size", lambda i: f"{row(i)}: {box(i)}")
    skip(
        image_pos < 0,
        "unknown_image",
        lambda i: f"{row(i)}: no image size ({failed.get(img_values[img_code[i]], 'not found')})",
    )

    del missing, malformed, finite
    # pixel boxes, clipped to their images; in blocks (the temporaries of 15M rows take gigabytes)
    widths = np.array([im.width for im in images] + [1], dtype=np.float64)
    heights = np.array([im.height for im in images] + [1], dtype=np.float64)
    clipped = np.empty((n, 4), dtype=np.float64)
    was_clipped = np.empty(n, dtype=bool)
    outside = np.empty(n, dtype=bool)
    for a in range(0, n, _BLOCK):
        b = min(n, a + _BLOCK)
        pos = np.where(valid[a:b], image_pos[a:b], len(images))
        w, h = widths[pos], heights[pos]
        xyxy = np.stack([x1n[a:b] * w, y1n[a:b] * h, x2n[a:b] * w, y2n[a:b] * h], axis=1)
        xyxy[~valid[a:b]] = 0.0
        clipped[a:b], was_clipped[a:b], outside[a:b] = _clip_and_check_outside(xyxy, w, h)
    skip(outside, "outside_image", lambda i: f"{row(i)}: {box(i)} lies outside the image")
    fix = valid & was_clipped
    for j in np.flatnonzero(fix)[:_MAX_EXAMPLES]:
        p = image_pos[j]  # a valid row: its image has a size
        report.add("clipped", f"{row(int(j))}: {box(int(j))} in {widths[p]:g}x{heights[p]:g} image")
    report.add("clipped", None, n=int(fix.sum()) - min(int(fix.sum()), _MAX_EXAMPLES))
    del was_clipped, outside, fix
    x1n = x2n = y1n = y2n = img_code = lab_code = img_values = lab_values = None  # messages written: free

    ann_ids = np.arange(1, n + 1, dtype=np.int64)
    image_pos = np.where(valid, image_pos, 0)
    columns = [clipped, cat_ids, crowd, ann_ids, image_pos]
    del clipped, cat_ids, crowd, ann_ids, image_pos  # _finish frees each as it goes
    return _finish(images, categories, valid, columns, report), not failed
