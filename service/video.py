"""Video uploads at the edge: a cheap container check, no decoding (PyAV is a worker
dependency; the API image stays slim).

What is checked here, before a job exists:

- the container, by its first bytes: ISO-BMFF (`ftyp` box: MP4, or MOV with the `qt  `
  brand) or EBML with a `webm`/`matroska` doctype;
- the byte limit;
- for MP4/MOV, the top-level box structure: every box must fit in the upload (a cut-off
  file fails here), a `moov` box must exist, and its `mvhd` duration and the video track's
  `tkhd` size are held to the duration and pixel limits.

What only decoding can tell (frame count, a WebM's duration, corrupt frames, no person) is
checked by the worker (`worker.video`), which fails the job with a message that says why;
the limits travel with the job (`CheckedVideo.meta()["limits"]`) so both sides use the same.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass

from service.uploads import UploadError

_EBML_MAGIC = b"\x1a\x45\xdf\xa3"


@dataclass(frozen=True)
class VideoLimits:
    """max_bytes: the upload; max_seconds: duration; max_frames: decoded frames;
    max_pixels: one frame's width x height."""

    max_bytes: int
    max_seconds: float
    max_frames: int
    max_pixels: int


@dataclass(frozen=True)
class CheckedVideo:
    """A video upload whose container looks right. width/height/duration_s: from the MP4/MOV
    header when it has them, else None (the worker measures them)."""

    data: bytes
    format: str
    limits: VideoLimits
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None

    def meta(self) -> dict[str, object]:
        """The job record's upload description; `kind: video` routes the job in the worker."""
        return {
            "kind": "video",
            "format": self.format,
            "bytes": len(self.data),
            "width": self.width,
            "height": self.height,
            "duration_s": self.duration_s,
            "limits": asdict(self.limits),
        }


def sniff_video(data: bytes) -> str | None:
    """The container format of `data` from its first bytes ("mp4", "mov", "webm"), or None."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "mov" if data[8:12] == b"qt  " else "mp4"
    if data[:4] == _EBML_MAGIC:
        head = data[:64]
        if b"webm" in head or b"matroska" in head:
            return "webm"
    return None


def check_video(data: bytes, limits: VideoLimits) -> CheckedVideo:
    """Check a video upload's container and limits; raises UploadError."""
    fmt = sniff_video(data)
    if fmt is None:
        raise UploadError(415, "unsupported_video", "the upload is not an MP4, MOV or WebM video")
    if len(data) > limits.max_bytes:
        raise UploadError(
            413, "upload_too_large", f"video is {len(data)} bytes; the limit is {limits.max_bytes}"
        )
    if fmt == "webm":
        return CheckedVideo(data, fmt, limits)
    boxes = _boxes(memoryview(data), 0, len(data))
    if "moov" not in boxes:
        raise UploadError(
            422, "corrupt_video", "the MP4/MOV file has no 'moov' box (its index): it is cut off or not finished"
        )
    moov = boxes["moov"]
    duration = _mvhd_duration(moov)
    width, height = _video_size(moov)
    if duration is not None and duration > limits.max_seconds:
        raise UploadError(
            413, "video_too_long", f"video is {duration:.1f} s long; the limit is {limits.max_seconds:g} s"
        )
    if width and height and width * height > limits.max_pixels:
        raise UploadError(
            413,
            "too_many_pixels",
            f"video frames are {width}x{height} = {width * height} pixels; the limit is "
            f"{limits.max_pixels} (downscale it before sending)",
        )
    return CheckedVideo(data, fmt, limits, width or None, height or None, duration)


def _boxes(data: memoryview, start: int, end: int) -> dict[str, memoryview]:
    """ISO-BMFF boxes in data[start:end] by type (first of each), payloads only, as views
    (no copy of a video's media data)."""
    out: dict[str, memoryview] = {}
    pos = start
    while pos < end:
        if end - pos < 8:
            raise UploadError(422, "corrupt_video", "the MP4/MOV file ends inside a box header: it is cut off")
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            if end - pos < 16:
                raise UploadError(422, "corrupt_video", "the MP4/MOV file ends inside a box header: it is cut off")
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            name = kind.decode("latin-1")
            raise UploadError(
                422,
                "corrupt_video",
                f"the MP4/MOV box {name!r} claims {size} bytes but only {end - pos} remain: the "
                "file is cut off or corrupt",
            )
        out.setdefault(kind.decode("latin-1"), data[pos + header:pos + size])
        pos += size
    return out


def _mvhd_duration(moov: memoryview) -> float | None:
    mvhd = _boxes(moov, 0, len(moov)).get("mvhd")
    if mvhd is None or len(mvhd) < 20:
        return None
    if mvhd[0] == 1 and len(mvhd) >= 32:
        timescale, duration = struct.unpack(">IQ", mvhd[20:32])
    else:
        timescale, duration = struct.unpack(">II", mvhd[12:20])
    return duration / timescale if timescale else None


def _video_size(moov: memoryview) -> tuple[int, int]:
    """The largest track size in the `tkhd` boxes (audio tracks have 0 x 0)."""
    best = (0, 0)
    pos = 0
    while pos + 8 <= len(moov):  # every trak, not only the first
        size, kind = struct.unpack(">I4s", moov[pos:pos + 8])
        if size < 8:
            break
        if kind == b"trak":
            tkhd = _boxes(moov, pos + 8, pos + size).get("tkhd")
            if tkhd is not None:
                at = 76 if tkhd[0] == 0 else 88  # version 0 / 1 layouts
                if len(tkhd) >= at + 8:
                    w, h = struct.unpack(">II", tkhd[at:at + 8])
                    best = max(best, (w >> 16, h >> 16), key=lambda s: s[0] * s[1])
        pos += size
    return best
