"""A worker's presence in the job store: its heartbeat, the reaper that runs with it, and the
jobs its tasks hold (`ActiveJobs`), so a job its own task left unsettled is sent again."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

from service.jobs import JobStatus, JobStore, job_context
from worker.config import WorkerSettings

log = logging.getLogger(__name__)


class ActiveJobs:
    """The jobs this process is running now. The store may say this worker runs a job that
    is not here: its task ended without settling it (a Redis error, a retry that could not
    be sent). Such a job never loses its lease while the worker lives, so `Presence` puts it
    back in the queue (`orphans`). The lock makes a claim and its registration one step, so
    a job being claimed is never taken for an orphan."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._ids: set[str] = set()

    def claim(self, store: JobStore, job_id: str, worker: str) -> tuple[bool, JobStatus | None]:
        with self.lock:
            claimed, before = store.claim(job_id, worker)
            if claimed:
                self._ids.add(job_id)
        return claimed, before

    def claim_more(self, store: JobStore, job_id: str, worker: str) -> bool:
        """`claim`, for a batch's other job: False for one this process runs already (its
        task's message sent twice)."""
        with self.lock:
            if job_id in self._ids:
                return False
            claimed, _ = store.claim(job_id, worker)
            if claimed:
                self._ids.add(job_id)
        return claimed

    def done(self, job_ids: Sequence[str]) -> None:
        with self.lock:
            self._ids.difference_update(job_ids)

    def orphans(self, store: JobStore, worker: str) -> list[str]:
        """Jobs the store says `worker` runs that this process does not, each put back in
        the queue (running -> queued); send their tasks."""
        with self.lock:
            mine = [j for j in store.running_jobs_of(worker) if j not in self._ids]
            return [j for j in mine if store.release(j, worker)]


class Presence:
    """A worker's heartbeat in the store, plus the reaper: every `heartbeat_interval_s` a
    daemon thread marks this worker alive for `heartbeat_ttl_s`, re-queues running jobs of
    dead workers, sends jobs the API created but never sent, and has Redis rewrite its
    append-only file after deletions (`JobStore.compact`).

    A Redis outage is not a death: when the beats come back after failing, the worker records
    the outage (`JobStore.note_outage`: leases that ran out meanwhile are not charged to their
    jobs) and reaps only once one heartbeat TTL has passed, so that every live worker has
    renewed its lease first."""

    def __init__(
        self,
        store: JobStore,
        worker_id: str,
        settings: WorkerSettings,
        requeue: Callable[[str], None],
        active: ActiveJobs | None = None,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.settings = settings
        self.requeue = requeue
        self.active = active
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = time.monotonic()
        self._beats_since = -math.inf  # start of the good beats since the last outage
        self._failing = False

    def start(self) -> None:
        # Beat once now: a job claimed right after start must already have a live lease.
        self.store.heartbeat(self.worker_id, self.settings.heartbeat_ttl_s)
        self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="metahmr-presence", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                self.beat()
            except Exception:  # Redis away for a moment: keep beating when it is back
                if not self._failing:
                    log.warning("heartbeat failed (Redis unreachable?)", exc_info=True)
                self._failing = True
                continue
            try:
                self.tend()
            except Exception:
                log.warning("reaper failed", exc_info=True)

    def beat(self) -> None:
        """Renew this worker's lease; after failed beats, record the outage too."""
        self.store.heartbeat(self.worker_id, self.settings.heartbeat_ttl_s)
        now = time.monotonic()
        if self._failing:
            self.store.note_outage(now - self._last_beat)
            self._beats_since = now
            self._failing = False
            log.warning("Redis was unreachable for up to %.1f s; leases that ran out meanwhile "
                        "are not counted against their jobs", now - self._last_beat)  # fmt: skip
        self._last_beat = now

    def tend(self) -> None:
        """The store's upkeep after a good beat: reap, send stranded jobs, compact."""
        if time.monotonic() - self._beats_since < self.settings.heartbeat_ttl_s:
            return  # just back from an outage: let live workers renew their leases first
        self.reap()
        for job_id in self.active.orphans(self.store, self.worker_id) if self.active else ():
            with job_context(job_id):
                log.warning("this worker's task for the job ended without settling it; "
                            "job re-queued")  # fmt: skip
                self.send(job_id)
        for job_id in self.store.take_unsent(self.settings.unsent_after_s):
            with job_context(job_id):
                log.warning("job was created but never sent to the queue; sending it now")
                self.send(job_id)
        if self.store.compact(self.settings.aof_rewrite_interval_s):
            log.info("asked Redis to rewrite its append-only file (deleted data)")

    def reap(self) -> list[tuple[str, JobStatus]]:
        """Re-queue (or fail, after max_attempts) jobs whose worker died; send their tasks."""
        touched = self.store.reap(self.settings.max_attempts, self.settings.heartbeat_ttl_s)
        for job_id, status in touched:
            with job_context(job_id):
                if status is JobStatus.QUEUED:
                    log.warning("worker of a running job died; job re-queued")
                    self.send(job_id)
                else:
                    log.error("worker of a running job died too often; job failed")
        return touched

    def send(self, job_id: str) -> None:
        """Send the task of a job now queued in the store; if the broker refuses, the job
        goes to the store's unsent index, and the next pass sends it."""
        try:
            self.requeue(job_id)
        except Exception:
            log.warning("could not send the job's task; trying again shortly", exc_info=True)
            self.store.mark_unsent(job_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.store.forget_worker(self.worker_id)
        except Exception:
            log.warning("could not remove the worker's heartbeat", exc_info=True)
