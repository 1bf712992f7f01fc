"""The embedded synthetic detection dataset (``sniper make-dataset``).

Scenes are built so that a single-scale detector struggles and SNIPER's scale-normalised
multi-scale training helps: images of 600-2000 px per side, textured objects whose sizes
spread log-uniformly from 8 px to more than half the image side, unlabeled look-alike
distractors (hard negatives), cluttered backgrounds, objects truncated at the border and
``iscrowd`` clusters. Classes are told apart by shape + texture, never by colour: every
object draws its two colours at random. Textures scale with the object, so they stay
visible after the chip scales bring an object to the detector's working size.

Everything derives from ``numpy.random.default_rng([seed, image_index])``: the same seed
gives byte-identical JSON and identical pixels, and the first N images of a larger run
equal those of a smaller one.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from sniper.errors import SniperError
from sniper.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = [
    "CATEGORIES",
    "DISTRACTOR_KINDS",
    "SyntheticImage",
    "SyntheticSettings",
    "SyntheticSummary",
    "make_dataset",
    "make_image",
]

README_MARKER = "sniper synthetic dataset"
_IMAGE_NAME = re.compile(r"^\d{6}\.jpg$")


@dataclass(frozen=True)
class ShapeClass:
    id: int
    name: str
    shape: str
    texture: str


# Sparse ids on purpose: downstream code must map dataset ids to labels, never assume 1..C.
CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass(1, "striped_disc", "disc", "stripes"),
    ShapeClass(3, "checkered_square", "square", "checker"),
    ShapeClass(7, "dotted_triangle", "triangle", "dots"),
    ShapeClass(10, "spoked_ring", "ring", "spokes"),
    ShapeClass(12, "bullseye_star", "star", "bullseye"),
    ShapeClass(18, "speckled_cross", "cross", "speckle"),
)
CATEGORIES: tuple[dict, ...] = tuple(
    {"id": c.id, "name": c.name, "supercategory": "textured_shape"} for c in CLASSES
)
# Unlabeled look-alikes: a class shape in one flat colour (wrong texture), a class texture on
# a hexagon/pentagon (wrong shape), a textured crescent (a partial disc).
DISTRACTOR_KINDS: tuple[str, ...] = ("flat_shape", "textured_polygon", "crescent")


@dataclass(frozen=True)
class SyntheticSettings:
    """Scene statistics. Sizes are box sides in pixels."""

    min_side: int = 600
    max_side: int = 2000
    min_object: float = 8.0
    # normal objects: log-uniform in [min_object, normal_max_frac * short side]
    normal_max_frac: float = 0.3
    # with this probability an image also holds one huge object of (huge_frac) * short side
    huge_prob: float = 0.4
    huge_frac: tuple[float, float] = (0.55, 0.85)
    # objects per image: base range plus this many per megapixel
    objects: tuple[int, int] = (6, 14)
    objects_per_mp: float = 7.0
    distractors: tuple[int, int] = (3, 7)
    distractors_per_mp: float = 2.5
    # distractors are never tiny: below ~24 px their texture is not resolvable, so a flat
    # or wrong-shape look-alike would be an unlearnable label
    distractor_min: float = 24.0
    truncate_prob: float = 0.12
    crowd_prob: float = 0.4
    crowd_member: tuple[float, float] = (9.0, 18.0)
    crowd_region: tuple[float, float] = (50.0, 180.0)
    # two placed boxes may share at most this fraction of either one's area
    max_overlap: float = 0.2
    noise_sigma: tuple[float, float] = (3.0, 9.0)
    jpeg_quality: int = 90


@dataclass(frozen=True)
class SyntheticImage:
    """One rendered image: pixels, its annotations (no ids yet) and its unlabeled distractors."""

    pixels: np.ndarray  # (H, W, 3) uint8
    annotations: list[dict]  # category_id, bbox [x, y, w, h], area, iscrowd, truncated
    distractor_boxes: np.ndarray  # (D, 4) xywh, tight boxes of the drawn distractors
    distractor_kinds: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


@dataclass(frozen=True)
class SyntheticSummary:
    out_dir: Path
    seed: int
    images: int
    train_images: int
    val_images: int
    annotations: int
    crowd_annotations: int
    truncated_annotations: int
    distractors: int
    categories: tuple[str, ...]
    seconds: float

    @property
    def image_dir(self) -> Path:
        return self.out_dir / "images"

    @property
    def train_json(self) -> Path:
        return self.out_dir / "train.json"

    @property
    def val_json(self) -> Path:
        return self.out_dir / "val.json"


# ---------------------------------------------------------------- shapes (signed distance, px)


def _sd_disc(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    return np.hypot(x, y) - r


def _sd_square(x, y, r):
    return np.maximum(np.abs(x), np.abs(y)) - (r / math.sqrt(2))  # corners on the circle


def _sd_polygon(x, y, r, n, phase):
    """Regular n-gon with circumradius r: max of the edge half-planes."""
    apothem = r * math.cos(math.pi / n)
    d = None
    for k in range(n):
        a = phase + 2 * math.pi * (k + 0.5) / n
        e = x * math.cos(a) + y * math.sin(a) - apothem
        d = e if d is None else np.maximum(d, e)
    return d


def _sd_triangle(x, y, r):
    return _sd_polygon(x, y, r, 3, -math.pi / 2 - math.pi / 3)


def _sd_ring(x, y, r):
    return np.abs(np.hypot(x, y) - 0.75 * r) - 0.25 * r


def _sd_star(x, y, r, points=5, inner=0.45):
    """Radial distance to a straight-edged star (outer radius r, inner radius inner * r)."""
    half = math.pi / points
    phi = np.mod(np.arctan2(y, x), 2 * half)
    phi = half - np.abs(phi - half)  # 0 at an outer vertex, half at an inner vertex
    p1 = np.array([r, 0.0])
    d = np.array([inner * r * math.cos(half), inner * r * math.sin(half)]) - p1
    # ray (cos phi, sin phi) meets the edge p1 + s d at radius cross(p1, d) / cross(dir, d)
    boundary = (p1[0] * d[1] - p1[1] * d[0]) / (np.cos(phi) * d[1] - np.sin(phi) * d[0])
    return np.hypot(x, y) - boundary


def _sd_cross(x, y, r):
    ax, ay = np.abs(x), np.abs(y)
    arm, half_w = 0.95 * r, 0.32 * r
    return np.minimum(np.maximum(ax - arm, ay - half_w), np.maximum(ax - half_w, ay - arm))


def _sd_hexagon(x, y, r):
    return _sd_polygon(x, y, r, 6, 0.0)


def _sd_pentagon(x, y, r):
    return _sd_polygon(x, y, r, 5, -math.pi / 2)


def _sd_crescent(x, y, r):
    return np.maximum(np.hypot(x, y) - r, -(np.hypot(x - 0.55 * r, y) - 0.8 * r))


SHAPES: dict[str, Callable[..., np.ndarray]] = {
    "disc": _sd_disc,
    "square": _sd_square,
    "triangle": _sd_triangle,
    "ring": _sd_ring,
    "star": _sd_star,
    "cross": _sd_cross,
    "hexagon": _sd_hexagon,
    "pentagon": _sd_pentagon,
    "crescent": _sd_crescent,
}


# ---------------------------------------------------------------- textures (0..1 mix of two colours)


def _edge(d: np.ndarray) -> np.ndarray:
    """Antialiased 0/1 from a signed distance in pixels (positive: second colour)."""
    return np.clip(0.5 + d, 0.0, 1.0)


# Each texture returns a signed distance (px, approximately) to its nearest colour edge, so
# edges stay one pixel wide at every object size: sin(2 pi x / p) * p / (2 pi) ~ x near a zero.
def _tex_stripes(x, y, r, p, table):
    return _edge(np.sin(x * (2 * math.pi / p)) * (p / (2 * math.pi)))


def _tex_checker(x, y, r, p, table):
    k = 2 * math.pi / p
    sx, sy = np.sin(x * k), np.sin(y * k)
    d = np.minimum(np.abs(sx), np.abs(sy)) * (p / (2 * math.pi))
    return _edge(np.where(sx * sy >= 0, d, -d))


def _tex_dots(x, y, r, p, table):
    dx = np.mod(x, p) - 0.5 * p
    dy = np.mod(y, p) - 0.5 * p
    return _edge(0.3 * p - np.hypot(dx, dy))


def _tex_spokes(x, y, r, p, table):
    return _edge(np.sin(6 * np.arctan2(y, x)) * np.hypot(x, y) * (1 / 6))


def _tex_bullseye(x, y, r, p, table):
    return _edge(np.sin(np.hypot(x, y) * (2 * math.pi / p)) * (p / (2 * math.pi)))


def _tex_speckle(x, y, r, p, table):
    """Thresholded bilinear value noise: irregular blobs about p px across."""
    n = table.shape[0]
    gx = np.clip((x + r) / p, 0, n - 1.001)
    gy = np.clip((y + r) / p, 0, n - 1.001)
    ix, iy = gx.astype(np.intp), gy.astype(np.intp)
    fx, fy = gx - ix, gy - iy
    v = (
        table[iy, ix] * (1 - fx) * (1 - fy)
        + table[iy, ix + 1] * fx * (1 - fy)
        + table[iy + 1, ix] * (1 - fx) * fy
        + table[iy + 1, ix + 1] * fx * fy
    )
    return _edge((v - 0.5) * p)


TEXTURES: dict[str, Callable[..., np.ndarray]] = {
    "stripes": _tex_stripes,
    "checker": _tex_checker,
    "dots": _tex_dots,
    "spokes": _tex_spokes,
    "bullseye": _tex_bullseye,
    "speckle": _tex_speckle,
}
# texture period as a fraction of the object radius (so the look is scale invariant)
_PERIOD = {"stripes": 0.4, "checker": 0.5, "dots": 0.45, "spokes": 1.0, "bullseye": 0.4, "speckle": 0.4}


# ---------------------------------------------------------------- one drawn item


@dataclass
class _Item:
    role: str  # "object" | "crowd" | "distractor"
    size: float  # box side of the whole (unclipped) item, px
    category_id: int = 0
    kind: str = ""  # distractor kind
    truncate: bool = False
    box: tuple[float, float, float, float] | None = None  # placed xyxy (unclipped)


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours with a clear luminance difference (so textures stay visible)."""
    lum = np.array([0.299, 0.587, 0.114])
    c1 = rng.uniform(0, 255, 3)
    for _ in range(20):
        c2 = rng.uniform(0, 255, 3)
        if abs(float((c1 - c2) @ lum)) >= 70:
            break
    else:
        c2 = 255.0 - c1
    return c1.astype(np.float32), c2.astype(np.float32)


def _shape_patch(
    rng: np.random.Generator,
    width: int,
    height: int,
    cx: float,
    cy: float,
    radius: float,
    shape: str,
    texture: str | None,
    colours: tuple[np.ndarray, np.ndarray],
) -> tuple[tuple[int, int], np.ndarray, np.ndarray] | None:
    """Alpha and colour of one shape on its local patch, clipped to the image.

    Returns ``((x0, y0), alpha (h, w), rgb (h, w, 3))`` or None if nothing is inside.
    """
    aspect = float(rng.uniform(0.75, 1.0))
    ax, ay = (1.0, aspect) if rng.random() < 0.5 else (aspect, 1.0)
    theta = float(rng.uniform(0, 2 * math.pi))
    ext = radius + 1.5
    x0, x1 = max(0, int(math.floor(cx - ext))), min(width, int(math.ceil(cx + ext)))
    y0, y1 = max(0, int(math.floor(cy - ext))), min(height, int(math.ceil(cy + ext)))
    if x1 <= x0 or y1 <= y0:
        return None
    gx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    gy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    c, s = math.cos(theta), math.sin(theta)
    u = (c * gx + s * gy) / ax
    v = (-s * gx + c * gy) / ay
    alpha = np.clip(0.5 - SHAPES[shape](u, v, radius), 0.0, 1.0).astype(np.float32)
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return None
    # crop to the shape's support: texture and compositing then skip the empty corners
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    alpha = alpha[sl]
    u, v = u[sl], v[sl]
    x0, y0 = x0 + int(cols[0]), y0 + int(rows[0])
    c1, c2 = colours
    if texture is None:
        rgb = np.broadcast_to(c1, alpha.shape + (3,))
    else:
        period = max(3.0, _PERIOD[texture] * radius * float(rng.uniform(0.85, 1.2)))
        n = int(math.ceil(2 * radius / period)) + 3
        table = rng.random((n, n)).astype(np.float32) if texture == "speckle" else None
        t = TEXTURES[texture](u, v, radius, period, table)[..., None]
        rgb = c1 + (c2 - c1) * t
    return (x0, y0), alpha, rgb


def _composite(canvas: np.ndarray, origin: tuple[int, int], alpha: np.ndarray, rgb: np.ndarray) -> None:
    x0, y0 = origin
    h, w = alpha.shape
    view = canvas[y0 : y0 + h, x0 : x0 + w]
    v = view.astype(np.float32)
    v += (rgb - v) * alpha[..., None]
    v += 0.5
    view[...] = v


def _tight_box(origin: tuple[int, int], alpha: np.ndarray) -> tuple[float, float, float, float, float] | None:
    """xyxy box of the pixels with alpha >= 0.5, and the mask area; None if empty."""
    m = alpha >= 0.5
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return None
    x0, y0 = origin
    return (
        float(x0 + cols[0]),
        float(y0 + rows[0]),
        float(x0 + cols[-1] + 1),
        float(y0 + rows[-1] + 1),
        float(m.sum()),
    )


# ---------------------------------------------------------------- background


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Gradient + low-frequency colour noise + random lines and blobs, as uint8 (H, W, 3).

    The gradient and the colour noise are made on a coarse grid and upsampled in one resize:
    a linear gradient survives the interpolation exactly, and it avoids full-size float work.
    """
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    ca, cb = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    ang = rng.uniform(0, 2 * math.pi)
    t = np.linspace(0, 1, gw)[None, :] * math.cos(ang) + np.linspace(0, 1, gh)[:, None] * math.sin(ang)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    strength = float(rng.uniform(0.2, 0.5))
    grid = (ca + (cb - ca) * t[..., None]) * (1 - strength) + rng.uniform(0, 255, (gh, gw, 3)) * strength
    img = Image.fromarray(grid.clip(0, 255).astype(np.uint8))
    # two steps: bicubic to 1/8 size, then a cheap bilinear x8 (smooth either way, 3x faster)
    img = img.resize((-(-width // 8), -(-height // 8)), Image.BICUBIC).resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    short = min(width, height)
    mp = width * height / 1e6
    for _ in range(int(rng.integers(4, 12) + 6 * mp)):  # soft blobs
        r = float(rng.uniform(0.02, 0.2)) * short
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = r * rng.uniform(0.4, 1.0), r * rng.uniform(0.4, 1.0)
        col = tuple(int(v) for v in rng.integers(30, 226, 3))
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=col)
    for _ in range(int(rng.integers(5, 15) + 6 * mp)):  # lines and polylines
        pts = [
            (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
            for _ in range(int(rng.integers(2, 5)))
        ]
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line(pts, fill=col, width=int(rng.integers(1, 6)))
    return np.array(img, dtype=np.uint8)


def _add_noise(rng: np.random.Generator, canvas: np.ndarray, sigma: float, tile: int = 256) -> None:
    """Add gaussian pixel noise in place, from one random tile repeated over the image (fast)."""
    height, width = canvas.shape[:2]
    noise = np.rint(rng.standard_normal((tile, tile, 3)) * sigma).astype(np.int16)
    strip = np.tile(noise, (1, -(-width // tile), 1))[:, :width]
    for y in range(0, height, tile):
        rows = canvas[y : y + tile]
        v = rows.astype(np.int16)
        v += strip[: rows.shape[0]]
        np.clip(v, 0, 255, out=v)
        rows[...] = v


# ---------------------------------------------------------------- scene layout


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int | None = None):
    hi = max(hi, lo * 1.0001)
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def _image_size(rng: np.random.Generator, s: SyntheticSettings) -> tuple[int, int]:
    long = int(rng.integers(max(s.min_side, int(0.45 * s.max_side)), s.max_side + 1))
    short = int(np.clip(round(long * rng.uniform(0.5, 1.0)), s.min_side, long))
    return (long, short) if rng.random() < 0.6 else (short, long)


def _plan(rng: np.random.Generator, width: int, height: int, s: SyntheticSettings) -> list[_Item]:
    short = min(width, height)
    mp = width * height / 1e6
    ids = [c.id for c in CLASSES]
    items: list[_Item] = []
    if rng.random() < s.huge_prob:
        items.append(_Item("object", short * float(rng.uniform(*s.huge_frac)), int(rng.choice(ids))))
    n_obj = int(rng.integers(s.objects[0], s.objects[1] + 1) + round(s.objects_per_mp * mp))
    for size in _log_uniform(rng, s.min_object, s.normal_max_frac * short, n_obj):
        items.append(_Item("object", float(size), int(rng.choice(ids))))
    for it in items:
        it.truncate = bool(rng.random() < s.truncate_prob)
    while rng.random() < s.crowd_prob and sum(it.role == "crowd" for it in items) < 2:
        items.append(_Item("crowd", float(rng.uniform(*s.crowd_region)), int(rng.choice(ids))))
    n_dis = int(rng.integers(s.distractors[0], s.distractors[1] + 1) + round(s.distractors_per_mp * mp))
    for size in _log_uniform(rng, s.distractor_min, 0.35 * short, n_dis):
        items.append(
            _Item("distractor", float(size), kind=DISTRACTOR_KINDS[int(rng.integers(len(DISTRACTOR_KINDS)))])
        )
    items.sort(key=lambda it: -it.size)  # big first: they are hardest to fit
    placed: list[tuple[float, float, float, float]] = []
    for it in items:
        it.box = _place(rng, it, width, height, placed, s.max_overlap)
        if it.box is not None:
            placed.append(tuple(np.clip(it.box, 0, [width, height, width, height])))
    return [it for it in items if it.box is not None]


def _place(rng, it: _Item, width, height, placed, max_overlap, tries: int = 40):
    """A box for ``it`` overlapping no placed box by more than ``max_overlap`` of either area."""
    side = it.size
    boxes = np.asarray(placed, dtype=np.float64).reshape(-1, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for _ in range(tries):
        if it.truncate and side < 0.9 * min(width, height):
            # keep 40-85 % of the item inside along the axis of a random border
            inside = float(rng.uniform(0.4, 0.85)) * side
            border = int(rng.integers(4))
            cx = float(rng.uniform(side / 2, width - side / 2)) if width > side else width / 2
            cy = float(rng.uniform(side / 2, height - side / 2)) if height > side else height / 2
            if border == 0:
                cx = inside - side / 2
            elif border == 1:
                cx = width - inside + side / 2
            elif border == 2:
                cy = inside - side / 2
            else:
                cy = height - inside + side / 2
        else:
            if side >= width or side >= height:
                return None
            cx = float(rng.uniform(side / 2, width - side / 2))
            cy = float(rng.uniform(side / 2, height - side / 2))
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        cb = np.clip(box, 0, [width, height, width, height])
        area = (cb[2] - cb[0]) * (cb[3] - cb[1])
        if len(boxes):
            iw = np.clip(np.minimum(cb[2], boxes[:, 2]) - np.maximum(cb[0], boxes[:, 0]), 0, None)
            ih = np.clip(np.minimum(cb[3], boxes[:, 3]) - np.maximum(cb[1], boxes[:, 1]), 0, None)
            inter = iw * ih
            if np.any(inter > max_overlap * area) or np.any(inter > max_overlap * areas):
                continue
        return box
    return None


# ---------------------------------------------------------------- rendering


def make_image(seed: int, index: int, settings: SyntheticSettings | None = None) -> SyntheticImage:
    """Render image ``index`` of the dataset with ``seed`` (independent of the other images)."""
    s = settings or SyntheticSettings()
    rng = np.random.default_rng([seed, index])
    width, height = _image_size(rng, s)
    canvas = _background(rng, width, height)
    by_id = {c.id: c for c in CLASSES}
    annotations: list[dict] = []
    d_boxes: list[tuple[float, float, float, float]] = []
    d_kinds: list[str] = []
    for it in _plan(rng, width, height, s):
        x1, y1, x2, y2 = it.box
        cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, it.size / 2
        if it.role == "object":
            cls = by_id[it.category_id]
            drawn = _shape_patch(rng, width, height, cx, cy, r, cls.shape, cls.texture, _colour_pair(rng))
            if drawn is None:
                continue
            tight = _tight_box(drawn[0], drawn[1])
            # an annotated box must show its object: skip (do not draw) slivers
            if tight is None or min(tight[2] - tight[0], tight[3] - tight[1]) < 4 or tight[4] < 12:
                continue
            _composite(canvas, *drawn)
            truncated = tight[0] <= 0 or tight[1] <= 0 or tight[2] >= width or tight[3] >= height
            annotations.append(_annotation(it.category_id, tight, crowd=False, truncated=truncated))
        elif it.role == "crowd":
            box = _draw_crowd(rng, canvas, it, by_id[it.category_id], s)
            if box is not None:
                annotations.append(_annotation(it.category_id, box, crowd=True, truncated=False))
        else:
            box = _draw_distractor(rng, canvas, it, width, height)
            if box is not None:
                d_boxes.append((box[0], box[1], box[2] - box[0], box[3] - box[1]))
                d_kinds.append(it.kind)
    _add_noise(rng, canvas, float(rng.uniform(*s.noise_sigma)))
    return SyntheticImage(canvas, annotations, np.asarray(d_boxes, dtype=np.float64).reshape(-1, 4), d_kinds)


def _annotation(category_id: int, tight, *, crowd: bool, truncated: bool) -> dict:
    x1, y1, x2, y2, area = tight
    return {
        "category_id": int(category_id),
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": round(area, 2),
        "iscrowd": int(crowd),
        "truncated": bool(truncated),
    }


def _draw_crowd(rng, canvas, it: _Item, cls: ShapeClass, s: SyntheticSettings):
    """A jittered grid of small same-class shapes; returns the union box and summed area."""
    height, width = canvas.shape[:2]
    x1, y1, x2, y2 = it.box
    member = float(rng.uniform(*s.crowd_member))
    step = member * float(rng.uniform(1.05, 1.3))
    colours = _colour_pair(rng)  # a flock shares its look
    xs = np.arange(x1 + member / 2, x2 - member / 2 + 1e-6, step)
    ys = np.arange(y1 + member / 2, y2 - member / 2 + 1e-6, step)
    lo, hi, area, count = [math.inf, math.inf], [-math.inf, -math.inf], 0.0, 0
    for cy in ys:
        for cx in xs:
            if rng.random() < 0.15:  # gaps make the cluster look natural
                continue
            jx, jy = rng.uniform(-0.12, 0.12, 2) * member
            r = member / 2 * float(rng.uniform(0.85, 1.0))
            drawn = _shape_patch(rng, width, height, cx + jx, cy + jy, r, cls.shape, cls.texture, colours)
            if drawn is None:
                continue
            tight = _tight_box(drawn[0], drawn[1])
            if tight is None:
                continue
            _composite(canvas, *drawn)
            lo = [min(lo[0], tight[0]), min(lo[1], tight[1])]
            hi = [max(hi[0], tight[2]), max(hi[1], tight[3])]
            area += tight[4]
            count += 1
    if count == 0:
        return None
    return (lo[0], lo[1], hi[0], hi[1], area)


def _draw_distractor(rng, canvas, it: _Item, width, height):
    x1, y1, x2, y2 = it.box
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, it.size / 2
    if it.kind == "flat_shape":
        shape = CLASSES[int(rng.integers(len(CLASSES)))].shape
        texture = None
    elif it.kind == "textured_polygon":
        shape = ("hexagon", "pentagon")[int(rng.integers(2))]
        texture = CLASSES[int(rng.integers(len(CLASSES)))].texture
    else:
        shape, texture = "crescent", ("stripes", "checker", "dots")[int(rng.integers(3))]
    drawn = _shape_patch(rng, width, height, cx, cy, r, shape, texture, _colour_pair(rng))
    if drawn is None:
        return None
    tight = _tight_box(drawn[0], drawn[1])
    if tight is None:
        return None
    _composite(canvas, *drawn)
    return tight


# ---------------------------------------------------------------- dataset


def _check_out_dir(out: Path) -> None:
    """Refuse to write into a non-empty folder that is not an earlier synthetic dataset."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SniperError(f"{out}: exists and is not a directory")
    if not any(out.iterdir()):
        return
    readme = out / "README.txt"
    if readme.is_file() and readme.read_text(encoding="utf-8", errors="replace").startswith(README_MARKER):
        return
    raise SniperError(
        f"{out}: folder is not empty and holds no earlier synthetic dataset; choose another OUT"
    )


def _split(n: int, seed: int, val_fraction: float) -> np.ndarray:
    """Boolean is-val per image index; at least one image on each side when n >= 2 and f > 0."""
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng([seed, 0x5EED]).permutation(n)[:n_val]] = True
    return is_val


def make_dataset(
    out_dir: str | Path,
    *,
    images: int = 160,
    seed: int = 0,
    val_fraction: float = 0.2,
    settings: SyntheticSettings | None = None,
    progress: bool = True,
) -> SyntheticSummary:
    """Write ``OUT/images/*.jpg``, ``OUT/train.json``, ``OUT/val.json`` and ``OUT/README.txt``.

    COCO ``file_name`` values are relative to ``OUT/images``. Image ids are 1..N and
    annotation ids are unique across both splits. Rewriting an earlier synthetic dataset
    in place is allowed (stale numbered images are removed); any other non-empty OUT is refused.
    """
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    s = settings or SyntheticSettings()
    out = Path(out_dir)
    _check_out_dir(out)
    for stale in ("train.json", "val.json"):
        # rewriting in place: an interrupted run must not leave JSON that disagrees with the images
        (out / stale).unlink(missing_ok=True)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    is_val = _split(images, seed, val_fraction)
    splits: dict[str, dict[str, list]] = {k: {"images": [], "annotations": []} for k in ("train", "val")}
    ann_id = 0
    n_crowd = n_trunc = n_dis = 0
    names = []
    for index in tqdm(range(images), desc="make-dataset", unit="img", disable=not progress):
        img = make_image(seed, index, s)
        image_id = index + 1
        name = f"{image_id:06d}.jpg"
        names.append(name)
        with atomic_path(img_dir / name) as tmp:
            Image.fromarray(img.pixels).save(tmp, format="JPEG", quality=s.jpeg_quality)
        split = splits["val" if is_val[index] else "train"]
        split["images"].append({"id": image_id, "file_name": name, "width": img.width, "height": img.height})
        for a in img.annotations:
            ann_id += 1
            n_crowd += a["iscrowd"]
            n_trunc += a["truncated"]
            split["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": a["category_id"],
                    "bbox": a["bbox"],
                    "area": a["area"],
                    "iscrowd": a["iscrowd"],
                }
            )
        n_dis += len(img.distractor_boxes)
    keep = set(names)
    for p in img_dir.iterdir():
        if _IMAGE_NAME.match(p.name) and p.name not in keep:
            p.unlink()
    info = {"description": README_MARKER, "seed": seed, "images": images, "val_fraction": val_fraction}
    for key, data in splits.items():
        atomic_write_json(out / f"{key}.json", {"info": info, **data, "categories": list(CATEGORIES)})
    summary = SyntheticSummary(
        out_dir=out,
        seed=seed,
        images=images,
        train_images=len(splits["train"]["images"]),
        val_images=len(splits["val"]["images"]),
        annotations=ann_id,
        crowd_annotations=n_crowd,
        truncated_annotations=n_trunc,
        distractors=n_dis,
        categories=tuple(c.name for c in CLASSES),
        seconds=time.perf_counter() - start,
    )
    atomic_write_text(out / "README.txt", _readme(summary, s, val_fraction))
    return summary


def _readme(summary: SyntheticSummary, s: SyntheticSettings, val_fraction: float) -> str:
    cats = "\n".join(f"  {c.id:>3}  {c.name:<17} {c.shape} with {c.texture} texture" for c in CLASSES)
    return f"""{README_MARKER}
Generated by `sniper make-dataset` (sniper.data.synthetic); regenerate with
  sniper make-dataset OUT --images {summary.images} --seed {summary.seed} --val-fraction {val_fraction}
The same seed gives byte-identical JSON and identical pixels.

images: {summary.images} ({summary.train_images} train.json, {summary.val_images} val.json), in images/,
  COCO file_name relative to images/; JPEG quality {s.jpeg_quality}
annotations: {summary.annotations} ({summary.crowd_annotations} iscrowd clusters, \
{summary.truncated_annotations} truncated at the image border, box = visible part)
unlabeled distractors drawn: {summary.distractors} ({", ".join(DISTRACTOR_KINDS)})

categories (sparse ids; colours are random, so shape + texture decide the class):
{cats}

settings:
{json.dumps(asdict(s), indent=2)}
"""
