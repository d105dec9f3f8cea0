"""Silent garbage (issue 14 item 6), through the API and a real worker process: a 16-bit
grey PNG reaches the pipeline as its own grey levels (not all white), and a PNG whose rows
stop early is refused at the edge instead of running on a black image."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from broker_checks import stored_job_ids
from PIL import Image

from service.client import ApiError

pytestmark = pytest.mark.e2e


def _png16_grey(width: int = 96, height: int = 64) -> tuple[bytes, float]:
    """A 16-bit grey PNG (left third white, the rest mid grey) and its mean in 8 bits."""
    grey = np.full((height, width), 128 * 257, np.uint16)
    grey[:, : width // 3] = 65535
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16"
    return buf.getvalue(), float((grey // 257).mean())


def _png_rows_stop_early(width: int = 200, height: int = 1000, rows: int = 10) -> bytes:
    """An 8-bit RGB PNG whose (complete, valid) zlib stream holds only `rows` rows."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress((b"\0" + b"\x80" * 3 * width) * rows)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def test_a_16_bit_grey_png_keeps_its_grey_levels(stack) -> None:  # type: ignore[no-untyped-def]
    stack.workers.start()
    png, mean = _png16_grey()
    job = stack.client.recover(png, {"people": [{"bbox": [10, 10, 80, 60]}]}, timeout_s=30)
    assert job["status"] == "succeeded"
    assert job["result"]["diagnostics"]["mean_rgb"] == pytest.approx([mean] * 3, abs=1)
    assert mean < 200  # all white (255) before the fix


def test_a_png_whose_rows_stop_early_is_refused(stack) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as exc:
        stack.client.submit(_png_rows_stop_early(), {})
    assert (exc.value.status, exc.value.code) == (422, "truncated_image")
    assert "10 of 1000 rows" in str(exc.value)
    assert stored_job_ids(stack.store.client) == set()
