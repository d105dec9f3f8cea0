"""Uploads are checked by decoding: type, completeness, pixel and side limits, orientation."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from PIL import Image

from service.uploads import ImageLimits, UploadError, check_image

LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=1_000_000, min_side=16, max_side=4000)


def _reject(data: bytes, limits: ImageLimits = LIMITS) -> UploadError:
    with pytest.raises(UploadError) as exc:
        check_image(data, limits)
    return exc.value


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepts_png_jpeg_webp(make_image: Callable[..., bytes], fmt: str) -> None:
    checked = check_image(make_image(64, 48, fmt), LIMITS)
    assert (checked.format, checked.width, checked.height, checked.orientation) == (fmt, 64, 48, 1)


def test_exif_rotation_swaps_the_reported_size(make_image: Callable[..., bytes]) -> None:
    checked = check_image(make_image(64, 32, "JPEG", orientation=6), LIMITS)
    assert (checked.width, checked.height, checked.orientation) == (32, 64, 6)
    assert checked.meta()["orientation"] == 6


def test_rejects_empty_bytes() -> None:
    assert _reject(b"").status == 400


def test_rejects_bytes_that_are_not_an_image() -> None:
    err = _reject(b"%PDF-1.4 definitely not a picture" * 10)
    assert (err.status, err.code) == (415, "unsupported_image")


def test_rejects_other_image_formats_even_if_valid() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "GIF")
    assert _reject(buf.getvalue()).status == 415


def test_rejects_truncated_jpeg(make_image: Callable[..., bytes]) -> None:
    data = make_image(320, 240, "JPEG", color=(1, 2, 3))
    err = _reject(data[: len(data) // 2])
    assert (err.status, err.code) == (422, "corrupt_image")
    assert "truncated" in err.message


def test_rejects_decompression_bomb_before_decoding(
    make_png_header: Callable[[int, int], bytes],
) -> None:
    bomb = make_png_header(2000, 2000)  # 4 MP claimed by a file of a few hundred bytes
    assert len(bomb) < 1000
    err = _reject(bomb)
    assert (err.status, err.code) == (413, "too_many_pixels")


def test_rejects_bomb_beyond_pillows_own_limit(
    make_png_header: Callable[[int, int], bytes],
) -> None:
    err = _reject(make_png_header(100_000, 100_000))
    assert (err.status, err.code) == (413, "too_many_pixels")


def test_rejects_zero_sized_image(make_png_header: Callable[[int, int], bytes]) -> None:
    assert _reject(make_png_header(0, 0)).status in (415, 422)


def test_rejects_one_pixel_wide_strip(make_png_header: Callable[[int, int], bytes]) -> None:
    err = _reject(make_png_header(1, 100_000), ImageLimits(1 << 20, 40_000_000, 16, 200_000))
    assert (err.status, err.code) == (422, "bad_image_size")
    assert "1x100000" in err.message


def test_rejects_more_bytes_than_the_limit(make_image: Callable[..., bytes]) -> None:
    data = make_image(64, 48)
    err = _reject(data, ImageLimits(len(data) - 1, 1_000_000, 16, 4000))
    assert (err.status, err.code) == (413, "upload_too_large")
