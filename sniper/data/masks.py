"""Instance segmentations: validation, box-local sampling, chip-window sampling, RLE encoding.

COCO ``segmentation`` values come in three forms, all handled through pycocotools' mask API:

* polygons: a list of flat ``[x0, y0, x1, y1, ...]`` lists (original px, several parts = union);
* uncompressed RLE: ``{"size": [h, w], "counts": [n0, n1, ...]}`` (column-major runs, zeros first);
* compressed RLE: ``{"size": [h, w], "counts": "<string>"}`` (str or bytes).

**Sampling convention.** A mask is sampled on a grid of ``out_w x out_h`` pixels laid over a box
``(x1, y1, x2, y2)`` in original px: output pixel ``(r, c)`` is the object at the point
``(x1 + (c + 0.5) * w / out_w, y1 + (r + 0.5) * h / out_h)``. For an RLE (a raster of the
image) "the object at a point" is the image pixel holding it (nearest: ``floor``); for a polygon
it is whether the point is inside the polygon, which is also what pycocotools' own full-image
rasterisation tests at every pixel centre ``(j + 0.5, i + 0.5)``. So both paths agree up to the
pixels whose sample points fall within half an original pixel of the outline.

* :func:`box_local_mask`: the ``S x S`` mask of a GT box (``targets["masks"]``): polygons are
  transformed into the ``S x S`` frame, clipped to it and rasterised there by pycocotools, never
  at image size (memory is O(S^2 + vertices) whatever the image).
* :func:`sample_mask`: the same over any window and grid (``sniper export``: a chip window at
  chip resolution); only the part of the grid inside the segmentation's own bounding box is
  rasterised.
* RLEs are decoded straight from their runs into the crop of their own bounding box (no
  image-sized array), and the crops are kept in a :class:`MaskCache` (bounded by total pixels)
  so that the many chips of one image do not decode the same RLE again.

:func:`check_segmentation` says why a segmentation is unusable (``None`` when it is fine),
:func:`compact_segmentation` gives the form ``load_coco(..., masks=True)`` keeps (polygons as
float32 arrays, RLEs compressed with a ``str`` counts; every function here takes both forms);
:func:`rle_from_patch` encodes a mask given as a patch of a larger image (the synthetic dataset)
and :func:`encode_mask` a full mask, both as COCO compressed RLE with a ``str`` ``counts``.

numpy + pycocotools only (no torch).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "MaskCache",
    "box_local_mask",
    "check_segmentation",
    "compact_segmentation",
    "encode_mask",
    "rle_counts",
    "rle_from_patch",
    "rle_size_problem",
    "sample_mask",
    "segmentation_bbox",
]

Segmentation = Any  # list[list[float]] | dict  (see the module docstring)

# polygon clip rectangle: this many output pixels beyond the frame (pixel centres are never there)
_CLIP_MARGIN = 1.0
# most raster pixels of one supersampled polygon rasterisation (see _supersample): a 128 x 128 one
_SUPERSAMPLE_PIXELS = 1 << 14


_NUMBER_TYPES = {int, float}


# ---------------------------------------------------------------- RLE counts


def _counts_from_string(s: str | bytes) -> np.ndarray:
    """The counts of a COCO compressed RLE string (pycocotools' ``rleFrString``), as int64.

    Raises ValueError on characters outside the alphabet, a truncated last value or a value too
    long for 64 bits.
    """
    raw = s.encode("ascii") if isinstance(s, str) else bytes(s)
    if not raw:
        return np.zeros(0, dtype=np.int64)
    b = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if b.min() < 0 or b.max() > 63:
        raise ValueError("counts string has characters outside the RLE alphabet")
    more = (b & 0x20) != 0
    if more[-1]:
        raise ValueError("counts string ends inside a value")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    length = ends - starts + 1
    if length.max() > 12:
        raise ValueError("counts string holds a value beyond 60 bits")
    pos = np.arange(len(b)) - np.repeat(starts, length)
    val = np.add.reduceat((b & 0x1F) << (5 * pos), starts)
    neg = (b[ends] & 0x10) != 0
    val[neg] |= np.left_shift(np.int64(-1), 5 * length[neg])
    counts = val.copy()
    counts[2::2] = np.cumsum(val[2::2])  # counts[m] += counts[m - 2] for m > 2
    counts[1::2] = np.cumsum(val[1::2])
    counts[0] = val[0]
    return counts


def rle_counts(seg: dict) -> tuple[np.ndarray, int, int]:
    """(counts int64, h, w) of an RLE segmentation (compressed or not); ValueError if malformed."""
    size = seg.get("size")
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(type(v) is int and v > 0 for v in size)
    ):
        raise ValueError(f"RLE size must be [h, w] positive integers, got {size!r}")
    h, w = int(size[0]), int(size[1])
    counts = seg.get("counts")
    if isinstance(counts, str | bytes):
        c = _counts_from_string(counts)
    elif isinstance(counts, list):
        if not all(type(v) is int for v in counts):
            raise ValueError("RLE counts must be integers")
        c = np.asarray(counts, dtype=np.int64) if counts else np.zeros(0, dtype=np.int64)
    else:
        raise ValueError(f"RLE counts must be a list or a string, got {type(counts).__name__}")
    if len(c) and c.min() < 0:
        raise ValueError("RLE counts has negative runs")
    total = int(c.sum())
    if total != h * w:
        raise ValueError(f"RLE counts cover {total} pixels, size {h} x {w} has {h * w}")
    return c, h, w


def _runs(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear (column-major) [start, end) of the non-empty runs of ones."""
    ends = np.cumsum(counts)
    a, b = (ends - counts)[1::2], ends[1::2]
    keep = b > a
    return a[keep], b[keep]


def _runs_bbox(a: np.ndarray, b: np.ndarray, h: int) -> tuple[int, int, int, int] | None:
    """Pixel bbox ``(x0, y0, x1, y1)`` (exclusive ends) of the runs; None if there are none."""
    if len(a) == 0:
        return None
    ca, cb = a // h, (b - 1) // h
    multi = ca != cb
    y0 = 0 if multi.any() else int((a % h).min())
    y1 = h if multi.any() else int(((b - 1) % h).max()) + 1
    return int(ca.min()), y0, int(cb.max()) + 1, y1


def _crop_from_runs(a: np.ndarray, b: np.ndarray, h: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Rows ``y0:y1``, columns ``x0:x1`` of the mask of runs ``[a, b)``: bool ``(y1 - y0, x1 - x0)``.

    Works from the runs alone (a difference array over the crop), so memory is the crop's.
    """
    cw, ch = x1 - x0, y1 - y0
    lo, hi = np.searchsorted(b, x0 * h, side="right"), np.searchsorted(a, x1 * h, side="left")
    a, b = a[lo:hi], b[lo:hi]
    ca, cb = a // h, (b - 1) // h
    ra, rb = a % h, (b - 1) % h + 1
    one = ca == cb
    # segments (column, row from, row to): a run in one column, else its first and last columns
    col = np.concatenate([ca[one], ca[~one], cb[~one]])
    r0 = np.concatenate([ra[one], ra[~one], np.zeros(int((~one).sum()), dtype=np.int64)])
    r1 = np.concatenate([rb[one], np.full(int((~one).sum()), h, dtype=np.int64), rb[~one]])
    r0, r1 = np.maximum(r0, y0) - y0, np.minimum(r1, y1) - y0
    ok = (col >= x0) & (col < x1) & (r1 > r0)
    col, r0, r1 = col[ok] - x0, r0[ok], r1[ok]
    # one int8 difference array, summed in place: the runs are disjoint, so no two segments start
    # (or end) at the same place and every partial sum is 0 or 1
    d = np.zeros((cw, ch + 1), dtype=np.int8)
    flat = d.reshape(-1)
    flat[col * (ch + 1) + r0] += 1
    flat[col * (ch + 1) + r1] -= 1
    np.cumsum(d, axis=1, out=d)
    crop = d[:, :ch].view(bool)
    # the columns strictly between a run's first and last are whole
    f0, f1 = np.maximum(ca[~one] + 1, x0) - x0, np.minimum(cb[~one], x1) - x0
    ok = f1 > f0
    if ok.any():
        full = np.cumsum(np.bincount(f0[ok], minlength=cw + 1) - np.bincount(f1[ok], minlength=cw + 1))
        crop[full[:cw] > 0] = True
    return crop.T  # (rows, columns): a view of the column-major array


# ---------------------------------------------------------------- validation


def _polygon_problem(k: int, poly: Any) -> str | None:
    if not isinstance(poly, list):
        return f"malformed: polygon {k} is not a list of coordinates ({type(poly).__name__})"
    if not set(map(type, poly)) <= _NUMBER_TYPES:  # C-level type check (bools are not numbers here)
        return f"malformed: polygon {k} holds values that are not finite numbers"
    if len(poly) % 2:
        return f"malformed: polygon {k} has an odd number of coordinates ({len(poly)})"
    if len(poly) < 6:
        return f"polygon {k} has {len(poly) // 2} point(s), fewer than 3"
    p = np.array(poly, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(p).all():
        return f"malformed: polygon {k} holds values that are not finite numbers"
    d = p - p[0]
    k_far = int(np.argmax(np.abs(d).sum(axis=1)))
    far = d[k_far]
    scale = float(np.abs(far).sum())
    cross = np.abs(d[:, 0] * far[1] - d[:, 1] * far[0])
    if scale == 0 or float(cross.max()) <= 1e-9 * scale * scale:
        return f"polygon {k} has zero area (all points on a line)"
    return None


def rle_size_problem(seg: dict, width: int, height: int) -> str | None:
    """The problem of an RLE whose ``size`` (``[h, w]``) is not the image's, or None."""
    size = seg.get("size")
    if (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(type(v) is int for v in size)
        and (size[0], size[1]) != (height, width)
    ):
        return f"RLE size {list(size)} ([h, w]) disagrees with the {width} x {height} image"
    return None


def check_segmentation(seg: Segmentation, width: int | None = None, height: int | None = None) -> str | None:
    """Why ``seg`` cannot give a mask on a ``width x height`` image, or None when it can.

    Problems: empty (no polygon, an RLE without a single pixel), a polygon with fewer than 3
    points or zero area, an RLE whose ``size`` is not ``[height, width]`` (checked only when the
    size is given), anything malformed (coordinates that are not finite numbers, counts that do
    not cover the size, wrong types).
    """
    if isinstance(seg, list):
        if not seg:
            return "empty: no polygon"
        for k, poly in enumerate(seg):
            problem = _polygon_problem(k, poly)
            if problem is not None:
                return problem
        return None
    if isinstance(seg, dict):
        if width is not None and height is not None:
            problem = rle_size_problem(seg, width, height)
            if problem is not None:
                return problem
        try:
            counts, _, _ = rle_counts(seg)
        except ValueError as e:
            return f"malformed RLE: {e}"
        if not counts[1::2].any():
            return "empty: the RLE has no pixel of the object"
        return None
    return f"malformed: segmentation is a {type(seg).__name__}, not a list of polygons or an RLE"


def compact_segmentation(seg: Segmentation) -> Segmentation:
    """A segmentation that passed :func:`check_segmentation`, in the form the loader keeps:
    polygons as a list of float32 arrays ``[x0, y0, x1, y1, ...]`` (4 bytes a coordinate instead
    of a Python float's 32), an RLE as compressed ``{"size": [h, w], "counts": str}``. Every
    function here takes either form."""
    if isinstance(seg, list):
        return [np.asarray(p, dtype=np.float32) for p in seg]
    h, w = (int(v) for v in seg["size"])
    counts = seg["counts"]
    if isinstance(counts, list):
        counts = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [h, w], "counts": counts}


# ---------------------------------------------------------------- the RLE crop cache


class MaskCache:
    """Decoded RLE crops (bool, over each RLE's own bounding box), least recently used out first.

    Bounded by ``max_pixels`` in total (a crop larger than that is decoded each time, not kept).
    Keys are the caller's, e.g. ``(image_id, annotation_id)``.
    """

    def __init__(self, max_pixels: int = 16_000_000) -> None:
        self.max_pixels = int(max_pixels)
        self._items: OrderedDict[Hashable, tuple[int, int, np.ndarray]] = OrderedDict()
        self.pixels = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> tuple[int, int, np.ndarray] | None:
        v = self._items.get(key)
        if v is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return v

    def put(self, key: Hashable, value: tuple[int, int, np.ndarray]) -> None:
        n = int(value[2].size)
        if n > self.max_pixels:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.pixels -= int(old[2].size)
        while self._items and self.pixels + n > self.max_pixels:
            _, (_, _, crop) = self._items.popitem(last=False)
            self.pixels -= int(crop.size)
        self._items[key] = value
        self.pixels += n

    def clear(self) -> None:
        self._items.clear()
        self.pixels = 0


def _rle_crop(seg: dict, cache: MaskCache | None, key: Hashable | None) -> tuple[int, int, np.ndarray]:
    """``(x0, y0, crop)``: the RLE's mask over its own bounding box (cached under ``key``)."""
    if cache is not None and key is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit
    counts, h, _ = rle_counts(seg)
    a, b = _runs(counts)
    box = _runs_bbox(a, b, h)
    if box is None:
        value = (0, 0, np.zeros((0, 0), dtype=bool))
    else:
        x0, y0, x1, y1 = box
        value = (x0, y0, _crop_from_runs(a, b, h, x0, y0, x1, y1))
    if cache is not None and key is not None:
        cache.put(key, value)
    return value


# ---------------------------------------------------------------- sampling


def segmentation_bbox(seg: Segmentation, cache: MaskCache | None = None, key: Hashable | None = None):
    """``(x1, y1, x2, y2)`` original px that hold the whole object (polygon extremes, or the
    RLE's pixel bbox), or None for an empty RLE."""
    if isinstance(seg, dict):
        x0, y0, crop = _rle_crop(seg, cache, key)
        if crop.size == 0:
            return None
        return float(x0), float(y0), float(x0 + crop.shape[1]), float(y0 + crop.shape[0])
    pts = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in seg])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def _clip_polygon(p: np.ndarray, x_lo: float, y_lo: float, x_hi: float, y_hi: float) -> np.ndarray:
    """Sutherland-Hodgman against an axis-aligned rectangle, vectorised per side.

    The clipped polygon covers the same points inside the rectangle (for the even-odd rule
    pycocotools uses too); it may have zero-width parts on the rectangle's sides.
    """
    for axis, bound, keep_le in ((0, x_lo, False), (0, x_hi, True), (1, y_lo, False), (1, y_hi, True)):
        if len(p) == 0:
            break
        v = p[:, axis]
        inside = v <= bound if keep_le else v >= bound
        if inside.all():
            continue
        prev = np.roll(p, 1, axis=0)
        prev_in = np.roll(inside, 1)
        cross = inside != prev_in
        dv = v - prev[:, axis]
        t = np.divide(bound - prev[:, axis], dv, out=np.zeros_like(dv), where=cross)
        x = prev + t[:, None] * (p - prev)
        x[:, axis] = bound
        pairs = np.stack([x, p], axis=1)  # per edge prev -> p: the crossing, then p
        p = pairs[np.stack([cross, inside], axis=1)]
    return p


def _polygon_grid(
    seg: list, image_size: tuple[int, int], x1: float, y1: float, sx: float, sy: float,
    c0: int, r0: int, nw: int, nh: int,
) -> np.ndarray:  # fmt: skip
    """uint8 ``(nh, nw)``: output pixels ``c0 + c, r0 + r`` of the grid (origin ``x1, y1``, pixel
    ``sx x sy`` original px) inside the polygons, rasterised by pycocotools in that sub-frame."""
    width, height = image_size
    # clip rectangle: the sub-frame plus a margin, and the image (nothing outside it is the object)
    lo_x = max(-_CLIP_MARGIN, (0.0 - x1) / sx - c0)
    hi_x = min(nw + _CLIP_MARGIN, (width - x1) / sx - c0)
    lo_y = max(-_CLIP_MARGIN, (0.0 - y1) / sy - r0)
    hi_y = min(nh + _CLIP_MARGIN, (height - y1) / sy - r0)
    if hi_x <= lo_x or hi_y <= lo_y:
        return np.zeros((nh, nw), dtype=np.uint8)
    polys = []
    for poly in seg:
        p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        q = np.empty_like(p)
        q[:, 0] = (p[:, 0] - x1) / sx - c0
        q[:, 1] = (p[:, 1] - y1) / sy - r0
        q = _clip_polygon(q, lo_x, lo_y, hi_x, hi_y)
        if len(q) >= 3:
            polys.append(q.ravel().tolist())
    if not polys:
        return np.zeros((nh, nw), dtype=np.uint8)
    k = _supersample(sx, sy, nw, nh)
    if k > 1:  # rasterise k x finer (k odd) and keep the sub-pixels at the output pixel centres
        polys = [[v * k for v in p] for p in polys]  # fine pixel k*c + k//2 has centre c + 0.5
    rles = mask_utils.frPyObjects(polys, nh * k, nw * k)
    rle = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
    m = mask_utils.decode(rle)
    return m if k == 1 else np.ascontiguousarray(m[k // 2 :: k, k // 2 :: k])


def _supersample(sx: float, sy: float, nw: int, nh: int) -> int:
    """Odd factor k of the polygon raster: pycocotools places vertices on a 1/5 px lattice of its
    frame, so a frame pixel of ``sx`` original px would move the outline by up to ``sx / 5``;
    k >= sx keeps that at the 0.2 original px of a full-image rasterisation, within
    :data:`_SUPERSAMPLE_PIXELS` raster pixels (measured: finer rasters for S = 56 cost 2-3x the
    time for no measurable agreement on COCO objects, so a 56 x 56 grid stays at k = 1, its
    outline within 0.2 of a grid pixel; small grids such as 14 x 14 get k up to 9)."""
    need = max(sx, sy)
    if need <= 1.0:
        return 1
    k = int(math.ceil(need)) | 1
    cap = int(math.sqrt(_SUPERSAMPLE_PIXELS / max(1, nw * nh)))
    cap = max(1, cap if cap % 2 else cap - 1)
    return min(k, cap)


def sample_mask(
    seg: Segmentation,
    image_size: tuple[int, int],
    box: Sequence[float],
    out_w: int,
    out_h: int,
    *,
    cache: MaskCache | None = None,
    key: Hashable | None = None,
) -> np.ndarray:
    """uint8 ``(out_h, out_w)``: ``seg`` sampled on an ``out_w x out_h`` grid over ``box``.

    ``box`` = ``(x1, y1, x2, y2)`` in original px of an image of ``image_size = (w, h)``; pixel
    ``(r, c)`` is the object at ``(x1 + (c + 0.5) * (x2 - x1) / out_w, y1 + (r + 0.5) * (y2 - y1) / out_h)``
    (see the module docstring). Only the grid pixels inside the segmentation's bounding box are
    computed. ``cache``/``key``: keep the decoded crop of an RLE for the next call.
    """
    out = np.zeros((out_h, out_w), dtype=np.uint8)
    x1, y1, x2, y2 = (float(v) for v in box)
    if out_w <= 0 or out_h <= 0 or not (x2 > x1 and y2 > y1):
        return out
    sx, sy = (x2 - x1) / out_w, (y2 - y1) / out_h
    if isinstance(seg, dict):
        ox, oy, crop = _rle_crop(seg, cache, key)
        if crop.size == 0:
            return out
        cols = np.floor(x1 + (np.arange(out_w) + 0.5) * sx).astype(np.int64) - ox
        rows = np.floor(y1 + (np.arange(out_h) + 0.5) * sy).astype(np.int64) - oy
        cin = np.flatnonzero((cols >= 0) & (cols < crop.shape[1]))
        rin = np.flatnonzero((rows >= 0) & (rows < crop.shape[0]))
        if len(cin) and len(rin):
            # the hits are contiguous ranges of the grid
            out[rin[0] : rin[-1] + 1, cin[0] : cin[-1] + 1] = crop[rows[rin][:, None], cols[cin][None, :]]
        return out
    bb = segmentation_bbox(seg)
    # grid pixels whose sample point may be inside: centre in [bx1, bx2] (one pixel of slack)
    c0 = max(0, math.floor((bb[0] - x1) / sx - 0.5) - 1)
    c1 = min(out_w, math.ceil((bb[2] - x1) / sx - 0.5) + 2)
    r0 = max(0, math.floor((bb[1] - y1) / sy - 0.5) - 1)
    r1 = min(out_h, math.ceil((bb[3] - y1) / sy - 0.5) + 2)
    if c1 > c0 and r1 > r0:
        out[r0:r1, c0:c1] = _polygon_grid(seg, image_size, x1, y1, sx, sy, c0, r0, c1 - c0, r1 - r0)
    return out


def box_local_mask(
    seg: Segmentation,
    image_size: tuple[int, int],
    box_xyxy_original_px: Sequence[float],
    S: int,
    *,
    cache: MaskCache | None = None,
    key: Hashable | None = None,
) -> np.ndarray:
    """uint8 ``[S, S]``: the mask sampled at the ``S x S`` pixel centres of the box (original px).

    A chip-pixel box maps to it through the chip: ``original = origin + chip_px / scale``.
    """
    return sample_mask(seg, image_size, box_xyxy_original_px, int(S), int(S), cache=cache, key=key)


# ---------------------------------------------------------------- encoding


def _compressed(counts: list[int], h: int, w: int) -> dict[str, Any]:
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE ``{"size": [h, w], "counts": str}`` of a 2D mask."""
    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
    rle = mask_utils.encode(m)
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle["counts"].decode("ascii")}


def rle_from_patch(patch: np.ndarray, x0: int, y0: int, width: int, height: int) -> dict[str, Any]:
    """COCO compressed RLE of a ``width x height`` image mask that is ``patch`` (bool ``(ph, pw)``)
    at ``(x0, y0)`` and empty elsewhere, without an image-sized array.

    The patch must lie inside the image.
    """
    m = np.asarray(patch, dtype=bool)
    ph, pw = m.shape
    if x0 < 0 or y0 < 0 or x0 + pw > width or y0 + ph > height:
        raise ValueError(f"patch {pw}x{ph} at ({x0}, {y0}) is not inside the {width}x{height} image")
    padded = np.zeros((pw, ph + 2), dtype=np.int8)  # one row per image column, zero guards
    padded[:, 1:-1] = m.T
    col, row = np.nonzero(np.diff(padded, axis=1))  # sorted: column-major order of the image
    edges = (x0 + col).astype(np.int64) * height + y0 + row
    if len(edges) > 2:  # a run that ends at a column's bottom and restarts at the next top: one run
        join = np.flatnonzero(edges[1:-1:2] == edges[2::2])
        if len(join):
            drop = np.concatenate([2 * join + 1, 2 * join + 2])
            edges = np.delete(edges, drop)
    counts = np.diff(np.concatenate([[0], edges, [width * height]]))
    if len(counts) > 1 and counts[-1] == 0:  # the object reaches the last pixel: no final zero run
        counts = counts[:-1]
    return _compressed(counts.tolist(), height, width)
