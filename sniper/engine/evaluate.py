"""COCO box and mask AP and proposal recall, with the numbers of pycocotools' ``COCOeval``.

Two entry points:

- ``evaluate_detections(gt, dets, iou_type="bbox")``: AP, AP50, AP75, APs, APm, APl, AR at each
  max-detections value, ARs/m/l and per-class AP by category name. With the default
  settings the numbers are exactly ``COCOeval.stats``. AP uses the last (largest)
  max-detections value, as pycocotools does. ``iou_type="segm"``: mask AP, IoU of the
  results' ``segmentation`` (COCO compressed RLE of the image's size, as ``sniper predict``
  writes) against the GT's (polygons, uncompressed or compressed RLE, converted by pycocotools'
  own ``annToRLE``): ``COCOeval(gt, dt, "segm")`` on the results WITHOUT their ``bbox`` (the
  COCO format of segmentation results, as Detectron2 evaluates), so a result's area (for the
  size ranges) is its mask's area, not its box's.
- ``evaluate_proposals(gt, proposals)``: class-agnostic recall as in Table 1 of the
  paper: AR (averaged over IoU 0.5:0.05:0.95), AR50, AR75 and AR per box size,
  by sqrt(area) 0-25, 25-50, 50-100, 100-200, 200-300 px, at N proposals per image
  (default 300). This is ``COCOeval`` with ``useCats=0``, ``maxDets=[N]`` and the
  squared size bounds as ``areaRng``.

Backends (``backend=``, in the result as ``"backend"``): ``"pycocotools"`` runs pycocotools'
``COCOeval`` itself. ``"faster-coco-eval"`` (``pip install faster-coco-eval``) computes the
IoUs and the per-image matching in C++, pycocotools' Python loops that take minutes on an
image with thousands of boxes; its accumulation differs from pycocotools' in the last bit of
precision, so pycocotools' own accumulate() runs on its per-image matches: every number is
bit-for-bit that of pycocotools. ``"auto"`` (the default) takes faster-coco-eval when it is
installed.

Sizes are those pycocotools uses: a GT box's ``area`` field (for real COCO, the
segmentation area; filled in as w * h when missing). A bound is inclusive on both
sides, as in pycocotools. A metric with no ground truth in its range is undefined:
pycocotools reports -1, here it is ``None`` (JSON null); the raw numbers (-1 included)
are kept under ``stats``.

``gt`` is a COCO annotation file (path) or its dict; ``dets`` is a COCO results file
(path) or its list ``[{image_id, category_id, bbox: [x, y, w, h], score}]`` (with
``segmentation`` for ``segm``; ``bbox`` is then optional and unused). Inputs are validated
first; problems raise ``CocoFormatError`` naming the record. Inputs are never modified.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.metadata
import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sniper.errors import CocoFormatError, SniperError
from sniper.io import read_json

__all__ = [
    "BACKENDS",
    "COCO_AREA_RANGES",
    "IOU_TYPES",
    "PROPOSAL_AREA_RANGES",
    "evaluate_detections",
    "evaluate_proposals",
    "format_detection_table",
    "format_proposal_table",
    "load_ground_truth",
    "load_results",
    "resolve_backend",
]

# pycocotools' "no upper bound" (its default areaRng uses 1e5 ** 2).
_OPEN = 1e5
# name -> (lo, hi) in sqrt(area) pixels. "all" is always added first.
COCO_AREA_RANGES: dict[str, tuple[float, float]] = {
    "small": (0, 32),
    "medium": (32, 96),
    "large": (96, _OPEN),
}
PROPOSAL_AREA_RANGES: dict[str, tuple[float, float]] = {
    "0-25": (0, 25),
    "25-50": (25, 50),
    "50-100": (50, 100),
    "100-200": (100, 200),
    "200-300": (200, 300),
}
_SHORT = {"small": "s", "medium": "m", "large": "l"}
# What a detection's IoU is computed on: its box, or its mask (``segmentation``).
IOU_TYPES = ("bbox", "segm")

PathOrDict = str | os.PathLike[str] | Mapping[str, Any]
PathOrList = str | os.PathLike[str] | Sequence[Mapping[str, Any]]


# ----------------------------------------------------------------- loading + validation


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _bbox_problem(bbox: Any) -> str | None:
    if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox has negative width or height: {list(bbox)}"
    return None


def _check_iou_type(iou_type: str) -> str:
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}")
    return iou_type


def _segmentation_problem(seg: Any, height: int, width: int, *, results: bool = False) -> str | None:
    """Why pycocotools cannot read ``seg`` on a ``height x width`` image (structure only: no
    decoding), or None. GT: polygons (a non-empty list of flat ``[x, y, ...]`` lists of at least
    3 points), uncompressed RLE (``counts`` a list of ints) or compressed RLE (``counts`` a str);
    results: compressed RLE only (pycocotools' ``loadRes`` takes nothing else)."""
    if isinstance(seg, list) and not results:
        if not seg:
            return "segmentation is an empty list of polygons"
        for k, poly in enumerate(seg):
            if not isinstance(poly, list | tuple) or not all(_is_number(v) for v in poly):
                return f"segmentation polygon {k} must be a list of finite numbers"
            if len(poly) < 6 or len(poly) % 2:
                return f"segmentation polygon {k} must have an even number (>= 6) of coordinates, got {len(poly)}"
        return None
    if not isinstance(seg, Mapping):
        want = "a COCO RLE {size: [h, w], counts: str}" if results else "polygons or a COCO RLE"
        return f"segmentation must be {want}, got {type(seg).__name__}"
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(type(v) is int for v in size)):
        return f"segmentation RLE needs 'size' [h, w] (two ints), got {size!r:.60}"
    if (size[0], size[1]) != (height, width):
        return f"segmentation RLE size {list(size)} ([h, w]) is not the image's [{height}, {width}]"
    if isinstance(counts, str | bytes):
        return None
    if not results and isinstance(counts, list) and all(type(v) is int and v >= 0 for v in counts):
        if sum(counts) != height * width:
            return f"uncompressed RLE counts sum to {sum(counts)}, not h * w = {height * width}"
        return None
    kind = "a str (compressed RLE)" if results else "a str (compressed RLE) or a list of ints"
    return f"segmentation RLE 'counts' must be {kind}, got {type(counts).__name__}"


def _image_size(img: Mapping[str, Any]) -> tuple[int, int] | None:
    h, w = img.get("height"), img.get("width")
    if type(h) is int and type(w) is int and h > 0 and w > 0:
        return h, w
    return None


def _unique_ids(records: list, key: str, what: str, where: str) -> set:
    """The ``id`` of every record; an error naming the record when one is missing or repeated."""
    ids: set = set()
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping) or "id" not in rec:
            raise CocoFormatError(f"{where}: {key}[{i}] has no 'id'")
        if rec["id"] in ids:
            raise CocoFormatError(f"{where}: {key}[{i}]: duplicate {what} id {rec['id']}")
        ids.add(rec["id"])
    return ids


def load_ground_truth(gt: PathOrDict, iou_type: str = "bbox") -> dict[str, Any]:
    """A validated deep copy of a COCO annotation dict (``area``/``iscrowd`` filled in if missing).
    ``iou_type="segm"`` also requires every image's ``height``/``width`` and every annotation's
    ``segmentation`` in a form pycocotools reads."""
    _check_iou_type(iou_type)
    where = str(gt) if not isinstance(gt, Mapping) else "ground truth"
    data = read_json(gt) if not isinstance(gt, Mapping) else gt
    if not isinstance(data, Mapping):
        raise CocoFormatError(f"{where}: expected a COCO object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoFormatError(f"{where}: '{key}' must be a list")
    data = copy.deepcopy(dict(data)) if isinstance(gt, Mapping) else data  # a file's dict is ours already
    image_ids = _unique_ids(data["images"], "images", "image", where)
    cat_ids = _unique_ids(data["categories"], "categories", "category", where)
    sizes: dict[Any, tuple[int, int]] = {}
    if iou_type == "segm":
        for i, img in enumerate(data["images"]):
            size = _image_size(img)
            if size is None:
                raise CocoFormatError(
                    f"{where}: images[{i}] (id {img['id']!r}): mask evaluation needs its 'height' and "
                    f"'width' (positive ints), got {img.get('height')!r} x {img.get('width')!r}"
                )
            sizes[img["id"]] = size
    ann_ids = set()
    for i, ann in enumerate(data["annotations"]):
        rec = f"{where}: annotations[{i}]" + (
            f" (id {ann['id']})" if isinstance(ann, Mapping) and "id" in ann else ""
        )
        if not isinstance(ann, Mapping):
            raise CocoFormatError(f"{rec}: not an object")
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise CocoFormatError(f"{rec}: missing '{key}'")
        if ann["id"] in ann_ids:
            raise CocoFormatError(f"{rec}: duplicate annotation id")
        ann_ids.add(ann["id"])
        if ann["image_id"] not in image_ids:
            raise CocoFormatError(f"{rec}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in cat_ids:
            raise CocoFormatError(f"{rec}: category_id {ann['category_id']!r} is not in 'categories'")
        problem = _bbox_problem(ann["bbox"])
        if problem:
            raise CocoFormatError(f"{rec}: {problem}")
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        elif not _is_number(ann["area"]):
            raise CocoFormatError(f"{rec}: area must be a finite number, got {ann['area']!r}")
        ann.setdefault("iscrowd", 0)
        if ann["iscrowd"] not in (0, 1):  # a flag; backends would read other values differently
            raise CocoFormatError(f"{rec}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
        if iou_type == "segm":
            if "segmentation" not in ann:
                raise CocoFormatError(f"{rec}: mask evaluation needs a 'segmentation'")
            problem = _segmentation_problem(ann["segmentation"], *sizes[ann["image_id"]])
            if problem:
                raise CocoFormatError(f"{rec}: {problem}")
    return data


def load_results(
    dets: PathOrList, gt: Mapping[str, Any], *, check_categories: bool = True, iou_type: str = "bbox"
) -> list[dict[str, Any]]:
    """Validated copies of COCO results against the ground truth ``gt`` (from ``load_ground_truth``).

    ``iou_type="bbox"``: ``{image_id, category_id, bbox, score}`` (any ``segmentation`` left out);
    ``"segm"``: ``{image_id, category_id, segmentation, score}``, the segmentation a compressed
    RLE of the image's ``[height, width]`` (``counts`` as a str); ``bbox`` is not needed and left
    out (pycocotools then takes area and box from the mask)."""
    _check_iou_type(iou_type)
    segm = iou_type == "segm"
    where = str(dets) if isinstance(dets, str | os.PathLike) else "detections"
    data = read_json(dets) if isinstance(dets, str | os.PathLike) else dets
    if not isinstance(data, list | tuple):
        raise CocoFormatError(
            f"{where}: expected a JSON list of results [{{image_id, category_id, bbox, score}}]"
        )
    image_ids = {img["id"] for img in gt["images"]}
    sizes = {img["id"]: _image_size(img) for img in gt["images"]} if segm else {}
    cat_ids = {c["id"] for c in gt["categories"]}
    # Without categories (proposals) every result gets one the GT has: COCOeval with
    # useCats=0 pools the GT categories and silently drops results of any other category.
    any_cat = gt["categories"][0]["id"] if gt["categories"] else 1
    out = []
    unknown_images: dict[Any, int] = {}
    unknown_cats: dict[Any, int] = {}
    required = ("image_id", "segmentation" if segm else "bbox", "score")
    required += ("category_id",) if check_categories else ()
    for i, d in enumerate(data):
        rec = f"{where}: result {i}"
        if not isinstance(d, Mapping):
            raise CocoFormatError(f"{rec}: not an object")
        for key in required:
            if key not in d:
                hint = " (mask evaluation needs a mask model's results)" if key == "segmentation" else ""
                raise CocoFormatError(f"{rec}: missing '{key}'{hint}")
        problem = _bbox_problem(d["bbox"]) if not segm or "bbox" in d else None
        if problem:
            raise CocoFormatError(f"{rec}: {problem}")
        if not _is_number(d["score"]):
            raise CocoFormatError(f"{rec}: score must be a finite number, got {d['score']!r}")
        if d["image_id"] not in image_ids:
            unknown_images.setdefault(d["image_id"], i)
        elif segm:
            problem = _segmentation_problem(d["segmentation"], *sizes[d["image_id"]], results=True)
            if problem:
                raise CocoFormatError(f"{rec}: {problem}")
        if check_categories and d["category_id"] not in cat_ids:
            unknown_cats.setdefault(d["category_id"], i)
        r: dict[str, Any] = {
            "image_id": d["image_id"],
            "category_id": d["category_id"] if check_categories else any_cat,
        }
        if segm:
            seg = d["segmentation"]
            counts = seg["counts"]
            r["segmentation"] = {
                "size": [int(seg["size"][0]), int(seg["size"][1])],
                "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
            }
        else:
            r["bbox"] = [float(v) for v in d["bbox"]]
        r["score"] = float(d["score"])
        out.append(r)
    if unknown_images:
        listed = ", ".join(f"{k!r} (result {i})" for k, i in list(unknown_images.items())[:5])
        more = f" and {len(unknown_images) - 5} more" if len(unknown_images) > 5 else ""
        raise CocoFormatError(f"{where}: image_id not in the ground truth: {listed}{more}")
    if unknown_cats:
        listed = ", ".join(f"{k!r} (result {i})" for k, i in list(unknown_cats.items())[:5])
        more = f" and {len(unknown_cats) - 5} more" if len(unknown_cats) > 5 else ""
        raise CocoFormatError(
            f"{where}: category_id not in the ground truth: {listed}{more}; valid: {sorted(cat_ids)}"
        )
    return out


# ----------------------------------------------------------------- backends

# "auto": faster-coco-eval when it is installed, else pycocotools.
BACKENDS = ("auto", "pycocotools", "faster-coco-eval")
_INSTALL_HINT = "pip install faster-coco-eval (or: pip install 'sniper-det[fast-eval]')"


def _faster_coco_eval_installed() -> bool:
    try:  # the package imports its C++ extensions, so a broken build counts as not installed
        importlib.import_module("faster_coco_eval")
    except ImportError:
        return False
    return True


def resolve_backend(backend: str = "auto") -> str:
    """The backend that ``backend`` names: ``auto`` picks faster-coco-eval when it is installed."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "pycocotools":
        return backend
    installed = _faster_coco_eval_installed()
    if backend == "auto":
        return "faster-coco-eval" if installed else "pycocotools"
    if not installed:
        raise SniperError(f"evaluation backend 'faster-coco-eval' is not installed: {_INSTALL_HINT}")
    return backend


@dataclass(frozen=True)
class _Accumulated:
    """What the summaries need from ``COCOeval.accumulate()``, whichever backend ran."""

    backend: str
    precision: np.ndarray  # [T, R, K, A, M], -1 where there is no ground truth
    recall: np.ndarray  # [T, K, A, M]
    iou_thrs: np.ndarray  # [T]
    area_labels: list[str]  # [A]
    max_dets: list[int]  # [M]
    cat_ids: list[Any]  # [K] GT category ids in COCOeval's (sorted) order; [] without categories


def _set_params(params: Any, *, use_cats: bool, max_dets: Sequence[int], area_ranges: Mapping) -> None:
    params.useCats = int(use_cats)
    params.maxDets = [int(m) for m in max_dets]
    ranges = {"all": (0, _OPEN), **area_ranges}
    params.areaRng = [[float(lo) ** 2, float(hi) ** 2] for lo, hi in ranges.values()]
    params.areaRngLbl = list(ranges)


def _coco_pair(coco_cls: type, dataset: dict[str, Any], results: list[dict[str, Any]]) -> tuple[Any, Any]:
    """Ground-truth and result ``COCO`` objects of either backend (their APIs agree here)."""
    coco_gt = coco_cls()
    coco_gt.dataset = dataset
    coco_gt.createIndex()
    if results:
        return coco_gt, coco_gt.loadRes(results)
    coco_dt = coco_cls()  # pycocotools' loadRes cannot take an empty list
    coco_dt.dataset = {
        "images": list(dataset["images"]),
        "categories": copy.deepcopy(dataset["categories"]),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_gt, coco_dt


def _run_cocoeval(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    *,
    use_cats: bool,
    max_dets: Sequence[int],
    area_ranges: Mapping[str, tuple[float, float]],
    backend: str = "auto",
    iou_type: str = "bbox",
) -> _Accumulated:
    """COCOeval's evaluate() + accumulate() on the chosen backend, quietly."""
    kw = {"use_cats": use_cats, "max_dets": max_dets, "area_ranges": area_ranges, "iou_type": iou_type}
    if resolve_backend(backend) == "faster-coco-eval":
        return _run_faster_coco_eval(gt, results, **kw)
    return _run_pycocotools(gt, results, **kw)


def _run_pycocotools(gt, results, *, use_cats, max_dets, area_ranges, iou_type="bbox") -> _Accumulated:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = _coco_pair(COCO, gt, results)
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        _set_params(ev.params, use_cats=use_cats, max_dets=max_dets, area_ranges=area_ranges)
        ev.evaluate()
        ev.accumulate()
    p = ev.params
    return _Accumulated(
        backend="pycocotools",
        precision=ev.eval["precision"],
        recall=ev.eval["recall"],
        iou_thrs=p.iouThrs,
        area_labels=list(p.areaRngLbl),
        max_dets=list(p.maxDets),
        cat_ids=list(p.catIds) if use_cats else [],
    )


# faster-coco-eval runs the IoUs and the greedy matching per image in C++ (the part that is
# quadratic in Python), identically to pycocotools. Its C++ accumulate() computes precision
# as tp / (tp + fp), where pycocotools has tp / (tp + fp + eps): values differ in the last bit
# (1.0 vs 0.9999999999999998), and so would AP. So only its per-image matching is used here,
# and pycocotools' own accumulate() runs on those results.


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """faster-coco-eval's COCOeval logs its progress (at INFO) through this function."""


def _with_integer_ids(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_type: str = "bbox"
) -> tuple[dict[str, Any], list[dict[str, Any]], list[Any]]:
    """``gt`` and ``results`` with image and category ids replaced by their rank.

    faster-coco-eval needs integer ids (it casts image ids with ``int()`` and keys its C++
    tables by int64), COCO allows any. Ranks keep the sorted order COCOeval evaluates in,
    which breaks score ties, so results are unchanged. GT annotation ids become 1..N except
    0 stays 0: pycocotools stores the matched GT id and reads 0 as "not matched".
    For ``segm`` the segmentations and the images' height and width come along; results then
    have no ``bbox``. Also returns the category ids in rank order.
    """
    segm = iou_type == "segm"
    img_rank = {v: r for r, v in enumerate(sorted(img["id"] for img in gt["images"]))}
    cat_ids = sorted(c["id"] for c in gt["categories"])
    cat_rank = {v: r for r, v in enumerate(cat_ids)}
    anns = [
        {
            "id": 0 if a["id"] == 0 else n + 1,
            "image_id": img_rank[a["image_id"]],
            "category_id": cat_rank[a["category_id"]],
            "bbox": a["bbox"],
            "area": a["area"],
            "iscrowd": int(a["iscrowd"]),
            **({"segmentation": a["segmentation"]} if segm else {}),
        }
        for n, a in enumerate(gt["annotations"])
    ]
    geometry = "segmentation" if segm else "bbox"
    dets = [
        {
            "image_id": img_rank[d["image_id"]],
            "category_id": cat_rank.get(d["category_id"], -1),  # -1: no categories, nothing to match
            geometry: d[geometry],
            "score": d["score"],
        }
        for d in results
    ]
    images = sorted(gt["images"], key=lambda img: img_rank[img["id"]])
    dataset = {
        "images": [
            {"id": r, **({"height": img["height"], "width": img["width"]} if segm else {})}
            for r, img in enumerate(images)
        ],
        "annotations": anns,
        "categories": [{"id": r} for r in range(len(cat_ids))],
    }
    return dataset, dets, cat_ids


def _run_faster_coco_eval(gt, results, *, use_cats, max_dets, area_ranges, iou_type="bbox") -> _Accumulated:
    from faster_coco_eval import COCO, COCOeval_faster

    dataset, dets, cat_ids = _with_integer_ids(gt, results, iou_type)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # pycocotools gives annotation id 0 the same (odd) meaning without a word; keep it quiet
        warnings.filterwarnings("ignore", message="Found annotation id 0")
        coco_gt, coco_dt = _coco_pair(COCO, dataset, dets)
        ev = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=_quiet, separate_eval=True)
        _set_params(ev.params, use_cats=use_cats, max_dets=max_dets, area_ranges=area_ranges)
        ev.evaluate()  # IoUs and matching; separate_eval keeps the per-image results
    p = ev.params
    shape = (len(cat_ids) if use_cats else 1, len(p.areaRng), len(p.imgIds))
    evals = getattr(ev, "_evalImgs_cpp", None)
    if evals is None or len(evals) != math.prod(shape):
        raise SniperError(
            f"faster-coco-eval {_version('faster_coco_eval')}: unexpected per-image results; "
            "use --backend pycocotools, or install faster-coco-eval>=1.6"
        )
    acc = _accumulate(evals, p, num_cats=len(cat_ids), use_cats=use_cats)
    return _Accumulated(
        backend="faster-coco-eval",
        precision=acc.eval["precision"],
        recall=acc.eval["recall"],
        iou_thrs=p.iouThrs,
        area_labels=list(p.areaRngLbl),
        max_dets=list(p.maxDets),
        cat_ids=cat_ids if use_cats else [],
    )


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"


def _accumulate(evals: Sequence[Any], params: Any, *, num_cats: int, use_cats: bool) -> Any:
    """pycocotools' own ``COCOeval.accumulate()`` on faster-coco-eval's per-image results.

    ``evals[(k * A + a) * I + i]`` holds image ``i``, category ``k``, area range ``a``: the layout
    of pycocotools' ``evalImgs``, which they are converted to. Returns the accumulated COCOeval."""
    from pycocotools.cocoeval import COCOeval

    T = len(params.iouThrs)
    ev = COCOeval(iouType="bbox")
    p = ev.params
    p.imgIds = list(range(len(params.imgIds)))  # the ranks of _with_integer_ids
    p.catIds = list(range(num_cats))
    p.useCats = int(use_cats)
    p.iouThrs, p.recThrs = np.asarray(params.iouThrs), np.asarray(params.recThrs)
    p.maxDets = list(params.maxDets)
    p.areaRng, p.areaRngLbl = [list(r) for r in params.areaRng], list(params.areaRngLbl)
    ev._paramsEval = copy.deepcopy(p)
    ev.evalImgs = [_as_eval_img(e, T) for e in evals]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
    return ev


def _as_eval_img(e: Any, T: int) -> dict[str, Any] | None:
    """One C++ ImageEvaluation as pycocotools' per-image dict (None: no GT and no result)."""
    # (detection_matches, gt_matches, detection_scores, gt_ignores, detection_ignores, ...):
    # the C++ ImageEvaluation's pickled state, the one way to read it from Python
    det_matches, _, det_scores, gt_ignores, det_ignores = e.__getstate__()[:5]
    n = len(det_scores)
    if n == 0 and len(gt_ignores) == 0:
        return None
    return {
        "dtScores": np.asarray(det_scores, dtype=np.float64),  # best first within the image
        "dtMatches": np.asarray(det_matches, dtype=np.float64).reshape(T, n),
        "dtIgnore": np.asarray(det_ignores, dtype=bool).reshape(T, n),
        "gtIgnore": np.asarray(gt_ignores, dtype=bool),
    }


def _mean_defined(s: np.ndarray) -> float:
    """pycocotools' summary: mean over entries > -1, or -1 if there are none."""
    s = s[s > -1]
    return float(np.mean(s)) if s.size else -1.0


def _summary(
    acc: _Accumulated, kind: str, *, iou: float | None = None, area: str = "all", max_det: int
) -> float:
    a = acc.area_labels.index(area)
    m = acc.max_dets.index(max_det)
    if kind == "ap":
        s = acc.precision  # [T, R, K, A, M]
        if iou is not None:
            s = s[np.where(iou == acc.iou_thrs)[0]]
        return _mean_defined(s[:, :, :, a, m])
    s = acc.recall  # [T, K, A, M]
    if iou is not None:
        s = s[np.where(iou == acc.iou_thrs)[0]]
    return _mean_defined(s[:, :, a, m])


def _defined(v: float) -> float | None:
    return None if v == -1 else v


def _check_max_dets(max_dets: Sequence[int]) -> list[int]:
    out = [int(m) for m in max_dets]
    if not out or any(m < 1 for m in out) or len(set(out)) != len(out):
        raise ValueError(f"max detections must be distinct positive integers, got {list(max_dets)}")
    return sorted(out)


def _area_key(prefix: str, name: str) -> str:
    return prefix + _SHORT[name] if name in _SHORT else f"{prefix}_{name}"


COCO_MAX_DETS = (1, 10, 100)


def max_dets_for(gt: PathOrDict) -> tuple[list[int], str | None]:
    """Max detections per image for ``gt``: COCO's (1, 10, 100), plus a larger last value when
    images hold more objects than 100 (AP is computed at the last value, and 100 would cap
    recall); a note saying so, or None."""
    data = load_ground_truth(gt)
    counts: dict[Any, int] = {}
    for a in data.get("annotations", []):
        if not a.get("iscrowd", 0):
            counts[a.get("image_id")] = counts.get(a.get("image_id"), 0) + 1
    most = max(counts.values(), default=0)
    if most <= COCO_MAX_DETS[-1]:
        return list(COCO_MAX_DETS), None
    top = int(math.ceil(1.2 * most / 100.0) * 100)
    note = (
        f"note: up to {most} objects in one image, more than COCO's 100 detections: "
        f"AP is computed with up to {top} detections per image (--max-dets to choose)"
    )
    return [*COCO_MAX_DETS, top], note


def evaluate_detections(
    gt: PathOrDict,
    dets: PathOrList,
    *,
    max_dets: Sequence[int] = (1, 10, 100),
    area_ranges: Mapping[str, tuple[float, float]] | None = None,
    per_class: bool = True,
    backend: str = "auto",
    iou_type: str = "bbox",
) -> dict[str, Any]:
    """COCO box AP (``iou_type="bbox"``) or mask AP (``"segm"``) of ``dets`` against ``gt`` (see
    the module docstring).

    Returns ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR@<m>" for each max-dets value,
    "ARs", "ARm", "ARl", "per_class": {category name: AP}, "stats": [...], ...}``: fractions in
    [0, 1], ``None`` where undefined. Custom ``area_ranges`` (name -> (lo, hi) sqrt-area px)
    give keys ``AP_<name>``/``AR_<name>`` (``small``/``medium``/``large`` keep ``APs``...).
    ``stats`` holds the raw numbers in pycocotools' ``COCOeval.stats`` order (-1 undefined).
    ``backend`` is one of ``BACKENDS``; ``"backend"`` in the result says which one ran, and
    ``"iou_type"`` what was evaluated.
    """
    _check_iou_type(iou_type)
    max_dets = _check_max_dets(max_dets)
    area_ranges = dict(COCO_AREA_RANGES if area_ranges is None else area_ranges)
    gt_data = load_ground_truth(gt, iou_type)
    results = load_results(dets, gt_data, iou_type=iou_type)
    ev = _run_cocoeval(
        gt_data,
        results,
        use_cats=True,
        max_dets=max_dets,
        area_ranges=area_ranges,
        backend=backend,
        iou_type=iou_type,
    )
    top = max_dets[-1]
    stats = [
        _summary(ev, "ap", max_det=top),
        _summary(ev, "ap", iou=0.5, max_det=top),
        _summary(ev, "ap", iou=0.75, max_det=top),
        *[_summary(ev, "ap", area=a, max_det=top) for a in area_ranges],
        *[_summary(ev, "ar", max_det=m) for m in max_dets],
        *[_summary(ev, "ar", area=a, max_det=top) for a in area_ranges],
    ]
    names = (
        ["AP", "AP50", "AP75"]
        + [_area_key("AP", a) for a in area_ranges]
        + [f"AR@{m}" for m in max_dets]
        + [_area_key("AR", a) for a in area_ranges]
    )
    metrics: dict[str, Any] = {k: _defined(v) for k, v in zip(names, stats)}
    if per_class:
        metrics["per_class"] = _per_class_ap(ev, gt_data)
    metrics.update(
        stats=stats,
        max_dets=max_dets,
        area_ranges={k: list(v) for k, v in area_ranges.items()},
        num_images=len(gt_data["images"]),
        num_detections=len(results),
        backend=ev.backend,
        iou_type=iou_type,
    )
    return metrics


def _per_class_ap(ev: _Accumulated, gt: Mapping[str, Any]) -> dict[str, float | None]:
    """AP at IoU 0.50:0.95, all areas, the largest max-dets, by category name."""
    precision = ev.precision  # [T, R, K, A, M]
    a = ev.area_labels.index("all")
    names = [str(c.get("name", c["id"])) for c in gt["categories"]]
    by_id = {c["id"]: n for c, n in zip(gt["categories"], names)}
    dup = {n for n in names if names.count(n) > 1}
    out = {}
    for k, cat_id in enumerate(ev.cat_ids):
        name = by_id[cat_id] if by_id[cat_id] not in dup else f"{by_id[cat_id]} ({cat_id})"
        out[name] = _defined(_mean_defined(precision[:, :, k, a, -1]))
    return out


def evaluate_proposals(
    gt: PathOrDict,
    proposals: PathOrList,
    *,
    max_proposals: int | Sequence[int] = 300,
    area_ranges: Mapping[str, tuple[float, float]] | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """Class-agnostic proposal recall (paper Table 1); ``category_id`` of proposals is ignored.

    Returns ``{"AR", "AR50", "AR75", "AR_0-25", ..., "AR_200-300", "max_proposals": N,
    "num_gt": {range: count}, "by_max_proposals": {"N": {...}}, "backend": ...}`` at the
    largest N given. ``backend`` is one of ``BACKENDS``.
    """
    ks = _check_max_dets([max_proposals] if isinstance(max_proposals, int) else max_proposals)
    area_ranges = dict(PROPOSAL_AREA_RANGES if area_ranges is None else area_ranges)
    gt_data = load_ground_truth(gt)
    results = load_results(proposals, gt_data, check_categories=False)
    ev = _run_cocoeval(
        gt_data, results, use_cats=False, max_dets=ks, area_ranges=area_ranges, backend=backend
    )
    by_k = {}
    for k in ks:
        row = {
            "AR": _summary(ev, "ar", max_det=k),
            "AR50": _summary(ev, "ar", iou=0.5, max_det=k),
            "AR75": _summary(ev, "ar", iou=0.75, max_det=k),
        }
        row.update({f"AR_{a}": _summary(ev, "ar", area=a, max_det=k) for a in area_ranges})
        by_k[str(k)] = {name: _defined(v) for name, v in row.items()}
    metrics: dict[str, Any] = dict(by_k[str(ks[-1])])
    metrics.update(
        max_proposals=ks[-1],
        num_gt=_count_gt(gt_data, {"all": (0, _OPEN), **area_ranges}),
        by_max_proposals=by_k,
        area_ranges={k: list(v) for k, v in area_ranges.items()},
        num_images=len(gt_data["images"]),
        num_proposals=len(results),
        backend=ev.backend,
    )
    return metrics


def _count_gt(gt: Mapping[str, Any], ranges: Mapping[str, tuple[float, float]]) -> dict[str, int]:
    """Non-crowd GT boxes per size range, with pycocotools' inclusive bounds on ``area``."""
    areas = np.array([a["area"] for a in gt["annotations"] if not a.get("iscrowd", 0)], dtype=np.float64)
    return {k: int(np.sum((areas >= lo**2) & (areas <= hi**2))) for k, (lo, hi) in ranges.items()}


# ----------------------------------------------------------------- tables


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def _range_label(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}" if hi < _OPEN else f">={lo:g}"


def _backend_note(m: Mapping[str, Any]) -> str:
    return f" ({m['backend']})" if m.get("backend") else ""


def format_detection_table(m: Mapping[str, Any]) -> str:
    """Fixed-width text table of ``evaluate_detections`` output."""
    top = m["max_dets"][-1]
    areas = m["area_ranges"]
    rows = [("AP", "0.50:0.95", "all", top), ("AP50", "0.50", "all", top), ("AP75", "0.75", "all", top)]
    rows += [(_area_key("AP", a), "0.50:0.95", a, top) for a in areas]
    rows += [(f"AR@{k}", "0.50:0.95", "all", k) for k in m["max_dets"]]
    rows += [(_area_key("AR", a), "0.50:0.95", a, top) for a in areas]
    lines = [
        f"COCO {'mask' if m.get('iou_type') == 'segm' else 'box'} evaluation: {m['num_images']} images, "
        f"{m['num_detections']} detections" + _backend_note(m),
        f"{'metric':<12} {'IoU':<10} {'area':<16} {'maxDets':>7} {'value':>6}",
    ]
    for key, iou, area, k in rows:
        area_txt = area if area == "all" else f"{area} ({_range_label(*areas[area])})"
        lines.append(f"{key:<12} {iou:<10} {area_txt:<16} {k:>7} {_fmt(m[key]):>6}")
    if m.get("per_class"):
        width = max(12, *(len(n) for n in m["per_class"]))
        lines += [
            "",
            f"per-class AP (IoU 0.50:0.95, area all, maxDets {top})",
            f"{'category':<{width}} {'AP':>6}",
        ]
        lines += [f"{name:<{width}} {_fmt(ap):>6}" for name, ap in m["per_class"].items()]
    return "\n".join(lines)


def format_proposal_table(m: Mapping[str, Any]) -> str:
    """Fixed-width text table of ``evaluate_proposals`` output: one column per N proposals."""
    ks = list(m["by_max_proposals"])
    keys = ["AR", "AR50", "AR75"] + [f"AR_{a}" for a in m["area_ranges"]]
    lines = [
        f"proposal recall (class-agnostic): {m['num_images']} images, {m['num_proposals']} proposals, "
        f"{m['num_gt']['all']} GT boxes" + _backend_note(m),
        f"{'metric':<12} {'#GT':>6} " + " ".join(f"{'@' + k:>7}" for k in ks),
    ]
    for key in keys:
        n_gt = m["num_gt"]["all"] if key in ("AR", "AR50", "AR75") else m["num_gt"][key[3:]]
        cells = " ".join(f"{_fmt(m['by_max_proposals'][k][key]):>7}" for k in ks)
        lines.append(f"{key:<12} {n_gt:>6} {cells}")
    return "\n".join(lines)
