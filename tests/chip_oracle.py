"""A plain, dense reference of the chip engine, for tests and the benchmark baseline.

Written independently of ``sniper.chips``: windows enumerated by a loop, a full
windows x boxes containment matrix, and a greedy loop that recounts every window
after each pick. It shares only the tie-break rule (``window_priority``), which
is part of the spec, so both must pick exactly the same chips.
"""

from __future__ import annotations

import math

import numpy as np

from sniper.chips import window_priority
from sniper.config import ChipConfig


def positions(length: int, K: int, d: int) -> list[int]:
    if length <= K:
        return [0]
    out, x = [], 0
    while x + K <= length:
        out.append(x)
        x += d
    if out[-1] != length - K:
        out.append(length - K)
    return out


def windows(W: int, H: int, K: int, d: int) -> np.ndarray:
    """All windows (n, 4) of a W x H scaled image, x-major like the engine's indexing."""
    xs, ys = positions(W, K, d), positions(H, K, d)
    return np.array([[x, y, x + min(K, W), y + min(K, H)] for x in xs for y in ys], dtype=np.float64)


def scale_info(width: int, height: int, cfg: ChipConfig, s: int) -> tuple[float, int, int]:
    f = cfg.scales[s].resize_factor(width, height)
    return f, max(1, int(round(width * f))), max(1, int(round(height * f)))


def scaled_boxes(boxes: np.ndarray, width: int, height: int, f: float, W: int, H: int) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    b = np.stack(
        [
            np.clip(b[:, 0], 0, width),
            np.clip(b[:, 1], 0, height),
            np.clip(b[:, 2], 0, width),
            np.clip(b[:, 3], 0, height),
        ],
        axis=1,
    )
    sb = b * f
    sb[:, 0::2] = np.minimum(sb[:, 0::2], W)
    sb[:, 1::2] = np.minimum(sb[:, 1::2], H)
    return b, sb


def valid_mask(boxes, width, height, cfg: ChipConfig, s: int, d: int, iscrowd=None) -> np.ndarray:
    """Boxes valid for selection at scale ``s``: range, not crowd, not degenerate, fit rule."""
    f, W, H = scale_info(width, height, cfg, s)
    b, sb = scaled_boxes(boxes, width, height, f, W, H)
    K = cfg.chip_size
    out = np.zeros(len(b), dtype=bool)
    for n in range(len(b)):
        w, h = b[n, 2] - b[n, 0], b[n, 3] - b[n, 1]
        size = math.sqrt(max(w, 0) * max(h, 0))
        sw, sh = sb[n, 2] - sb[n, 0], sb[n, 3] - sb[n, 1]
        ok = cfg.scales[s].lo <= size < cfg.scales[s].hi
        ok = ok and (W <= K or sw <= K - d) and (H <= K or sh <= K - d)
        ok = ok and sw >= cfg.min_box_size and sh >= cfg.min_box_size and sw > 0 and sh > 0
        ok = ok and not (iscrowd is not None and bool(iscrowd[n]))
        out[n] = ok
    return out


def containment(win: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """(windows, boxes) bool: box completely inside window."""
    return (
        (win[:, None, 0] <= sb[None, :, 0])
        & (win[:, None, 1] <= sb[None, :, 1])
        & (win[:, None, 2] >= sb[None, :, 2])
        & (win[:, None, 3] >= sb[None, :, 3])
    )


def greedy(win: np.ndarray, sb: np.ndarray, prio: np.ndarray, min_count: int = 0):
    """Dense greedy: recount every window after each pick; ties -> highest priority."""
    M = containment(win, sb)
    alive = np.ones(sb.shape[0], dtype=bool)
    picks, counts = [], []
    while True:
        c = M[:, alive].sum(axis=1)
        best = c.max() if len(c) else 0
        if best <= min_count:
            break
        cand = np.flatnonzero(c == best)
        k = int(cand[np.argmax(prio[cand])])
        picks.append(k)
        counts.append(int(best))
        alive &= ~M[k]
    return win[picks], np.array(counts, dtype=np.int64)


def positive_chips(boxes, width, height, cfg: ChipConfig, *, iscrowd=None, seed=0, stride=None):
    """List per scale of (windows (m, 4) scaled px, counts)."""
    d = cfg.stride if stride is None else stride
    out = []
    for s in range(len(cfg.scales)):
        f, W, H = scale_info(width, height, cfg, s)
        _, sb = scaled_boxes(boxes, width, height, f, W, H)
        ok = valid_mask(boxes, width, height, cfg, s, d, iscrowd)
        win = windows(W, H, cfg.chip_size, d)
        prio = window_priority(seed, s, len(win))
        out.append(greedy(win, sb[ok], prio) if ok.any() else (np.zeros((0, 4)), np.zeros(0, dtype=np.int64)))
    return out


def labels(chip_window, f, scale, boxes, iscrowd, cfg: ChipConfig, image_size=None):
    """Per box: 'valid', 'ignore' or None (does not touch the chip), by a plain loop.

    With ``image_size``, scaled boxes are first clipped to the scaled image (as selection does).
    """
    sx, sy, ex, ey = chip_window
    out = []
    if image_size is not None:
        W, H = max(1, int(round(image_size[0] * f))), max(1, int(round(image_size[1] * f)))
    for n, bx in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        s = [bx[0] * f, bx[1] * f, bx[2] * f, bx[3] * f]
        if image_size is not None:
            s = [min(s[0], W), min(s[1], H), min(s[2], W), min(s[3], H)]
        c = [s[0] - sx, s[1] - sy, s[2] - sx, s[3] - sy]
        cl = [
            min(max(c[0], 0), ex - sx),
            min(max(c[1], 0), ey - sy),
            min(max(c[2], 0), ex - sx),
            min(max(c[3], 0), ey - sy),
        ]
        if not (cl[2] - cl[0] > 0 and cl[3] - cl[1] > 0):
            out.append(None)
            continue
        size = math.sqrt(max(bx[2] - bx[0], 0) * max(bx[3] - bx[1], 0))
        inside = c[0] >= -1e-4 and c[1] >= -1e-4 and c[2] <= ex - sx + 1e-4 and c[3] <= ey - sy + 1e-4
        big = cl[2] - cl[0] >= cfg.min_box_size and cl[3] - cl[1] >= cfg.min_box_size
        ok = (not iscrowd[n]) and scale.lo <= size < scale.hi and inside and big
        out.append("valid" if ok else "ignore")
    return out


def negative_chips(proposals, pos_windows_per_scale, width, height, cfg: ChipConfig, *, seed=0, stride=None):
    """List per scale of (windows, counts): greedy over proposals not inside a positive chip."""
    d = cfg.stride if stride is None else stride
    out = []
    for s in range(len(cfg.scales)):
        f, W, H = scale_info(width, height, cfg, s)
        _, sb = scaled_boxes(proposals, width, height, f, W, H)
        ok = valid_mask(proposals, width, height, cfg, s, d)
        pw = np.asarray(pos_windows_per_scale[s], dtype=np.float64).reshape(-1, 4)
        if len(pw):
            ok &= ~containment(pw, sb).any(axis=0)
        win = windows(W, H, cfg.chip_size, d)
        prio = window_priority(seed, -1 - s, len(win))
        m = cfg.neg_min_proposals[s]
        out.append(
            greedy(win, sb[ok], prio, m) if ok.any() else (np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
        )
    return out
