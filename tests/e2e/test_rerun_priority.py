"""A job whose worker died runs again ahead of the jobs queued after it, through real Redis,
Celery worker processes and uvicorn."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from service.jobs import JobStatus

pytestmark = pytest.mark.e2e


def _photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 120, 220)).save(buf, "PNG")
    return buf.getvalue()


def test_a_job_whose_worker_died_runs_before_the_queue(stack) -> None:  # type: ignore[no-untyped-def]
    first = stack.workers.start(METAHMR_ECHO_DELAY_S="5")
    lost = stack.client.submit(_photo())
    deadline = time.monotonic() + 20
    while (record := stack.store.get(lost)) is None or record.status is not JobStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    queue = [stack.client.submit(_photo()) for _ in range(8)]
    stack.workers.kill(first)
    stack.workers.start(METAHMR_ECHO_DELAY_S="0.5")
    for job_id in [lost, *queue]:
        assert stack.client.wait(job_id, timeout_s=60)["status"] == "succeeded"
    started = {j: stack.store.get(j).started_at for j in [lost, *queue]}  # type: ignore[union-attr]
    ahead_of = sum(started[lost] < started[j] for j in queue)
    # The new worker may take a few queued jobs before its reaper notices the dead one (the
    # old code ran it after all 8).
    assert ahead_of >= 5, sorted(started.values()).index(started[lost])
