"""End to end through real Redis, Celery worker processes, uvicorn and the httpx client, with
the diagnostics pipeline (METAHMR_PIPELINE=echo) until the model pipeline exists."""

from __future__ import annotations

import io
import json
import time

import psutil
import pytest
from PIL import Image

from service.client import JobFailed
from service.jobs import JobStatus

pytestmark = pytest.mark.e2e

KEYPOINTS = [[100.0 + 3 * i, 50.0 + 10 * i, 0.9] for i in range(17)]


def _photo(width: int = 320, height: int = 240) -> bytes:
    image = Image.new("RGB", (width, height), (20, 120, 220))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _running(stack, job_id: str) -> bool:  # type: ignore[no-untyped-def]
    record = stack.store.get(job_id)
    return record is not None and record.status is JobStatus.RUNNING and record.progress is not None


def test_recover_through_the_whole_stack(stack) -> None:  # type: ignore[no-untyped-def]
    stack.workers.start()
    assert stack.client.http.get("/readyz").json()["workers"] == 1
    options = {
        "people": [
            {"bbox": [80, 40, 200, 230], "keypoints": {"format": "coco17", "points": KEYPOINTS}}
        ]
    }
    job = stack.client.recover(_photo(), options, timeout_s=30)
    assert job["status"] == "succeeded"
    assert (
        job["progress"]["stage"] == "echo" and job["progress"]["step"] == job["progress"]["total"]
    )
    result = job["result"]
    assert result["image"]["width"] == 320 and result["image"]["height"] == 240
    assert result["people"][0]["bbox"] == [80.0, 40.0, 200.0, 230.0]
    assert result["people"][0]["keypoints_2d"] == KEYPOINTS
    assert result["diagnostics"]["mean_rgb"] == pytest.approx([20, 120, 220], abs=3)
    metrics = stack.client.http.get("/metrics").text
    assert 'metahmr_jobs_finished_total{status="succeeded"} 1.0' in metrics


def test_job_survives_its_worker_being_killed(stack) -> None:  # type: ignore[no-untyped-def]
    first = stack.workers.start(METAHMR_ECHO_DELAY_S="3")
    job_id = stack.client.submit(_photo())
    deadline = time.monotonic() + 20
    while not _running(stack, job_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stack.workers.kill(first)  # SIGKILL mid-job: nothing can put the task back
    killed_at = time.monotonic()
    stack.workers.start(METAHMR_ECHO_DELAY_S="0.5")
    job = stack.client.wait(job_id, timeout_s=30)
    assert job["status"] == "succeeded"
    record = stack.store.get(job_id)
    assert record is not None and record.attempts == 2
    assert time.monotonic() - killed_at < 20


def test_job_survives_its_pool_process_being_killed(stack) -> None:  # type: ignore[no-untyped-def]
    worker = stack.workers.start(METAHMR_ECHO_DELAY_S="2")
    job_id = stack.client.submit(_photo())
    deadline = time.monotonic() + 20
    while not _running(stack, job_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    children = psutil.Process(worker.pid).children()
    assert len(children) == 1
    children[0].kill()  # the pool process dies; the Celery main process survives
    job = stack.client.wait(job_id, timeout_s=40)
    assert job["status"] == "succeeded"
    assert worker.poll() is None


def test_cancel_stops_a_running_job_and_the_worker_goes_on(stack) -> None:  # type: ignore[no-untyped-def]
    stack.workers.start(METAHMR_ECHO_DELAY_S="2")
    job_id = stack.client.submit(_photo())
    deadline = time.monotonic() + 20
    while not _running(stack, job_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert stack.client.cancel(job_id)["status"] == "canceled"
    second = stack.client.recover(_photo(64, 64), timeout_s=30)
    assert second["status"] == "succeeded"
    final = stack.client.job(job_id)
    assert final["status"] == "canceled" and final["result"] is None
    assert json.dumps(final)  # serialisable view


def test_job_over_the_time_limit_fails_with_a_message(stack) -> None:  # type: ignore[no-untyped-def]
    stack.workers.start(
        METAHMR_ECHO_DELAY_S="5",
        METAHMR_JOB_SOFT_TIME_LIMIT_S="1",
        METAHMR_JOB_HARD_TIME_LIMIT_S="3",
    )
    job_id = stack.client.submit(_photo())
    with pytest.raises(JobFailed) as exc:
        stack.client.wait(job_id, timeout_s=20)
    assert exc.value.job["error"]["code"] == "timeout"
    assert "longer than 1 s" in exc.value.job["error"]["message"]
