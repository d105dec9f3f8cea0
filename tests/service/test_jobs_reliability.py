"""The job store's recovery paths against a real Redis: outages are not worker deaths, jobs the
API never sent are found again, deleted data leaves the append-only file."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from service.embedded import EmbeddedRedis
from service.jobs import JobStatus, JobStore


def _new(store: JobStore, image: bytes = b"image-bytes") -> str:
    return store.create(image, {}, {"width": 4, "height": 3}).job_id


def test_a_lease_lost_in_a_redis_outage_is_not_a_death(store: JobStore) -> None:
    job_id = _new(store)
    for i in range(5):  # more outages than max_attempts: the job is still re-run each time
        assert store.claim(job_id, f"w{i}")[0]
        store.heartbeat(f"w{i}", -0.5)  # last beat 10.5 s ago with a 10 s lease
        store.note_outage(11.0)  # a worker could not reach Redis for the last 11 s
        assert store.reap(max_attempts=3, lease_s=10.0) == [(job_id, JobStatus.QUEUED)]
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.QUEUED and record.attempts == 5
    assert store.client.hget(f"metahmr:job:{job_id}", "lost") == b"0"


def test_an_old_outage_does_not_excuse_a_later_death(store: JobStore) -> None:
    job_id = _new(store)
    store.note_outage(1.0)  # over before the worker's last beat
    time.sleep(0.05)
    for i in range(3):
        store.claim(job_id, f"w{i}")
        store.heartbeat(f"w{i}", -0.01)  # its lease ran out just now, after the outage
        expected = JobStatus.FAILED if i == 2 else JobStatus.QUEUED
        assert store.reap(max_attempts=3, lease_s=0.0) == [(job_id, expected)]
    record = store.get(job_id)
    assert record is not None and record.error is not None
    assert record.error.code == "worker_lost"


def test_a_job_the_api_never_sent_is_found_once(store: JobStore) -> None:
    sent, stranded, canceled = _new(store), _new(store), _new(store)
    store.mark_sent(sent)
    store.cancel(canceled)
    assert store.take_unsent(older_than_s=60) == []  # too young: the API may still send it
    time.sleep(0.3)
    assert store.take_unsent(older_than_s=0.2) == [stranded]
    assert store.take_unsent(older_than_s=0.2) == []  # handed out once


def _files_hold(directory: Path, data: bytes) -> bool:
    return any(data in f.read_bytes() for f in directory.rglob("*") if f.is_file())


def test_deleted_images_leave_the_append_only_file(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis", appendonly=True) as server:
        store = JobStore.from_url(server.url, ttl_s=600)
        secret = b"PRIVATE-PIXELS-" * 64
        deleted, finished = _new(store, secret + b"1"), _new(store, secret + b"2")
        store.claim(finished, "w")
        store.finish(finished, "w", result={"people": []})  # drops its image
        assert store.delete(deleted)
        assert store.client.exists(f"metahmr:job:{finished}")
        time.sleep(1.2)  # appendfsync everysec
        assert _files_hold(tmp_path / "redis", secret)  # what Redis alone leaves on disk
        assert store.compact(every_s=60)
        deadline = time.monotonic() + 10
        while store.client.info("persistence")["aof_rewrite_in_progress"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not _files_hold(tmp_path / "redis", secret)
        assert not store.compact(every_s=60)  # nothing deleted since
        store.delete(finished)
        assert not store.compact(every_s=60)  # deleted, but a rewrite ran < 60 s ago
        store.client.close()


def test_compact_does_nothing_without_an_append_only_file(store: JobStore) -> None:
    store.delete(_new(store))
    assert not store.compact(every_s=0.001)
    assert store.client.info("persistence")["aof_rewrite_scheduled"] == 0


def test_embedded_redis_keeps_its_data_across_a_kill(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    try:
        store = JobStore.from_url(server.url, ttl_s=600)
        job_id = _new(store)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while server.alive():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(redis.ConnectionError):
            store.get(job_id)
        server.restart()
        record = store.get(job_id)  # same URL, same data
        assert record is not None and record.status is JobStatus.QUEUED
        assert store.image(job_id) == b"image-bytes"
        store.client.close()
    finally:
        server.stop()
