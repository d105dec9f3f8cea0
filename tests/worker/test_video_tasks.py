"""Video jobs in the recover task: alone and inside a micro-batch of image jobs, each gets its
own outcome; a bad video fails its job with the reason and the rest run (real Redis)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from broker_checks import send_as_the_api

from service.jobs import JobRecord, JobStatus, JobStore
from worker.config import WorkerSettings
from worker.context import WorkerContext
from worker.pipeline import EchoPipeline
from worker.tasks import run_job

pytest.importorskip("av")
from training.synth.motion import encode_video  # noqa: E402

FRAMES = np.random.default_rng(0).integers(0, 255, (9, 32, 48, 3), dtype=np.uint8)
VIDEO_META = {"kind": "video", "format": "mp4", "limits": {"max_seconds": 10.0, "max_frames": 100,
                                                          "max_pixels": 10_000}}  # fmt: skip


def _ctx(settings: WorkerSettings, store: JobStore, **kw: Any) -> WorkerContext:
    ctx = WorkerContext(settings=settings.model_copy(update=kw), store=store, worker_id="w1")
    ctx._pipeline = EchoPipeline(steps=2)
    store.heartbeat("w1", 60)
    return ctx


def _get(store: JobStore, job_id: str) -> JobRecord:
    record = store.get(job_id)
    assert record is not None
    return record


def test_a_video_job_reports_frames_and_progress(worker_settings: WorkerSettings, store: JobStore) -> None:
    job = store.create(encode_video(FRAMES, 30.0), {}, VIDEO_META).job_id
    assert run_job(_ctx(worker_settings, store), job) is JobStatus.SUCCEEDED
    record = _get(store, job)
    assert record.result is not None and record.result["video"]["frames"] == 9
    assert record.progress is not None and (record.progress.stage, record.progress.step) == ("frames", 9)


def test_video_jobs_in_a_batch_run_on_their_own(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    image = store.create(two_colour_jpeg, {}, {}).job_id
    video = store.create(encode_video(FRAMES, 30.0), {}, VIDEO_META).job_id
    too_big = store.create(encode_video(FRAMES, 30.0), {}, dict(VIDEO_META, limits={"max_pixels": 100})).job_id
    other = store.create(two_colour_jpeg, {}, {}).job_id
    send_as_the_api(worker_settings.require_redis_url(), store, [video, too_big, other])
    assert run_job(_ctx(worker_settings, store, max_batch=4), image) is JobStatus.SUCCEEDED
    assert _get(store, other).status is JobStatus.SUCCEEDED
    assert _get(store, other).result["timings_ms"]["batch_size"] == 2  # type: ignore[index]
    assert _get(store, video).result["video"]["frames"] == 9  # type: ignore[index]
    failed = _get(store, too_big)
    assert failed.status is JobStatus.FAILED and failed.error is not None
    assert failed.error.code == "bad_input" and "48x32 = 1536 pixels" in failed.error.message
