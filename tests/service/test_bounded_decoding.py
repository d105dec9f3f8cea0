"""Upload checks in bounded memory (issue 14 item 2): 8 concurrent 39.7-Mpx PNGs raise the
API process's peak resident memory by less than 150 MB, and the checks that replaced the full
decode still catch what it caught (truncation, damage) and read what it read (EXIF)."""

from __future__ import annotations

import io
import logging
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.uploads import ImageLimits, UploadError, check_image

REPO = Path(__file__).resolve().parents[2]
LIMITS = ImageLimits(max_bytes=10 << 20, max_pixels=40_000_000, min_side=1, max_side=20_000)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def big_png(side: int = 6300) -> bytes:
    """A side x side 8-bit RGB PNG of one colour, compressed row by row (never whole)."""
    row = b"\0" + bytes((200, 40, 10)) * side
    deflate = zlib.compressobj(6)
    data = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def _peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture
def api_process(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The API alone in its own process (uvicorn as in the API image), so its memory is its own."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = dict(os.environ, METAHMR_REDIS_URL=redis_url, METAHMR_RATE_LIMIT_PER_MIN="0")
    log = open(tmp_path / "api.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "service.main:app_from_env"]
        + ["--port", str(port), "--no-proxy-headers", "--log-level", "warning"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (
            tmp_path / "api.log"
        ).read_text()
        time.sleep(0.1)
    try:
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


@pytest.mark.slow
def test_eight_concurrent_40_mpx_pngs_stay_under_150_mb(
    api_process: tuple[str, int], make_image: Callable[..., bytes]
) -> None:
    url, pid = api_process
    png = big_png()
    assert len(png) < 400_000  # a small file for 39.7 Mpx: 119 MB of pixels once decoded

    def submit(data: bytes) -> int:
        files = {"image": ("p.png", data, "image/png")}
        return httpx.post(f"{url}/recover", files=files, timeout=120).status_code

    assert submit(make_image(64, 48)) == 202  # warm: the request path has run once
    before = _peak_rss_mb(pid)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(submit, [png] * 8))
    after = _peak_rss_mb(pid)
    logging.getLogger(__name__).warning(
        "API peak RSS %.0f MB -> %.0f MB (+%.0f MB) for 8 x 39.7 Mpx", before, after, after - before
    )
    assert codes == [202] * 8
    assert after - before < 150, f"peak RSS rose by {after - before:.0f} MB"


def test_png_checks_keep_only_a_block_in_memory() -> None:
    import tracemalloc

    png = big_png(4000)  # 48 MB of rows
    tracemalloc.start()
    try:
        checked = check_image(png, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (checked.width, checked.height) == (4000, 4000)
    assert peak < 8 << 20


def test_a_big_jpeg_is_checked_at_an_eighth_of_its_size() -> None:
    import tracemalloc

    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (30, 60, 90)).save(buf, "JPEG", quality=80)
    data = buf.getvalue()
    tracemalloc.start()
    try:
        checked = check_image(data, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (checked.width, checked.height) == (4000, 3000)
    assert peak < 8 << 20  # 36 MB of pixels at full size
    with pytest.raises(UploadError, match="truncated"):
        check_image(data[: len(data) * 2 // 3], LIMITS)


def test_a_png_cut_short_or_damaged_is_refused() -> None:
    buf = io.BytesIO()
    Image.frombytes("RGB", (300, 300), os.urandom(300 * 300 * 3)).save(buf, "PNG")
    data = buf.getvalue()
    with pytest.raises(UploadError) as cut:
        check_image(data[: len(data) // 2], LIMITS)
    assert (cut.value.status, cut.value.code) == (422, "truncated_image")
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    with pytest.raises(UploadError) as bad:
        check_image(bytes(damaged), LIMITS)
    assert (bad.value.status, bad.value.code) == (422, "corrupt_image")


def test_an_interlaced_png_is_accepted_whole_and_refused_short() -> None:
    width, height = 37, 29
    # Adam7 passes of an 8-bit grey image: rows of ceil((w - x0) / dx) pixels + a filter byte.
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4))
    passes += ((1, 0, 2, 2), (0, 1, 1, 2))
    size = sum(
        ((height - y0 + dy - 1) // dy) * (1 + (width - x0 + dx - 1) // dx)
        for x0, y0, dx, dy in passes
        if width > x0 and height > y0
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1)

    def png(raw: bytes) -> bytes:
        chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw))
        return b"\x89PNG\r\n\x1a\n" + chunks + _chunk(b"IEND", b"")

    Image.open(io.BytesIO(png(bytes(size)))).load()  # the layout is right: Pillow reads it
    assert check_image(png(bytes(size)), LIMITS).width == width
    with pytest.raises(UploadError, match="truncated"):
        check_image(png(bytes(size - 1)), LIMITS)


def test_png_exif_after_the_pixels_still_turns_the_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (64, 32)).save(buf, "PNG")
    data = buf.getvalue()
    iend = data.rindex(b"IEND") - 4
    late = data[:iend] + _chunk(b"eXIf", exif.tobytes()) + data[iend:]
    checked = check_image(late, LIMITS)
    assert (checked.width, checked.height, checked.orientation) == (32, 64, 6)


def test_a_16_bit_grey_png_is_accepted() -> None:
    buf = io.BytesIO()
    Image.new("I;16", (64, 48), 30000).save(buf, "PNG")
    assert check_image(buf.getvalue(), LIMITS).format == "PNG"  # the worker scales it to 8 bit
