"""Image decoding: path containment, every mode to 8-bit RGB, EXIF, bombs, broken files, JPEG draft."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sniper.data.images import check_image_size, image_size, load_image, resolve_image_path, to_rgb8
from sniper.errors import BadImageError

BIG = 10**9


def gradient(w: int = 64, h: int = 48) -> np.ndarray:
    """An asymmetric RGB pattern (so rotations are distinguishable)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 77)], axis=-1).astype(np.uint8)


# ------------------------------------------------------------------ paths


def test_resolve_inside_root(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"x")
    assert resolve_image_path(tmp_path, "sub/a.jpg") == (tmp_path / "sub" / "a.jpg").resolve()
    # '..' that stays inside the root is fine
    assert resolve_image_path(tmp_path, "sub/../sub/a.jpg") == (tmp_path / "sub" / "a.jpg").resolve()


@pytest.mark.parametrize("name", ["../secret.jpg", "sub/../../secret.jpg", "/etc/passwd", "", "a\0b.jpg"])
def test_resolve_refuses_escapes(tmp_path, name):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    with pytest.raises(BadImageError) as e:
        resolve_image_path(root, name)
    assert e.value.reason


def test_resolve_refuses_symlink_out_of_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "link.jpg")
    os.symlink(tmp_path, root / "dirlink")
    with pytest.raises(BadImageError, match="escapes the image root"):
        resolve_image_path(root, "link.jpg")
    with pytest.raises(BadImageError, match="escapes the image root"):
        resolve_image_path(root, "dirlink/outside.jpg")
    # a symlink that stays inside is allowed
    (root / "real.jpg").write_bytes(b"x")
    os.symlink(root / "real.jpg", root / "inner.jpg")
    assert resolve_image_path(root, "inner.jpg") == (root / "real.jpg").resolve()


# ------------------------------------------------------------------ modes


def _roundtrip(tmp_path, im: Image.Image, fmt: str = "PNG", **save) -> np.ndarray:
    p = tmp_path / f"img.{fmt.lower()}"
    im.save(p, format=fmt, **save)
    out = load_image(p, max_pixels=BIG)
    assert out.image.mode == "RGB"
    assert (out.scale_x, out.scale_y) == (1.0, 1.0)
    assert out.original_size == out.image.size
    return np.asarray(out.image)


def test_rgb_png_is_exact(tmp_path):
    a = gradient()
    np.testing.assert_array_equal(_roundtrip(tmp_path, Image.fromarray(a)), a)


def test_grayscale_l_and_1(tmp_path):
    g = gradient()[..., 0]
    out = _roundtrip(tmp_path, Image.fromarray(g, mode="L"))
    np.testing.assert_array_equal(out, np.stack([g] * 3, axis=-1))
    b = Image.fromarray(g > 128).convert("1")
    out = _roundtrip(tmp_path, b)
    np.testing.assert_array_equal(out[..., 0], np.where(g > 128, 255, 0))


def test_rgba_drops_alpha_la_too(tmp_path):
    a = gradient()
    rgba = np.concatenate([a, np.full(a.shape[:2] + (1,), 10, np.uint8)], axis=-1)
    np.testing.assert_array_equal(_roundtrip(tmp_path, Image.fromarray(rgba, mode="RGBA")), a)
    la = Image.fromarray(a[..., 0], mode="L").convert("LA")
    np.testing.assert_array_equal(_roundtrip(tmp_path, la)[..., 1], a[..., 0])


def test_palette_with_transparency(tmp_path):
    p = Image.fromarray(gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p.info["transparency"] = 0
    expected = np.asarray(p.convert("RGB"))
    np.testing.assert_array_equal(_roundtrip(tmp_path, p), expected)


def test_cmyk_jpeg(tmp_path):
    a = gradient()
    cmyk = Image.fromarray(a).convert("CMYK")
    out = _roundtrip(tmp_path, cmyk, "JPEG", quality=95)
    assert np.abs(out.astype(int) - a.astype(int)).mean() < 8


def test_16_bit_is_scaled_not_clipped(tmp_path):
    v = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    im = Image.fromarray(v)
    out = _roundtrip(tmp_path, im)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    # the same values in a 32-bit integer image (how older Pillow decodes 16-bit PNG)
    out = np.asarray(to_rgb8(Image.fromarray(v.astype(np.int32))))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    # 'I' data already in 0..255 is left as is; other ranges are min-max scaled
    assert np.asarray(to_rgb8(Image.fromarray(np.array([[0, 200]], np.int32))))[0, :, 0].tolist() == [
        0,
        200,
    ]
    wide = np.array([[-1000, 0, 99000]], dtype=np.int32)
    assert np.asarray(to_rgb8(Image.fromarray(wide)))[0, :, 0].tolist() == [0, 3, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert np.asarray(to_rgb8(f))[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    a = gradient(64, 48)
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "r.png"
    im.save(p, exif=exif.tobytes())
    out = load_image(p, max_pixels=BIG)
    expected = {
        1: a,
        2: a[:, ::-1],
        3: a[::-1, ::-1],
        4: a[::-1],
        5: a.transpose(1, 0, 2),
        6: np.rot90(a, -1),
        7: np.rot90(a, 2).transpose(1, 0, 2),
        8: np.rot90(a, 1),
    }[orientation]
    np.testing.assert_array_equal(np.asarray(out.image), expected)
    assert out.original_size == out.image.size == (expected.shape[1], expected.shape[0])
    assert image_size(p) == out.original_size
    # the JSON normally states the oriented size; a stored-frame size is reported as such
    assert check_image_size(p, *out.original_size) is None
    if orientation in (5, 6, 7, 8):
        msg = check_image_size(p, 64, 48)
        assert "after EXIF rotation" in msg and "unrotated" in msg


def test_check_image_size_mismatch(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(gradient(64, 48)).save(p)
    assert check_image_size(p, 64, 48) is None
    assert "annotation says 60x48, file is 64x48" in check_image_size(p, 60, 48)


# ------------------------------------------------------------------ broken and huge


def test_missing_file(tmp_path):
    with pytest.raises(BadImageError, match="file not found"):
        load_image(tmp_path / "nope.jpg", max_pixels=BIG)
    with pytest.raises(BadImageError, match="not a regular file"):
        load_image(tmp_path, max_pixels=BIG)


def test_not_an_image(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"this is not a JPEG at all")
    with pytest.raises(BadImageError, match="cannot identify image") as e:
        load_image(p, max_pixels=BIG)
    assert e.value.file == str(p)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt):
    p = tmp_path / f"t.{fmt.lower()}"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(
        p, format=fmt
    )
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated|cannot decode"):
        load_image(p, max_pixels=BIG)


def _png_claiming(path, width: int, height: int) -> None:
    """A tiny PNG whose header claims ``width`` x ``height`` (what a decompression bomb looks like)."""
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_decompression_bomb_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    _png_claiming(p, 20000, 20000)
    with pytest.raises(BadImageError, match="20000x20000 = 400000000 pixels exceeds the limit of 1000000"):
        load_image(p, max_pixels=1_000_000)


def test_above_pillow_default_limit_but_within_ours(tmp_path, monkeypatch):
    """Our limit rules, not Pillow's global one (which is restored afterwards)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    p = tmp_path / "a.png"
    Image.fromarray(gradient()).save(p)
    assert load_image(p, max_pixels=BIG).image.size == (64, 48)
    assert Image.MAX_IMAGE_PIXELS == 100


# ------------------------------------------------------------------ JPEG draft


@pytest.mark.parametrize(
    ("size", "draft", "expected_scale"),
    [
        ((800, 600), (400, 300), 0.5),
        ((800, 600), (399, 100), 0.5),
        ((800, 600), (100, 75), 0.125),
        ((800, 600), (201, 10), 0.5),  # 800 // 201 = 3: the largest power of two <= 3 is 2
        ((800, 600), (200, 10), 0.25),
        ((800, 600), (800, 600), 1.0),
        ((801, 601), (100, 75), 0.125),  # odd sizes: decoded size rounds up, factor stays exact
    ],
)
def test_jpeg_draft_scale(tmp_path, size, draft, expected_scale):
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x >= 400) * 255, (y >= 300) * 255, np.zeros_like(x)], axis=-1).astype(np.uint8)
    p = tmp_path / "d.jpg"
    Image.fromarray(a).save(p, quality=95)
    out = load_image(p, max_pixels=BIG, draft_size=draft)
    assert out.scale_x == out.scale_y == expected_scale
    assert out.original_size == (w, h)
    dw, dh = out.image.size
    assert dw >= draft[0] and dh >= draft[1]  # never below what the caller asked for
    assert (dw, dh) == (-(-w * expected_scale // 1), -(-h * expected_scale // 1))
    # coordinates map exactly: the vertical edge at x=400 (original) is at 400 * scale decoded
    edge = out.from_original(np.array([[400, 0, 400, 0]]))[0, 0]
    assert edge == 400 * expected_scale
    row = np.asarray(out.image)[dh // 2, :, 0].astype(int)
    step = int(np.argmax(np.abs(np.diff(row)))) + 1  # first decoded column right of the edge
    assert abs(step - edge) <= 1.0
    np.testing.assert_allclose(out.to_original(out.from_original(np.array([[1.0, 2, 3, 4]]))), [[1, 2, 3, 4]])


def test_draft_ignored_for_png_and_respects_exif_rotation(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(gradient(64, 48)).save(p)
    assert load_image(p, max_pixels=BIG, draft_size=(8, 8)).scale_x == 1.0
    # JPEG stored 800x600 with orientation 6 (shows as 600x800): asking for 150x200 oriented gives 1/4
    j = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (800, 600), (10, 20, 30)).save(j, exif=exif.tobytes())
    out = load_image(j, max_pixels=BIG, draft_size=(150, 200))
    assert out.original_size == (600, 800)
    assert out.scale_x == 0.25 and out.image.size == (150, 200)
