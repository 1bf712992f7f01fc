"""COCO JSON loading and validation.

``load_coco(path)`` reads an instances file into a :class:`CocoDataset` whose
per-image annotation arrays are built once with numpy (annotations sorted by
image, one slice per image), so a lookup is two array slices, not a scan. A JSON file is
streamed with bounded memory (:mod:`sniper.data.coco_stream`) and its columns cached
(:mod:`sniper.data.annotation_cache`); a ``.csv`` path is an OpenImages box file
(:mod:`sniper.data.openimages`); an already-parsed dict is read as it is. All three give the
same :class:`CocoDataset`, with the same policy and messages.

Bad-input policy (also in ``docs/data.md``):

* **Structural problems are errors** (:class:`~sniper.errors.CocoFormatError`,
  naming the record): the file is not JSON or not an object; ``images``,
  ``annotations`` or ``categories`` is missing or not a list; an image record is
  not an object, lacks ``id``/``width``/``height``/``file_name``, has a
  non-integer id, a non-positive or non-finite size, or repeats an image id; a
  category record lacks an integer ``id`` or repeats one.
* **Per-annotation problems are skipped and counted** in :attr:`CocoDataset.report`
  (with a few example records per reason); ``strict=True`` turns every skip into a
  ``CocoFormatError`` instead: a record that is not an object or lacks
  ``bbox``/``image_id``/``category_id`` (``missing_field``), a bbox that is not 4
  numbers or an id that is not an integer (``malformed``), NaN or infinite values
  (``non_finite``), ``w`` or ``h`` <= 0 (``non_positive_size``), an unknown image
  (``unknown_image``) or category (``unknown_category``), a repeated annotation id
  (``duplicate_id``; the first one is kept), a box entirely outside its image
  (``outside_image``).
* **Fixes are counted**, never silent: a box partly outside its image is clipped to
  it (``clipped``); an annotation without ``id`` gets a fresh unique id
  (``assigned_id``).
* **Kept and counted**: images without annotations (``images_without_annotations``;
  they are legitimate background images). ``iscrowd`` objects are kept with
  ``iscrowd=True``; the chip engine turns them into ignore regions.
* **Segmentations** (only with ``load_coco(..., masks=True)``; default off, so box-only loads
  and the streamed load's memory are unchanged): each kept non-crowd annotation's
  ``segmentation`` is checked (:func:`sniper.data.masks.check_segmentation`) and kept in a
  compact form (:func:`sniper.data.masks.compact_segmentation`) in
  :attr:`ImageAnnotations.segmentations`. An unusable one (empty, a polygon with < 3 points or
  zero area, an RLE whose size is not the image's, malformed) is counted under
  ``bad_segmentation`` (``strict=True``: an error naming the annotation); an annotation without
  one under ``no_segmentation``. Either way the box stays, without a mask (``None``). Crowd
  annotations are ignore regions and need no mask: theirs are neither checked nor kept.

Category ids of any kind (0-based, sparse, large) map to contiguous labels 1..C in
sorted id order (0 is background) and back, via :meth:`CocoDataset.label_of` and
:meth:`CocoDataset.category_of`. ``categories`` keeps the file's order; every list of
categories that stands for the labels (``model_final.pt``, the Predictor) is in label order:
:meth:`CocoDataset.categories_by_label` / :func:`categories_in_label_order`.

``load_results(path, dataset)`` reads COCO results-style JSON (proposals,
detections) with the same policy.
"""

from __future__ import annotations

import contextvars
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from sniper.boxes import xywh_to_xyxy
from sniper.data.masks import check_segmentation, compact_segmentation, rle_size_problem
from sniper.errors import CocoFormatError, SniperError
from sniper.io import read_json

__all__ = [
    "REASONS",
    "CocoDataset",
    "CocoResults",
    "ImageAnnotations",
    "ImageRecord",
    "LoadReport",
    "categories_in_label_order",
    "load_coco",
    "load_results",
]

# reason -> (action, description). The action says what happened to the record.
REASONS: dict[str, tuple[str, str]] = {
    "missing_field": ("skipped", "record is not an object or lacks bbox/image_id/category_id (score)"),
    "malformed": ("skipped", "bbox is not 4 numbers, or an id/score is not a number of the right kind"),
    "non_finite": ("skipped", "bbox or score has NaN or infinite values"),
    "non_positive_size": ("skipped", "bbox has w <= 0 or h <= 0"),
    "unknown_image": ("skipped", "image_id is not in images"),
    "unknown_category": ("skipped", "category_id is not in categories"),
    "duplicate_id": ("skipped", "annotation id repeats an earlier one (the first is kept)"),
    "outside_image": ("skipped", "bbox lies entirely outside its image"),
    "clipped": ("fixed", "bbox partly outside its image, clipped to it"),
    "assigned_id": ("fixed", "annotation without id, given a fresh unique id"),
    "images_without_annotations": ("kept", "image has no (usable) annotation"),
    # masks=True only; the box of the annotation stays either way
    "bad_segmentation": (
        "skipped",
        "segmentation unusable (empty, < 3 points, zero area, RLE size not the image's, malformed): "
        "box kept without a mask",
    ),
    "no_segmentation": ("kept", "annotation has no segmentation: box kept without a mask"),
}

_MAX_EXAMPLES = 3


class _Skip(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


@dataclass
class LoadReport:
    """Counts of skipped / fixed / noted records by reason, with a few examples each."""

    source: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)  # e.g. images, annotations read / kept
    _first_skip: tuple[int, str, str] | None = field(default=None, repr=False, compare=False)

    def skip(self, index: int, reason: str, detail: str) -> None:
        """Count a skipped record; remember the earliest one (by record index) for strict mode."""
        self.add(reason, detail)
        if self._first_skip is None or index < self._first_skip[0]:
            self._first_skip = (index, reason, detail)

    def skip_all(self, indices: np.ndarray, reason: str, describe: Callable[[int], str]) -> None:
        """Count every record of ``indices`` as skipped for ``reason``; only the first few are
        described (``describe(index)``), the rest counted."""
        for j in indices[:_MAX_EXAMPLES]:
            self.skip(int(j), reason, describe(int(j)))
        self.add(reason, None, n=len(indices) - min(len(indices), _MAX_EXAMPLES))

    def raise_first_skip(self) -> None:
        """Strict mode: the earliest skipped record becomes a :class:`CocoFormatError`."""
        if self._first_skip is not None:
            _, reason, detail = self._first_skip
            more = self.skipped - 1
            tail = f"; {more} more bad record(s)" if more else ""
            raise CocoFormatError(f"{self.source}: {detail} ({reason}){tail}")

    def add(self, reason: str, example: str | None = None, n: int = 1) -> None:
        if reason not in REASONS:
            raise KeyError(f"unknown load-report reason {reason!r}")
        if n <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + n
        if example is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < _MAX_EXAMPLES:
                ex.append(example)

    @property
    def skipped(self) -> int:
        return sum(n for r, n in self.counts.items() if REASONS[r][0] == "skipped")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for stats.json)."""
        return {
            "source": self.source,
            **self.totals,
            "skipped": self.skipped,
            "reasons": {
                r: {"action": REASONS[r][0], "count": n, "examples": list(self.examples.get(r, []))}
                for r, n in sorted(self.counts.items())
            },
        }

    def format(self) -> str:
        """Human-readable lines, one per reason, with the first example."""
        head = ", ".join(f"{k} {v}" for k, v in self.totals.items())
        lines = [f"{self.source}: {head}" if self.source else head]
        if not self.counts:
            lines.append("  no problems found")
        for r, n in sorted(self.counts.items(), key=lambda kv: (REASONS[kv[0]][0], kv[0])):
            action, desc = REASONS[r]
            ex = self.examples.get(r)
            lines.append(f"  {action:8s} {n:8d}  {r}: {desc}" + (f"  (e.g. {ex[0]})" if ex else ""))
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class ImageAnnotations:
    """The annotations of one image, as read-only arrays (boxes xyxy, original pixels).

    ``segmentations`` (``load_coco(..., masks=True)`` only, else None): one entry per annotation,
    its segmentation in compact form (polygons: a list of float32 ``[x0, y0, ...]`` arrays; RLE:
    ``{"size": [h, w], "counts": str}``), or None when it has no usable one (crowds included).
    """

    boxes: np.ndarray  # (N, 4) float64
    category_ids: np.ndarray  # (N,) int64, dataset ids
    iscrowd: np.ndarray  # (N,) bool
    ann_ids: np.ndarray  # (N,) int64
    segmentations: list | None = None  # (N,) see above; do not modify

    def __len__(self) -> int:
        return len(self.boxes)


# ids are stored as int64: a larger one is malformed, not a crash in numpy.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _is_int(v: Any) -> bool:
    """An integer id: an int, or a float with an integral value (3.0, as pandas writes ids), in int64."""
    if type(v) is int:
        return _INT64_MIN <= v <= _INT64_MAX
    return type(v) is float and v.is_integer() and _INT64_MIN <= v < 2.0**63


def _is_num(v: Any) -> bool:
    return type(v) is int or type(v) is float


def _read_top(source: str | os.PathLike[str] | Mapping[str, Any] | list) -> tuple[str, Any]:
    if isinstance(source, Mapping | list):
        return "<memory>", source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return str(path), read_json(path)


def _group(keys: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable order that sorts ``keys`` (0..n_groups-1) and the offsets of each group."""
    return np.argsort(keys, kind="stable"), _offsets(keys, n_groups)


def _offsets(keys: np.ndarray, n_groups: int) -> np.ndarray:
    offsets = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=n_groups), out=offsets[1:])
    return offsets


def _is_sorted(a: np.ndarray) -> bool:
    return len(a) < 2 or bool(np.all(a[1:] >= a[:-1]))


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


class _IdIndex:
    """Vectorised lookup of arbitrary integer ids -> positions."""

    def __init__(self, ids: np.ndarray) -> None:
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    def find(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids``; -1 where unknown."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.sorted) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self.sorted, ids)
        pos_c = np.minimum(pos, len(self.sorted) - 1)
        found = self.sorted[pos_c] == ids
        return np.where(found, self.order[pos_c], -1)


def _clip_and_check_outside(
    boxes: np.ndarray, img_w: np.ndarray, img_h: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip xyxy boxes to their images; return (clipped boxes, was_clipped, fully_outside)."""
    clipped = boxes.copy()
    clipped[:, 0] = np.clip(boxes[:, 0], 0, img_w)
    clipped[:, 2] = np.clip(boxes[:, 2], 0, img_w)
    clipped[:, 1] = np.clip(boxes[:, 1], 0, img_h)
    clipped[:, 3] = np.clip(boxes[:, 3], 0, img_h)
    outside = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    was_clipped = np.any(clipped != boxes, axis=1) & ~outside
    return clipped, was_clipped, outside


class CocoDataset:
    """A validated COCO instances file. See the module docstring for the bad-input policy."""

    def __init__(
        self,
        images: list[ImageRecord],
        categories: list[dict[str, Any]],
        boxes: np.ndarray,
        category_ids: np.ndarray,
        iscrowd: np.ndarray,
        ann_ids: np.ndarray,
        image_index: np.ndarray,
        report: LoadReport,
        segmentations: list | None = None,
    ) -> None:
        self.images = images
        self.categories = categories
        self.report = report
        self.image_ids = np.array([im.id for im in images], dtype=np.int64)
        self.widths = np.array([im.width for im in images], dtype=np.int64)
        self.heights = np.array([im.height for im in images], dtype=np.int64)
        self._image_index = _IdIndex(self.image_ids)
        cat_ids = np.array([c["id"] for c in categories], dtype=np.int64)
        self.category_ids = np.sort(cat_ids)
        self._category_index = _IdIndex(self.category_ids)
        if _is_sorted(image_index):  # already grouped (the loaders sort first): kept as they are, no copies
            self._offsets = _offsets(image_index, len(images))
            self._boxes, self._cats, self._crowd, self._ann_ids = boxes, category_ids, iscrowd, ann_ids
            self._segs = segmentations
        else:
            order, self._offsets = _group(image_index, len(images))
            self._boxes = boxes[order]
            self._cats = category_ids[order]
            self._crowd = iscrowd[order]
            self._ann_ids = ann_ids[order]
            self._segs = None if segmentations is None else [segmentations[i] for i in order.tolist()]
        if self._segs is not None and len(self._segs) != len(self._boxes):
            raise ValueError(f"{len(self._segs)} segmentations for {len(self._boxes)} annotations")
        _readonly(
            self.image_ids, self.widths, self.heights, self.category_ids, self._offsets,
            self._boxes, self._cats, self._crowd, self._ann_ids,
        )  # fmt: skip
        by_id = {int(c["id"]): c for c in categories}
        self.category_names = [str(by_id[int(i)].get("name", i)) for i in self.category_ids]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def num_annotations(self) -> int:
        return len(self._boxes)

    @property
    def has_segmentations(self) -> bool:
        """Loaded with ``masks=True``: :attr:`ImageAnnotations.segmentations` is a list."""
        return self._segs is not None

    def index_of(self, image_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Positions in :attr:`images` of ``image_ids`` (-1 where unknown)."""
        return self._image_index.find(np.asarray(image_ids, dtype=np.int64))

    def image(self, image_id: int) -> ImageRecord:
        i = int(self.index_of([image_id])[0])
        if i < 0:
            raise KeyError(f"unknown image id {image_id}")
        return self.images[i]

    def annotations(self, image_id: int) -> ImageAnnotations:
        i = int(self.index_of([image_id])[0])
        if i < 0:
            raise KeyError(f"unknown image id {image_id}")
        return self.annotations_at(i)

    def annotations_at(self, index: int) -> ImageAnnotations:
        """Annotations of ``images[index]`` (no id lookup)."""
        a, b = self._offsets[index], self._offsets[index + 1]
        segs = None if self._segs is None else self._segs[a:b]
        return ImageAnnotations(self._boxes[a:b], self._cats[a:b], self._crowd[a:b], self._ann_ids[a:b], segs)

    def label_of(self, category_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Dataset category ids -> contiguous labels 1..C. Unknown ids raise ``ValueError``."""
        ids = np.asarray(category_ids, dtype=np.int64)
        pos = self._category_index.find(ids)
        if np.any(pos < 0):
            raise ValueError(f"unknown category id(s) {np.unique(ids[pos < 0])[:10].tolist()}")
        return (pos + 1).astype(np.int64)

    def categories_by_label(self) -> list[dict[str, Any]]:
        """``[{id, name}]`` in label order: label ``l`` (1..C) is entry ``l - 1``."""
        return categories_in_label_order(self.categories)

    def category_of(self, labels: Iterable[int] | np.ndarray) -> np.ndarray:
        """Contiguous labels 1..C -> dataset category ids. Other labels raise ``ValueError``."""
        lab = np.asarray(labels, dtype=np.int64)
        bad = (lab < 1) | (lab > len(self.category_ids))
        if np.any(bad):
            raise ValueError(
                f"label(s) {np.unique(lab[bad])[:10].tolist()} outside 1..{len(self.category_ids)}"
            )
        return self.category_ids[lab - 1]

    def summary(self) -> dict[str, int]:
        return {
            "images": len(self.images),
            "annotations": self.num_annotations,
            "crowd": int(self._crowd.sum()),
            "categories": self.num_classes,
        }


def categories_in_label_order(categories: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[{id, name}]`` (int id, str name defaulting to the id) sorted by id: the label order of
    :meth:`CocoDataset.label_of`, so label ``l`` is entry ``l - 1``. Repeated ids raise
    :class:`~sniper.errors.SniperError`."""
    out = [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in categories]
    out.sort(key=lambda c: c["id"])
    for a, b in itertools.pairwise(out):
        if a["id"] == b["id"]:
            raise SniperError(f"duplicate category id {a['id']} in {[c['id'] for c in out][:10]}")
    return out


# ------------------------------------------------------------------ loading


def _fail(source: str, where: str, problem: str) -> CocoFormatError:
    return CocoFormatError(f"{source}: {where}: {problem}")


def _parse_images(
    source: str, images: list, start: int = 0, seen: dict[int, int] | None = None
) -> list[ImageRecord]:
    """Image records; ``start`` is the index of ``images[0]`` in the file's list and ``seen``
    (image id -> index) carries the duplicate check across the chunks of a streamed file."""
    out: list[ImageRecord] = []
    seen = {} if seen is None else seen
    append = out.append
    for i, im in enumerate(images, start):
        # the common record (int id, int sizes, a name) in a few C-level checks; anything else,
        # and every error, goes through the careful checks below
        if type(im) is dict:
            iid, w, h, name = im.get("id"), im.get("width"), im.get("height"), im.get("file_name")
            if (
                type(iid) is int
                and type(w) is int
                and type(h) is int
                and type(name) is str
                and w > 0
                and h > 0
                and name
                and _INT64_MIN <= iid <= _INT64_MAX
                and iid not in seen
            ):
                seen[iid] = i
                append(ImageRecord(iid, name, w, h))
                continue
        append(_parse_image(source, i, im, seen))
    return out


def _parse_image(source: str, i: int, im: Any, seen: dict[int, int]) -> ImageRecord:
    if not isinstance(im, Mapping):
        raise _fail(source, f"images[{i}]", f"expected an object, got {type(im).__name__}")
    where = f"images[{i}] (id={im.get('id')!r})"
    missing = [k for k in ("id", "width", "height", "file_name") if k not in im]
    if missing:
        raise _fail(source, where, f"missing key(s) {missing}")
    if not _is_int(im["id"]):
        raise _fail(source, where, f"id must be an integer that fits in 64 bits, got {im['id']!r}")
    w, h = im["width"], im["height"]
    if not (_is_num(w) and _is_num(h) and math.isfinite(w) and math.isfinite(h)):
        raise _fail(source, where, f"width/height must be numbers, got {w!r} x {h!r}")
    if w <= 0 or h <= 0:
        raise _fail(source, where, f"non-positive image size {w} x {h}")
    if not isinstance(im["file_name"], str) or not im["file_name"]:
        raise _fail(source, where, f"file_name must be a non-empty string, got {im['file_name']!r}")
    iid = int(im["id"])
    if iid in seen:
        raise _fail(source, where, f"duplicate image id (first at images[{seen[iid]}])")
    seen[iid] = i
    return ImageRecord(iid, im["file_name"], int(round(w)), int(round(h)))


def _parse_categories(source: str, categories: list) -> list[dict[str, Any]]:
    seen: dict[int, int] = {}
    for i, c in enumerate(categories):
        if not isinstance(c, Mapping):
            raise _fail(source, f"categories[{i}]", f"expected an object, got {type(c).__name__}")
        where = f"categories[{i}] (id={c.get('id')!r}, name={c.get('name')!r})"
        if "id" not in c:
            raise _fail(source, where, "missing key 'id'")
        if not _is_int(c["id"]):
            raise _fail(source, where, f"id must be an integer that fits in 64 bits, got {c['id']!r}")
        cid = int(c["id"])
        if cid in seen:
            raise _fail(source, where, f"duplicate category id (first at categories[{seen[cid]}])")
        seen[cid] = i
    return [dict(c, id=int(c["id"])) for c in categories]


_NUMBER_TYPES = {int, float}

_BLOCK = 1 << 20  # rows per block of the vectorised box checks

# Integers beyond this are not exact in float64: a message that shows such a bbox value keeps the record.
_EXACT_INT = 2**53


def _fast_columns(records: list, need_category: bool, need_score: bool) -> tuple[Any, ...] | None:
    """Column extraction with C-level type checks; None when any record needs the careful path."""
    typed = _fast_columns_typed(records, need_category, need_score)
    return None if typed is None else typed[0]


def _get(records: list[dict], key: str, default: Any) -> Iterator[Any]:
    """``a.get(key, default)`` for each record, at C speed."""
    return map(dict.get, records, itertools.repeat(key), itertools.repeat(default))


def _fast_columns_typed(
    records: list, need_category: bool, need_score: bool
) -> tuple[tuple[Any, ...], set[type], list] | None:
    """:func:`_fast_columns` plus the set of bbox value types and the bbox lists."""
    try:
        if set(map(type, records)) - {dict}:
            return None
        bbs = list(map(itemgetter("bbox"), records))
        img = list(map(itemgetter("image_id"), records))
        cat = list(
            map(itemgetter("category_id"), records) if need_category else _get(records, "category_id", 1)
        )
        score = list(map(itemgetter("score"), records) if need_score else _get(records, "score", 1.0))
        ids = list(map(itemgetter("id"), records) if not need_score else _get(records, "id", 0))
    except KeyError:
        return None
    if set(map(type, bbs)) - {list} or set(map(len, bbs)) - {4}:
        return None
    bb_types = set(map(type, itertools.chain.from_iterable(bbs)))
    if (
        bb_types - _NUMBER_TYPES
        or set(map(type, itertools.chain(img, cat, ids))) - {int}
        or set(map(type, score)) - _NUMBER_TYPES
    ):
        return None
    n = len(records)
    crowd = np.fromiter(map(bool, _get(records, "iscrowd", 0)), dtype=bool, count=n)
    try:
        return _fast_arrays(bbs, img, cat, score, ids, crowd, n), bb_types, bbs
    except OverflowError:  # an id beyond int64: the careful pass names the record
        return None


def _fast_arrays(bbs: list, img: list, cat: list, score: list, ids: list, crowd: np.ndarray, n: int) -> tuple:
    return (
        np.fromiter(itertools.chain.from_iterable(bbs), dtype=np.float64, count=4 * n).reshape(n, 4),
        np.fromiter(img, dtype=np.int64, count=n),
        np.fromiter(cat, dtype=np.int64, count=n),
        np.fromiter(score, dtype=np.float64, count=n),
        crowd,
        np.fromiter(ids, dtype=np.int64, count=n),
        np.ones(n, dtype=bool),
        [],
        np.ones(n, dtype=bool),
    )


def _parse_records(
    records: list, *, kind: str, need_category: bool, need_score: bool, start: int = 0
) -> tuple[Any, ...]:
    """One pass over annotation-like records.

    Returns (xywh, image_ids, category_ids, scores, iscrowd, ann_ids, has_id, skips, valid);
    rows of skipped records hold zeros and ``valid`` is False there; ``ann_ids`` is -1
    where ``has_id`` is False. ``start`` is the index of ``records[0]`` in the file (messages
    and skip indices count from it).
    """
    return _parse_records_typed(
        records, kind=kind, need_category=need_category, need_score=need_score, start=start
    )[0]


@dataclass
class _ValueTypes:
    """How to write back the original JSON values of a chunk's valid records (see :class:`_ColumnRecords`).

    ``bbox_float`` bit k: ``bbox[k]`` was a float (else an int); ``id_float`` bits 0/1/2: ``id`` /
    ``image_id`` / ``category_id`` was an integral float; ``raw``: record index -> the values of a
    record whose bbox holds an integer the float64 column cannot hold exactly.
    """

    bbox_float: np.ndarray
    id_float: np.ndarray
    raw: dict[int, dict[str, Any]]


def _typed_fast(bb_types: set[type], bbs: list, xywh: np.ndarray, records: list, start: int) -> _ValueTypes:
    n = len(bbs)
    if bb_types <= {float}:
        bits = np.full(n, 15, dtype=np.uint8)
    elif bb_types == {int}:
        bits = np.zeros(n, dtype=np.uint8)
    else:
        is_float = np.fromiter(
            map(isinstance, itertools.chain.from_iterable(bbs), itertools.repeat(float)),
            dtype=bool,
            count=4 * n,
        ).reshape(n, 4)
        bits = (is_float * np.array([1, 2, 4, 8], dtype=np.uint8)).sum(axis=1, dtype=np.uint8)
    raw: dict[int, dict[str, Any]] = {}
    if int in bb_types:
        is_int = (bits[:, None] & np.array([1, 2, 4, 8], dtype=np.uint8)) == 0
        for i in np.flatnonzero(np.any(is_int & (np.abs(xywh) > _EXACT_INT), axis=1)):
            a = records[i]
            raw[start + int(i)] = {k: a[k] for k in ("id", "image_id", "category_id", "bbox") if k in a}
    return _ValueTypes(bits, np.zeros(n, dtype=np.uint8), raw)


def _parse_records_typed(
    records: list, *, kind: str, need_category: bool, need_score: bool, start: int = 0, types: bool = False
) -> tuple[tuple[Any, ...], _ValueTypes | None]:
    """:func:`_parse_records`, plus (with ``types``) the :class:`_ValueTypes` of the records."""
    fast = _fast_columns_typed(records, need_category, need_score)
    if fast is not None:
        cols, bb_types, bbs = fast
        return cols, (_typed_fast(bb_types, bbs, cols[0], records, start) if types else None)
    n = len(records)
    xywh = np.zeros((n, 4), dtype=np.float64)
    image_ids = np.zeros(n, dtype=np.int64)
    cat_ids = np.ones(n, dtype=np.int64)
    scores = np.ones(n, dtype=np.float64)
    crowd = np.zeros(n, dtype=bool)
    ids: list[int | None] = [None] * n
    skips: list[tuple[int, _Skip]] = []
    rows_xywh: list[list[float]] = []
    rows_img: list[int] = []
    rows_cat: list[int] = []
    rows_score: list[float] = []
    rows_crowd: list[bool] = []
    kept: list[int] = []
    bbox_float = np.zeros(n, dtype=np.uint8) if types else None
    id_float = np.zeros(n, dtype=np.uint8) if types else None
    raw: dict[int, dict[str, Any]] = {}
    required = (
        ["bbox", "image_id"] + (["category_id"] if need_category else []) + (["score"] if need_score else [])
    )
    for i, a in enumerate(records):
        at = start + i
        try:
            if type(a) is not dict:
                raise _Skip("missing_field", f"{kind}[{at}]: expected an object, got {type(a).__name__}")
            missing = [k for k in required if k not in a]
            if missing:
                raise _Skip("missing_field", f"{kind}[{at}] (id={a.get('id')!r}): missing {missing}")
            bb = a["bbox"]
            if type(bb) is not list or len(bb) != 4 or not all(_is_num(v) for v in bb):
                raise _Skip("malformed", f"{kind}[{at}] (id={a.get('id')!r}): bbox {bb!r} is not 4 numbers")
            img = a["image_id"]
            if not _is_int(img):
                raise _Skip(
                    "malformed",
                    f"{kind}[{at}] (id={a.get('id')!r}): image_id {img!r} is not a 64-bit integer",
                )
            cat = a.get("category_id", 1)
            if not _is_int(cat):
                raise _Skip(
                    "malformed",
                    f"{kind}[{at}] (id={a.get('id')!r}): category_id {cat!r} is not a 64-bit integer",
                )
            score = a.get("score", 1.0)
            if not _is_num(score):
                raise _Skip(
                    "malformed", f"{kind}[{at}] (id={a.get('id')!r}): score {score!r} is not a number"
                )
            aid = a.get("id")
            if aid is not None and not _is_int(aid):
                raise _Skip("malformed", f"{kind}[{at}] (id={aid!r}): id is not a 64-bit integer")
        except _Skip as s:
            skips.append((at, s))
            continue
        kept.append(i)
        rows_xywh.append(bb)
        rows_img.append(int(img))
        rows_cat.append(int(cat))
        rows_score.append(float(score))
        rows_crowd.append(bool(a.get("iscrowd", 0)))
        ids[i] = None if aid is None else int(aid)
        if types:
            bbox_float[i] = sum(1 << k for k, v in enumerate(bb) if type(v) is float)
            id_float[i] = (type(aid) is float) | (type(img) is float) << 1 | (type(cat) is float) << 2
            if any(type(v) is int and abs(v) > _EXACT_INT for v in bb):
                raw[at] = {k: a[k] for k in ("id", "image_id", "category_id", "bbox") if k in a}
    k = np.asarray(kept, dtype=np.int64)
    if len(k):
        xywh[k] = np.asarray(rows_xywh, dtype=np.float64)
        image_ids[k] = rows_img
        cat_ids[k] = rows_cat
        scores[k] = rows_score
        crowd[k] = rows_crowd
    valid = np.zeros(n, dtype=bool)
    valid[k] = True
    has_id = np.array([v is not None for v in ids], dtype=bool)
    ann_ids = np.array([-1 if v is None else v for v in ids], dtype=np.int64)
    cols = (xywh, image_ids, cat_ids, scores, crowd, ann_ids, has_id, skips, valid)
    return cols, (_ValueTypes(bbox_float, id_float, raw) if types else None)


@dataclass
class _Columns:
    """Annotation records as columns (rows of skipped records hold zeros; ``valid`` is False there).

    ``types`` (streamed files) tells :class:`_ColumnRecords` how to write back the original
    JSON values of a valid record for messages; ``xywh`` is released once the boxes are checked.
    """

    xywh: np.ndarray | None
    image_ids: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray
    ann_ids: np.ndarray
    has_id: np.ndarray
    valid: np.ndarray
    scores: np.ndarray | None = None
    types: _ValueTypes | None = None
    segs: list | None = None  # masks=True: per record, see _take_segmentations

    def __len__(self) -> int:
        return len(self.valid)


# ---------------------------------------------------------------- segmentations (masks=True)

# Set while load_coco(..., masks=True) streams a file: the annotation builder then keeps each
# record's segmentation (the streaming reader creates the builder itself).
_KEEP_SEGMENTATIONS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "keep_segmentations", default=False
)
_NO_SEGMENTATION = object()  # the record has no segmentation (no key, or null)


class _BadSegmentation:
    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _take_segmentations(records: list, crowd: np.ndarray, valid: np.ndarray) -> list:
    """Per record: its segmentation in compact form, :data:`_NO_SEGMENTATION`, a
    :class:`_BadSegmentation` (the checks that need no image size), or None (a crowd or a record
    already invalid: no mask needed). The raw records can be dropped afterwards."""
    out: list = []
    append = out.append
    for a, c, v in zip(records, crowd.tolist(), valid.tolist()):
        if c or not v:
            append(None)
            continue
        seg = a.get("segmentation")
        if seg is None:
            append(_NO_SEGMENTATION)
            continue
        problem = check_segmentation(seg)
        append(_BadSegmentation(problem) if problem is not None else compact_segmentation(seg))
    return out


def _settle_segmentations(
    segs: list,
    records: Any,
    valid: np.ndarray,
    crowd: np.ndarray,
    image_pos: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
    report: LoadReport,
) -> None:
    """Count the kept annotations' missing / bad segmentations (RLE sizes against their images
    here) and leave in ``segs`` only usable ones (None elsewhere)."""

    def rid(j: int) -> str:
        return f"annotations[{j}] (id={records[j].get('id')!r}, image_id={records[j].get('image_id')!r})"

    missing = 0
    for j in np.flatnonzero(valid & ~crowd).tolist():
        seg = segs[j]
        if seg is _NO_SEGMENTATION:
            segs[j] = None
            report.add("no_segmentation", rid(j) if missing < _MAX_EXAMPLES else None)
            missing += 1
            continue
        problem = seg.problem if isinstance(seg, _BadSegmentation) else None
        if problem is None and isinstance(seg, dict):
            problem = rle_size_problem(seg, int(widths[image_pos[j]]), int(heights[image_pos[j]]))
        if problem is not None:
            segs[j] = None
            report.skip(j, "bad_segmentation", f"{rid(j)}: bad segmentation: {problem}")


class _RecordView:
    """Read-only ``records[i]`` of a streamed file, rebuilt from the columns for messages.

    Only valid records (those that passed :func:`_parse_records`) are ever shown; their
    ``id``/``image_id``/``category_id`` were int64-sized integers or integral floats and their bbox
    4 numbers, so the columns plus :class:`_ValueTypes` restore their ``repr`` exactly.
    """

    __slots__ = ("_cols", "_i")

    def __init__(self, cols: _Columns, i: int) -> None:
        self._cols = cols
        self._i = i

    def _value(self, key: str) -> Any:
        c, i = self._cols, self._i
        t = c.types
        if t is not None and i in t.raw:
            return t.raw[i].get(key)
        fbits = int(t.id_float[i]) if t is not None else 0
        if key == "id":
            if not c.has_id[i]:
                return None
            v = int(c.ann_ids[i])
            return float(v) if fbits & 1 else v
        if key == "image_id":
            v = int(c.image_ids[i])
            return float(v) if fbits & 2 else v
        if key == "category_id":
            v = int(c.category_ids[i])
            return float(v) if fbits & 4 else v
        if key == "bbox":
            bits = int(t.bbox_float[i]) if t is not None else 15
            return [float(v) if bits >> k & 1 else int(v) for k, v in enumerate(c.xywh[i].tolist())]
        return None

    def get(self, key: str, default: Any = None) -> Any:
        v = self._value(key)
        return default if v is None else v

    def __getitem__(self, key: str) -> Any:
        return self._value(key)


class _ColumnRecords:
    """``records`` of a streamed file for :func:`_validate_boxes` and the messages of :func:`_assemble`."""

    def __init__(self, cols: _Columns) -> None:
        self._cols = cols

    def __len__(self) -> int:
        return len(self._cols)

    def __getitem__(self, i: int) -> _RecordView:
        return _RecordView(self._cols, int(i))


class _ColumnBuilder:
    """Collects the columns of streamed annotation chunks (each chunk's records are dropped after it).

    Each column is one array grown in place (``ndarray.resize``: ``realloc``, which for large
    arrays remaps pages instead of copying), so the columns never exist twice in memory."""

    _SPEC = (
        ("xywh", np.float64, (4,)), ("image_ids", np.int64, ()), ("category_ids", np.int64, ()),
        ("iscrowd", np.bool_, ()), ("ann_ids", np.int64, ()), ("has_id", np.bool_, ()), ("valid", np.bool_, ()),
        ("bbox_float", np.uint8, ()), ("id_float", np.uint8, ()),
    )  # fmt: skip

    def __init__(self, report: LoadReport, masks: bool | None = None) -> None:
        self.report = report
        self.cap = 256
        self.arrays = {k: np.zeros((self.cap, *shape), dtype=dt) for k, dt, shape in self._SPEC}
        self.raw: dict[int, dict[str, Any]] = {}
        self.n = 0
        # masks (default: as load_coco(..., masks=...) asked): keep each record's segmentation
        keep = _KEEP_SEGMENTATIONS.get() if masks is None else masks
        self.segs: list | None = [] if keep else None

    def _resize(self, cap: int) -> None:
        for k, _, shape in self._SPEC:
            self.arrays[k].resize((cap, *shape), refcheck=False)  # no views of these exist yet
        self.cap = cap

    def add(self, records: list) -> None:
        cols, types = _parse_records_typed(
            records, kind="annotations", need_category=True, need_score=False, start=self.n, types=True
        )
        xywh, image_ids, cat_ids, _scores, crowd, ann_ids, has_id, skips, valid = cols
        for i, s in skips:
            self.report.skip(i, s.reason, s.detail)
        a, b = self.n, self.n + len(records)
        if b > self.cap:  # grown by a quarter: resize zero-fills the new part, so capacity is memory
            self._resize(max(b, self.cap + self.cap // 4))
        for (k, _, _), v in zip(
            self._SPEC,
            (xywh, image_ids, cat_ids, crowd, ann_ids, has_id, valid, types.bbox_float, types.id_float),
        ):
            self.arrays[k][a:b] = v
        self.raw.update(types.raw)
        if self.segs is not None:
            self.segs += _take_segmentations(records, crowd, valid)
        self.n = b

    def columns(self) -> _Columns:
        """The columns, trimmed to the records read (the builder is spent)."""
        self._resize(self.n)
        c = self.arrays
        self.arrays = {}
        return _Columns(
            xywh=c["xywh"],
            image_ids=c["image_ids"],
            category_ids=c["category_ids"],
            iscrowd=c["iscrowd"],
            ann_ids=c["ann_ids"],
            has_id=c["has_id"],
            valid=c["valid"],
            types=_ValueTypes(c["bbox_float"], c["id_float"], self.raw),
            segs=self.segs,
        )


def _validate_boxes(
    kind: str,
    report: LoadReport,
    records: list,
    xywh: np.ndarray,
    image_ids: np.ndarray,
    scores: np.ndarray,
    valid: np.ndarray,
    image_pos: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised numeric checks shared by annotations and results; returns (xyxy, keep mask)."""

    def rid(i: int) -> str:
        a = records[i]
        return f"{kind}[{i}] (id={a.get('id')!r}, image_id={a.get('image_id')!r})"

    def skip_mask(mask: np.ndarray, reason: str, describe) -> None:
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return
        report.skip_all(idx, reason, describe)
        valid[idx] = False

    finite = np.all(np.isfinite(xywh), axis=1) & np.isfinite(scores)
    skip_mask(valid & ~finite, "non_finite", lambda i: f"{rid(i)}: bbox {records[i]['bbox']!r}")
    positive = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
    skip_mask(valid & ~positive, "non_positive_size", lambda i: f"{rid(i)}: bbox {records[i]['bbox']!r}")
    skip_mask(valid & (image_pos < 0), "unknown_image", lambda i: f"{rid(i)}: unknown image_id")
    # Records that are already invalid point at a dummy 1x1 image so the arrays stay aligned.
    widths = np.append(widths, 1.0)
    heights = np.append(heights, 1.0)
    # in blocks: the temporaries of a 15M-box file would otherwise take gigabytes
    n = len(xywh)
    clipped = np.empty((n, 4), dtype=np.float64)
    was_clipped = np.empty(n, dtype=bool)
    outside = np.empty(n, dtype=bool)
    for a in range(0, n, _BLOCK):
        b = min(n, a + _BLOCK)
        pos = np.where(valid[a:b], image_pos[a:b], len(widths) - 1)
        clipped[a:b], was_clipped[a:b], outside[a:b] = _clip_and_check_outside(
            xywh_to_xyxy(xywh[a:b]), widths[pos], heights[pos]
        )
    # (only valid records are described: their dummy-free position is image_pos)
    skip_mask(
        valid & outside,
        "outside_image",
        lambda i: (
            f"{rid(i)}: bbox {records[i]['bbox']!r} outside {widths[image_pos[i]]}x{heights[image_pos[i]]} image"
        ),
    )
    fix = valid & was_clipped
    for j in np.flatnonzero(fix)[:_MAX_EXAMPLES]:
        report.add(
            "clipped",
            f"{rid(int(j))}: bbox {records[j]['bbox']!r} in {widths[image_pos[j]]}x{heights[image_pos[j]]} image",
        )
    report.add("clipped", None, n=int(fix.sum()) - min(int(fix.sum()), _MAX_EXAMPLES))
    return clipped, valid


def load_coco(
    path: str | os.PathLike[str] | Mapping[str, Any],
    *,
    strict: bool = False,
    image_root: str | os.PathLike[str] | None = None,
    masks: bool = False,
) -> CocoDataset:
    """Read and validate a COCO instances JSON file (or an already-parsed dict), or an OpenImages box CSV.

    A JSON file is streamed (bounded memory, see :mod:`sniper.data.coco_stream`) and its parsed
    columns cached (:mod:`sniper.data.annotation_cache`; ``SNIPER_CACHE=off`` disables it). A
    ``.csv`` path is an OpenImages box file (:mod:`sniper.data.openimages`); ``image_root`` is
    where its images are, used only to read image sizes when no sizes file lies beside it.

    ``masks=True`` also keeps the segmentations (:attr:`ImageAnnotations.segmentations`, checked
    as the module docstring says). Their memory is then the caller's choice: the compact
    segmentations of every kept annotation (about 4 bytes per polygon coordinate), and such a
    load bypasses the annotation cache (it holds boxes only). An OpenImages box file has no
    segmentations: its dataset has none (``has_segmentations`` False).
    """
    if isinstance(path, Mapping | list):
        return _load_parsed("<memory>", path, strict=strict, masks=masks)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    if p.suffix.lower() == ".csv":
        from sniper.data.openimages import load_openimages

        return load_openimages(p, strict=strict, image_root=image_root)
    from sniper.data.coco_stream import load_coco_json

    if not masks:
        return load_coco_json(p, strict=strict)
    token = _KEEP_SEGMENTATIONS.set(True)
    try:
        return load_coco_json(p, strict=strict, cache=False)
    finally:
        _KEEP_SEGMENTATIONS.reset(token)


def _check_top(source: str, data: Any) -> None:
    if not isinstance(data, Mapping):
        raise CocoFormatError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise CocoFormatError(f"{source}: missing top-level key '{key}'")
        if not isinstance(data[key], list):
            raise CocoFormatError(f"{source}: '{key}' must be a list, got {type(data[key]).__name__}")


def _load_parsed(source: str, data: Any, *, strict: bool = False, masks: bool = False) -> CocoDataset:
    """:func:`load_coco` of an already-parsed file (``source`` names it in messages)."""
    _check_top(source, data)
    images = _parse_images(source, data["images"])
    categories = _parse_categories(source, data["categories"])
    report = LoadReport(source=source)
    records = data["annotations"]
    xywh, image_ids, cat_ids, scores, crowd, ann_ids, has_id, skips, valid = _parse_records(
        records, kind="annotations", need_category=True, need_score=False
    )
    for i, s in skips:
        report.skip(i, s.reason, s.detail)
    segs = _take_segmentations(records, crowd, valid) if masks else None
    cols = _Columns(xywh, image_ids, cat_ids, crowd, ann_ids, has_id, valid, scores=scores, segs=segs)
    return _assemble(images, categories, cols, records, report, strict=strict)


def _assemble(
    images: list[ImageRecord],
    categories: list[dict[str, Any]],
    cols: _Columns,
    records: Any,
    report: LoadReport,
    *,
    strict: bool,
) -> CocoDataset:
    """Checks that need the whole file (boxes against images, categories, ids) and the dataset.

    ``records[i]`` gives the original values of record ``i`` for messages (the parsed list, or a
    :class:`_ColumnRecords` view of a streamed file); ``report`` holds the parse skips so far.
    """
    n = len(cols)
    image_ids, cat_ids, crowd, ann_ids = cols.image_ids, cols.category_ids, cols.iscrowd, cols.ann_ids
    valid = cols.valid
    scores = cols.scores if cols.scores is not None else np.broadcast_to(np.float64(1.0), (n,))
    img_ids = np.array([im.id for im in images], dtype=np.int64)
    widths = np.array([im.width for im in images], dtype=np.float64)
    heights = np.array([im.height for im in images], dtype=np.float64)
    image_pos = _IdIndex(img_ids).find(image_ids)
    del img_ids
    xyxy, valid = _validate_boxes(
        "annotations", report, records, cols.xywh, image_ids, scores, valid, image_pos, widths, heights
    )
    cols.xywh = None  # boxes are xyxy from here on; free the xywh column of a streamed file
    del image_ids
    cat_index = _IdIndex(np.array([c["id"] for c in categories], dtype=np.int64))
    unknown_cat = valid & (cat_index.find(cat_ids) < 0)
    for j in np.flatnonzero(unknown_cat):
        report.skip(
            int(j), "unknown_category",
            f"annotations[{j}] (id={records[j].get('id')!r}): unknown category_id {records[j]['category_id']!r}",
        )  # fmt: skip
    valid &= ~unknown_cat

    # Annotation ids: duplicates among valid records are skipped (first kept); missing ids assigned.
    has_id = valid & cols.has_id
    idx = np.flatnonzero(has_id)
    if len(idx):
        _, first = np.unique(ann_ids[idx], return_index=True)
        dup = np.ones(len(idx), dtype=bool)
        dup[first] = False
        for j in idx[dup]:
            report.skip(
                int(j), "duplicate_id",
                f"annotations[{j}] (id={ann_ids[j]}, image_id={records[j]['image_id']!r}): duplicate annotation id",
            )  # fmt: skip
        valid[idx[dup]] = False
        del first, dup
    del idx, unknown_cat
    need_id = np.flatnonzero(valid & ~has_id)
    if len(need_id):
        start = int(ann_ids[valid & has_id].max()) + 1 if np.any(valid & has_id) else 1
        ann_ids[need_id] = np.arange(start, start + len(need_id))
        for j in need_id[:_MAX_EXAMPLES]:
            report.add(
                "assigned_id", f"annotations[{j}] (image_id={records[j]['image_id']!r}) -> id {ann_ids[j]}"
            )
        report.add("assigned_id", None, n=len(need_id) - min(len(need_id), _MAX_EXAMPLES))
    segs = cols.segs
    if segs is not None:
        _settle_segmentations(segs, records, valid, crowd, image_pos, widths, heights, report)

    if strict:
        report.raise_first_skip()
    # the messages are written: a streamed file's remaining columns go once the dataset has its copies
    cols.image_ids = cols.category_ids = cols.iscrowd = cols.ann_ids = cols.has_id = cols.valid = None
    cols.types = cols.segs = None
    del has_id
    kept = [xyxy, cat_ids, crowd, ann_ids, image_pos]
    del xyxy, cat_ids, crowd, ann_ids, image_pos
    return _finish(images, categories, valid, kept, report, segmentations=segs)


def _finish(
    images: list[ImageRecord],
    categories: list[dict[str, Any]],
    valid: np.ndarray,
    columns: list[np.ndarray],
    report: LoadReport,
    segmentations: list | None = None,
) -> CocoDataset:
    """The dataset of the ``valid`` rows of ``columns`` = [xyxy, category_ids, iscrowd, ann_ids,
    image positions] (the list is emptied as the columns are grouped, to free them early), and of
    ``segmentations`` (one per row, or None: no masks)."""
    n = len(valid)
    keep = np.flatnonzero(valid)
    kept = list(columns)
    columns.clear()
    if len(keep) < n:
        for k, a in enumerate(kept):
            kept[k] = a[keep]
            del a
    # grouped by image here, one column at a time (the dataset then keeps them without copies)
    order = np.argsort(kept[4], kind="stable")
    for k, a in enumerate(kept):
        kept[k] = a[order]
        del a
    segs = None
    if segmentations is not None:
        segs = [segmentations[i] for i in keep[order].tolist()]
        segmentations.clear()
    del order
    counts = np.bincount(kept[4], minlength=len(images))
    empty = np.flatnonzero(counts == 0)
    for j in empty[:_MAX_EXAMPLES]:
        report.add(
            "images_without_annotations",
            f"images[{j}] (id={images[j].id}, file_name={images[j].file_name!r})",
        )
    report.add("images_without_annotations", None, n=len(empty) - min(len(empty), _MAX_EXAMPLES))

    ds = CocoDataset(images, categories, *kept, report, segmentations=segs)
    report.totals = {
        "images": len(images),
        "annotations_read": n,
        "annotations_kept": len(keep),
        "crowd": int(kept[2].sum()),
        "categories": len(categories),
    }
    return ds


# ------------------------------------------------------------------ results (proposals, detections)


class CocoResults:
    """COCO results-style records grouped by image: boxes xyxy (original px), scores, category ids."""

    def __init__(
        self,
        dataset: CocoDataset,
        boxes: np.ndarray,
        scores: np.ndarray,
        category_ids: np.ndarray,
        image_index: np.ndarray,
        report: LoadReport,
    ) -> None:
        self.report = report
        self._dataset_index = dataset._image_index
        order, self._offsets = _group(image_index, len(dataset.images))
        self._boxes = boxes[order]
        self._scores = scores[order]
        self._cats = category_ids[order]
        _readonly(self._offsets, self._boxes, self._scores, self._cats)

    def __len__(self) -> int:
        return len(self._boxes)

    def at(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes, scores, category_ids) of the dataset's ``images[index]``."""
        a, b = self._offsets[index], self._offsets[index + 1]
        return self._boxes[a:b], self._scores[a:b], self._cats[a:b]

    def for_image(self, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = int(self._dataset_index.find([image_id])[0])
        if i < 0:
            raise KeyError(f"unknown image id {image_id}")
        return self.at(i)


def load_results(
    path: str | os.PathLike[str] | list,
    dataset: CocoDataset,
    *,
    strict: bool = False,
    need_category: bool = False,
) -> CocoResults:
    """Read results JSON ``[{image_id, bbox: [x, y, w, h], score[, category_id]}]`` against ``dataset``.

    Same policy as :func:`load_coco`: a file that is not a JSON list is an error; bad
    records are skipped and counted (unknown image ids under ``unknown_image``), boxes
    partly outside their image are clipped and counted. ``category_id`` defaults to 1
    (proposals); with ``need_category`` it must be present and known to ``dataset``.
    """
    source, records = _read_top(path)
    if not isinstance(records, list):
        raise CocoFormatError(f"{source}: expected a JSON list of results, got {type(records).__name__}")
    report = LoadReport(source=source)
    xywh, image_ids, cat_ids, scores, _crowd, _ids, _has_id, skips, valid = _parse_records(
        records, kind="results", need_category=need_category, need_score=True
    )
    for i, s in skips:
        report.skip(i, s.reason, s.detail)
    image_pos = dataset._image_index.find(image_ids)
    xyxy, valid = _validate_boxes(
        "results",
        report,
        records,
        xywh,
        image_ids,
        scores,
        valid,
        image_pos,
        dataset.widths.astype(np.float64),
        dataset.heights.astype(np.float64),
    )
    if need_category:
        unknown = valid & (_IdIndex(dataset.category_ids).find(cat_ids) < 0)
        for j in np.flatnonzero(unknown):
            report.skip(int(j), "unknown_category", f"results[{j}]: unknown category_id {cat_ids[j]}")
        valid &= ~unknown
    if strict:
        report.raise_first_skip()
    keep = np.flatnonzero(valid)
    report.totals = {"results_read": len(records), "results_kept": len(keep)}
    return CocoResults(dataset, xyxy[keep], scores[keep], cat_ids[keep], image_pos[keep], report)
