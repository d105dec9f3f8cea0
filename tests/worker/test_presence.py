"""The worker's presence thread against a real Redis: it sends jobs the API never sent, does
not count Redis outages as worker deaths, and a Redis error never fails a job."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from service.embedded import EmbeddedRedis
from service.jobs import JobStatus, JobStore
from worker.config import WorkerSettings, default_threads
from worker.context import WorkerContext
from worker.pipeline import EchoPipeline
from worker.presence import Presence
from worker.tasks import run_job


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_presence_sends_a_job_the_api_created_but_never_sent(
    worker_settings: WorkerSettings, store: JobStore
) -> None:
    settings = worker_settings.model_copy(update={"unsent_after_s": 0.3})
    sent_job = store.create(b"img", {}, {}).job_id
    store.mark_sent(sent_job)
    stranded = store.create(b"img", {}, {}).job_id  # the API died before sending it
    requeued: list[str] = []
    presence = Presence(store, "alive", settings, requeued.append)
    presence.start()
    try:
        _wait(lambda: bool(requeued), 5, "the stranded job to be sent")
        time.sleep(0.5)  # several more reaper passes
    finally:
        presence.stop()
    assert requeued == [stranded]


def test_redis_outages_do_not_use_up_a_jobs_attempts(tmp_path: Path) -> None:
    settings = WorkerSettings(
        pipeline="echo", heartbeat_interval_s=0.1, heartbeat_ttl_s=0.5, max_attempts=2,
        log_json=False,
    )  # fmt: skip
    with EmbeddedRedis(tmp_path / "redis", appendonly=True) as server:
        store = JobStore.from_url(server.url, ttl_s=600)
        job_id = store.create(b"img", {}, {}).job_id
        requeued: list[str] = []
        presence = Presence(store, "reaper", settings, requeued.append)
        presence.start()
        try:
            for outage in range(3):  # more outages than max_attempts
                assert store.claim(job_id, f"runner{outage}")[0]
                store.heartbeat(f"runner{outage}", settings.heartbeat_ttl_s)
                assert server.pid is not None
                server._terminate()  # Redis goes away longer than a lease...
                time.sleep(0.8)
                server.restart()  # ...and comes back with its data; the runner never beats
                _wait(lambda n=outage: len(requeued) > n, 10, "the job to be re-queued")
                record = store.get(job_id)
                assert record is not None and record.status is JobStatus.QUEUED
        finally:
            presence.stop()
        assert store.client.hget(f"metahmr:job:{job_id}", "lost") == b"0"
        store.client.close()


def test_a_redis_error_mid_job_retries_instead_of_failing_it(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    class _LosesRedis(EchoPipeline):
        def run(self, image, options, progress):  # type: ignore[no-untyped-def]
            raise redis.ConnectionError("Connection reset by peer")

    ctx = WorkerContext(settings=worker_settings, store=store, worker_id="w")
    ctx._pipeline = _LosesRedis()
    store.heartbeat("w", 60)
    job_id = store.create(two_colour_jpeg, {}, {}).job_id
    with pytest.raises(redis.ConnectionError):  # the Celery task retries it (autoretry_for)
        run_job(ctx, job_id)
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.RUNNING and record.error is None
    ctx._pipeline = EchoPipeline()
    assert run_job(ctx, job_id) is JobStatus.SUCCEEDED  # the retry claims it as its own


@pytest.mark.parametrize(
    ("processes", "cores", "threads"),
    [(1, 2, 1), (1, 4, 3), (1, 64, 4), (2, 8, 3), (4, 4, 1), (16, 8, 1)],
)
def test_thread_defaults_leave_no_core_oversubscribed(
    processes: int, cores: int, threads: int
) -> None:
    assert default_threads(processes, cores) == threads
    assert processes * threads <= max(cores - 1, processes)


def test_threads_follow_the_processes_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.config.available_cores", lambda: 9)
    for name in ("ONNX_THREADS", "TORCH_THREADS", "CONCURRENCY", "WORKERS_ON_HOST"):
        monkeypatch.delenv(f"METAHMR_{name}", raising=False)
    assert WorkerSettings().torch_threads == 4  # 8 spare cores, capped
    monkeypatch.setenv("METAHMR_WORKERS_ON_HOST", "2")
    monkeypatch.setenv("METAHMR_CONCURRENCY", "2")
    one = WorkerSettings()
    assert (one.torch_threads, one.onnx_threads) == (2, 2)
    monkeypatch.setenv("METAHMR_TORCH_THREADS", "3")  # an explicit value wins
    assert WorkerSettings().torch_threads == 3


def test_a_job_its_task_left_running_is_put_back_but_not_one_that_runs(
    worker_settings: WorkerSettings, store: JobStore, two_colour_jpeg: bytes
) -> None:
    ctx = WorkerContext(settings=worker_settings, store=store, worker_id="w")
    ctx._pipeline = EchoPipeline(delay_s=1.5, steps=10)
    requeued: list[str] = []
    ctx.presence = Presence(store, "w", worker_settings, requeued.append, ctx.active)
    ctx.presence.start()
    try:
        left = store.create(two_colour_jpeg, {}, {}).job_id
        assert store.claim(left, "w")[0]  # claimed, then its task died on a Redis error
        running = store.create(two_colour_jpeg, {}, {}).job_id
        assert run_job(ctx, running) is JobStatus.SUCCEEDED  # reaper passes meanwhile
        _wait(lambda: bool(requeued), 5, "the left job to be re-queued")
    finally:
        ctx.presence.stop()
    assert requeued == [left]
    record = store.get(left)
    assert record is not None and record.status is JobStatus.QUEUED
    done = store.get(running)
    assert done is not None and done.attempts == 1


def test_a_task_the_broker_refused_is_sent_on_a_later_pass(
    worker_settings: WorkerSettings, store: JobStore
) -> None:
    job_id = store.create(b"img", {}, {}).job_id
    store.mark_sent(job_id)
    store.heartbeat("dead", -1)
    assert store.claim(job_id, "dead")[0]
    calls: list[str] = []

    def flaky_send(job: str) -> None:
        calls.append(job)
        if len(calls) == 1:
            raise ConnectionError("broker unreachable")

    presence = Presence(store, "alive", worker_settings, flaky_send)
    presence.start()
    try:
        _wait(lambda: len(calls) >= 2, 5, "the task to be sent again")
        time.sleep(0.5)
    finally:
        presence.stop()
    assert calls == [job_id, job_id]
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.QUEUED
