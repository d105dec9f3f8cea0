"""The job store's queued index, for micro-batching: a worker claims several queued jobs in
one atomic step, exactly as `claim` would, skipping canceled, running and finished ones."""

from __future__ import annotations

import threading

from service.jobs import JobError, JobStatus, JobStore


def _new(store: JobStore) -> str:
    return store.create(b"image-bytes", {}, {"width": 4, "height": 3}).job_id


def test_claim_queued_takes_the_oldest_queued_jobs_like_claim(store: JobStore) -> None:
    ids = [_new(store) for _ in range(5)]
    assert store.queued_jobs() == ids
    assert store.claim_queued("w1", 3) == ids[:3]
    for job_id in ids[:3]:
        record = store.get(job_id)
        assert record is not None and record.status is JobStatus.RUNNING
        assert record.worker == "w1" and record.attempts == 1 and record.started_at
    assert store.running_jobs() == set(ids[:3])
    assert store.queued_jobs() == ids[3:]
    # Claimed is claimed: the job's own task now finds it running (a no-op elsewhere).
    assert store.claim(ids[0], "w2") == (False, JobStatus.RUNNING)
    assert store.claim_queued("w2", 0) == []


def test_claim_queued_skips_canceled_running_finished_and_expired_jobs(store: JobStore) -> None:
    canceled, running, failed, expired, deleted, queued = (_new(store) for _ in range(6))
    store.cancel(canceled)
    store.claim(running, "w1")
    store.fail_queued(failed, JobError("bad_input", "no"))
    store.client.delete(f"metahmr:job:{expired}")  # its TTL ran out while queued
    store.delete(deleted)
    assert store.queued_jobs() == [expired, queued]
    assert store.claim_queued("w2", 10) == [queued]
    assert store.queued_jobs() == []  # the expired id was dropped when seen
    record = store.get(running)
    assert record is not None and record.worker == "w1"
    for job_id in (canceled, failed):
        record = store.get(job_id)
        assert record is not None and record.status.is_final and record.attempts == 0


def test_jobs_put_back_in_the_queue_can_be_claimed_again(store: JobStore) -> None:
    released, reaped = _new(store), _new(store)
    store.claim(released, "w1")
    store.claim(reaped, "dead")
    assert store.queued_jobs() == []
    assert store.release(released, "w1")
    assert store.reap(max_attempts=3) == [(reaped, JobStatus.QUEUED)]
    assert set(store.queued_jobs()) == {released, reaped}
    assert set(store.claim_queued("w2", 4)) == {released, reaped}
    record = store.get(reaped)
    assert record is not None and record.attempts == 2 and record.worker == "w2"


def test_concurrent_claims_never_share_a_job(store: JobStore) -> None:
    ids = [_new(store) for _ in range(40)]
    taken: dict[str, list[str]] = {}

    def take(worker: str) -> None:
        mine: list[str] = []
        while got := store.claim_queued(worker, 3):
            mine += got
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
