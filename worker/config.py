"""Worker settings: what a worker process needs to know, typed and validated.

Read from `METAHMR_*` environment variables by `get_worker_settings()`, never at import. The
fields the API shares with the worker (Redis, queue, result TTL, logging) come from
`service.jobs.settings.JobStoreSettings`, which the API's settings extend too, so one
environment configures both; the worker does not import the service's own settings.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from model.settings import ModelSettings
from service.jobs.settings import JobStoreSettings


def default_cache_dir() -> Path:
    """Where derived model files go: $XDG_CACHE_HOME/metahmr, else ~/.cache/metahmr."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metahmr"


# More threads than this per process rarely pay: a person's TTO runs on small matrices,
# where more threads mostly add synchronisation.
MAX_DEFAULT_THREADS = 4


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container started with --cpus)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def default_threads(processes: int, cores: int | None = None) -> int:
    """Threads per worker process when METAHMR_ONNX_THREADS / TORCH_THREADS are unset: the
    cores left after one for the API, Redis and the Celery main process, shared by the
    `processes` worker processes on the machine, at least 1 and at most
    MAX_DEFAULT_THREADS. 2 cores, 1 process: 1 thread (two would contend with the API)."""
    cores = available_cores() if cores is None else cores
    return max(1, min(MAX_DEFAULT_THREADS, (cores - 1) // max(1, processes)))


class WorkerSettings(JobStoreSettings, ModelSettings):
    """What a worker process needs to know, beyond the job store's settings; the model
    package's own settings (`body_model`) come with `ModelSettings`."""

    # "onnx": the model (ONNX Runtime + TTO). "echo": a diagnostics pipeline that checks the
    # queue, store and HTTP path without a model (see worker/pipeline.py).
    pipeline: Literal["onnx", "echo"] = "onnx"
    model_dir: Path | None = None  # a `metahmr export` directory; None: the shipped model
    # The shipped model's ONNX export (`metahmr assets prepare`) is written under here.
    cache_dir: Path = Field(default_factory=default_cache_dir)
    # "cuda": ONNX Runtime's CUDA provider (onnxruntime-gpu) and the TTO on the GPU.
    onnx_provider: Literal["cpu", "cuda"] = "cpu"
    # Pool processes of this worker (each runs jobs with its own model), and how many such
    # workers share this machine's cores (`metahmr serve --workers N` sets N).
    concurrency: int = Field(default=1, ge=1, le=64)
    workers_on_host: int = Field(default=1, ge=1, le=256)
    # Threads per worker *process*: ONNX Runtime intra-op threads per session, and torch's
    # for the TTO. Both libraries default to every core, so N processes would run N x cores
    # threads; unset, each gets its share of the cores (`default_threads`).
    onnx_threads: int = Field(
        default_factory=lambda data: default_threads(
            data["concurrency"] * data["workers_on_host"]
        ),
        ge=1,
        le=64,
    )
    torch_threads: int = Field(
        default_factory=lambda data: default_threads(
            data["concurrency"] * data["workers_on_host"]
        ),
        ge=1,
        le=64,
    )
    # Run each TTO step as one torch.compile'd graph (same maths, less per-step overhead;
    # `docs/benchmarks.md`). The worker compiles at start (minutes on a small CPU the first
    # time, seconds once torch's on-disk cache holds the graphs). Needs a C++ compiler.
    tto_compile: bool = False
    # BlazePose (model.blazepose): the people detector and the built-in keypoints, and the
    # backbone of a BlazePose model (which fixes the variant it was trained with). "lite" and
    # "heavy" need `metahmr assets blazepose` and METAHMR_BLAZEPOSE_DIR. "off": no detector and
    # no built-in keypoints (apps that always send both), not for BlazePose models.
    blazepose: Literal["lite", "full", "heavy", "off"] = "full"
    # Where BlazePose's landmark network runs: "litert" (the .tflite file, CPU), "onnx" (its
    # shipped ONNX conversion, model.blazepose_onnx, on onnx_provider's device), or "auto":
    # onnx on a CUDA worker when the variant has a shipped ONNX file, else litert (on a CPU
    # both cost about the same). The person detector always runs in LiteRT.
    blazepose_runtime: Literal["auto", "litert", "onnx"] = "auto"
    job_soft_time_limit_s: float = Field(default=300.0, gt=0)
    job_hard_time_limit_s: float = Field(default=330.0, gt=0)
    # A worker beats every interval; a job whose worker missed beats for ttl is re-queued.
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    heartbeat_ttl_s: float = Field(default=10.0, gt=0)
    # Runs of one job (its worker died each time) before it is failed as a likely crasher.
    # Runs cut short by a Redis outage do not count.
    max_attempts: int = Field(default=3, ge=1)
    # A job the API created but never sent (it stopped in between) is sent after this long.
    unsent_after_s: float = Field(default=30.0, gt=0)
    # After deletions, Redis rewrites its append-only file at most this often (0 < s), so a
    # deleted image leaves the disk within about this time (README, "Deleting data").
    aof_rewrite_interval_s: float = Field(default=60.0, gt=0)
    # Retries of a job whose pipeline reported a transient error.
    max_transient_retries: int = Field(default=3, ge=0)
    retry_delay_s: float = Field(default=2.0, ge=0)
    echo_delay_s: float = Field(default=0.0, ge=0, le=600)  # diagnostics pipeline only
    # Micro-batching: a task that starts a job also claims up to max_batch - 1 other queued
    # jobs (waiting up to batch_wait_ms for them) and runs them all as one forward and one
    # fit. 1 = off. The job time limits then apply to the whole batch.
    max_batch: int = Field(default=1, ge=1, le=64)
    batch_wait_ms: float = Field(default=0.0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _check_times(self) -> WorkerSettings:
        if self.job_hard_time_limit_s <= self.job_soft_time_limit_s:
            raise ValueError("METAHMR_JOB_HARD_TIME_LIMIT_S must exceed the soft limit")
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ValueError("METAHMR_HEARTBEAT_TTL_S must exceed METAHMR_HEARTBEAT_INTERVAL_S")
        return self


    @property
    def visibility_timeout_s(self) -> int:
        # An unacknowledged task is redelivered after this; a duplicate is harmless (tasks are
        # idempotent), a lost one is not: keep it above the hard time limit.
        return int(self.job_hard_time_limit_s * 2 + 60)


def get_worker_settings() -> WorkerSettings:
    """Read and validate the worker settings from the environment (raises on a bad value)."""
    return WorkerSettings()
