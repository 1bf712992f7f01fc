"""Soft-NMS against a plain per-class Python reference, plus the merge strategies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from sniper.config import InferConfig
from sniper.ops.merge import MERGES, NMSMerge, SoftNMSMerge, build_merge
from sniper.ops.softnms import soft_nms


def reference_soft_nms(
    boxes,
    scores,
    labels,
    *,
    method="gaussian",
    sigma=0.55,
    iou_threshold=0.3,
    score_threshold=0.001,
    max_detections=None,
):
    """Textbook Soft-NMS: one class at a time, one box at a time (numpy float64)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    kept: list[tuple[float, int]] = []
    for c in np.unique(labels):
        idx = [i for i in range(len(boxes)) if labels[i] == c and scores[i] >= score_threshold]
        cur = {i: scores[i] for i in idx}
        while cur:
            best = max(cur, key=lambda i: (cur[i], -i))  # highest score, lowest index on ties
            kept.append((cur.pop(best), best))
            bx1, by1, bx2, by2 = boxes[best]
            barea = max(bx2 - bx1, 0.0) * max(by2 - by1, 0.0)
            for i in list(cur):
                x1, y1, x2, y2 = boxes[i]
                inter = max(min(x2, bx2) - max(x1, bx1), 0.0) * max(min(y2, by2) - max(y1, by1), 0.0)
                union = max(x2 - x1, 0.0) * max(y2 - y1, 0.0) + barea - inter
                iou = inter / union if union > 0 else 0.0
                if method == "gaussian":
                    weight = math.exp(-(iou * iou) / sigma)
                else:
                    weight = 1.0 - iou if iou > iou_threshold else 1.0
                cur[i] *= weight
                if cur[i] < score_threshold:
                    del cur[i]
    kept.sort(key=lambda t: (-t[0], t[1]))
    if max_detections is not None:
        kept = kept[:max_detections]
    keep = np.array([k for _, k in kept], dtype=np.int64)
    new_scores = np.array([s for s, _ in kept], dtype=np.float64)
    return keep, new_scores


def random_detections(rng: np.random.Generator, n: int, num_classes: int, size: float = 100.0):
    """Clustered boxes (so that many overlap) with random scores and labels."""
    centers = rng.uniform(0, size, (max(n // 6, 1), 2))
    c = centers[rng.integers(0, len(centers), n)] + rng.normal(0, size * 0.03, (n, 2))
    wh = rng.uniform(size * 0.05, size * 0.3, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
    scores = rng.uniform(0, 1, n)
    labels = rng.integers(0, num_classes, n)
    return boxes, scores, labels


def run_both(boxes, scores, labels, dtype=torch.float64, **kw):
    keep, new = soft_nms(
        torch.as_tensor(boxes, dtype=dtype),
        torch.as_tensor(scores, dtype=dtype),
        torch.as_tensor(labels, dtype=torch.int64),
        **kw,
    )
    ref_keep, ref_new = reference_soft_nms(boxes, scores, labels, **kw)
    return keep.numpy(), new.numpy(), ref_keep, ref_new


def assert_same(boxes, scores, labels, dtype=torch.float64, atol=1e-9, **kw):
    keep, new, ref_keep, ref_new = run_both(boxes, scores, labels, dtype=dtype, **kw)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, ref_keep)
    np.testing.assert_allclose(new, ref_new, rtol=0, atol=atol)


# ----------------------------------------------------------------- random inputs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_matches_reference_fixed_seeds(seed, method):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 400))
    boxes, scores, labels = random_detections(rng, n, num_classes=int(rng.integers(1, 8)))
    assert_same(boxes, scores, labels, method=method, iou_threshold=0.3, score_threshold=0.001)


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_float32(seed):
    rng = np.random.default_rng(100 + seed)
    boxes, scores, labels = random_detections(rng, 300, num_classes=4)
    assert_same(boxes, scores, labels, dtype=torch.float32, atol=1e-5, method="gaussian")


@pytest.mark.parametrize("max_det", [1, 7, 50, 1000])
def test_max_detections_is_top_of_full_result(max_det):
    rng = np.random.default_rng(7)
    boxes, scores, labels = random_detections(rng, 300, num_classes=3)
    assert_same(boxes, scores, labels, max_detections=max_det)
    keep, new, _, _ = run_both(boxes, scores, labels, max_detections=max_det)
    full_keep, full_new, _, _ = run_both(boxes, scores, labels)
    assert len(keep) == min(max_det, len(full_keep))
    np.testing.assert_array_equal(keep, full_keep[:max_det])


@settings(max_examples=min(60, settings.default.max_examples), deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 80),
    num_classes=st.integers(1, 5),
    method=st.sampled_from(["gaussian", "linear"]),
    sigma=st.floats(0.1, 2.0),
    iou_threshold=st.floats(0.0, 0.9),
    score_threshold=st.sampled_from([0.0, 0.001, 0.05, 0.3]),
    max_detections=st.one_of(st.none(), st.integers(0, 40)),
)
def test_matches_reference_hypothesis(
    seed, n, num_classes, method, sigma, iou_threshold, score_threshold, max_detections
):
    rng = np.random.default_rng(seed)
    boxes, scores, labels = random_detections(rng, n, num_classes)
    # Exact-tie breaking is defined (lower index first) but float rounding could reorder near-ties
    # between the two implementations; distinct, well-separated scores keep the test exact.
    scores = (rng.permutation(n) + 1) / (n + 1) if n else scores
    assert_same(
        boxes,
        scores,
        labels,
        method=method,
        sigma=sigma,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        max_detections=max_detections,
    )


# ----------------------------------------------------------------- edge cases


def test_empty():
    keep, new = soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert keep.shape == (0,) and new.shape == (0,)
    assert keep.dtype == torch.int64


def test_one_box():
    keep, new = soft_nms(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.7]), torch.tensor([3]))
    assert keep.tolist() == [0]
    assert new.tolist() == pytest.approx([0.7])


def test_all_below_threshold():
    keep, new = soft_nms(
        torch.tensor([[0.0, 0, 10, 10], [5, 5, 9, 9]]),
        torch.tensor([0.01, 0.02]),
        torch.tensor([1, 1]),
        score_threshold=0.05,
    )
    assert keep.numel() == 0 and new.numel() == 0


def test_score_threshold_drops_decayed_boxes():
    # Two identical boxes: the second decays by exp(-1/0.55) = 0.162.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.5])
    labels = torch.tensor([0, 0])
    keep, new = soft_nms(boxes, scores, labels, score_threshold=0.001)
    assert keep.tolist() == [0, 1]
    assert new[1].item() == pytest.approx(0.5 * math.exp(-1 / 0.55), rel=1e-6)
    keep, _ = soft_nms(boxes, scores, labels, score_threshold=0.1)
    assert keep.tolist() == [0]


def test_identical_boxes_and_scores():
    boxes = torch.tensor([[1.0, 1, 5, 5]] * 4)
    scores = torch.full((4,), 0.8)
    labels = torch.zeros(4, dtype=torch.int64)
    keep, new = soft_nms(boxes, scores, labels, method="linear", iou_threshold=0.3)
    # linear: IoU 1 -> weight 0, so only the first (lowest index) survives.
    assert keep.tolist() == [0]
    keep, new = soft_nms(boxes, scores, labels, method="gaussian", score_threshold=0.0)
    assert keep.tolist() == [0, 1, 2, 3]
    w = math.exp(-1 / 0.55)
    assert new.tolist() == pytest.approx([0.8, 0.8 * w, 0.8 * w**2, 0.8 * w**3], rel=1e-5)


def test_classes_do_not_interact():
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3)
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 1, 2])
    keep, new = soft_nms(boxes, scores, labels, method="linear")
    assert keep.tolist() == [0, 1, 2]
    assert new.tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_all_same_class_equals_single_class_of_mixed_labels():
    rng = np.random.default_rng(3)
    boxes, scores, _ = random_detections(rng, 120, 1)
    assert_same(boxes, scores, np.zeros(120, dtype=np.int64), method="gaussian")
    assert_same(boxes, scores, np.full(120, 42, dtype=np.int64), method="linear", iou_threshold=0.1)


def test_linear_threshold_is_strict():
    # IoU exactly 0.5 with iou_threshold 0.5: not decayed.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 5]])
    keep, new = soft_nms(
        boxes, torch.tensor([0.9, 0.6]), torch.tensor([0, 0]), method="linear", iou_threshold=0.5
    )
    assert new.tolist() == pytest.approx([0.9, 0.6])
    keep, new = soft_nms(
        boxes, torch.tensor([0.9, 0.6]), torch.tensor([0, 0]), method="linear", iou_threshold=0.4
    )
    assert new.tolist() == pytest.approx([0.9, 0.3])


def test_degenerate_boxes_do_not_produce_nan():
    boxes = torch.tensor([[5.0, 5, 5, 5], [5.0, 5, 5, 5], [0, 0, 10, 10]])
    keep, new = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 0]))
    assert torch.isfinite(new).all()
    assert keep.tolist() == [0, 1, 2]


def test_large_many_classes_matches_reference():
    rng = np.random.default_rng(11)
    boxes, scores, labels = random_detections(rng, 2000, num_classes=80, size=600)
    assert_same(boxes, scores, labels, max_detections=200)


def test_bad_inputs():
    with pytest.raises(ValueError, match="gaussian, linear"):
        soft_nms(torch.zeros(1, 4), torch.zeros(1), torch.zeros(1, dtype=torch.int64), method="hard")
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        soft_nms(torch.zeros(3), torch.zeros(1), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="finite"):
        soft_nms(torch.tensor([[0.0, 0, float("nan"), 1]]), torch.ones(1), torch.zeros(1, dtype=torch.int64))


class DeviceWatch(TorchFunctionMode):
    """Notes every torch call that could put data on another device than the inputs': copies to
    the host (``.cpu()``, ``.to("cpu")``, ``.numpy()``, ``.tolist()``) and new tensors made
    without ``device=`` (they land on the default device, the CPU). On a CPU-only machine these are
    invisible in the outputs' ``.device``; on a GPU they are transfers, or device-mismatch errors."""

    FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.arange, torch.tensor,
                 torch.as_tensor, torch.linspace, torch.eye, torch.rand, torch.randn, torch.randint}  # fmt: skip
    HOST = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist}

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", repr(func))
        if func in self.HOST:
            self.moves.append(name)
        elif func is torch.Tensor.to and any(isinstance(a, (str, torch.device)) for a in (*args[1:], kwargs.get("device"))):
            self.moves.append(f"to({args[1:]}, {kwargs})")
        elif (
            func in self.FACTORIES
            and kwargs.get("device") is None
            and not (args and torch.is_tensor(args[0]))
            and torch.is_tensor(out)
            and out.dim() > 0
        ):
            self.moves.append(f"{name} without device=")
        return out


def test_keeps_device_and_dtypes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]], dtype=torch.float16)
    keep, new = soft_nms(boxes, torch.tensor([0.5, 0.4], dtype=torch.float16), torch.tensor([1, 1]))
    assert new.dtype == torch.float16 and keep.dtype == torch.int64
    # Nothing leaves the inputs' device, on every path (picks, empty results, max_detections)
    rng = np.random.default_rng(4)
    b, s, lab = (torch.as_tensor(x) for x in random_detections(rng, 150, num_classes=3))
    cases = [
        dict(),
        dict(method="linear", max_detections=10),
        dict(score_threshold=2.0),  # nothing above the threshold
        dict(max_detections=0),
    ]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        inputs = b.to(device), s.float().to(device), lab.to(device)
        for kw in cases:
            watch = DeviceWatch()
            with watch:
                keep, new = soft_nms(*inputs, **kw)
            assert watch.moves == [], (kw, watch.moves)
            assert keep.device.type == new.device.type == device, kw
            assert keep.dtype == torch.int64 and new.dtype == torch.float32
    # no input data at all: the empty result is made on the inputs' device (meta), with their dtype
    for dtype in (torch.float16, torch.float64):
        keep, new = soft_nms(
            torch.empty(0, 4, device="meta", dtype=dtype),
            torch.empty(0, device="meta", dtype=dtype),
            torch.empty(0, device="meta", dtype=torch.int64),
        )
        assert keep.device.type == new.device.type == "meta"
        assert keep.dtype == torch.int64 and new.dtype == dtype and keep.shape == new.shape == (0,)


# ----------------------------------------------------------------- merge strategies


def _dets(n=200, num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    boxes, scores, labels = random_detections(rng, n, num_classes)
    return {
        "boxes": torch.as_tensor(boxes, dtype=torch.float32),
        "scores": torch.as_tensor(scores, dtype=torch.float32),
        "labels": torch.as_tensor(labels + 1, dtype=torch.int64),
    }


def test_build_merge_from_config():
    m = build_merge(InferConfig())
    assert isinstance(m, SoftNMSMerge)
    assert (m.method, m.sigma, m.score_threshold, m.max_detections) == ("gaussian", 0.55, 0.001, 200)
    m = build_merge(InferConfig(merge="nms", iou_thresh=0.6, max_detections=50))
    assert isinstance(m, NMSMerge) and m.iou_threshold == 0.6 and m.max_detections == 50
    assert set(MERGES) == {"softnms", "nms"}


def test_build_merge_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="nms, softnms|softnms, nms"):
        build_merge(InferConfig(merge="wbf"))
    with pytest.raises(ValueError, match="gaussian, linear"):
        build_merge(InferConfig(softnms_method="hard"))


def test_softnms_merge_output():
    dets = _dets()
    out = SoftNMSMerge(max_detections=30)(dets)
    assert set(out) == {"boxes", "scores", "labels"}
    assert out["boxes"].shape == (30, 4) and out["scores"].shape == (30,) and out["labels"].shape == (30,)
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])
    # the textbook reference, with the merge's defaults (gaussian, sigma 0.55, score >= 0.001)
    keep, new = reference_soft_nms(
        dets["boxes"].double(), dets["scores"].double(), dets["labels"], sigma=0.55, max_detections=30
    )
    assert torch.equal(out["boxes"], dets["boxes"][keep])
    assert torch.equal(out["labels"], dets["labels"][keep])
    np.testing.assert_allclose(out["scores"].numpy(), new, rtol=0, atol=1e-5)


def test_nms_merge_matches_torchvision():
    from torchvision.ops import batched_nms

    dets = _dets()
    out = NMSMerge(iou_threshold=0.5, score_threshold=0.2, max_detections=25)(dets)
    ok = dets["scores"] >= 0.2
    keep = batched_nms(dets["boxes"][ok], dets["scores"][ok], dets["labels"][ok], 0.5)[:25]
    assert torch.equal(out["boxes"], dets["boxes"][ok][keep])
    assert torch.equal(out["scores"], dets["scores"][ok][keep])
    assert len(out["scores"]) == 25


@pytest.mark.parametrize("merge", [SoftNMSMerge(), NMSMerge()])
def test_merge_empty(merge):
    out = merge(
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    )
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].shape == (0,)


def test_loop_stops_early():
    """The speed-ups must engage: one pick per class per iteration, classes stop at max_detections."""
    from sniper.ops.softnms import _soft_nms_loop

    rng = np.random.default_rng(5)
    boxes, scores, labels = random_detections(rng, 400, num_classes=4)
    b, s = torch.as_tensor(boxes), torch.as_tensor(scores)
    lab = torch.as_tensor(labels)
    args = ("gaussian", 0.55, 0.3, 0.0)
    keep, _, iters = _soft_nms_loop(b, s, lab, *args, None)
    assert len(keep) == 400
    assert iters == int(torch.bincount(lab).max())  # all classes in parallel
    keep, _, iters = _soft_nms_loop(b, s, lab, *args, 10)
    assert iters == 10 and len(keep) == 10


# ----------------------------------------------------------------- input rules, by hand


def test_input_errors_name_the_problem():
    lab = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\], got \(3, 5\)"):
        soft_nms(torch.zeros(3, 5), torch.zeros(3), lab)
    with pytest.raises(ValueError, match=r"must have shape \[3\], got \(2,\) and \(3,\)"):
        soft_nms(torch.zeros(3, 4), torch.zeros(2), lab)
    with pytest.raises(ValueError, match=r"must be finite \(found NaN or inf\)"):
        soft_nms(torch.zeros(3, 4), torch.tensor([0.5, float("inf"), 0.1]), lab)
    with pytest.raises(ValueError, match="sigma must be > 0, got 0.0"):
        soft_nms(torch.zeros(3, 4), torch.ones(3), lab, sigma=0.0)
    # sigma only matters for the gaussian method
    keep, new = soft_nms(torch.zeros(3, 4), torch.ones(3), lab, method="linear", sigma=0.0)
    assert keep.tolist() == [0, 1, 2]


def test_integer_scores_give_float_scores_and_the_threshold_is_inclusive():
    boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    keep, new = soft_nms(boxes, torch.tensor([2, 1]), torch.tensor([0, 0]), score_threshold=1.0)
    assert keep.tolist() == [0, 1] and new.dtype == torch.float32 and new.tolist() == [2.0, 1.0]
    keep, new = soft_nms(boxes, torch.tensor([0.5, 0.25]), torch.tensor([0, 0]), score_threshold=0.25)
    assert keep.tolist() == [0, 1] and new.tolist() == [0.5, 0.25]  # 0.25 >= 0.25: kept


def test_exact_ties_come_out_by_lower_index_even_when_many():
    # 3000 one-box classes, all scoring 0.5: one iteration, then a sort of 3000 exact ties
    n = 3000
    boxes = torch.tensor([[0.0, 0, 10, 10]]).repeat(n, 1)
    labels = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    keep, new = soft_nms(boxes, torch.full((n,), 0.5), labels)
    assert keep.tolist() == list(range(n)) and (new == 0.5).all()
