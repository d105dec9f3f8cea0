"""The broker's queue as a batching task reads it (`worker.broker.WaitingTasks`): it claims the
jobs of the recover tasks waiting there, jobs run again first and then oldest first, each
exactly as `JobStore.claim` would; a message leaves the queue once its job is claimed, or when
its task would have been a no-op. Real Redis, messages published as the API and the reaper
publish them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from broker_checks import broker_messages, published_job_ids
from celery import Celery
from kombu import Connection

from service.config import Settings
from service.jobs import RECOVER_TASK, JobError, JobStatus, JobStore
from service.queue import TaskQueue
from worker.broker import WaitingTasks
from worker.celery_app import create_celery
from worker.config import WorkerSettings


def _new(store: JobStore, queue: TaskQueue) -> str:
    job_id = store.create(b"image-bytes", {}, {"width": 4, "height": 3}).job_id
    queue.send(job_id)
    return job_id


@pytest.fixture
def api(worker_settings: WorkerSettings, store: JobStore) -> Iterator[TaskQueue]:
    """The API's side of the queue: publishes as the API does, and reads the depth."""
    queue = TaskQueue(Settings(redis_url=worker_settings.redis_url), store)
    yield queue
    queue.close()


@pytest.fixture
def waiting(worker_settings: WorkerSettings) -> Iterator[WaitingTasks]:
    taker = WaitingTasks(worker_settings.broker_url, worker_settings.queue_name, 60)
    yield taker
    taker.close()


def _claim_for(store: JobStore, worker: str) -> Callable[[str], bool]:
    return lambda job_id: store.claim(job_id, worker)[0]


def test_take_claims_waiting_jobs_in_order_and_leaves_the_rest(
    worker_settings: WorkerSettings, store: JobStore, api: TaskQueue, waiting: WaitingTasks
) -> None:
    ids = [_new(store, api) for _ in range(4)]
    rerun = store.create(b"image-bytes", {}, {}).job_id
    create_celery(worker_settings).metahmr_requeue(rerun)  # type: ignore[attr-defined]
    assert api.depth() == 5
    assert waiting.take(_claim_for(store, "w1"), 3) == [rerun, *ids[:2]]
    for job_id in (rerun, *ids[:2]):
        record = store.get(job_id)
        assert record is not None and record.status is JobStatus.RUNNING
        assert record.worker == "w1" and record.attempts == 1
    assert api.depth() == 2
    assert published_job_ids(store.client, worker_settings.queue_name) == ids[2:]
    assert waiting.take(_claim_for(store, "w2"), 0) == []
    assert waiting.take(_claim_for(store, "w2"), 10) == ids[2:]
    assert api.depth() == 0
    assert waiting.take(_claim_for(store, "w2"), 10) == []


def test_messages_of_jobs_not_waiting_are_dropped_without_a_claim(
    worker_settings: WorkerSettings, store: JobStore, api: TaskQueue, waiting: WaitingTasks
) -> None:
    canceled, running, failed, expired, deleted, queued = (_new(store, api) for _ in range(6))
    store.cancel(canceled)
    store.claim(running, "w1")
    store.fail_queued(failed, JobError("bad_input", "no"))
    store.client.delete(f"metahmr:job:{expired}")  # its TTL ran out while queued
    store.delete(deleted)
    other = Celery("other", broker=worker_settings.broker_url, set_as_current=False)
    other.send_task("somebody.elses.task", args=["x"], queue=worker_settings.queue_name)
    other.send_task(RECOVER_TASK, args=[queued], queue=worker_settings.queue_name)  # twice
    other.close()
    with Connection(worker_settings.broker_url) as conn:  # a recover task not in JSON
        conn.Producer().publish(
            b"\x80\x04not json", routing_key=worker_settings.queue_name,
            content_type="application/octet-stream", content_encoding="binary",
            headers={"task": RECOVER_TASK},
        )  # fmt: skip
    assert broker_messages(store.client, worker_settings.queue_name) == 9
    assert waiting.take(_claim_for(store, "w2"), 10) == [queued]
    assert broker_messages(store.client, worker_settings.queue_name) == 0
    record = store.get(running)
    assert record is not None and record.worker == "w1" and record.attempts == 1
    for job_id in (canceled, failed):
        record = store.get(job_id)
        assert record is not None and record.status.is_final and record.attempts == 0


def test_a_claim_that_fails_leaves_its_message_and_keeps_the_claimed_jobs(
    worker_settings: WorkerSettings, store: JobStore, api: TaskQueue, waiting: WaitingTasks
) -> None:
    first, second, third = (_new(store, api) for _ in range(3))

    def claim(job_id: str) -> bool:
        if job_id == second:
            raise ConnectionError("the store went away")
        return store.claim(job_id, "w1")[0]

    assert waiting.take(claim, 3) == [first]  # logged; what was claimed is returned
    assert sorted(published_job_ids(store.client, worker_settings.queue_name)) == sorted(
        [second, third]
    )
    record = store.get(second)
    assert record is not None and record.status is JobStatus.QUEUED
    # The connection was dropped after the error; the next take connects again.
    assert sorted(waiting.take(_claim_for(store, "w1"), 3)) == sorted([second, third])
    assert broker_messages(store.client, worker_settings.queue_name) == 0


def test_concurrent_takers_never_share_a_job(
    worker_settings: WorkerSettings, store: JobStore, api: TaskQueue
) -> None:
    ids = [_new(store, api) for _ in range(40)]
    taken: dict[str, list[str]] = {}

    def take(worker: str) -> None:
        waiting = WaitingTasks(worker_settings.broker_url, worker_settings.queue_name, 60)
        mine: list[str] = []
        while got := waiting.take(_claim_for(store, worker), 3):
            mine += got
        waiting.close()
        taken[worker] = mine

    threads = [threading.Thread(target=take, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [j for mine in taken.values() for j in mine]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    for worker, mine in taken.items():
        for job_id in mine:
            record = store.get(job_id)
            assert record is not None and record.worker == worker and record.attempts == 1


def test_a_job_put_back_is_sent_again_and_can_be_taken_again(
    worker_settings: WorkerSettings, store: JobStore, api: TaskQueue, waiting: WaitingTasks
) -> None:
    requeue = create_celery(worker_settings).metahmr_requeue  # type: ignore[attr-defined]
    released, reaped = _new(store, api), _new(store, api)
    assert waiting.take(_claim_for(store, "w1"), 1) == [released]
    assert waiting.take(_claim_for(store, "dead"), 1) == [reaped]
    assert store.release(released, "w1")
    requeue(released)
    assert store.reap(max_attempts=3) == [(reaped, JobStatus.QUEUED)]
    requeue(reaped)
    assert set(waiting.take(_claim_for(store, "w2"), 4)) == {released, reaped}
    record = store.get(reaped)
    assert record is not None and record.attempts == 2 and record.worker == "w2"
