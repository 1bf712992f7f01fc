"""A training and inference config derived from a dataset's own statistics (``sniper plan``).

The rule, each number with its reason (docs/plan.md has the long form):

* **Chip size K**: 512 (the paper; at most the base config's chip size), smaller only when the
  median image's longest side is under 512 (then that side, rounded up to 64, at least 128).
* **Band**: a detector on K-pixel chips handles objects of about ``[K/8, K/2]`` chip px well
  (64-256 px at K = 512: above the feature stride, below the size at which an object no longer
  fits a chip with room to spare). Every scale is chosen to bring its objects into that band.
* **Finest scale**: upsample until the 5th-percentile object reaches ``K/16`` chip px (32 at
  K = 512), at most x4 (beyond it pixels are invented, not resolved); x1 at least when that
  already holds... except when objects are large, where it may shrink.
* **Coarsest scale**: the whole image in one chip (``longest = K``) when that keeps the
  largest objects (99.5th percentile) near the band; for images much larger than the chip,
  the factor that brings those objects to ``K/2``.
* **Scales between**: geometric steps of at most x2.5 between neighbours (the paper's COCO
  steps are x1.8 and x2.1), so that neighbouring bands overlap by at least 1.6x.
* **Training ranges** (sqrt(w*h), original px): scale ``s`` with factor ``f`` keeps
  ``[K/8 / f, K/2 / f)``; the finest is open below, the coarsest open above. Then the chip
  engine's own selection rule (range, fit inside a chip, minimum size) is run on every
  training box, and any non-crowd box valid at no scale widens the range of the nearest
  scale where it fits, so every trainable box trains at one scale at least.
* **Test ranges**: the training ranges widened by x1.2 (paper: (0, 80) -> (0, 90), (32, 150)
  -> (32, 180)); test scales and proposal scales are the training scales.
* **Anchors**: sizes a power-of-two ladder over the 1st-99th percentile of valid object sizes
  in chip px; aspect ratios at least 0.5/1/2, wider when 15% of the objects are more
  elongated.
* **Dense scenes**: RoIs kept per chip, proposals and detections per image follow the 99th
  percentile of objects per chip and per image (detections never fewer than 1.2x it).
* **Schedule**: the base config's epochs, but never fewer iterations than
  ``MIN_CHIPS_SEEN / batch_size`` (a floor measured in docs/results.md); LR step at 76% of
  the length (the paper's 5.33 of 7 epochs).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from sniper.boxes import sqrt_area
from sniper.chips import chip_labels, positive_chips, selection_mask
from sniper.config import ChipConfig, Config
from sniper.data.coco import CocoDataset
from sniper.scales import Scale

__all__ = ["MIN_CHIPS_SEEN", "DatasetPlan", "DatasetStats", "ScalePlan", "plan_from_dataset", "schedule_floor"]

BAND = (1 / 8, 1 / 2)  # good object sizes, as fractions of the chip size
SMALL_TARGET = 1 / 16  # where the finest scale puts the 5th-percentile object
MAX_UPSAMPLE = 4.0
MAX_STEP = 2.5  # largest factor between neighbouring scales
MAX_SCALES = 4  # beyond it the steps widen instead (the cost grows with every scale)
TEST_WIDEN = 1.2
LR_STEP_AT = 0.76
# Detector training shorter than this many chips seen learns little (measured: docs/results.md).
MIN_CHIPS_SEEN = 8000
MIN_RPN_CHIPS_SEEN = 2000
SAMPLE_IMAGES = 2000  # images whose chips are mined for per-chip statistics
_RATIO_GRID = (1 / 4, 1 / 2, 1.0, 2.0, 4.0)


def _pct(x: np.ndarray, q: Sequence[float]) -> dict[str, float]:
    if len(x) == 0:
        return {f"p{g:g}": 0.0 for g in q}
    return {f"p{g:g}": round(float(v), 2) for g, v in zip(q, np.percentile(x, q))}


@dataclass(frozen=True)
class DatasetStats:
    """What the plan is derived from (non-crowd boxes; sizes are sqrt(w*h) in original px)."""

    images: int
    objects: int
    crowd: int
    classes: int
    sizes: dict[str, float]
    aspect_ratios: dict[str, float]  # h / w
    long_side: dict[str, float]
    short_side: dict[str, float]
    objects_per_image: dict[str, float]
    box_long_side_max: float  # the longest side of any non-crowd box, original px
    long_sides: tuple[float, ...] = field(default=(), repr=False)  # every image's long side

    def whole_factor(self, K: int) -> float:
        """The median over images of the factor that makes the long side K (``longest = K``)."""
        return float(np.median(K / np.maximum(np.asarray(self.long_sides, dtype=np.float64), 1.0)))

    @classmethod
    def of(cls, ds: CocoDataset) -> tuple[DatasetStats, np.ndarray, np.ndarray]:
        """The statistics, and the sizes and aspect ratios of every non-crowd box."""
        sizes, ratios, per_image, longs, shorts, box_long = [], [], [], [], [], 0.0
        crowd = 0
        for i, rec in enumerate(ds.images):
            a = ds.annotations_at(i)
            b = a.boxes[~a.iscrowd]
            crowd += int(a.iscrowd.sum())
            sizes.append(sqrt_area(b))
            if len(b):
                box_long = max(box_long, float(np.max(b[:, 2:] - b[:, :2])))
            ratios.append((b[:, 3] - b[:, 1]) / np.maximum(b[:, 2] - b[:, 0], 1e-9))
            per_image.append(len(b))
            longs.append(max(rec.width, rec.height))
            shorts.append(min(rec.width, rec.height))
        s = np.concatenate(sizes) if sizes else np.zeros(0)
        r = np.concatenate(ratios) if ratios else np.zeros(0)
        q = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 100)
        stats = cls(
            images=len(ds),
            objects=len(s),
            crowd=crowd,
            classes=ds.num_classes,
            sizes=_pct(s, q),
            aspect_ratios=_pct(r, (5, 15, 50, 85, 95)),
            long_side=_pct(np.asarray(longs, float), (5, 50, 95)),
            short_side=_pct(np.asarray(shorts, float), (5, 50, 95)),
            objects_per_image=_pct(np.asarray(per_image, float), (50, 90, 99, 100)),
            box_long_side_max=round(box_long, 2),
            long_sides=tuple(float(v) for v in longs),
        )
        return stats, s, r


@dataclass
class ScalePlan:
    """One training scale of the plan."""

    scale: Scale
    test_scale: Scale
    factor: float  # the median resize factor over the dataset
    share_valid: float  # share of non-crowd boxes valid for selection at this scale
    chip_sizes: np.ndarray = field(repr=False)  # sizes of those boxes in chip px
    pos_chips: int = 0  # positive chips of the sampled images


@dataclass
class DatasetPlan:
    config: Config
    stats: DatasetStats
    scales: list[ScalePlan]
    sizes: np.ndarray = field(repr=False)  # every non-crowd box, sqrt(w*h) original px
    unassigned: int = 0  # non-crowd boxes valid at no scale even after widening
    unassigned_examples: list[str] = field(default_factory=list)
    widened: int = 0  # boxes that widened a range
    objects_per_chip_p99: float = 0.0
    chips_per_image: float = 0.0  # positives, plus the negatives sampled per image
    pixels_vs_single_scale: float = 0.0
    pixels_vs_full_pyramid: float = 0.0
    detector_iterations: int = 0
    rpn_iterations: int = 0
    iterations_per_epoch: float = 0.0
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from sniper.config import to_dict

        return {
            "stats": {k: v for k, v in self.stats.__dict__.items() if k != "long_sides"},
            "scales": [
                {
                    "train": s.scale.describe(),
                    "test": s.test_scale.describe(),
                    "median_factor": round(s.factor, 4),
                    "share_valid": round(s.share_valid, 4),
                    "pos_chips_sampled": s.pos_chips,
                }
                for s in self.scales
            ],
            "unassigned": self.unassigned,
            "unassigned_examples": self.unassigned_examples,
            "widened": self.widened,
            "objects_per_chip_p99": self.objects_per_chip_p99,
            "chips_per_image": round(self.chips_per_image, 3),
            "pixels_vs_single_scale": round(self.pixels_vs_single_scale, 3),
            "pixels_vs_full_pyramid": round(self.pixels_vs_full_pyramid, 3),
            "detector_iterations": self.detector_iterations,
            "rpn_iterations": self.rpn_iterations,
            "iterations_per_epoch": round(self.iterations_per_epoch, 2),
            "reasons": self.reasons,
            "config": to_dict(self.config),
        }

    def summary(self) -> str:
        s, c = self.stats, self.config
        lines = [
            f"dataset: {s.images} images, {s.objects} objects ({s.crowd} crowd), {s.classes} classes; "
            f"object size p5/p50/p95 {s.sizes['p5']:g}/{s.sizes['p50']:g}/{s.sizes['p95']:g} px; "
            f"up to {s.objects_per_image['p99']:g} objects per image (p99)",
            f"chips: {c.chips.chip_size} px, {len(self.scales)} scale(s):",
        ]
        for p in self.scales:
            lines.append(
                f"  {p.scale.describe():<34} trains {100 * p.share_valid:5.1f}% of the objects "
                f"(median factor {p.factor:.3g}); test {p.test_scale.describe()}"
            )
        if self.unassigned:
            lines.append(f"  {self.unassigned} object(s) fit no scale (too thin or too small), e.g. "
                         + "; ".join(self.unassigned_examples[:3]))  # fmt: skip
        m = c.model
        lines += [
            f"anchors: sizes {[round(a, 1) for a in m.anchor_sizes]}, ratios {m.aspect_ratios}",
            f"per chip: up to {self.objects_per_chip_p99:g} objects (p99) -> {m.rpn_post_nms_top_n_train} RoIs; "
            f"per image: {c.infer.max_detections} detections, {m.rpn_post_nms_top_n_test} proposals per scale",
            f"cost: {self.chips_per_image:.2f} chips per image, pixels x{self.pixels_vs_single_scale:.2f} "
            f"of single scale 800x1333, x{self.pixels_vs_full_pyramid:.2f} of the full pyramid",
            f"schedule: detector {self.detector_iterations} iterations of {c.train.batch_size} chips "
            f"({self.detector_iterations / max(self.iterations_per_epoch, 1e-9):.1f} epochs), lr x{c.train.lr_gamma:g} "
            f"at {c.train.lr_steps_iters}; RPN stage {self.rpn_iterations} iterations",
        ]
        return "\n".join(lines)


# ------------------------------------------------------------------ rules


def _chip_size(stats: DatasetStats, chip_size: int | None, base_chip: int) -> int:
    """``chip_size`` if given; else 512 (at most the base config's chip, the largest its model
    is set up for), smaller only when the images are."""
    if chip_size is not None:
        if chip_size < 32:
            raise ValueError(f"chip size must be >= 32, got {chip_size}")
        return int(chip_size)
    med = stats.long_side["p50"]
    k = 512 if med >= 512 else int(max(128, 64 * math.ceil(med / 64)))
    return min(k, int(base_chip))


def _factors(stats: DatasetStats, K: int, stride: int) -> tuple[list[float], bool]:
    """Scale factors fine to coarse (median over images for the coarsest), and whether the
    coarsest is the whole image in one chip (``longest = K``)."""
    hi_px = BAND[1] * K
    small = max(stats.sizes["p5"], 1.0)
    big = max(stats.sizes["p99.5"], 1.0)
    f_whole = stats.whole_factor(K)
    # the p99.5 object at the band's top, and the longest box inside a chip with room for the stride
    f_big = min(hi_px / big, 0.99 * (K - stride) / max(stats.box_long_side_max, 1.0))
    # whole image per chip when its largest objects stay within ~2x of the band's top; images
    # no larger than the chip are not upsampled for it (factor 1 keeps them whole)
    # ... and when no image is upsampled more than 2x for it (p5 of the long side >= K/2)
    whole = f_whole < 1.0 and f_whole >= f_big / 2 and stats.long_side["p5"] >= K / 2
    f_coarse = f_whole if whole else min(1.0, f_big)
    f_fine = min(MAX_UPSAMPLE, K * SMALL_TARGET / small)
    f_fine = max(f_fine, f_coarse)
    ratio = f_fine / f_coarse
    if ratio <= 1.25:
        return [f_coarse], whole
    steps = min(MAX_SCALES - 1, max(1, math.ceil(math.log(ratio) / math.log(MAX_STEP) - 1e-9)))
    fs = [f_fine * (f_coarse / f_fine) ** (k / steps) for k in range(steps + 1)]
    return fs, whole


def _round_factor(f: float) -> float:
    """Three significant digits, rounded down (a coarsest factor chosen to fit a box must not grow)."""
    r = float(f"{f:.3g}")
    if r > f:
        r -= 10 ** (math.floor(math.log10(f)) - 2)
    return float(f"{r:.3g}")


def _ranges(fs: Sequence[float], K: int) -> list[tuple[float | None, float | None]]:
    lo_px, hi_px = BAND[0] * K, BAND[1] * K
    out: list[tuple[float | None, float | None]] = []
    for i, f in enumerate(fs):
        lo = None if i == 0 else lo_px / f
        if lo is not None:
            lo = min(lo, out[-1][1] / 1.25)  # steps wider than the band (capped scale count) still overlap
        hi = None if i == len(fs) - 1 else hi_px / f
        out.append((lo, hi))
    return out


def _scales(fs: Sequence[float], whole: bool, K: int, ranges) -> list[Scale]:
    out = []
    for i, (f, rng) in enumerate(zip(fs, ranges)):
        rng = tuple(None if v is None else round(v, 1) for v in rng)
        if i == len(fs) - 1 and whole:
            out.append(Scale(longest=K, valid_range=rng))
        else:
            out.append(Scale(factor=_round_factor(f), valid_range=rng))
    return out


def _widen(scale: Scale, size: float) -> Scale:
    lo, hi = scale.valid_range
    if lo is not None and size < lo:
        lo = math.floor(size * 10) / 10 or None
    if hi is not None and size >= hi:
        hi = math.floor(size * 10 + 1) / 10
    return replace(scale, valid_range=(lo, hi))


def _log_distance(scale: Scale, size: float) -> float:
    """How far (in log size) ``size`` lies outside the scale's valid range; 0 inside."""
    if size < scale.lo:
        return math.log(max(scale.lo, 1e-9) / max(size, 1e-9))
    return math.log(size / scale.hi) if size >= scale.hi else 0.0


def _coverage(ds: CocoDataset, chips: ChipConfig) -> tuple[ChipConfig, int, int, list[str]]:
    """Widen ranges until every non-crowd box that fits some scale is valid at one; returns the
    config, the boxes that widened a range, those that fit nowhere, and examples of the latter."""
    open_cfg = replace(chips, scales=[replace(s, valid_range=(None, None)) for s in chips.scales])
    scales = list(chips.scales)
    widened = 0
    nowhere: list[str] = []
    n_nowhere = 0
    for i, rec in enumerate(ds.images):
        a = ds.annotations_at(i)
        if not len(a.boxes):
            continue
        cfg = replace(chips, scales=scales)
        ok = selection_mask(a.boxes, rec.width, rec.height, cfg, iscrowd=a.iscrowd).any(axis=0)
        todo = np.flatnonzero(~ok & ~a.iscrowd)
        if not len(todo):
            continue
        fits = selection_mask(a.boxes[todo], rec.width, rec.height, open_cfg)
        sizes = sqrt_area(a.boxes[todo])
        for j, size in enumerate(sizes):
            cand = np.flatnonzero(fits[:, j])
            if not len(cand):
                n_nowhere += 1
                if len(nowhere) < 5:
                    x1, y1, x2, y2 = a.boxes[todo[j]]
                    nowhere.append(f"image {rec.id}: {x2 - x1:.1f}x{y2 - y1:.1f} px")
                continue
            best = min(cand, key=lambda k, size=size: _log_distance(scales[k], size))
            scales[best] = _widen(scales[best], float(size))
            widened += 1
    return replace(chips, scales=scales), widened, n_nowhere, nowhere


def _snap_ratio(r: float) -> float:
    return min(_RATIO_GRID, key=lambda g: abs(math.log(g) - math.log(max(r, 1e-6))))


def _anchors(chip_sizes: np.ndarray, ratios: np.ndarray, backbone: str) -> tuple[list[float], list[float]]:
    if len(chip_sizes) == 0:
        return [32.0, 64.0, 128.0, 256.0], [0.5, 1.0, 2.0]
    p1, p99 = np.percentile(chip_sizes, [1, 99])
    levels = 5 if backbone.endswith("fpn") else 1
    if levels > 1:  # one size per pyramid level, geometric between the percentiles
        sizes = list(np.geomspace(max(p1, 8.0), max(p99, 16.0), levels).round(1))
    else:
        k0 = math.floor(math.log2(max(p1, 4.0)))
        k1 = math.ceil(math.log2(max(p99, 8.0)))
        sizes = [float(2**k) for k in range(k0, max(k1, k0 + 1) + 1)]
    q15, q85 = np.percentile(ratios, [15, 85]) if len(ratios) else (1.0, 1.0)
    lo = min(0.5, _snap_ratio(q15))
    hi = max(2.0, _snap_ratio(q85))
    return [float(s) for s in sizes], sorted({lo, 1.0, hi})


def schedule_floor(batch_size: int) -> tuple[int, int]:
    """Fewest (detector, RPN) iterations worth training at ``batch_size`` chips per iteration."""
    b = max(1, int(batch_size))
    return math.ceil(MIN_CHIPS_SEEN / b), math.ceil(MIN_RPN_CHIPS_SEEN / b)


# ------------------------------------------------------------------ the plan


def plan_from_dataset(ds: CocoDataset, base: Config | None = None, *, chip_size: int | None = None) -> DatasetPlan:
    """The plan for ``ds`` on top of ``base`` (its model, optimiser and data settings are kept;
    chips, scales, anchors, dense-scene limits and the schedule are set from the data)."""
    from sniper.data.chip_table import ChipTotals, image_chips, image_tasks

    if len(ds) == 0:
        raise ValueError("cannot plan from a dataset without images")
    cfg = copy.deepcopy(base if base is not None else Config())
    stats, sizes, ratios = DatasetStats.of(ds)
    if stats.objects == 0:
        raise ValueError("cannot plan from a dataset without (non-crowd) objects")
    K = _chip_size(stats, chip_size, cfg.chips.chip_size)
    reasons: dict[str, str] = {}
    fs, whole = _factors(stats, K, cfg.chips.stride)
    reasons["chips.chip_size"] = (
        f"median image long side {stats.long_side['p50']:g} px: "
        + ("512 as in the paper" if K == 512 and chip_size is None else f"{K} px (at most the base's chip)")
    )
    reasons["chips.scales"] = (
        f"finest x{fs[0]:.3g} brings the p5 object ({stats.sizes['p5']:g} px) to ~{K * SMALL_TARGET:g} chip px "
        f"(at most x{MAX_UPSAMPLE:g}); coarsest "
        + (f"the whole image (longest side {K})" if whole else
           f"x{fs[-1]:.3g} brings the p99.5 object to at most {K // 2} px and the longest box inside a chip")
        + f"; steps of at most x{MAX_STEP:g}"
    )
    chips = replace(cfg.chips, chip_size=K, scales=_scales(fs, whole, K, _ranges(fs, K)))
    if len(chips.neg_min_proposals) != len(chips.scales):
        base_neg = list(cfg.chips.neg_min_proposals) or [10]
        chips = replace(chips, neg_min_proposals=[base_neg[min(i, len(base_neg) - 1)] for i in range(len(chips.scales))])
    chips, widened, unassigned, examples = _coverage(ds, chips)
    reasons["valid ranges"] = (
        f"each scale keeps objects landing at {BAND[0] * K:g}-{BAND[1] * K:g} chip px; "
        f"{widened} box(es) widened a range so that every box that fits some scale trains at one"
    )
    cfg.chips = chips
    test_scales = []
    for s in chips.scales:
        lo, hi = s.valid_range
        test_scales.append(replace(s, valid_range=(None if lo is None else round(lo / TEST_WIDEN, 1),
                                                   None if hi is None else round(hi * TEST_WIDEN, 1))))  # fmt: skip
    cfg.infer = replace(cfg.infer, scales=test_scales)
    cfg.proposals = replace(cfg.proposals, scales=list(test_scales))

    # Per-scale shares and chip-pixel sizes, and objects per chip from mined positive chips.
    n_scales = len(chips.scales)
    valid_count = np.zeros(n_scales)
    chip_sizes: list[list[np.ndarray]] = [[] for _ in range(n_scales)]
    factor_med = [[] for _ in range(n_scales)]
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(ds), size=min(len(ds), SAMPLE_IMAGES), replace=False))
    per_chip: list[int] = []
    pos_chips = np.zeros(n_scales, dtype=np.int64)
    for i in range(len(ds)):
        rec = ds.images[i]
        a = ds.annotations_at(i)
        for s, sc in enumerate(chips.scales):
            factor_med[s].append(sc.resize_factor(rec.width, rec.height))
        if not len(a.boxes):
            continue
        mask = selection_mask(a.boxes, rec.width, rec.height, chips, iscrowd=a.iscrowd)
        sa = sqrt_area(a.boxes)
        for s, sc in enumerate(chips.scales):
            valid_count[s] += mask[s].sum()
            chip_sizes[s].append(sa[mask[s]] * sc.resize_factor(rec.width, rec.height))
    for i in sample:
        rec = ds.images[i]
        a = ds.annotations_at(i)
        pos = positive_chips(a.boxes, rec.width, rec.height, chips, iscrowd=a.iscrowd, seed=(cfg.seed, 0, rec.id))
        pos_chips += np.bincount(pos.scale_index, minlength=n_scales)
        for chip in pos.chips():
            lab = chip_labels(chip, a.boxes, a.category_ids, a.iscrowd, chips, image_size=(rec.width, rec.height))
            per_chip.append(int(lab.valid.sum()))
    all_chip_sizes = np.concatenate([np.concatenate(c) if c else np.zeros(0) for c in chip_sizes])
    scale_plans = [
        ScalePlan(
            scale=chips.scales[s],
            test_scale=test_scales[s],
            factor=float(np.median(factor_med[s])),
            share_valid=float(valid_count[s] / max(stats.objects, 1)),
            chip_sizes=np.concatenate(chip_sizes[s]) if chip_sizes[s] else np.zeros(0),
            pos_chips=int(pos_chips[s]),
        )
        for s in range(n_scales)
    ]

    # Anchors and dense-scene limits.
    m = cfg.model
    anchor_sizes, aspect = _anchors(all_chip_sizes, ratios, m.backbone)
    per_chip_p99 = float(np.percentile(per_chip, 99)) if per_chip else 0.0
    per_img_p99 = float(stats.objects_per_image["p99"])
    cfg.model = replace(
        m,
        anchor_sizes=anchor_sizes,
        aspect_ratios=aspect,
        rpn_post_nms_top_n_train=max(m.rpn_post_nms_top_n_train, math.ceil(4 * per_chip_p99)),
        rpn_post_nms_top_n_test=max(m.rpn_post_nms_top_n_test, math.ceil(2 * per_img_p99)),
        box_detections_per_img=max(m.box_detections_per_img, math.ceil(1.5 * per_img_p99)),
        box_batch_size_per_image=(
            None if m.box_batch_size_per_image is None else max(m.box_batch_size_per_image, math.ceil(2 * per_chip_p99))
        ),
    )
    cfg.infer = replace(cfg.infer, max_detections=max(cfg.infer.max_detections, math.ceil(1.2 * per_img_p99)))
    cfg.proposals = replace(cfg.proposals, top_per_scale=max(cfg.proposals.top_per_scale, math.ceil(2 * per_img_p99)))
    reasons["model.anchor_sizes"] = (
        f"valid objects measure {np.percentile(all_chip_sizes, 1):.0f}-{np.percentile(all_chip_sizes, 99):.0f} "
        "chip px (p1-p99)" if len(all_chip_sizes) else "no valid objects: defaults"
    )
    reasons["model.aspect_ratios"] = (
        f"h/w p15-p85 {stats.aspect_ratios['p15']:g}-{stats.aspect_ratios['p85']:g}, at least 0.5-2"
    )
    reasons["infer.max_detections"] = (
        f"1.2x the p99 of objects per image ({per_img_p99:g}), at least {base.infer.max_detections if base else 200}"
    )

    # Cost: the chip engine's own accounting over the sampled images.
    totals = ChipTotals.zeros(n_scales)
    for task in image_tasks(ds, None, sample):
        p, n = image_chips(task, chips, cfg.seed)
        totals.add_image(task, p, n, chips)
    neg = cfg.chips.neg_per_image if cfg.train.negatives else 0
    pos_per_image = totals.pos / max(totals.images, 1)
    chips_per_image = pos_per_image + neg
    neg_px = neg * totals.images * (K * K) * 0.5  # negatives: about half-filled chips on average
    px_single = (totals.pos_px + neg_px) / max(totals.single_px, 1.0)
    px_pyramid = (totals.pos_px + neg_px) / max(totals.pyramid_px, 1.0)

    # Schedule: the base's epochs, but not below the floor.
    t = cfg.train
    iters_per_epoch = chips_per_image * len(ds) / max(t.batch_size, 1)
    floor_det, floor_rpn = schedule_floor(t.batch_size)
    det_iters = max(floor_det, math.ceil(t.epochs * iters_per_epoch))
    rpn_iters = max(floor_rpn, math.ceil(t.rpn_epochs * pos_per_image * len(ds) / max(t.batch_size, 1)))
    cfg.train = replace(
        t,
        iterations=det_iters,
        rpn_iterations=rpn_iters,
        lr_steps_iters=[round(LR_STEP_AT * det_iters)],
        warmup_iters=min(t.warmup_iters, max(10, det_iters // 10)),
    )
    reasons["train.iterations"] = (
        f"{t.epochs} epochs of {iters_per_epoch:.1f} iterations = {math.ceil(t.epochs * iters_per_epoch)}; "
        f"floor {floor_det} ({MIN_CHIPS_SEEN} chips seen at batch {t.batch_size})"
    )
    return DatasetPlan(
        config=cfg,
        stats=stats,
        scales=scale_plans,
        sizes=sizes,
        unassigned=unassigned,
        unassigned_examples=examples,
        widened=widened,
        objects_per_chip_p99=round(per_chip_p99, 2),
        chips_per_image=chips_per_image,
        pixels_vs_single_scale=px_single,
        pixels_vs_full_pyramid=px_pyramid,
        detector_iterations=det_iters,
        rpn_iterations=rpn_iters,
        iterations_per_epoch=iters_per_epoch,
        reasons=reasons,
    )
