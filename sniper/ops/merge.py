"""Merging detections of one image (from several scales) into the final set.

Each strategy is a small frozen object: ``merge(dets) -> dets`` where ``dets`` is a
dict of ``boxes`` ``[N, 4]``, ``scores`` ``[N]``, ``labels`` ``[N]`` tensors. The
output has the same keys, at most ``max_detections`` rows, by decreasing score.
Any other key (e.g. ``masks`` ``[N, 1, M, M]``) is a per-detection tensor that travels by
index with its box, unchanged (Soft-NMS changes scores only).
Strategies are chosen by name from ``MERGES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

from sniper.config import InferConfig
from sniper.ops.softnms import SOFTNMS_METHODS, soft_nms

__all__ = ["MERGES", "Detections", "NMSMerge", "SoftNMSMerge", "build_merge"]

Detections = dict[str, torch.Tensor]


def _check(dets: Detections) -> None:
    missing = {"boxes", "scores", "labels"} - set(dets)
    if missing:
        raise ValueError(f"detections dict is missing {sorted(missing)}")
    n = len(dets["boxes"])
    bad = sorted(k for k, v in dets.items() if len(v) != n)
    if bad:
        raise ValueError(f"detections dict: {bad} must have one row per box ({n})")


@dataclass(frozen=True)
class SoftNMSMerge:
    """Class-wise Soft-NMS (the paper's merge: gaussian, sigma 0.55, at most 200 per image)."""

    method: str = "gaussian"
    sigma: float = 0.55
    iou_threshold: float = 0.3
    score_threshold: float = 0.001
    max_detections: int | None = 200

    def __post_init__(self) -> None:
        if self.method not in SOFTNMS_METHODS:
            raise ValueError(f"unknown soft-NMS method {self.method!r}; valid: {', '.join(SOFTNMS_METHODS)}")

    def __call__(self, dets: Detections) -> Detections:
        _check(dets)
        keep, new_scores = soft_nms(
            dets["boxes"],
            dets["scores"],
            dets["labels"],
            method=self.method,
            sigma=self.sigma,
            iou_threshold=self.iou_threshold,
            score_threshold=self.score_threshold,
            max_detections=self.max_detections,
        )
        out = {k: v[keep] for k, v in dets.items()}
        out["scores"] = new_scores
        return out


@dataclass(frozen=True)
class NMSMerge:
    """Class-wise hard NMS (``torchvision.ops.batched_nms``)."""

    iou_threshold: float = 0.5
    score_threshold: float = 0.001
    max_detections: int | None = 200

    def __call__(self, dets: Detections) -> Detections:
        _check(dets)
        ok = (dets["scores"] >= self.score_threshold).nonzero().squeeze(1)
        boxes, scores, labels = dets["boxes"][ok], dets["scores"][ok], dets["labels"][ok]
        keep = batched_nms(boxes.float(), scores.float(), labels, self.iou_threshold)  # sorted by score
        if self.max_detections is not None:
            keep = keep[: self.max_detections]
        return {k: v[ok][keep] for k, v in dets.items()}


def _softnms_from(cfg: InferConfig) -> SoftNMSMerge:
    return SoftNMSMerge(
        method=cfg.softnms_method,
        sigma=cfg.softnms_sigma,
        iou_threshold=cfg.iou_thresh,
        score_threshold=cfg.score_thresh,
        max_detections=cfg.max_detections,
    )


def _nms_from(cfg: InferConfig) -> NMSMerge:
    return NMSMerge(
        iou_threshold=cfg.iou_thresh, score_threshold=cfg.score_thresh, max_detections=cfg.max_detections
    )


# The complete list of merge strategies: config name -> builder.
MERGES: dict[str, Callable[[InferConfig], Callable[[Detections], Detections]]] = {
    "softnms": _softnms_from,
    "nms": _nms_from,
}


def build_merge(cfg: InferConfig) -> Callable[[Detections], Detections]:
    """The merge strategy named by ``cfg.merge`` (``infer.merge`` in the config)."""
    try:
        builder = MERGES[cfg.merge]
    except KeyError:
        raise ValueError(f"unknown infer.merge {cfg.merge!r}; valid: {', '.join(MERGES)}") from None
    return builder(cfg)
