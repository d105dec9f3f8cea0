"""The recover task: take a job id, run the pipeline once, write the outcome to the store.

Idempotent: a task for a job that is finished, canceled, or running on another live worker
does nothing, so redelivered or duplicate messages are harmless.

Micro-batching (METAHMR_MAX_BATCH > 1): the task that starts a job also takes the recover
tasks waiting behind it in the broker queue (`worker.broker.WaitingTasks`: each job claimed
with the same atomic queued -> running step as its own, so cancel and the reaper work as for
any running job, and its message acknowledged then) and runs them all through
`Pipeline.run_batch`; each job gets its own progress, result, files or error.

Each worker process keeps one `WorkerContext` (`worker.context`): its store connection, its
pipeline (loaded once) and its `Presence` (`worker.presence`), a heartbeat thread that also
re-queues jobs whose worker stopped beating (the reaper).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import redis
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image, ImageOps
from pydantic import ValidationError

from service.contract import RecoverOptions, format_validation_error
from service.jobs import (
    RECOVER_TASK,
    JobCanceled,
    JobError,
    JobStatus,
    JobStore,
    LeaseLost,
    job_context,
)
from worker.context import WorkerContext, worker_context
from worker.pipeline import (
    PermanentJobError,
    PipelineResult,
    PipelineUnavailable,
    TransientJobError,
)
from worker.video import is_video_job, run_video

log = logging.getLogger(__name__)
PIPELINE_ERROR_MESSAGE = (
    "the pipeline failed on this input with an internal error (logged by the worker under "
    "this job's id); submit it again, and report the job id if it fails again"
)

BATCH_POLL_S = 0.01  # how often a batch waiting for jobs (METAHMR_BATCH_WAIT_MS) looks again


class RetryLater(Exception):
    """Raised by `run_job` after releasing a job that should run again in `delay_s`."""

    def __init__(self, delay_s: float, reason: str) -> None:
        super().__init__(reason)
        self.delay_s = delay_s


def decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied (the API checked it decodes)."""
    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image)
        if upright.mode.startswith("I"):
            # 16-bit grey (PNG): Pillow's convert clips at 255, an all-white picture; scale.
            grey = np.clip(np.asarray(upright).astype(np.int64), 0, 65535)
            grey8 = ((grey * 255 + 32767) // 65535).astype(np.uint8)
            return np.repeat(grey8[..., None], 3, axis=2)
        return np.asarray(upright.convert("RGB"))


def run_job(ctx: WorkerContext, job_id: str) -> JobStatus | None:
    """Run one job if it is ours to run (with other queued jobs, when batching is on).
    Returns its status afterwards (None if it is gone or another worker now owns it);
    raises RetryLater for transient errors."""
    store = ctx.store
    record = store.get(job_id)
    if record is None:
        log.warning("job not found (expired or deleted); nothing to do")
        return None
    claimed, before = ctx.active.claim(store, job_id, ctx.worker_id)
    if not claimed:
        log.info("job is %s; not running it again", before)
        return before
    others: list[str] = []
    try:
        return _run_claimed(ctx, job_id, others)
    finally:
        ctx.active.done([job_id, *others])


def _run_claimed(ctx: WorkerContext, job_id: str, others: list[str]) -> JobStatus | None:
    """run_job once `job_id` is claimed; `others` receives the jobs claimed with it."""
    store = ctx.store
    _claim_more(ctx, others)
    if others:
        return _run_batch(ctx, [job_id, *others])
    record = store.get(job_id)
    assert record is not None
    start = time.perf_counter()

    def compute() -> PipelineResult:
        options = job_options(record.options)
        if is_video_job(record.image):
            return _run_video(ctx, job_id, record.image, options)
        image = _load_image(store, job_id)

        def progress(stage: str, step: int, total: int) -> None:
            store.set_progress(job_id, ctx.worker_id, stage, step, total)

        return ctx.pipeline().run(image, options, progress)

    return _settle(ctx, job_id, record.attempts, start, compute, leader=True)


def _claim_more(ctx: WorkerContext, ids: list[str]) -> None:
    """Claim up to max_batch - 1 other waiting jobs for this worker into `ids`, from the
    broker queue; waits at most batch_wait_ms for them to arrive (polling the queue). With
    the broker unreachable, the batch is what was claimed so far (`WaitingTasks.take`)."""
    want = ctx.settings.max_batch - 1
    if want <= 0:
        return
    deadline = time.monotonic() + ctx.settings.batch_wait_ms / 1000.0

    def claim(job_id: str) -> bool:
        return ctx.active.claim_more(ctx.store, job_id, ctx.worker_id)

    ids += ctx.waiting().take(claim, want)
    while len(ids) < want and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(BATCH_POLL_S, left))
        ids += ctx.waiting().take(claim, want - len(ids))


def _run_batch(ctx: WorkerContext, job_ids: Sequence[str]) -> JobStatus | None:
    """Run claimed jobs as one batch; settle each. Returns the first (this task's) status."""
    store = ctx.store
    start = time.perf_counter()
    log.info("running a batch of %d jobs: %s", len(job_ids), ", ".join(job_ids))
    records = {j: store.get(j) for j in job_ids}
    outcomes: dict[str, PipelineResult | Exception] = {}
    images = {}
    options = {}
    for j in job_ids:
        try:
            options[j] = job_options(r.options if (r := records[j]) else {})
            if r is not None and is_video_job(r.image):  # a video runs on its own
                outcomes[j] = _run_video(ctx, j, r.image, options[j])
                continue
            images[j] = _load_image(store, j)
        except Exception as exc:  # this job's options or image only: it fails alone
            outcomes[j] = exc
    ready = list(images)
    if ready:
        try:
            outcomes |= zip(
                ready,
                ctx.pipeline().run_batch(
                    [images[j] for j in ready],
                    [options[j] for j in ready],
                    [_progress_fn(ctx, j) for j in ready],
                ),
                strict=True,
            )
        except Exception as exc:  # nothing ran: the pipeline did not load, or time ran out
            outcomes |= dict.fromkeys(ready, exc)
    statuses: dict[str, JobStatus | None] = {}
    leader = job_ids[0]
    for j in [*job_ids[1:], leader]:  # this task's own job last: its retry raises
        attempts = r.attempts if (r := records[j]) else 0
        with job_context(j):
            statuses[j] = _settle(
                ctx, j, attempts, start, _returns(outcomes[j]), leader=j == leader
            )
    return statuses[leader]


def _run_video(
    ctx: WorkerContext, job_id: str, meta: dict[str, Any], options: RecoverOptions
) -> PipelineResult:
    """A video job (`worker.video`): its upload, decoded and run frame by frame."""
    data = ctx.store.image(job_id)
    if data is None:
        raise PermanentJobError("the uploaded video has expired; submit the job again")
    return run_video(ctx.pipeline(), data, meta, options, _progress_fn(ctx, job_id))


def _returns(outcome: PipelineResult | Exception) -> Callable[[], PipelineResult]:
    def compute() -> PipelineResult:
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return compute


def _progress_fn(ctx: WorkerContext, job_id: str) -> Callable[[str, int, int], None]:
    def progress(stage: str, step: int, total: int) -> None:
        ctx.store.set_progress(job_id, ctx.worker_id, stage, step, total)

    return progress


def job_options(stored: dict[str, Any]) -> RecoverOptions:
    """The job's typed options from its record (validated at the API when it was created).
    PermanentJobError for JSON that does not parse (a record written by another version)."""
    try:
        return RecoverOptions.from_job(stored)
    except ValidationError as exc:
        raise PermanentJobError(
            f"the job's stored options are not valid: {format_validation_error(exc, 'options')}"
        ) from exc


def _load_image(store: JobStore, job_id: str) -> np.ndarray:
    data = store.image(job_id)
    if data is None:
        raise PermanentJobError("the uploaded image has expired; submit the job again")
    return decode_image(data)


def _settle(
    ctx: WorkerContext,
    job_id: str,
    attempts: int,
    start: float,
    compute: Callable[[], PipelineResult],
    *,
    leader: bool,
) -> JobStatus | None:
    """Run `compute` (or take a batch's outcome) and write the job's result or error.

    leader: the job is this task's own; a transient error re-raises as RetryLater. Another
    job of a batch is put back in the queue and sent again instead (its own message may
    already have been taken and found the job running)."""
    store = ctx.store
    tto_steps: tuple[int, ...] = ()
    status: JobStatus | None
    try:
        out = compute()
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
    except (redis.ConnectionError, redis.TimeoutError):
        # The store, not the job: this task runs again once Redis is back (autoretry), and
        # claims the job again as its own. Never a failure of the job.
        if leader:
            raise
        log.warning("Redis unreachable; putting the job back in the queue", exc_info=True)
        try:
            if store.release(job_id, ctx.worker_id) and ctx.presence is not None:
                ctx.presence.send(job_id)
        except (redis.ConnectionError, redis.TimeoutError):
            # Still away: settle the batch's other jobs; the presence thread re-queues the
            # jobs this task left running (ActiveJobs.orphans) once Redis is back.
            return None
        return JobStatus.QUEUED
    except TransientJobError as exc:
        if attempts <= ctx.settings.max_transient_retries and store.release(job_id, ctx.worker_id):
            log.warning("transient error, will retry: %s", exc)
            if leader:
                raise RetryLater(ctx.settings.retry_delay_s, str(exc)) from exc
            if ctx.presence is not None:
                ctx.presence.send(job_id)
            return JobStatus.QUEUED
        status = _fail(ctx, job_id, "transient_error", f"gave up after retries: {exc}")
    except PermanentJobError as exc:
        status = _fail(ctx, job_id, "bad_input", str(exc))
    except PipelineUnavailable as exc:
        status = _fail(ctx, job_id, "pipeline_unavailable", str(exc))
    except SoftTimeLimitExceeded:
        status = _fail(
            ctx,
            job_id,
            "timeout",
            f"the job took longer than {ctx.settings.job_soft_time_limit_s:g} s; "
            "send a smaller image, fewer people or fewer TTO steps",
        )
    except Exception as exc:
        log.error("pipeline error", exc_info=exc)
        # The exception is for the logs (above); the caller gets what it can act on.
        status = _fail(ctx, job_id, "pipeline_error", PIPELINE_ERROR_MESSAGE)
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


__all__ = ["RECOVER_TASK", "decode_image", "recover", "run_job"]
