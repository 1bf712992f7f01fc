"""The baseline data path: whole images (no chips), resized by one scale or by every scale of a pyramid.

``FullImageDataset(coco, image_root, scales)`` has one item per ``(image, scale)``; with one
:class:`~sniper.scales.Scale` that is one item per image (e.g. short 800 / max 1333), with a list
it is the full image pyramid (every training scale of ``cfg.chips.scales``). An item is:

* image ``[3, h, w]`` float in [0, 1], RGB: the whole image resized by the scale's factor ``f``
  (``(w, h) = scaled_size(W, H, f)``; JPEG draft decoding when ``f <= 1/2``), mirrored when flipped;
* target dict in the model's format (``docs/architecture.md``, "Model contract"):

  ============== ============================ ==================================================
  key            type                         meaning
  ============== ============================ ==================================================
  boxes          [N, 4] float32               valid GT, ORIGINAL x ``f`` (after flip)
  labels         [N] int64                    contiguous 1..C (``CocoDataset.label_of``)
  ignore_boxes   [M, 4] float32               crowd; in pyramid mode also out-of-range GT;
                                              boxes with a scaled side < ``min_box_size``
  ignore_labels  [M] int64                    per ignore box: 1..C for a non-crowd GT, 0 for crowd
  valid_range    [2] float32                  ``[0, inf]`` single-scale; ``(lo, hi) x f`` of the
                                              scale in pyramid mode (SNIP-style training)
  image_size     [2] int64                    (h, w) unpadded extent (pass as ``image_sizes``)
  image_id       int                          source image id
  scale          float                        resize factor ``f``
  scale_index    int                          index into the scale list
  flipped        bool                         mirrored horizontally
  ============== ============================ ==================================================

:func:`full_to_original` maps predicted boxes of an item back to original pixels.

``FullImageBatchSource`` is a ``sniper.engine.train.BatchSource``: per epoch a reproducible
shuffle of ``(seed, epoch)``, batches grouped by scale and orientation (landscape / portrait, so
padding stays small, as Detectron does), each batch split over the ranks (equal shares, wrapping round
so DDP stays in step), ``start`` skips whole batches. :func:`collate_full_images` zero-pads the
images of a batch to a common size (a multiple of 32) at the top-left; coordinates are unchanged.
The model must be given the unpadded sizes: ``model(images, targets, image_sizes=image_sizes(targets))``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sniper.boxes import clip_xyxy, sqrt_area
from sniper.config import DataConfig
from sniper.data.bad_images import BadImagePolicy
from sniper.data.coco import CocoDataset
from sniper.data.epoch_plan import flip_bits
from sniper.data.images import LoadedImage, load_image, resolve_image_path
from sniper.data.transforms import draft_reduce, flip_boxes, render_chip
from sniper.errors import BadImageError
from sniper.scales import Scale, scaled_size

__all__ = [
    "FullImageBatchSource",
    "FullImageDataset",
    "collate_full_images",
    "full_to_original",
    "image_sizes",
    "image_tensor",
]

Target = dict[str, Any]
Key = int | tuple[int, bool]


class FullImageDataset(Dataset):
    """Whole images at one scale or at every scale of a pyramid (see the module docstring).

    Item ``i`` is image ``i // S`` at scale ``i % S`` (``S`` scales). ``valid_ranges``: use each
    scale's valid range (SNIP-style) — default True for a pyramid, False for a single scale.
    """

    def __init__(
        self,
        coco: CocoDataset,
        image_root: str | os.PathLike[str],
        scales: Scale | Sequence[Scale],
        data_cfg: DataConfig | None = None,
        *,
        valid_ranges: bool | None = None,
        min_box_size: float = 2.0,
    ) -> None:
        self.coco = coco
        self.image_root = Path(image_root)
        self.scales: list[Scale] = [scales] if isinstance(scales, Scale) else list(scales)
        if not self.scales:
            raise ValueError("FullImageDataset needs at least one scale")
        self.valid_ranges = len(self.scales) > 1 if valid_ranges is None else bool(valid_ranges)
        self.data_cfg = data_cfg or DataConfig()
        self.bad_images = BadImagePolicy(self.data_cfg.on_bad_image, str(image_root))
        self.min_box_size = float(min_box_size)
        # Resize factor and scaled size of every item, from the annotations (no decoding).
        w = coco.widths.astype(np.float64)
        h = coco.heights.astype(np.float64)
        self.factors = np.array(
            [[s.resize_factor(wi, hi) for s in self.scales] for wi, hi in zip(w, h)], dtype=np.float64
        ).reshape(-1)
        rep_w, rep_h = np.repeat(coco.widths, len(self.scales)), np.repeat(coco.heights, len(self.scales))
        sizes = [scaled_size(int(a), int(b), float(f)) for a, b, f in zip(rep_w, rep_h, self.factors)]
        self.sizes = np.array(sizes, dtype=np.int64).reshape(-1, 2)  # (w, h) per item

    def __len__(self) -> int:
        return len(self.coco) * len(self.scales)

    # ------------------------------------------------------------ pieces

    def locate(self, index: int) -> tuple[int, int]:
        """(position in ``coco.images``, scale index) of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range [0, {len(self)})")
        return divmod(int(index), len(self.scales))

    def pixels(self) -> np.ndarray:
        """Unpadded pixel count of every item."""
        return self.sizes[:, 0] * self.sizes[:, 1]

    def target(self, index: int, flip: bool = False) -> Target:
        """Labels of item ``index`` (no pixels)."""
        pos, s = self.locate(index)
        rec = self.coco.images[pos]
        ann = self.coco.annotations_at(pos)
        f = float(self.factors[index])
        w, h = (int(v) for v in self.sizes[index])
        b = clip_xyxy(ann.boxes, rec.width, rec.height)
        sb = b * f
        sides = sb[:, 2:] - sb[:, :2]
        valid = ~np.asarray(ann.iscrowd, dtype=bool) & (sides >= self.min_box_size).all(axis=1)
        scale = self.scales[s]
        if self.valid_ranges:
            valid &= scale.in_range(sqrt_area(b))
            vr = [scale.lo * f, scale.hi * f]
        else:
            vr = [0.0, math.inf]
        # An ignore region needs positive area; a box that vanished after scaling ignores nothing.
        has_area = (sides > 0).all(axis=1)
        boxes = sb[valid].astype(np.float32).reshape(-1, 4)
        ignored = ~valid & has_area
        ignore = sb[ignored].astype(np.float32).reshape(-1, 4)
        crowd = np.asarray(ann.iscrowd, dtype=bool)[ignored]
        ignore_labels = np.where(crowd, 0, self.coco.label_of(ann.category_ids[ignored])).astype(np.int64)
        if flip:
            boxes, ignore = flip_boxes(boxes, w), flip_boxes(ignore, w)
        return {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(self.coco.label_of(ann.category_ids[valid]).astype(np.int64)),
            "ignore_boxes": torch.from_numpy(ignore),
            "ignore_labels": torch.from_numpy(ignore_labels),
            "valid_range": torch.tensor(vr, dtype=torch.float32),
            "image_size": torch.tensor([h, w], dtype=torch.int64),
            "image_id": int(rec.id),
            "scale": f,
            "scale_index": s,
            "flipped": bool(flip),
        }

    def load(self, index: int) -> LoadedImage:
        pos, _ = self.locate(index)
        rec = self.coco.images[pos]
        path = resolve_image_path(self.image_root, rec.file_name)
        reduce = draft_reduce(float(self.factors[index]))
        draft = (rec.width // reduce, rec.height // reduce) if reduce > 1 else None
        loaded = load_image(path, max_pixels=self.data_cfg.max_image_pixels, draft_size=draft)
        if loaded.original_size != (rec.width, rec.height):
            w, h = loaded.original_size
            raise BadImageError(str(path), f"annotation says {rec.width}x{rec.height}, file is {w}x{h}")
        return loaded

    def render(self, index: int) -> np.ndarray:
        """The resized image ``(h, w, 3)`` uint8, unflipped."""
        w, h = (int(v) for v in self.sizes[index])
        return render_chip(self.load(index), 0.0, 0.0, float(self.factors[index]), (w, h))

    # ------------------------------------------------------------ items

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, Target]:
        index, flip = (int(key), False) if isinstance(key, int | np.integer) else (int(key[0]), bool(key[1]))
        self.locate(index)
        return self.bad_images.get(
            index,
            len(self),
            lambda i: int(self.coco.images[self.locate(i)[0]].id),
            lambda i: (image_tensor(self.render(i), flip), self.target(i, flip)),
        )


def image_tensor(content: np.ndarray, flip: bool = False) -> torch.Tensor:
    """``(h, w, 3)`` uint8 -> ``[3, h, w]`` float in [0, 1], mirrored if ``flip``."""
    src = content[:, ::-1] if flip else content
    out = np.empty((3, *content.shape[:2]), dtype=np.float32)
    np.multiply(src.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=out)
    return torch.from_numpy(out)


def full_to_original(boxes: torch.Tensor | np.ndarray, target: Target) -> np.ndarray:
    """Boxes in item pixels (e.g. predictions) -> original image pixels (float64)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    if bool(target["flipped"]):
        w = float(target["image_size"][1])
        b[:, [0, 2]] = w - b[:, [2, 0]]
    return b / float(target["scale"])


def image_sizes(targets: Sequence[Target]) -> list[tuple[int, int]]:
    """The unpadded ``(h, w)`` of every image of a batch, as the model's ``image_sizes``."""
    return [(int(t["image_size"][0]), int(t["image_size"][1])) for t in targets]


def collate_full_images(
    batch: Sequence[tuple[torch.Tensor, Target]], size_divisible: int = 32
) -> tuple[torch.Tensor, list[Target]]:
    """Items -> (images ``[B, 3, H, W]`` zero-padded at the right/bottom to a common size that is a
    multiple of ``size_divisible``, list of targets)."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    d = max(1, int(size_divisible))
    h = math.ceil(max(im.shape[1] for im, _ in batch) / d) * d
    w = math.ceil(max(im.shape[2] for im, _ in batch) / d) * d
    out = batch[0][0].new_zeros((len(batch), 3, h, w))
    for i, (im, _) in enumerate(batch):
        out[i, :, : im.shape[1], : im.shape[2]].copy_(im)
    return out, [t for _, t in batch]


class _Collate:
    """Picklable collate with a fixed ``size_divisible`` (DataLoader workers)."""

    def __init__(self, size_divisible: int) -> None:
        self.size_divisible = size_divisible

    def __call__(self, batch):
        return collate_full_images(batch, self.size_divisible)


class FullImageBatchSource:
    """A ``BatchSource`` over a :class:`FullImageDataset` (see the module docstring)."""

    def __init__(
        self,
        dataset: FullImageDataset,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        *,
        flip: bool = True,
        group_aspect: bool = True,
        size_divisible: int = 32,
        pin_memory: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.num_workers = int(num_workers)
        self.flip = flip
        self.group_aspect = group_aspect
        self.size_divisible = size_divisible
        self.pin_memory = pin_memory
        self._per_epoch = len(self.global_batches(0))

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """Item indices of each batch of the epoch over ALL ranks (``batch_size * world_size`` items)."""
        n = len(self.dataset)
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, 0xF011])
        order = rng.permutation(n)
        if self.group_aspect:
            # One scale and one orientation per batch: padding stays small.
            w, h = self.dataset.sizes[order, 0], self.dataset.sizes[order, 1]
            key = (order % len(self.dataset.scales)) * 2 + (w < h)
            groups = [order[key == k] for k in np.unique(key)]
        else:
            groups = [order]
        per = self.batch_size * self.world_size
        batches = [g[i : i + per] for g in groups for i in range(0, len(g), per)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, bool]]]:
        """This rank's batches of the epoch as dataset keys ``(index, flip)``."""
        out = []
        for items in self.global_batches(epoch):
            # Equal shares per rank, wrapping round a short batch so every rank steps together.
            share = math.ceil(len(items) / self.world_size)
            mine = np.resize(items, share * self.world_size)[self.rank * share : (self.rank + 1) * share]
            flips = flip_bits(self.seed, epoch, mine) if self.flip else np.zeros(len(mine), dtype=bool)
            out.append([(int(i), bool(f)) for i, f in zip(mine, flips)])
        return out

    def batches_per_epoch(self) -> int:
        return self._per_epoch

    def iterate(self, epoch: int, start: int) -> Iterable[tuple[torch.Tensor, list[Target]]]:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        return DataLoader(
            self.dataset,
            batch_sampler=self.epoch_batches(epoch)[start:],
            num_workers=self.num_workers,
            collate_fn=_Collate(self.size_divisible),
            pin_memory=self.pin_memory,
            # its own generator: iterating must not draw from the global torch RNG, whose
            # state a resumed run restores from the checkpoint (it would shift every later draw)
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch),
        )
