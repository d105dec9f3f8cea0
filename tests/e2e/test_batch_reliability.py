"""Micro-batching keeps the no-job-lost guarantees: a worker (or its pool process) killed
while it runs a batch it took from the broker queue loses none of the batch's jobs. Real
Redis, Celery worker processes, uvicorn and the httpx client."""

from __future__ import annotations

import io
import time

import psutil
import pytest
from broker_checks import broker_messages
from PIL import Image

from service.jobs import JobStatus

pytestmark = pytest.mark.e2e

BATCH = {"METAHMR_MAX_BATCH": "4", "METAHMR_BATCH_WAIT_MS": "300"}


def _photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 120, 220)).save(buf, "PNG")
    return buf.getvalue()


def _running(stack, ids: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    records = [stack.store.get(j) for j in ids]
    return [j for j, r in zip(ids, records, strict=True) if r and r.status is JobStatus.RUNNING]


def _wait_for_a_batch(stack, ids: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while len(running := _running(stack, ids)) < 4:
        assert time.monotonic() < deadline, [stack.store.get(j) for j in ids]
        time.sleep(0.05)
    return running


def _all_succeed(stack, ids: list[str], batch: list[str]) -> None:  # type: ignore[no-untyped-def]
    for job_id in ids:
        assert stack.client.wait(job_id, timeout_s=60)["status"] == "succeeded"
    for job_id in batch:
        record = stack.store.get(job_id)
        assert record is not None and record.attempts == 2  # the killed try, then this one
    deadline = time.monotonic() + 10
    while broker_messages(stack.store.client, "metahmr") > 0:  # nothing left behind
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_batch_survives_its_worker_being_killed(stack) -> None:  # type: ignore[no-untyped-def]
    first = stack.workers.start(METAHMR_ECHO_DELAY_S="2", **BATCH)
    ids = [stack.client.submit(_photo()) for _ in range(6)]
    batch = _wait_for_a_batch(stack, ids)
    stack.workers.kill(first)
    stack.workers.start(METAHMR_ECHO_DELAY_S="0.2", **BATCH)
    _all_succeed(stack, ids, batch)


def test_a_batch_survives_its_pool_process_being_killed(stack) -> None:  # type: ignore[no-untyped-def]
    worker = stack.workers.start(METAHMR_ECHO_DELAY_S="2", **BATCH)
    ids = [stack.client.submit(_photo()) for _ in range(6)]
    batch = _wait_for_a_batch(stack, ids)
    (child,) = psutil.Process(worker.pid).children()
    child.kill()  # the pool process dies mid-batch; the Celery main process lives on
    _all_succeed(stack, ids, batch)
    assert worker.poll() is None
