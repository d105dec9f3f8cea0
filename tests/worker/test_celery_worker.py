"""The Celery app: delivery settings, and a real worker (in a thread) taking a task that the
API's queue published by name."""

from __future__ import annotations

import time

import pytest
from broker_checks import broker_messages
from celery.contrib.testing.worker import start_worker

from service.config import Settings
from service.jobs import RECOVER_TASK, JobStatus, JobStore
from service.queue import TaskQueue
from worker.celery_app import create_celery
from worker.config import WorkerSettings
from worker.context import stop_worker_context


def test_delivery_settings_never_lose_a_task(worker_settings: WorkerSettings) -> None:
    conf = create_celery(worker_settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_default_queue == worker_settings.queue_name


def test_real_worker_runs_a_published_task(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    app = create_celery(worker_settings)
    assert RECOVER_TASK in app.tasks
    job_id = store.create(two_colour_jpeg, {}, {}).job_id
    queue = TaskQueue(Settings(redis_url=worker_settings.redis_url), store)
    queue.send(job_id)
    assert broker_messages(store.client, worker_settings.queue_name) == 1
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            deadline = time.monotonic() + 20
            while (record := store.get(job_id)) is None or not record.status.is_final:
                assert time.monotonic() < deadline, f"job still {record and record.status}"
                time.sleep(0.05)
    finally:
        stop_worker_context()
        queue.close()
    assert record.status is JobStatus.SUCCEEDED
    assert record.result is not None and record.result["image"] == {
        "width": 32,
        "height": 64,
        "focal_length": (32**2 + 64**2) ** 0.5,
    }
    assert broker_messages(store.client, worker_settings.queue_name) == 0


def test_healthcheck_needs_a_live_worker_on_this_host(
    worker_settings: WorkerSettings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.celery_app import main
    from worker.context import new_worker_id

    monkeypatch.setenv("METAHMR_REDIS_URL", worker_settings.require_redis_url())
    assert main(["--healthcheck"]) == 1
    store.heartbeat("some-other-host:1:abc", 30)
    assert main(["--healthcheck"]) == 1
    store.heartbeat(new_worker_id(), 30)
    assert main(["--healthcheck"]) == 0
