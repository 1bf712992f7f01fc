"""Safe image decoding: path containment, size limits before decoding, any mode -> 8-bit RGB.

* :func:`resolve_image_path` refuses file names that would leave the image root
  (absolute paths, ``..``, symlinks pointing outside).
* :func:`load_image` checks the pixel count from the header BEFORE decoding
  (decompression bombs), honours EXIF orientation, converts every mode to 8-bit
  RGB (16-bit and 32-bit integer images are scaled, not clipped), and turns every
  decoding failure into :class:`~sniper.errors.BadImageError` naming the file.
  With ``draft_size`` a JPEG is decoded at 1/2, 1/4 or 1/8 size (libjpeg DCT
  scaling) when the caller will downscale anyway; the returned
  :class:`LoadedImage` carries the exact factor between decoded and original pixels.
* :func:`image_size` / :func:`check_image_size` read only the header.

Coordinates: "original" pixels are those of the image after EXIF orientation.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from sniper.errors import BadImageError

__all__ = ["LoadedImage", "check_image_size", "image_size", "load_image", "resolve_image_path", "to_rgb8"]

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPS_AXES = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112
_pillow_limit_lock = threading.Lock()


@dataclass(frozen=True)
class LoadedImage:
    """A decoded RGB image and how its pixels relate to the original image.

    ``decoded = original * scale`` per axis (1.0 unless JPEG draft decoding reduced it);
    ``original_size`` is (w, h) after EXIF orientation at full resolution.
    """

    image: Image.Image
    scale_x: float
    scale_y: float
    original_size: tuple[int, int]

    def to_original(self, xyxy: np.ndarray) -> np.ndarray:
        """Decoded-pixel boxes -> original pixels."""
        b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        return b / np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])

    def from_original(self, xyxy: np.ndarray) -> np.ndarray:
        """Original-pixel boxes -> decoded pixels."""
        b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        return b * np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])


def resolve_image_path(root: str | os.PathLike[str], file_name: str) -> Path:
    """``root / file_name``, refusing names that resolve outside ``root``.

    Refused: absolute names, names with NUL bytes, and names that leave the root
    through ``..`` or a symbolic link. The returned path is fully resolved.
    """
    if not isinstance(file_name, str) or not file_name or "\0" in file_name:
        raise BadImageError(repr(file_name), "invalid file name")
    if os.path.isabs(file_name) or Path(file_name).is_absolute() or file_name.startswith(("/", "\\")):
        raise BadImageError(
            file_name, "absolute file names are not allowed (must be relative to the image root)"
        )
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / file_name).resolve()
    if not candidate.is_relative_to(root_resolved):
        raise BadImageError(
            file_name, f"path escapes the image root {root_resolved} (resolves to {candidate})"
        )
    return candidate


@contextlib.contextmanager
def _pillow_bomb_check_off() -> Iterator[None]:
    """Pillow's own bomb limit (~179 MP) would pre-empt ours; we check the header size ourselves."""
    with _pillow_limit_lock:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise BadImageError(str(path), "file not found")
    if not path.is_file():
        raise BadImageError(str(path), "not a regular file")
    try:
        with _pillow_bomb_check_off():
            return Image.open(path)
    except Exception as e:  # any decoder failure on untrusted data is a bad image
        raise BadImageError(str(path), f"cannot identify image ({type(e).__name__}: {e})") from None


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception:  # unreadable EXIF means no orientation information
        return 1


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    w, h = im.size
    return (h, w) if _orientation(im) in _SWAPS_AXES else (w, h)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(w, h) after EXIF orientation, from the header only."""
    with _open(Path(path)) as im:
        return _oriented_size(im)


def check_image_size(path: str | os.PathLike[str], expected_w: int, expected_h: int) -> str | None:
    """None if the file's (EXIF-oriented) size is ``expected_w`` x ``expected_h``, else the problem."""
    path = Path(path)
    with _open(path) as im:
        stored = im.size
        oriented = _oriented_size(im)
    if oriented == (expected_w, expected_h):
        return None
    msg = f"{path}: annotation says {expected_w}x{expected_h}, file is {oriented[0]}x{oriented[1]}"
    if oriented != stored:
        msg += f" after EXIF rotation ({stored[0]}x{stored[1]} as stored)"
        if stored == (expected_w, expected_h):
            msg += "; the annotations were probably made on the unrotated image"
    return msg


def to_rgb8(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB.

    16-bit modes ('I;16*') are scaled by 255/65535. 32-bit integer 'I' images are
    treated as 16-bit when their values lie in 0..65535 (how 16-bit PNGs decode),
    otherwise min-max scaled; float 'F' images in [0, 1] are scaled by 255, otherwise
    min-max scaled. Alpha is dropped (the colour channels are kept as stored);
    palette images go through RGBA so palette transparency does not warn.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            a = a * (255.0 / 65535.0)
        elif mode == "I" and a.size and a.min() >= 0 and a.max() <= 65535:
            a = a * (255.0 / 65535.0) if a.max() > 255 else a
        elif mode == "F" and a.size and a.min() >= 0 and a.max() <= 1:
            a = a * 255.0
        else:
            finite = a[np.isfinite(a)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            a = (np.nan_to_num(a, nan=lo) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([g, g, g], axis=-1), mode="RGB")
    if mode == "P":
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int,
    draft_size: tuple[int, int] | None = None,
) -> LoadedImage:
    """Decode ``path`` to 8-bit RGB in the EXIF-oriented frame.

    ``max_pixels`` is checked against the header before any pixel is decoded.
    ``draft_size`` (w, h in the oriented frame): the caller needs at least this many
    pixels; a JPEG may then be decoded at 1/2, 1/4 or 1/8 size (never below
    ``draft_size``), and ``LoadedImage.scale_x/scale_y`` give the exact factor.
    """
    path = Path(path)
    src = _open(path)
    try:
        im = src
        w, h = im.size
        if w * h > max_pixels:
            raise BadImageError(
                str(path),
                f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (data.max_image_pixels)",
            )
        orientation = _orientation(im)
        original = (h, w) if orientation in _SWAPS_AXES else (w, h)
        scale = 1.0
        if draft_size is not None and im.format == "JPEG":
            dw, dh = draft_size
            if orientation in _SWAPS_AXES:
                dw, dh = dh, dw
            if dw > 0 and dh > 0:
                res = im.draft(None, (int(dw), int(dh)))
                if res is not None:
                    # res[1] is the original extent in decoded pixels: (0, 0, w / s, h / s).
                    scale = float(res[1][2]) / w
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = to_rgb8(im)
            rgb.load()
        except BadImageError:
            raise
        except Exception as e:  # any decoder failure on untrusted data is a bad image
            reason = str(e) or type(e).__name__
            if "truncated" in reason.lower():
                reason = f"truncated file ({reason})"
            raise BadImageError(str(path), f"cannot decode image: {reason}") from None
    finally:
        src.close()
    return LoadedImage(rgb, scale, scale, original)
