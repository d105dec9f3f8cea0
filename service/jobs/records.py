"""What the job store holds, as types: a job's status, progress, error and record, the
statistics behind /metrics, the stop signals a worker gets, and the constants the API and the
workers share (the task name, result file names, histogram bounds, message priorities).
`service.jobs.store` reads and writes them in Redis."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

# The Celery task a job is sent as; the API sends it by name and never imports worker code.
RECOVER_TASK = "metahmr.recover"
FILE_NAMES = ("mesh.obj", "mesh.glb", "overlay.png", "animation.glb", "animation.bvh", "smpl.npz")
FILE_MEDIA_TYPES = {
    "mesh.obj": "text/plain",
    "mesh.glb": "model/gltf-binary",
    "overlay.png": "image/png",
    "animation.glb": "model/gltf-binary",
    "animation.bvh": "text/plain",
    "smpl.npz": "application/octet-stream",
}
# Histogram upper bounds kept in Redis so every API replica reports the same numbers.
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTO_STEP_BUCKETS = (0, 1, 2, 5, 10, 15, 20, 30)
# Celery message priorities on Redis (kombu polls the lower number's list first): a job run
# again (its worker died, a transient error, never sent) goes ahead of the new ones.
NEW_JOB_PRIORITY = 6
RERUN_PRIORITY = 0
PRIORITY_STEPS = [0, 3, 6, 9]  # kombu's default for Redis, named here because we rely on it


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


@dataclass(frozen=True)
class Progress:
    stage: str
    step: int
    total: int


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    status: JobStatus
    created_at: str
    updated_at: str
    options: dict[str, Any]
    image: dict[str, Any]
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    attempts: int = 0
    worker: str | None = None
    files: tuple[str, ...] = ()
    started_at: str | None = None
    finished_at: str | None = None
    owner: str | None = None  # who may see the job (see `JobStore.owner_salt`); None: anyone


@dataclass(frozen=True)
class HistogramData:
    """Non-cumulative counts per upper bound (last entry: +Inf), plus sum and count."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int


@dataclass(frozen=True)
class JobStats:
    finished: dict[str, int] = field(default_factory=dict)
    duration_s: HistogramData | None = None
    tto_steps: HistogramData | None = None


class JobCanceled(Exception):
    """The job was canceled while a worker was running it."""


class LeaseLost(Exception):
    """The job no longer belongs to this worker (it was re-queued after a missed heartbeat)."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_job_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def record_from_hash(job_id: str, raw: dict[str, str]) -> JobRecord:
    """A job's record from its Redis hash (decoded to text)."""
    def load(name: str) -> Any:
        text = raw.get(name)
        return json.loads(text) if text else None

    progress = load("progress")
    error = load("error")
    return JobRecord(
        job_id=job_id,
        status=JobStatus(raw["status"]),
        created_at=raw.get("created_at", ""),
        updated_at=raw.get("updated_at", ""),
        options=load("options") or {},
        image=load("image") or {},
        progress=Progress(**progress) if progress else None,
        result=load("result"),
        error=JobError(**error) if error else None,
        attempts=int(raw.get("attempts", 0)),
        worker=raw.get("worker") or None,
        files=tuple(load("files") or ()),
        started_at=raw.get("started_at") or None,
        finished_at=raw.get("finished_at") or None,
        owner=raw.get("owner") or None,
    )
