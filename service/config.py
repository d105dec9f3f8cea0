"""Service settings: one typed object read from `METAHMR_*` environment variables.

Built by `get_settings()` when a process starts, never at import, and validated at once so
that a bad value stops the process with a message instead of failing on the first request.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from service.contract import DEFAULT_MAX_VIDEO_FRAMES, DEFAULT_MAX_VIDEO_PIXELS, DEFAULT_MAX_VIDEO_S
from service.jobs.settings import JobStoreSettings


def default_state_dir() -> Path:
    """Where `metahmr serve` keeps its embedded Redis's data: $XDG_STATE_HOME/metahmr, else
    ~/.local/state/metahmr."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "metahmr"


class Settings(JobStoreSettings):
    """What the API process (and, through `WorkerSettings`, the worker) needs to know."""

    max_upload_mb: float = Field(default=10.0, gt=0, le=1024)
    max_pixels: int = Field(default=40_000_000, gt=0)
    min_image_side: int = Field(default=16, ge=1)
    max_image_side: int = Field(default=20_000, ge=1)
    # Empty: no authentication. Comma-separated or a JSON list in METAHMR_API_KEYS.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # /metrics without a key even when keys are set (it always is open without keys).
    metrics_public: bool = False
    # Proxies (addresses or networks, comma-separated) whose X-Forwarded-For names the client
    # for the per-address rate limit; empty: trust none, the peer address counts.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Submissions per minute per API key (per client address without keys); 0 = unlimited.
    rate_limit_per_min: int = Field(default=60, ge=0)
    max_people: int = Field(default=16, ge=1)
    # Video uploads (service/video.py). They travel with the job, so the worker holds the
    # decoded video to the same duration, frame and pixel limits.
    max_video_mb: float = Field(default=50.0, gt=0, le=4096)
    max_video_s: float = Field(default=DEFAULT_MAX_VIDEO_S, gt=0, le=3600)
    max_video_frames: int = Field(default=DEFAULT_MAX_VIDEO_FRAMES, ge=1, le=100_000)
    max_video_pixels: int = Field(default=DEFAULT_MAX_VIDEO_PIXELS, gt=0)
    # `metahmr serve` without METAHMR_REDIS_URL: its embedded Redis keeps jobs and results
    # here (an append-only file under redis/), so they survive a restart of the stack.
    state_dir: Path = Field(default_factory=default_state_dir)
    # Broker publish: give up quickly and answer 503 rather than hang the request.
    publish_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("api_keys", "trusted_proxies", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [k.strip() for k in text.split(",") if k.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(
                    f"METAHMR_TRUSTED_PROXIES: {entry!r} is not an IP address or network"
                ) from exc
        return value

    @model_validator(mode="after")
    def _check_sides(self) -> Settings:
        if self.min_image_side > self.max_image_side:
            raise ValueError("METAHMR_MIN_IMAGE_SIDE must not exceed METAHMR_MAX_IMAGE_SIDE")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def get_settings() -> Settings:
    """Read and validate the settings from the environment (raises on a bad value)."""
    return Settings()
