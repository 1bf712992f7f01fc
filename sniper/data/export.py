"""Write chips as ordinary image files + one COCO JSON, for training any detector on them.

Layout of ``OUT``::

    OUT/images/<source id>_<n>_s<scale index>.jpg   one file per chip, its content only (w x h, no padding)
    OUT/chips_coco.json                            COCO instances file of the chips
    OUT/mapping.csv                                chip -> source image, scale, origin, window

In ``chips_coco.json`` every chip is an image record with, beside ``id, file_name, width,
height``: ``source_image_id``, ``source_file_name``, ``scale`` (resize factor f), ``scale_index``,
``kind`` (pos/neg), ``origin`` ``[x1, y1]`` and ``chip_box`` ``[x1, y1, x2, y2]`` in original px,
so ``original = chip / scale + origin``. Valid GT of the chip are normal annotations
(``iscrowd: 0``); every other GT touching the chip (crowd, out of the scale's range,
truncated) is an ignore region (``iscrowd: 1``), both with the dataset's own category ids
(``categories`` copied) and ``source_annotation_id``. Pixels and labels come from
:class:`~sniper.data.chip_dataset.ChipDataset`, i.e. exactly what ``sniper train`` uses.

Segmentations: when the source annotations were loaded with ``load_coco(..., masks=True)``, a
valid object with a usable segmentation gets its mask over the chip at the chip's resolution
(chip pixel ``(r, c)`` = the object at ``origin + (c + 0.5, r + 0.5) / scale``: polygons
transformed into chip px and rasterised there, RLEs sampled at the pixel centres; see
:func:`sniper.data.masks.sample_mask`) as compressed RLE ``{"size": [h, w], "counts": str}``,
and ``area`` = the mask's pixel count. Other annotations keep the box as a polygon and the box
area.

Everything is written into a staging folder beside ``OUT`` (``.OUT.staging-<pid>-<host>.<random>``)
and renamed onto ``OUT`` at the end, so ``OUT`` is always either the previous complete export
(or absent) or the new complete one, never a mix. An existing ``OUT`` is moved aside
(``.OUT.old-...``), the staging folder renamed in, files of the user's own in the old ``OUT``
(anything but ``images/``, ``chips_coco.json``, ``mapping.csv``) moved over, and the old
folder deleted. A run killed at any point leaves only hidden working folders; the next
export to the same ``OUT`` deletes those of dead runs and, if the kill fell between the two
renames, puts the previous export back first (see :func:`_recover`).

Where ``OUT`` cannot be swapped by a rename (a mount point, a symlink, the current folder is
inside it, or its parent is not writable) the staging folder goes inside ``OUT`` and the
entries are moved in one by one, ``chips_coco.json`` last and removed first: a kill during
those moves leaves ``OUT`` without ``chips_coco.json``, i.e. visibly incomplete.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from sniper.config import Config, to_dict
from sniper.data.chip_dataset import BadImage, ChipDataset, check_images
from sniper.data.chip_table import ChipTable
from sniper.data.coco import CocoDataset
from sniper.data.epoch_plan import sampled_negatives
from sniper.data.masks import encode_mask, sample_mask
from sniper.errors import BadImageError
from sniper.io import (
    atomic_open,
    atomic_path,
    atomic_write_json,
    owner_is_gone,
    owner_tag,
    remove_stale_temps,
)

__all__ = ["EXPORT_ENTRIES", "ExportSummary", "MAPPING_COLUMNS", "export_chips", "select_chips"]

FORMATS = {"jpg": "JPEG", "png": "PNG"}
MAPPING_COLUMNS = (
    "chip_image_id", "file_name", "width", "height", "source_image_id", "source_file_name", "kind",
    "scale_index", "scale", "origin_x", "origin_y", "x1", "y1", "x2", "y2",
)  # fmt: skip
EXPORT_ENTRIES = ("images", "chips_coco.json", "mapping.csv")  # what an export owns in OUT


@dataclass
class ExportSummary:
    out: Path
    chips: int = 0
    pos_chips: int = 0
    neg_chips: int = 0
    annotations: int = 0
    ignore_regions: int = 0
    masks: int = 0  # valid objects written with their mask (RLE) as segmentation
    bad_images: list[BadImage] = field(default_factory=list)
    dropped_chips: int = 0
    seconds: float = 0.0
    leftovers_removed: int = 0  # temp files and working folders of killed runs, deleted first

    def format(self) -> str:
        lines = [
            f"wrote {self.chips} chips ({self.pos_chips} positive, {self.neg_chips} negative), "
            f"{self.annotations} objects + {self.ignore_regions} ignore regions (iscrowd=1) "
            f"to {self.out} in {self.seconds:.1f}s",
        ]
        if self.masks:
            lines.append(f"{self.masks} of the objects with their mask (RLE segmentation)")
        if self.bad_images:
            lines.append(f"skipped {len(self.bad_images)} bad images ({self.dropped_chips} chips):")
            lines += [f"  {b.file}: {b.reason}" for b in self.bad_images[:20]]
        if self.leftovers_removed:
            lines.append(
                f"removed {self.leftovers_removed} leftovers of interrupted exports (temp files, staging folders)"
            )
        return "\n".join(lines)


def select_chips(
    table: ChipTable, *, negatives: bool, all_negatives: bool, neg_per_image: int, seed: int
) -> ChipTable:
    """Positives, plus negatives: none, epoch 0's sample of ``neg_per_image`` per image (what
    training sees in its first epoch), or the whole pool. Ordered by image, finest scale first."""
    rows = np.flatnonzero(~table.is_neg)
    if negatives:
        neg = (
            np.flatnonzero(table.is_neg)
            if all_negatives
            else sampled_negatives(table, neg_per_image, seed, 0)
        )
        rows = np.concatenate([rows, neg])
    rows = rows[np.lexsort((rows, -table.scale[rows], table.image_id[rows]))]
    return table.select(rows)


# ---------------------------------------------------------------- per-image work (in workers)

_state: dict[str, Any] = {}


def _init(dataset: ChipDataset, images_dir: Path, fmt: str, quality: int) -> None:
    _state.update(dataset=dataset, images_dir=images_dir, fmt=fmt, quality=quality)


def _encode(arr: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    opts = {"quality": quality, "subsampling": 0} if fmt == "jpg" else {"compress_level": 1}
    Image.fromarray(arr).save(buf, format=FORMATS[fmt], **opts)
    return buf.getvalue()


def _export_image(rows: np.ndarray) -> tuple[list[dict[str, Any]], BadImage | None]:
    """Write the chips ``rows`` (all of one image); return one record per chip (ids assigned later)."""
    ds: ChipDataset = _state["dataset"]
    fmt = _state["fmt"]
    image_id = int(ds.chips.image_id[rows[0]])
    rec = ds.coco.image(image_id)
    ann = ds.coco.annotations(image_id)
    out: list[dict[str, Any]] = []
    try:
        for n, row in enumerate(rows.tolist()):
            chip = ds.chip(row)
            pixels = ds.render(row)
            name = f"{image_id}_{n:03d}_s{chip.scale_index}.{fmt}"
            with atomic_path(_state["images_dir"] / name) as tmp:
                tmp.write_bytes(_encode(pixels, fmt, _state["quality"]))
            lab = ds.labels(row)
            h, w = pixels.shape[:2]
            segs = _chip_segmentations(ds, rec, ann, chip, lab, w, h)
            out.append({
                "file_name": name, "width": int(w), "height": int(h),
                "source_image_id": image_id, "source_file_name": rec.file_name,
                "kind": chip.kind, "scale_index": chip.scale_index, "scale": chip.scale,
                "origin": [chip.x1, chip.y1], "chip_box": [chip.x1, chip.y1, chip.x2, chip.y2],
                "boxes": lab.boxes.astype(np.float64).tolist(), "valid": lab.valid.tolist(),
                "category_ids": lab.classes.tolist(), "ann_ids": ann.ann_ids[lab.gt_index].tolist(),
                "segmentations": segs,
            })  # fmt: skip
    except BadImageError as e:
        if ds.data_cfg.on_bad_image == "error":
            raise
        return [], BadImage(image_id, e.file, e.reason)
    finally:
        ds.cache.clear()  # one image at a time: nothing to gain from keeping it
        ds.mask_cache.clear()
    return out, None


def _chip_segmentations(ds: ChipDataset, rec, ann, chip, lab, w: int, h: int) -> list[dict[str, Any] | None]:
    """Per label of the chip: the compressed RLE of a valid object's mask over the chip window at
    chip resolution, or None (an ignore region, no usable segmentation, masks not loaded)."""
    segs = getattr(ann, "segmentations", None)
    out: list[dict[str, Any] | None] = [None] * len(lab.gt_index)
    if segs is None:
        return out
    window = (chip.x1, chip.y1, chip.x1 + w / chip.scale, chip.y1 + h / chip.scale)  # original px
    for i, (g, valid) in enumerate(zip(lab.gt_index.tolist(), lab.valid.tolist())):
        if valid and segs[g] is not None:
            m = sample_mask(segs[g], (rec.width, rec.height), window, w, h, cache=ds.mask_cache,
                            key=(rec.id, int(ann.ann_ids[g])))  # fmt: skip
            out[i] = {**encode_mask(m), "area": int(m.sum())}
    return out


def _runs(table: ChipTable) -> list[np.ndarray]:
    if len(table) == 0:
        return []
    cuts = np.flatnonzero(np.diff(table.image_id)) + 1
    return np.split(np.arange(len(table)), cuts)


def _results(
    dataset, images_dir, fmt, quality, workers
) -> Iterator[tuple[list[dict[str, Any]], BadImage | None]]:
    runs = _runs(dataset.chips)
    if workers <= 1:
        _init(dataset, images_dir, fmt, quality)
        yield from map(_export_image, runs)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(dataset, images_dir, fmt, quality)) as pool:
        yield from pool.imap(_export_image, runs, chunksize=1)


# ---------------------------------------------------------------- staging: OUT appears whole or not at all


def _work_dir(out: Path, home: Path, kind: str, suffix: str) -> Path:
    """A working folder of one run for ``out``: ``home/.OUT.<kind>-<pid>-<host>.<random>``."""
    return home / f".{out.name}.{kind}-{suffix}"


def _work_dirs(out: Path, home: Path) -> list[tuple[Path, str, str]]:
    """Working folders of any run for ``out`` in ``home``: ``(path, kind, owner tag)``."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(staging|old)-(\d+-[0-9a-f]{{8}})\.[A-Za-z0-9_]+")
    try:
        entries = list(os.scandir(home))
    except OSError:
        return []
    found = []
    for e in entries:
        m = pattern.fullmatch(e.name)
        if m is not None and e.is_dir(follow_symlinks=False):
            found.append((Path(e.path), m[1], m[2]))
    return found


def _last_change(folder: Path) -> float:
    """Newest change of ``folder`` or its ``images/`` (where a live run keeps adding chips)."""
    times = [0.0]
    for p in (folder, folder / "images"):
        with contextlib.suppress(OSError):
            st = p.stat()
            times += [st.st_mtime, st.st_ctime]
    return max(times)


def _is_owned(name: str) -> bool:
    """An entry of OUT that the export writes (or a temp file of one): never carried over."""
    temp = name.endswith(".tmp") and any(name.startswith(f".{e}.") for e in EXPORT_ENTRIES)
    return name in EXPORT_ENTRIES or temp


def _settle_old(old: Path, out: Path) -> None:
    """Finish with a previous export that a commit moved aside: put it back if no new OUT took
    its place (the commit was killed between its renames), else move the user's own files
    from it into the new OUT (the contract: an export only replaces its own entries) and delete it."""
    if not os.path.lexists(out):
        os.rename(old, out)
        return
    for e in list(os.scandir(old)):
        if not _is_owned(e.name) and not os.path.lexists(out / e.name):
            os.rename(e.path, out / e.name)
    shutil.rmtree(old)


def _recover(out: Path) -> int:
    """Clean up after exports to ``out`` that died (kill -9, OOM): their staging folders go; a
    previous export moved aside is put back or settled. Folders of live runs are kept (see
    :func:`sniper.io.owner_is_gone`). Returns how many folders were dealt with."""
    n = 0
    for path, kind, tag in _work_dirs(out, out.parent):
        if owner_is_gone(tag, _last_change(path)):
            if kind == "old":
                _settle_old(path, out)
            else:
                shutil.rmtree(path, ignore_errors=True)
            n += 1
    # staging inside OUT (see _stage_in_place); its "old" folder is only a trash can there
    for path, _, tag in _work_dirs(out, out) if out.is_dir() else []:
        if owner_is_gone(tag, _last_change(path)):
            shutil.rmtree(path, ignore_errors=True)
            n += 1
    return n


def _stage_in_place(out: Path) -> bool:
    """Whether renaming OUT itself would fail or surprise: a mount point (a container volume),
    a symlink (we would replace the link), or a folder holding the current directory."""
    if out.is_symlink() or (out.is_dir() and os.path.ismount(out)):
        return True
    real, cwd = os.path.realpath(out), os.path.realpath(os.getcwd())
    return cwd == real or cwd.startswith(real + os.sep)


def _begin(out: Path) -> tuple[Path, bool]:
    """Create this run's empty staging folder; return it and whether it is inside OUT."""
    homes = [out] if _stage_in_place(out) else [out.parent, out]
    for home in homes:
        in_place = home == out
        try:
            home.mkdir(parents=True, exist_ok=True)
            # a unique name per call: a folder of a dead run whose PID we now reuse is never merged
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{owner_tag()}.", dir=home))
        except PermissionError:
            if in_place or not out.is_dir():
                raise
            continue  # the parent is read-only but OUT is writable: stage inside OUT
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; it becomes OUT
        return staging, in_place
    raise AssertionError("unreachable")


def _suffix(staging: Path, out: Path) -> str:
    return staging.name[len(f".{out.name}.staging-") :]


def _commit(staging: Path, out: Path) -> None:
    """Put the complete export in ``staging`` (beside OUT) in place of OUT."""
    try:
        os.rename(staging, out)  # OUT absent (or an empty folder): one atomic step
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    old = _work_dir(out, out.parent, "old", _suffix(staging, out))
    os.rename(out, old)  # the previous export stays whole, aside, until the new one is in
    try:
        os.rename(staging, out)  # killed between the two renames: the next run puts `old` back
    finally:
        _settle_old(old, out)


def _commit_in_place(staging: Path, out: Path) -> None:
    """Move the staged entries (staging inside OUT) into OUT one by one. chips_coco.json goes
    first and comes back last, so OUT never looks complete while it holds a mix."""
    (out / "chips_coco.json").unlink(missing_ok=True)
    trash = _work_dir(out, out, "old", _suffix(staging, out))
    trash.mkdir()
    for name in ("images", "mapping.csv", "chips_coco.json"):
        if os.path.lexists(out / name):
            os.rename(out / name, trash / name)
        os.rename(staging / name, out / name)
    shutil.rmtree(trash)
    staging.rmdir()


# ---------------------------------------------------------------- driver


def _bbox(b: list[float]) -> list[float]:
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def export_chips(
    coco: CocoDataset,
    table: ChipTable,
    image_root: str | Path,
    cfg: Config,
    out: str | Path,
    *,
    fmt: str = "jpg",
    quality: int = 95,
    workers: int = 1,
    progress: bool = True,
) -> ExportSummary:
    """Write every chip of ``table`` (already selected, see :func:`select_chips`) to the folder
    ``out``, all at once at the end (see the module docstring): a failure leaves ``out`` as it was."""
    if fmt not in FORMATS:
        raise ValueError(f"image format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    started = time.perf_counter()
    summary = ExportSummary(Path(out))
    out = Path(os.path.abspath(out))  # absolute: "." has no name to put a staging folder beside
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    # what killed runs left: their working folders, and temp files of versions that wrote in place
    summary.leftovers_removed = (
        _recover(out) + remove_stale_temps(out, EXPORT_ENTRIES[1:]) + remove_stale_temps(out / "images")
    )
    check = check_images(coco, table, image_root, cfg.data, progress=progress)
    summary.bad_images = list(check.bad)
    summary.dropped_chips = check.dropped_chips
    staging, in_place = _begin(out)
    try:
        _write_export(coco, check.chips, image_root, cfg, staging, summary, fmt, quality, workers, progress)
        (_commit_in_place if in_place else _commit)(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # OUT was not touched (or is settled by _commit)
        raise
    summary.seconds = time.perf_counter() - started
    return summary


def _write_export(
    coco: CocoDataset,
    table: ChipTable,
    image_root: str | Path,
    cfg: Config,
    out: Path,
    summary: ExportSummary,
    fmt: str,
    quality: int,
    workers: int,
    progress: bool,
) -> None:
    """Write the chips of ``table`` (the images already checked), the COCO file and the mapping into ``out``."""
    images_dir = out / "images"
    images_dir.mkdir()
    dataset = ChipDataset(coco, table, image_root, cfg.chips, cfg.data)

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(table),
        desc="export",
        unit="chip",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    # closing(): on an error the pool is shut down here, before the caller deletes the staging folder
    with bar, contextlib.closing(_results(dataset, images_dir, fmt, quality, workers)) as results:
        for records, bad in results:
            if bad is not None:
                summary.bad_images.append(bad)
                dropped = int((table.image_id == bad.image_id).sum())
                summary.dropped_chips += dropped
                bar.update(dropped)
                continue
            for r in records:
                chip_id = len(images) + 1
                images.append({
                    "id": chip_id, "file_name": r["file_name"], "width": r["width"], "height": r["height"],
                    "source_image_id": r["source_image_id"], "source_file_name": r["source_file_name"],
                    "kind": r["kind"], "scale_index": r["scale_index"], "scale": r["scale"],
                    "origin": r["origin"], "chip_box": r["chip_box"],
                })  # fmt: skip
                summary.pos_chips += r["kind"] == "pos"
                summary.neg_chips += r["kind"] == "neg"
                for box, valid, cat, aid, seg in zip(
                    r["boxes"], r["valid"], r["category_ids"], r["ann_ids"], r["segmentations"]
                ):
                    x1, y1, x2, y2 = box
                    if seg is None:
                        area, segmentation = (x2 - x1) * (y2 - y1), [[x1, y1, x2, y1, x2, y2, x1, y2]]
                    else:
                        area, segmentation = seg["area"], {"size": seg["size"], "counts": seg["counts"]}
                        summary.masks += 1
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": chip_id, "category_id": int(cat),
                        "bbox": _bbox(box), "area": area, "iscrowd": 0 if valid else 1,
                        "segmentation": segmentation, "source_annotation_id": int(aid),
                    })  # fmt: skip
                    summary.annotations += bool(valid)
                    summary.ignore_regions += not valid
            bar.update(len(records))
    summary.chips = len(images)
    info = {
        "description": "SNIPER chips exported by `sniper export`",
        "coordinates": "original = chip / scale + origin (xyxy); bbox is COCO xywh in chip pixels",
        "chip_size": cfg.chips.chip_size,
        "scales": to_dict(cfg.chips.scales),
        "seed": cfg.seed,
    }
    atomic_write_json(
        out / "chips_coco.json",
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": coco.categories,
        },
        indent=None,
    )
    with atomic_open(out / "mapping.csv") as f:
        w = csv.writer(f)
        w.writerow(MAPPING_COLUMNS)
        for im in images:
            w.writerow([
                im["id"], im["file_name"], im["width"], im["height"], im["source_image_id"],
                im["source_file_name"], im["kind"], im["scale_index"], repr(im["scale"]),
                repr(im["origin"][0]), repr(im["origin"][1]), *(repr(v) for v in im["chip_box"]),
            ])  # fmt: skip
