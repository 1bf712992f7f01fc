"""The chip dataset: one item per chip, exactly what the model trains on.

``dataset[ChipKey(i, flip)]`` renders row ``i`` of a :class:`~sniper.data.chip_table.ChipTable`:

* image ``[3, K, K]`` float in [0, 1], RGB: the chip's window of the original image resized by
  its factor ``f`` (crop before resize; JPEG draft decoding when ``f <= 1/2``), at the top-left,
  zero padding elsewhere; mirrored inside its content width when ``flip``;
* target dict (labels from :func:`sniper.chips.chip_labels`, so they agree with the chip engine):

  ============== ============================ ==================================================
  key            type                         meaning
  ============== ============================ ==================================================
  boxes          [N, 4] float32               valid GT, chip px (after flip)
  labels         [N] int64                    contiguous 1..C (``CocoDataset.label_of``)
  ignore_boxes   [M, 4] float32               every other GT touching the chip (crowd included)
  ignore_labels  [M] int64                    per ignore box: 1..C for a non-crowd GT (out of
                                              range, truncated, too small), 0 for crowd
  valid_range    [2] float32                  (lo, hi) sqrt-area in chip px; hi may be inf
  image_size     [2] int64                    (h, w) of the content (unpadded extent)
  image_id       int                          source image id
  scale          float                        resize factor f
  scale_index    int                          index into ``cfg.chips.scales``
  origin         [2] float64                  (x1, y1) of the chip in original px
  chip_box       [4] float64                  (x1, y1, x2, y2) of the chip in original px
  flipped        bool                         mirrored inside its content width
  masks          [N, S, S] uint8              with ``masks=S``: per valid GT (``boxes`` order) its
                                              box-local binary mask, pixel (r, c) = the object at
                                              ``(x1 + (c + .5) w / S, y1 + (r + .5) h / S)`` of its
                                              own box (after flip: the flipped mask)
  mask_valid     [N] bool                     with ``masks=S``: False where the annotation has no
                                              usable segmentation (that mask is zeros)
  ============== ============================ ==================================================

  Masks (``docs/data.md`` "Instance masks") need the annotations loaded with
  ``load_coco(..., masks=True)``; each box is the valid box clipped to the chip as in ``boxes``,
  mapped to original px (``origin + chip_px / scale``) and sampled there by
  :func:`sniper.data.masks.box_local_mask` (decoded RLE crops cached per worker).

  :func:`chip_to_original` maps chip-pixel boxes (predictions) back to the source image.

Sampling, shards, resume: :mod:`sniper.data.epoch_plan`. Bad images (``cfg.data.on_bad_image``):
:func:`check_images` runs before training (headers: lists the bad files; "skip" drops their
chips, counted; "error" raises). A file that only fails at decode time (a truncated JPEG):

* "error": :class:`~sniper.errors.BadImageError` naming the file. In a DataLoader worker the
  item carries the error as data (``target["bad_image"]``) and :class:`ChipBatchSource` raises it
  in the main process: an exception raised in a worker would be re-created there from its text
  only, as a traceback dump.
* "skip": the item is replaced by the next chip of a good image, the file is never tried again
  in that process, and the item's target carries ``skipped_images`` ``[(file, reason)]``, which
  :class:`ChipBatchSource` collects from every worker into ``skipped_images``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm import tqdm

from sniper.chips import Chip, ChipLabels, chip_labels
from sniper.config import ChipConfig, Config, DataConfig
from sniper.data.bad_images import BadImagePolicy
from sniper.data.chip_table import ChipTable
from sniper.data.coco import CocoDataset
from sniper.data.epoch_plan import ChipBatchSampler, ChipKey
from sniper.data.images import LoadedImage, check_image_size, load_image, resolve_image_path
from sniper.data.masks import MaskCache, box_local_mask
from sniper.data.transforms import (
    ImageCache,
    chip_tensor,
    draft_reduce,
    flip_boxes,
    reduction,
    render_chip,
    to_unit_float,
)
from sniper.errors import BadImageError

__all__ = [
    "BadImage",
    "ChipBatchSource",
    "ChipDataset",
    "ImageCheck",
    "check_images",
    "chip_to_original",
    "collate_chips",
    "targets_to_torch",
]

Target = dict[str, Any]

# Largest decode cache (pixels per DataLoader worker) that data.mix_images may ask for: 600 MB.
MIX_CACHE_MAX_PIXELS = 200_000_000


class ChipDataset(Dataset):
    """Chips of a COCO dataset as training items (see the module docstring)."""

    def __init__(
        self,
        coco: CocoDataset,
        chips: ChipTable,
        image_root: str | os.PathLike[str],
        chip_cfg: ChipConfig,
        data_cfg: DataConfig | None = None,
        masks: int | None = None,
    ) -> None:
        if masks is not None:
            if int(masks) < 1:
                raise ValueError(f"masks must be the mask side S >= 1 (or None), got {masks}")
            if not getattr(coco, "has_segmentations", False):
                raise ValueError(
                    "chip masks need the segmentations: load the annotations with load_coco(..., masks=True)"
                )
        self.masks = None if masks is None else int(masks)
        self.coco = coco
        self.chips = chips
        self.image_root = Path(image_root)
        self.chip_cfg = chip_cfg
        self.data_cfg = data_cfg or DataConfig()
        self.bad_images = BadImagePolicy(self.data_cfg.on_bad_image, str(image_root))
        self.use_table(chips)
        # Transport mode, set by ChipBatchSource for its workers: items carry uint8 pixels (4x less
        # to copy through shared memory) and numpy targets; the main process converts the batch.
        self.uint8_pixels = False
        self._cache: ImageCache | None = None
        self._mask_cache: MaskCache | None = None

    @classmethod
    def from_config(
        cls, coco: CocoDataset, chips: ChipTable, image_root: str | os.PathLike[str], cfg: Config
    ):
        model = getattr(cfg, "model", None)
        masks = getattr(model, "mask_target_size", 56) if getattr(model, "masks", False) else None
        return cls(coco, chips, image_root, cfg.chips, cfg.data, masks=masks)

    def use_table(self, chips: ChipTable) -> None:
        """Serve the chips of ``chips`` from now on (another epoch's table; same images)."""
        image_pos = self.coco.index_of(chips.image_id)
        if np.any(image_pos < 0):
            bad = np.unique(chips.image_id[image_pos < 0])[:5].tolist()
            raise ValueError(f"chips refer to image id(s) {bad} that are not in the annotations")
        bad_scale = (chips.scale_index < 0) | (chips.scale_index >= len(self.chip_cfg.scales))
        if np.any(bad_scale):
            raise ValueError(
                f"chips use scale_index {np.unique(chips.scale_index[bad_scale]).tolist()}, "
                f"but chips.scales has {len(self.chip_cfg.scales)} scales (same config as `sniper chips`?)"
            )
        self.chips = chips
        self._image_pos = image_pos

    def __len__(self) -> int:
        return len(self.chips)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None  # every DataLoader worker builds its own, empty
        state["_mask_cache"] = None
        return state

    @property
    def cache(self) -> ImageCache:
        if self._cache is None:
            # A window of mixed images (data.mix_images) must fit, or every chip decodes again:
            # room for W of the largest images, up to MIX_CACHE_MAX_PIXELS (3 bytes each).
            w = self.data_cfg.mix_images
            size = max(self.data_cfg.image_cache_size, w)
            largest = int((self.coco.widths * self.coco.heights).max()) if len(self.coco) else 0
            pixels = max(self.data_cfg.image_cache_pixels, min(w * largest, MIX_CACHE_MAX_PIXELS))
            self._cache = ImageCache(size, pixels)
        return self._cache

    @property
    def mask_cache(self) -> MaskCache:
        """Decoded RLE crops of this process (at most 16M pixels, see :class:`MaskCache`)."""
        if self._mask_cache is None:
            self._mask_cache = MaskCache()
        return self._mask_cache

    # ------------------------------------------------------------ pieces

    def chip(self, index: int) -> Chip:
        t = self.chips
        x1, y1, x2, y2 = (float(v) for v in t.boxes[index])
        kind = "neg" if t.is_neg[index] else "pos"
        return Chip(x1, y1, x2, y2, float(t.scale[index]), int(t.scale_index[index]), kind)

    def image_path(self, image_id: int) -> Path:
        return resolve_image_path(self.image_root, self.coco.image(image_id).file_name)

    def load(self, image_id: int, scale: float) -> LoadedImage:
        """The image decoded at least at resolution ``scale`` (cached; JPEG draft when it shrinks >= 2x)."""
        reduce = draft_reduce(scale)
        cached = self.cache.get(image_id, reduce)
        if cached is not None:
            have = reduction(cached)
            if have == reduce:
                return cached
            # A finer decode is cached: box-reduce it (pixel i = source [k*i, k*(i+1)), like a
            # JPEG draft) rather than resample a far larger image for every coarse chip.
            k = reduce // have
            smaller = LoadedImage(
                cached.image.reduce(k), cached.scale_x / k, cached.scale_y / k, cached.original_size
            )
            self.cache.put(image_id, smaller)
            return smaller
        rec = self.coco.image(image_id)
        path = resolve_image_path(self.image_root, rec.file_name)
        draft = (rec.width // reduce, rec.height // reduce) if reduce > 1 else None
        loaded = load_image(path, max_pixels=self.data_cfg.max_image_pixels, draft_size=draft)
        if loaded.original_size != (rec.width, rec.height):
            w, h = loaded.original_size
            raise BadImageError(str(path), f"annotation says {rec.width}x{rec.height}, file is {w}x{h}")
        self.cache.put(image_id, loaded)
        return loaded

    def labels(self, index: int) -> ChipLabels:
        """The chip engine's labels of chip ``index`` (chip px, unflipped)."""
        pos = int(self._image_pos[index])
        rec = self.coco.images[pos]
        ann = self.coco.annotations_at(pos)
        return chip_labels(
            self.chip(index), ann.boxes, ann.category_ids, ann.iscrowd, self.chip_cfg,
            image_size=(rec.width, rec.height),
        )  # fmt: skip

    def target(self, index: int, flip: bool = False) -> Target:
        """Labels of chip ``index`` (no pixels)."""
        chip = self.chip(index)
        image_id = int(self.chips.image_id[index])
        lab = self.labels(index)
        w, h = chip.size_px()
        boxes = lab.boxes[lab.valid].astype(np.float32).reshape(-1, 4)
        ignore = lab.boxes[lab.ignore].astype(np.float32).reshape(-1, 4)
        crowd = self.coco.annotations_at(int(self._image_pos[index])).iscrowd[lab.gt_index[lab.ignore]]
        ignore_labels = np.where(crowd, 0, self.coco.label_of(lab.classes[lab.ignore])).astype(np.int64)
        if self.masks is not None:
            masks, mask_valid = self.box_masks(index, chip, lab)
        if flip:
            boxes, ignore = flip_boxes(boxes, w), flip_boxes(ignore, w)
            if self.masks is not None:
                masks = np.ascontiguousarray(masks[:, :, ::-1])
        target = {
            "boxes": boxes,
            "labels": self.coco.label_of(lab.classes[lab.valid]).astype(np.int64),
            "ignore_boxes": ignore,
            "ignore_labels": ignore_labels,
            "valid_range": lab.valid_range.astype(np.float32),
            "image_size": np.array([h, w], dtype=np.int64),
            "image_id": image_id,
            "scale": chip.scale,
            "scale_index": chip.scale_index,
            "origin": np.array([chip.x1, chip.y1], dtype=np.float64),
            "chip_box": np.array([chip.x1, chip.y1, chip.x2, chip.y2], dtype=np.float64),
            "flipped": bool(flip),
        }
        if self.masks is not None:
            target["masks"] = masks
            target["mask_valid"] = mask_valid
        # In DataLoader workers (transport mode) the arrays stay numpy: pickled inline with the
        # batch, where every tensor would travel through a shared-memory file of its own.
        return target if self.uint8_pixels else targets_to_torch(target)

    def box_masks(self, index: int, chip: Chip, lab: ChipLabels) -> tuple[np.ndarray, np.ndarray]:
        """(masks ``[N, S, S]`` uint8, mask_valid ``[N]`` bool) of the valid GT of chip ``index``
        (``boxes`` order, unflipped)."""
        S = self.masks
        pos = int(self._image_pos[index])
        rec = self.coco.images[pos]
        ann = self.coco.annotations_at(pos)
        gt = lab.gt_index[lab.valid]
        out = np.zeros((len(gt), S, S), dtype=np.uint8)
        valid = np.zeros(len(gt), dtype=bool)
        if len(gt) == 0:
            return out, valid
        segs = ann.segmentations
        boxes = chip.to_image(lab.boxes[lab.valid].astype(np.float64))  # chip px -> original px
        cache = self.mask_cache
        for i, (g, box) in enumerate(zip(gt.tolist(), boxes)):
            seg = segs[g]
            if seg is None:
                continue
            out[i] = box_local_mask(seg, (rec.width, rec.height), box, S, cache=cache,
                                    key=(rec.id, int(ann.ann_ids[g])))  # fmt: skip
            valid[i] = True
        return out, valid

    def render(self, index: int) -> np.ndarray:
        """The chip content ``(h, w, 3)`` uint8 at its own size, unflipped, unpadded."""
        chip = self.chip(index)
        loaded = self.load(int(self.chips.image_id[index]), chip.scale)
        return render_chip(loaded, chip.x1, chip.y1, chip.scale, chip.size_px())

    # ------------------------------------------------------------ items

    def __getitem__(self, key: ChipKey | int | tuple[int, bool]) -> tuple[torch.Tensor, Target]:
        index, flip = (int(key), False) if isinstance(key, int | np.integer) else (int(key[0]), bool(key[1]))
        if not 0 <= index < len(self.chips):
            raise IndexError(f"chip index {index} out of range [0, {len(self.chips)})")
        try:
            image, target = self.bad_images.get(index, len(self.chips), lambda i: int(self.chips.image_id[i]),
                                                lambda i: self._item(i, flip))  # fmt: skip
        except BadImageError as e:
            if get_worker_info() is None:
                raise
            return None, {"bad_image": (e.file, e.reason)}  # raised again in the main process
        new = self.bad_images.newly_bad()
        if new:
            target["skipped_images"] = new
        return image, target

    def _item(self, index: int, flip: bool) -> tuple[torch.Tensor, Target]:
        content = self.render(index)
        image = chip_tensor(content, self.chip_cfg.chip_size, flip, uint8=self.uint8_pixels)
        return image, self.target(index, flip)


def targets_to_torch(target: Target) -> Target:
    """numpy arrays of a target -> tensors (zero-copy)."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in target.items()}


def chip_to_original(boxes: torch.Tensor | np.ndarray, target: Target) -> np.ndarray:
    """Chip-pixel xyxy boxes of an item (e.g. predictions) -> original image pixels (float64)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    if bool(target["flipped"]):
        w = float(target["image_size"][1])
        b[:, [0, 2]] = w - b[:, [2, 0]]
    origin = np.asarray(target["origin"], dtype=np.float64)
    return b / float(target["scale"]) + np.concatenate([origin, origin])


def collate_chips(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Items -> (images ``[B, 3, K, K]``, list of targets); ``(None, targets)`` when an item is
    the error marker of a bad image (see the module docstring)."""
    images = [b[0] for b in batch]
    targets = [b[1] for b in batch]
    if any(x is None for x in images):
        return None, [t for t in targets if "bad_image" in t]
    out = None
    if get_worker_info() is not None and images:
        # Stack straight into shared memory, as default_collate does, saving a copy on the way out.
        numel = sum(x.numel() for x in images)
        storage = images[0].untyped_storage()._new_shared(numel * images[0].element_size(), device="cpu")
        out = images[0].new(storage).resize_(len(images), *images[0].shape)
    return torch.stack(images, 0, out=out), targets


# ---------------------------------------------------------------- training loop glue


class ChipBatchSource:
    """A ``sniper.engine.train.BatchSource``: this rank's batches of an epoch, from any batch on.

    One DataLoader with persistent workers; the batch sampler is re-planned per epoch in the main
    process (it is cheap) and lays batches out so each worker gets contiguous runs of images.
    When the sampler's table changes with the epoch (chips mined anew, ``sampler.tables``), the
    datasets switch to it and the workers are started afresh.
    Workers send uint8 pixels (a float chip is 3 MB; copying it through shared memory cost more
    CPU than rendering it); batches come out as float in [0, 1], identical to ``dataset[key]``.
    """

    def __init__(
        self,
        dataset: ChipDataset,
        sampler: ChipBatchSampler,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.sampler = sampler
        if sampler.num_workers != num_workers:
            raise ValueError(
                f"sampler was laid out for {sampler.num_workers} workers, loader has {num_workers}"
            )
        self._uint8 = num_workers > 0
        if self._uint8:
            dataset = copy.copy(dataset)
            dataset.uint8_pixels = True
        self._dataset = dataset
        self._num_workers = num_workers
        self._pin_memory = pin_memory
        self.loader = self._make_loader()
        self._per_epoch = len(sampler.epoch_batches(0, 0))
        # file -> reason: images that failed to decode mid-run under on_bad_image=skip (all workers)
        self.skipped_images: dict[str, str] = {}

    def _make_loader(self) -> DataLoader:
        return DataLoader(
            self._dataset,
            batch_sampler=self.sampler,
            num_workers=self._num_workers,
            collate_fn=collate_chips,
            pin_memory=self._pin_memory,
            persistent_workers=self._num_workers > 0,
            # Its own generator, reseeded per epoch in `iterate`: each `iter(loader)` draws a
            # worker base seed, and drawing it from the global torch RNG would shift every later
            # draw of a run resumed mid-epoch (its RNG state comes from the checkpoint).
            generator=torch.Generator(),
        )

    def batches_per_epoch(self) -> int:
        return self._per_epoch

    def iterate(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, list[Target]]]:
        table = self.sampler.table_for(epoch)
        if table is not self._dataset.chips:
            # Chips mined anew for this epoch: persistent workers hold the old table, so they
            # are replaced (their decode caches would not outlive an epoch of other chips anyway).
            self._dataset.use_table(table)
            if self.dataset is not self._dataset:
                self.dataset.use_table(table)
            self._shutdown_workers()
            self.loader = self._make_loader()
        # Batches before `start` are full, so `start` batches = start * batch_size items.
        self.sampler.set_epoch(epoch, start * self.sampler.batch_size)
        self.loader.generator.manual_seed(self.sampler.seed * 1_000_003 + epoch)
        for images, targets in self.loader:
            for t in targets:
                if "bad_image" in t:
                    raise BadImageError(*t["bad_image"])
                self.skipped_images.update(t.pop("skipped_images", ()))
            if self._uint8:
                images, targets = to_unit_float(images), [targets_to_torch(t) for t in targets]
            yield images, targets

    def _shutdown_workers(self) -> None:
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None


# ---------------------------------------------------------------- image checks


@dataclass(frozen=True)
class BadImage:
    image_id: int
    file: str
    reason: str


@dataclass
class ImageCheck:
    """Result of :func:`check_images`: the bad files, and the chip table without their chips."""

    checked: int
    bad: list[BadImage] = field(default_factory=list)
    chips: ChipTable | None = None
    dropped_chips: int = 0

    def format(self) -> str:
        lines = [f"checked {self.checked} images: {len(self.bad)} bad, {self.dropped_chips} chips dropped"]
        lines += [f"  {b.file}: {b.reason}" for b in self.bad[:20]]
        if len(self.bad) > 20:
            lines.append(f"  ... and {len(self.bad) - 20} more")
        return "\n".join(lines)


def check_images(
    coco: CocoDataset,
    chips: ChipTable,
    image_root: str | os.PathLike[str],
    data_cfg: DataConfig,
    *,
    decode: bool = False,
    workers: int = 4,
    progress: bool = True,
    on_bad: Callable[[BadImage], None] | None = None,
) -> ImageCheck:
    """Check every image that has chips; honour ``data_cfg.on_bad_image``.

    Without ``decode`` only headers are read (missing, unreadable, not an image, size differs
    from the annotation, path escapes the root); with ``decode`` every image is fully decoded
    (also catches truncated files). "error": raise :class:`BadImageError` for the first bad file.
    "skip": return all bad files and ``chips`` without their rows (counted in ``dropped_chips``).
    """
    ids = np.unique(chips.image_id)
    root = Path(image_root)

    def check(image_id: int) -> BadImage | None:
        rec = coco.image(int(image_id))
        try:
            path = resolve_image_path(root, rec.file_name)
            problem = check_image_size(path, rec.width, rec.height)
            if problem is not None:
                return BadImage(int(image_id), str(path), problem.split(": ", 1)[-1])
            if decode:
                load_image(path, max_pixels=data_cfg.max_image_pixels)
            elif rec.width * rec.height > data_cfg.max_image_pixels:
                return BadImage(
                    int(image_id), str(path), f"{rec.width}x{rec.height} exceeds data.max_image_pixels"
                )
        except BadImageError as e:
            return BadImage(int(image_id), e.file, e.reason)
        return None

    bad: list[BadImage] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL releases the GIL while decoding
        results = pool.map(check, ids.tolist())
        for res in tqdm(results, total=len(ids), desc="check images", unit="img", disable=not progress):
            if res is None:
                continue
            if data_cfg.on_bad_image == "error":
                raise BadImageError(res.file, res.reason)
            bad.append(res)
            if on_bad is not None:
                on_bad(res)
    bad_ids = np.array([b.image_id for b in bad], dtype=np.int64)
    keep = ~np.isin(chips.image_id, bad_ids)
    return ImageCheck(len(ids), bad, chips.select(keep), int((~keep).sum()))
