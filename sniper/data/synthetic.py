"""The embedded synthetic detection dataset (``sniper make-dataset``).

Scenes are built so that a single-scale detector struggles and SNIPER's scale-normalised
multi-scale training helps: images of 600-2000 px per side, textured objects whose sizes
spread log-uniformly from 8 px to more than half the image side, unlabeled look-alike
distractors (hard negatives), cluttered backgrounds, objects truncated at the border and
``iscrowd`` clusters. Classes are told apart by shape + texture, never by colour: every
object draws its two colours at random. Textures scale with the object, so they stay
visible after the chip scales bring an object to the detector's working size.

A second preset, ``aerial`` (:class:`AerialSettings`, see :data:`PRESETS`), reuses the same
machinery for dense scenes: a few 2000-5000 px images, each with hundreds of 5-80 px
vehicles, buildings and trees in clusters (parking lots, streets, orchards, hedgerows) on
textured ground, plus a few 100-400 px buildings. There a per-pixel occupancy map keeps
every object unoccluded, so each box is the exact extent of what its object shows.

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

from sniper.data.masks import rle_from_patch
from sniper.errors import SniperError
from sniper.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = [
    "AERIAL_CATEGORIES",
    "AERIAL_DISTRACTOR_KINDS",
    "CATEGORIES",
    "DISTRACTOR_KINDS",
    "PRESETS",
    "AerialSettings",
    "Preset",
    "SyntheticImage",
    "SyntheticSettings",
    "SyntheticSummary",
    "make_dataset",
    "get_preset",
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

# The aerial preset: 3 classes seen from above, also sparse ids. Unlike the default preset
# colours are class-typical (crowns are green), but shape + texture tell the class too.
AERIAL_CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass(2, "vehicle", "car", "windshield"),
    ShapeClass(5, "building", "block", "gable"),
    ShapeClass(9, "tree", "canopy", "speckle"),
)
AERIAL_CATEGORIES: tuple[dict, ...] = tuple(
    {"id": c.id, "name": c.name, "supercategory": "aerial"} for c in AERIAL_CLASSES
)
_AERIAL_LOOKS = {
    "vehicle": "rounded rectangle (cars ~0.44:1, trucks ~0.27:1); body colour contrasts with the "
    "ground; windscreen + rear-window bands (trucks: a cab)",
    "building": "rectangle or L-shape, two-tone pitched roof split along the ridge; large ones "
    "(100-400 px): flat roof with a lattice of rooftop units",
    "tree": "lumpy round crown (7 shallow lobes), dark green speckled with lighter green",
}
_VEHICLE, _BUILDING, _TREE = (c.id for c in AERIAL_CLASSES)
# unlabeled aerial look-alikes: flat turquoise rectangles (pools), round tanks with rings
AERIAL_DISTRACTOR_KINDS: tuple[str, ...] = ("pool", "tank")


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
class AerialSettings(SyntheticSettings):
    """The aerial scene (``preset="aerial"``): few large images, hundreds of small objects.

    Of the base fields it reads ``min_side``, ``max_side``, ``min_object`` (smallest kept box,
    sqrt(w * h)), ``distractors``, ``distractors_per_mp``, ``crowd_prob``, ``crowd_region``,
    ``noise_sigma`` and ``jpeg_quality``; the others belong to the default scene.
    """

    min_side: int = 2000
    max_side: int = 5000
    min_object: float = 5.0
    distractors: tuple[int, int] = (3, 8)
    distractors_per_mp: float = 1.0
    crowd_prob: float = 0.5
    crowd_region: tuple[float, float] = (150.0, 450.0)
    noise_sigma: tuple[float, float] = (2.0, 5.0)
    # the ground scale of an image: a car's length in px (log-uniform per image); the sizes of
    # the small objects (cars, houses, trees, parking stalls, roads) follow it
    vehicle_length: tuple[float, float] = (8.0, 22.0)
    # a few large buildings (warehouses) per image, box side sqrt(w * h) in px
    large_objects: tuple[int, int] = (2, 6)
    large_size: tuple[float, float] = (100.0, 400.0)
    # scales the number of clusters (lots, streets, orchards, hedgerows, groups) per megapixel
    density: float = 1.0


@dataclass(frozen=True)
class Preset:
    """A named synthetic dataset: its scene settings, default image count and categories."""

    name: str
    description: str
    settings: SyntheticSettings
    images: int
    categories: tuple[dict, ...]
    distractor_kinds: tuple[str, ...]


PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default",
        "textured shapes from 8 px to more than half the image, images of 600-2000 px",
        SyntheticSettings(),
        160,
        CATEGORIES,
        DISTRACTOR_KINDS,
    ),
    "aerial": Preset(
        "aerial",
        "dense small objects (vehicles, buildings, trees; 5-80 px, a few 100-400 px) in clusters "
        "on textured ground, images of 2000-5000 px",
        AerialSettings(),
        12,
        AERIAL_CATEGORIES,
        AERIAL_DISTRACTOR_KINDS,
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError (listing the presets) for an unknown name."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class SyntheticImage:
    """One rendered image: pixels, its annotations (no ids yet) and its unlabeled distractors."""

    pixels: np.ndarray  # (H, W, 3) uint8
    annotations: list[dict]  # category_id, bbox [x, y, w, h], area, iscrowd, truncated[, segmentation]
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
    preset: str = "default"

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


def _sd_box(x, y, cx, cy, hx, hy, rounding=0.0):
    """Axis-aligned box centred at (cx, cy) with half sides (hx, hy), corners rounded."""
    qx = np.abs(x - cx) - (hx - rounding)
    qy = np.abs(y - cy) - (hy - rounding)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - rounding


# aerial shapes (the long axis is x, so a rotation theta points the object along theta)
def _sd_car(x, y, r):
    return _sd_box(x, y, 0.0, 0.0, 0.92 * r, 0.4 * r, 0.12 * r)


def _sd_block(x, y, r):
    return _sd_box(x, y, 0.0, 0.0, 0.8 * r, 0.58 * r)


def _sd_lshape(x, y, r):
    wing = _sd_box(x, y, 0.0, -0.25 * r, 0.8 * r, 0.3 * r)
    return np.minimum(wing, _sd_box(x, y, 0.45 * r, 0.0, 0.35 * r, 0.55 * r))


def _sd_canopy(x, y, r):
    """A lumpy disc (7 lobes) inside its circle: a tree crown seen from above."""
    return np.hypot(x, y) - r * (0.92 + 0.08 * np.cos(7 * np.arctan2(y, x)))


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
    "car": _sd_car,
    "block": _sd_block,
    "lshape": _sd_lshape,
    "canopy": _sd_canopy,
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


# aerial textures, in the shape's own frame (x along the object)
def _tex_windshield(x, y, r, p, table):
    """Windscreen and rear-window bands across a car (second colour: glass)."""
    front = np.minimum(x - 0.22 * r, 0.5 * r - x)
    rear = np.minimum(x + 0.68 * r, -0.46 * r - x)
    return _edge(np.maximum(front, rear))


def _tex_cab(x, y, r, p, table):
    """A truck seen from above: the cab (second colour) in front of the load bed."""
    return _edge(x - 0.58 * r)


def _tex_gable(x, y, r, p, table):
    """A pitched roof: the two slopes in two tones, split along the ridge (y = 0)."""
    return _edge(y)


def _tex_vents(x, y, r, p, table):
    """A flat roof with a lattice of rooftop units (small squares, period p)."""
    dx = np.abs(np.mod(x, p) - 0.5 * p)
    dy = np.abs(np.mod(y, p) - 0.5 * p)
    return _edge(0.17 * p - np.maximum(dx, dy))


TEXTURES: dict[str, Callable[..., np.ndarray]] = {
    "stripes": _tex_stripes,
    "checker": _tex_checker,
    "dots": _tex_dots,
    "spokes": _tex_spokes,
    "bullseye": _tex_bullseye,
    "speckle": _tex_speckle,
    "windshield": _tex_windshield,
    "cab": _tex_cab,
    "gable": _tex_gable,
    "vents": _tex_vents,
}
# texture period as a fraction of the object radius (so the look is scale invariant)
_PERIOD = {
    "stripes": 0.4,
    "checker": 0.5,
    "dots": 0.45,
    "spokes": 1.0,
    "bullseye": 0.4,
    "speckle": 0.4,
    "windshield": 1.0,
    "cab": 1.0,
    "gable": 1.0,
    "vents": 0.2,
}


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
    theta: float | None = None,
    squash: tuple[float, float] | None = None,
) -> tuple[tuple[int, int], np.ndarray, np.ndarray] | None:
    """Alpha and colour of one shape on its local patch, clipped to the image.

    ``theta`` (rotation) and ``squash`` (x, y scale <= 1) are drawn at random when None.
    Returns ``((x0, y0), alpha (h, w), rgb (h, w, 3))`` or None if nothing is inside.
    """
    if squash is None:
        aspect = float(rng.uniform(0.75, 1.0))
        ax, ay = (1.0, aspect) if rng.random() < 0.5 else (aspect, 1.0)
    else:
        ax, ay = squash
    if theta is None:
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


def make_image(
    seed: int,
    index: int,
    settings: SyntheticSettings | None = None,
    *,
    preset: str | None = None,
    masks: bool = True,
) -> SyntheticImage:
    """Render image ``index`` of the dataset with ``seed`` (independent of the other images).

    ``settings`` default to those of ``preset`` (default: "default"); :class:`AerialSettings`
    draw the aerial scene. With ``masks`` every annotation also gets ``segmentation``: a COCO
    compressed RLE of the pixels that show its object (see :func:`_visible_segmentations`); the
    pixels and every other field are the same either way (no extra random draws).
    """
    s = _resolve(preset, settings)[1]
    if isinstance(s, AerialSettings):
        return _make_aerial_image(seed, index, s, masks)
    rng = np.random.default_rng([seed, index])
    width, height = _image_size(rng, s)
    canvas = _background(rng, width, height)
    by_id = {c.id: c for c in CLASSES}
    annotations: list[dict] = []
    d_boxes: list[tuple[float, float, float, float]] = []
    d_kinds: list[str] = []
    # with masks: every composited core (alpha >= 0.5) in drawing order, and per annotation
    # the range of its own layers
    layers: list[tuple[tuple[int, int], np.ndarray]] | None = [] if masks else None
    spans: list[tuple[int, int]] = []
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
            if layers is not None:
                spans.append((len(layers), len(layers) + 1))
                layers.append((drawn[0], drawn[1] >= 0.5))
        elif it.role == "crowd":
            first = 0 if layers is None else len(layers)
            box = _draw_crowd(rng, canvas, it, by_id[it.category_id], s, layers)
            if box is not None:
                annotations.append(_annotation(it.category_id, box, crowd=True, truncated=False))
                if layers is not None:
                    spans.append((first, len(layers)))
        else:
            box = _draw_distractor(rng, canvas, it, width, height, layers)
            if box is not None:
                d_boxes.append((box[0], box[1], box[2] - box[0], box[3] - box[1]))
                d_kinds.append(it.kind)
    _add_noise(rng, canvas, float(rng.uniform(*s.noise_sigma)))
    if layers is not None:
        _visible_segmentations(annotations, spans, layers, width, height)
    return SyntheticImage(canvas, annotations, np.asarray(d_boxes, dtype=np.float64).reshape(-1, 4), d_kinds)


def _visible_segmentations(
    annotations: list[dict],
    spans: list[tuple[int, int]],
    layers: list[tuple[tuple[int, int], np.ndarray]],
    width: int,
    height: int,
) -> None:
    """Give each annotation ``segmentation``: the union of its own cores (alpha >= 0.5: the
    pixels its box is the tight box of) minus the cores of everything drawn after it (objects,
    crowd members, distractors may overlap by up to ``max_overlap``), as compressed RLE. The
    mask lies inside the box; it touches all four sides unless a later item covers an extreme."""
    rects = np.array(
        [(x0, y0, x0 + c.shape[1], y0 + c.shape[0]) for (x0, y0), c in layers], dtype=np.int64
    ).reshape(-1, 4)
    for a, (lo, hi) in zip(annotations, spans):
        x, y, w, h = a["bbox"]
        box = (int(x), int(y), int(x + w), int(y + h))
        region = np.zeros((box[3] - box[1], box[2] - box[0]), dtype=bool)
        for j in range(lo, hi):
            _paste(region, box, layers[j], cover=False)
        r = rects[hi:]
        hit = (r[:, 0] < box[2]) & (r[:, 2] > box[0]) & (r[:, 1] < box[3]) & (r[:, 3] > box[1])
        for j in (hi + np.flatnonzero(hit)).tolist():
            _paste(region, box, layers[j], cover=True)
        a["segmentation"] = rle_from_patch(region, box[0], box[1], width, height)


def _paste(region: np.ndarray, box: tuple[int, int, int, int], layer, *, cover: bool) -> None:
    """``region`` (the pixels of ``box``) |= the layer's core, or &= ~core when it ``cover``s."""
    (x0, y0), core = layer
    ax, ay = max(box[0], x0), max(box[1], y0)
    bx, by = min(box[2], x0 + core.shape[1]), min(box[3], y0 + core.shape[0])
    if bx <= ax or by <= ay:
        return
    dst = region[ay - box[1] : by - box[1], ax - box[0] : bx - box[0]]
    src = core[ay - y0 : by - y0, ax - x0 : bx - x0]
    if cover:
        dst &= ~src
    else:
        dst |= src


def _annotation(category_id: int, tight, *, crowd: bool, truncated: bool) -> dict:
    x1, y1, x2, y2, area = tight
    return {
        "category_id": int(category_id),
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": round(area, 2),
        "iscrowd": int(crowd),
        "truncated": bool(truncated),
    }


def _draw_crowd(rng, canvas, it: _Item, cls: ShapeClass, s: SyntheticSettings, layers=None):
    """A jittered grid of small same-class shapes; returns the union box and summed area.

    ``layers`` (a list) collects each drawn member's core (see :func:`_visible_segmentations`).
    """
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
            if layers is not None:
                layers.append((drawn[0], drawn[1] >= 0.5))
            lo = [min(lo[0], tight[0]), min(lo[1], tight[1])]
            hi = [max(hi[0], tight[2]), max(hi[1], tight[3])]
            area += tight[4]
            count += 1
    if count == 0:
        return None
    return (lo[0], lo[1], hi[0], hi[1], area)


def _draw_distractor(rng, canvas, it: _Item, width, height, layers=None):
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
    if layers is not None:
        layers.append((drawn[0], drawn[1] >= 0.5))
    return tight


# ---------------------------------------------------------------- the aerial scene

# occupancy codes (one uint8 per pixel): a drawn object's core (alpha >= 0.5) is never painted
# over again, so every annotation box stays the exact extent of what shows of its object
_FREE, _PAVED, _FRINGE, _TAKEN = 0, 1, 2, 3
_LUM = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# field colours, all light (luminance >= 110) so dark tree crowns stand out
_FIELDS = np.array(
    [
        [106, 140, 66], [118, 150, 74], [100, 136, 64], [134, 156, 84],  # grass, green crops
        [186, 168, 112], [200, 184, 128], [168, 150, 98],  # wheat, dry grass
        [146, 114, 84], [140, 110, 80], [162, 134, 100],  # ploughed soil
    ],
    dtype=np.float32,
)  # fmt: skip
_CAR_BODIES = np.array(
    [
        [236, 236, 232], [214, 216, 220], [160, 162, 166], [112, 114, 118], [40, 40, 44],
        [18, 18, 22], [176, 28, 30], [30, 58, 150], [22, 36, 80], [226, 196, 40], [40, 110, 70],
        [230, 120, 30],
    ],
    dtype=np.float32,
)  # fmt: skip
_ROOFS = np.array(
    [
        [172, 86, 62], [150, 72, 52], [132, 132, 138], [78, 82, 92], [206, 192, 162],
        [226, 224, 218], [118, 82, 58], [98, 114, 136],
    ],
    dtype=np.float32,
)  # fmt: skip
_FLAT_ROOFS = np.array(
    [[214, 214, 210], [232, 232, 228], [186, 186, 182], [96, 98, 104], [200, 192, 176]], dtype=np.float32
)


class _Polyline:
    """A road's centre line, parametrised by arc length."""

    def __init__(self, pts: np.ndarray, width: float, w: int, h: int):
        self.pts, self.width = pts, width
        self.seg = np.diff(pts, axis=0)
        self.seglen = np.maximum(np.hypot(self.seg[:, 0], self.seg[:, 1]), 1e-9)
        self.cum = np.concatenate([[0.0], np.cumsum(self.seglen)])
        t = np.arange(0.0, self.cum[-1], 10.0)
        p, _ = self.at(t)
        inside = (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)
        self.t_lo, self.t_hi = (
            (float(t[inside].min()), float(t[inside].max())) if inside.any() else (0.0, 0.0)
        )

    def at(self, t) -> tuple[np.ndarray, np.ndarray]:
        """Points (N, 2) and unit directions (N, 2) at arc lengths ``t``."""
        t = np.clip(np.atleast_1d(np.asarray(t, dtype=np.float64)), 0.0, self.cum[-1])
        i = np.clip(np.searchsorted(self.cum, t, side="right") - 1, 0, len(self.seglen) - 1)
        d = self.seg[i] / self.seglen[i][:, None]
        return self.pts[i] + d * (t - self.cum[i])[:, None], d


@dataclass
class _Lot:
    cx: float
    cy: float
    angle: float
    length: float  # along the rows
    depth: float  # across the rows
    slots: list[tuple[float, float, float]]  # stall centre x, y and car heading


class _AerialScene:
    """Canvas, occupancy map and records of one aerial image while it is drawn."""

    def __init__(self, rng: np.random.Generator, s: AerialSettings, width: int, height: int):
        self.rng, self.s, self.width, self.height = rng, s, width, height
        self.masks = True  # annotations get "segmentation" (their cores are never painted over)
        self.mp = width * height / 1e6
        self.car = float(_log_uniform(rng, *s.vehicle_length))  # the ground scale
        self.annotations: list[dict] = []
        self.d_boxes: list[tuple[float, float, float, float]] = []
        self.d_kinds: list[str] = []
        self.roads: list[_Polyline] = []
        self.lots: list[_Lot] = []

    def count(self, lo: int, hi: int, per_mp: float) -> int:
        return int(self.rng.integers(lo, hi + 1) + round(per_mp * self.mp * self.s.density))

    def position(self, margin: float = 0.0) -> np.ndarray:
        return self.rng.uniform([-margin, -margin], [self.width + margin, self.height + margin])

    # ------------------------------------------------------------ ground

    def ground(self) -> None:
        """Fields, tracks, roads and parking lots: ``self.canvas`` and the paved ``self.occ``."""
        img = self._fields()
        draw = ImageDraw.Draw(img)
        occ = Image.new("L", (self.width, self.height), _FREE)
        paved = ImageDraw.Draw(occ)
        self._tracks(draw)
        for _ in range(self.count(1, 3, 0.15)):
            self._road(draw, paved)
        for _ in range(self.count(2, 4, 0.25)):
            self._lot(draw, paved)
        self.canvas = np.array(img, dtype=np.uint8)
        self.occ = np.array(occ, dtype=np.uint8)

    def _fields(self) -> Image.Image:
        """A rotated patchwork of fields with crop rows, brightness swells and grain.

        Made at 1/4 resolution in numpy and upsampled in one bilinear resize (full-size float
        work on 25 MP would dominate the run time).
        """
        rng, f = self.rng, 4
        gw, gh = -(-self.width // f), -(-self.height // f)
        self.angle = float(rng.uniform(0, math.pi))
        c, s = math.cos(self.angle), math.sin(self.angle)
        xs = (np.arange(gw, dtype=np.float32) + 0.5) * f
        ys = (np.arange(gh, dtype=np.float32) + 0.5) * f
        u = xs[None, :] * c + ys[:, None] * s
        v = ys[:, None] * c - xs[None, :] * s
        fw, self.field_h = float(rng.uniform(300, 900)), float(rng.uniform(200, 600))
        iv = np.floor(v / self.field_h).astype(np.int32)
        self.strip0 = int(iv.min())
        iv -= self.strip0
        nv = int(iv.max()) + 1
        shift = rng.uniform(0, fw, nv).astype(np.float32)
        iu = np.floor((u + shift[iv]) / fw).astype(np.int32)
        iu -= iu.min()
        nu = int(iu.max()) + 1
        cell = iv * nu + iu
        n = nu * nv
        colour = _FIELDS[rng.integers(0, len(_FIELDS), n)] * rng.uniform(0.93, 1.07, (n, 1)).astype(
            np.float32
        )
        across = rng.random(n) < 0.5
        period = rng.uniform(10, 26, n).astype(np.float32)
        amp = (rng.uniform(4, 14, n) * (rng.random(n) < 0.6)).astype(np.float32)
        rows = np.sin(np.where(across[cell], u, v) * (2 * math.pi / period[cell])) * amp[cell]
        img = colour[cell] + rows[..., None]
        swell = rng.normal(0, 0.07, (gh // 64 + 2, gw // 64 + 2)).astype(np.float32)
        swell = np.asarray(Image.fromarray(swell).resize((gw, gh), Image.BICUBIC))
        img *= (1 + swell)[..., None]
        img += rng.normal(0, 4, (gh, gw, 1)).astype(np.float32)
        low = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        return low.resize((self.width, self.height), Image.BILINEAR)

    def _line_at_v(self, v: float, u0: float, u1: float) -> list[tuple[float, float]]:
        """Two points of a field-aligned line (constant v) from u0 to u1, image coordinates."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        return [(u * c - v * s, u * s + v * c) for u in (u0, u1)]

    def _strips(self) -> range:
        """Indices k of the field-strip edges v = k * field_h that cross the image."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        vs = [y * c - x * s for x in (0, self.width) for y in (0, self.height)]
        return range(math.floor(min(vs) / self.field_h), math.ceil(max(vs) / self.field_h) + 1)

    def _u_range(self) -> tuple[float, float]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        us = [x * c + y * s for x in (0, self.width) for y in (0, self.height)]
        return min(us), max(us)

    def _tracks(self, draw: ImageDraw.ImageDraw) -> None:
        """Dirt tracks along some field edges (background, never annotated)."""
        u0, u1 = self._u_range()
        for k in self._strips():
            if self.rng.random() < 0.25:
                col = tuple(int(v) for v in np.array([176, 156, 120]) + self.rng.normal(0, 8, 3))
                draw.line(
                    self._line_at_v(k * self.field_h, u0, u1), fill=col, width=int(self.rng.integers(2, 6))
                )

    def _road(self, draw: ImageDraw.ImageDraw, paved: ImageDraw.ImageDraw) -> None:
        """A gently bending road across the image, with dashed centre marks."""
        rng = self.rng
        if rng.random() < 0.7:  # most roads follow the field grid
            a = self.angle + math.pi / 2 * int(rng.integers(2)) + float(rng.normal(0, 0.04))
        else:
            a = float(rng.uniform(0, math.pi))
        px, py = self.position(-0.1 * min(self.width, self.height))
        reach = math.hypot(self.width, self.height)
        t = np.arange(-reach, reach + 400, 400.0)
        off = np.cumsum(rng.normal(0, 20, len(t)))
        off -= off[len(t) // 2]
        ca, sa = math.cos(a), math.sin(a)
        pts = np.stack([px + t * ca - off * sa, py + t * sa + off * ca], axis=1)
        width = self.car * float(rng.uniform(2.3, 3.4))
        grey = float(rng.uniform(80, 112))
        col = tuple(int(v) for v in grey + rng.normal(0, 3, 3))
        xy = [tuple(p) for p in pts]
        draw.line(xy, fill=col, width=max(3, round(width)), joint="curve")
        paved.line(xy, fill=_PAVED, width=round(width) + 2, joint="curve")
        road = _Polyline(pts, width, self.width, self.height)
        if road.t_hi <= road.t_lo:
            return
        self.roads.append(road)
        dash = 2 * self.car
        starts = np.arange(road.t_lo, road.t_hi, 2 * dash)
        p0, _ = road.at(starts)
        p1, _ = road.at(starts + dash)
        paint = (226, 226, 216) if rng.random() < 0.6 else (222, 190, 70)
        lw = max(1, round(self.car / 10))
        for a0, a1 in zip(p0, p1):
            draw.line([tuple(a0), tuple(a1)], fill=paint, width=lw)

    def _lot(self, draw: ImageDraw.ImageDraw, paved: ImageDraw.ImageDraw) -> None:
        """A parking lot: asphalt, painted stall lines, and a slot per stall for a car."""
        rng, car = self.rng, self.car
        stall_w, stall_d, aisle = 0.72 * car * float(rng.uniform(0.95, 1.1)), 1.25 * car, 1.5 * car
        n_stalls, n_pairs = int(rng.integers(8, 25)), int(rng.integers(1, 4))
        length = (n_stalls + 1) * stall_w
        depth = n_pairs * 2 * stall_d + (n_pairs + 1) * aisle
        angle = self.angle + math.pi / 2 * int(rng.integers(2)) + float(rng.normal(0, 0.02))
        ea = np.array([math.cos(angle), math.sin(angle)])
        eb = np.array([-ea[1], ea[0]])
        centre = self.position()
        corners = [
            tuple(centre + i * length / 2 * ea + j * depth / 2 * eb)
            for i, j in ((-1, -1), (1, -1), (1, 1), (-1, 1))
        ]
        grey = float(rng.uniform(62, 100))
        draw.polygon(corners, fill=tuple(int(v) for v in grey + rng.normal(0, 3, 3)))
        paved.polygon(corners, fill=_PAVED)
        paint = tuple(int(v) for v in rng.uniform(200, 235) + rng.normal(0, 3, 3))
        lw = max(1, round(car / 12))
        slots = []
        for pair in range(n_pairs):
            for side in (0, 1):
                b0 = -depth / 2 + aisle + pair * (2 * stall_d + aisle) + side * stall_d
                for i in range(n_stalls + 1):
                    a = -length / 2 + stall_w * (i + 0.5)
                    lo = b0 + (0.0 if side else 0.1 * stall_d)
                    hi = b0 + (0.9 * stall_d if side else stall_d)
                    draw.line(
                        [tuple(centre + a * ea + lo * eb), tuple(centre + a * ea + hi * eb)],
                        fill=paint,
                        width=lw,
                    )
                    if i < n_stalls:
                        x, y = centre + (a + stall_w / 2) * ea + (b0 + stall_d / 2) * eb
                        slots.append((float(x), float(y), angle + math.pi / 2 + math.pi * side))
        self.lots.append(_Lot(float(centre[0]), float(centre[1]), angle, length, depth, slots))

    # ------------------------------------------------------------ drawing one item

    def ground_lum(self, cx: float, cy: float, r: float) -> float:
        x0, x1 = max(0, int(cx - r)), min(self.width, int(cx + r) + 1)
        y0, y1 = max(0, int(cy - r)), min(self.height, int(cy + r) + 1)
        if x1 <= x0 or y1 <= y0:
            return 128.0
        return float(self.canvas[y0:y1:2, x0:x1:2].reshape(-1, 3).mean(axis=0) @ _LUM)

    def contrasting(self, palette: np.ndarray, cx: float, cy: float, r: float, k: int = 3) -> np.ndarray:
        """Of ``k`` random palette colours, the one whose luminance differs most from the ground."""
        cand = palette[self.rng.choice(len(palette), k, replace=False)]
        best = cand[int(np.argmax(np.abs(cand @ _LUM - self.ground_lum(cx, cy, r))))]
        return np.clip(best + self.rng.normal(0, 6, 3), 0, 255).astype(np.float32)

    def put(
        self,
        cx,
        cy,
        r,
        shape,
        texture,
        colours,
        theta,
        squash=(1.0, 1.0),
        *,
        category=0,
        kind="",
        paved_ok=False,
    ) -> bool:
        """Draw one object (``category``) or distractor (``kind``) unless it would cover another.

        Objects of ``min_object`` px or less (sqrt of the box area) are not drawn.
        """
        # early out before rendering: the aerial shapes all cover their centre pixel
        ix, iy = int(cx), int(cy)
        if 0 <= ix < self.width and 0 <= iy < self.height:
            if self.occ[iy, ix] >= (_FRINGE if paved_ok else _PAVED):
                return False
        drawn = _shape_patch(
            self.rng, self.width, self.height, cx, cy, r, shape, texture, colours, theta, squash
        )
        if drawn is None:
            return False
        (x0, y0), alpha, rgb = drawn
        h, w = alpha.shape
        occ = self.occ[y0 : y0 + h, x0 : x0 + w]
        core, support = alpha >= 0.5, alpha > 0
        if (occ[core] >= (_FRINGE if paved_ok else _PAVED)).any() or (occ[support] == _TAKEN).any():
            return False
        tight = _tight_box((x0, y0), alpha)
        if tight is None:
            return False
        bw, bh = tight[2] - tight[0], tight[3] - tight[1]
        if category and (min(bw, bh) < 3 or bw * bh < self.s.min_object**2):
            return False
        _composite(self.canvas, (x0, y0), alpha, rgb)
        occ[support & (occ < _FRINGE)] = _FRINGE
        occ[core] = _TAKEN
        if category:
            truncated = tight[0] <= 0 or tight[1] <= 0 or tight[2] >= self.width or tight[3] >= self.height
            self.annotations.append(_annotation(category, tight, crowd=False, truncated=truncated))
            if self.masks:
                self.annotations[-1]["segmentation"] = rle_from_patch(core, x0, y0, self.width, self.height)
        else:
            self.d_boxes.append((tight[0], tight[1], bw, bh))
            self.d_kinds.append(kind)
        return True

    def vehicle(self, cx: float, cy: float, theta: float, truck: bool = False) -> bool:
        rng = self.rng
        length = self.car * float(rng.uniform(1.7, 2.4) if truck else rng.uniform(0.9, 1.1))
        r = length / 1.84
        body = self.contrasting(_CAR_BODIES, cx, cy, r)
        if truck:
            cab = np.clip(body * 0.6 + 90 * (body @ _LUM < 100), 0, 255).astype(np.float32)
            return self.put(
                cx, cy, r, "car", "cab", (body, cab), theta, (1.0, 0.62), category=_VEHICLE, paved_ok=True
            )
        glass = np.float32([28, 32, 40]) if body @ _LUM > 100 else np.float32([150, 165, 180])
        return self.put(
            cx, cy, r, "car", "windshield", (body, glass), theta, category=_VEHICLE, paved_ok=True
        )

    def tree_colours(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        dark = np.array([rng.uniform(22, 48), rng.uniform(50, 82), rng.uniform(18, 42)], dtype=np.float32)
        light = dark + np.array(
            [rng.uniform(22, 38), rng.uniform(30, 48), rng.uniform(14, 26)], dtype=np.float32
        )
        return dark, light

    def tree(self, cx: float, cy: float, d: float, colours=None) -> bool:
        if colours is None:
            colours = self.tree_colours()
        else:  # one species, a little variation per crown
            jitter = np.float32(self.rng.uniform(0.9, 1.1))
            colours = (colours[0] * jitter, colours[1] * jitter)
        theta = float(self.rng.uniform(0, 2 * math.pi))
        return self.put(cx, cy, d / 2, "canopy", "speckle", colours, theta, category=_TREE)

    def building(self, cx: float, cy: float, side: float, theta: float, large: bool = False) -> bool:
        """A house (pitched roof) or a large flat-roofed building of box side ~``side`` px."""
        rng = self.rng
        aspect = float(rng.uniform(0.6, 1.0) if large else rng.uniform(0.65, 1.0))
        r = side / (1.36 * math.sqrt(aspect))
        if large:
            roof = self.contrasting(_FLAT_ROOFS, cx, cy, r)
            units = roof * 0.62 if roof @ _LUM > 110 else roof + 70
            colours, shape, texture = (roof, np.clip(units, 0, 255).astype(np.float32)), "block", "vents"
        else:
            roof = self.contrasting(_ROOFS, cx, cy, r)
            colours, texture = (roof, (roof * 0.7).astype(np.float32)), "gable"
            shape = "lshape" if rng.random() < 0.25 else "block"
        return self.put(cx, cy, r, shape, texture, colours, theta, (1.0, aspect), category=_BUILDING)

    # ------------------------------------------------------------ clusters

    def forest(self) -> bool:
        """A dense wood of overlapping crowns: one ``iscrowd`` box, its area the union of crowns.

        The box is reserved afterwards, so no other object lies inside it.
        """
        rng, s = self.rng, self.s
        side = float(rng.uniform(*s.crowd_region))
        d = float(np.clip(self.car * rng.uniform(1.2, 2.2), 8, 40))
        reach = side / 2 + 0.6 * d + 2
        for _ in range(10):
            cx, cy = rng.uniform(side / 2, [self.width - side / 2, self.height - side / 2])
            x0, x1 = max(0, int(cx - reach)), min(self.width, int(math.ceil(cx + reach)))
            y0, y1 = max(0, int(cy - reach)), min(self.height, int(math.ceil(cy + reach)))
            if (self.occ[y0:y1, x0:x1] != _FREE).any():
                continue
            union = np.zeros((y1 - y0, x1 - x0), dtype=bool)
            step = d * float(rng.uniform(0.55, 0.75))
            rx, ry = side / 2 * float(rng.uniform(0.7, 1.0)), side / 2
            colours = self.tree_colours()
            for gy in np.arange(cy - ry, cy + ry + 1e-6, step):
                for gx in np.arange(cx - rx, cx + rx + 1e-6, step):
                    px, py = np.array([gx, gy]) + rng.uniform(-0.25, 0.25, 2) * step
                    if ((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2 > 1:
                        continue
                    jitter = np.float32(rng.uniform(0.9, 1.1))
                    drawn = _shape_patch(
                        rng, self.width, self.height, px, py, d / 2 * float(rng.uniform(0.8, 1.2)), "canopy",
                        "speckle", (colours[0] * jitter, colours[1] * jitter), float(rng.uniform(0, 2 * math.pi)), (1.0, 1.0),
                    )  # fmt: skip
                    if drawn is None:
                        continue
                    (ox, oy), alpha, _ = drawn
                    _composite(self.canvas, *drawn)
                    union[oy - y0 : oy - y0 + alpha.shape[0], ox - x0 : ox - x0 + alpha.shape[1]] |= (
                        alpha >= 0.5
                    )
            tight = _tight_box((x0, y0), union.astype(np.float32))
            if tight is None:
                return False
            bx0, by0, bx1, by1, _ = (int(v) for v in tight)
            self.occ[max(0, by0 - 1) : by1 + 1, max(0, bx0 - 1) : bx1 + 1] = _TAKEN
            truncated = bx0 <= 0 or by0 <= 0 or bx1 >= self.width or by1 >= self.height
            self.annotations.append(_annotation(_TREE, tight, crowd=True, truncated=truncated))
            if self.masks:  # the union of the crowns (the box is reserved: nothing covers them later)
                self.annotations[-1]["segmentation"] = rle_from_patch(union, x0, y0, self.width, self.height)
            return True
        return False

    def large_buildings(self) -> None:
        """Warehouses: next to a parking lot where one fits, else anywhere off the roads."""
        rng = self.rng
        n = int(rng.integers(self.s.large_objects[0], self.s.large_objects[1] + 1))
        placed = 0
        for lot in self.lots:
            if placed >= n:
                break
            side = float(rng.uniform(*self.s.large_size))
            ea = np.array([math.cos(lot.angle), math.sin(lot.angle)])
            eb = np.array([-ea[1], ea[0]])
            gap = 0.5 * self.car + 0.75 * side
            for e, half in (
                (eb, lot.depth / 2),
                (-eb, lot.depth / 2),
                (ea, lot.length / 2),
                (-ea, lot.length / 2),
            ):
                x, y = np.array([lot.cx, lot.cy]) + e * (half + gap)
                if self.building(float(x), float(y), side, lot.angle, large=True):
                    placed += 1
                    break
        for _ in range(8 * n):
            if placed >= n:
                break
            x, y = self.position()
            theta = self.angle + float(rng.normal(0, 0.05))
            placed += self.building(
                float(x), float(y), float(rng.uniform(*self.s.large_size)), theta, large=True
            )

    def parked_cars(self) -> None:
        rng = self.rng
        for lot in self.lots:
            fill = float(rng.uniform(0.45, 0.95))
            for x, y, heading in lot.slots:
                if rng.random() < fill:
                    jx, jy = rng.normal(0, 0.04 * self.car, 2)
                    self.vehicle(
                        x + jx, y + jy, heading + float(rng.normal(0, 0.04)), truck=bool(rng.random() < 0.03)
                    )

    def streets(self) -> None:
        """Rows of houses along the roads, with trees and pools behind and cars in driveways."""
        rng, car = self.rng, self.car
        for road in self.roads:
            for _ in range(int(rng.integers(1, 4))):
                side = float(np.clip(car * rng.uniform(2.2, 4.2), 16, 80))
                spacing = side * float(rng.uniform(1.3, 1.8))
                setback = car * float(rng.uniform(1.3, 2.0))
                ts = float(rng.uniform(road.t_lo, road.t_hi)) + spacing * np.arange(int(rng.integers(5, 21)))
                pts, dirs = road.at(ts)
                sides = (1, -1) if rng.random() < 0.6 else (int(rng.choice([1, -1])),)
                for sign in sides:
                    for p, d in zip(pts, dirs):
                        if rng.random() < 0.12:  # an empty plot
                            continue
                        normal = sign * np.array([-d[1], d[0]])
                        heading = math.atan2(d[1], d[0])
                        edge = road.width / 2 + setback
                        x, y = p + normal * (edge + side / 2)
                        if not self.building(float(x), float(y), side, heading + float(rng.normal(0, 0.03))):
                            continue
                        if rng.random() < 0.35:  # a car in the driveway
                            x, y = (
                                p
                                + normal * (road.width / 2 + setback / 2)
                                + d * side * float(rng.uniform(-0.3, 0.3))
                            )
                            self.vehicle(
                                float(x),
                                float(y),
                                math.atan2(normal[1], normal[0]) + math.pi * int(rng.integers(2)),
                            )
                        back = p + normal * (edge + side + car * float(rng.uniform(0.3, 1.0)))
                        if rng.random() < 0.55:
                            tree = float(np.clip(car * rng.uniform(0.9, 2.5), 6, 70))
                            x, y = back + normal * tree / 2 + d * side * float(rng.uniform(-0.4, 0.4))
                            self.tree(float(x), float(y), tree)
                        if rng.random() < 0.12:
                            pool = side * float(rng.uniform(0.35, 0.6))
                            x, y = back + normal * pool / 2 + d * side * float(rng.uniform(-0.4, 0.4))
                            self.pool(float(x), float(y), pool, heading)

    def traffic(self) -> None:
        """Queues of cars (some trucks) in both lanes of each road."""
        rng, car = self.rng, self.car
        for road in self.roads:
            for _ in range(int(rng.poisson((road.t_hi - road.t_lo) / (60 * car) * self.s.density))):
                lane = int(rng.choice([1, -1]))
                t = float(rng.uniform(road.t_lo, road.t_hi))
                for _ in range(int(rng.integers(2, 9))):
                    truck = bool(rng.random() < 0.1)
                    p, d = road.at(t)
                    x, y = p[0] + lane * np.array([-d[0, 1], d[0, 0]]) * road.width / 4
                    heading = math.atan2(d[0, 1], d[0, 0]) + (0.0 if lane > 0 else math.pi)
                    self.vehicle(float(x), float(y), heading + float(rng.normal(0, 0.03)), truck)
                    t += lane * car * (2.3 if truck else 1.0) * float(rng.uniform(1.5, 2.3))

    def orchards(self) -> None:
        rng = self.rng
        for _ in range(self.count(0, 2, 0.1)):
            d = float(np.clip(self.car * rng.uniform(0.9, 1.6), 6, 40))
            step = d * float(rng.uniform(1.3, 1.7))
            rows, cols = int(rng.integers(4, 11)), int(rng.integers(5, 17))
            eu = np.array([math.cos(self.angle), math.sin(self.angle)])
            ev = np.array([-eu[1], eu[0]])
            centre, colours = self.position(), self.tree_colours()
            for i in range(rows):
                for j in range(cols):
                    if rng.random() < 0.9:
                        ju, jv = rng.normal(0, 0.06 * step, 2)
                        x, y = (
                            centre
                            + ((j - (cols - 1) / 2) * step + ju) * eu
                            + ((i - (rows - 1) / 2) * step + jv) * ev
                        )
                        self.tree(float(x), float(y), d * float(rng.uniform(0.9, 1.1)), colours)

    def hedgerows(self) -> None:
        """Lines of trees along field edges."""
        rng = self.rng
        strips = self._strips()
        lo, hi = self._u_range()
        eu = np.array([math.cos(self.angle), math.sin(self.angle)])
        ev = np.array([-eu[1], eu[0]])
        for _ in range(self.count(2, 4, 0.3)):
            v = float(rng.choice(strips)) * self.field_h
            d = float(np.clip(self.car * rng.uniform(1.0, 2.0), 7, 50))
            u = float(rng.uniform(lo, hi))
            end = u + float(rng.uniform(300, 1500))
            colours = self.tree_colours()
            while u < end:
                dd = d * float(rng.uniform(0.85, 1.15))
                x, y = u * eu + (v + float(rng.normal(0, 0.1 * d))) * ev
                self.tree(float(x), float(y), dd, colours)
                u += dd * float(rng.uniform(1.05, 1.35))

    def tree_groups(self) -> None:
        rng = self.rng
        for _ in range(self.count(3, 6, 1.0)):
            centre = self.position()
            sigma = float(np.clip(self.car * rng.uniform(1.0, 2.5), 6, 60)) * float(rng.uniform(1.2, 3.0))
            colours = self.tree_colours() if rng.random() < 0.5 else None
            for _ in range(int(rng.integers(4, 21))):
                d = float(np.clip(self.car * rng.uniform(0.8, 3.2), 6, 70))
                x, y = centre + rng.normal(0, sigma, 2)
                self.tree(float(x), float(y), d, colours)

    def pool(self, cx: float, cy: float, side: float, theta: float) -> bool:
        aspect = float(self.rng.uniform(0.45, 0.9))
        colour = np.clip(np.array([70, 185, 215]) + self.rng.normal(0, 10, 3), 0, 255).astype(np.float32)
        r = side / (1.36 * math.sqrt(aspect))
        return self.put(cx, cy, r, "block", None, (colour, colour), theta, (1.0, aspect), kind="pool")

    def distractors(self) -> None:
        """Top up the pools drawn in gardens with lone pools and rows of storage tanks."""
        rng, s = self.rng, self.s
        target = self.count(s.distractors[0], s.distractors[1], s.distractors_per_mp)
        for _ in range(6 * target):
            if len(self.d_boxes) >= target:
                break
            x, y = self.position()
            if rng.random() < 0.5:
                self.pool(float(x), float(y), float(rng.uniform(15, 45)), float(rng.uniform(0, math.pi)))
                continue
            d = float(rng.uniform(16, 50))
            e = np.array([math.cos(self.angle), math.sin(self.angle)])
            shell = np.float32(rng.uniform(196, 236))
            rings = (np.full(3, shell, np.float32), np.full(3, shell * 0.75, np.float32))
            for k in range(int(rng.integers(1, 4))):
                cx, cy = np.array([x, y]) + e * k * d * 1.2
                self.put(float(cx), float(cy), d / 2, "disc", "bullseye", rings, 0.0, kind="tank")


def _make_aerial_image(seed: int, index: int, s: AerialSettings, masks: bool = True) -> SyntheticImage:
    rng = np.random.default_rng([seed, index])
    width, height = _image_size(rng, s)
    scene = _AerialScene(rng, s, width, height)
    scene.masks = masks
    scene.ground()
    n_crowd = 0
    while rng.random() < s.crowd_prob and n_crowd < 2:  # woods first: they need open ground
        n_crowd += scene.forest()
    scene.large_buildings()
    scene.parked_cars()
    scene.streets()
    scene.traffic()
    scene.orchards()
    scene.hedgerows()
    scene.tree_groups()
    scene.distractors()
    _add_noise(rng, scene.canvas, float(rng.uniform(*s.noise_sigma)))
    boxes = np.asarray(scene.d_boxes, dtype=np.float64).reshape(-1, 4)
    return SyntheticImage(scene.canvas, scene.annotations, boxes, scene.d_kinds)


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


def _resolve(preset: str | None, settings: SyntheticSettings | None) -> tuple[Preset, SyntheticSettings]:
    """The preset and the settings to use; without a preset name the settings' type decides."""
    if preset is None:
        preset = "aerial" if isinstance(settings, AerialSettings) else "default"
    p = get_preset(preset)
    if settings is None:
        return p, p.settings
    if isinstance(settings, AerialSettings) != isinstance(p.settings, AerialSettings):
        raise ValueError(
            f"settings of type {type(settings).__name__} do not fit preset {preset!r} "
            f"(it takes {type(p.settings).__name__})"
        )
    return p, settings


def make_dataset(
    out_dir: str | Path,
    *,
    images: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    settings: SyntheticSettings | None = None,
    preset: str | None = None,
    progress: bool = True,
    masks: bool = True,
) -> SyntheticSummary:
    """Write ``OUT/images/*.jpg``, ``OUT/train.json``, ``OUT/val.json`` and ``OUT/README.txt``.

    ``masks``: every annotation also carries ``segmentation``, the compressed RLE of the pixels
    its object shows (``masks=False``: the files of before masks existed, byte for byte).

    ``preset`` is a name in :data:`PRESETS` ("default" unless ``settings`` are
    :class:`AerialSettings`); ``images`` defaults to the preset's count (160 default, 12 aerial)
    and ``settings`` to the preset's. COCO ``file_name`` values are relative to ``OUT/images``.
    Image ids are 1..N and annotation ids are unique across both splits. Rewriting an earlier
    synthetic dataset in place is allowed (stale numbered images are removed); any other
    non-empty OUT is refused.
    """
    chosen, s = _resolve(preset, settings)
    if images is None:
        images = chosen.images
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
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
        img = make_image(seed, index, s, masks=masks)
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
            record = {
                "id": ann_id,
                "image_id": image_id,
                "category_id": a["category_id"],
                "bbox": a["bbox"],
                "area": a["area"],
                "iscrowd": a["iscrowd"],
            }
            if masks:
                record["segmentation"] = a["segmentation"]
            split["annotations"].append(record)
        n_dis += len(img.distractor_boxes)
    keep = set(names)
    for p in img_dir.iterdir():
        if _IMAGE_NAME.match(p.name) and p.name not in keep:
            p.unlink()
    info = {"description": README_MARKER, "seed": seed, "images": images, "val_fraction": val_fraction}
    if chosen.name != "default":  # (absent: the default preset, as in datasets from before presets)
        info["preset"] = chosen.name
    for key, data in splits.items():
        atomic_write_json(out / f"{key}.json", {"info": info, **data, "categories": list(chosen.categories)})
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
        categories=tuple(c["name"] for c in chosen.categories),
        seconds=time.perf_counter() - start,
        preset=chosen.name,
    )
    atomic_write_text(out / "README.txt", _readme(summary, s, val_fraction, chosen))
    return summary


def _readme(summary: SyntheticSummary, s: SyntheticSettings, val_fraction: float, p: Preset) -> str:
    if p.name == "default":  # (kept byte-identical to the README of datasets from before presets)
        flag, what = "", "categories (sparse ids; colours are random, so shape + texture decide the class):"
        cats = "\n".join(f"  {c.id:>3}  {c.name:<17} {c.shape} with {c.texture} texture" for c in CLASSES)
    else:
        flag, what = f" --preset {p.name}", f"preset {p.name}: {p.description}\n\ncategories (sparse ids):"
        cats = "\n".join(f"  {c['id']:>3}  {c['name']:<9} {_AERIAL_LOOKS[c['name']]}" for c in p.categories)
    return f"""{README_MARKER}
Generated by `sniper make-dataset` (sniper.data.synthetic); regenerate with
  sniper make-dataset OUT{flag} --images {summary.images} --seed {summary.seed} --val-fraction {val_fraction}
The same seed gives byte-identical JSON and identical pixels.

images: {summary.images} ({summary.train_images} train.json, {summary.val_images} val.json), in images/,
  COCO file_name relative to images/; JPEG quality {s.jpeg_quality}
annotations: {summary.annotations} ({summary.crowd_annotations} iscrowd clusters, \
{summary.truncated_annotations} truncated at the image border, box = visible part)
unlabeled distractors drawn: {summary.distractors} ({", ".join(p.distractor_kinds)})

{what}
{cats}

settings:
{json.dumps(asdict(s), indent=2)}
"""
