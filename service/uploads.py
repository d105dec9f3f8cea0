"""Upload checks at the edge: size, real image type (by decoding), pixel limits, orientation.

Everything here runs before a job exists, so a bad upload never reaches Redis or a worker.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import ExifTags, Image

# What the worker can read; checked by decoding, never by file name or declared type.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")


class UploadError(Exception):
    """A rejected upload, with the HTTP status and error code the API answers with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    min_side: int
    max_side: int


@dataclass(frozen=True)
class CheckedImage:
    """An upload that decoded completely. `width`/`height` are as displayed, i.e. after the
    EXIF orientation is applied."""

    data: bytes
    format: str
    width: int
    height: int
    orientation: int  # EXIF orientation tag (1 = upright); applied by the worker

    def meta(self) -> dict[str, object]:
        return {
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "bytes": len(self.data),
            "orientation": self.orientation,
        }


def check_image(data: bytes, limits: ImageLimits) -> CheckedImage:
    """Decode `data` fully and check it against `limits`; raises UploadError."""
    if not data:
        raise UploadError(400, "empty_image", "the 'image' part is empty")
    if len(data) > limits.max_bytes:
        raise UploadError(
            413, "upload_too_large", f"image is {len(data)} bytes; the limit is {limits.max_bytes}"
        )
    image = _open(data, limits)
    width, height = image.size
    _check_size(width, height, limits)
    try:
        # load() decodes every pixel: truncated and corrupt files fail here, not in a worker.
        image.load()
        orientation = int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadError(
            422, "corrupt_image", f"the {image.format} image could not be decoded: {exc}"
        ) from exc
    if orientation not in range(1, 9):
        orientation = 1
    # Orientations 5-8 turn the picture by 90 degrees: the worker (ImageOps.exif_transpose)
    # sees width and height swapped, and boxes are given in that frame.
    if orientation >= 5:
        width, height = height, width
    return CheckedImage(
        data=data, format=str(image.format), width=width, height=height, orientation=orientation
    )


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    # Pillow warns above its own (global) pixel limit and raises at twice it; we check our
    # own limit on the header size before decoding, so silence the warning and map the error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except Image.DecompressionBombError as exc:
            raise UploadError(413, "too_many_pixels", f"image refused: {exc}") from exc
        except Image.UnidentifiedImageError as exc:
            raise UploadError(
                415,
                "unsupported_image",
                "the upload could not be read as a JPEG, PNG or WebP image (checked by "
                "decoding it, not by its name or declared type)",
            ) from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise UploadError(
                422, "corrupt_image", f"the image header could not be read: {exc}"
            ) from exc
    return image


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise UploadError(
            413,
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels; the limit is "
            f"{limits.max_pixels} (downscale it before sending)",
        )
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        raise UploadError(
            422,
            "bad_image_size",
            f"image is {width}x{height} pixels; each side must be between "
            f"{limits.min_side} and {limits.max_side}",
        )
