"""Micro-batching in the recover task (METAHMR_MAX_BATCH > 1): the task that starts a job
takes the tasks waiting behind it in the broker queue and runs their jobs with its own as one
batch; each job gets its own outcome, a bad one fails alone, and a duplicate message of a
batched job is a no-op. Runs `run_job` in-process, and a real Celery worker, against a real
Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from broker_checks import broker_messages, published_job_ids, send_as_the_api
from celery.contrib.testing.worker import start_worker

from service.config import Settings
from service.contract import RecoverOptions
from service.jobs import JobRecord, JobStatus, JobStore
from service.queue import TaskQueue
from worker.celery_app import create_celery
from worker.config import WorkerSettings
from worker.context import WorkerContext, stop_worker_context
from worker.pipeline import (
    EchoPipeline,
    PipelineResult,
    ProgressFn,
    TransientJobError,
    run_one_by_one,
)
from worker.presence import Presence
from worker.tasks import run_job

NOT_AN_IMAGE = b"this is not an image"


def _ctx(
    settings: WorkerSettings, store: JobStore, pipeline: Any = None, worker: str = "w1", **kw: Any
) -> WorkerContext:
    ctx = WorkerContext(settings=settings.model_copy(update=kw), store=store, worker_id=worker)
    ctx._pipeline = pipeline or EchoPipeline(steps=2)
    store.heartbeat(worker, 60)
    return ctx


def _submit(
    settings: WorkerSettings, store: JobStore, data: bytes, options: dict[str, Any] | None = None
) -> str:
    """A job created and sent as the API does."""
    job_id = store.create(data, options or {}, {}).job_id
    send_as_the_api(settings.require_redis_url(), store, [job_id])
    return job_id


def _get(store: JobStore, job_id: str) -> JobRecord:
    record = store.get(job_id)
    assert record is not None
    return record


def test_a_task_runs_waiting_jobs_with_its_own_as_one_batch(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    ctx = _ctx(worker_settings, store, max_batch=4)
    first, second, bad, third, left = (
        _submit(worker_settings, store, data)
        for data in (two_colour_jpeg, two_colour_jpeg, NOT_AN_IMAGE, two_colour_jpeg, b"")
    )
    # `first`'s own message is still in the queue too (a worker's consumer would hold it):
    # the batch drops it as a duplicate.
    assert run_job(ctx, first) is JobStatus.SUCCEEDED
    for job_id in (first, second, third):
        record = _get(store, job_id)
        assert record.status is JobStatus.SUCCEEDED and record.attempts == 1
        assert record.result is not None and record.result["timings_ms"]["batch_size"] == 3
        assert record.progress is not None and record.progress.step == record.progress.total
    failed = _get(store, bad)
    assert failed.status is JobStatus.FAILED and failed.error is not None
    assert failed.error.code == "pipeline_error"  # its image alone did not decode
    assert _get(store, left).status is JobStatus.QUEUED  # max_batch: 4 jobs taken, not 5
    assert published_job_ids(store.client, worker_settings.queue_name) == [left]
    assert store.stats().finished == {"succeeded": 3, "failed": 1}
    # A batched job's message sent twice (a reaper's resend) is a no-op: nothing runs twice.
    before = {j: _get(store, j) for j in (second, bad, third)}
    other = _ctx(worker_settings, store, worker="w2", max_batch=4)
    assert run_job(ctx, second) is JobStatus.SUCCEEDED
    assert run_job(other, third) is JobStatus.SUCCEEDED
    assert run_job(other, bad) is JobStatus.FAILED
    assert {j: _get(store, j) for j in before} == before
    assert _get(store, left).status is JobStatus.QUEUED  # a no-op claims no batch either
    assert store.stats().finished == {"succeeded": 3, "failed": 1}


def test_without_max_batch_a_task_runs_only_its_job(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    ctx = _ctx(worker_settings, store)
    first, second = (_submit(worker_settings, store, two_colour_jpeg) for _ in range(2))
    assert run_job(ctx, first) is JobStatus.SUCCEEDED
    result = _get(store, first).result
    assert result is not None and "batch_size" not in result["timings_ms"]
    assert _get(store, second).status is JobStatus.QUEUED
    assert published_job_ids(store.client, worker_settings.queue_name) == [first, second]


def test_a_batch_waits_batch_wait_ms_for_jobs_to_arrive(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    ctx = _ctx(worker_settings, store, max_batch=3, batch_wait_ms=2000)
    first = store.create(two_colour_jpeg, {}, {}).job_id
    later: list[str] = []

    def submit() -> None:
        for _ in range(2):
            time.sleep(0.1)
            later.append(_submit(worker_settings, store, two_colour_jpeg))

    thread = threading.Thread(target=submit)
    started = time.monotonic()
    thread.start()
    assert run_job(ctx, first) is JobStatus.SUCCEEDED
    thread.join()
    assert time.monotonic() - started < 1.5  # stops waiting once the batch is full
    for job_id in (first, *later):
        result = _get(store, job_id).result
        assert result is not None and result["timings_ms"]["batch_size"] == 3


def test_canceling_a_batched_job_stops_only_that_job(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    ctx = _ctx(worker_settings, store, EchoPipeline(delay_s=0.3, steps=10), max_batch=3)
    ids = [_submit(worker_settings, store, two_colour_jpeg) for _ in range(3)]
    runner = threading.Thread(target=run_job, args=(ctx, ids[0]))
    runner.start()
    deadline = time.monotonic() + 5
    while _get(store, ids[2]).status is not JobStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert store.cancel(ids[1]) == (True, JobStatus.RUNNING)
    runner.join()
    statuses = [_get(store, j).status for j in ids]
    assert statuses == [JobStatus.SUCCEEDED, JobStatus.CANCELED, JobStatus.SUCCEEDED]


TRANSIENT = 13.0  # the focal length that marks a job for `_TransientFor`


class _TransientFor:
    """Echo, except that the jobs asking for focal length `TRANSIENT` hit a passing error."""

    name = "transient-for"

    def __init__(self) -> None:
        self.echo = EchoPipeline(steps=1)

    def run(
        self, image: np.ndarray, options: RecoverOptions, progress: ProgressFn
    ) -> PipelineResult:
        if options.focal_length == TRANSIENT:
            raise TransientJobError("out of GPU memory")
        return self.echo.run(image, options, progress)

    def run_batch(
        self,
        images: Sequence[np.ndarray],
        options_list: Sequence[RecoverOptions],
        progress_list: Sequence[ProgressFn],
    ) -> list[PipelineResult | Exception]:
        return run_one_by_one(self, images, options_list, progress_list)


def test_a_transient_error_in_a_batch_requeues_that_job(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    ctx = _ctx(worker_settings, store, _TransientFor(), max_batch=2)
    requeued: list[str] = []
    ctx.presence = Presence(store, ctx.worker_id, ctx.settings, requeued.append)
    first = store.create(two_colour_jpeg, {}, {}).job_id
    flaky = _submit(worker_settings, store, two_colour_jpeg, {"focal_length": TRANSIENT})
    assert run_job(ctx, first) is JobStatus.SUCCEEDED
    record = _get(store, flaky)
    assert record.status is JobStatus.QUEUED and record.worker is None
    assert broker_messages(store.client, worker_settings.queue_name) == 0  # the batch took it
    assert requeued == [flaky]  # so it is sent again


def test_real_worker_batches_jobs_submitted_together(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    settings = worker_settings.model_copy(update={"max_batch": 4, "echo_delay_s": 0.05})
    app = create_celery(settings)
    ids = [store.create(two_colour_jpeg, {}, {}).job_id for _ in range(6)]
    bad = store.create(NOT_AN_IMAGE, {}, {}).job_id
    queue = TaskQueue(Settings(redis_url=settings.redis_url), store)
    for job_id in (*ids[:3], bad, *ids[3:]):
        queue.send(job_id)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            deadline = time.monotonic() + 20
            while not all(_get(store, j).status.is_final for j in (*ids, bad)) or (
                broker_messages(store.client, settings.queue_name) > 0  # every message taken
            ):
                assert time.monotonic() < deadline, [_get(store, j).status for j in ids]
                time.sleep(0.05)
    finally:
        stop_worker_context()
        queue.close()
    records = [_get(store, j) for j in ids]
    assert all(r.status is JobStatus.SUCCEEDED and r.attempts == 1 for r in records)
    sizes = [r.result["timings_ms"].get("batch_size", 1) for r in records if r.result]
    # In the order sent: ids[0] took ids[1], ids[2] and bad (which failed alone: its image
    # does not decode, so 3 ran); ids[3]'s own message then took ids[4..5].
    assert sizes == [3, 3, 3, 3, 3, 3], sizes
    failed = _get(store, bad)
    assert failed.status is JobStatus.FAILED and failed.attempts == 1
    assert store.stats().finished == {"succeeded": 6, "failed": 1}
