"""The job store: records and images with a TTL, atomic status changes, heartbeats, reaper."""

from __future__ import annotations

import threading

import pytest

from service.jobs import (
    FILE_NAMES,
    JobCanceled,
    JobError,
    JobStatus,
    JobStore,
    LeaseLost,
    is_job_id,
)


def _new(store: JobStore) -> str:
    return store.create(b"image-bytes", {"tto": {"steps": 3}}, {"width": 4, "height": 3}).job_id


def test_create_stores_record_and_image_with_the_same_ttl(store: JobStore) -> None:
    job_id = _new(store)
    assert is_job_id(job_id)
    record = store.get(job_id)
    assert record is not None
    assert record.status is JobStatus.QUEUED
    assert record.options == {"tto": {"steps": 3}}
    assert record.image == {"width": 4, "height": 3}
    assert record.created_at == record.updated_at and record.created_at.endswith("Z")
    assert store.image(job_id) == b"image-bytes"
    ttls = [
        store.client.ttl(f"metahmr:job:{job_id}"),
        store.client.ttl(f"metahmr:job:{job_id}:image"),
    ]
    assert all(store.ttl_s - 2 <= t <= store.ttl_s for t in ttls)


def test_unknown_job_is_none(store: JobStore) -> None:
    assert store.get("00000000-0000-4000-8000-000000000000") is None
    assert not is_job_id("../../etc/passwd")


def test_status_only_moves_forward(store: JobStore) -> None:
    job_id = _new(store)
    assert store.claim(job_id, "w1") == (True, JobStatus.QUEUED)
    assert store.claim(job_id, "w2") == (False, JobStatus.RUNNING)
    assert store.finish(job_id, "w1", result={"ok": 1})
    # A final state is final: no second claim, no cancel, no second finish.
    assert store.claim(job_id, "w1") == (False, JobStatus.SUCCEEDED)
    assert store.cancel(job_id) == (False, JobStatus.SUCCEEDED)
    assert not store.finish(job_id, "w1", error=JobError("x", "y"))
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.SUCCEEDED
    assert record.result == {"ok": 1} and record.error is None and record.attempts == 1


def test_canceled_job_is_not_claimed(store: JobStore) -> None:
    job_id = _new(store)
    assert store.cancel(job_id) == (True, JobStatus.QUEUED)
    assert store.claim(job_id, "w1") == (False, JobStatus.CANCELED)
    assert store.image(job_id) is None  # nothing left to run


def test_only_one_of_many_concurrent_claims_wins(store: JobStore) -> None:
    job_id = _new(store)
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def claim(name: str) -> None:
        barrier.wait()
        if store.claim(job_id, name)[0]:
            wins.append(name)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    record = store.get(job_id)
    assert record is not None and record.worker == wins[0] and record.attempts == 1


def test_progress_is_written_by_the_owner_only(store: JobStore) -> None:
    job_id = _new(store)
    store.claim(job_id, "w1")
    store.set_progress(job_id, "w1", "tto", 3, 14)
    record = store.get(job_id)
    assert record is not None and record.progress is not None
    assert (record.progress.stage, record.progress.step, record.progress.total) == ("tto", 3, 14)
    with pytest.raises(LeaseLost):
        store.set_progress(job_id, "w2", "tto", 4, 14)
    store.cancel(job_id)
    with pytest.raises(JobCanceled):
        store.set_progress(job_id, "w1", "tto", 5, 14)


def test_finish_keeps_files_drops_image_and_restarts_the_ttl(store: JobStore) -> None:
    job_id = _new(store)
    store.claim(job_id, "w1")
    store.client.expire(f"metahmr:job:{job_id}", 50)
    store.put_files(job_id, {"overlay.png": b"\x89PNG..."})
    assert store.finish(job_id, "w1", result={"people": []}, files=("overlay.png",))
    record = store.get(job_id)
    assert record is not None and record.files == ("overlay.png",)
    assert store.file(job_id, "overlay.png") == b"\x89PNG..."
    assert store.file(job_id, "mesh.glb") is None
    assert store.image(job_id) is None
    assert store.client.ttl(f"metahmr:job:{job_id}") > store.ttl_s - 5


def test_refused_finish_removes_its_files(store: JobStore) -> None:
    job_id = _new(store)
    store.claim(job_id, "w1")
    store.cancel(job_id)
    store.put_files(job_id, {"mesh.obj": b"v 0 0 0"})
    assert not store.finish(job_id, "w1", result={}, files=("mesh.obj",))
    assert store.file(job_id, "mesh.obj") is None


def test_unknown_file_names_are_refused(store: JobStore) -> None:
    with pytest.raises(ValueError, match="unknown result files"):
        store.put_files(_new(store), {"../secret": b""})
    assert "../secret" not in FILE_NAMES


def test_failed_job_keeps_its_error(store: JobStore) -> None:
    job_id = _new(store)
    store.claim(job_id, "w1")
    assert store.finish(job_id, "w1", error=JobError("bad_input", "scope mismatch"))
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error == JobError("bad_input", "scope mismatch") and record.result is None


def test_release_puts_a_job_back_in_the_queue(store: JobStore) -> None:
    job_id = _new(store)
    store.claim(job_id, "w1")
    assert not store.release(job_id, "w2")
    assert store.release(job_id, "w1")
    assert store.claim(job_id, "w2") == (True, JobStatus.QUEUED)
    record = store.get(job_id)
    assert record is not None and record.attempts == 2


def test_delete_removes_every_key_of_a_job(store: JobStore) -> None:
    job_id = _new(store)
    store.claim(job_id, "w1")
    store.put_files(job_id, {"mesh.glb": b"glTF"})
    assert store.delete(job_id)
    assert store.client.keys(f"metahmr:job:{job_id}*") == []
    assert job_id not in store.running_jobs()
    assert not store.delete(job_id)


def test_heartbeats_count_live_workers(store: JobStore) -> None:
    assert store.live_workers() == 0
    store.heartbeat("w1", 30)
    store.heartbeat("w2", 30)
    store.heartbeat("gone", -1)  # its heartbeat already expired
    assert store.live_workers() == 2
    store.forget_worker("w1")
    assert store.live_workers() == 1


def test_reaper_requeues_jobs_of_dead_workers_only(store: JobStore) -> None:
    alive, dead = _new(store), _new(store)
    store.heartbeat("alive", 30)
    store.heartbeat("dead", -1)
    store.claim(alive, "alive")
    store.claim(dead, "dead")
    store.set_progress(dead, "dead", "tto", 2, 14)
    assert store.reap(max_attempts=3) == [(dead, JobStatus.QUEUED)]
    record = store.get(dead)
    assert record is not None
    assert record.status is JobStatus.QUEUED and record.worker is None and record.progress is None
    assert store.running_jobs() == {alive}
    assert store.reap(max_attempts=3) == []  # nothing more to do
    # The dead worker cannot write into the job any more.
    with pytest.raises(LeaseLost):
        store.set_progress(dead, "dead", "tto", 3, 14)


def test_reaper_fails_a_job_that_killed_its_worker_too_often(store: JobStore) -> None:
    job_id = _new(store)
    for attempt in range(2):
        assert store.claim(job_id, f"dead{attempt}")[0]
        assert store.reap(max_attempts=3) == [(job_id, JobStatus.QUEUED)]
    # Three runs, three dead workers: the input probably kills the pipeline; stop trying.
    store.claim(job_id, "dead2")
    assert store.reap(max_attempts=3) == [(job_id, JobStatus.FAILED)]
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error is not None and record.error.code == "worker_lost"
    assert store.image(job_id) is None


def test_rate_limit_counts_per_caller_and_window(store: JobStore) -> None:
    results = [store.hit_rate_limit("key:a", limit=2) for _ in range(3)]
    assert [allowed for allowed, _ in results] == [True, True, False]
    assert 1 <= results[-1][1] <= 61
    assert store.hit_rate_limit("key:b", limit=2)[0]


def test_stats_histograms_are_cumulative_in_prometheus_order(store: JobStore) -> None:
    store.record_finished(JobStatus.SUCCEEDED, 0.3, tto_steps=(14, 3))
    store.record_finished(JobStatus.FAILED, 1000.0)
    stats = store.stats()
    assert stats.finished == {"succeeded": 1, "failed": 1}
    assert stats.duration_s is not None and stats.duration_s.count == 2
    assert stats.duration_s.counts[stats.duration_s.bounds.index(0.5)] == 1
    assert stats.duration_s.counts[-1] == 1  # 1000 s lands in +Inf
    assert stats.tto_steps is not None and stats.tto_steps.count == 2
    assert stats.tto_steps.total == pytest.approx(17.0)
