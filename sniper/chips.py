"""The chip engine: candidate windows, positive and negative chips, labels (paper §3.1-3.4).

Pure numpy; the engine never touches pixels. A chip is an integer window of at
most ``K x K`` pixels (``cfg.chip_size``) in the *scaled* frame of one pyramid
scale (image resized by ``f``); it is reported in ORIGINAL image coordinates
(``window / f``) with its factor ``f`` and the index of its scale.

Candidate windows (§3.1): per axis, positions ``0, d, 2d, ...`` while the window
stays inside the scaled image, plus one window flush with the right (bottom) edge
when the grid does not end there; an axis shorter than ``K`` gets one window
spanning it. ``d`` is ``cfg.stride``, or a per-epoch draw from
``cfg.random_stride`` (:func:`epoch_stride`).

Boxes valid for selection at a scale (§3.2): GT boxes that are not crowd, whose
``sqrt(w * h)`` (original px, after clipping to the image) is in the scale's
range, that are not degenerate (scaled sides positive and ``>= cfg.min_box_size``), and that
**fit**. The fit rule: along an axis where the scaled image is longer than ``K``
the scaled (clipped) box side must be ``<= K - d``; along an axis of at most
``K`` pixels any box fits. Why this guarantees coverage: window ``x`` contains a
box iff ``x in [x2 - K, x1]``, an interval of length ``K - w >= d``; the window
positions start at 0, end at ``W - K`` and are at most ``d`` apart, and the
clipped box has ``x1 >= 0``, ``x2 - K <= W - K``, so some position falls in it.
Containment is decided in the scaled frame (exact float comparisons).

Greedy maximum cover by full containment: repeatedly take the window holding the
most not-yet-covered boxes; ties go to the highest pseudo-random window priority
(:func:`window_priority`, a hash of ``seed`` and the window index, so a seed fixes
the result). The set of windows containing a box is a rectangle in window-index
space, so per-window counts come from a 2D difference array and cumsum, and after
each pick only the picked boxes' rectangles are subtracted (a local update).
Work is limited to the sub-grid spanned by the boxes' rectangles. For up to 50
boxes a scale uses bit masks instead: window ``(i, j)`` holds ``X[i] & Y[j]`` (1D
difference arrays of box bits per column and row), a popcount per pick; this is
about 2x faster on COCO (``benchmarks/chips.py``). Both paths pick the same chips.
Memory is O(windows + boxes): no windows x boxes matrix is ever built.

Negative chips (§3.3): per scale, proposals fully inside a positive chip of that
scale are dropped; the same greedy covers the remaining in-range proposals that
fit, and stops at the first pick holding ``<= M`` not-yet-covered proposals
(``cfg.neg_min_proposals[scale]``): a kept chip holds MORE than ``M``. Proposal
scores are not used (as in the authors' code).

Labels (§3.4): :func:`chip_labels` returns every GT box that intersects the chip
with positive area, in chip pixels and clipped to the chip, marked ``valid``
(not crowd, in range, fully inside the chip, clipped sides ``>= min_box_size``)
or ``ignore`` (everything else): nothing that intersects a chip becomes background.

Example::

    >>> import numpy as np
    >>> from sniper.config import ChipConfig
    >>> from sniper.chips import positive_chips, negative_chips, chip_labels, epoch_chips
    >>> cfg = ChipConfig()
    >>> gt = np.array([[10., 20., 60., 80.], [300., 200., 500., 420.]])
    >>> pos = positive_chips(gt, 640, 480, cfg, seed=0)
    >>> len(pos), pos.scale_index.tolist()
    (3, [0, 1, 2])
    >>> chip = pos.chips()[0]
    >>> chip.size_px()
    (512, 512)
    >>> np.allclose(chip.to_image(chip.to_chip(gt)), gt)
    True
    >>> lab = chip_labels(chip, gt, np.array([1, 2]), np.array([False, False]), cfg)
    >>> lab.valid.tolist(), lab.ignore.tolist()
    ([True], [False])
    >>> props = np.tile([[400., 10., 440., 50.]], (30, 1))
    >>> neg = negative_chips(props, pos, 640, 480, cfg)
    >>> len(neg) >= 1
    True

One epoch of one image, ready for a parquet file::

    >>> ch = epoch_chips(7, gt, 640, 480, cfg, proposals=props, seed=0, epoch=1)
    >>> sorted(ch.columns())
    ['count', 'image_id', 'kind', 'scale', 'scale_index', 'x1', 'x2', 'y1', 'y2']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sniper.boxes import clip_xyxy, sqrt_area
from sniper.config import ChipConfig
from sniper.scales import scaled_size

__all__ = [
    "Chip",
    "ChipLabels",
    "ImageChips",
    "candidate_windows",
    "chip_labels",
    "chips_columns",
    "epoch_chips",
    "epoch_pool",
    "epoch_stride",
    "negative_chips",
    "positive_chips",
    "sample_negatives",
    "selection_mask",
    "window_positions",
    "window_priority",
]

SeedLike = int | Sequence[int]

# Below this many boxes a scale runs the bit-mask greedy (measured faster; see module doc).
BITMASK_MAX_BOXES = 50
# Tolerance (chip px) of "fully inside the chip" in chip_labels.
INSIDE_TOL = 1e-4

_M64 = (1 << 64) - 1
_HAS_POPCOUNT = hasattr(np, "bitwise_count")


# ----------------------------------------------------------------- value types


@dataclass(frozen=True)
class Chip:
    """One chip, in original image coordinates.

    ``chip = (original - (x1, y1)) * scale``; the chip's integer window in the
    scaled frame is :attr:`window`.
    """

    x1: float
    y1: float
    x2: float
    y2: float
    scale: float
    scale_index: int
    kind: str = "pos"

    def __post_init__(self) -> None:
        if not (self.scale > 0 and np.isfinite(self.scale)):
            raise ValueError(f"Chip.scale must be positive and finite, got {self.scale}")
        if not (self.x2 > self.x1 and self.y2 > self.y1):
            raise ValueError(f"Chip needs x2 > x1 and y2 > y1, got {(self.x1, self.y1, self.x2, self.y2)}")
        if self.kind not in ("pos", "neg"):
            raise ValueError(f"Chip.kind must be 'pos' or 'neg', got {self.kind!r}")

    @property
    def window(self) -> tuple[int, int, int, int]:
        """The integer window ``(x1, y1, x2, y2)`` in the scaled frame."""
        f = self.scale
        return (round(self.x1 * f), round(self.y1 * f), round(self.x2 * f), round(self.y2 * f))

    def size_px(self) -> tuple[int, int]:
        """``(w, h)`` in chip pixels, each ``<= chip_size``."""
        x1, y1, x2, y2 = self.window
        return x2 - x1, y2 - y1

    def to_chip(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (..., 4) xyxy from original to chip pixels (no clipping)."""
        b = np.asarray(boxes, dtype=np.float64)
        return (b - np.array([self.x1, self.y1, self.x1, self.y1])) * self.scale

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (..., 4) xyxy from chip pixels to original pixels."""
        b = np.asarray(boxes, dtype=np.float64)
        return b / self.scale + np.array([self.x1, self.y1, self.x1, self.y1])


@dataclass
class ImageChips:
    """All chips of one image, as parallel arrays (M chips)."""

    image_id: int
    boxes: np.ndarray  # (M, 4) float64, original pixels (window / scale)
    scale: np.ndarray  # (M,) float64 resize factor f
    scale_index: np.ndarray  # (M,) int64 index into cfg.scales
    negative: np.ndarray  # (M,) bool: True for negative chips
    windows: np.ndarray  # (M, 4) int64 integer window in the scaled frame
    count: np.ndarray  # (M,) int64 boxes (or proposals) newly covered when the greedy picked it

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def kind(self) -> np.ndarray:
        """(M,) ``"pos"`` / ``"neg"``."""
        return np.where(self.negative, "neg", "pos")

    def chips(self) -> list[Chip]:
        return [
            Chip(*map(float, b), scale=float(f), scale_index=int(s), kind="neg" if n else "pos")
            for b, f, s, n in zip(self.boxes, self.scale, self.scale_index, self.negative)
        ]

    def select(self, index: np.ndarray) -> ImageChips:
        """A subset (boolean mask or integer index), same image."""
        return ImageChips(
            self.image_id,
            self.boxes[index],
            self.scale[index],
            self.scale_index[index],
            self.negative[index],
            self.windows[index],
            self.count[index],
        )

    def columns(self) -> dict[str, np.ndarray]:
        """Columns of ``chips.parquet``: image_id, kind, scale, scale_index, x1, y1, x2, y2, count."""
        m = len(self)
        return {
            "image_id": np.full(m, self.image_id, dtype=np.int64),
            "kind": self.kind.astype(object),
            "scale": self.scale,
            "scale_index": self.scale_index,
            "x1": self.boxes[:, 0],
            "y1": self.boxes[:, 1],
            "x2": self.boxes[:, 2],
            "y2": self.boxes[:, 3],
            "count": self.count,
        }

    @staticmethod
    def concat(parts: Sequence[ImageChips], image_id: int | None = None) -> ImageChips:
        """Chips of one image from several parts (e.g. positives + negatives)."""
        if not parts:
            return _empty(0 if image_id is None else image_id)
        return ImageChips(
            parts[0].image_id if image_id is None else image_id,
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scale for p in parts]),
            np.concatenate([p.scale_index for p in parts]),
            np.concatenate([p.negative for p in parts]),
            np.concatenate([p.windows for p in parts]),
            np.concatenate([p.count for p in parts]),
        )


@dataclass
class ChipLabels:
    """Every GT box that intersects a chip with positive area, in chip pixels."""

    boxes: np.ndarray  # (N, 4) float32, clipped to the chip
    classes: np.ndarray  # (N,) int64, as given (dataset category ids)
    valid: np.ndarray  # (N,) bool: a training target of this chip at its scale
    ignore: np.ndarray  # (N,) bool: == ~valid (out of range, crowd, truncated, too small)
    gt_index: np.ndarray  # (N,) int64 index into the image's GT arrays
    valid_range: np.ndarray  # (2,) float64 (lo * f, hi * f), sqrt-area chip px (hi may be inf)


def _empty(image_id: int) -> ImageChips:
    return ImageChips(
        int(image_id),
        np.zeros((0, 4)),
        np.zeros(0),
        np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=bool),
        np.zeros((0, 4), dtype=np.int64),
        np.zeros(0, dtype=np.int64),
    )


def chips_columns(parts: Sequence[ImageChips]) -> dict[str, np.ndarray]:
    """Columns of many images' chips concatenated (``pyarrow.table(chips_columns(...))``)."""
    cols = [p.columns() for p in parts]
    if not cols:
        cols = [_empty(0).columns()]
    return {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}


# ------------------------------------------------------------ seeds and grids


def _mix(seed: SeedLike) -> int:
    """A 64-bit key from an int or a sequence of ints (splitmix64 folding)."""
    parts = [seed] if isinstance(seed, int | np.integer) else list(seed)
    h = 0x243F6A8885A308D3
    for p in parts:
        z = (h ^ (int(p) & _M64)) + 0x9E3779B97F4A7C15 & _M64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _M64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
        h = z ^ (z >> 31)
    return h


def window_priority(seed: SeedLike, scale_index: int, n: int) -> np.ndarray:
    """Tie-break priority (int64 in ``[0, 2**31)``) of windows ``0..n-1`` of one scale.

    A hash of ``(seed, scale_index, window index)``: fixed for a seed, different
    across seeds. The greedy prefers the highest priority among equal counts.
    Positive chips of scale ``s`` use ``scale_index = s``, negative chips ``-1 - s``.
    """
    return _priority(_mix(seed), scale_index, n)


_U29, _U33 = np.uint64(29), np.uint64(33)
_MUL1, _MUL2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _priority(seed_key: int, scale_index: int, n: int | np.ndarray) -> np.ndarray:
    """Priorities of windows ``0..n-1`` (int ``n``) or of the window indices in array ``n``."""
    z = np.arange(n, dtype=np.uint64) if isinstance(n, int) else n.astype(np.uint64)
    z ^= np.uint64((seed_key ^ (scale_index * 0x9E3779B97F4A7C15)) & _M64)
    z *= _MUL1
    z ^= z >> _U29
    z *= _MUL2
    z >>= _U33
    return z.view(np.int64)


def epoch_stride(cfg: ChipConfig, seed: int, epoch: int) -> int:
    """The grid stride of an epoch: ``cfg.stride``, or a draw from ``cfg.random_stride``.

    The draw is uniform over ``[lo, hi]`` (inclusive) and a function of ``(seed, epoch)``.
    """
    if cfg.random_stride is None:
        return int(cfg.stride)
    lo, hi = (int(v) for v in cfg.random_stride)
    if not 0 < lo <= hi:
        raise ValueError(f"chips.random_stride must be [lo, hi] with 0 < lo <= hi, got {cfg.random_stride}")
    return lo + _mix((seed, epoch, 0x5742)) % (hi - lo + 1)


def window_positions(length: int, chip_size: int, stride: int) -> np.ndarray:
    """Start positions (int64) of the windows along one axis of ``length`` scaled px.

    ``0, d, 2d, ...`` while a K-window fits, plus ``length - K`` if the grid misses it;
    ``[0]`` when ``length <= K`` (one window spanning the axis).
    """
    if length <= chip_size:
        return np.zeros(1, dtype=np.int64)
    last = length - chip_size
    n = last // stride + 1
    edge = last % stride != 0
    pos = np.arange(0, (n + edge) * stride, stride, dtype=np.int64)
    if edge:
        pos[-1] = last
    return pos


def candidate_windows(
    width: int, height: int, cfg: ChipConfig, *, stride: int | None = None
) -> list[np.ndarray]:
    """All candidate windows ``(n, 4)`` int64 (scaled px), one array per scale (row-major x, then y)."""
    d = cfg.stride if stride is None else stride
    K = cfg.chip_size
    out = []
    for s in cfg.scales:
        W, H = scaled_size(width, height, s.resize_factor(width, height))
        xs, ys = window_positions(W, K, d), window_positions(H, K, d)
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        gx, gy = gx.ravel(), gy.ravel()
        out.append(np.stack([gx, gy, gx + min(K, W), gy + min(K, H)], axis=1))
    return out


# ---------------------------------------------------------------- validation


def _as_boxes(boxes: np.ndarray | None, what: str) -> np.ndarray:
    if boxes is None:
        return np.zeros((0, 4))
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{what} must have shape (N, 4) xyxy, got {b.shape}")
    if not np.isfinite(b).all():
        bad = int(np.flatnonzero(~np.isfinite(b).all(axis=1))[0])
        raise ValueError(f"{what}[{bad}] is not finite: {b[bad].tolist()}")
    return b


def _check_cfg(cfg: ChipConfig, stride: int) -> None:
    if not 0 < stride < cfg.chip_size:
        raise ValueError(f"chip stride must be in (0, chip_size={cfg.chip_size}), got {stride}")
    if not cfg.scales:
        raise ValueError("chips.scales is empty")


def _scale_geometry(width: int, height: int, cfg: ChipConfig) -> tuple[list, list, np.ndarray]:
    """Factors f, scaled sizes (W, H) and ranges (S, 2) of every scale for one image."""
    fs, sizes, ranges = [], [], []
    for s in cfg.scales:
        f = s.resize_factor(width, height)
        fs.append(f)
        sizes.append(scaled_size(width, height, f))
        ranges.append((s.lo, s.hi))
    return fs, sizes, np.array(ranges)


def _selection(boxes: np.ndarray, width: int, height: int, cfg: ChipConfig, stride: int):
    """Scaled clipped boxes (S, N, 4), the (S, N) selection mask, factors and scaled sizes."""
    fs, sizes, ranges = _scale_geometry(width, height, cfg)
    K = cfg.chip_size
    b = clip_xyxy(boxes, width, height)
    sa = sqrt_area(b)
    # per scale: scaled-image limits, and the largest side that fits (inf on axes <= K)
    geo = np.array(
        [(W, H, W, H, np.inf if W <= K else K - stride, np.inf if H <= K else K - stride) for W, H in sizes]
    )
    sb = np.minimum(b * np.array(fs)[:, None, None], geo[:, None, :4])
    swh = sb[:, :, 2:] - sb[:, :, :2]
    # sides positive and >= min_box_size (5e-324: the smallest positive float)
    fits = (swh <= geo[:, None, 4:]) & (swh >= max(cfg.min_box_size, 5e-324))
    ok = fits[:, :, 0] & fits[:, :, 1] & (sa >= ranges[:, :1]) & (sa < ranges[:, 1:])
    return sb, ok, fs, sizes


def selection_mask(
    gt_boxes: np.ndarray,
    width: int,
    height: int,
    cfg: ChipConfig,
    *,
    iscrowd: np.ndarray | None = None,
    stride: int | None = None,
) -> np.ndarray:
    """(S, N) bool: GT box ``n`` is valid for chip selection at scale ``s`` (see module doc)."""
    d = cfg.stride if stride is None else int(stride)
    _check_cfg(cfg, d)
    b = _as_boxes(gt_boxes, "gt_boxes")
    ok = _selection(b, width, height, cfg, d)[1] if len(b) else np.zeros((len(cfg.scales), 0), dtype=bool)
    if iscrowd is not None and len(b):
        ok &= ~np.asarray(iscrowd, dtype=bool)[None, :]
    return ok


# ------------------------------------------------------------------- greedy


def _rect_counts(i0, i1, j0, j1, nx: int, ny: int) -> np.ndarray:
    """(nx, ny) int64: how many inclusive index rectangles cover each cell (difference array)."""
    w = ny + 1
    size = (nx + 1) * w
    a = i0 * w
    b = (i1 + 1) * w
    plus = np.bincount(np.concatenate([a + j0, b + j1 + 1]), minlength=size)
    minus = np.bincount(np.concatenate([a + j1 + 1, b + j0]), minlength=size)
    d = (plus - minus).reshape(nx + 1, w)
    np.cumsum(d, axis=0, out=d)
    np.cumsum(d, axis=1, out=d)
    return d[:nx, :ny]


def _greedy_rects(i0, i1, j0, j1, nx: int, ny: int, prio: np.ndarray, min_count: int):
    """Greedy max cover over index rectangles with local count updates."""
    key = np.ascontiguousarray(_rect_counts(i0, i1, j0, j1, nx, ny))  # flat must be a view of key
    key <<= 31
    key |= prio.reshape(nx, ny)
    flat = key.reshape(-1)
    stop = (min_count + 1) << 31
    alive = np.ones(i0.size, dtype=bool)
    picks, counts = [], []
    while True:
        k = int(flat.argmax())
        if flat[k] < stop:
            break
        i, j = divmod(k, ny)
        idx = np.flatnonzero((i0 <= i) & (i1 >= i) & (j0 <= j) & (j1 >= j) & alive)
        alive[idx] = False
        a0, a1 = int(i0[idx].min()), int(i1[idx].max())
        b0, b1 = int(j0[idx].min()), int(j1[idx].max())
        local = _rect_counts(i0[idx] - a0, i1[idx] - a0, j0[idx] - b0, j1[idx] - b0, a1 - a0 + 1, b1 - b0 + 1)
        local <<= 31
        key[a0 : a1 + 1, b0 : b1 + 1] -= local
        picks.append(k)
        counts.append(idx.size)
    return picks, counts


def _greedy_bitmask(i0, i1, j0, j1, nx: int, ny: int, prio: np.ndarray, min_count: int):
    """Same greedy for at most 50 boxes, with one bit per box (same picks as ``_greedy_rects``).

    Window ``(i, j)`` holds the boxes of ``X[i] & Y[j]``, where ``X[i]`` (``Y[j]``) is the
    mask of boxes whose column (row) index range contains ``i`` (``j``): two 1D difference
    arrays instead of a 2D one, and a popcount per pick instead of local updates.
    """
    bits = np.ldexp(1.0, np.arange(i0.size))  # sums of distinct powers of two: exact in float64 (n <= 52)
    X = np.cumsum(np.bincount(i0, bits, nx + 1)[:nx] - np.bincount(i1 + 1, bits, nx + 1)[:nx])
    Y = np.cumsum(np.bincount(j0, bits, ny + 1)[:ny] - np.bincount(j1 + 1, bits, ny + 1)[:ny])
    X = X.astype(np.int64)[:, None]
    Y = Y.astype(np.int64)[None, :]
    stop = (min_count + 1) << 31
    picks, counts = [], []
    while True:
        masks = (X & Y).ravel()
        key = np.bitwise_count(masks).astype(np.int64)
        key <<= 31
        key |= prio
        k = int(key.argmax())
        if key[k] < stop:
            break
        picks.append(k)
        counts.append(int(key[k]) >> 31)
        X &= ~masks[k]
    return picks, counts


def _cover_scale(
    sb: np.ndarray, W: int, H: int, K: int, stride: int, seed_key: int, prio_index: int, min_count: int
) -> tuple[list, list]:
    """Greedy cover of scaled boxes ``sb`` (n, 4) that fit; returns windows [(x1, y1, x2, y2)] and counts."""
    kw, kh = min(K, W), min(K, H)
    n = sb.shape[0]
    if W <= K and H <= K:  # one window: it holds every box
        return ([(0, 0, W, H)], [n]) if n > min_count else ([], [])
    xs, ys = window_positions(W, K, stride), window_positions(H, K, stride)
    ny = ys.size
    # Window index range containing each box: xs[i] in [x2 - kw, x1].
    i0 = xs.searchsorted(sb[:, 2] - kw, side="left")
    i1 = xs.searchsorted(sb[:, 0], side="right") - 1
    j0 = ys.searchsorted(sb[:, 3] - kh, side="left")
    j1 = ys.searchsorted(sb[:, 1], side="right") - 1
    # Only the sub-grid spanned by the boxes' ranges can hold a box: work there, with the
    # priorities of its cells hashed from their whole-grid window indices.
    a0, b0 = int(i0.min()), int(j0.min())
    mx, my = int(i1.max()) - a0 + 1, int(j1.max()) - b0 + 1
    cells = (np.arange(a0 * ny, (a0 + mx) * ny, ny)[:, None] + np.arange(b0, b0 + my)).ravel()
    prio = _priority(seed_key, prio_index, cells)
    if n == 1 and min_count == 0 and BITMASK_MAX_BOXES > 0:  # every cell holds the box
        picks, counts = [int(prio.argmax())], [1]
    elif _HAS_POPCOUNT and n <= BITMASK_MAX_BOXES:
        picks, counts = _greedy_bitmask(i0 - a0, i1 - a0, j0 - b0, j1 - b0, mx, my, prio, min_count)
    else:
        picks, counts = _greedy_rects(i0 - a0, i1 - a0, j0 - b0, j1 - b0, mx, my, prio, min_count)
    xl, yl = xs.tolist(), ys.tolist()
    wins = []
    for k in picks:
        x, y = xl[k // my + a0], yl[k % my + b0]
        wins.append((x, y, x + kw, y + kh))
    return wins, counts


def _cover_all(sb, ok, fs, sizes, K: int, stride: int, seed_key: int, prio_index, min_count) -> list:
    """Greedy cover at every scale of one image; ``parts`` for :func:`_assemble`.

    ``sb`` (S, N, 4) scaled boxes, ``ok`` (S, N) the boxes to cover, ``prio_index`` and
    ``min_count`` one per scale. (Running the scales together on padded grids was measured
    slower on COCO than this loop: the padding costs more than the saved calls.)
    """
    parts = []
    for s, n in enumerate(ok.sum(axis=1).tolist()):
        if n > min_count[s]:
            win, cnt = _cover_scale(sb[s][ok[s]], *sizes[s], K, stride, seed_key, prio_index[s], min_count[s])
            if win:
                parts.append((win, cnt, fs[s], s))
    return parts


def _assemble(image_id: int, parts: list, negative: bool) -> ImageChips:
    """parts: (windows list, counts list, f, scale index) per scale."""
    wins, fs, si, cnt = [], [], [], []
    for w, c, f, s in parts:
        wins += w
        cnt += c
        fs += [f] * len(w)
        si += [s] * len(w)
    if not wins:
        return _empty(image_id)
    win = np.array(wins, dtype=np.int64)
    f = np.array(fs)
    return ImageChips(
        int(image_id),
        win / f[:, None],
        f,
        np.array(si, dtype=np.int64),
        np.full(len(win), negative),
        win,
        np.array(cnt, dtype=np.int64),
    )


# ------------------------------------------------------------------ public API


def positive_chips(
    gt_boxes: np.ndarray,
    width: int,
    height: int,
    cfg: ChipConfig,
    *,
    iscrowd: np.ndarray | None = None,
    seed: SeedLike = 0,
    stride: int | None = None,
    image_id: int = 0,
) -> ImageChips:
    """Positive chips of one image: per scale, a greedy cover of the GT boxes valid there.

    ``gt_boxes`` (N, 4) xyxy original px; ``iscrowd`` (N,) bool excludes boxes from
    selection; ``seed`` (int or tuple such as ``(seed, epoch, image_id)``) fixes the
    tie-breaks; ``stride`` overrides ``cfg.stride`` (see :func:`epoch_stride`).
    Post-condition: every box of :func:`selection_mask` lies completely inside at
    least one chip of its scale (in the scaled frame).
    """
    d = cfg.stride if stride is None else int(stride)
    _check_cfg(cfg, d)
    b = _as_boxes(gt_boxes, "gt_boxes")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if len(b) == 0:
        return _empty(image_id)
    sb, ok, fs, sizes = _selection(b, width, height, cfg, d)
    if iscrowd is not None:
        crowd = np.asarray(iscrowd, dtype=bool).reshape(-1)
        if crowd.size != len(b):
            raise ValueError(f"iscrowd has {crowd.size} entries for {len(b)} boxes")
        ok &= ~crowd[None, :]
    S = len(cfg.scales)
    parts = _cover_all(sb, ok, fs, sizes, cfg.chip_size, d, _mix(seed), list(range(S)), [0] * S)
    return _assemble(image_id, parts, negative=False)


def negative_chips(
    proposals: np.ndarray,
    pos: ImageChips,
    width: int,
    height: int,
    cfg: ChipConfig,
    *,
    scores: np.ndarray | None = None,
    seed: SeedLike = 0,
    stride: int | None = None,
) -> ImageChips:
    """The negative-chip pool of one image (all scales), from RPN ``proposals`` (P, 4) original px.

    Per scale: proposals fully inside a chip of ``pos`` at that scale are dropped;
    the rest that are in range and fit are covered greedily; a chip is kept while
    it holds more than ``cfg.neg_min_proposals[scale]`` not-yet-covered proposals.
    ``scores`` are accepted and unused (the authors do not use them either).
    """
    del scores
    d = cfg.stride if stride is None else int(stride)
    _check_cfg(cfg, d)
    if len(cfg.neg_min_proposals) != len(cfg.scales):
        raise ValueError(
            f"chips.neg_min_proposals needs one value per scale ({len(cfg.scales)}), got {cfg.neg_min_proposals}"
        )
    p = _as_boxes(proposals, "proposals")
    if len(p) == 0:
        return _empty(pos.image_id)
    sb, ok, fs, sizes = _selection(p, width, height, cfg, d)
    S = len(cfg.scales)
    for s in range(S):
        sel = ok[s]
        pw = pos.windows[pos.scale_index == s].astype(np.float64)
        if len(pw) and sel.any():
            q = sb[s][sel]
            inside = np.zeros(len(q), dtype=bool)
            for c in range(0, len(pw), 64):  # chunks keep the (P, C) temporaries small
                w = pw[c : c + 64]
                inside |= (
                    (q[:, None, 0] >= w[None, :, 0])
                    & (q[:, None, 1] >= w[None, :, 1])
                    & (q[:, None, 2] <= w[None, :, 2])
                    & (q[:, None, 3] <= w[None, :, 3])
                ).any(axis=1)
            sel[np.flatnonzero(sel)[inside]] = False  # a view: updates ok
    minc = [int(m) for m in cfg.neg_min_proposals]
    parts = _cover_all(sb, ok, fs, sizes, cfg.chip_size, d, _mix(seed), [-1 - s for s in range(S)], minc)
    return _assemble(pos.image_id, parts, negative=True)


def sample_negatives(
    neg: ImageChips, n: int, *, seed: int, epoch: int, image_id: int | None = None
) -> ImageChips:
    """Up to ``n`` chips of a negative pool (all scales), a function of ``(seed, epoch, image_id)``."""
    if n < 0:
        raise ValueError(f"number of negative chips must be >= 0, got {n}")
    if len(neg) <= n:
        return neg
    iid = neg.image_id if image_id is None else image_id
    prio = window_priority((seed, epoch, iid), 0x5A4D, len(neg))
    keep = np.sort(np.argsort(prio, kind="stable")[:n])
    return neg.select(keep)


def epoch_pool(
    image_id: int,
    gt_boxes: np.ndarray,
    width: int,
    height: int,
    cfg: ChipConfig,
    *,
    iscrowd: np.ndarray | None = None,
    proposals: np.ndarray | None = None,
    seed: int = 0,
    epoch: int = 0,
) -> tuple[ImageChips, ImageChips]:
    """(positive chips, whole negative pool) of one image for one epoch.

    Stride from :func:`epoch_stride`, tie-breaks from ``(seed, epoch, image_id)``; the pool is
    empty without ``proposals``. ``sniper chips`` writes exactly these rows.
    """
    d = epoch_stride(cfg, seed, epoch)
    key = (seed, epoch, image_id)
    pos = positive_chips(gt_boxes, width, height, cfg, iscrowd=iscrowd, seed=key, stride=d, image_id=image_id)
    if proposals is None:
        return pos, _empty(image_id)
    return pos, negative_chips(proposals, pos, width, height, cfg, seed=key, stride=d)


def epoch_chips(
    image_id: int,
    gt_boxes: np.ndarray,
    width: int,
    height: int,
    cfg: ChipConfig,
    *,
    iscrowd: np.ndarray | None = None,
    proposals: np.ndarray | None = None,
    seed: int = 0,
    epoch: int = 0,
) -> ImageChips:
    """All chips of one image for one epoch: positives + ``cfg.neg_per_image`` negatives sampled
    from the pool of :func:`epoch_pool`. ``.columns()`` gives the image's rows as arrays."""
    pos, pool = epoch_pool(
        image_id, gt_boxes, width, height, cfg, iscrowd=iscrowd, proposals=proposals, seed=seed, epoch=epoch
    )
    if len(pool) == 0 or cfg.neg_per_image == 0:
        return pos
    neg = sample_negatives(pool, cfg.neg_per_image, seed=seed, epoch=epoch, image_id=image_id)
    return ImageChips.concat([pos, neg], image_id=image_id)


def chip_labels(
    chip: Chip,
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    gt_iscrowd: np.ndarray | None,
    cfg: ChipConfig,
    *,
    image_size: tuple[int, int] | None = None,
) -> ChipLabels:
    """GT of one chip in chip pixels: valid targets and ignore regions (paper §3.4).

    Every GT box that intersects the chip with positive area is returned, clipped
    to the chip, either ``valid`` (not crowd, in the chip's scale range, completely
    inside the chip within ``INSIDE_TOL`` px, clipped sides ``>= cfg.min_box_size``)
    or ``ignore``. Give ``image_size=(w, h)`` to clip boxes to the image first, as
    chip selection does (then every box selected for a chip is valid in it).
    """
    b = _as_boxes(gt_boxes, "gt_boxes")
    n = len(b)
    cls = np.asarray(gt_classes, dtype=np.int64).reshape(-1)
    crowd = np.zeros(n, dtype=bool) if gt_iscrowd is None else np.asarray(gt_iscrowd, dtype=bool).reshape(-1)
    if cls.size != n or crowd.size != n:
        raise ValueError(f"gt_classes ({cls.size}) and gt_iscrowd ({crowd.size}) must match gt_boxes ({n})")
    scale = cfg.scales[chip.scale_index]
    f = chip.scale
    sx, sy, ex, ey = chip.window
    cw, ch = ex - sx, ey - sy
    if image_size is not None:
        b = clip_xyxy(b, *image_size)
    sa = sqrt_area(b)
    cb = b * f - np.array([sx, sy, sx, sy], dtype=np.float64)
    if image_size is not None:
        W, H = scaled_size(image_size[0], image_size[1], f)
        lim = np.array([W - sx, H - sy, W - sx, H - sy], dtype=np.float64)
        np.minimum(cb, lim, out=cb)
    clipped = cb.copy()
    np.clip(clipped[:, 0::2], 0, cw, out=clipped[:, 0::2])
    np.clip(clipped[:, 1::2], 0, ch, out=clipped[:, 1::2])
    cwh = clipped[:, 2:] - clipped[:, :2]
    hit = (cwh > 0).all(axis=1)
    t = INSIDE_TOL
    inside = (cb[:, 0] >= -t) & (cb[:, 1] >= -t) & (cb[:, 2] <= cw + t) & (cb[:, 3] <= ch + t)
    valid = hit & ~crowd & scale.in_range(sa) & inside & (cwh >= cfg.min_box_size).all(axis=1)
    idx = np.flatnonzero(hit)
    v = valid[idx]
    return ChipLabels(
        boxes=clipped[idx].astype(np.float32),
        classes=cls[idx],
        valid=v,
        ignore=~v,
        gt_index=idx.astype(np.int64),
        valid_range=np.array([scale.lo * f, scale.hi * f]),
    )
