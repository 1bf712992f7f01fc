"""Chip engine: geometry properties against a dense oracle, and exact hand-made cases."""

from __future__ import annotations

import doctest

import chip_oracle as oracle  # tests/ is on sys.path under pytest
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sniper.chips as chips_mod
from sniper.chips import (
    Chip,
    ImageChips,
    candidate_windows,
    chip_labels,
    chips_columns,
    epoch_chips,
    epoch_stride,
    negative_chips,
    positive_chips,
    sample_negatives,
    selection_mask,
    window_positions,
    window_priority,
)
from sniper.config import ChipConfig
from sniper.scales import Scale, scaled_size

# ``settings.default.max_examples``: the mutation profile (tests/conftest.py) lowers it.
SETTINGS = settings(
    max_examples=min(60, settings.default.max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def one_scale(factor=1.0, lo=None, hi=None, **kw) -> ChipConfig:
    return ChipConfig(
        scales=[Scale(factor=factor, valid_range=(lo, hi))], neg_min_proposals=[kw.pop("m", 2)], **kw
    )


# ----------------------------------------------------------------- strategies


@st.composite
def scene(draw, max_boxes=60):
    """A random image, GT boxes (some crowd, some outside the image) and a chip config."""
    w = draw(st.integers(20, 2500))
    h = draw(st.integers(20, 2500))
    n = draw(st.integers(0, max_boxes))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-30, [w, h], (n, 2))
    wh = np.exp(rng.uniform(np.log(1), np.log(600), (n, 2)))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    crowd = rng.random(n) < 0.1
    K = draw(st.sampled_from([128, 256, 512]))
    d = draw(st.integers(8, K // 2))
    scales = [
        Scale(factor=draw(st.floats(1.0, 3.0)), valid_range=(None, 80.0)),
        Scale(factor=draw(st.floats(0.5, 1.5)), valid_range=(32.0, 150.0)),
        Scale(longest=draw(st.integers(200, 800)), valid_range=(120.0, None)),
    ]
    cfg = ChipConfig(chip_size=K, stride=d, scales=scales, min_box_size=draw(st.sampled_from([0.0, 2.0])))
    return boxes, crowd, int(w), int(h), cfg, seed


def inside(boxes: np.ndarray, win: np.ndarray) -> np.ndarray:
    """(boxes, windows) bool: box completely inside window (same frame)."""
    return (
        (boxes[:, None, 0] >= win[None, :, 0])
        & (boxes[:, None, 1] >= win[None, :, 1])
        & (boxes[:, None, 2] <= win[None, :, 2])
        & (boxes[:, None, 3] <= win[None, :, 3])
    )


def scaled_clipped(boxes, w, h, f, W, H):
    return oracle.scaled_boxes(boxes, w, h, f, W, H)[1]


# ---------------------------------------------------------------- windows


def test_window_positions_regular_edge_and_small():
    assert window_positions(1000, 512, 32).tolist() == list(range(0, 481, 32)) + [488]
    assert window_positions(576, 512, 32).tolist() == [0, 32, 64]  # grid ends at the edge: no extra
    assert window_positions(512, 512, 32).tolist() == [0]
    assert window_positions(300, 512, 32).tolist() == [0]


def test_small_image_gets_one_window_spanning_it():
    cfg = one_scale(1.0)
    (win,) = candidate_windows(300, 200, cfg)
    assert win.tolist() == [[0, 0, 300, 200]]
    pos = positive_chips(np.array([[10.0, 10, 290, 190]]), 300, 200, cfg)
    assert pos.windows.tolist() == [[0, 0, 300, 200]]
    assert pos.chips()[0].size_px() == (300, 200)


def test_one_axis_small_other_axis_gridded_with_edge_window():
    cfg = one_scale(1.0, stride=100)
    (win,) = candidate_windows(1100, 300, cfg)
    assert win[:, 0].tolist() == [0, 100, 200, 300, 400, 500, 588]
    assert (win[:, 1] == 0).all() and (win[:, 3] == 300).all() and (win[:, 2] - win[:, 0] == 512).all()


@SETTINGS
@given(scene())
def test_candidate_windows_match_oracle_and_stay_inside(sc):
    _, _, w, h, cfg, _ = sc
    for s, win in enumerate(candidate_windows(w, h, cfg)):
        f, W, H = oracle.scale_info(w, h, cfg, s)
        assert np.array_equal(win, oracle.windows(W, H, cfg.chip_size, cfg.stride))
        assert (win[:, :2] >= 0).all() and (win[:, 2] <= W).all() and (win[:, 3] <= H).all()
        assert ((win[:, 2:] - win[:, :2]) <= cfg.chip_size).all()
        # the last column and row are flush with the right and bottom edges
        assert win[:, 2].max() == W and win[:, 3].max() == H


# ---------------------------------------------------------------- positives


def test_exact_greedy_cover():
    # One row of windows at x = 0, 256, 512 (image 1024 x 512, K 512, d 256).
    cfg = one_scale(1.0, stride=256)
    gt = np.array(
        [
            [10, 10, 100, 100],  # A: only window 0
            [300, 10, 400, 100],  # B: windows 0, 256
            [420, 10, 500, 100],  # D: windows 0, 256
            [600, 10, 700, 100],  # C: windows 256, 512
            [610, 200, 740, 300],  # C2: windows 256, 512
        ],
        dtype=float,
    )
    pos = positive_chips(gt, 1024, 512, cfg)
    assert pos.windows.tolist() == [[256, 0, 768, 512], [0, 0, 512, 512]]
    assert pos.count.tolist() == [4, 1]
    assert pos.negative.tolist() == [False, False]
    assert np.allclose(pos.boxes, pos.windows)  # factor 1: original == scaled


def test_fit_rule_guarantees_coverage_boundary():
    cfg = one_scale(1.0, stride=32)  # fit: side <= 512 - 32 = 480 on axes longer than K
    gt = np.array([[5, 5, 485, 100], [5, 5, 486, 100]], dtype=float)
    assert selection_mask(gt, 2000, 2000, cfg).tolist() == [[True, False]]
    # on an axis no longer than K any box fits: a 500 px image is one window
    assert selection_mask(np.array([[0, 0, 500, 500.0]]), 500, 500, cfg).tolist() == [[True]]


def test_selection_excludes_crowd_out_of_range_and_degenerate():
    cfg = one_scale(2.0, lo=10, hi=50, min_box_size=2.0)
    gt = np.array(
        [
            [0, 0, 20, 20],  # in range
            [0, 0, 5, 5],  # too small for the range
            [0, 0, 60, 60],  # too large
            [0, 0, 0.8, 200],  # degenerate at x2: 1.6 px < 2 (sqrt area 12.6 in range)
            [0, 0, 20, 20],  # crowd
        ],
        dtype=float,
    )
    m = selection_mask(gt, 800, 800, cfg, iscrowd=np.array([0, 0, 0, 0, 1], bool))
    assert m.tolist() == [[True, False, False, False, False]]


@SETTINGS
@given(scene())
def test_positive_chips_cover_every_valid_box_and_match_dense_oracle(sc):
    boxes, crowd, w, h, cfg, seed = sc
    pos = positive_chips(boxes, w, h, cfg, iscrowd=crowd, seed=seed)
    ref = oracle.positive_chips(boxes, w, h, cfg, iscrowd=crowd, seed=seed)
    mask = selection_mask(boxes, w, h, cfg, iscrowd=crowd)
    for s in range(len(cfg.scales)):
        f, W, H = oracle.scale_info(w, h, cfg, s)
        assert np.array_equal(mask[s], oracle.valid_mask(boxes, w, h, cfg, s, cfg.stride, crowd))
        mine = pos.windows[pos.scale_index == s]
        assert np.array_equal(mine, ref[s][0]) and np.array_equal(pos.count[pos.scale_index == s], ref[s][1])
        # post-condition: every valid box completely inside a chip of its scale
        sb = scaled_clipped(boxes, w, h, f, W, H)[mask[s]]
        if len(sb):
            assert inside(sb, mine.astype(float)).any(axis=1).all()
        else:
            assert len(mine) == 0
        # chips inside the scaled image, at most K, reported in original coordinates
        assert (mine[:, :2] >= 0).all() and (mine[:, 2] <= W).all() and (mine[:, 3] <= H).all()
        assert ((mine[:, 2:] - mine[:, :2]) <= cfg.chip_size).all()
        assert np.allclose(pos.boxes[pos.scale_index == s] * f, mine)
        assert np.allclose(pos.scale[pos.scale_index == s], f)
    assert (pos.count >= 1).all() and pos.count.sum() == mask.sum()  # each box counted once per scale


@settings(max_examples=min(25, settings.default.max_examples), deadline=None)
@given(scene(max_boxes=50))
def test_bitmask_and_rectangle_greedy_pick_the_same_chips(sc):
    boxes, crowd, w, h, cfg, seed = sc
    fast = positive_chips(boxes, w, h, cfg, iscrowd=crowd, seed=seed)
    old = chips_mod.BITMASK_MAX_BOXES
    chips_mod.BITMASK_MAX_BOXES = -1
    try:
        slow = positive_chips(boxes, w, h, cfg, iscrowd=crowd, seed=seed)
    finally:
        chips_mod.BITMASK_MAX_BOXES = old
    assert np.array_equal(fast.windows, slow.windows) and np.array_equal(fast.count, slow.count)


def test_determinism_for_a_seed_and_variation_across_seeds():
    cfg = ChipConfig()
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, [900, 700], (40, 2))
    gt = np.concatenate([xy, xy + rng.uniform(5, 60, (40, 2))], axis=1)
    a = positive_chips(gt, 1000, 800, cfg, seed=(1, 2, 3))
    b = positive_chips(gt, 1000, 800, cfg, seed=(1, 2, 3))
    assert np.array_equal(a.windows, b.windows)
    others = {positive_chips(gt, 1000, 800, cfg, seed=s).windows.tobytes() for s in range(8)}
    assert len(others) > 1  # ties are broken differently by different seeds


def test_chip_round_trip_and_window():
    c = Chip(10.0, 20.0, 10.0 + 512 / 1.667, 20.0 + 300 / 1.667, scale=1.667, scale_index=1)
    b = np.array([[12.0, 25.0, 40.5, 60.25], [10.0, 20.0, 11.0, 21.0]])
    assert np.allclose(c.to_image(c.to_chip(b)), b)
    assert np.allclose(c.to_chip(b)[1], [0, 0, 1.667, 1.667])
    assert c.size_px() == (512, 300)
    with pytest.raises(ValueError, match="kind"):
        Chip(0, 0, 1, 1, scale=1.0, scale_index=0, kind="both")


@SETTINGS
@given(scene(max_boxes=20), st.lists(st.floats(-1e4, 1e4), min_size=4, max_size=4))
def test_round_trip_original_chip_for_produced_chips(sc, pt):
    boxes, crowd, w, h, cfg, seed = sc
    pos = positive_chips(boxes, w, h, cfg, iscrowd=crowd, seed=seed)
    b = np.array([pt])
    for c, win in zip(pos.chips(), pos.windows):
        assert c.window == tuple(win.tolist())
        assert np.allclose(c.to_image(c.to_chip(b)), b, atol=1e-6)
        # the chip's own corners map to (0, 0, w, h) in chip pixels
        assert np.allclose(c.to_chip(np.array([c.x1, c.y1, c.x2, c.y2])), [0, 0, *c.size_px()], atol=1e-6)


def test_bad_input_is_a_clear_error():
    cfg = ChipConfig()
    with pytest.raises(ValueError, match=r"gt_boxes\[1\] is not finite"):
        positive_chips(np.array([[0, 0, 10, 10], [0, np.nan, 5, 5]]), 100, 100, cfg)
    with pytest.raises(ValueError, match="shape"):
        positive_chips(np.zeros((3, 5)), 100, 100, cfg)
    with pytest.raises(ValueError, match="stride"):
        positive_chips(np.zeros((1, 4)), 100, 100, cfg, stride=600)
    assert len(positive_chips(np.zeros((0, 4)), 100, 100, cfg)) == 0


# ---------------------------------------------------------------- labels


def test_chip_labels_exact():
    cfg = one_scale(2.0, lo=10, hi=100, min_box_size=2.0)
    chip = Chip(100.0, 100.0, 356.0, 356.0, scale=2.0, scale_index=0)  # window 200..712 scaled
    gt = np.array(
        [
            [110, 120, 150, 160],  # valid
            [110, 120, 150, 160],  # crowd -> ignore
            [90, 120, 150, 160],  # truncated at the left -> ignore
            [200, 200, 205, 205],  # sqrt area 5 < 10 -> ignore
            [200, 300, 355, 300.9],  # in range but 1.8 chip px tall -> ignore (too small)
            [400, 400, 450, 450],  # outside -> absent
            [356, 120, 400, 160],  # touches the right border only -> absent
        ],
        dtype=float,
    )
    lab = chip_labels(chip, gt, np.arange(7) + 1, np.array([0, 1, 0, 0, 0, 0, 0], bool), cfg)
    assert lab.gt_index.tolist() == [0, 1, 2, 3, 4]
    assert lab.valid.tolist() == [True, False, False, False, False]
    assert np.array_equal(lab.ignore, ~lab.valid)
    assert lab.classes.tolist() == [1, 2, 3, 4, 5]
    assert lab.boxes.dtype == np.float32
    assert np.allclose(lab.boxes[0], [20, 40, 100, 120]) and np.allclose(lab.boxes[2], [0, 40, 100, 120])
    assert lab.valid_range.tolist() == [20.0, 200.0]


@SETTINGS
@given(scene(max_boxes=40))
def test_labels_complete_and_consistent_with_selection(sc):
    boxes, crowd, w, h, cfg, seed = sc
    pos = positive_chips(boxes, w, h, cfg, iscrowd=crowd, seed=seed)
    mask = selection_mask(boxes, w, h, cfg, iscrowd=crowd)
    classes = np.arange(len(boxes))
    clipped = np.clip(boxes, 0, [w, h, w, h])
    valid_somewhere = np.zeros_like(mask)
    for c in pos.chips():
        lab = chip_labels(c, boxes, classes, crowd, cfg, image_size=(w, h))
        assert not (lab.valid & lab.ignore).any() and (lab.valid | lab.ignore).all()
        assert len(np.unique(lab.gt_index)) == len(lab.gt_index)
        # exactly the GT boxes that overlap the chip with positive area are listed
        ref = oracle.labels(c.window, c.scale, cfg.scales[c.scale_index], clipped, crowd, cfg, (w, h))
        listed = [i for i, r in enumerate(ref) if r is not None]
        assert lab.gt_index.tolist() == listed
        assert lab.valid.tolist() == [ref[i] == "valid" for i in listed]
        cw, ch = c.size_px()
        assert (
            (lab.boxes[:, :2] >= 0).all() and (lab.boxes[:, 2] <= cw).all() and (lab.boxes[:, 3] <= ch).all()
        )
        valid_somewhere[c.scale_index, lab.gt_index[lab.valid]] = True
    # every box selected at a scale is a valid target of some chip of that scale
    assert not (mask & ~valid_somewhere).any()


# ---------------------------------------------------------------- negatives


def test_negatives_drop_proposals_inside_positive_chips_and_need_more_than_m():
    cfg = one_scale(1.0, m=25)
    gt = np.array([[10.0, 10, 60, 60]])
    pos = positive_chips(gt, 2000, 600, cfg)
    assert pos.windows.tolist() == [[0, 0, 512, 512]]
    covered = np.tile([[100.0, 100, 140, 140]], (40, 1))  # inside the positive chip
    assert len(negative_chips(covered, pos, 2000, 600, cfg)) == 0
    far25 = np.tile([[1500.0, 100, 1540, 140]], (25, 1))
    assert len(negative_chips(far25, pos, 2000, 600, cfg)) == 0  # 25 is not MORE than M = 25
    far26 = np.tile([[1500.0, 100, 1540, 140]], (26, 1))
    neg = negative_chips(np.concatenate([covered, far26]), pos, 2000, 600, cfg)
    assert len(neg) == 1 and neg.count.tolist() == [26] and neg.negative.all()
    assert neg.windows[0, 0] <= 1500 and neg.windows[0, 2] >= 1540


@SETTINGS
@given(scene(max_boxes=10), st.integers(0, 400), st.integers(0, 5))
def test_negative_chips_match_dense_oracle(sc, n_props, m):
    boxes, crowd, w, h, cfg, seed = sc
    cfg.neg_min_proposals = [m, m + 1, m]
    rng = np.random.default_rng(seed + 1)
    xy = rng.uniform(0, [w, h], (n_props, 2))
    props = np.concatenate([xy, xy + np.exp(rng.uniform(1, 5, (n_props, 2)))], axis=1)
    pos = positive_chips(boxes, w, h, cfg, iscrowd=crowd, seed=seed)
    neg = negative_chips(props, pos, w, h, cfg, seed=seed)
    per_scale = [pos.windows[pos.scale_index == s] for s in range(3)]
    ref = oracle.negative_chips(props, per_scale, w, h, cfg, seed=seed)
    for s in range(3):
        assert np.array_equal(neg.windows[neg.scale_index == s], ref[s][0])
        assert (neg.count[neg.scale_index == s] > cfg.neg_min_proposals[s]).all()
        f, W, H = oracle.scale_info(w, h, cfg, s)
        sp = scaled_clipped(props, w, h, f, W, H)
        # a proposal inside a positive chip never makes a negative chip count
        if len(per_scale[s]) and len(sp):
            free = ~inside(sp, per_scale[s].astype(float)).any(axis=1)
            ok = selection_mask(props, w, h, cfg)[s] & free
            assert neg.count[neg.scale_index == s].sum() <= ok.sum()


def test_sample_negatives_reproducible_and_varies_with_epoch():
    pool = ImageChips(
        5,
        np.arange(40, dtype=float).reshape(10, 4),
        np.ones(10),
        np.zeros(10, dtype=np.int64),
        np.ones(10, dtype=bool),
        np.arange(40).reshape(10, 4),
        np.arange(10) + 30,
    )
    a = sample_negatives(pool, 2, seed=0, epoch=3)
    b = sample_negatives(pool, 2, seed=0, epoch=3)
    assert len(a) == 2 and np.array_equal(a.windows, b.windows)
    picks = {sample_negatives(pool, 2, seed=0, epoch=e).count.tobytes() for e in range(10)}
    assert len(picks) > 3
    other_image = {sample_negatives(pool, 2, seed=0, epoch=3, image_id=i).count.tobytes() for i in range(10)}
    assert len(other_image) > 3
    assert len(sample_negatives(pool, 20, seed=0, epoch=0)) == 10
    assert len(sample_negatives(pool, 0, seed=0, epoch=0)) == 0


# ---------------------------------------------------------------- epochs, columns, docs


def test_epoch_stride():
    cfg = ChipConfig()
    assert epoch_stride(cfg, 0, 5) == 32
    cfg.random_stride = [56, 59]
    draws = [epoch_stride(cfg, 1, e) for e in range(40)]
    assert set(draws) <= {56, 57, 58, 59} and len(set(draws)) > 1
    assert draws == [epoch_stride(cfg, 1, e) for e in range(40)]


def test_epoch_chips_columns_for_parquet():
    pa = pytest.importorskip("pyarrow")
    cfg = ChipConfig(random_stride=[56, 59])
    gt = np.array([[10.0, 20, 60, 80], [300, 200, 500, 420]])
    props = np.tile([[400.0, 10, 440, 50]], (30, 1))
    ch = epoch_chips(7, gt, 640, 480, cfg, proposals=props, seed=0, epoch=1)
    assert ch.negative.sum() <= cfg.neg_per_image and (~ch.negative).sum() >= 1
    table = pa.table(chips_columns([ch, ch]))
    assert table.num_rows == 2 * len(ch)
    assert set(table.column_names) >= {"image_id", "kind", "scale", "scale_index", "x1", "y1", "x2", "y2"}
    assert set(table.column("kind").to_pylist()) <= {"pos", "neg"}


def test_coco_like_image_counts():
    # a 640x480 image with one small object: x3 and x1.667 give one chip each, 512-longest one chip
    cfg = ChipConfig()
    pos = positive_chips(np.array([[300.0, 200, 340, 230]]), 640, 480, cfg)
    assert pos.scale_index.tolist() == [0, 1]
    big = positive_chips(np.array([[0.0, 0, 600, 450]]), 640, 480, cfg)
    assert big.scale_index.tolist() == [2] and big.windows.tolist() == [[0, 0, *scaled_size(640, 480, 0.8)]]


def test_module_examples_run():
    failures, tried = doctest.testmod(chips_mod, optionflags=doctest.ELLIPSIS)
    assert tried > 5 and failures == 0


# ---------------------------------------------------------------- tie-break hash (the spec)

M64 = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment
PI_KEY = 0x243F6A8885A308D3  # _mix's start value (hex digits of pi)


def splitmix64_out(state: int) -> int:
    """splitmix64's output function, written from the published algorithm (Steele et al.)."""
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def ref_mix(parts) -> int:
    h = PI_KEY
    for p in parts:
        h = splitmix64_out(((h ^ (p % 2**64)) + GOLDEN) % 2**64)
    return h


def ref_priority(key: int, scale_index: int, n: int) -> list[int]:
    salt = (key ^ (scale_index * GOLDEN)) % 2**64
    out = []
    for i in range(n):
        z = ((i ^ salt) * 0xBF58476D1CE4E5B9) % 2**64
        z ^= z >> 29
        z = (z * 0x94D049BB133111EB) % 2**64
        out.append(z >> 33)
    return out


def test_splitmix64_reference_matches_the_published_vector():
    # splitmix64 seeded with 0: first output 0xE220A8397B1DCDAF (the reference implementation)
    assert splitmix64_out(GOLDEN) == 0xE220A8397B1DCDAF
    # so folding the single part PI_KEY (h ^ p == 0) gives that same number
    assert chips_mod._mix(PI_KEY) == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("seed", [0, 1, 7, -3, 2**64 + 5, (1, 2, 3), (0, 5, 0x5742), [9], np.int64(4)])
def test_mix_folds_each_part_with_splitmix64(seed):
    parts = [int(seed)] if isinstance(seed, int | np.integer) else [int(p) for p in seed]
    assert chips_mod._mix(seed) == ref_mix(parts)


@pytest.mark.parametrize("seed, scale_index", [(0, 0), (3, 2), ((1, 2, 3), -1), (5, -3), ((7, 1, 9), 0x5A4D)])
def test_window_priority_is_the_documented_hash(seed, scale_index):
    key = ref_mix([seed] if isinstance(seed, int) else list(seed))
    pr = window_priority(seed, scale_index, 40)
    assert pr.dtype == np.int64
    assert pr.tolist() == ref_priority(key, scale_index, 40)
    assert ((pr >= 0) & (pr < 2**31)).all()
    # the sub-grid form (an index array) hashes the same window indices
    idx = np.array([39, 0, 17])
    assert chips_mod._priority(key, scale_index, idx).tolist() == [
        ref_priority(key, scale_index, 40)[i] for i in idx
    ]


def test_epoch_stride_draw_is_the_documented_hash():
    cfg = ChipConfig(random_stride=[56, 59])
    for seed, epoch in [(0, 0), (1, 3), (7, 11)]:
        assert epoch_stride(cfg, seed, epoch) == 56 + ref_mix([seed, epoch, 0x5742]) % 4
    cfg.random_stride = [40, 40]  # lo == hi is allowed
    assert epoch_stride(cfg, 3, 1) == 40
    for bad in ([0, 5], [6, 5], [-2, 4]):
        cfg.random_stride = bad
        with pytest.raises(ValueError, match="0 < lo <= hi"):
            epoch_stride(cfg, 0, 0)


def test_sample_negatives_keeps_the_lowest_priorities_in_pool_order():
    m = 9
    pool = ImageChips(
        4,
        np.arange(4 * m, dtype=float).reshape(m, 4),
        np.ones(m),
        np.zeros(m, dtype=np.int64),
        np.ones(m, dtype=bool),
        np.arange(4 * m).reshape(m, 4),
        np.arange(m) + 100,
    )
    for n, image_id in [(3, None), (1, 2), (8, None)]:
        iid = 4 if image_id is None else image_id
        prio = ref_priority(ref_mix([1, 6, iid]), 0x5A4D, m)
        expected = sorted(sorted(range(m), key=lambda i: (prio[i], i))[:n])
        got = sample_negatives(pool, n, seed=1, epoch=6, image_id=image_id)
        assert got.count.tolist() == [100 + i for i in expected]
        assert got.image_id == 4
    with pytest.raises(ValueError, match=">= 0"):
        sample_negatives(pool, -1, seed=0, epoch=0)
    assert len(sample_negatives(pool, m, seed=0, epoch=0)) == m


# ---------------------------------------------------------------- value types, by hand


def test_chip_rejects_bad_geometry_and_maps_to_float64():
    with pytest.raises(ValueError, match=r"x2 > x1 and y2 > y1, got \(0, 0, 0, 1\)"):
        Chip(0, 0, 0, 1, scale=1.0, scale_index=0)
    with pytest.raises(ValueError, match="positive and finite"):
        Chip(0, 0, 1, 1, scale=0.0, scale_index=0)
    c = Chip(10.0, 20.0, 60.0, 70.0, scale=2.0, scale_index=0)
    b = np.array([[0.0, 0.0, 4.0, 8.0]], dtype=np.float32)
    assert c.to_image(b).dtype == np.float64 and c.to_chip(b).dtype == np.float64
    assert c.to_image(b).tolist() == [[10.0, 20.0, 12.0, 24.0]]


def pool_of(m: int, image_id: int = 3) -> ImageChips:
    return ImageChips(
        image_id,
        np.arange(4 * m, dtype=float).reshape(m, 4) * 2,
        np.full(m, 0.5),
        np.arange(m, dtype=np.int64),
        np.array([i % 2 == 1 for i in range(m)]),
        np.arange(4 * m, dtype=np.int64).reshape(m, 4),
        np.arange(m, dtype=np.int64) + 10,
    )


def test_image_chips_select_concat_and_columns_by_hand():
    a = pool_of(3)
    s = a.select(np.array([2, 0]))
    assert s.windows.tolist() == [[8, 9, 10, 11], [0, 1, 2, 3]]
    assert s.count.tolist() == [12, 10] and s.negative.tolist() == [False, False]
    both = ImageChips.concat([a, s])
    assert both.image_id == 3 and len(both) == 5
    assert both.windows[3:].tolist() == [[8, 9, 10, 11], [0, 1, 2, 3]]
    assert both.scale_index.tolist() == [0, 1, 2, 2, 0]
    assert ImageChips.concat([a], image_id=9).image_id == 9
    empty = ImageChips.concat([])
    assert empty.image_id == 0 and len(empty) == 0
    assert ImageChips.concat([], image_id=4).image_id == 4
    for e in (empty, positive_chips(np.zeros((0, 4)), 100, 100, ChipConfig())):
        assert e.windows.shape == (0, 4) and e.windows.dtype == np.int64
        assert e.scale_index.dtype == np.int64 and e.count.dtype == np.int64 and e.negative.dtype == bool
    cols = a.columns()
    assert cols["x1"].tolist() == [0, 8, 16] and cols["y1"].tolist() == [2, 10, 18]
    assert cols["x2"].tolist() == [4, 12, 20] and cols["y2"].tolist() == [6, 14, 22]
    assert cols["kind"].tolist() == ["pos", "neg", "pos"] and cols["image_id"].tolist() == [3, 3, 3]


def test_inputs_are_named_in_errors_and_masks_accept_int_flags():
    cfg = one_scale(1.0)
    bad = np.array([[0, 0, 10, np.inf]])
    with pytest.raises(ValueError, match=r"^gt_boxes\[0\] is not finite"):
        selection_mask(bad, 100, 100, cfg)
    with pytest.raises(ValueError, match=r"^gt_boxes\[0\] is not finite"):
        chip_labels(Chip(0, 0, 50, 50, scale=1.0, scale_index=0), bad, [1], None, cfg)
    pos = positive_chips(np.array([[0.0, 0, 10, 10]]), 100, 100, cfg)
    with pytest.raises(ValueError, match=r"^proposals\[0\] is not finite"):
        negative_chips(bad, pos, 100, 100, cfg)
    gt = np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    assert selection_mask(gt, 100, 100, cfg, iscrowd=[0, 1]).tolist() == [[True, False]]
    lab = chip_labels(Chip(0, 0, 100, 100, scale=1.0, scale_index=0), gt, [1, 2], [0, 1], cfg)
    assert lab.valid.dtype == bool and lab.valid.tolist() == [True, False]
    assert lab.ignore.tolist() == [False, True]


def test_negatives_drop_proposals_touching_a_positive_chips_edges():
    cfg = one_scale(1.0, m=0)
    pos = positive_chips(np.array([[10.0, 10, 60, 60]]), 2000, 600, cfg)
    assert pos.windows.tolist() == [[0, 0, 512, 512]]
    edges = np.array([[0.0, 0, 40, 40], [472, 472, 512, 512], [0, 472, 40, 512], [472, 0, 512, 40]])
    assert len(negative_chips(edges, pos, 2000, 600, cfg)) == 0  # inside is inclusive on all sides
    out = np.array([[473.0, 0, 513, 40]])  # one px out on the right
    assert len(negative_chips(out, pos, 2000, 600, cfg)) == 1


def test_negatives_check_positive_chips_beyond_the_first_64():
    cfg = one_scale(1.0, m=0)
    m = 70
    wins = np.array([[0, 0, 512, 512]] + [[1500 + i, 0, 1501 + i, 1] for i in range(m - 1)], dtype=np.int64)
    pos = ImageChips(
        0,
        wins.astype(float),
        np.ones(m),
        np.zeros(m, dtype=np.int64),
        np.zeros(m, dtype=bool),
        wins,
        np.ones(m, dtype=np.int64),
    )
    props = np.tile([[100.0, 100, 140, 140]], (5, 1))  # inside chip 0 only (first chunk of 64)
    assert len(negative_chips(props, pos, 2000, 600, cfg)) == 0
    pos_last = pos.select(np.r_[1:m, 0])  # the holding chip last: in the second chunk
    assert len(negative_chips(props, pos_last, 2000, 600, cfg)) == 0


def test_epoch_defaults_and_crowd_pass_through():
    cfg = ChipConfig()
    gt = np.array([[10.0, 20, 60, 80], [300, 200, 500, 420]])
    a, _ = chips_mod.epoch_pool(1, gt, 640, 480, cfg)
    b, _ = chips_mod.epoch_pool(1, gt, 640, 480, cfg, seed=0, epoch=0)
    assert np.array_equal(a.windows, b.windows)
    ref = positive_chips(gt, 640, 480, cfg, seed=(0, 0, 1), image_id=1)
    assert np.array_equal(a.windows, ref.windows) and a.image_id == 1
    crowd = epoch_chips(1, gt, 640, 480, cfg, iscrowd=np.array([True, True]))
    assert len(crowd) == 0  # crowd boxes are never selected


def test_greedy_keeps_a_pick_holding_exactly_m_plus_one_whatever_its_priority():
    # one box in a 1 x 1 grid, priority 0 (the lowest): it holds 1 > M = 0 boxes, so it is kept
    one = (np.array([0]), np.array([0]), np.array([0]), np.array([0]))
    prio = np.zeros(1, dtype=np.int64)
    assert chips_mod._greedy_bitmask(*one, 1, 1, prio, 0) == ([0], [1])
    assert chips_mod._greedy_rects(*one, 1, 1, prio, 0) == ([0], [1])
    assert chips_mod._greedy_bitmask(*one, 1, 1, prio, 1) == ([], [])
    assert chips_mod._greedy_rects(*one, 1, 1, prio, 1) == ([], [])


def test_positive_chips_defaults_and_image_size_checks():
    cfg = one_scale(1.0)
    gt = np.array([[0.0, 0, 10, 10]])
    assert positive_chips(gt, 100, 100, cfg).image_id == 0
    assert positive_chips(gt, 100, 100, cfg, image_id=5).image_id == 5
    for w, h in [(0, 100), (100, 0), (-1, 100)]:
        with pytest.raises(ValueError, match="image size must be positive"):
            positive_chips(gt, w, h, cfg)
    assert window_positions(300, 512, 32).dtype == np.int64
    assert window_positions(1000, 512, 32).dtype == np.int64


def test_chip_maps_float32_boxes_in_float64():
    c = Chip(10.0, 20.0, 60.0, 70.0, scale=3.0, scale_index=0)
    b = np.array([[1.0, 1.0, 2.0, 2.0]], dtype=np.float32)
    assert c.to_image(b).tolist() == [[10 + 1 / 3, 20 + 1 / 3, 10 + 2 / 3, 20 + 2 / 3]]
