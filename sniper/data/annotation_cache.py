"""A columnar cache of loaded annotation files, so a run parses a large file once.

The first :func:`sniper.data.coco.load_coco` of a file writes, atomically, one ``.npz`` under
``$SNIPER_CACHE/annotations/`` (default ``${XDG_CACHE_HOME:-~/.cache}/sniper/annotations/``)
named ``<hash of the absolute path>-<size>-<mtime_ns>-<hash of the rest>.npz``: the images
(ids, sizes, file names), the categories, the annotations grouped per image and the
:class:`~sniper.data.coco.LoadReport` (with its first skip, so ``strict=True`` raises the same
error from the cache). "The rest" is the inode, the reader and its options, the side files (an
OpenImages names or sizes file, an image root) and :data:`FORMAT`, so any change there is a miss.
A later load of the unchanged file reads that file instead (seconds); a file whose size or
modification time changed is parsed again, and its older cache files are removed.

``SNIPER_CACHE=off`` (or ``0``, ``no``, ``false``, ``none``) disables it. A cache file that cannot
be read (truncated, corrupt, another format) is ignored and rewritten. A file modified less
than :data:`SETTLE_S` seconds ago is not cached: a rewrite within the file system's timestamp
granularity could keep its size and modification time (git's "racy" files). Failing to write
(read-only or full disk) only costs the cache, never the load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sniper.io import atomic_path, remove_stale_temps

__all__ = ["FORMAT", "SETTLE_S", "CacheKey", "cache_dir", "key_for", "load", "store"]

FORMAT = 1  # bump when what is stored (or how a file is parsed) changes
SETTLE_S = 2.0
_OFF = {"off", "0", "no", "false", "none"}


def cache_dir() -> Path | None:
    """The folder of annotation caches, or None when ``SNIPER_CACHE`` turns the cache off."""
    value = os.environ.get("SNIPER_CACHE", "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        root = Path(value).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "sniper"
    return root / "annotations"


@dataclass(frozen=True)
class CacheKey:
    file: Path  # the cache file
    prefix: str  # the part of its name shared by every cache of the same input path


def _hash(text: str, n: int) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def key_for(
    paths: Iterable[str | os.PathLike[str]],
    params: Mapping[str, Any],
    *,
    extra_paths: Iterable[str | os.PathLike[str] | None] = (),
) -> CacheKey | None:
    """The cache entry of ``paths[0]`` read with ``params`` (JSON-able) and side files ``paths[1:]``.

    ``extra_paths`` are inputs that may be missing (their absence is part of the key). None when
    the cache is off or an input was modified less than :data:`SETTLE_S` ago."""
    folder = cache_dir()
    if folder is None:
        return None
    paths = [Path(p) for p in paths]
    ident: list[Any] = [FORMAT, dict(params)]
    now = time.time()
    stats = []
    for p in paths + [Path(p) for p in extra_paths if p is not None]:
        try:
            st = p.stat()
        except OSError:
            if p in paths:
                return None
            ident.append([str(p.absolute()), None])
            continue
        if now - st.st_mtime < SETTLE_S:
            return None
        stats.append(st)
        ident.append([str(p.absolute()), st.st_size, st.st_mtime_ns, st.st_ino])
    main = paths[0]
    prefix = _hash(str(main.absolute()), 16)
    st = stats[0]
    name = f"{prefix}-{st.st_size}-{st.st_mtime_ns}-{_hash(json.dumps(ident, sort_keys=True), 12)}.npz"
    return CacheKey(folder / name, prefix)


def _blob(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass"), dtype=np.uint8)


def _unblob(a: np.ndarray) -> Any:
    return json.loads(a.tobytes().decode("utf-8", "surrogatepass"))


def store(key: CacheKey, ds: Any) -> bool:
    """Write ``ds`` (a :class:`~sniper.data.coco.CocoDataset`) under ``key``; False if that failed."""
    r = ds.report
    meta = {
        "format": FORMAT,
        "categories": ds.categories,
        "report": {
            "counts": r.counts,
            "examples": r.examples,
            "totals": r.totals,
            "first_skip": list(r._first_skip) if r._first_skip is not None else None,
        },
    }
    arrays = {
        "meta": _blob(meta),
        "file_names": _blob([im.file_name for im in ds.images]),
        "image_ids": ds.image_ids,
        "widths": ds.widths,
        "heights": ds.heights,
        "offsets": ds._offsets,
        "boxes": ds._boxes,
        "category_ids": ds._cats,
        "iscrowd": ds._crowd,
        "ann_ids": ds._ann_ids,
    }
    folder = key.file.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)  # of a load killed while writing its cache
        with atomic_path(key.file) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        for old in folder.glob(f"{key.prefix}-*.npz"):  # the same input path, before it changed
            if old != key.file:
                with contextlib.suppress(OSError):
                    old.unlink()
    except OSError:
        return False
    return True


def load(key: CacheKey, source: str, *, strict: bool = False) -> Any:
    """The cached dataset of ``key`` (its report naming ``source``), or None on a miss or an unreadable file.

    ``strict``: the first skipped record raises as :func:`~sniper.data.coco.load_coco` would."""
    ds = _read(key.file, source)
    if ds is not None and strict:
        ds.report.raise_first_skip()
    return ds


def _read(file: Path, source: str) -> Any:
    from sniper.data.coco import CocoDataset, ImageRecord, LoadReport

    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        meta = _unblob(a["meta"])
        names = _unblob(a["file_names"])
        if meta.get("format") != FORMAT:
            return None
        ids, widths, heights, offsets = a["image_ids"], a["widths"], a["heights"], a["offsets"]
        boxes, cats, crowd, ann_ids = a["boxes"], a["category_ids"], a["iscrowd"], a["ann_ids"]
        n_img, n_ann = len(ids), len(boxes)
        ok = (
            len(names) == n_img == len(widths) == len(heights) == len(offsets) - 1
            and boxes.shape == (n_ann, 4)
            and len(cats) == len(crowd) == len(ann_ids) == n_ann
            and offsets[0] == 0
            and offsets[-1] == n_ann
            and bool(np.all(np.diff(offsets) >= 0))
        )
        if not ok:
            return None
        rep = meta["report"]
        report = LoadReport(
            source=source, counts=rep["counts"], examples=rep["examples"], totals=rep["totals"]
        )
        if rep["first_skip"] is not None:
            report._first_skip = tuple(rep["first_skip"])
        images = list(map(ImageRecord, ids.tolist(), names, widths.tolist(), heights.tolist()))
        image_index = np.repeat(np.arange(n_img, dtype=np.int64), np.diff(offsets))
        return CocoDataset(
            images,
            meta["categories"],
            boxes,
            cats.astype(np.int64),
            crowd.astype(bool),
            ann_ids,
            image_index,
            report,
        )
    except Exception:  # a truncated or foreign file is a miss: the caller parses and rewrites it
        return None
