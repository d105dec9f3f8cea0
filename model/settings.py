"""The model package's settings from the environment (`METAHMR_*`), read when asked for,
never at import.

`ModelSettings.body_model` (`METAHMR_BODY_MODEL`): an SMPL-format file (`.pkl` / `.npz`, or
a folder holding `SMPL_NEUTRAL.*`) to pose bodies with instead of the bundled open model.
`model.body` takes a path or None (the bundled model); the callers that honour the
environment (the CLI's commands through `default_body_model_path`, the worker through
`worker.config.WorkerSettings.body_model`) read it here.

`ModelSettings.malloc_keep_mb` (`METAHMR_MALLOC_KEEP_MB`): allocations up to this size come
from the heap and freed ones stay there for reuse (`model.memory`; the worker and
`metahmr bench tto` apply it); 0: glibc's defaults.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.memory import MAX_KEEP_MB

BODY_MODEL_ENV = "METAHMR_BODY_MODEL"


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METAHMR_", extra="ignore", frozen=True)

    body_model: Path | None = None  # None: the bundled open model
    malloc_keep_mb: int = Field(default=512, ge=0, le=MAX_KEEP_MB)

    @field_validator("body_model", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


def default_body_model_path() -> Path | None:
    """The body-model file the environment asks for (None: the bundled open model)."""
    return ModelSettings().body_model
