"""Upload checks at the edge: size, real image type (by decoding), pixel limits, orientation,
completeness, in bounded memory (never the whole image's pixels for JPEG and PNG).

Everything here runs before a job exists, so a bad upload never reaches Redis or a worker.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass

from PIL import ExifTags, Image

# What the worker can read; checked by decoding, never by file name or declared type.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
# Full decodes (WebP only) at once per process: each may take width x height x 4 bytes.
_FULL_DECODES = threading.BoundedSemaphore(1)


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
    """Check `data` against `limits` and that it decodes completely; raises UploadError.

    Never holds the full pixels: the size comes from the header, then a JPEG is decoded at
    1/8 scale (its DCT can skip the rest), a PNG's compressed rows are inflated a block at a
    time and counted (`_check_png_data`), and a WebP (Pillow has no reduced decode for it)
    is decoded fully, one at a time per process (`_FULL_DECODES`)."""
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
        if image.format == "PNG":
            exif = _check_png_data(data, width, height)
            orientation = _orientation(exif)
        else:
            orientation = int(image.getexif().get(ExifTags.Base.Orientation, 1))
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
            else:
                with _FULL_DECODES:
                    image.load()
                    image.close()
    except UploadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
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


def _orientation(exif: bytes | None) -> int:
    if not exif:
        return 1
    tags = Image.Exif()
    tags.load(exif)
    return int(tags.get(ExifTags.Base.Orientation, 1))


# PNG colour type -> samples per pixel (PNG spec 11.2.2).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: first column, first row, column step, row step.
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
_INFLATE_BLOCK = 1 << 20


def _check_png_data(data: bytes, width: int, height: int) -> bytes | None:
    """Walk a PNG's chunks (CRCs checked) and inflate its image data a block at a time,
    keeping only the count: fewer bytes than the header's size needs means the rows stop
    early (a truncated file), which Pillow would fill with black. Returns the eXIf chunk,
    wherever it is (Pillow's own getexif decodes the whole image to find one after IDAT)."""
    view = memoryview(data)
    at = 8  # after the signature, which Pillow checked
    header: tuple[int, ...] | None = None
    exif: bytes | None = None
    inflate = zlib.decompressobj()
    inflated = 0
    while at + 8 <= len(view):
        length, kind = struct.unpack(">I4s", view[at : at + 8])
        body = view[at + 8 : at + 8 + length]
        crc = view[at + 8 + length : at + 12 + length]
        if len(body) < length or len(crc) < 4:
            break  # the file stops inside this chunk
        if zlib.crc32(body, zlib.crc32(kind)) != struct.unpack(">I", crc)[0]:
            raise UploadError(
                422, "corrupt_image", f"the PNG image is damaged: bad checksum in {kind!r}"
            )
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"eXIf" and exif is None:
            exif = bytes(body)
        elif kind == b"IDAT":
            inflated += _inflate_count(inflate, body)
        elif kind == b"IEND":
            break
        at += 12 + length
    inflated += len(inflate.flush())  # output zlib held back at the last block boundary
    if header is None:
        raise UploadError(422, "corrupt_image", "the PNG image has no header chunk")
    _, _, depth, colour, _, _, interlace = header
    bits = depth * _PNG_CHANNELS.get(colour, 1)
    expected = _png_data_size(width, height, bits, interlaced=interlace == 1)
    if inflated < expected:
        rows = inflated * height // expected
        raise UploadError(
            422,
            "truncated_image",
            f"the PNG image is truncated: its pixel data stops after about {rows} of "
            f"{height} rows ({inflated} of {expected} bytes)",
        )
    return exif


def _inflate_count(inflate: zlib._Decompress, chunk: memoryview) -> int:
    """Bytes `chunk` inflates to, a block at a time (memory: one block, not the image)."""
    count = 0
    pending: bytes | memoryview = chunk
    while pending and not inflate.eof:
        count += len(inflate.decompress(pending, _INFLATE_BLOCK))
        pending = inflate.unconsumed_tail
    return count


def _png_data_size(width: int, height: int, bits: int, *, interlaced: bool) -> int:
    """Bytes of filtered rows (one filter byte each) for the image, per PNG spec 7.2/8.2."""

    def rows(w: int, h: int) -> int:
        return h * (1 + (w * bits + 7) // 8) if w and h else 0

    if not interlaced:
        return rows(width, height)
    return sum(
        rows((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in _ADAM7
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
