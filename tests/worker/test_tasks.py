"""The recover task body: runs a job once, writes progress and outcome, and stops cleanly on
cancel, lost lease and errors. Runs `run_job` in-process against a real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from service.contract import RecoverOptions
from service.jobs import JobStatus, JobStore
from worker.config import WorkerSettings
from worker.context import WorkerContext
from worker.pipeline import (
    EchoPipeline,
    PermanentJobError,
    PipelineResult,
    ProgressFn,
    TransientJobError,
)
from worker.presence import Presence
from worker.tasks import (
    PIPELINE_ERROR_MESSAGE,
    RetryLater,
    decode_image,
    run_job,
)


def _ctx(settings: WorkerSettings, store: JobStore, pipeline: Any = None) -> WorkerContext:
    ctx = WorkerContext(settings=settings, store=store, worker_id="test-worker")
    ctx._pipeline = pipeline or EchoPipeline()
    store.heartbeat(ctx.worker_id, 60)
    return ctx


def _job(store: JobStore, image: bytes, options: Mapping[str, Any] | None = None) -> str:
    return store.create(image, options or {}, {}).job_id


class _Raises:
    """A pipeline that fails the way a real one can, to test the task's error paths."""

    name = "raises"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    def run(
        self, image: np.ndarray, options: RecoverOptions, progress: ProgressFn
    ) -> PipelineResult:
        self.calls += 1
        progress("start", 0, 1)
        raise self.exc


def test_decode_applies_exif_orientation(two_colour_jpeg: bytes) -> None:
    image = decode_image(two_colour_jpeg)
    assert image.shape == (64, 32, 3) and image.dtype == np.uint8
    # Turned 90 degrees clockwise: the red (left) half is now on top.
    assert image[5, 16, 0] > 200 and image[5, 16, 2] < 50
    assert image[58, 16, 2] > 200 and image[58, 16, 0] < 50


def test_job_runs_once_and_succeeds(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    ctx = _ctx(worker_settings, store)
    job_id = _job(store, two_colour_jpeg, {"people": [{"bbox": [1, 2, 30, 60]}]})
    assert run_job(ctx, job_id) is JobStatus.SUCCEEDED
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.SUCCEEDED
    assert record.result is not None
    assert record.result["image"]["width"] == 32 and record.result["image"]["height"] == 64
    assert record.result["people"][0]["bbox"] == [1, 2, 30, 60]
    red, _, blue = record.result["diagnostics"]["mean_rgb"]
    assert red == pytest.approx(127, abs=8) and blue == pytest.approx(127, abs=8)
    assert record.progress is not None and record.progress.step == record.progress.total
    assert store.stats().finished == {"succeeded": 1}
    # Idempotent: a second delivery of the same task changes nothing.
    assert run_job(ctx, job_id) is JobStatus.SUCCEEDED
    again = store.get(job_id)
    assert again is not None and again.updated_at == record.updated_at and again.attempts == 1


def test_canceled_job_is_not_run(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    pipeline = _Raises(RuntimeError("must not run"))
    ctx = _ctx(worker_settings, store, pipeline)
    job_id = _job(store, two_colour_jpeg)
    store.cancel(job_id)
    assert run_job(ctx, job_id) is JobStatus.CANCELED
    assert pipeline.calls == 0


def test_cancel_stops_a_running_job(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    ctx = _ctx(worker_settings, store, EchoPipeline(delay_s=2.0, steps=20))
    job_id = _job(store, two_colour_jpeg)
    outcome: list[JobStatus | None] = []
    thread = threading.Thread(target=lambda: outcome.append(run_job(ctx, job_id)))
    start = time.monotonic()
    thread.start()
    while (record := store.get(job_id)) is None or record.progress is None:
        time.sleep(0.01)
    store.cancel(job_id)
    thread.join(timeout=5)
    assert outcome == [JobStatus.CANCELED]
    assert time.monotonic() - start < 1.5  # stopped at the next step, not after the run
    record = store.get(job_id)
    assert record is not None and record.result is None


def test_missing_job_is_skipped(worker_settings: WorkerSettings, store: JobStore) -> None:
    assert run_job(_ctx(worker_settings, store), "00000000-0000-4000-8000-000000000000") is None


def test_job_running_elsewhere_is_left_alone(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    pipeline = _Raises(RuntimeError("must not run"))
    job_id = _job(store, two_colour_jpeg)
    store.claim(job_id, "other-worker")
    assert run_job(_ctx(worker_settings, store, pipeline), job_id) is JobStatus.RUNNING
    assert pipeline.calls == 0


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (PermanentJobError("scope full does not match the model's head scope"), "bad_input"),
        (ZeroDivisionError("division by zero"), "pipeline_error"),
    ],
)
def test_errors_fail_the_job_with_a_message(
    worker_settings: WorkerSettings,
    store: JobStore,
    two_colour_jpeg: bytes,
    exc: Exception,
    code: str,
) -> None:
    job_id = _job(store, two_colour_jpeg)
    assert run_job(_ctx(worker_settings, store, _Raises(exc)), job_id) is JobStatus.FAILED
    record = store.get(job_id)
    assert record is not None and record.error is not None
    assert record.error.code == code
    if code == "bad_input":  # written for the caller
        assert str(exc) in record.error.message
    else:  # internal: the log has it, the caller gets no class names or internals
        assert record.error.message == PIPELINE_ERROR_MESSAGE
        assert type(exc).__name__ not in record.error.message
    assert store.image(job_id) is None


def test_transient_errors_are_retried_then_given_up(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    settings = worker_settings.model_copy(update={"max_transient_retries": 2})
    pipeline = _Raises(TransientJobError("CUDA out of memory"))
    ctx = _ctx(settings, store, pipeline)
    job_id = _job(store, two_colour_jpeg)
    for _ in range(2):
        with pytest.raises(RetryLater):
            run_job(ctx, job_id)
        record = store.get(job_id)
        assert record is not None and record.status is JobStatus.QUEUED
    assert run_job(ctx, job_id) is JobStatus.FAILED
    record = store.get(job_id)
    assert record is not None and record.error is not None
    assert record.error.code == "transient_error" and pipeline.calls == 3


def test_expired_image_fails_the_job(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    job_id = _job(store, two_colour_jpeg)
    store.client.delete(f"metahmr:job:{job_id}:image")
    assert run_job(_ctx(worker_settings, store), job_id) is JobStatus.FAILED
    record = store.get(job_id)
    assert record is not None and record.error is not None and "expired" in record.error.message


def test_presence_beats_and_reaps_jobs_of_dead_workers(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    requeued: list[str] = []
    presence = Presence(store, "alive", worker_settings, requeued.append)
    presence.start()
    try:
        assert store.live_workers() == 1
        job_id = _job(store, two_colour_jpeg)
        store.heartbeat("doomed", worker_settings.heartbeat_ttl_s)
        store.claim(job_id, "doomed")
        deadline = time.monotonic() + 5
        while not requeued:  # "doomed" stops beating; the presence thread notices
            assert time.monotonic() < deadline, "job was not re-queued"
            time.sleep(0.05)
        assert requeued == [job_id]
        record = store.get(job_id)
        assert record is not None and record.status is JobStatus.QUEUED
    finally:
        presence.stop()
    assert store.live_workers() == 0
