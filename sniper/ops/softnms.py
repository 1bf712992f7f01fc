"""Soft-NMS (Bodla et al., ICCV 2017), vectorised in torch and batched over classes.

Soft-NMS repeatedly takes the highest-scoring remaining box and, instead of
deleting its overlapping neighbours of the same class, multiplies their scores by
a weight that falls with the IoU:

- gaussian: ``w = exp(-IoU^2 / sigma)`` (SNIPER merges scales with sigma 0.55);
- linear:   ``w = 1 - IoU`` when ``IoU > iou_threshold``, else 1.

A box whose score falls below ``score_threshold`` is dropped (kept: ``>=``). Classes never
interact, so each iteration takes the current maximum of *every* class at once
(a segment arg-max over the class index) and decays each remaining box by its
IoU with its own class's pick: O(N) tensor work per iteration and as many
iterations as the largest class needs, not as many as there are boxes. The
result is the same as running the sequential algorithm once per class.

Speed-ups that do not change the result:

- a class stops after ``max_detections`` picks (its later picks score lower than
  all of its earlier ones, so they cannot reach the final top ``max_detections``);
- the loop ends when no box of any class is left above the threshold;
- the working set is compacted when half of it is dead, so late iterations are cheap;
- on CPU the loop runs with one intra-op thread (its ops are too small to split).

(Exact score ties are broken by the lower input index everywhere, as the reference does.)

IoU uses continuous coordinates (area = w * h, as ``torchvision.ops.box_iou``);
a pair with zero union has IoU 0.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

__all__ = ["SOFTNMS_METHODS", "soft_nms"]

SOFTNMS_METHODS = ("gaussian", "linear")

# Compact the working set when at most this fraction of it is still alive ...
_COMPACT_FRACTION = 0.5
# ... and it is larger than this (tiny tensors cost the same either way).
_COMPACT_MIN = 64


def _check_inputs(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> None:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"soft_nms: boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    if scores.shape != (n,) or labels.shape != (n,):
        raise ValueError(
            f"soft_nms: scores and labels must have shape [{n}], got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if n and not (torch.isfinite(boxes).all() and torch.isfinite(scores).all()):
        raise ValueError("soft_nms: boxes and scores must be finite (found NaN or inf)")


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str = "gaussian",
    sigma: float = 0.55,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    max_detections: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-wise Soft-NMS over all classes at once.

    Args:
        boxes: ``[N, 4]`` xyxy boxes.
        scores: ``[N]`` scores.
        labels: ``[N]`` integer class labels; boxes of different labels never interact.
        method: ``"gaussian"`` or ``"linear"``.
        sigma: gaussian width (weight ``exp(-IoU^2 / sigma)``).
        iou_threshold: linear method only: decay boxes with IoU above this.
        score_threshold: boxes whose (decayed) score falls below this are dropped.
        max_detections: keep at most this many boxes (the highest new scores).

    Returns:
        ``keep``: int64 ``[K]`` indices into the inputs, ordered by decreasing new score
        (ties by lower index), and ``new_scores``: ``[K]`` the decayed scores of those boxes.
    """
    if method not in SOFTNMS_METHODS:
        raise ValueError(f"unknown soft-NMS method {method!r}; valid: {', '.join(SOFTNMS_METHODS)}")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"soft_nms: sigma must be > 0, got {sigma}")
    if max_detections is not None and max_detections < 0:
        raise ValueError(f"soft_nms: max_detections must be >= 0 or None, got {max_detections}")
    _check_inputs(boxes, scores, labels)
    device = boxes.device
    out_dtype = scores.dtype if scores.is_floating_point() else torch.float32
    empty = (torch.empty(0, dtype=torch.int64, device=device), torch.empty(0, dtype=out_dtype, device=device))
    if boxes.shape[0] == 0 or max_detections == 0:
        return empty

    # Work in float32 at least (float64 inputs stay float64).
    work = torch.promote_types(torch.promote_types(boxes.dtype, scores.dtype), torch.float32)
    with torch.no_grad(), _single_thread_on_cpu(device):
        keep, new_scores, _ = _soft_nms_loop(
            boxes.to(work),
            scores.to(work),
            labels,
            method,
            sigma,
            iou_threshold,
            score_threshold,
            max_detections,
        )
    if keep.numel() == 0:
        return empty
    return keep, new_scores.to(out_dtype)


@contextlib.contextmanager
def _single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """The loop runs thousands of tiny ops; OpenMP fork/join on each costs more than it
    saves, and on a busy machine it stalls for milliseconds per op (measured: 40x slower
    with 2 threads on a loaded 2-core box). So run the loop single-threaded on CPU."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _soft_nms_loop(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    method: str,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
    max_detections: int | None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The loop; returns (keep, new_scores, number of iterations)."""
    device, work = boxes.device, boxes.dtype
    orig = (scores >= score_threshold).nonzero().squeeze(1)  # working row -> input index, ascending
    if orig.numel() == 0:
        return orig, scores[:0], 0
    _, cls = torch.unique(labels[orig], return_inverse=True)  # dense class index 0..C-1
    num_classes = int(cls.max()) + 1
    # Columns (struct of arrays, so every elementwise op below reads contiguous memory):
    # geo = [x1, y1, x2, y2, area] x rows, plus the scores. One extra sentinel row at the
    # end (zero box, score -inf) stands for "no pick", so classes without boxes need no masks.
    b = boxes[orig]
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    geo = torch.cat([b.t(), area[None]], dim=0)
    geo, s, orig = _with_sentinel(geo, scores[orig], orig)
    neg_inf = -math.inf
    tiny = torch.finfo(work).tiny
    class_max = torch.empty(num_classes, dtype=work, device=device)
    pick = torch.empty(num_classes, dtype=torch.int64, device=device)
    picks_done = torch.zeros(num_classes, dtype=torch.int64, device=device)

    kept_idx: list[torch.Tensor] = []
    kept_scores: list[torch.Tensor] = []
    iteration = 0
    n = s.shape[0] - 1
    n_alive = n
    positions = torch.arange(n, device=device)
    while n_alive:
        if n > _COMPACT_MIN and n_alive <= _COMPACT_FRACTION * n:
            live = (s[:n] > neg_inf).nonzero().squeeze(1)
            geo, s, orig = _with_sentinel(geo[:, live], s[live], orig[live])
            cls = cls[live]
            n = live.numel()
            positions = torch.arange(n, device=device)
        alive_s = s[:n]
        # Segment arg-max: the best remaining box of each class (lowest row on ties; row n if none).
        class_max.fill_(neg_inf).scatter_reduce_(0, cls, alive_s, reduce="amax")
        candidate = torch.where(alive_s == class_max.index_select(0, cls), positions, n)
        pick.fill_(n).scatter_reduce_(0, cls, candidate, reduce="amin")
        pick.masked_fill_(class_max == neg_inf, n)
        kept_idx.append(orig.index_select(0, pick))
        kept_scores.append(class_max.clone())

        # Decay every remaining box by its IoU with its own class's pick.
        per_box = geo.index_select(1, pick).index_select(1, cls)  # [5, n] the pick of each box's class
        x1, y1, x2, y2, a = geo[:, :n]
        w = torch.minimum(x2, per_box[2]).sub_(torch.maximum(x1, per_box[0])).clamp_(min=0)
        h = torch.minimum(y2, per_box[3]).sub_(torch.maximum(y1, per_box[1])).clamp_(min=0)
        inter = w.mul_(h)
        union = (a + per_box[4]).sub_(inter).clamp_(min=tiny)
        iou = inter.div_(union)  # 0 where the union is 0 (then inter is 0 too)
        if method == "gaussian":
            weight = iou.mul_(iou).mul_(-1.0 / sigma).exp_()
        else:
            weight = torch.where(iou > iou_threshold, 1.0 - iou, 1.0)
        alive_s.mul_(weight)
        alive_s.masked_fill_(alive_s < score_threshold, neg_inf)
        s.index_fill_(0, pick, neg_inf)  # the picks themselves (and the sentinel)
        iteration += 1
        if max_detections is not None:
            picks_done += class_max > neg_inf
            if iteration >= max_detections:
                # A class's later picks score below all of its earlier ones: once it has
                # max_detections picks, the rest cannot reach the final top max_detections.
                alive_s.masked_fill_((picks_done >= max_detections).index_select(0, cls), neg_inf)
        n_alive = int(torch.count_nonzero(alive_s > neg_inf))

    keep = torch.cat(kept_idx)
    new_scores = torch.cat(kept_scores)
    valid = new_scores > neg_inf
    keep, new_scores = keep[valid], new_scores[valid]
    # Stable sort by decreasing score; ties by lower input index.
    by_index = torch.argsort(keep)
    keep, new_scores = keep[by_index], new_scores[by_index]
    order = torch.sort(new_scores, descending=True, stable=True).indices
    if max_detections is not None:
        order = order[:max_detections]
    return keep[order], new_scores[order], iteration


def _with_sentinel(
    geo: torch.Tensor, scores: torch.Tensor, orig: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append the "no pick" row: a zero box with score -inf and input index -1."""
    geo = torch.cat([geo, geo.new_zeros(geo.shape[0], 1)], dim=1).contiguous()
    scores = torch.cat([scores, scores.new_full((1,), -math.inf)])
    return geo, scores, torch.cat([orig, orig.new_full((1,), -1)])
