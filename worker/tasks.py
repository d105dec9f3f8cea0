"""The recover task: take a job id, run the pipeline once, write the outcome to the store.

Idempotent: a task for a job that is finished, canceled, or running on another live worker
does nothing, so redelivered or duplicate messages are harmless. Each worker process keeps
one `WorkerContext`: its store connection, its pipeline (loaded once) and its `Presence`,
a heartbeat thread that also re-queues jobs whose worker stopped beating (the reaper).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image, ImageOps

from service.jobs import (
    RECOVER_TASK,
    JobCanceled,
    JobError,
    JobStatus,
    JobStore,
    LeaseLost,
)
from service.logs import job_context
from worker.config import WorkerSettings
from worker.pipeline import (
    PermanentJobError,
    Pipeline,
    PipelineUnavailable,
    TransientJobError,
    load_pipeline,
)

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """Raised by `run_job` after releasing a job that should run again in `delay_s`."""

    def __init__(self, delay_s: float, reason: str) -> None:
        super().__init__(reason)
        self.delay_s = delay_s


class Presence:
    """A worker's heartbeat in the store, plus the reaper: every `interval_s` a daemon thread
    marks this worker alive for `ttl_s` and re-queues running jobs of dead workers."""

    def __init__(
        self,
        store: JobStore,
        worker_id: str,
        settings: WorkerSettings,
        requeue: Callable[[str], None],
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.settings = settings
        self.requeue = requeue
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # Beat once now: a job claimed right after start must already have a live lease.
        self.store.heartbeat(self.worker_id, self.settings.heartbeat_ttl_s)
        self._thread = threading.Thread(target=self._loop, name="metahmr-presence", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                self.store.heartbeat(self.worker_id, self.settings.heartbeat_ttl_s)
                self.reap()
            except Exception:  # Redis away for a moment: keep beating when it is back
                log.warning("heartbeat failed", exc_info=True)

    def reap(self) -> list[tuple[str, JobStatus]]:
        """Re-queue (or fail, after max_attempts) jobs whose worker died; send their tasks."""
        touched = self.store.reap(self.settings.max_attempts)
        for job_id, status in touched:
            with job_context(job_id):
                if status is JobStatus.QUEUED:
                    log.warning("worker of a running job died; job re-queued")
                    self.requeue(job_id)
                else:
                    log.error("worker of a running job died too often; job failed")
        return touched

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.store.forget_worker(self.worker_id)
        except Exception:
            log.warning("could not remove the worker's heartbeat", exc_info=True)


@dataclass
class WorkerContext:
    """Per-process state: settings, store, identity, heartbeat and the cached pipeline."""

    settings: WorkerSettings
    store: JobStore
    worker_id: str
    presence: Presence | None = None
    _pipeline: Pipeline | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pipeline(self) -> Pipeline:
        """The pipeline, loaded on first use and kept for the life of the process."""
        with self._lock:
            if self._pipeline is None:
                start = time.perf_counter()
                self._pipeline = load_pipeline(self.settings)
                log.info(
                    "pipeline %s loaded in %.1f s",
                    self._pipeline.name,
                    time.perf_counter() - start,
                )
            return self._pipeline


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied (the API checked it decodes)."""
    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image)
        return np.asarray(upright.convert("RGB"))


def run_job(ctx: WorkerContext, job_id: str) -> JobStatus | None:
    """Run one job if it is ours to run. Returns its status afterwards (None if it is gone
    or another worker now owns it); raises RetryLater for transient errors."""
    store = ctx.store
    record = store.get(job_id)
    if record is None:
        log.warning("job not found (expired or deleted); nothing to do")
        return None
    claimed, before = store.claim(job_id, ctx.worker_id)
    if not claimed:
        log.info("job is %s; not running it again", before)
        return before
    record = store.get(job_id)
    assert record is not None
    start = time.perf_counter()
    tto_steps: tuple[int, ...] = ()
    status: JobStatus | None
    try:
        data = store.image(job_id)
        if data is None:
            raise PermanentJobError("the uploaded image has expired; submit the job again")
        image = decode_image(data)

        def progress(stage: str, step: int, total: int) -> None:
            store.set_progress(job_id, ctx.worker_id, stage, step, total)

        out = ctx.pipeline().run(image, record.options, progress)
        tto_steps = out.tto_steps
        store.put_files(job_id, out.files)
        done = store.finish(job_id, ctx.worker_id, result=out.result, files=tuple(out.files))
        status = JobStatus.SUCCEEDED if done else _current(store, job_id)
    except JobCanceled:
        log.info("job canceled while running")
        status = JobStatus.CANCELED
    except LeaseLost:
        log.warning("job was taken over by another worker (missed heartbeats?)")
        return None
    except TransientJobError as exc:
        if record.attempts <= ctx.settings.max_transient_retries and store.release(
            job_id, ctx.worker_id
        ):
            log.warning("transient error, will retry: %s", exc)
            raise RetryLater(ctx.settings.retry_delay_s, str(exc)) from exc
        status = _fail(ctx, job_id, "transient_error", f"gave up after retries: {exc}")
    except PermanentJobError as exc:
        status = _fail(ctx, job_id, "bad_input", str(exc))
    except PipelineUnavailable as exc:
        status = _fail(ctx, job_id, "pipeline_unavailable", str(exc))
    except SoftTimeLimitExceeded as exc:
        status = _fail(
            ctx,
            job_id,
            "timeout",
            f"the job took longer than "
            f"{ctx.settings.job_soft_time_limit_s:g} s ({type(exc).__name__})",
        )
    except Exception as exc:
        log.exception("pipeline error")
        status = _fail(ctx, job_id, "pipeline_error", f"{type(exc).__name__}: {exc}")
    if status is not None and status.is_final:
        store.record_finished(status, time.perf_counter() - start, tto_steps)
    log.info("job finished: %s", status)
    return status


def _fail(ctx: WorkerContext, job_id: str, code: str, message: str) -> JobStatus | None:
    if ctx.store.finish(job_id, ctx.worker_id, error=JobError(code, message)):
        return JobStatus.FAILED
    return _current(ctx.store, job_id)


def _current(store: JobStore, job_id: str) -> JobStatus | None:
    record = store.get(job_id)
    return record.status if record else None


# -- Celery glue ------------------------------------------------------------------------------
_contexts: dict[int, WorkerContext] = {}
_contexts_lock = threading.Lock()


def worker_context(
    settings: WorkerSettings, requeue: Callable[[str], None], *, preload: bool = False
) -> WorkerContext:
    """This process's context, created on first use. Keyed by pid: a forked child must not
    reuse its parent's identity or heartbeat thread. With `preload`, the pipeline is loaded
    before the first heartbeat, so a worker only looks ready once it can run jobs."""
    pid = os.getpid()
    with _contexts_lock:
        ctx = _contexts.get(pid)
        if ctx is None:
            store = JobStore.from_url(settings.require_redis_url(), ttl_s=settings.result_ttl_s)
            ctx = WorkerContext(settings=settings, store=store, worker_id=new_worker_id())
            if preload:
                try:
                    ctx.pipeline()
                except Exception:
                    log.exception("pipeline failed to load; its jobs will fail until fixed")
            ctx.presence = Presence(store, ctx.worker_id, settings, requeue)
            ctx.presence.start()
            _contexts[pid] = ctx
            log.info("worker %s up (pipeline %s)", ctx.worker_id, settings.pipeline)
        return ctx


def stop_worker_context() -> None:
    with _contexts_lock:
        ctx = _contexts.pop(os.getpid(), None)
    if ctx is not None and ctx.presence is not None:
        ctx.presence.stop()


def recover(task: Any, job_id: str) -> str | None:
    """Celery task body (bound): registered as RECOVER_TASK by `create_celery`."""
    app = task.app
    ctx = worker_context(app.metahmr_settings, app.metahmr_requeue)
    with job_context(job_id):
        try:
            status = run_job(ctx, job_id)
        except RetryLater as exc:
            raise task.retry(countdown=exc.delay_s, max_retries=None) from exc
    return status.value if status is not None else None


__all__ = ["RECOVER_TASK", "Presence", "WorkerContext", "decode_image", "recover", "run_job"]
